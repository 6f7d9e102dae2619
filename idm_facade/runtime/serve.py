"""``idm-facade serve`` and ``idm-facade demo``: one process, one Twisted reactor (epoll,
dispatching without the legacy log context: :mod:`idm_facade.runtime.eventloop`).

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

from idm_facade import requestlog
from idm_facade.access.facade import Facade

if TYPE_CHECKING:
    from idm_facade.runtime.workers import Sockets

log = logging.getLogger(__name__)

#: Worker threads for WSGI requests (with ``[audit] sync = "full"`` they wait for the access
#: log's group commit; otherwise the reactor holds each answer for its record).
DEFAULT_THREADS = 32


class LdapUnavailable(RuntimeError):
    """LDAP was asked for but this installation has no LDAP listener."""


class StoreProblem(RuntimeError):
    """The store cannot be served: ``missing`` when it does not exist or holds nothing (a
    mistyped path must not serve an empty directory), else unreachable or a bad URL."""

    def __init__(self, message: str, missing: bool = False) -> None:
        super().__init__(message)
        self.missing = missing


def _shown(url: str) -> str:
    """The URL without its password (it goes into error messages)."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - unparseable: show it as given
        return url


def check_store(db: str | None, allow_empty: bool = False) -> None:
    """Refuse to serve a store that is not there: a SQLite file that does not exist, a
    database that cannot be reached or a URL that names no driver, or (unless
    ``allow_empty``) a store without data. ``demo``, ``demo-data`` and ``import`` create
    stores; ``serve`` only serves them."""
    from pathlib import Path

    from sqlalchemy import exc as sa_exc
    from sqlalchemy.orm import Session

    from store.engine import database_url, make_engine, missing_columns
    from store.exchange import store_is_empty

    url = database_url(db)
    if url.startswith("postgres://"):
        raise StoreProblem(f"database URL {_shown(url)}: use postgresql+psycopg://... "
                           f"(SQLAlchemy has no 'postgres' dialect)")
    if url.startswith("sqlite:///") and not url.startswith("sqlite:///:memory:"):
        path = Path(url.removeprefix("sqlite:///"))
        if not path.exists() and not allow_empty:
            raise StoreProblem(f"store {path} does not exist; create it with `idm-facade "
                               f"demo-data` or `idm-facade import`, or serve an empty one "
                               f"with --allow-empty", missing=True)
    try:
        engine = make_engine(url, create=allow_empty)
    except (sa_exc.ArgumentError, sa_exc.NoSuchModuleError) as exc:
        raise StoreProblem(f"database URL {_shown(url)}: {exc}") from None
    try:
        lacking = missing_columns(engine)
        if lacking:
            shown = "; ".join(f"{table}: {', '.join(cols)}" for table, cols in lacking.items())
            raise StoreProblem(f"store {_shown(url)} was made by an earlier idm-facade and "
                               f"lacks columns ({shown}); export it with that version and "
                               f"import the file into a new store")
        with Session(engine) as session:
            empty = store_is_empty(session)
    except sa_exc.OperationalError as exc:
        reason = str(exc.orig).strip().splitlines()[0] if exc.orig else str(exc)
        if "no such table" not in reason:
            raise StoreProblem(f"cannot reach the store {_shown(url)}: {reason}") from None
        empty = True  # a SQLite file without our tables
    except sa_exc.ProgrammingError:
        empty = True  # no tables yet
    finally:
        engine.dispose()
    if empty and not allow_empty:
        raise StoreProblem(f"store {_shown(url)} holds no organisation; load one with "
                           f"`idm-facade import` or `idm-facade demo-data`, or serve it "
                           f"empty with --allow-empty", missing=True)


def provisioning_workers(facade: Facade) -> list[Any]:
    """One background worker per ``[[provisioning.target]]`` (none when there is none)."""
    from idm_facade import metrics
    from idm_facade.provisioning.outbox import Provisioner, Worker
    from idm_facade.provisioning.targets import targets

    interval = float(facade.config.get("provisioning", "interval", 0.5))
    workers = [Worker(Provisioner(facade.directory.engine, facade, target), interval)
               for target in targets(facade.config)]
    for worker in workers:
        metrics.sample(f"provisioning:{worker.provisioner.target.name}",
                       metrics.provisioning_reader(worker.provisioner))
    return workers


def feed_workers(facade: Facade) -> list[Any]:
    """One background worker per ``[[provisioning.feed]]`` filling it with events."""
    from idm_facade import metrics
    from idm_facade.feed.settings import feeds
    from idm_facade.provisioning.feed import FeedPlanner, FeedWorker

    interval = float(facade.config.get("provisioning", "interval", 0.5))
    workers = [FeedWorker(FeedPlanner(facade.directory.engine, facade, feed), interval)
               for feed in feeds(facade.config)]
    for feed in feeds(facade.config):
        metrics.sample(f"feed:{feed.name}", metrics.feed_reader(facade.directory.engine,
                                                                feed.name))
    return workers


def build_facade(db: str | None, config_path: str | None = None,
                 progress: Callable[[str], None] | None = None) -> Facade:
    """The store, directory (built now; ``progress`` hears of each build step), client
    registry and access log of one process."""
    from idm_facade.access.audit import AuditLog
    from idm_facade.access.clients import ClientRegistry
    from idm_facade.config import load_config
    from idm_facade.directory import Directory
    from idm_facade.directory.posix import PosixRange
    from idm_facade.directory.sources import configured
    from schemas.attributes import declare
    from store.engine import make_engine

    config = load_config(config_path)
    requestlog.configure(config)
    declare(configured(config.section("attributes")))
    engine = make_engine(db)
    directory = Directory(engine, directory_system=config.directory_system,
                          posix=PosixRange.from_config(config), progress=progress)
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
    from idm_facade.runtime import fastlane
    from idm_facade.runtime.http import create_app, http_site

    app = create_app(facade)
    site = http_site(reactor, app, threads, facade.audit)
    fastlane.install(site, app, facade)
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
    from idm_facade.runtime import eventloop

    reactor: Any = eventloop.install()
    listening = listen(reactor, facade, host, scim_port, ldap_port, ldaps_port, threads,
                       sockets)
    facade.directory.start()
    reactor.addSystemEventTrigger("before", "shutdown", facade.directory.stop)
    from idm_facade.runtime import http, lifecycle

    for worker in provisioning_workers(facade) + feed_workers(facade):
        worker.start()
        reactor.addSystemEventTrigger("before", "shutdown", worker.stop)

    lifecycle.install(reactor, facade, listening.ports,
                      str(facade.config.path) if facade.config.path else None,
                      lambda: http.IN_FLIGHT[0])
    close = getattr(facade.audit, "close", None)
    if callable(close):
        reactor.addSystemEventTrigger("after", "shutdown", close)
    (announce or announce_listening)(listening)
    facade.clients.mark_event_loop()  # the reactor runs in this thread
    reactor.run()


def announce_listening(listening: Listening) -> None:
    """Print one line per listener (scripts and tests read the ports from them)."""
    host = listening.host
    print(f"SCIM      http://{host}:{listening.http_port}/scim/v2", flush=True)
    print(f"role API  http://{host}:{listening.http_port}/api", flush=True)
    print(f"feeds     http://{host}:{listening.http_port}/feed", flush=True)
    for port in listening.ldap_ports:
        print(f"LDAP      {host}:{port}", flush=True)
    sys.stdout.flush()
