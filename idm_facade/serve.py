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
ports without a load balancer (``idm_facade.workers``: the parent binds, the workers adopt).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from idm_facade.context import Facade

if TYPE_CHECKING:
    from idm_facade.workers import Sockets

log = logging.getLogger(__name__)

#: Worker threads for WSGI requests (with ``[audit] sync = "full"`` they wait for the access
#: log's group commit; otherwise the reactor holds each answer for its record).
DEFAULT_THREADS = 32


class LdapUnavailable(RuntimeError):
    """LDAP was asked for but this installation has no LDAP listener."""


def build_facade(db: str | None, config_path: str | None = None) -> Facade:
    """The store, directory (built now), client registry and access log of one process."""
    from idm_facade.audit import AuditLog
    from idm_facade.auth import ClientRegistry
    from idm_facade.config import load_config
    from idm_facade.directory import Directory
    from idm_facade.directory.posix import PosixRange
    from store.engine import make_engine

    config = load_config(config_path)
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
    from idm_facade.scim.app import create_app
    from idm_facade.web import http_site

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
        listening.ldap_ports = [p.getHost().port for p in ports]
    return listening


def run(facade: Facade, host: str, scim_port: int, ldap_port: int | None = None,
        ldaps_port: int | None = None, threads: int = DEFAULT_THREADS,
        announce: Callable[[Listening], None] | None = None,
        sockets: Sockets | None = None) -> None:
    """Serve until interrupted: listeners, directory refresh, then the reactor loop."""
    from twisted.internet import reactor

    listening = listen(reactor, facade, host, scim_port, ldap_port, ldaps_port, threads,
                       sockets)
    facade.directory.start()
    reactor.addSystemEventTrigger("before", "shutdown", facade.directory.stop)
    close = getattr(facade.audit, "close", None)
    if callable(close):
        reactor.addSystemEventTrigger("after", "shutdown", close)
    (announce or announce_listening)(listening)
    reactor.run()  # type: ignore[attr-defined]


def announce_listening(listening: Listening) -> None:
    """Print one line per listener (scripts and tests read the ports from them)."""
    host = listening.host
    print(f"SCIM      http://{host}:{listening.http_port}/scim/v2", flush=True)
    print(f"role API  http://{host}:{listening.http_port}/api", flush=True)
    for port in listening.ldap_ports:
        print(f"LDAP      {host}:{port}", flush=True)
    sys.stdout.flush()


# --------------------------------------------------------------------------- commands

import click  # noqa: E402

# The same option as idm_facade.cli.db_option, spelled here so that importing this module
# (e.g. for listen) does not import the CLI, which imports this module.
db_option = click.option(
    "--db", "db", envvar="IDM_FACADE_DB", default=None,
    help="Database URL (sqlite:///var/idm.db, postgresql+psycopg://user@host/db).")


def _serve_options(func: Callable) -> Callable:
    func = click.option("--threads", type=int, default=DEFAULT_THREADS, show_default=True,
                        help="WSGI worker threads.")(func)
    func = click.option("--config", "config_path", default=None,
                        help="TOML configuration file (or IDM_FACADE_CONFIG).")(func)
    return func


def _serve_or_fail(facade: Facade | None, host: str, scim_port: int, ldap_port: int | None,
                   ldaps_port: int | None, threads: int, workers: int = 1,
                   db: str | None = None, config_path: str | None = None) -> None:
    try:
        if workers > 1:  # this process only supervises; each worker builds its own facade
            from idm_facade.workers import serve_workers

            sys.exit(serve_workers(workers, db, config_path, host, scim_port, ldap_port,
                                   ldaps_port, threads))
        assert facade is not None
        run(facade, host, scim_port, ldap_port, ldaps_port, threads)
    except LdapUnavailable as exc:
        raise click.ClickException(str(exc)) from None
    except OSError as exc:  # address in use, permission denied
        raise click.ClickException(f"cannot listen: {exc}") from None


@click.command("serve")
@db_option
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to listen on.")
@click.option("--scim-port", type=int, default=8080, show_default=True,
              help="HTTP port for SCIM (/scim/v2) and the role API (/api); 0 = any free port.")
@click.option("--ldap-port", type=int, default=None,
              help="LDAP port (plain, StartTLS); omitted = no LDAP listener.")
