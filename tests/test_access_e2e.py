"""The access log through the real SCIM front end: ``idm-facade serve`` in a subprocess.

One record per request with the right subjects; revoked tokens stop working in the running
server; and a server killed with SIGKILL in the middle of a concurrent load leaves a chain that
verifies and holds a record for every request that got an answer ("no record, no answer").
"""

from __future__ import annotations

import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select

from idm_facade.access.audit import AuditLog, access_log
from idm_facade.access.clients import ClientRegistry
from idm_facade.config import Config, load_config
from idm_facade.directory import Directory
from schemas.attributes import ACCOUNT
from store.engine import make_engine


@dataclass
class Served:
    proc: subprocess.Popen
    base: str


def _serve(url: str, config: Path | None = None) -> Served:
    proc = subprocess.Popen(
        [sys.executable, "-c", "from idm_facade.cli import main; main()", "serve", "--db", url,
         "--host", "127.0.0.1", "--scim-port", "0",
         *(["--config", str(config)] if config is not None else [])],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        found = re.search(r"SCIM\s+(http://\S+/scim/v2)", line)
        if found:
            return Served(proc, found.group(1))
    proc.kill()
    pytest.fail("idm-facade serve did not start")


@dataclass
class Store:
    url: str
    tokens: dict[str, str]
    accounts: list


@pytest.fixture(scope="module")
def store(demo_db: str, tmp_path_factory) -> Store:
    """A private copy of the S demo store with two SCIM clients."""
    source = Path(demo_db.removeprefix("sqlite:///"))
    target = tmp_path_factory.mktemp("access") / "idm.db"
    shutil.copy(source, target)
    url = f"sqlite:///{target}"
    engine = make_engine(url)
    registry = ClientRegistry(engine, Config())
    tokens = {"crm": registry.add("crm", "scim"), "hr": registry.add("hr", "scim", "demo-cpr")}
    accounts = [e for e in Directory(engine).snapshot.entries if e.kind == ACCOUNT]
    engine.dispose()
    return Store(url, tokens, accounts)


@pytest.fixture(scope="module")
def server(store: Store) -> Iterator[Served]:
    served = _serve(store.url)
    try:
        yield served
    finally:
        served.proc.terminate()
        served.proc.wait(timeout=10)


def _records_with(url: str, marker: str) -> list:
    audit = AuditLog(make_engine(url))
    with audit.engine.connect() as conn:
        rows = conn.execute(select(access_log).where(
            access_log.c.query.contains(marker))).all()
    audit.close()
    return rows


def _person_and_manager(store: Store, account) -> list[str]:
    people = {a.id: a.first("personId") for a in store.accounts}
    found = {account.first("personId")}
    found.update(people[m] for m in account.attrs.get("manager", ()))
    return sorted(found)


def test_one_record_per_request_with_subjects(store: Store, server: Served) -> None:
    http = httpx.Client(base_url=server.base, timeout=30,
                        headers={"Authorization": f"Bearer {store.tokens['crm']}"})
    for account in store.accounts[:5]:
        marker = uuid.uuid4().hex
        name = account.first("userName")
        response = http.get("/Users", params={"filter": f'userName eq "{name}"',
                                              "probe": marker})
        assert response.status_code == 200 and response.json()["totalResults"] == 1
        (record,) = _records_with(store.url, marker)
        assert record.client == "crm" and record.status == "200"
        # the account's person, and its manager's: the answer names the manager (#19)
        assert record.subjects == _person_and_manager(store, account)
        assert record.sensitive == []
    # a search matching nothing discloses nobody, and is still recorded
    marker = uuid.uuid4().hex
    response = http.get("/Users", params={"filter": 'userName eq "no-such-user"',
                                          "probe": marker})
    assert response.json()["totalResults"] == 0
    (record,) = _records_with(store.url, marker)
    assert record.subjects == []
    # refused requests are recorded too, without a client and without subjects
    marker = uuid.uuid4().hex
    response = httpx.get(f"{server.base}/Users", params={"probe": marker},
                         headers={"Authorization": "Bearer idmf_nope_nope"})
    assert response.status_code == 401
    (record,) = _records_with(store.url, marker)
    assert record.client == "-" and record.status == "401" and record.subjects == []
    assert AuditLog(make_engine(store.url)).verify().ok


def test_cpr_disclosure_is_marked(store: Store, server: Served) -> None:
    target = next(a for a in store.accounts if a.attrs.get("cpr"))
    marker = uuid.uuid4().hex
    response = httpx.get(f"{server.base}/Users/{target.id}", headers={
        "Authorization": f"Bearer {store.tokens['hr']}"},
        params={"attributes": "urn:idm-facade:params:scim:schemas:extension:municipal:1.0:"
                              "User:cprNumber", "probe": marker})
    assert response.status_code == 200 and target.first("cpr") in response.text
    (record,) = _records_with(store.url, marker)
    assert record.client == "hr" and record.sensitive == ["cpr"]
    assert record.subjects == [target.first("personId")]
    audit = AuditLog(make_engine(store.url))
    mine = audit.query(subject=target.first("personId"), client="hr")
    assert any(r.seq == record.seq for r in mine)


def test_client_hanging_up_early_still_leaves_one_record(store: Store, server: Served) -> None:
    """The record goes with the response to the event loop; a client that hangs up at once
    (before, during or after the answer is produced; with a body, a 304 without one, and a
    HEAD) must still leave exactly one record per request, and the server keeps serving."""
    account = store.accounts[0]
    headers = {"Authorization": f"Bearer {store.tokens['crm']}"}
    etag = httpx.get(f"{server.base}/Users/{account.id}", headers=headers).headers["ETag"]
    host, port = server.base.removeprefix("http://").split("/")[0].split(":")
    markers = []
    for round_ in range(12):
        marker = uuid.uuid4().hex
        markers.append(marker)
        method, extra = [("GET", ""), ("GET", f"If-None-Match: {etag}\r\n"),
                         ("HEAD", "")][round_ % 3]
        request = (f"{method} /scim/v2/Users/{account.id}?probe={marker} HTTP/1.1\r\n"
                   f"Host: {host}:{port}\r\nAuthorization: {headers['Authorization']}\r\n"
                   f"{extra}\r\n").encode()
        with socket.create_connection((host, int(port))) as sock:
            sock.sendall(request)
            time.sleep(0.002 * (round_ % 4))  # hang up at different points
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    deadline = time.monotonic() + 15
    while True:
        counts = [len(_records_with(store.url, marker)) for marker in markers]
        if counts == [1] * len(markers) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert counts == [1] * len(markers)
    assert httpx.get(f"{server.base}/Users/{account.id}", headers=headers).status_code == 200
    assert AuditLog(make_engine(store.url)).verify().ok


def test_revoked_token_stops_working_in_running_server(store: Store, server: Served) -> None:
    registry = ClientRegistry(make_engine(store.url), Config())
    token = registry.add("temp", "scim")
    assert httpx.get(f"{server.base}/Users", params={"count": 0}, headers={
        "Authorization": f"Bearer {token}"}).status_code == 200
    registry.revoke("temp")
    time.sleep(1.3)  # other processes re-check cached verifications at least every second
    assert httpx.get(f"{server.base}/Users", params={"count": 0}, headers={
        "Authorization": f"Bearer {token}"}).status_code == 401


def test_sigkill_during_load_leaves_verifiable_complete_log(store: Store, tmp_path) -> None:
    target = tmp_path / "idm.db"
    shutil.copy(store.url.removeprefix("sqlite:///"), target)
    url = f"sqlite:///{target}"
    served = _serve(url)
    answered: list[str] = []
    lock = threading.Lock()
    stop = threading.Event()
    names = [a.first("userName") for a in store.accounts[:50]]

    def load(n: int) -> None:
        http = httpx.Client(base_url=served.base, timeout=10,
                            headers={"Authorization": f"Bearer {store.tokens['crm']}"})
        i = 0
        while not stop.is_set():
            marker = f"w{n}r{i}-{uuid.uuid4().hex}"
            i += 1
            try:
                response = http.get("/Users", params={
                    "filter": f'userName eq "{names[i % len(names)]}"', "probe": marker})
            except httpx.HTTPError:
                return  # the server is gone
            if response.status_code == 200 and response.json().get("totalResults") == 1:
                with lock:
                    answered.append(marker)

    workers = [threading.Thread(target=load, args=(n,)) for n in range(8)]
    for w in workers:
        w.start()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and len(answered) < 150:
        time.sleep(0.05)
    served.proc.send_signal(signal.SIGKILL)
    served.proc.wait(timeout=10)
    stop.set()
    for w in workers:
        w.join(timeout=15)
    assert len(answered) >= 50, "the load did not get going"

    audit = AuditLog(make_engine(url))
    result = audit.verify()
    assert result.ok, result.message
    with audit.engine.connect() as conn:
        queries = [q for (q,) in conn.execute(select(access_log.c.query))]
    recorded = {m.group(0) for q in queries for m in [re.search(r"w\d+r\d+-[0-9a-f]{32}", q)]
                if m}
    missing = [m for m in answered if m not in recorded]
    assert missing == [], f"{len(missing)} answered request(s) without a record"
    audit.close()


@pytest.mark.parametrize("sync", ["normal", "full"])
def test_unwritable_log_means_500_and_nothing_disclosed(store: Store, tmp_path, sync) -> None:
    """With the log unwritable, every SCIM answer is a 500 SCIM error naming the log, with no
    resource data, whichever way the record is written (held in the event loop with
    sync = "normal", in the worker thread with "full"); the server keeps running."""
    config = tmp_path / "idm.toml"
    config.write_text(f'[audit]\ndb = "sqlite:///{tmp_path}/missing/dir/audit.db"\n'
                      f'sync = "{sync}"\n')
    served = _serve(store.url, config)
    try:
        headers = {"Authorization": f"Bearer {store.tokens['crm']}"}
        uid = store.accounts[0].first("userName")
        for _ in range(3):
            response = httpx.get(f"{served.base}/Users", headers=headers,
                                 params={"filter": f'userName eq "{uid}"'})
            assert response.status_code == 500
            assert response.headers["content-type"].startswith("application/scim+json")
            body = response.json()
            assert body["status"] == "500" and "access log" in body["detail"]
            assert uid not in response.text and "Resources" not in body
            assert int(response.headers["content-length"]) == len(response.content)
        head = httpx.head(f"{served.base}/Users", headers=headers)
        assert head.status_code == 500
        assert served.proc.poll() is None  # still serving
    finally:
        served.proc.terminate()
        served.proc.wait(timeout=10)


def test_a_sensitive_title_shown_is_marked(store: Store, tmp_path) -> None:
    """A job title marked sensitive, shown to a client granted it, is listed in the record's
    ``sensitive`` (#19: it never was), and not when the title was not returned."""
    config = tmp_path / "idm.toml"
    config.write_text("[policies.titles]\nsensitive_titles = true\n")
    engine = make_engine(store.url)
    token = ClientRegistry(engine, load_config(config)).add("titles", "scim", "titles")
    engine.dispose()
    served = _serve(store.url, config)
    try:
        _sensitive_title_marked(store, served, token)
    finally:
        served.proc.terminate()
        served.proc.wait(timeout=10)


def _sensitive_title_marked(store: Store, server: Served, token: str) -> None:
    target = next(a for a in store.accounts if a.attrs.get("title@SENSITIVE"))
    headers = {"Authorization": f"Bearer {token}"}
    marker = uuid.uuid4().hex
    response = httpx.get(f"{server.base}/Users/{target.id}", headers=headers,
                         params={"attributes": "title", "probe": marker})
    assert response.status_code == 200 and target.first("title@SENSITIVE") in response.text
    (record,) = _records_with(store.url, marker)
    assert record.sensitive == ["sensitiveTitle"]
    marker = uuid.uuid4().hex
    response = httpx.get(f"{server.base}/Users/{target.id}", headers=headers,
                         params={"attributes": "userName", "probe": marker})
    assert response.status_code == 200
    (record,) = _records_with(store.url, marker)
    assert record.sensitive == []
