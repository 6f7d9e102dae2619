"""The ``idm-facade`` command: data management, diagnostics and the servers.

Every command takes ``--db URL`` (or ``IDM_FACADE_DB``); the default is the embedded SQLite
file ``var/idm.db``.
"""

from __future__ import annotations

import click

from store.engine import database_url

db_option = click.option(
    "--db",
    "db",
    envvar="IDM_FACADE_DB",
    default=None,
    help="Database URL (sqlite:///var/idm.db, postgresql+psycopg://user@host/db).",
)


@click.group()
def main() -> None:
    """idm-facade: one organisation store served as SCIM 2.0, LDAP v3 and role lookup."""


@main.command("init-db")
@db_option
def init_db(db: str | None) -> None:
    """Create the store's tables (idempotent)."""
    from store.engine import make_engine

    make_engine(db)
    click.echo(f"store ready at {database_url(db)}")
