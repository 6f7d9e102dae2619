"""The served facade fails closed when its access log goes away or is locked.

Once, deleting the log file while serving went unnoticed: answers went on, recorded into the
unlinked file, and after a restart the index rebuilt itself and ``audit verify`` said "OK, 0
records". And a lock on the log held by another process stalled SCIM and LDAP for as long
as it was held. Here a real server is asked over SCIM (httpx) and LDAP (python-ldap).
"""

from __future__ import annotations

import shutil
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import ldap
import pytest

from tests.serving import Serving, ldap_bind, served_copy, start_serve

IDM = str(Path(sys.executable).with_name("idm-facade"))

pytestmark = pytest.mark.skipif(shutil.which("ldapsearch") is None,
                                reason="ldap-utils (ldapsearch) is not installed")


@dataclass
class Ctx:
    tmp: Path
    db: str
    config: Path
    token: str
    bind_dn: str
    secret: str
    base: str

    def serve(self) -> Serving:
        return start_serve(self.db, self.config)


@pytest.fixture
def ctx(demo_db, tmp_path) -> Iterator[Ctx]:
    config = f'[audit]\ndb = "sqlite:///{tmp_path}/audit.db"\nwrite_timeout = 0.3\n'
    clients = (("e2e-scim", "scim", "default"), ("e2e-ldap", "ldap", "default"))
    with served_copy(demo_db, tmp_path, config, clients, start=False) as copy:
        yield Ctx(tmp_path, copy.db, copy.config, copy.secrets["e2e-scim"],
                  copy.bind_dn("e2e-ldap"), copy.secrets["e2e-ldap"], copy.base)


def _scim(serving: Serving, token: str) -> httpx.Response:
    return httpx.get(f"{serving.scim_base}/scim/v2/Users", params={"count": 1},
                     headers={"Authorization": f"Bearer {token}"}, timeout=30)


def _ldap_search(serving: Serving, ctx: Ctx) -> None:
    conn = ldap_bind(serving.ldap_url, ctx.bind_dn, ctx.secret)
    try:
        conn.search_s(f"ou=people,{ctx.base}", ldap.SCOPE_BASE, "(objectClass=*)")
    finally:
        conn.unbind_s()


def test_deleting_the_log_while_serving_stops_every_answer(ctx: Ctx) -> None:
    serving = ctx.serve()
    try:
        first = _scim(serving, ctx.token)
        assert first.status_code == 200
        name = first.json()["Resources"][0]["userName"]
        _ldap_search(serving, ctx)
        ready = httpx.get(f"{serving.scim_base}/readyz", timeout=30)
        assert ready.status_code == 200 and ready.json()["status"] == "ready"
        for suffix in ("", "-wal", "-shm"):
            (ctx.tmp / f"audit.db{suffix}").unlink(missing_ok=True)
        time.sleep(0.3)  # the file is looked at at most every 0.2 s
        refused = _scim(serving, ctx.token)
        assert refused.status_code == 500 and ctx.token not in refused.text
        # the role API too (its record is held for the same event-loop commit)
        api = httpx.get(f"{serving.scim_base}/api/organisation/v3", timeout=30,
                        headers={"ApiKey": ctx.token})
        assert api.status_code == 500
        assert api.json() == {"error": "access log unavailable; nothing disclosed",
                              "status": 500}
        # and a role lookup answered in the event loop (the token is verified by now)
        lookup = httpx.get(f"{serving.scim_base}/api/user/{name}/roles", timeout=30,
                           headers={"ApiKey": ctx.token})
        assert lookup.status_code == 500 and "oioBPP" not in lookup.text
        assert lookup.json() == api.json()
        with pytest.raises(ldap.LDAPError) as failed:
            _ldap_search(serving, ctx)
        assert isinstance(failed.value, (ldap.OTHER, ldap.UNAVAILABLE)), failed.value
        assert _scim(serving, ctx.token).status_code == 500  # and it stays closed
        # and health says why, without a token
        ready = httpx.get(f"{serving.scim_base}/readyz", timeout=30)
        assert ready.status_code == 503
        assert "deleted or replaced" in ready.json()["problems"][0]
        assert httpx.get(f"{serving.scim_base}/healthz", timeout=30).status_code == 200
    finally:
        serving.stop()
    # after a restart the fresh log knows records are missing and still answers nothing
    serving = ctx.serve()
    try:
        assert _scim(serving, ctx.token).status_code == 500
    finally:
        serving.stop()
    cli = ["--db", ctx.db, "--config", str(ctx.config)]
    verified = subprocess.run([IDM, "audit", "verify", *cli], capture_output=True, text=True,
                              timeout=120)
    assert verified.returncode == 1 and "records are missing" in verified.stderr
    assert "Traceback" not in verified.stderr + verified.stdout
    reset = subprocess.run([IDM, "audit", "reset-index", "--yes", *cli], capture_output=True,
                           text=True, timeout=120)
    assert reset.returncode == 0 and "index emptied" in reset.stdout, reset.stderr
    serving = ctx.serve()
    try:
        assert _scim(serving, ctx.token).status_code == 200
    finally:
        serving.stop()


def test_a_lock_on_the_log_fails_requests_fast_and_then_they_pass_again(ctx: Ctx) -> None:
    serving = ctx.serve()
    try:
        assert _scim(serving, ctx.token).status_code == 200
        other = sqlite3.connect(ctx.tmp / "audit.db", isolation_level=None, timeout=30)
        other.execute("BEGIN EXCLUSIVE")
        try:
            assert _scim(serving, ctx.token).status_code == 500
        finally:
            other.execute("ROLLBACK")
            other.close()
        assert _scim(serving, ctx.token).status_code == 200
        _ldap_search(serving, ctx)
    finally:
        serving.stop()
