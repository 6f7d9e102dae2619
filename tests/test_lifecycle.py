"""Signals of a serving process: SIGHUP reloads policies, clients and the TLS certificate
without dropping connections; SIGTERM drains (no new connections, idle LDAP clients told,
requests in progress finished and recorded, exit 0)."""

from __future__ import annotations

import signal
import socket
import sqlite3
import ssl
import threading
import time
from pathlib import Path

import httpx
import ldap
import pytest

from tests.serving import ldap_bind, served_copy
from tests.upstream_ldap import make_ca, make_server_cert


def _tls_pair(folder: Path, name: str) -> tuple[Path, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    _, ca_cert, ca_key = make_ca(folder, name)
    make_server_cert(folder, ca_cert, ca_key)
    return folder / "server.pem", folder / "server.key"


def _config(folder: Path, attributes: list[str], cert: Path, key: str | Path) -> str:
    listed = ", ".join(f'"{a}"' for a in attributes)
    return (f'[ldap]\ntls_cert = "{cert}"\ntls_key = "{key}"\n'
            f'[policies.narrow]\nattributes = [{listed}]\n')


def _served_cert(port: int) -> str:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw, \
            context.wrap_socket(raw) as tls:
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return ssl.DER_cert_to_PEM_cert(der)


def test_sighup_reloads_policies_and_certificates(demo_db: str, tmp_path: Path) -> None:
    cert, key = _tls_pair(tmp_path / "tls1", "first CA")
    with served_copy(demo_db, tmp_path, _config(tmp_path, ["displayName"], cert, key),
                     (("legacy", "ldap", "narrow"),), ldaps=True) as copy:
        serving = copy.serving
        assert serving is not None
        conn = ldap_bind(serving.ldap_url, copy.bind_dn("legacy"), copy.secrets["legacy"])
        base = f"ou=people,{copy.base}"
        _, attrs = conn.search_s(base, ldap.SCOPE_ONELEVEL, "(uid=*)", ["*"])[0]
        assert "displayName" in attrs and "title" not in attrs
        first_cert = _served_cert(serving.ldap_ports[1])
        assert first_cert.strip() == cert.read_text().strip()
        # A new policy and a new certificate, then SIGHUP.
        new_cert, new_key = _tls_pair(tmp_path / "tls2", "second CA")
        head = copy.config.read_text().split("[ldap]")[0]
        copy.config.write_text(head + _config(tmp_path, ["displayName", "title"], new_cert,
                                              new_key))
        serving.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 15
        while True:
            _, attrs = conn.search_s(base, ldap.SCOPE_ONELEVEL, "(uid=*)", ["*"])[0]
            if "title" in attrs:
                break  # the same connection, now under the new policy
            assert time.monotonic() < deadline, "the policy was not reloaded"
            time.sleep(0.1)
        assert _served_cert(serving.ldap_ports[1]).strip() == new_cert.read_text().strip()
        # A configuration that does not load is refused and the running one kept.
        copy.config.write_text(head + "[ldap]\nposx = true\n")
        serving.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 15
        while "was not reloaded" not in serving.output():
            assert time.monotonic() < deadline, serving.output()[-2000:]
            time.sleep(0.1)
        assert "unknown key 'posx'" in serving.output()
        _, attrs = conn.search_s(base, ldap.SCOPE_ONELEVEL, "(uid=*)", ["*"])[0]
        assert "title" in attrs and serving.proc.poll() is None
        conn.unbind_s()


def test_sigterm_drains(demo_db: str, tmp_path: Path) -> None:
    audit = tmp_path / "audit.db"
    config = (f'[audit]\ndb = "sqlite:///{audit}"\nsync = "full"\nwrite_timeout = 20\n'
              f'timeout = 30\n')
    with served_copy(demo_db, tmp_path, config, (("crm", "scim", "default"),
                                                 ("legacy", "ldap", "default"))) as copy:
        serving = copy.serving
        assert serving is not None and serving.scim_base is not None
        idle = ldap_bind(serving.ldap_url, copy.bind_dn("legacy"), copy.secrets["legacy"])
        headers = {"Authorization": f"Bearer {copy.secrets['crm']}"}
        assert httpx.get(f"{serving.scim_base}/scim/v2/Users?count=1", headers=headers,
                         timeout=30).status_code == 200
        # Hold the access log's write lock: the next request waits for its record.
        blocker = sqlite3.connect(audit, timeout=30)
        blocker.execute("BEGIN IMMEDIATE")
        result: dict[str, object] = {}

        def slow() -> None:
            try:
                result["response"] = httpx.get(f"{serving.scim_base}/scim/v2/Users?count=2",
                                               headers=headers, timeout=60)
            except Exception as exc:  # noqa: BLE001 - reported by the assertion below
                result["error"] = exc

        thread = threading.Thread(target=slow)
        thread.start()
        time.sleep(1.0)  # the request is in the server, waiting for the log
        assert thread.is_alive()
        serving.proc.send_signal(signal.SIGTERM)
        port = int(serving.scim_base.rsplit(":", 1)[1])
        deadline = time.monotonic() + 15
        while True:  # no new connections
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
            except ConnectionRefusedError:
                break
            assert time.monotonic() < deadline, "still accepting connections"
            time.sleep(0.05)
        with pytest.raises(ldap.LDAPError):  # the idle LDAP client was told and closed
            idle.search_s(f"ou=people,{copy.base}", ldap.SCOPE_ONELEVEL, "(uid=a*)", ["uid"])
        assert serving.proc.poll() is None  # still finishing the request in progress
        blocker.rollback()
        blocker.close()
        thread.join(timeout=60)
        response = result.get("response")
        assert isinstance(response, httpx.Response), result
        assert response.status_code == 200 and response.json()["itemsPerPage"] == 2
        assert serving.proc.wait(timeout=30) == 0
        assert "drained in" in serving.output()
        # The answered request has its record.
        rows = sqlite3.connect(audit).execute(
            "SELECT count(*) FROM access_log WHERE client = 'crm'").fetchone()
        assert rows[0] == 2
