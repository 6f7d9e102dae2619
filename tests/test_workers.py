"""``idm-facade serve --workers 2`` on a copy of the S demo: one set of ports, two processes.

Which worker answered a connection is read from the kernel, not from the server: while the
client's connection is still open, the server side of it (found in /proc/net/tcp by its
address pair) is a socket inode that exactly one worker holds among its open files.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import ldap3
import pytest

from idm_facade.access.audit import AuditLog
from idm_facade.access.clients import ClientRegistry
from idm_facade.config import Config
from idm_facade.directory import Directory
from schemas.attributes import ACCOUNT
from store.engine import make_engine, write_session
from store.models import Person
from tests.picks import sole_account
from tests.serving import Serving, copy_store, start_serve

pytestmark = pytest.mark.skipif(not Path("/proc/net/tcp").exists(),
                                reason="needs Linux /proc to tell the workers apart")


# ------------------------------------------------------------------ processes and sockets


def children(pid: int) -> set[int]:
    """Live child processes of ``pid`` (from /proc/*/stat)."""
    found = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid and fields[0] != "Z":
            found.add(int(stat.parent.name))
    return found


def _hex(address: tuple[str, int]) -> str:
    return f"{socket.inet_aton(address[0])[::-1].hex().upper()}:{address[1]:04X}"


def owner(pids: set[int], client: tuple[str, int], server: tuple[str, int]) -> int | None:
    """The process among ``pids`` holding the server end of the open connection
    ``client`` -> ``server``."""
    inode = None
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[1] == _hex(server) and fields[2] == _hex(client) and fields[9] != "0":
            inode = fields[9]
    if inode is None:
        return None
    for pid in pids:
        try:
            fds = list(Path(f"/proc/{pid}/fd").iterdir())
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(fd) == f"socket:[{inode}]":
                    return pid
            except OSError:
                continue
    return None


# ------------------------------------------------------------------ fixture


@dataclass
class Ctx:
    serving: Serving
    db: str
    config: Config
    token: str
    bind_dn: str
    secret: str
    accounts: list

    @property
    def http_port(self) -> int:
        return int(urllib.parse.urlsplit(self.serving.scim_base).port)  # type: ignore[arg-type]

    def workers(self) -> set[int]:
        return children(self.serving.proc.pid)

    @contextlib.contextmanager
    def only(self, pid: int) -> Iterator[None]:
        """Every other worker stopped (SIGSTOP) meanwhile, so ``pid`` accepts every new
        connection: which worker the kernel hands a connection to is otherwise up to chance,
        and a test that waits for chance to reach both workers fails under load."""
        others = self.workers() - {pid}
        for other in others:
            os.kill(other, signal.SIGSTOP)
        try:
            yield
        finally:
            for other in others:
                os.kill(other, signal.SIGCONT)

    def scim(self, path: str, **params: str) -> tuple[int, dict, int | None]:
        """GET over a new connection: (status, body, pid of the worker that answered)."""
        conn = http.client.HTTPConnection("127.0.0.1", self.http_port, timeout=30)
        try:
            query = urllib.parse.urlencode(params)
            conn.request("GET", f"/scim/v2{path}" + (f"?{query}" if query else ""),
                         headers={"Authorization": f"Bearer {self.token}"})
            response = conn.getresponse()
            body = json.loads(response.read())
            pid = owner(self.workers(), conn.sock.getsockname(),
                        ("127.0.0.1", self.http_port))
            return response.status, body, pid
        finally:
            conn.close()

    def ldap(self, flt: str, attrs: list[str]) -> tuple[list, int | None]:
        """Bind and search over a new connection: (entries, pid of the worker)."""
        port = self.serving.ldap_ports[0]
        conn = ldap3.Connection(ldap3.Server("127.0.0.1", port=port, get_info=ldap3.NONE),
                                self.bind_dn, self.secret, auto_bind=True, receive_timeout=30)
        try:
            assert conn.search(self.base, flt, attributes=attrs), conn.result
            entries = [dict(e.entry_attributes_as_dict) for e in conn.entries]
            pid = owner(self.workers(), conn.socket.getsockname(), ("127.0.0.1", port))
            return entries, pid
        finally:
            conn.unbind()

    @property
    def base(self) -> str:
        return self.bind_dn.split(",", 2)[2]

    def audit(self) -> AuditLog:
        return AuditLog(make_engine(self.db), self.config)


@pytest.fixture(scope="module")
def ctx(demo_db, tmp_path_factory) -> Iterator[Ctx]:
    tmp = tmp_path_factory.mktemp("workers")
    db = copy_store(demo_db, tmp / "idm.db")  # this module writes to its store
    config_path = tmp / "idm.toml"
    config_path.write_text(f'[directory]\nstate_dir = "{tmp}"\n')
    config = Config({"directory": {"state_dir": str(tmp)}})
    engine = make_engine(db)
    clients = ClientRegistry(engine, config)
    token = clients.add("workers-scim", "scim", "default")
    secret = clients.add("workers-ldap", "ldap", "default")
    accounts = [e for e in Directory(engine).snapshot.entries if e.kind == ACCOUNT]
    bind_dn = clients.bind_dn_of("workers-ldap")
    engine.dispose()
    serving = start_serve(db, config_path, workers=2)
    try:
        yield Ctx(serving, db, config, token, bind_dn, secret, accounts)
    finally:
        serving.stop()


# ------------------------------------------------------------------ tests


def test_both_workers_answer_and_every_request_is_logged_once(ctx):
    workers = ctx.workers()
    assert len(workers) == 2, ctx.serving.output()
    audit = ctx.audit()
    before = audit.count()
    requests = 0
    for n, worker in enumerate(sorted(workers)):
        with ctx.only(worker):
            for account in ctx.accounts[n * 5:(n + 1) * 5]:
                uid = account.first("userName")
                status, body, pid = ctx.scim("/Users", filter=f'userName eq "{uid}"')
                requests += 1
                assert status == 200 and body["totalResults"] == 1, body
                assert body["Resources"][0]["userName"] == uid
                assert pid == worker
                entries, pid = ctx.ldap(f"(uid={uid})", ["uid"])
                requests += 2  # the bind and the search
                assert [e["uid"] for e in entries] == [[uid]]
                assert pid == worker
    assert audit.count() - before == requests
    result = audit.verify()
    assert result.ok, result.message
    audit.close()


def test_cursor_pages_are_accepted_by_every_worker(ctx):
    """Cursors are signed with one key shared by the workers, so following ``nextCursor``
    over new connections works whichever worker answers: here every page is answered by
    the other worker than the one that issued its cursor."""
    workers = sorted(ctx.workers())
    seen, cursor, turn = [], "", 0
    while cursor is not None:
        worker = workers[turn % 2]
        with ctx.only(worker):
            status, body, pid = ctx.scim("/Users", cursor=cursor, count="25")
        assert status == 200, body
        assert pid == worker
        seen += [r["id"] for r in body["Resources"]]
        cursor, turn = body.get("nextCursor"), turn + 1
    assert turn >= 3
    assert len(seen) == len(set(seen)) == len(ctx.accounts)


def test_a_write_becomes_visible_through_every_worker(ctx):
    account = sole_account(ctx.accounts)
    uid, person_id = account.first("userName"), account.first("personId")
    new_name = "Xenia-Workertest"
    engine = make_engine(ctx.db)
    with write_session(engine, "test") as session:
        person = session.get(Person, person_id)
        assert person is not None and person.given_name != new_name
        person.given_name = new_name
    engine.dispose()
    for worker in sorted(ctx.workers()):
        with ctx.only(worker):
            # Each worker polls the change log on its own; wait (generously: the machine may
            # be loaded) until this one shows the write over both protocols.
            deadline = time.monotonic() + 60
            while True:
                _, body, pid = ctx.scim("/Users", filter=f'userName eq "{uid}"')
                assert pid == worker
                entries, ldap_pid = ctx.ldap(f"(uid={uid})", ["givenName"])
                assert ldap_pid == worker
                if body["Resources"][0]["name"].get("givenName") == new_name and \
                        entries[0]["givenName"] == [new_name]:
                    break
                assert time.monotonic() < deadline, (worker, body, entries)
                time.sleep(0.05)
    for _ in range(6):  # and from then on, every new connection sees it
        _, body, _ = ctx.scim("/Users", filter=f'userName eq "{uid}"')
        assert body["Resources"][0]["name"]["givenName"] == new_name
        entries, _ = ctx.ldap(f"(givenName={new_name})", ["uid"])
        assert [e["uid"] for e in entries] == [[uid]]


def test_a_killed_worker_is_restarted_and_service_continues(ctx):
    before = ctx.workers()
    assert len(before) == 2
    victim = min(before)
    os.kill(victim, signal.SIGKILL)
    uid = ctx.accounts[0].first("userName")
    for _ in range(5):  # meanwhile the other worker answers
        status, body, _ = ctx.scim("/Users", filter=f'userName eq "{uid}"')
        assert status == 200 and body["totalResults"] == 1
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        now = ctx.workers()
        replacement = now - before
        if len(now) == 2 and replacement and \
                f"ready (pid {min(replacement)})" in ctx.serving.output():
            break
        time.sleep(0.1)
    else:
        pytest.fail("no replacement worker became ready:\n" + ctx.serving.output())
    assert ctx.serving.proc.poll() is None
    assert victim not in now
    assert f"(pid {victim}) was killed by SIGKILL" in ctx.serving.output()
    for worker in sorted(now):  # both answer, the replacement included
        with ctx.only(worker):
            status, body, pid = ctx.scim("/Users", filter=f'userName eq "{uid}"')
            assert status == 200 and body["totalResults"] == 1
            assert pid == worker
            entries, pid = ctx.ldap(f"(uid={uid})", ["uid"])
            assert len(entries) == 1
            assert pid == worker


def test_sigterm_stops_the_parent_and_every_worker(ctx, tmp_path):
    """A second ``serve --workers 2`` on the same store (and the same access-log chain)."""
    config_path = tmp_path / "idm.toml"
    config_path.write_text(f'[directory]\nstate_dir = "{tmp_path}"\n')
    serving = start_serve(ctx.db, config_path, workers=2, ldaps=True)
    try:
        workers = children(serving.proc.pid)
        assert len(workers) == 2
        conn = http.client.HTTPConnection("127.0.0.1", urllib.parse.urlsplit(
            serving.scim_base).port, timeout=30)
        conn.request("GET", "/scim/v2/Users?count=1",
                     headers={"Authorization": f"Bearer {ctx.token}"})
        assert conn.getresponse().status == 200
        conn.close()
        ldaps = ldap3.Connection(ldap3.Server("127.0.0.1", port=serving.ldap_ports[1],
                                              use_ssl=True, get_info=ldap3.NONE),
                                 ctx.bind_dn, ctx.secret, auto_bind=True)
        assert ldaps.extend.standard.who_am_i() == f"dn:{ctx.bind_dn}"
        ldaps.unbind()
        started = time.monotonic()
        serving.proc.send_signal(signal.SIGTERM)
        assert serving.proc.wait(timeout=10) == 0, serving.output()
        assert time.monotonic() - started < 5
        assert not any(Path(f"/proc/{pid}").exists() for pid in workers)
    finally:
        serving.stop()
    audit = ctx.audit()
    assert audit.verify().ok
    audit.close()


def test_workers_that_cannot_start_make_serve_exit_non_zero(tmp_path, demo_db):
    exe = Path(sys.executable).with_name("idm-facade")
    # An unreachable store is found by the parent before any worker starts: one line.
    out = subprocess.run(
        [str(exe), "serve", "--workers", "2", "--scim-port", "0",
         "--db", "postgresql+psycopg://nobody@127.0.0.1:1/none"],
        capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert out.returncode == 1, out.stdout + out.stderr
    assert out.stderr.startswith("Error: cannot reach the store") and "SCIM " not in out.stdout
    # A problem only a worker finds (a TLS certificate file that is not a certificate, loaded
    # when a worker makes its LDAP listener) makes the workers die at start; the parent gives
    # up instead of restarting them forever.
    garbage = tmp_path / "not-a-certificate.pem"
    garbage.write_text("this is not PEM\n")
    config = tmp_path / "idm.toml"
    config.write_text(f'[directory]\nstate_dir = "{tmp_path}"\n'
                      f'[ldap]\ntls_cert = "{garbage}"\ntls_key = "{garbage}"\n')
    out = subprocess.run(
        [str(exe), "serve", "--workers", "2", "--scim-port", "0", "--ldap-port", "0",
         "--db", demo_db, "--config", str(config)],
        capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert out.returncode == 1, out.stdout + out.stderr
    assert "keep dying at start" in out.stderr
    assert "SCIM " not in out.stdout  # nothing was announced


def test_the_parent_does_not_start_the_reactor_before_it_forks():
    """``serve`` reads every setting before it forks its workers; importing the modules
    that do so must not install Twisted's reactor in the parent (the workers would share its
    epoll and fail to register their sockets: FileExistsError)."""
    import subprocess as sp

    code = ("import sys, idm_facade.cli.serve, idm_facade.ldap.bind_settings, "
            "idm_facade.provisioning.targets, idm_facade.directory.sources; "
            "print('twisted.internet.reactor' in sys.modules)")
    out = sp.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
