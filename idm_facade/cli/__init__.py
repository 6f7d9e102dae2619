"""The ``idm-facade`` command: data management, diagnostics and the servers.

Every command takes ``--db URL`` (or ``IDM_FACADE_DB``); the default is the embedded SQLite
file ``var/idm.db``. One module per group of commands; nothing outside this package imports
it (it is the top of the import order: cli -> runtime -> front ends -> directory/access).
"""

from __future__ import annotations

from typing import Any

import click

from idm_facade.cli import access, admins, data, provisioning, roles, serve
from idm_facade.cli.options import ConfigFailure, NoStore
from idm_facade.config import ConfigError
from idm_facade.runtime.serve import StoreProblem


class _Main(click.Group):
    """Turns configuration and store problems of any command into one-line errors."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except ConfigError as exc:
            raise ConfigFailure(f"configuration: {exc}") from None
        except StoreProblem as exc:
            if exc.missing:
                raise NoStore(str(exc)) from None
            raise click.ClickException(str(exc)) from None


@click.group(cls=_Main)
@click.version_option(package_name="idm-facade", prog_name="idm-facade")
def main() -> None:
    """idm-facade: one organisation store served as SCIM 2.0, LDAP v3 and role lookup."""


for _module in (data, roles, access, serve, provisioning, admins):
    for _command in _module.COMMANDS:
        main.add_command(_command)
