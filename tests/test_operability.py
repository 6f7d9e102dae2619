"""Operating the facade: Prometheus metrics (read with prometheus_client's text parser),
request log lines with request ids that the access records carry too, the replica's name in
each record, JSON logs, and the store going away under load and coming back."""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import ldap
import pytest
from prometheus_client.parser import text_string_to_metric_families

from idm_facade.access.audit import AuditLog
from store.engine import make_engine
from tests.pg import PostgresUnavailable, postgres_cluster
from tests.serving import ldap_bind, served_copy, start_serve


def _metrics(base: str) -> dict[tuple[str, tuple], float]:
    """{(sample name, sorted labels): value} of one scrape, parsed as Prometheus does."""
    response = httpx.get(f"{base}/metrics", timeout=30)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    found = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def _value(scrape: dict, name: str, **labels: str) -> float:
    return scrape.get((name, tuple(sorted(labels.items()))), 0.0)


def test_metrics_requests_and_replica(demo_db: str, tmp_path: Path) -> None:
    config = '[audit]\nreplica = "replica-a"\n'
    with served_copy(demo_db, tmp_path, config, (("crm", "scim", "default"),
                                                 ("legacy", "ldap", "default"))) as copy:
        serving = copy.serving
        assert serving is not None and serving.scim_base is not None
        base = serving.scim_base
        token = copy.secrets["crm"]
        http = httpx.Client(base_url=base, timeout=30)
        for _ in range(3):
            ok = http.get("/scim/v2/Users?count=1",
                          headers={"Authorization": f"Bearer {token}",
                                   "X-Request-Id": "trace-42"})
            assert ok.status_code == 200 and ok.headers["x-request-id"] == "trace-42"
        bad = http.get("/scim/v2/Users", headers={"Authorization": "Bearer idmf_x_nope"})
        assert bad.status_code == 401 and re.fullmatch(r"[0-9a-f]{12}",
                                                       bad.headers["x-request-id"])
        conn = ldap_bind(serving.ldap_url, copy.bind_dn("legacy"), copy.secrets["legacy"])
        conn.search_s(f"ou=people,{copy.base}", ldap.SCOPE_ONELEVEL, "(uid=a*)", ["uid"])
        with pytest.raises(ldap.INVALID_CREDENTIALS):
            ldap_bind(serving.ldap_url, copy.bind_dn("legacy"), "wrong")
        scrape = _metrics(base)
        ready = http.get("/readyz").json()
        conn.unbind_s()
        assert _value(scrape, "idm_facade_requests_total", protocol="scim",
                      operation="GET /scim/v2/Users", status="200") == 3
        assert _value(scrape, "idm_facade_requests_total", protocol="scim",
                      operation="GET /scim/v2/Users", status="401") == 1
        assert _value(scrape, "idm_facade_auth_failures_total", protocol="scim",
                      reason="invalid token") == 1
        assert _value(scrape, "idm_facade_requests_total", protocol="ldap",
                      operation="search", status="success") == 1
        assert _value(scrape, "idm_facade_requests_total", protocol="ldap",
                      operation="bind", status="49") == 1
        assert _value(scrape, "idm_facade_auth_failures_total", protocol="ldap",
                      reason="invalid credentials") == 1
        assert _value(scrape, "idm_facade_request_seconds_count", protocol="scim",
                      operation="GET /scim/v2/Users") == 4
        assert _value(scrape, "idm_facade_ldap_connections") == 1  # the bound one, open
        assert _value(scrape, "idm_facade_snapshot_seq") == ready["snapshot"]["seq"]
        assert _value(scrape, "idm_facade_snapshot_entries") == ready["snapshot"]["entries"]
        assert _value(scrape, "idm_facade_store_up") == 1
        assert _value(scrape, "idm_facade_snapshot_build_seconds") > 0
        # Every request above has its access record; every record is counted once committed.
        assert _value(scrape, "idm_facade_access_log_records_total") >= 7
        assert _value(scrape, "idm_facade_access_log_commit_seconds_count") >= 1
        # The request log line and the access record share the request id; the record names
        # the replica.
        deadline = time.monotonic() + 10  # request lines are written in batches
        while serving.output().count("trace-42") < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        lines = [line for line in serving.output().splitlines() if "trace-42" in line]
        assert len(lines) == 3 and all("scim GET /scim/v2/Users 200" in line for line in lines)
        audit = AuditLog(make_engine(copy.db))
        records = audit.query(client="crm")
        audit.close()
        assert len(records) == 3
        pid = serving.proc.pid
        assert all(r.source.endswith(f"@replica-a/{pid} #trace-42") for r in records)
        ldap_records = [r for r in AuditLog(make_engine(copy.db)).query(client="legacy")]
        assert all(re.search(rf"^ldap:127\.0\.0\.1:\d+ @replica-a/{pid} #[0-9a-f]{{8}}\.\d+$",
                             r.source) for r in ldap_records), [r.source for r in ldap_records]


