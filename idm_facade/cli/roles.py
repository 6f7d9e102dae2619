"""``idm-facade roles USERNAME [--explain] [--at DATE]``: effective roles and why."""

from __future__ import annotations

from datetime import datetime

import click

from idm_facade.cli.disclosure import record_disclosure
from idm_facade.cli.options import config_option, db_option
from idm_facade.directory.roles import describe_roles


@click.command("roles")
@click.argument("username")
@click.option("--explain", is_flag=True, help="Show why the account holds each role.")
@click.option("--at", "at", type=click.DateTime(["%Y-%m-%d", "%Y-%m-%dT%H:%M:%S"]),
              default=None, help="Compute the roles as of this date (default: now, UTC).")
@db_option
@config_option
@click.option("--system", "directory_system", default="AD", show_default=True,
              help="IT system whose accounts are the directory's users.")
def roles_command(username: str, explain: bool, at: datetime | None, db: str | None,
                  config_path: str | None, directory_system: str) -> None:
    """Print USERNAME's effective job-function roles (tab-separated: system, identifier,
    name)."""
    from idm_facade.directory.load import load
    from store.engine import make_engine
    from store.validity import utcnow

    engine = make_engine(db, create=False)
    try:
        data = load(engine, at or utcnow())
    finally:
        engine.dispose()
    systems = {s.id for s in data.it_systems.values() if s.user_key == directory_system}
    wanted = username.casefold()
    account = next((a for a in data.accounts.values()
                    if a.it_system_id in systems and a.username.casefold() == wanted), None)
    if account is None:
        raise click.ClickException(f"unknown user: {username} (in {directory_system} at "
                                   f"{data.at.isoformat()})")
    lines = describe_roles(data, account.id, explain)
    record_disclosure(db, config_path, "cli.roles", f"{username} at {data.at.isoformat()}",
                      [account.person_id] if account.person_id else [], [])
    if not lines:
        click.echo(f"{account.username} holds no roles at {data.at.isoformat()}", err=True)
    for line in lines:
        click.echo(line)


COMMANDS = (roles_command,)