@click.option("--ldaps-port", type=int, default=None, help="LDAPS port (TLS from the start).")
@click.option("--workers", type=click.IntRange(min=1), default=1, show_default=True,
              help="Processes serving the same ports (each with its own directory); "
                   "1 = this process serves.")
@_serve_options
def serve_command(db: str | None, host: str, scim_port: int, ldap_port: int | None,
                  ldaps_port: int | None, workers: int, config_path: str | None,
                  threads: int) -> None:
    """Serve SCIM, the role API and LDAP until interrupted."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    facade = build_facade(db, config_path) if workers == 1 else None
    _serve_or_fail(facade, host, scim_port, ldap_port, ldaps_port, threads, workers, db,
                   config_path)


@click.command("demo")
@db_option
@click.option("--size", type=click.Choice(["S", "M", "L", "XL"], case_sensitive=False),
              default="S", show_default=True, help="Demo municipality size if the store is empty.")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--scim-port", type=int, default=8080, show_default=True)
@click.option("--ldap-port", type=int, default=3389, show_default=True)
@click.option("--ldaps-port", type=int, default=3636, show_default=True)
@_serve_options
def demo_command(db: str | None, size: str, host: str, scim_port: int, ldap_port: int,
                 ldaps_port: int, config_path: str | None, threads: int) -> None:
    """Create a demo municipality if the store is empty, register the demo clients, serve."""
    from sqlalchemy.orm import Session

    from store import demo, exchange
    from store.engine import database_url, make_engine

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    engine = make_engine(db)
    with Session(engine) as session:
        empty = exchange.store_is_empty(session)
    if empty:
        click.echo(f"store {database_url(db)} is empty: generating demo municipality "
                   f"{size.upper()} ...")
        exchange.import_document(engine, demo.generate(size.upper(), 1), actor="demo")
    engine.dispose()
    facade = build_facade(db, config_path)
    creds = facade.clients.ensure_demo_clients()
    snap = facade.directory.snapshot
    user = next((e.first("userName") for e in snap.entries if e.kind == "account"), "user")
    scim = creds["demo-scim"]["token"]
    cpr = creds.get("demo-cpr", {}).get("token")
    ldap = creds.get("demo-ldap", {})
    base = f"http://{host}:{scim_port}"
    try:
        from idm_facade.auth import base_dn

        dn = base_dn(facade.config, snap)
    except Exception:  # noqa: BLE001 - only for the printed example
        dn = "dc=example,dc=dk"
    lines = [
        "",
        "Demo clients (known credentials: for the demo only):",
        f"  SCIM token (no CPR):   {scim}",
    ]
    if cpr:
        lines.append(f"  SCIM token (with CPR): {cpr}")
    if ldap:
        lines.append(f"  LDAP bind DN:          {ldap.get('bind_dn')}")
        lines.append(f"  LDAP password:         {ldap.get('password')}")
    lines += [
        "",
        "Try:",
        f"  curl -H 'Authorization: Bearer {scim}' '{base}/scim/v2/ServiceProviderConfig'",
        f"  curl -H 'Authorization: Bearer {scim}' "
        f"'{base}/scim/v2/Users?filter=userName%20eq%20%22{user}%22'",
        f"  curl -H 'Authorization: Bearer {scim}' '{base}/scim/v2/Groups?"
        f"filter=urn:idm-facade:params:scim:schemas:extension:municipal:1.0:Group:kind%20eq"
        f"%20%22role%22&excludedAttributes=members'",
        f"  curl -H 'Authorization: Bearer {scim}' '{base}/api/roles/{user}'",
    ]
    if ldap:
        lines.append(f"  ldapsearch -x -H ldap://{host}:{ldap_port} -D '{ldap.get('bind_dn')}' "
                     f"-w '{ldap.get('password')}' -b '{dn}' '(uid={user})'")
    lines.append("")
    click.echo("\n".join(lines))
    try:
        from idm_facade.ldap import server as _ldap  # noqa: F401
        ldap_on = True
    except ImportError:
        click.echo("(LDAP listener not available in this installation; serving HTTP only)")
        ldap_on = False
    _serve_or_fail(facade, host, scim_port, ldap_port if ldap_on else None,
                   ldaps_port if ldap_on else None, threads)


COMMANDS = (serve_command, demo_command)
