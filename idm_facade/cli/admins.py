"""``idm-facade admins add|list|remove|passwd``: administrators of the browser console.

Passwords are read from a prompt (twice) or, for scripts, one line of standard input with
``--password-stdin``; never from the command line, where other users could read them.
"""

from __future__ import annotations

import sys

import click

from idm_facade.cli.options import db_option


def _registry(db: str | None):  # noqa: ANN202 - AdminRegistry, imported lazily
    from idm_facade.admin.accounts import AdminRegistry
    from store.engine import make_engine

    return AdminRegistry(make_engine(db))


def _password(from_stdin: bool) -> str:
    if from_stdin:
        return sys.stdin.readline().rstrip("\n")
    return click.prompt("password", hide_input=True, confirmation_prompt=True)


def _fail(exc: ValueError) -> None:
    raise click.ClickException(str(exc)) from exc


@click.group("admins")
def admins() -> None:
    """Administrators of the console at /admin (roles: viewer, dpo, admin)."""


@admins.command("add")
@click.argument("name")
@click.option("--role", type=click.Choice(["viewer", "dpo", "admin"]), default="viewer",
              show_default=True, help="viewer: organisation and roles; dpo: also the access "
              "log; admin: also clients and Klassifikation.")
@click.option("--password-stdin", is_flag=True, help="Read the password from standard input.")
@db_option
def add(name: str, role: str, password_stdin: bool, db: str | None) -> None:
    """Add an administrator (Argon2id hash of the password; at least 12 characters)."""
    from idm_facade.admin.accounts import AdminError

    try:
        _registry(db).add(name, role, _password(password_stdin))
    except AdminError as exc:
        _fail(exc)
    click.echo(f"administrator {name} added with role {role}")


@admins.command("passwd")
@click.argument("name")
@click.option("--password-stdin", is_flag=True, help="Read the password from standard input.")
@db_option
def passwd(name: str, password_stdin: bool, db: str | None) -> None:
    """Set a new password (ends the administrator's sessions, lifts a lockout)."""
    from idm_facade.admin.accounts import AdminError

    try:
        _registry(db).set_password(name, _password(password_stdin))
    except AdminError as exc:
        _fail(exc)
    click.echo(f"password of {name} changed")


@admins.command("list")
@db_option
def list_admins(db: str | None) -> None:
    """The administrators: name, role, created, locked until."""
    click.echo("name\trole\tcreated\tlocked_until")
    for row in _registry(db).list():
        click.echo(f"{row.name}\t{row.role}\t{row.created:%Y-%m-%d %H:%M}\t"
                   f"{row.locked_until.isoformat() if row.locked_until else '-'}")


@admins.command("remove")
@click.argument("name")
@db_option
def remove(name: str, db: str | None) -> None:
    """Remove an administrator (their sessions end at their next request)."""
    from idm_facade.admin.accounts import AdminError

    try:
        _registry(db).remove(name)
    except AdminError as exc:
        _fail(exc)
    click.echo(f"administrator {name} removed")


COMMANDS = (admins,)
