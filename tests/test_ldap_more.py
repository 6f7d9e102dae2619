"""More of the LDAP front end against ``idm-facade serve`` on the S demo: abandon, timeLimit,
idle timeout, live changes without a restart, and descending server-side sort.

The server runs with a short idle timeout (``[ldap] idle_timeout``) so the timeout can be
observed in a test; every other test here keeps its connections busy. Abandon and the idle
timeout are checked on a raw socket, so that "no reply" means no bytes at all, not whatever
a client library chose to discard.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass

import ldap
import ldap3
import pytest
from ldaptor.protocols import pureldap

from idm_facade.access.clients import ClientRegistry
from idm_facade.config import Config
from idm_facade.directory import Directory
from schemas.attributes import ACCOUNT
from store.engine import make_engine, write_session
from store.models import Person
from tests.picks import sole_account
from tests.serving import Serving, copy_store, ldap_bind, start_serve

pytestmark = pytest.mark.skipif(shutil.which("ldapsearch") is None,
                                reason="ldap-utils (ldapsearch) is not installed")

IDLE_TIMEOUT = 2.0
BIND_RESPONSE, SEARCH_ENTRY, SEARCH_DONE, EXTENDED_RESPONSE = 0x61, 0x64, 0x65, 0x78
NOTICE_OF_DISCONNECTION = b"1.3.6.1.4.1.1466.20036"


@dataclass
class Ctx:
    serving: Serving
    engine: object
    base: str
    bind_dn: str
    secret: str
    accounts: list

    @property
    def people(self) -> str:
        return f"ou=people,{self.base}"

    def conn(self):
        return ldap_bind(self.serving.ldap_url, self.bind_dn, self.secret)

    def ldapsearch(self, *args: str) -> subprocess.CompletedProcess:
        cmd = ["ldapsearch", "-x", "-LLL", "-o", "ldif-wrap=no", "-H", self.serving.ldap_url,
               "-D", self.bind_dn, "-w", self.secret]
        return subprocess.run(cmd + list(args), capture_output=True, text=True, timeout=60,
                              env=dict(os.environ, LDAPTLS_REQCERT="never"))


@pytest.fixture(scope="module")
def ctx(demo_db, tmp_path_factory) -> Iterator[Ctx]:
    tmp = tmp_path_factory.mktemp("ldapmore")
    db = copy_store(demo_db, tmp / "idm.db")  # this module writes to its store
    config_path = tmp / "idm.toml"
    config_path.write_text(f'[directory]\nstate_dir = "{tmp}"\n'
                           f"[ldap]\nidle_timeout = {IDLE_TIMEOUT}\n")
    engine = make_engine(db)
    clients = ClientRegistry(engine, Config({"directory": {"state_dir": str(tmp)}}))
    secret = clients.add("more", "ldap", "default")
    accounts = [e for e in Directory(engine).snapshot.entries if e.kind == ACCOUNT]
    serving = start_serve(db, config_path)
    try:
        yield Ctx(serving, engine, clients.base, clients.bind_dn_of("more"), secret, accounts)
    finally:
        serving.stop()
        engine.dispose()


# ------------------------------------------------------------------ raw protocol helpers


def _wire(msgid: int, op) -> bytes:
    return pureldap.LDAPMessage(id=msgid, value=op).toWire()


def _read_messages(sock: socket.socket, until, timeout: float = 10.0) -> list[tuple[int, int]]:
    """(message id, protocol op tag) of each message received, until ``until(messages)`` is
    true, the peer closes, or ``timeout`` passes."""
    sock.settimeout(0.2)
    buf = b""
    out: list[tuple[int, int]] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not until(out):
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            continue
        if not chunk:
            out.append((-1, -1))  # closed by the server
            break
        buf += chunk
        while True:
            parsed = _one_message(buf)
            if parsed is None:
                break
            (msgid, tag, raw), buf = parsed[:3], parsed[3]
            out.append((msgid, tag))
            if tag == EXTENDED_RESPONSE and NOTICE_OF_DISCONNECTION in raw:
                out.append((0, -2))  # marks the notice of disconnection
    return out


def _length(buf: bytes, pos: int) -> tuple[int, int] | None:
    if pos >= len(buf):
        return None
    first = buf[pos]
    if first < 0x80:
        return first, pos + 1
    n = first & 0x7F
    if pos + 1 + n > len(buf):
        return None
    return int.from_bytes(buf[pos + 1:pos + 1 + n], "big"), pos + 1 + n


def _one_message(buf: bytes) -> tuple[int, int, bytes, bytes] | None:
    """Split one LDAPMessage off ``buf``: (msgid, op tag, message bytes, rest)."""
    if len(buf) < 2:
        return None
    assert buf[0] == 0x30, buf[:10]
    header = _length(buf, 1)
    if header is None:
        return None
    size, start = header
    end = start + size
    if end > len(buf):
        return None
    assert buf[start] == 0x02
    id_len, id_start = _length(buf, start + 1)  # type: ignore[misc]
    msgid = int.from_bytes(buf[id_start:id_start + id_len], "big")
    return msgid, buf[id_start + id_len], buf[:end], buf[end:]


def _bound_socket(ctx: Ctx) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", ctx.serving.ldap_ports[0]), timeout=10)
    sock.sendall(_wire(1, pureldap.LDAPBindRequest(dn=ctx.bind_dn.encode(),
                                                   auth=ctx.secret.encode())))
    got = _read_messages(sock, lambda m: any(t == BIND_RESPONSE for _, t in m))
    assert (1, BIND_RESPONSE) in got, got
    return sock


def _search(base: str, flt: str = "objectClass") -> pureldap.LDAPSearchRequest:
    return pureldap.LDAPSearchRequest(baseObject=base.encode(), scope=2,
                                      filter=pureldap.LDAPFilter_present(flt),
                                      attributes=[b"*", b"+"])


# ------------------------------------------------------------------ abandon


def test_abandon_gets_no_reply_and_the_connection_stays_usable(ctx):
    sock = _bound_socket(ctx)
    try:
        # A full subtree search and its abandon in one segment, then a small search.
        sock.sendall(_wire(2, _search(ctx.base)) + _wire(3, pureldap.LDAPAbandonRequest(id=2)))
        uid = ctx.accounts[0].first("userName")
        small = pureldap.LDAPSearchRequest(
            baseObject=ctx.people.encode(), scope=1, attributes=[b"uid"],
            filter=pureldap.LDAPFilter_equalityMatch(
                attributeDesc=pureldap.LDAPAttributeDescription(b"uid"),
                assertionValue=pureldap.LDAPAssertionValue(uid.encode())))
        sock.sendall(_wire(4, small))
        got = _read_messages(sock, lambda m: (4, SEARCH_DONE) in m)
        # Give a runaway abandoned search a moment to show itself.
        got += _read_messages(sock, lambda m: False, timeout=0.5)
    finally:
        sock.close()
    assert (4, SEARCH_ENTRY) in got and (4, SEARCH_DONE) in got, got
    assert (2, SEARCH_DONE) not in got, "an abandoned search must not be answered"
    assert sum(1 for msgid, _ in got if msgid == 2) < len(ctx.accounts), \
        "the abandoned search kept sending"
    assert not any(msgid == 3 for msgid, _ in got), "abandon itself gets no reply"
    assert (-1, -1) not in got, "the server closed the connection"


def test_abandon_with_python_ldap(ctx):
    conn = ctx.conn()
    msgid = conn.search_ext(ctx.base, ldap.SCOPE_SUBTREE, "(objectClass=*)", ["*", "+"])
    conn.abandon_ext(msgid)
    uid = ctx.accounts[1].first("userName")
    res = conn.search_s(ctx.people, ldap.SCOPE_ONELEVEL, f"(uid={uid})", ["uid"])
    assert res[0][1]["uid"] == [uid.encode()]
    assert conn.whoami_s() == f"dn:{ctx.bind_dn}"
    conn.unbind_s()


# ------------------------------------------------------------------ time limit


def test_time_limit_gives_a_valid_result_and_the_connection_works(ctx):
    out = ctx.ldapsearch("-l", "1", "-b", ctx.base, "(objectClass=*)", "*", "+")
    assert out.returncode in (0, 3), out.stderr  # success, or 3 timeLimitExceeded
    if out.returncode == 3:
        assert "Time limit exceeded" in out.stderr
    else:
        assert out.stdout.count("\ndn: ") + 1 > len(ctx.accounts)
    # ldap3 sends the time limit in the request; the same connection is used afterwards.
    conn = ldap3.Connection(ldap3.Server("127.0.0.1", port=ctx.serving.ldap_ports[0]),
                            ctx.bind_dn, ctx.secret, auto_bind=True)
    conn.search(ctx.base, "(objectClass=*)", attributes=["*", "+"], time_limit=1)
    assert conn.result["result"] in (0, 3), conn.result
    if conn.result["result"] == 0:
        assert len(conn.entries) > len(ctx.accounts)
    uid = ctx.accounts[2].first("userName")
    assert conn.search(ctx.people, f"(uid={uid})", attributes=["uid"])
    assert conn.entries[0].uid.value == uid
    conn.unbind()


# ------------------------------------------------------------------ idle timeout


def test_idle_connection_is_closed_with_a_notice(ctx):
    sock = _bound_socket(ctx)
    try:
        started = time.monotonic()
        got = _read_messages(sock, lambda m: (-1, -1) in m, timeout=IDLE_TIMEOUT + 5)
        waited = time.monotonic() - started
    finally:
        sock.close()
    assert (0, -2) in got, f"no notice of disconnection: {got}"
    assert (-1, -1) in got, "the server did not close the idle connection"
    assert waited >= IDLE_TIMEOUT - 0.5
    # python-ldap reports the notice (52 unavailable) or the closed socket (SERVER_DOWN);
    # a new connection works.
    conn = ctx.conn()
    time.sleep(IDLE_TIMEOUT + 1.5)
    with pytest.raises((ldap.UNAVAILABLE, ldap.SERVER_DOWN)):
        conn.search_s(ctx.people, ldap.SCOPE_ONELEVEL, "(uid=nobody)", ["uid"])
    fresh = ctx.conn()
    assert fresh.whoami_s() == f"dn:{ctx.bind_dn}"
    fresh.unbind_s()


# ------------------------------------------------------------------ live changes


def test_a_change_in_the_store_is_visible_without_restart(ctx):
    account = sole_account(ctx.accounts)
    uid, person_id = account.first("userName"), account.first("personId")
    new_name = "Zacharias-Livetest"
    with write_session(ctx.engine, "test") as session:
        person = session.get(Person, person_id)
        assert person is not None and person.given_name != new_name
        person.given_name = new_name
    conn = ctx.conn()
    seen = None
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        res = conn.search_s(ctx.people, ldap.SCOPE_ONELEVEL, f"(uid={uid})", ["givenName"])
        seen = res[0][1].get("givenName")
        if seen == [new_name.encode()]:
            break
        time.sleep(0.1)
    assert seen == [new_name.encode()], seen
    # The new value is indexed too: a filter on it finds the account.
    found = conn.search_s(ctx.people, ldap.SCOPE_ONELEVEL, f"(givenName={new_name})", ["uid"])
    assert [e["uid"] for _, e in found] == [[uid.encode()]]
    conn.unbind_s()


# ------------------------------------------------------------------ sort


def test_descending_sort_through_ldapsearch(ctx):
    out = ctx.ldapsearch("-E", "sss=-uid", "-b", ctx.people, "-s", "one",
                         "(objectClass=inetOrgPerson)", "uid")
    assert out.returncode == 0, out.stderr
    uids = [line[5:] for line in out.stdout.splitlines() if line.startswith("uid: ")]
    assert len(uids) == len(ctx.accounts)
    assert uids == sorted(uids, key=str.casefold, reverse=True)
    assert uids != sorted(uids, key=str.casefold)
    ascending = ctx.ldapsearch("-E", "sss=uid", "-b", ctx.people, "-s", "one",
                               "(objectClass=inetOrgPerson)", "uid")
    assert [line[5:] for line in ascending.stdout.splitlines()
            if line.startswith("uid: ")] == uids[::-1]


def test_paged_search_survives_a_refresh_between_pages(ctx):
    """RFC 2696: one paged search is one result set. A store change (and directory refresh)
    between two pages neither breaks the search nor shifts its pages."""
    from ldap.controls import SimplePagedResultsControl

    conn = ctx.conn()
    control = SimplePagedResultsControl(True, size=50, cookie=b"")
    msgid = conn.search_ext(ctx.people, ldap.SCOPE_ONELEVEL, "(uid=*)", ["uid"],
                            serverctrls=[control])
    _, first, _, controls = conn.result3(msgid)
    cookie = next(c for c in controls if c.controlType == control.controlType).cookie
    assert cookie and len(first) == 50
    account = next(e for e in ctx.accounts if e.attrs.get("personId"))
    with write_session(ctx.engine, "test") as session:
        session.get(Person, account.first("personId")).surname = "Sidefornyet"
    deadline = time.monotonic() + 5  # wait until the server has a newer snapshot
    while time.monotonic() < deadline:
        if conn.search_s(ctx.people, ldap.SCOPE_ONELEVEL, "(sn=Sidefornyet)", ["uid"]):
            break
        time.sleep(0.1)
    else:
        pytest.fail("the change never became visible")
    uids = [e["uid"][0] for _, e in first]
    while cookie:
        control.cookie = cookie
        msgid = conn.search_ext(ctx.people, ldap.SCOPE_ONELEVEL, "(uid=*)", ["uid"],
                                serverctrls=[control])
        _, page, _, controls = conn.result3(msgid)
        uids += [e["uid"][0] for _, e in page]
        cookie = next(c for c in controls if c.controlType == control.controlType).cookie
    assert len(uids) == len(set(uids)) == len(ctx.accounts)
    conn.unbind_s()
