"""Connections, locks and progress marks shared by the parts of the access log.

The writer (:mod:`idm_facade.access.audit.writer`) appends on a raw DBAPI connection of its
own; the index, verification and retention go through SQLAlchemy connections of the kinds
here: a writer connection (its transaction takes the database's write lock at ``BEGIN``, see
:func:`~idm_facade.access.audit.settings._engine_for`), reader connections and the pair of
read snapshots of log and index (:meth:`DatabaseMixin._snapshots`). On PostgreSQL two
advisory locks serialise the chain's writers and the index's writers. The chain's tail and
purge anchor and the index's progress marks are read (and the marks moved) here.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import Engine, insert, select, text
from sqlalchemy.engine import Connection

from idm_facade.access.audit.record import (
    GENESIS,
    access_log,
    access_log_anchor,
    access_log_indexed,
)

#: PostgreSQL advisory lock key serialising writers of the chain.
_PG_LOCK = 0x1D3F_A0D1
#: PostgreSQL advisory lock key serialising writers of the subject index (indexing runs and
#: purge): row locking lets them run beside record writers, which never wait for an index run.
_PG_INDEX_LOCK = 0x1D3F_A0D2


class DatabaseMixin:
    """The log's database and the index's, as the parts of
    :class:`~idm_facade.access.audit.AuditLog` use them."""

    # Set by AuditLog.__init__ (engine, dialect) and IndexMixin._init_index (the rest).
    engine: Engine
    dialect: str
    #: The derived index's database: its own SQLite file (``_split``) or the log's.
    index_engine: Engine
    _split: bool

    def _chain_lock(self, conn: Connection) -> None:
        if self.dialect == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_LOCK})

    def _index_lock(self, conn: Connection) -> None:
        """The subject index's write lock: on SQLite the index database's (``BEGIN
        IMMEDIATE``: the index file's own, or the log's when they share a database), on
        PostgreSQL its own advisory lock."""
        if self.dialect == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_INDEX_LOCK})

    def _writer(self, engine: Engine | None = None) -> Connection:
        """A connection whose next transaction takes the write lock (flag read at BEGIN)."""
        conn = (engine or self.engine).connect()
        conn.info["write"] = True
        return conn

    def _tail(self, conn: Connection) -> tuple[int, str]:
        row = conn.execute(select(access_log.c.seq, access_log.c.hash)
                           .order_by(access_log.c.seq.desc()).limit(1)).first()
        if row is not None:
            return int(row.seq), row.hash
        anchor = conn.execute(select(access_log_anchor.c.seq, access_log_anchor.c.hash)
                              .where(access_log_anchor.c.id == 1)).first()
        return (int(anchor.seq), anchor.hash) if anchor is not None else (0, GENESIS)

    def _reader(self, engine: Engine | None = None) -> Connection:
        """A connection for reading postings, mark and records as one snapshot."""
        conn = (engine or self.engine).connect()
        if self.dialect == "postgresql":
            conn = conn.execution_options(isolation_level="REPEATABLE READ")
        return conn

    @contextmanager
    def _snapshots(self) -> Iterator[tuple[Connection, Connection]]:
        """``(log connection, index connection)``, each in a read transaction; the same
        connection when the index lives in the log's database.

        With an index file of its own the two snapshots are not one: the index's is taken
        first, so every record up to its mark is already in the log, unless a purge deleted it
        meanwhile (or a crash stopped a purge before it trimmed the index): index entries at or
        below the log's anchor name no record and are ignored by every reader."""
        if not self._split:
            with self._reader() as conn, conn.begin():
                yield conn, conn
            return
        with self._reader(self.index_engine) as index, index.begin():
            self._mark(index)  # a WAL read snapshot starts at the first read
            with self._reader() as conn, conn.begin():
                yield conn, index

    @staticmethod
    def _anchor_seq(conn: Connection) -> int:
        """Seq of the last purged record (0: never purged): no record at or below it exists."""
        return int(conn.scalar(select(access_log_anchor.c.seq)
                               .where(access_log_anchor.c.id == 1)) or 0)

    @staticmethod
    def _mark(conn: Connection, row: int = 1) -> int:
        """Every record up to this seq is in the postings (0: none indexed yet)."""
        value = conn.scalar(select(access_log_indexed.c.seq)
                            .where(access_log_indexed.c.id == row))
        return int(value or 0)

    @classmethod
    def _trimmed(cls, conn: Connection) -> int:
        """The index holds nothing at or below this seq (own index file: the last purge
        anchor whose trim completed)."""
        return cls._mark(conn, 2)

    @classmethod
    def _seen(cls, conn: Connection) -> int:
        """The log is known to have reached this seq (own index file: noted by the writing
        process every indexing interval and at close; evidence should the log be lost)."""
        return cls._mark(conn, 3)

    @staticmethod
    def _set_mark(conn: Connection, seq: int, row: int = 1) -> None:
        moved = conn.execute(access_log_indexed.update().where(access_log_indexed.c.id == row)
                             .values(seq=seq))
        if not moved.rowcount:
            conn.execute(insert(access_log_indexed).values(id=row, seq=seq))

