"""The PROXY protocol header on the LDAP port, as load balancers write it (HAProxy's
doc/proxy-protocol.txt, versions 1 and 2), sent by hand from an address listed in
``[ldap] proxy_protocol_from`` (127.0.0.2) to a real ``idm-facade serve``. What HAProxy itself
sends is tested with HAProxy (tests/test_person_binds.py, tests/test_deploy.py); here are the
forms it sends less often, and the wrong ones: a header that arrives a byte at a time, a
version 1 ``UNKNOWN`` line (HAProxy's for a client on a unix socket), a version 2 ``LOCAL``
header (its health checks), an IPv6 client, and headers that are not one. Requests are
encoded and answers decoded by ldaptor, not by the code under test."""

from __future__ import annotations

import ipaddress
import socket
import struct
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.netfaults import ldap_messages
from tests.serving import StoreCopy, access_records, served_copy

V2 = b"\r\n\r\n\x00\r\nQUIT\n"


@pytest.fixture(scope="module")
def served(demo_db: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[StoreCopy]:
    folder = tmp_path_factory.mktemp("proxied")
    with served_copy(demo_db, folder, '[ldap]\nproxy_protocol_from = ["127.0.0.2"]\n',
                     (("app", "ldap", "default"),)) as copy:
        yield copy


def _bind(copy: StoreCopy) -> bytes:
    from ldaptor.protocols import pureldap

    return pureldap.LDAPMessage(pureldap.LDAPBindRequest(
        dn=copy.bind_dn("app").encode(), auth=copy.secrets["app"].encode()), id=1).toWire()


def _send(copy: StoreCopy, chunks: list[bytes], source: str = "127.0.0.2") -> list:
    """Send ``chunks`` (a short pause between them) from ``source``; the LDAP messages
    answered before the server closed the connection or 10 s passed."""
    assert copy.serving is not None
    with socket.socket() as sock:
        sock.bind((source, 0))
        sock.settimeout(10)
        sock.connect(("127.0.0.1", copy.serving.ldap_ports[0]))
        for chunk in chunks:
            sock.sendall(chunk)
            time.sleep(0.02)
        answer = b""
        try:
            while True:
                data = sock.recv(65536)
                if not data:
                    break
                answer += data
                messages, _ = ldap_messages(answer)
                if messages:
                    return messages
        except (ConnectionResetError, TimeoutError):
            pass
    return ldap_messages(answer)[0]


def _sources(copy: StoreCopy, last: str | None = None) -> list[str]:
    """Where the app's access records say its requests came from (with ``last``: once the
    last one starts with it, as a bind's record may follow its answer)."""
    records = access_records(copy.db, lambda rs: last is None or bool(rs) and rs[-1].source
                             .startswith(last), client="app")
    return [r.source.split("@")[0] for r in records]


def _v2(family: int, source: bytes, destination: bytes, ports: tuple[int, int]) -> bytes:
    body = source + destination + struct.pack("!HH", *ports)
    return V2 + bytes([0x21, family]) + struct.pack("!H", len(body)) + body


def test_headers_as_balancers_write_them(served: StoreCopy) -> None:
    bind = _bind(served)
    ipv4 = _v2(0x11, ipaddress.IPv4Address("192.0.2.9").packed,
               ipaddress.IPv4Address("10.0.0.1").packed, (5555, 389))
    ipv6 = b"PROXY TCP6 2001:db8:0:0:0:0:0:1 2001:db8::2 6000 389\r\n"
    local = V2 + bytes([0x20, 0x00]) + b"\x00\x00"  # LOCAL, UNSPEC: no addresses
    cases = [
        ([bytes([b]) for b in ipv4 + bind[:3]] + [bind[3:]], "ldap:192.0.2.9:5555"),
        ([ipv6 + bind], "ldap:2001:db8::1:6000"),  # recorded as a direct client's would be
        ([b"PROXY UNKNOWN\r\n", bind], "ldap:127.0.0.2:"),  # the balancer's own
        ([local + bind], "ldap:127.0.0.2:"),
    ]
    for chunks, source in cases:
        answers = _send(served, chunks)
        assert [int(m.value.resultCode) for m in answers] == [0], (source, answers)
        assert _sources(served, source)[-1].startswith(source), (_sources(served), source)


@pytest.mark.parametrize("header", [
    b"",  # no header at all
    b"PROXY TCP4 evil 127.0.0.1 1 389\r\n",  # an address that is none
    b"PROXY TCP4 192.0.2.1 127.0.0.1 abc 389\r\n",
    b"PROXY TCP6 192.0.2.1 127.0.0.1 1 389\r\n",  # the wrong family
    b"PROXY " + b"9" * 120,  # no end of line within 107 bytes
    V2 + bytes([0x31, 0x11]) + struct.pack("!H", 12) + bytes(12),  # version 3
])
def test_a_balancer_without_a_valid_header_is_refused_and_named(
        served: StoreCopy, header: bytes) -> None:
    """From a listed balancer, a connection that does not begin with a valid header gets
    no answer (nobody can claim an address, or take the balancer's, by sending a bad one)
    and the log names the balancer and says why; the server goes on."""
    before = len(_sources(served))
    assert _send(served, [header + _bind(served)]) == []
    assert len(_sources(served)) == before
    assert served.serving is not None
    deadline = time.monotonic() + 10
    while "closing a connection from the load balancer 127.0.0.2" not in \
            served.serving.output() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "closing a connection from the load balancer 127.0.0.2" in served.serving.output()
    answers = _send(served, [b"PROXY UNKNOWN\r\n" + _bind(served)])
    assert [int(m.value.resultCode) for m in answers] == [0]


def test_a_header_from_anyone_else_claims_nothing(served: StoreCopy, tmp_path: Path) -> None:
    """Only the listed balancer's header is read: from 127.0.0.1 a header is not LDAP, and
    the connection is closed without an answer or a record."""
    before = _sources(served)
    header = b"PROXY TCP4 6.6.6.6 127.0.0.1 4242 389\r\n"
    answers = _send(served, [header + _bind(served)], source="127.0.0.1")
    assert all(int(getattr(m.value, "resultCode", 0)) != 0 for m in answers)
    assert _sources(served) == before
    # An administrator who forgot to list a balancer is told what the bytes were.
    assert served.serving is not None
    hint = "a PROXY protocol header: if this is a load balancer of yours, list it in " \
           "[ldap] proxy_protocol_from"
    deadline = time.monotonic() + 10
    while hint not in served.serving.output() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert hint in served.serving.output()
    answers = _send(served, [_bind(served)], source="127.0.0.1")  # plain LDAP still works
    assert [int(m.value.resultCode) for m in answers] == [0]
    assert _sources(served, "ldap:127.0.0.1:")[-1].startswith("ldap:127.0.0.1:")
