"""Commands for clients, the access log and erasure: ``idm-facade clients|audit|erase-person``.

Secrets are printed once, when made; only their hashes are stored. ``audit verify`` exits
non-zero and names the first bad record when the chain is broken.
"""

from __future__ import annotations

import json
import sys
from datetime import datetime
from typing import Any

import click

from idm_facade.cli.options import config_option, db_option


def _config(path: str | None):  # noqa: ANN202 - Config, imported lazily
    from idm_facade.config import load_config

    try:
        return load_config(path)
    except (OSError, ValueError) as exc:
        raise click.ClickException(f"cannot read configuration {path}: {exc}") from exc


def _registry(db: str | None, config_path: str | None):  # noqa: ANN202
    from idm_facade.access.clients import ClientRegistry
    from idm_facade.access.policies import PolicyError
    from store.engine import make_engine

    try:
        return ClientRegistry(make_engine(db), _config(config_path))
    except PolicyError as exc:
        raise click.ClickException(str(exc)) from exc


def _audit(db: str | None, config_path: str | None):  # noqa: ANN202
    from idm_facade.access.audit import AuditLog
    from store.engine import make_engine

    try:
        return AuditLog(make_engine(db), _config(config_path))
    except ValueError as exc:
        raise click.ClickException(str(exc)) from exc


# --------------------------------------------------------------------------- clients


@click.group("clients")
def clients() -> None:
    """Register, list, revoke and rotate the clients that may read the directory."""


@clients.command("add")
@click.argument("name")
@click.option("--scim", "kind", flag_value="scim", help="A SCIM / role-API client (token).")
@click.option("--ldap", "kind", flag_value="ldap", help="An LDAP client (bind DN, password).")
@click.option("--policy", "policy", default="default", show_default=True,
              help="Policy name: built-in default, demo-internal, demo-cpr or [policies.X].")
@db_option
@config_option
def clients_add(name: str, kind: str | None, policy: str, db: str | None,
                config_path: str | None) -> None:
    """Register client NAME; prints its secret once."""
    from idm_facade.access.clients import LDAP, ClientError

    if kind is None:
        raise click.UsageError("say --scim or --ldap")
    registry = _registry(db, config_path)
    try:
        secret = registry.add(name, kind, policy)
    except ClientError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"client {name} ({kind}, policy {policy}) registered.")
    if kind == LDAP:
        click.echo(f"bind DN:  {registry.bind_dn_of(name)}")
        click.echo(f"password: {secret}")
    else:
        click.echo(f"token: {secret}")
    click.echo("Store the secret now: it is not shown again (only its hash is kept).")


@clients.command("list")
@db_option
@config_option
@click.option("--json", "as_json", is_flag=True, help="JSON lines instead of a table.")
def clients_list(db: str | None, config_path: str | None, as_json: bool) -> None:
    """List the registered clients (never their secrets)."""
    infos = _registry(db, config_path).list()
    if infos and not as_json:
        click.echo(f"{'NAME':<24} {'KIND':<5} {'POLICY':<16} {'STATE':<24} BIND DN")
    for info in infos:
        state = f"revoked {info.revoked:%Y-%m-%d %H:%M}" if info.revoked else "active"
        if as_json:
            click.echo(json.dumps({"name": info.name, "kind": info.kind,
                                   "policy": info.policy, "bind_dn": info.bind_dn,
                                   "created": info.created.isoformat(),
                                   "rotated": info.rotated.isoformat() if info.rotated else None,
                                   "revoked": info.revoked.isoformat() if info.revoked else None}))
        else:
            click.echo(f"{info.name:<24} {info.kind:<5} {info.policy:<16} {state:<24} "
                       f"{info.bind_dn or ''}")
    if not infos and not as_json:
        click.echo("no clients registered")


@clients.command("revoke")
@click.argument("name")
@db_option
@config_option
def clients_revoke(name: str, db: str | None, config_path: str | None) -> None:
    """Revoke client NAME: its credentials stop working (running servers: within ~1 s)."""
    from idm_facade.access.clients import ClientError

    try:
        _registry(db, config_path).revoke(name)
    except ClientError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"client {name} revoked")


