"""``idm-facade serve`` and ``idm-facade demo``: one process, one Twisted reactor.

The reactor runs every listener of the facade:
- HTTP (SCIM at ``/scim/v2``, role lookup at ``/api``): the Flask application in
  ``twisted.web.wsgi.WSGIResource`` on a reactor-managed thread pool, so slow requests (an
  access-log commit) do not hold up the event loop;
- LDAP and LDAPS via ``idm_facade.ldap.server.listen`` (ldaptor);
- the directory's background refresh thread.

One process serves the largest municipality from memory; more capacity means more such
processes (each with its own directory, all refreshed from the same change log) behind an
ordinary TCP/HTTP load balancer. Set ``[scim] cursor_secret`` so cursors from one process are
accepted by the others. On one machine, ``--workers N`` runs N such processes behind the same
ports without a load balancer (``idm_facade.runtime.workers``: the parent binds, the workers adopt).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from idm_facade.access.facade import Facade

if TYPE_CHECKING:
    from idm_facade.runtime.workers import Sockets

log = logging.getLogger(__name__)

#: Worker threads for WSGI requests (with ``[audit] sync = "full"`` they wait for the access
#: log's group commit; otherwise the reactor holds each answer for its record).
DEFAULT_THREADS = 32


class LdapUnavailable(RuntimeError):
    """LDAP was asked for but this installation has no LDAP listener."""


def build_facade(db: str | None, config_path: str | None = None) -> Facade:
    """The store, directory (built now), client registry and access log of one process."""
    from idm_facade.access.audit import AuditLog
    from idm_facade.access.clients import ClientRegistry
    from idm_facade.config import load_config
    from idm_facade.directory import Directory
    from idm_facade.directory.posix import PosixRange
    from idm_facade.directory.sources import configured
    from schemas.attributes import declare
    from store.engine import make_engine

    config = load_config(config_path)
    declare(configured(config.section("attributes")))
    engine = make_engine(db)
    directory = Directory(engine, directory_system=config.directory_system,
                          posix=PosixRange.from_config(config))
    clients = ClientRegistry(engine, config)
    audit = AuditLog(engine, config)
    return Facade(directory=directory, clients=clients, audit=audit, config=config)


@dataclass
class Listening:
    """What is being served (ports resolved when 0 was asked for)."""

    host: str
    http_port: int
    ldap_ports: list[int] = field(default_factory=list)
    ports: list[Any] = field(default_factory=list)


def listen(reactor: Any, facade: Facade, host: str, scim_port: int,
           ldap_port: int | None = None, ldaps_port: int | None = None,
           threads: int = DEFAULT_THREADS, sockets: Sockets | None = None) -> Listening:
    """Open every listener on ``reactor`` (call before ``reactor.run()``); with ``sockets``
    (a ``--workers`` worker), serve on those already-listening sockets instead."""
    from idm_facade.runtime.http import create_app, http_site

    app = create_app(facade)
    site = http_site(reactor, app, threads, facade.audit)
    port = (reactor.listenTCP(scim_port, site, interface=host) if sockets is None
            else sockets.adopt_http(reactor, site))
    listening = Listening(host, port.getHost().port, ports=[port])
    if ldap_port is not None or ldaps_port is not None:
        try:
            from idm_facade.ldap import server as ldap_server
        except ImportError as exc:
            raise LdapUnavailable(
                f"LDAP was requested (--ldap-port/--ldaps-port) but the LDAP server is not "
                f"available in this installation: {exc}") from exc
        ports = (ldap_server.listen(reactor, facade, host, ldap_port, ldaps_port)
                 if sockets is None else sockets.adopt_ldap(reactor, facade))
        listening.ports.extend(ports)
        listening.ldap_ports = [p.getHost().port for p in ports]  # type: ignore[misc]
    return listening


def run(facade: Facade, host: str, scim_port: int, ldap_port: int | None = None,
        ldaps_port: int | None = None, threads: int = DEFAULT_THREADS,
        announce: Callable[[Listening], None] | None = None,
        sockets: Sockets | None = None) -> None:
    """Serve until interrupted: listeners, directory refresh, then the reactor loop."""
    from twisted.internet import reactor as global_reactor

    reactor: Any = global_reactor  # the module's stub types it as a bare interface
    listening = listen(reactor, facade, host, scim_port, ldap_port, ldaps_port, threads,
                       sockets)
    facade.directory.start()
    reactor.addSystemEventTrigger("before", "shutdown", facade.directory.stop)
    close = getattr(facade.audit, "close", None)
    if callable(close):
        reactor.addSystemEventTrigger("after", "shutdown", close)
    (announce or announce_listening)(listening)
    reactor.run()


def announce_listening(listening: Listening) -> None:
    """Print one line per listener (scripts and tests read the ports from them)."""
    host = listening.host
    print(f"SCIM      http://{host}:{listening.http_port}/scim/v2", flush=True)
    print(f"role API  http://{host}:{listening.http_port}/api", flush=True)
    for port in listening.ldap_ports:
        print(f"LDAP      {host}:{port}", flush=True)
    sys.stdout.flush()
