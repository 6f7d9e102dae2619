"""Signals of a serving process: SIGHUP reloads, SIGTERM (and SIGINT) drains.

**SIGHUP** reads the configuration file again and applies what can change without a restart,
keeping every connection: policies (a bound LDAP client's next request reads through its
policy as it is now; SCIM and role-API clients at their next request), the clients' cached
verifications (looked at again in the store), and the LDAP TLS certificate and key (new
StartTLS and LDAPS handshakes use the new pair; open TLS sessions keep theirs). A
configuration that does not load is logged and the running one is kept. Other settings (ports,
limits, the access log) need a restart.

**SIGTERM** stops accepting connections at once, tells idle LDAP clients with a notice of
disconnection (RFC 4511 §4.4.1, ``unavailable``), lets the requests in progress finish and be
recorded, and stops when none are left or after ``DRAIN_SECONDS``, whichever comes first.
Under ``serve --workers`` the parent passes both signals on to every worker.
"""

from __future__ import annotations

import logging
import signal
import time
from typing import Any

from idm_facade.access.facade import Facade

log = logging.getLogger(__name__)

#: The longest a drain waits for requests in progress before stopping anyway.
DRAIN_SECONDS = 20.0
_POLL = 0.05


def _ldap_factories(ports: list[Any]) -> list[Any]:
    found = []
    for port in ports:
        factory: Any = getattr(port, "factory", None)
        while hasattr(factory, "wrappedFactory"):  # inside TLS and the PROXY protocol
            factory = factory.wrappedFactory
        if hasattr(factory, "open_connections"):
            found.append(factory)
    return found


def reload(facade: Facade, ports: list[Any], config_path: str | None) -> bool:
    """Apply the configuration file again (SIGHUP); False (and the running configuration
    kept) when it does not load."""
    from idm_facade.config import ConfigError, load_config
    from idm_facade.ldap import tls

    try:
        config = load_config(config_path)
        facade.clients.reload(config)
    except (ConfigError, ValueError) as exc:
        log.error("SIGHUP: the configuration was not reloaded: %s", exc)
        return False
    contexts = {id(f.tls): f.tls for f in _ldap_factories(ports) if f.tls is not None}
    for context in contexts.values():
        try:
            tls.reload_context(context, config)
        except Exception as exc:  # noqa: BLE001 - a bad certificate keeps the running one
            log.error("SIGHUP: the TLS certificate was not reloaded: %s", exc)
            return False
    log.info("SIGHUP: reloaded policies, clients and TLS certificates")
    return True


class Drain:
    """Stops a serving reactor gracefully (SIGTERM/SIGINT)."""

    def __init__(self, reactor: Any, ports: list[Any], in_flight: Any) -> None:
        self.reactor = reactor
        self.ports = ports
        self.in_flight = in_flight  # () -> HTTP requests in progress
        self.started: float | None = None

    def begin(self) -> None:
        if self.started is not None:
            return
        self.started = time.monotonic()
        log.info("draining: no new connections; finishing the requests in progress")
        for port in self.ports:
            port.stopListening()
        for factory in _ldap_factories(self.ports):
            for connection in list(factory.open_connections):
                if not connection.active:
                    connection.shut_down()
        self._check()

    def _busy(self) -> int:
        busy = self.in_flight()
        for factory in _ldap_factories(self.ports):
            for connection in list(factory.open_connections):
                if connection.active:
                    busy += 1
                else:
                    connection.shut_down()  # went idle: its last answer is out
        return busy

    def _check(self) -> None:
        assert self.started is not None
        busy = self._busy()
        waited = time.monotonic() - self.started
        if busy and waited < DRAIN_SECONDS:
            self.reactor.callLater(_POLL, self._check)
            return
        if busy:
            log.warning("draining: %d request(s) still in progress after %.0f s; stopping",
                        busy, waited)
        else:
            log.info("drained in %.2f s", waited)
        self.reactor.stop()


def install(reactor: Any, facade: Facade, ports: list[Any], config_path: str | None,
            in_flight: Any) -> None:
    """SIGHUP reloads, SIGTERM and SIGINT drain (installed once the reactor runs, over
    Twisted's own handlers, which would stop at once)."""
    drain = Drain(reactor, ports, in_flight)

    def on_term(_signum: int, _frame: Any) -> None:
        reactor.callFromThread(drain.begin)

    def on_hup(_signum: int, _frame: Any) -> None:
        reactor.callFromThread(reload, facade, ports, config_path)

    def handlers() -> None:
        signal.signal(signal.SIGTERM, on_term)
        signal.signal(signal.SIGINT, on_term)
        signal.signal(signal.SIGHUP, on_hup)

    reactor.callWhenRunning(handlers)
