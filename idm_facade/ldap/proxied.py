"""The PROXY protocol on the LDAP ports: the client's address through a TCP load balancer.

Behind HAProxy in TCP mode (``deploy/haproxy.cfg``) every connection comes from the balancer,
so access records would name the balancer as the source of every read and bind, and the
person-bind throttle would count every client's failures as one address's (50 typos
anywhere, and every login through the balancer is locked out). HAProxy's ``send-proxy-v2``
(or ``send-proxy``) writes the client's address in a header before the first byte of the
connection, as HAProxy's ``doc/proxy-protocol.txt`` specifies (version 1, a text line;
version 2, binary); :func:`parse` reads both.

The header is believed only from the addresses of ``[ldap] proxy_protocol_from``: anyone else
could claim any address with one. From those addresses it is required: a connection without
a valid header is closed, and the log says why, naming the balancer. Every other connection
is served as it comes.

Where the header gives no client address (version 1 ``UNKNOWN``, which HAProxy sends for a
client that came over a unix socket; version 2 ``LOCAL``, its health checks; a unix-socket
source), the connection counts as the balancer's, as the specification says it must.
Twisted's own PROXY wrapper refuses the short ``PROXY UNKNOWN`` line and a header split
before its 16th byte, closes a connection without a word in the log, and takes any text for
a version 1 address; hence this module.
"""

from __future__ import annotations

import ipaddress
import logging
from typing import Any

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.protocols import policies

from idm_facade.access.addresses import Network, contains

log = logging.getLogger(__name__)

#: The 12 bytes a version 2 header starts with.
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
#: The longest version 1 line, CRLF included ("worst case" of the specification).
V1_MAX = 107
_COMMAND_LOCAL, _COMMAND_PROXY = 0x0, 0x1
_TCP4, _TCP6 = 0x11, 0x21
#: Address lengths of TCP over IPv4 and IPv6 (addresses, then ports).
_LENGTHS = {_TCP4: 12, _TCP6: 36}


class HeaderError(ValueError):
    """The connection does not begin with a valid PROXY header (the message says how)."""


def parse(buffer: bytes) -> tuple[tuple[str, int] | None, int] | None:
    """``((host, port) of the client or None when the header names none, the header's
    length)`` once ``buffer`` holds a whole header; None while more bytes are needed.
    Raises :class:`HeaderError` as soon as ``buffer`` cannot begin with one."""
    if V2_SIGNATURE.startswith(buffer[:12]):
        return _parse_v2(buffer)
    if b"PROXY ".startswith(buffer[:6]):
        return _parse_v1(buffer)
    raise HeaderError("no PROXY header")


def _parse_v2(buffer: bytes) -> tuple[tuple[str, int] | None, int] | None:
    if len(buffer) < 16:
        return None
    version, command = buffer[12] >> 4, buffer[12] & 0x0F
    if version != 2 or command not in (_COMMAND_LOCAL, _COMMAND_PROXY):
        raise HeaderError(f"PROXY v2 with version {version}, command {command}")
    end = 16 + int.from_bytes(buffer[14:16], "big")
    if len(buffer) < end:
        return None
    family = buffer[13]
    if command == _COMMAND_LOCAL or family not in _LENGTHS:
        return None, end  # the balancer's own connection, or a source that is no IP address
    if end - 16 < _LENGTHS[family]:
        raise HeaderError("PROXY v2 addresses shorter than their family's")
    if family == _TCP4:
        host, port = str(ipaddress.IPv4Address(buffer[16:20])), buffer[24:26]
    else:
        host, port = str(ipaddress.IPv6Address(buffer[16:32])), buffer[48:50]
    return (host, int.from_bytes(port, "big")), end


def _parse_v1(buffer: bytes) -> tuple[tuple[str, int] | None, int] | None:
    line_end = buffer.find(b"\r\n", 0, V1_MAX)
    if line_end < 0:
        if len(buffer) >= V1_MAX:
            raise HeaderError("PROXY v1 line longer than 107 bytes")
        return None
    fields = buffer[:line_end].split(b" ")
    if len(fields) >= 2 and fields[1] == b"UNKNOWN":
        return None, line_end + 2  # the rest of the line is to be ignored
    if len(fields) != 6 or fields[1] not in (b"TCP4", b"TCP6"):
        raise HeaderError("PROXY v1 line not of the form PROXY TCP4|TCP6 src dst sport dport")
    try:
        host = ipaddress.ip_address(fields[2].decode("ascii"))
        port = int(fields[4])
    except (UnicodeDecodeError, ValueError):
        raise HeaderError("PROXY v1 source address or port is not one") from None
    if host.version != (4 if fields[1] == b"TCP4" else 6) or not 0 <= port <= 65535:
        raise HeaderError("PROXY v1 source address or port is not one")
    return (str(host), port), line_end + 2


class _ProxiedConnection(policies.ProtocolWrapper):
    """Reads the header, then hands every byte to the wrapped protocol, whose ``getPeer``
    is the header's client from then on."""

    def __init__(self, factory: Any, wrapped: Any) -> None:
        super().__init__(factory, wrapped)
        self._head = b""
        self._done = False  # the header is read: bytes go to the wrapped protocol
        self._refused = False  # it was not a header: nothing more is read
        self._client: IPv4Address | IPv6Address | None = None

    def dataReceived(self, data: bytes) -> None:
        wrapped: Any = self.wrappedProtocol  # (zope interfaces confuse mypy here)
        transport: Any = self.transport
        if self._done:
            wrapped.dataReceived(data)
            return
        if self._refused:
            return
        self._head += data
        try:
            found = parse(self._head)
        except HeaderError as exc:
            balancer = transport.getPeer()
            log.warning("LDAP: closing a connection from the load balancer %s: %s (is "
                        "send-proxy-v2 set on its server lines?)",
                        getattr(balancer, "host", balancer), exc)
            self._refused, self._head = True, b""
            transport.loseConnection()
            return
        if found is None:
            return
        client, end = found
        rest, self._head, self._done = self._head[end:], b"", True
        if client is not None:
            kind = IPv4Address if ":" not in client[0] else IPv6Address
            self._client = kind("TCP", client[0], client[1])
        if rest:
            wrapped.dataReceived(rest)

    def getPeer(self) -> Any:
        transport: Any = self.transport
        return self._client if self._client is not None else transport.getPeer()


class ProxyProtocolFactory(policies.WrappingFactory):
    """Reads the PROXY header on connections from ``balancers`` only."""

    protocol = _ProxiedConnection

    def __init__(self, wrapped: Any, balancers: tuple[Network, ...]) -> None:
        super().__init__(wrapped)
        self.balancers = balancers

    def buildProtocol(self, addr: Any) -> Any:
        if contains(self.balancers, getattr(addr, "host", "")):
            return super().buildProtocol(addr)
        return self.wrappedFactory.buildProtocol(addr)
