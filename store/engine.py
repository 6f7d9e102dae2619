"""Engine and session set-up for SQLite (embedded default) and PostgreSQL.

The same models and code run on both; only the URL differs. ``IDM_FACADE_DB`` or ``--db``
choose the URL. SQLite gets WAL mode and foreign keys on, so readers never block the writer
and the file enforces the same integrity PostgreSQL does.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event, inspect, make_url
from sqlalchemy.orm import Session, sessionmaker

from store import changelog
from store.models import Base

DEFAULT_URL = "sqlite:///var/idm.db"


#: Values bound in one ``IN (...)`` at most: well under SQLite's limit on parameters.
IN_CHUNK = 500


def in_chunks(values: Iterable[Any]) -> Iterator[list[Any]]:
    """``values`` (ids or sequence numbers), sorted, in pieces small enough for one
    ``IN (...)`` each."""
    ordered = sorted(values)
    for start in range(0, len(ordered), IN_CHUNK):
        yield ordered[start:start + IN_CHUNK]


def database_url(url: str | None = None) -> str:
    """The URL to use: the explicit one, else ``IDM_FACADE_DB``, else the SQLite default."""
    return url or os.environ.get("IDM_FACADE_DB") or DEFAULT_URL


def make_engine(url: str | None = None, *, create: bool = True) -> Engine:
    """Create an engine for ``url`` and, unless ``create`` is false, the schema in it."""
    url = database_url(url)
    if url.startswith("sqlite:///") and not url.startswith("sqlite:///:memory:"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    kwargs: dict = {}
    if url.startswith("postgresql"):
        kwargs["pool_pre_ping"] = True
        kwargs["connect_args"] = postgres_timeouts(url)
    engine = create_engine(url, **kwargs)
    if engine.dialect.name == "sqlite":
        event.listen(engine, "connect", _sqlite_pragmas)
    if create:
        Base.metadata.create_all(engine)
    return engine


#: libpq's limits on a PostgreSQL that does not answer, unless the URL sets them: seconds to
#: connect (libpq waits as long as TCP does, minutes, without it) and milliseconds that sent
#: data may stay unacknowledged before the connection counts as broken (a partition). A
#: store that is away is handled everywhere (answers go on from the snapshot); one that
#: hangs holds whatever waits on it for as long as libpq waits.
POSTGRES_TIMEOUTS = {"connect_timeout": 5, "tcp_user_timeout": 10_000}


def postgres_timeouts(url: str) -> dict[str, int]:
    """The :data:`POSTGRES_TIMEOUTS` that the URL's query does not set itself."""
    query = make_url(url).query
    return {key: value for key, value in POSTGRES_TIMEOUTS.items() if key not in query}


def missing_columns(engine: Engine) -> dict[str, list[str]]:
    """Columns of this version's tables that an existing store lacks (table -> names).

    ``create_all`` makes missing tables but never alters existing ones, so a store made by an
    earlier version would fail on its first query; this lets ``serve`` say why instead.
    Tables that do not exist at all are not reported (they are made on demand)."""
    inspector = inspect(engine)
    present = set(inspector.get_table_names())
    missing: dict[str, list[str]] = {}
    for table in Base.metadata.tables.values():
        if table.name not in present:
            continue
        have = {c["name"] for c in inspector.get_columns(table.name)}
        lacking = [c.name for c in table.columns if c.name not in have]
        if lacking:
            missing[table.name] = lacking
    return missing


def _sqlite_pragmas(dbapi_connection, _record) -> None:  # noqa: ANN001 - DBAPI types
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.close()


def session_factory(engine: Engine) -> sessionmaker[Session]:
    """A session factory whose sessions append to the change log on every flush."""
    factory = sessionmaker(engine, expire_on_commit=False)
    changelog.install(factory)
    return factory


@contextmanager
def write_session(engine: Engine, actor: str = "system") -> Iterator[Session]:
    """A transaction that commits on success, rolls back on error, and logs its changes."""
    session = session_factory(engine)()
    session.info["actor"] = actor
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()
