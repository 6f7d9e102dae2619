"""The PROXY protocol on the LDAP ports: the client's address through a TCP load balancer.

Behind HAProxy in TCP mode (``deploy/haproxy.cfg``) every connection comes from the balancer,
so access records would name the balancer as the source of every read and bind, and the
person-bind throttle would count every client's failures as one address's (50 typos
anywhere, and every login through the balancer is locked out). HAProxy's ``send-proxy-v2``
(or ``send-proxy``) writes the client's address in a header before the first byte of the
connection; Twisted's wrapper reads it and answers ``getPeer`` with it.

The header is believed only from the addresses of ``[ldap] proxy_protocol_from``: anyone else
could claim any address with one. From those addresses it is required (a connection without
a valid header is closed); every other connection is served as it comes.
"""

from __future__ import annotations

from typing import Any

# The factory behind Twisted's public proxyEndpoint, which wraps every connection of a port;
# here only the balancers' are (tests/test_deploy.py runs a real HAProxy against it).
from twisted.protocols.haproxy._wrapper import HAProxyWrappingFactory

from idm_facade.access.addresses import Network, contains


class ProxyProtocolFactory(HAProxyWrappingFactory):
    """Reads the PROXY header (v1 or v2) on connections from ``balancers`` only."""

    def __init__(self, wrapped: Any, balancers: tuple[Network, ...]) -> None:
        super().__init__(wrapped)
        self.balancers = balancers

    def buildProtocol(self, addr: Any) -> Any:
        if contains(self.balancers, getattr(addr, "host", "")):
            return super().buildProtocol(addr)
        return self.wrappedFactory.buildProtocol(addr)