def test_json_request_log(demo_db: str, tmp_path: Path) -> None:
    with served_copy(demo_db, tmp_path, '[logging]\nformat = "json"\n',
                     (("crm", "scim", "default"),), ldap=False) as copy:
        assert copy.serving is not None
        response = httpx.get(f"{copy.serving.scim_base}/scim/v2/Groups?count=1",
                             headers={"Authorization": f"Bearer {copy.secrets['crm']}"},
                             timeout=30)
        rid = response.headers["x-request-id"]
        deadline = time.monotonic() + 30  # the log line is written after the answer
        while rid not in copy.serving.output() and time.monotonic() < deadline:
            time.sleep(0.05)
        line = next(x for x in copy.serving.output().splitlines() if rid in x)
        record = json.loads(line)
        assert record["logger"] == "idm_facade.requests" and record["request_id"] == rid
        assert record["protocol"] == "scim" and record["status"] == 200
        assert record["operation"] == "GET /scim/v2/Groups" and record["client"] == "crm"
        assert "filter" not in line and "count=1" not in line  # no query strings


@contextmanager
def _store_on_postgres(tmp_path: Path, name: str) -> Iterator[tuple[Any, str, Any, Path]]:
    """(cluster, url, engine, config) of the S demo on a PostgreSQL of its own, which a test
    may stop, start or hang; the access log on a local file, so that records can be written
    while the store is away."""
    from store.demo import generate
    from store.exchange import import_document
    from tests.conftest import DEMO_REFERENCE
    from tests.pg import create_database

    try:
        cluster_cm = postgres_cluster()
        cluster = cluster_cm.__enter__()
    except PostgresUnavailable as exc:
        pytest.fail(f"PostgreSQL is needed for this test: {exc}")
    try:
        url = create_database(cluster.url, name)
        engine = make_engine(url)
        import_document(engine, generate("S", seed=3, reference=DEMO_REFERENCE), actor="t")
        config = tmp_path / "idm.toml"
        config.write_text(f'[directory]\nstate_dir = "{tmp_path}"\n'
                          f'[audit]\ndb = "sqlite:///{tmp_path / "audit.db"}"\n')
        try:
            yield cluster, url, engine, config
        finally:
            engine.dispose()
    finally:
        cluster_cm.__exit__(None, None, None)


