"""The access record of a command that shows personal data (``roles``, ``export``).

A command run on the server discloses as much as a client's request: ``export`` writes every
person with their CPR number, ``roles`` one account's roles. So it writes an access record
first, as the front ends do, and shows nothing when the log cannot be written.
"""

from __future__ import annotations

import getpass

import click


def record_disclosure(db: str | None, config_path: str | None, operation: str, query: str,
                      subjects: list[str], sensitive: list[str]) -> None:
    """Write the record (client ``cli``, source ``cli:<login name>``) or stop the command
    with a clear error: no record, no output."""
    from idm_facade.access.audit import AccessRecord, AuditLog, AuditUnavailable
    from idm_facade.config import load_config
    from store.engine import make_engine

    engine = make_engine(db)
    audit = AuditLog(engine, load_config(config_path))
    try:
        audit.record(AccessRecord(client="cli", source=f"cli:{_login()}",
                                  operation=operation, query=query, status="ok",
                                  subjects=sorted(set(subjects)), sensitive=sensitive))
    except AuditUnavailable as exc:
        raise click.ClickException(f"access log unavailable ({exc}); nothing shown") from None
    finally:
        audit.close()
        engine.dispose()


def _login() -> str:
    try:
        return getpass.getuser()
    except Exception:  # noqa: BLE001 - no login name in some containers
        return "unknown"