@clients.command("policy")
@click.argument("name")
@click.argument("policy")
@db_option
@config_option
def clients_policy(name: str, policy: str, db: str | None, config_path: str | None) -> None:
    """Give client NAME the policy POLICY (running servers: from its next request, ~1 s)."""
    from idm_facade.access.clients import ClientError

    try:
        _registry(db, config_path).set_policy(name, policy)
    except ClientError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"client {name} now reads through policy {policy}")


@clients.command("rotate")
@click.argument("name")
@db_option
@config_option
def clients_rotate(name: str, db: str | None, config_path: str | None) -> None:
    """Give client NAME a new secret (printed once); the old one stops working."""
    from idm_facade.access.clients import LDAP, ClientError

    registry = _registry(db, config_path)
    try:
        secret = registry.rotate(name)
    except ClientError as exc:
        raise click.ClickException(str(exc)) from exc
    kind = next(i.kind for i in registry.list() if i.name == name)
    if kind == LDAP:
        click.echo(f"bind DN:  {registry.bind_dn_of(name)}")
        click.echo(f"password: {secret}")
    else:
        click.echo(f"token: {secret}")


# --------------------------------------------------------------------------- audit


@click.group("audit")
def audit() -> None:
    """The access log: verify the chain, answer access requests, enforce retention."""


@audit.command("verify")
@db_option
@config_option
def audit_verify(db: str | None, config_path: str | None) -> None:
    """Recompute the hash chain; exit status 1 and the first bad record when broken."""
    result = _audit(db, config_path).verify()
    start = f" (from purge anchor at seq {result.anchor_seq})" if result.anchor_seq else ""
    if result.ok:
        click.echo(f"access log OK: {result.checked} record(s){start}, head seq "
                   f"{result.last_seq or 0} hash {result.head_hash}")
        return
    where = f" at seq {result.bad_seq}" if result.bad_seq is not None else ""
    click.echo(f"access log BROKEN{where}: {result.message} "
               f"({result.checked} record(s) verified before it{start})", err=True)
    sys.exit(1)


def _broken(db: str | None, config_path: str | None, fine: str, about: str | None = None
            ) -> Any:
    """The access log when ``verify`` finds it broken (the break shown), else None with
    ``fine`` said; a break that is not ``about`` what the command repairs is an error."""
    audit = _audit(db, config_path)
    result = audit.verify()
    if result.ok:
        click.echo(fine)
        return None
    click.echo(f"access log BROKEN: {result.message}", err=True)
    if about is not None and about not in result.message:
        raise click.ClickException(f"the problem is not the {about}; nothing done")
    return audit


@audit.command("reset-index")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@db_option
@config_option
def audit_reset_index(yes: bool, db: str | None, config_path: str | None) -> None:
    """Acknowledge a lost log: empty the index that still covers its records.

    A log whose index covers records it no longer has (the log file was deleted or replaced)
    refuses every record, so the server answers nothing. Restore the file if you can; if not,
    this empties the index so a fresh log can start, and the loss stays on record in the
    server's log and in this command's output."""
    audit = _broken(db, config_path, "the access log and its index agree: nothing to reset")
    if audit is None:
        return
    if not yes:
        click.confirm("Empty the index and accept the loss?", abort=True)
    audit.reset_index()
    click.echo("index emptied; restart the server to take records again")


@audit.command("sign-anchor")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@db_option
@config_option
def audit_sign_anchor(yes: bool, db: str | None, config_path: str | None) -> None:
    """Sign the purge anchor with this installation's key.

    Purges sign the anchor they leave, and ``audit verify`` refuses an anchor that is not
    signed with the key (``[audit] anchor_key`` or the key file in the state directory): one
    written into the database by anyone else could hide records. An anchor left by a version
    before signing needs this once, after you have checked that its purge was yours."""
    audit = _broken(db, config_path, "the purge anchor is signed and valid: nothing to do",
                    about="purge anchor")
    if audit is None:
        return
    if not yes:
        click.confirm("Sign the anchor as this installation's own?", abort=True)
    audit.sign_anchor()
    again = audit.verify()
    click.echo(f"anchor signed; verify: {'OK' if again.ok else 'BROKEN: ' + again.message}")


