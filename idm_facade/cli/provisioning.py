"""``idm-facade provisioning``: push to the targets of ``[[provisioning.target]]`` now, see how
far each is, and reconcile one with what it should hold. ``serve`` runs the same work in the
background, one worker per target."""

from __future__ import annotations

import time
from typing import Any

import click

from idm_facade.cli.options import config_option, db_option


def _provisioners(db: str | None, config_path: str | None, name: str | None,
                  facade: Any = None, required: bool = True) -> list:
    from idm_facade.provisioning.outbox import Provisioner
    from idm_facade.provisioning.targets import targets
    from idm_facade.runtime.serve import build_facade

    facade = facade if facade is not None else build_facade(db, config_path)
    found = targets(facade.config)
    if name is not None:
        found = [t for t in found if t.name == name]
        if not found:
            raise click.ClickException(f"no [[provisioning.target]] named {name!r}")
    if not found and required:
        raise click.ClickException("no [[provisioning.target]] is configured")
    return [Provisioner(facade.directory.engine, facade, t) for t in found]


@click.group("provisioning")
def provisioning() -> None:
    """Push accounts and groups to the IT systems' SCIM endpoints."""


@provisioning.command("sync")
@click.argument("name")
@click.option("--wait", type=float, default=300.0, show_default=True,
              help="Seconds to keep retrying deliveries the target does not take yet.")
@db_option
@config_option
def sync(name: str, wait: float, db: str | None, config_path: str | None) -> None:
    """Plan and send everything NAME lacks, until it holds what it should."""
    from idm_facade.provisioning.client import Refused

    (p,) = _provisioners(db, config_path, name)
    started = time.monotonic()
    try:
        done = p.run_until_done(started + wait)
    except Refused as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        p.release()
    status = p.status()
    p.close()
    click.echo(f"{name}: {done.sent} sent, {done.failed} failed tries, {status['held']} held, "
               f"{status['pending']} pending, {time.monotonic() - started:.1f} s")
    if status["pending"]:
        raise click.ClickException(f"{name}: {status['pending']} deliveries left; last error: "
                                   f"{status['last_error']}")


@provisioning.command("status")
@db_option
@config_option
def status(db: str | None, config_path: str | None) -> None:
    """How far each target is (held, pending, lag, last error) and each change feed (newest
    cursor, oldest cursor still readable, client)."""
    from idm_facade.feed.settings import feeds
    from idm_facade.runtime.serve import build_facade
    from store import feed as feed_store

    facade = build_facade(db, config_path)
    found = _provisioners(db, config_path, None, facade, required=False)
    configured = feeds(facade.config)
    if not found and not configured:
        raise click.ClickException("no [[provisioning.target]] or [[provisioning.feed]] is "
                                   "configured")
    if found:
        click.echo(f"{'TARGET':<20} {'HELD':>7} {'PENDING':>8} {'LAG S':>8}  LAST ERROR")
    for p in found:
        s = p.status()
        click.echo(f"{s['target']:<20} {s['held']:>7} {s['pending']:>8} "
                   f"{s['lag_seconds']:>8.1f}  {s['last_error'] or '-'}")
        p.close()
    if configured:
        engine = facade.directory.engine
        feed_store.create(engine)
        click.echo(f"{'FEED':<20} {'LATEST':>8} {'OLDEST':>8}  CLIENT")
        with engine.connect() as conn:
            for feed in configured:
                head = feed_store.head(conn, feed.name)
                click.echo(f"{feed.name:<20} {head.last:>8} {head.pruned + 1:>8}  "
                           f"{feed.client}")


@provisioning.command("reconcile")
@click.argument("name")
@click.option("--dry-run", is_flag=True, help="Report the differences, change nothing.")
@db_option
@config_option
def reconcile_command(name: str, dry_run: bool, db: str | None,
                      config_path: str | None) -> None:
    """Read NAME's users and groups and make them what the facade would send."""
    from idm_facade.provisioning.reconcile import reconcile

    (p,) = _provisioners(db, config_path, name)
    found = reconcile(p, dry_run=dry_run)
    p.close()
    verb = "would" if dry_run else "did"
    click.echo(f"{name}: {len(found.missing)} missing ({verb} create), {len(found.changed)} "
               f"different ({verb} replace), {len(found.extra)} no longer pushed ({verb} "
               f"disable or delete), {len(found.unmanaged)} not the facade's (left alone)")
    for line in found.missing + found.changed + found.extra:
        click.echo(f"  {line}")


COMMANDS = (provisioning,)