def test_the_store_going_away_under_load(tmp_path: Path) -> None:
    """PostgreSQL stops while clients read: answers go on from the last snapshot, /readyz
    and /metrics say the store is away and how stale the snapshot is, and when it is back a
    change made there shows up."""
    from sqlalchemy import select

    from idm_facade.access.clients import ClientRegistry
    from idm_facade.config import load_config
    from store.engine import write_session
    from store.models import OrgUnit

    with _store_on_postgres(tmp_path, "outage") as (cluster, url, engine, config):
        token = ClientRegistry(engine, load_config(config)).add("crm", "scim", "default")
        serving = start_serve(url, config, ldap=False)
        base = serving.scim_base
        headers = {"Authorization": f"Bearer {token}"}
        failures: list[str] = []
        answered = [0]
        stop = threading.Event()

        def load() -> None:
            with httpx.Client(base_url=base, headers=headers, timeout=30) as http:
                while not stop.is_set():
                    response = http.get("/scim/v2/Groups?count=5&excludedAttributes=members")
                    if response.status_code != 200:
                        failures.append(f"{response.status_code} {response.text[:200]}")
                    answered[0] += 1

        reader = threading.Thread(target=load, daemon=True)
        reader.start()
        try:
            time.sleep(1)
            cluster.stop()
            deadline = time.monotonic() + 30
            while True:
                ready = httpx.get(f"{base}/readyz", timeout=30)
                if ready.status_code == 503:
                    break
                assert time.monotonic() < deadline, "the outage was not noticed"
                time.sleep(0.2)
            body = ready.json()
            assert any(p.startswith("store: ") for p in body["problems"])
            assert body["store"] == "unreachable"
            before = answered[0]
            time.sleep(2)
            assert answered[0] > before  # still answering, from the snapshot
            scrape = _metrics(base)
            assert _value(scrape, "idm_facade_store_up") == 0
            assert _value(scrape, "idm_facade_snapshot_age_seconds") >= 1.5
        finally:
            cluster.start()
        with write_session(engine, actor="test") as session:
            unit = session.scalars(select(OrgUnit).limit(1)).one()
            unit.name = "Back After The Outage"
        deadline = time.monotonic() + 30
        while True:
            found = httpx.get(f"{base}/scim/v2/Groups",
                              params={"filter": 'displayName eq "Back After The Outage"'},
                              headers=headers, timeout=30).json()
            if found.get("totalResults") == 1:
                break
            assert time.monotonic() < deadline, "the change made after the outage never came"
            time.sleep(0.2)
        assert httpx.get(f"{base}/readyz", timeout=30).status_code == 200
        stop.set()
        reader.join(timeout=30)
        serving.stop()
        assert answered[0] > 20 and failures == [], failures[:3]


def _hang(cluster, signal_number: int) -> None:  # noqa: ANN001 - a tests.pg.Cluster
    """Stop (SIGSTOP) or continue (SIGCONT) every process of ``cluster``: its kernel still
    accepts and acknowledges, its server answers nothing, as a hung database host does."""
    import os
    import subprocess

    main = int((cluster.data / "postmaster.pid").read_text().split()[0])
    children = subprocess.run(["ps", "-o", "pid=", "--ppid", str(main)], capture_output=True,
                              text=True).stdout.split()
    for pid in [main, *map(int, children)]:
        try:
            os.kill(pid, signal_number)
        except ProcessLookupError:
            pass


