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


#: Exit codes (README, "Command line"): 0 done; 1 failed while starting or running (a port in
#: use, the store unreachable); 2 usage or configuration error; 3 the store is missing or
#: empty (``serve`` without ``--allow-empty``).
EXIT_FAILED, EXIT_USAGE, EXIT_NO_STORE = 1, 2, 3


class ConfigFailure(click.ClickException):
    """A configuration error, in one line (no traceback)."""

    exit_code = EXIT_USAGE


class NoStore(click.ClickException):
    """The store to serve is missing or empty."""

    exit_code = EXIT_NO_STORE
