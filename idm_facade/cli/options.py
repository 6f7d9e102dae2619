"""Options every command shares, defined once: ``--db`` and ``--config``."""

from __future__ import annotations

import click

db_option = click.option(
    "--db",
    "db",
    envvar="IDM_FACADE_DB",
    default=None,
    help="Database URL (sqlite:///var/idm.db, postgresql+psycopg://user@host/db).",
)

config_option = click.option(
    "--config", "config_path", envvar="IDM_FACADE_CONFIG", default=None,
    type=click.Path(exists=True, dir_okay=False),
    help="Facade configuration file (TOML): policies, [ldap], [scim], [audit].")
