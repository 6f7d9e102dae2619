"""The access log's settings: the ``[audit]`` config table, and where the log lives.

:class:`AuditSettings` reads and checks the ``[audit]`` table once, when a log opens, so a
bad setting fails at start rather than at first use: ``db``, ``sync`` and ``sync_interval``
(what they promise: :mod:`idm_facade.access.audit.writer`), ``timeout``, ``retention``
(:func:`parse_age`, :func:`cutoff_for`; :mod:`idm_facade.access.audit.retention`),
``index_interval`` and ``index_records`` (:mod:`idm_facade.access.audit.index`).

The log lives in its own SQLite file beside a SQLite store (``idm.db`` -> ``idm-audit.db``)
unless ``[audit] db`` names a database, or the store's database already holds a log
(:func:`_default_url`). Its derived index gets a SQLite file of its own beside a SQLite log
file (``idm-audit.db`` -> ``idm-audit-index.db``, :func:`_index_url`). :func:`_engine_for`
opens either with explicit write locks and the configured sync mode.
"""

from __future__ import annotations

import os
import re
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event, inspect
from sqlalchemy.engine import Connection, make_url

from idm_facade.access.audit.record import _now
from idm_facade.config import Config

DEFAULT_RETENTION = "6months"

_AGE = re.compile(r"^\s*(\d+)\s*(h|hours?|d|days?|w|weeks?|m|mo|months?|y|years?)\s*$",
                  re.IGNORECASE)


def parse_age(spec: str) -> tuple[int, str]:
    """``"6months"``, ``"180d"``, ``"2w"``, ``"1y"``, ``"12h"`` as (amount, unit); ValueError
    naming the problem otherwise."""
    match = _AGE.match(str(spec))
    if not match:
        raise ValueError(f"cannot read age {spec!r}: use e.g. 6months, 180d, 26w, 1y, 12h")
    amount, unit = int(match.group(1)), match.group(2).lower()
    unit = {"h": "hours", "d": "days", "w": "weeks", "m": "months", "mo": "months",
            "y": "years"}.get(unit, unit if unit.endswith("s") else unit + "s")
    return amount, unit


def cutoff_for(spec: str, now: datetime | None = None) -> datetime:
    """The instant ``spec`` before ``now``; months and years are calendar months."""
    amount, unit = parse_age(spec)
    now = now or _now()
    if unit in ("hours", "days", "weeks"):
        return now - timedelta(**{unit: amount})
    months = amount * (12 if unit == "years" else 1)
    year, month = divmod(now.year * 12 + now.month - 1 - months, 12)
    month += 1
    days_in = [31, 29 if year % 4 == 0 and (year % 100 or year % 400 == 0) else 28, 31, 30,
               31, 30, 31, 31, 30, 31, 30, 31][month - 1]
    return now.replace(year=year, month=month, day=min(now.day, days_in))


def _sqlite_file(url: Any) -> Path | None:
    """The file of a SQLite database URL; None for other databases and for in-memory or
    ``file:`` URI SQLite, which get no files of their own beside them."""
    url = make_url(url)
    database = url.database or ""
    if url.get_backend_name() != "sqlite" or not database or database == ":memory:" \
            or database.startswith("file:"):
        return None
    return Path(database)


def _default_url(engine: Engine) -> str:
    """Where the log lives unless ``[audit] db`` says: its own SQLite file beside a SQLite
    store (``var/idm.db`` -> ``var/idm-audit.db``), so the log's fsyncs never queue behind
    store writes; the store's database itself for PostgreSQL and in-memory SQLite, and for a
    store whose database already holds a log (the chain is never split)."""
    url = engine.url
    path = _sqlite_file(url)
    if path is None:
        return url.render_as_string(hide_password=False)
    own = path.with_name(f"{path.stem}-audit{path.suffix or '.db'}")
    if not own.exists() and path.exists():
        try:
            if inspect(engine).has_table("access_log"):
                return url.render_as_string(hide_password=False)
        except Exception:  # noqa: BLE001 - an unreadable store gets its own log file
            pass
    return url.set(database=str(own)).render_as_string(hide_password=False)


def _index_url(url: str) -> str | None:
    """The derived index's own SQLite file beside a SQLite log file (``idm-audit.db`` ->
    ``idm-audit-index.db``); None (the log's own database) for PostgreSQL and for in-memory
    or ``file:`` SQLite logs."""
    path = _sqlite_file(url)
    if path is None:
        return None
    parsed = make_url(url)
    own = path.with_name(f"{path.stem}-index{path.suffix or '.db'}")
    return parsed.set(database=str(own)).render_as_string(hide_password=False)


SYNC_MODES = ("full", "normal")
#: See the module docstring: on disk within a second, not before each answer.
DEFAULT_SYNC = "normal"


