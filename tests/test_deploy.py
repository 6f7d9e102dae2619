"""The deployment files of deploy/: the systemd units pass ``systemd-analyze verify`` without a
warning, and the documented HAProxy set-up (PostgreSQL, two replicas, deploy/haproxy.cfg with
the addresses replaced) carries a paged SCIM pull to the end while one replica is killed in the
middle of it, and LDAP through it."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import ldap
import pytest

from tests.ports import free_port
from tests.serving import Serving, ldap_bind, start_serve

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
VENV = str(Path(sys.executable).parent.parent)


def test_systemd_units_verify(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    units = sorted((DEPLOY / "systemd").iterdir())
    assert {u.name for u in units} == {"idm-facade.service", "idm-facade-purge.service",
                                       "idm-facade-purge.timer"}
    for unit in units:  # the units point at /opt/idm-facade; here the venv is elsewhere
        (tmp_path / unit.name).write_text(
            unit.read_text().replace("/opt/idm-facade/.venv", VENV))
    result = subprocess.run([analyze, "verify", *[str(tmp_path / u.name) for u in units]],
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0 and result.stderr.strip() == "", result.stderr
    service = (DEPLOY / "systemd" / "idm-facade.service").read_text()
    assert "ExecReload=/bin/kill -HUP $MAINPID" in service
    assert "RestartPreventExitStatus=2 3" in service


def _haproxy_config(http: int, ldap_port: int, ldaps_port: int, replicas: list[Serving]
                    ) -> str:
    text = (DEPLOY / "haproxy.cfg").read_text()
    text = text.replace("bind :8080", f"bind 127.0.0.1:{http}")
    text = text.replace("bind :389", f"bind 127.0.0.1:{ldap_port}")
    text = text.replace("bind :636", f"bind 127.0.0.1:{ldaps_port}")
    for number, replica in enumerate(replicas, 1):
        assert replica.scim_base is not None
        scim = int(replica.scim_base.rsplit(":", 1)[1])
        text = text.replace(f"10.0.0.1{number}:8080", f"127.0.0.1:{scim}")
        text = text.replace(f"10.0.0.1{number}:389 send-proxy-v2 check port 8080",
                            f"127.0.0.1:{replica.ldap_ports[0]} send-proxy-v2 check port "
                            f"{scim}")
        text = text.replace(f"10.0.0.1{number}:636 send-proxy-v2 check port 8080",
                            f"127.0.0.1:{replica.ldap_ports[1]} send-proxy-v2 check port "
                            f"{scim}")
    assert "10.0.0." not in text
    return text


def test_two_replicas_behind_haproxy(postgres_url: str, tmp_path: Path) -> None:
    haproxy = shutil.which("haproxy") or "/usr/sbin/haproxy"
    if not os.path.exists(haproxy):
        pytest.fail("haproxy is not installed (make os-packages installs it)")
    from idm_facade.access.clients import ClientRegistry
    from idm_facade.config import load_config
    from store.demo import generate
    from store.engine import make_engine
    from store.exchange import import_document
    from tests.conftest import DEMO_REFERENCE

    engine = make_engine(postgres_url)
    import_document(engine, generate("S", seed=5, reference=DEMO_REFERENCE), actor="test")
    replicas: list[Serving] = []
    proxy = None
    try:
        for number in (1, 2):
            state = tmp_path / f"replica{number}"
            state.mkdir()
            config = state / "idm.toml"
            config.write_text(f'[directory]\nstate_dir = "{state}"\n'
                              f'[scim]\ncursor_secret = "shared by the replicas"\n'
                              f'[audit]\nreplica = "facade{number}"\n'
                              # HAProxy, from loopback, sends the PROXY header (send-proxy-v2)
                              f'[ldap]\nproxy_protocol_from = ["127.0.0.1"]\n')
            if number == 1:
                registry = ClientRegistry(engine, load_config(config))
                token = registry.add("sync", "scim", "default")
                password = registry.add("legacy", "ldap", "default")
                bind_dn, base = registry.bind_dn_of("legacy"), registry.base
            # The survivor runs two workers, which adopt the listening sockets (and wrap
            # them for the PROXY protocol) themselves.
            replicas.append(start_serve(postgres_url, config, ldaps=True,
                                        workers=1 if number == 1 else 2))
        http_port, ldap_port, ldaps_port = free_port(), free_port(), free_port()
        cfg = tmp_path / "haproxy.cfg"
        cfg.write_text(_haproxy_config(http_port, ldap_port, ldaps_port, replicas))
        proxy = subprocess.Popen([haproxy, "-db", "-f", str(cfg)], stdout=subprocess.PIPE,
                                 stderr=subprocess.STDOUT, text=True)
        base_url = f"http://127.0.0.1:{http_port}"
        headers = {"Authorization": f"Bearer {token}"}
        deadline = time.monotonic() + 30
        while True:  # both replicas up in HAProxy's eyes
            try:
                if httpx.get(f"{base_url}/readyz", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline or proxy.poll() is not None:
                proxy.terminate()
                out = proxy.communicate(timeout=10)[0]
                raise AssertionError(f"HAProxy did not come up: {out[-2000:]}")
            time.sleep(0.2)
        time.sleep(2.5)  # rise 2 x inter 1s: both servers in rotation
        seen: list[str] = []
        total = None
        index, page = 1, 0
        with httpx.Client(base_url=base_url, headers=headers, timeout=30) as client:
            while total is None or index <= total:
                response = client.get("/scim/v2/Users", params={
                    "startIndex": index, "count": 25, "attributes": "userName"})
                assert response.status_code == 200, response.text[:300]
                body = response.json()
                total = body["totalResults"]
                seen += [r["id"] for r in body["Resources"]]
                index += body["itemsPerPage"]
                page += 1
                if page == 3:
                    replicas[0].proc.send_signal(signal.SIGKILL)  # mid-pull, no warning
                    replicas[0].proc.wait(timeout=10)
        assert page > 5 and len(seen) == total and len(set(seen)) == total
        # LDAP through the balancer reaches the surviving replica.
        conn = ldap_bind(f"ldap://127.0.0.1:{ldap_port}", bind_dn, password, timeout=20)
        found = conn.search_s(f"ou=people,{base}", ldap.SCOPE_ONELEVEL, "(uid=*)", ["uid"])
        assert len(found) == total
        conn.unbind_s()
        # LDAPS passes through too: TLS ends at the facade.
        conn = ldap_bind(f"ldaps://127.0.0.1:{ldaps_port}", bind_dn, password, timeout=20)
        assert conn.whoami_s() == f"dn:{bind_dn}"
        conn.unbind_s()
        # The access records of the pull name the replica that answered each page.
        from idm_facade.access.audit import AuditLog

        audit = AuditLog(engine)
        sources = [r.source for r in audit.query(client="sync")]
        audit.close()
        names = {re.search(r"@(facade\d)/", s).group(1) for s in sources}  # type: ignore[union-attr]
        assert names == {"facade1", "facade2"}, sources
        # The LDAP records name the client's connection, which HAProxy's PROXY header gave
        # (without the header, from a balancer listed in proxy_protocol_from, the
        # connections above would have been closed).
        audit = AuditLog(engine)
        ldap_sources = {r.source.split("@")[0] for r in audit.query(client="legacy")}
        audit.close()
        assert ldap_sources and all(s.startswith("ldap:127.0.0.1:") for s in ldap_sources), \
            ldap_sources
    finally:
        if proxy is not None:
            proxy.terminate()
            proxy.wait(timeout=10)
        for replica in replicas:
            replica.stop()
        engine.dispose()
