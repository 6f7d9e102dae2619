"""Malformed search requests get the result code RFC 4511 names, and nothing is guessed.

ldaptor decodes any integer as a scope or a limit and accepts empty substrings; the server
once treated scope 9 or 255 as a subtree search, answered ``sizeLimit=-1`` with
sizeLimitExceeded, a bad escape in the base DN with noSuchObject, and took message id 0.
Each case is sent over a raw socket (the client libraries refuse to send most of them).
"""

from __future__ import annotations

import shutil
import socket
from collections.abc import Iterator

import ldap
import pytest
from ldaptor.protocols import pureber, pureldap

from tests.test_ldap_more import Ctx, _one_message, _wire
from tests.test_ldap_more import ctx as more_ctx  # noqa: F401 - the served demo

pytestmark = pytest.mark.skipif(shutil.which("ldapsearch") is None,
                                reason="ldap-utils (ldapsearch) is not installed")

PROTOCOL_ERROR, INVALID_DN_SYNTAX, SUCCESS = 2, 34, 0
_DECODER = pureldap.LDAPBERDecoderContext_TopLevel(
    inherit=pureldap.LDAPBERDecoderContext_LDAPMessage(
        fallback=pureldap.LDAPBERDecoderContext(fallback=pureber.BERDecoderContext()),
        inherit=pureldap.LDAPBERDecoderContext(fallback=pureber.BERDecoderContext())))


@pytest.fixture
def sock(more_ctx: Ctx) -> Iterator[socket.socket]:  # noqa: F811
    conn = socket.create_connection(("127.0.0.1", more_ctx.serving.ldap_ports[0]), timeout=10)
    conn.sendall(_wire(1, pureldap.LDAPBindRequest(dn=more_ctx.bind_dn.encode(),
                                                   auth=more_ctx.secret.encode())))
    assert _next(conn)[1].resultCode == SUCCESS
    yield conn
    conn.close()


_pending: dict[int, bytes] = {}


def _next(conn: socket.socket) -> tuple[int, object]:
    """The next message from the server: (message id, decoded protocol op)."""
    buf = _pending.pop(conn.fileno(), b"")
    while _one_message(buf) is None:
        chunk = conn.recv(65536)
        if not chunk:
            raise ConnectionError("closed by the server")
        buf += chunk
    *_, raw, rest = _one_message(buf)  # type: ignore[misc]
    _pending[conn.fileno()] = rest
    message, _ = pureber.berDecodeObject(_DECODER, raw)
    return message.id, message.value


def _done(conn: socket.socket, msgid: int) -> object:
    while True:
        got, op = _next(conn)
        if got == msgid and isinstance(op, pureldap.LDAPSearchResultDone):
            return op


def _search(ctx: Ctx, **kw) -> pureldap.LDAPSearchRequest:
    args = dict(baseObject=f"ou=people,{ctx.base}".encode(), scope=0,
                filter=pureldap.LDAPFilter_present("objectClass"), attributes=[b"1.1"])
    args.update(kw)
    return pureldap.LDAPSearchRequest(**args)


@pytest.mark.parametrize("scope", [4, 9, 255])
def test_an_unknown_scope_is_a_protocol_error(more_ctx: Ctx, sock, scope: int) -> None:  # noqa: F811
    sock.sendall(_wire(2, _search(more_ctx, scope=scope)))
    done = _done(sock, 2)
    assert done.resultCode == PROTOCOL_ERROR and b"scope" in done.errorMessage


def test_a_negative_size_limit_is_a_protocol_error(more_ctx: Ctx, sock) -> None:  # noqa: F811
    sock.sendall(_wire(3, _search(more_ctx, sizeLimit=-1)))
    assert _done(sock, 3).resultCode == PROTOCOL_ERROR


def test_an_empty_substring_is_a_protocol_error(more_ctx: Ctx, sock) -> None:  # noqa: F811
    empty = pureldap.LDAPFilter_substrings(type="cn", substrings=[
        pureldap.LDAPFilter_substrings_any("")])
    sock.sendall(_wire(4, _search(more_ctx, filter=empty)))
    assert _done(sock, 4).resultCode == PROTOCOL_ERROR
    # the connection goes on
    sock.sendall(_wire(5, _search(more_ctx)))
    assert _done(sock, 5).resultCode == SUCCESS


def test_a_bad_escape_in_the_base_is_invalid_dn_syntax(more_ctx: Ctx) -> None:  # noqa: F811
    conn = more_ctx.conn()
    with pytest.raises(ldap.INVALID_DN_SYNTAX):
        conn.search_s(f"uid=\\zz,ou=people,{more_ctx.base}", ldap.SCOPE_BASE)
    conn.unbind_s()


@pytest.mark.parametrize("request_kind", ["search", "bind"])
@pytest.mark.parametrize("msgid", [0, -1])
def test_message_id_zero_ends_the_connection_with_a_notice(more_ctx: Ctx, sock, msgid: int,  # noqa: F811
                                                           request_kind: str) -> None:
    # A simple bind takes a path of its own from the bytes (protocol.py, _simple_bind_now):
    # the same refusal there.
    sock.sendall(_wire(msgid, _search(more_ctx) if request_kind == "search" else
                       pureldap.LDAPBindRequest(dn=more_ctx.bind_dn.encode(),
                                                auth=more_ctx.secret.encode())))
    msgid, op = _next(sock)
    assert msgid == 0 and isinstance(op, pureldap.LDAPExtendedResponse)
    assert op.resultCode == PROTOCOL_ERROR
    with pytest.raises(ConnectionError):
        _next(sock)
