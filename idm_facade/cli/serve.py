"""``idm-facade serve`` and ``idm-facade demo``: the servers, from the command line.

What serving means (listeners, reactor, workers) lives in :mod:`idm_facade.runtime.serve`;
this module only parses options, prints what ``demo`` made, and turns start-up failures into
one-line errors.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable

import click
from twisted.internet.error import CannotListenError

from idm_facade.access.facade import Facade
from idm_facade.cli.options import ConfigFailure, config_option, db_option
from idm_facade.runtime.serve import (
    DEFAULT_THREADS,
    LdapUnavailable,
    build_facade,
    check_store,
    run,
)


def _serve_options(func: Callable) -> Callable:
    func = click.option("--threads", type=int, default=DEFAULT_THREADS, show_default=True,
                        help="WSGI worker threads.")(func)
    return config_option(func)


def _serve_or_fail(facade: Facade | None, host: str, scim_port: int, ldap_port: int | None,
                   ldaps_port: int | None, threads: int, workers: int = 1,
                   db: str | None = None, config_path: str | None = None) -> None:
    try:
        if workers > 1:  # this process only supervises; each worker builds its own facade
            from idm_facade.runtime.workers import serve_workers

            sys.exit(serve_workers(workers, db, config_path, host, scim_port, ldap_port,
                                   ldaps_port, threads))
        assert facade is not None
        run(facade, host, scim_port, ldap_port, ldaps_port, threads)
    except LdapUnavailable as exc:
        raise click.ClickException(str(exc)) from None
    except (OSError, CannotListenError) as exc:  # address in use, permission denied
        raise click.ClickException(f"cannot listen: {exc}") from None
    except ValueError as exc:  # a setting read when the listeners are made (TLS, upstream)
        raise ConfigFailure(f"configuration: {exc}") from None


def _check_listener_settings(config: object) -> None:
    """Read the tables otherwise read only when a listener or worker starts (person binds,
    load balancers, provisioning targets and feeds), so their errors are one line here, not
    a dying worker."""
    from idm_facade.access.addresses import proxy_networks
    from idm_facade.feed.settings import feeds
    from idm_facade.ldap.bind_settings import PersonSettings, UpstreamSettings
    from idm_facade.provisioning.targets import targets

    UpstreamSettings.from_config(config)
    PersonSettings.from_config(config)
    proxy_networks(config)
    targets(config)
    feeds(config)


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
@click.option("--allow-empty", is_flag=True,
              help="Serve a store that does not exist yet or holds no organisation "
                   "(otherwise an error: a mistyped path must not serve an empty directory).")
@_serve_options
def serve_command(db: str | None, host: str, scim_port: int, ldap_port: int | None,
                  ldaps_port: int | None, workers: int, allow_empty: bool,
                  config_path: str | None, threads: int) -> None:
    """Serve SCIM, the role API and LDAP until interrupted."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    from idm_facade.config import ConfigError, load_config
    from idm_facade.directory.sources import configured

    try:  # configuration errors are reported before anything starts (workers included)
        config = load_config(config_path)
        configured(config.section("attributes"))
        _check_listener_settings(config)
    except ConfigError:
        raise
    except ValueError as exc:
        raise ConfigFailure(f"configuration: {exc}") from None
    check_store(db, allow_empty)
    try:
        facade = build_facade(db, config_path) if workers == 1 else None
    except ValueError as exc:  # a setting the configuration got wrong, named in the message
        raise ConfigFailure(f"configuration: {exc}") from None
    _serve_or_fail(facade, host, scim_port, ldap_port, ldaps_port, threads, workers, db,
                   config_path)


DEMO_ADMIN_PASSWORD = "demo-admin-change-me"


def _demo_admin(facade: Facade) -> str:
    """The demo's console administrator (role admin, a known password: demo only)."""
    from idm_facade.admin.accounts import AdminError, AdminRegistry

    registry = AdminRegistry(facade.directory.engine)
    try:
        registry.add("demo-admin", "admin", DEMO_ADMIN_PASSWORD)
    except AdminError:
        registry.set_password("demo-admin", DEMO_ADMIN_PASSWORD)
    return DEMO_ADMIN_PASSWORD


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
    from tqdm import tqdm

    from idm_facade.cli.data import generate_with_progress, import_with_progress
    from idm_facade.directory.directory import BUILD_STEPS
    from store import exchange
    from store.engine import database_url, make_engine

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(message)s")
    size = size.upper()
    engine = make_engine(db)
    with Session(engine) as session:
        empty = exchange.store_is_empty(session)
    engine.dispose()
    if empty:
        click.echo(f"[1/4] generating the demo municipality {size} ...")
        started = time.monotonic()
        doc = generate_with_progress(size, 1, None)
        click.echo(f"      done in {time.monotonic() - started:.1f} s")
        click.echo(f"[2/4] importing it into {database_url(db)} ...")
        started = time.monotonic()
        counts = import_with_progress(db, doc, False, "demo")
        click.echo(f"      {sum(counts.values()):,} rows in {time.monotonic() - started:.1f} s")
    else:
        click.echo(f"[1/4] the store {database_url(db)} holds an organisation: using it")
        click.echo("[2/4] nothing to import")
    click.echo("[3/4] building the directory snapshot ...")
    started = time.monotonic()
    with tqdm(total=len(BUILD_STEPS), desc="snapshot", disable=None, leave=False) as bar:
        def step(name: str) -> None:
            bar.set_postfix_str(name)
            bar.update(1)

        facade = build_facade(db, config_path, progress=step)
    click.echo(f"      {len(facade.directory.snapshot):,} entries in "
               f"{time.monotonic() - started:.1f} s")
    click.echo("[4/4] registering the demo clients and serving")
    creds = facade.clients.ensure_demo_clients()
    admin_password = _demo_admin(facade)
    snap = facade.directory.snapshot
    user = next((e.first("userName") for e in snap.entries if e.kind == "account"), "user")
    scim = creds["demo-scim"]["token"]
    cpr = creds.get("demo-cpr", {}).get("token")
    ldap = creds.get("demo-ldap", {})
    base = f"http://{host}:{scim_port}"
    try:
        from idm_facade.access.clients import base_dn

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
    lines.append(f"  Console {base}/admin/: demo-admin / {admin_password}")
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