def test_a_hung_store_does_not_stall_ldap(tmp_path: Path) -> None:
    """PostgreSQL hangs (its processes stopped: connections stay open, nothing answers, no
    timeout of TCP's fires) while LDAP clients work. A client's credentials are looked at
    again every second; that look must not stall the event loop, or every connection of
    the process would wait as long as the database hangs. Bound connections go on searching,
    and a new connection binds with credentials verified before (nobody can revoke them
    while the store is away). When the store is back, a revoke takes effect again."""
    import signal

    from idm_facade.access.clients import ClientRegistry
    from idm_facade.config import load_config
    from idm_facade.ldap.protocol import STORE_WAIT

    with _store_on_postgres(tmp_path, "hung") as (cluster, url, engine, config):
        registry = ClientRegistry(engine, load_config(config))
        secret = registry.add("app", "ldap", "default")
        dn = registry.bind_dn_of("app")
        serving = start_serve(url, config)
        try:
            base = dn.split(",", 2)[2]
            bound = ldap_bind(serving.ldap_url, dn, secret, timeout=20, network_timeout=20)
            assert bound.search_s(base, ldap.SCOPE_BASE, "(objectClass=*)", ["1.1"])
            _hang(cluster, signal.SIGSTOP)
            try:
                answered = []
                deadline = time.monotonic() + 4  # past the one-second re-check, several times
                while time.monotonic() < deadline:
                    started = time.monotonic()
                    found = bound.search_ext_s(base, ldap.SCOPE_ONELEVEL, "(objectClass=*)",
                                               ["1.1"], timeout=20)
                    answered.append(time.monotonic() - started)
                    assert found
                    time.sleep(0.3)
                again = ldap_bind(serving.ldap_url, dn, secret, timeout=20, network_timeout=20)
                assert again.whoami_s() == f"dn:{dn}"
                again.unbind_s()
            finally:
                _hang(cluster, signal.SIGCONT)
            # Each answered at once: the look at the client's row waits in a thread. (Waiting in
            # the event loop took 5 s, libpq's connect timeout, or for ever on a connection
            # already open; the bound is far from both and from any machine's noise.)
            assert len(answered) >= 5 and max(answered) < STORE_WAIT + 1.5, answered
            # Back: a revoke reaches the bound connection within the re-check.
            registry.revoke("app")
            deadline = time.monotonic() + 30
            while True:
                try:
                    bound.search_ext_s(base, ldap.SCOPE_BASE, "(objectClass=*)", ["1.1"],
                                       timeout=20)
                except ldap.LDAPError:
                    break
                assert time.monotonic() < deadline, "the revoke never took effect"
                time.sleep(0.3)
        finally:
            serving.stop()


def test_a_posix_search_while_posix_is_off_is_explained(demo_db: str, tmp_path: Path) -> None:
    """nslcd's `getent passwd` searches (objectClass=posixAccount); with ``[ldap] posix`` off
    nothing matches, and the operator is told why instead of seeing an empty list."""
    with served_copy(demo_db, tmp_path, "", (("nslcd", "ldap", "default"),)) as copy:
        assert copy.serving is not None
        conn = ldap_bind(copy.serving.ldap_url, copy.bind_dn("nslcd"), copy.secrets["nslcd"])
        found = conn.search_s(f"ou=people,{copy.base}", ldap.SCOPE_ONELEVEL,
                              "(objectClass=posixAccount)", ["uid"])
        assert found == []
        assert len(conn.search_s(f"ou=people,{copy.base}", ldap.SCOPE_ONELEVEL,
                                 "(objectClass=inetOrgPerson)", ["uid"])) > 0
        conn.unbind_s()
        deadline = time.monotonic() + 10
        while "posix is off" not in copy.serving.output():
            assert time.monotonic() < deadline, copy.serving.output()[-2000:]
            time.sleep(0.05)
        assert "set posix = true" in copy.serving.output()


def test_a_log_nobody_reads_does_not_stall_the_server(demo_db: str, tmp_path: Path) -> None:
    """Standard error is a pipe nobody reads (a supervisor that hung): the request lines
    must not make the server wait for it. 3,000 requests write about 400 KB of lines, six
    times what a pipe holds; every one is answered."""
    import subprocess
    import sys

    with served_copy(demo_db, tmp_path, "", (("crm", "scim", "default"),),
                     start=False) as copy:
        exe = str(Path(sys.executable).with_name("idm-facade"))
        proc = subprocess.Popen([exe, "serve", "--db", copy.db, "--host", "127.0.0.1",
                                 "--scim-port", "0", "--config", str(copy.config)],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            assert proc.stdout is not None
            base = None
            while base is None:
                line = proc.stdout.readline()
                assert line, "serve ended"
                found = re.match(r"SCIM\s+(http://\S+)/scim/v2", line)
                base = found.group(1) if found else None
            # From here on nobody reads the pipe.
            statuses = set()
            with httpx.Client(base_url=base, timeout=10, headers={
                    "Authorization": f"Bearer {copy.secrets['crm']}"}) as http:
                for _ in range(3000):
                    statuses.add(http.get("/scim/v2/Users?count=1").status_code)
            assert statuses == {200}
            assert proc.poll() is None
        finally:
            proc.kill()
            proc.wait(timeout=10)
