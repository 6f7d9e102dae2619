"""Networks named in the configuration, and whether a client's address is in one.

Two settings list addresses: the systems whose person-bind failures count per account only
(``[ldap.persons] address_exempt``) and the load balancers whose PROXY protocol header is
believed (``[ldap] proxy_protocol_from``). Both are matched here, against the address a
connection comes from as Twisted gives it (an IPv4-mapped IPv6 address as its IPv4 one).
"""

from __future__ import annotations

import ipaddress
from typing import Any

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def networks(values: Any, setting: str) -> tuple[Network, ...]:
    """The networks of a list of addresses and networks (``10.0.5.10``, ``10.0.6.0/24``,
    ``fd00::/64``); ValueError naming ``setting`` and the value that is neither."""
    if values is None:
        return ()
    if not isinstance(values, list):
        raise ValueError(f"{setting} must be a list of IP addresses or networks")
    found = []
    for value in values:
        try:
            # strict: "10.0.0.5/8" is a typo for an address or for 10.0.0.0/8, not either
            network = ipaddress.ip_network(str(value), strict=True)
        except ValueError as exc:
            raise ValueError(f"{setting}: {value!r} is not an IP address or network (such "
                             f"as 10.0.5.10 or 10.0.5.0/24): {exc}") from None
        mapped = network.network_address.ipv4_mapped \
            if isinstance(network, ipaddress.IPv6Network) and network.prefixlen >= 96 else None
        if mapped is not None:  # ::ffff:10.0.0.5 is matched as the IPv4 address it is
            network = ipaddress.IPv4Network(f"{mapped}/{network.prefixlen - 96}")
        found.append(network)
    return tuple(found)


def ip_of(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The IP address ``host`` (as a transport gives it) is, an IPv4-mapped IPv6 address as
    its IPv4 one; None when it is no IP address."""
    try:
        address = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def contains(within: tuple[Network, ...], host: str) -> bool:
    """Is ``host`` (an address as a transport gives it; anything else is in no network) in
    one of ``within``?"""
    address = ip_of(host) if within else None
    return address is not None and any(address in network for network in within)


def proxy_networks(config: Any) -> tuple[Network, ...]:
    """``[ldap] proxy_protocol_from``: the load balancers whose PROXY header is believed."""
    section = config.section("ldap") if config is not None else {}
    return networks(section.get("proxy_protocol_from"), "[ldap] proxy_protocol_from")