def _engine_for(url: str, sync: str = "full", timeout: float = 30) -> Engine:
    """The log's own engine: explicit write locks, and on SQLite the configured sync mode."""
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False,
                                                  "timeout": timeout})

        @event.listens_for(engine, "connect")
        def _connect(dbapi_connection, _record) -> None:  # noqa: ANN001 - DBAPI types
            dbapi_connection.isolation_level = None  # we issue BEGIN ourselves
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute(f"PRAGMA synchronous={'NORMAL' if sync == 'normal' else 'FULL'}")
            cursor.execute(f"PRAGMA busy_timeout={int(timeout * 1000)}")
            cursor.close()

        @event.listens_for(engine, "begin")
        def _begin(conn: Connection) -> None:
            # Writers take the lock up front so reading the tail and appending are atomic;
            # readers get a consistent snapshot without blocking anyone.
            mode = "IMMEDIATE" if conn.info.pop("write", False) else "DEFERRED"
            conn.exec_driver_sql(f"BEGIN {mode}")

        return engine
    return create_engine(url, pool_pre_ping=True)


@dataclass(frozen=True)
class AuditSettings:
    """The ``[audit]`` settings of one access log, read and checked by :meth:`read`.
    Arguments given to :class:`~idm_facade.access.audit.AuditLog` (``timeout``,
    ``index_interval``, ``index_records``) win over the config."""

    #: Where the log lives: ``[audit] db``, else beside the store (:func:`_default_url`).
    url: str
    #: One of :data:`SYNC_MODES`.
    sync: str
    #: With ``sync = "normal"``, a commit reaches the disk within this many seconds.
    sync_interval: float
    #: Seconds to wait for a lock, or for a batch's commit.
    timeout: float
    #: Records older than this are purged (:func:`parse_age`).
    retention: str
    #: The subject index is brought up to date in the background when ``index_records``
    #: records wait, or when records waited ``index_interval`` seconds; readers catch it up
    #: themselves.
    index_interval: float
    index_records: int
    #: Seconds a record's write waits for the log's lock before the request fails (500 /
    #: 80): a lock held elsewhere must not stall every answer for ``timeout``.
    write_timeout: float = 2.0
    #: Where the key that signs purge anchors comes from: ``[audit] anchor_key`` (text), else
    #: a file made on first use (:func:`anchor_key`).
    anchor_key: str | None = None
    anchor_key_file: Path | None = None
    #: Seconds an LDAP bind's record may be committed after the bind's answer (0: before
    #: it, as every other record); see :mod:`idm_facade.access.audit.turnlog`.
    bind_record_delay: float = 0.01

    @classmethod
    def read(cls, config: Config, engine: Engine, *, timeout: float | None = None,
             index_interval: float | None = None,
             index_records: int | None = None) -> AuditSettings:
        """The settings of the log of the store behind ``engine``; ValueError naming the
        first bad one."""
        url = config.get("audit", "db") or _default_url(engine)
        sync = str(config.get("audit", "sync", DEFAULT_SYNC)).lower()
        if sync not in SYNC_MODES:
            raise ValueError(f"[audit] sync = {sync!r}: use one of {', '.join(SYNC_MODES)}")
        interval = config.get("audit", "sync_interval", 1.0)
        try:
            sync_interval = float(interval)
        except (TypeError, ValueError):
            sync_interval = -1.0
        if not 0 < sync_interval <= 60:
            raise ValueError(f"[audit] sync_interval = {interval!r}: use a number of seconds "
                             "above 0 and at most 60")
        timeout = float(timeout if timeout is not None else config.get("audit", "timeout", 30))
        retention = str(config.get("audit", "retention", DEFAULT_RETENTION))
        parse_age(retention)  # a bad setting fails at start, not at purge time
        index_interval = float(index_interval if index_interval is not None
                               else config.get("audit", "index_interval", 10))
        index_records = int(index_records if index_records is not None
                            else config.get("audit", "index_records", 20_000))
        if index_interval <= 0 or index_records <= 0:
            raise ValueError("[audit] index_interval and index_records must be above 0")
        write_timeout = min(timeout, float(config.get("audit", "write_timeout", 2.0)))
        if write_timeout <= 0:
            raise ValueError("[audit] write_timeout must be above 0")
        key = config.get("audit", "anchor_key")
        delay = config.get("audit", "bind_record_delay", 0.01)
        if not 0 <= float(delay) <= 1:
            raise ValueError(f"[audit] bind_record_delay = {delay!r}: use a number of seconds "
                             "from 0 (each bind's record before its answer) to 1")
        return cls(str(url), sync, sync_interval, timeout, retention, index_interval,
                   index_records, write_timeout, str(key) if key else None,
                   Path(config.state_dir) / "audit-anchor.key", float(delay))


def anchor_key(settings: AuditSettings, create: bool) -> bytes | None:
    """The key purge anchors are signed with: ``[audit] anchor_key``, else the key file in
    the state directory, made (0600) when ``create`` and missing. None when there is none.

    Give every replica and the purge timer the same key (the setting, or a copy of the file):
    a purge signs the anchor, and ``verify`` anywhere checks it."""
    if settings.anchor_key:
        return settings.anchor_key.encode()
    path = settings.anchor_key_file
    if path is None:
        return None
    if path.exists():
        return path.read_bytes().strip()
    if not create:
        return None
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(secrets.token_hex(32).encode())
    return path.read_bytes().strip()