def _when(value: str | None) -> datetime | None:
    if value is None:
        return None
    try:
        from store.validity import to_datetime

        return to_datetime(value)
    except ValueError as exc:
        raise click.BadParameter(f"not an ISO date or datetime: {value!r}") from exc


@audit.command("query")
@click.option("--subject", help="Person id: who read data about this person.")
@click.option("--client", "client", help="Client name.")
@click.option("--since", help="From this ISO date/datetime (UTC, inclusive).")
@click.option("--until", help="Before this ISO date/datetime (UTC, exclusive).")
@click.option("--limit", type=int, default=None)
@click.option("--json", "as_json", is_flag=True, help="JSON lines instead of a table.")
@db_option
@config_option
def audit_query(subject: str | None, client: str | None, since: str | None, until: str | None,
                limit: int | None, as_json: bool, db: str | None,
                config_path: str | None) -> None:
    """Records by subject, client and time: time, client, operation, whether CPR was read."""
    if not (subject or client or since or until):
        raise click.UsageError("give at least one of --subject, --client, --since, --until")
    records = _audit(db, config_path).query(subject=subject, client=client,
                                            since=_when(since), until=_when(until),
                                            limit=limit)
    if records and not as_json:
        click.echo(f"{'SEQ':>8} {'TIME':<19} {'CLIENT':<20} {'SOURCE':<22} {'OPERATION':<10} "
                   f"{'STATUS':<8} {'CPR':<3} {'PERS.':>5} QUERY")
    for rec in records:
        if as_json:
            click.echo(json.dumps(rec.as_dict(), ensure_ascii=False))
        else:
            cpr = "CPR" if "cpr" in rec.sensitive else "-"
            click.echo(f"{rec.seq:>8} {rec.time:%Y-%m-%d %H:%M:%S} {rec.client:<20} "
                       f"{rec.source:<22} {rec.operation:<10} {rec.status:<8} {cpr:<3} "
                       f"{len(rec.subjects):>5} {rec.query}")
    if not as_json:
        click.echo(f"{len(records)} record(s)", err=True)


@audit.command("purge")
@click.option("--older-than", "older_than", default=None,
              help="Age such as 6months, 180d, 26w, 1y (default: [audit] retention, 6months).")
@db_option
@config_option
def audit_purge(older_than: str | None, db: str | None, config_path: str | None) -> None:
    """Delete records older than the retention period; the chain stays verifiable."""
    from idm_facade.access.audit import cutoff_for

    log = _audit(db, config_path)
    spec = older_than or log.retention
    try:
        cutoff = cutoff_for(spec)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--older-than") from exc
    deleted = log.purge(cutoff)
    click.echo(f"purged {deleted} record(s) older than {cutoff:%Y-%m-%d %H:%M:%S} UTC ({spec})")


# --------------------------------------------------------------------------- erasure


@click.command("erase-person")
@click.argument("person_id")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@db_option
@config_option
def erase_person(person_id: str, yes: bool, db: str | None, config_path: str | None) -> None:
    """Remove PERSON_ID's personal data from the store and record the erasure."""
    from idm_facade.access.audit import AccessRecord, AuditLog, AuditUnavailable
    from store.engine import make_engine
    from store.erasure import UnknownPerson
    from store.erasure import erase_person as erase

    if not yes:
        click.confirm(f"Erase the personal data of person {person_id}?", abort=True)
    engine = make_engine(db)
    log = AuditLog(engine, _config(config_path))
    try:
        result = erase(engine, person_id)
    except UnknownPerson as exc:
        raise click.ClickException(f"no person with id {person_id}") from exc
    try:
        log.record(AccessRecord("cli", "cli", "erase", f"erase-person {person_id}", "ok",
                                [person_id], []))
    except AuditUnavailable as exc:
        raise click.ClickException(f"erased, but the access log could not record it: {exc}") \
            from exc
    finally:
        log.close()
    click.echo(f"person {person_id} erased: names pseudonymised, CPR removed, "
               f"{result.addresses_deleted} address(es) deleted")


COMMANDS = (clients, audit, erase_person)
