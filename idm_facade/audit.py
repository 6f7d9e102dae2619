"""The access log: one durable, hash-chained record of every disclosure.

Every SCIM request, LDAP bind and search and role lookup calls :meth:`AuditLog.record` before
its answer leaves; ``record`` returns only when the record is committed to the database and
raises :class:`AuditUnavailable` when it cannot be, so the front end fails the request instead
of disclosing unlogged ("no record, no answer").

Throughput comes from *group commit*: callers enqueue their record and wait; one writer thread
takes everything queued, writes it in one transaction, commits (SQLite in WAL mode with
``synchronous=FULL`` on the log's own connection, or PostgreSQL), then wakes every waiter. A
burst of N concurrent requests costs one commit, not N.

Tamper evidence: each record stores ``prev_hash`` and ``hash = SHA-256(canonical JSON of its
fields + prev_hash)``; ``idm-facade audit verify`` recomputes the chain. The writer takes a
database lock per batch (SQLite ``BEGIN IMMEDIATE``, PostgreSQL advisory lock) and reads the
chain's tail inside it, so several facade processes can share one log.

Retention: :meth:`AuditLog.purge` deletes the oldest records (a prefix of the chain) and
stores the last deleted record's seq and hash in ``access_log_anchor``; verification starts
from the anchor, so the remaining chain stays verifiable.

Subjects (person ids) are also written to ``access_log_subject`` in the same transaction, an
index that makes "who read data about this person" a key look-up; ``verify`` checks that the
index agrees with the hashed records.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    DateTime,
    Engine,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    create_engine,
    delete,
    event,
    func,
    insert,
    select,
    text,
)
from sqlalchemy.engine import Connection

from idm_facade.config import Config

log = logging.getLogger(__name__)

#: prev_hash of the first record of a log that was never purged.
GENESIS = "0" * 64
#: PostgreSQL advisory lock key serialising writers of the chain.
_PG_LOCK = 0x1D3F_A0D1
DEFAULT_RETENTION = "6months"

metadata = MetaData()

access_log = Table(
    "access_log", metadata,
    Column("seq", BigInteger().with_variant(Integer, "sqlite"), primary_key=True,
           autoincrement=False),
    Column("time", DateTime, nullable=False, index=True),
    Column("client", String(64), nullable=False, index=True),
    Column("source", String(100), nullable=False),
    Column("operation", String(32), nullable=False),
    Column("query", Text, nullable=False),
    Column("status", String(32), nullable=False),
    Column("subjects", JSON, nullable=False),
    Column("sensitive", JSON, nullable=False),
    Column("prev_hash", String(64), nullable=False),
    Column("hash", String(64), nullable=False),
)

access_log_subject = Table(
    "access_log_subject", metadata,
    Column("subject", String(64), primary_key=True),
    Column("seq", BigInteger().with_variant(Integer, "sqlite"), primary_key=True,
           autoincrement=False),
    Index("ix_access_log_subject_seq", "seq"),
)

access_log_anchor = Table(
    "access_log_anchor", metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("seq", BigInteger().with_variant(Integer, "sqlite"), nullable=False),
    Column("hash", String(64), nullable=False),
    Column("purged_at", DateTime, nullable=False),
    Column("cutoff", DateTime, nullable=False),
)


class AuditUnavailable(RuntimeError):
    """The access log cannot be written: the request must fail and disclose nothing."""


@dataclass
class AccessRecord:
    """One request's disclosure: who asked, from where, what, the outcome, whom it was about.

    ``subjects``: person ids disclosed; ``sensitive``: sensitive attributes among the
    disclosed data (``"cpr"``). ``time`` is filled in by :meth:`AuditLog.record` when empty.
    """

    client: str
    source: str
    operation: str
    query: str
    status: str
    subjects: list[str] = field(default_factory=list)
    sensitive: list[str] = field(default_factory=list)
    time: datetime | None = None


@dataclass(frozen=True)
class StoredRecord:
    """A record as read back from the log."""

    seq: int
    time: datetime
    client: str
    source: str
    operation: str
    query: str
    status: str
    subjects: list[str]
    sensitive: list[str]
    prev_hash: str
    hash: str

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly form (``audit query --json``)."""
        return {"seq": self.seq, "time": self.time.isoformat(timespec="microseconds"),
                "client": self.client, "source": self.source, "operation": self.operation,
                "query": self.query, "status": self.status, "subjects": self.subjects,
                "sensitive": self.sensitive, "hash": self.hash}


@dataclass(frozen=True)
class VerifyResult:
    """Outcome of :meth:`AuditLog.verify`."""

    ok: bool
    checked: int
    first_seq: int | None
    last_seq: int | None
    head_hash: str
    anchor_seq: int | None
    bad_seq: int | None = None
    message: str = ""


def _now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def record_hash(seq: int, time: datetime, client: str, source: str, operation: str,
                query: str, status: str, subjects: list[str], sensitive: list[str],
                prev_hash: str) -> str:
    """SHA-256 of the canonical JSON of a record's fields and the previous record's hash."""
    payload = json.dumps(
        {"seq": seq, "time": time.isoformat(timespec="microseconds"), "client": client,
         "source": source, "operation": operation, "query": query, "status": status,
         "subjects": list(subjects), "sensitive": list(sensitive), "prev_hash": prev_hash},
        sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


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


@dataclass
class _Pending:
    rec: AccessRecord
    done: threading.Event = field(default_factory=threading.Event)
    error: BaseException | None = None


def _engine_for(url: str) -> Engine:
    """The log's own engine: explicit write locks and full fsync on SQLite."""
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

        @event.listens_for(engine, "connect")
        def _connect(dbapi_connection, _record) -> None:  # noqa: ANN001 - DBAPI types
            dbapi_connection.isolation_level = None  # we issue BEGIN ourselves
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=FULL")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.close()

        @event.listens_for(engine, "begin")
        def _begin(conn: Connection) -> None:
            # Writers take the lock up front so reading the tail and appending are atomic;
            # readers get a consistent snapshot without blocking anyone.
            mode = "IMMEDIATE" if conn.info.pop("write", False) else "DEFERRED"
            conn.exec_driver_sql(f"BEGIN {mode}")

        return engine
    return create_engine(url, pool_pre_ping=True)


class AuditLog:
    """The access log of one facade process (or CLI command)."""

    def __init__(self, engine: Engine, config: Config | None = None, *,
                 max_batch: int = 5000, timeout: float | None = None,
                 group_commit: bool = True) -> None:
        self.config = config or Config()
        url = self.config.get("audit", "db") or engine.url.render_as_string(hide_password=False)
        self.engine = _engine_for(str(url))
        self.dialect = self.engine.dialect.name
        self.max_batch = max_batch if group_commit else 1
        self.timeout = float(timeout if timeout is not None
                             else self.config.get("audit", "timeout", 30))
        self.retention = str(self.config.get("audit", "retention", DEFAULT_RETENTION))
        parse_age(self.retention)  # a bad setting fails at start, not at purge time
        self._cond = threading.Condition()
        self._pending: list[_Pending] = []
        self._thread: threading.Thread | None = None
        self._closed = False
        #: Batches and records written (the benchmark reports records per commit).
        self.batches = 0
        self.written = 0
        try:
            metadata.create_all(self.engine)
        except Exception as exc:  # noqa: BLE001 - surfaced on first record instead
            log.error("access log tables could not be created: %s", exc)

    # ------------------------------------------------------------------ writing

    def record(self, rec: AccessRecord) -> None:
        """Append ``rec``; returns once it is durable. Raises :class:`AuditUnavailable`."""
        if rec.time is None:
            rec.time = _now()
        pending = _Pending(rec)
        with self._cond:
            if self._closed:
                raise AuditUnavailable("the access log is closed")
            self._pending.append(pending)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="audit-writer",
                                                 daemon=True)
                self._thread.start()
            self._cond.notify()
        if not pending.done.wait(self.timeout):
            raise AuditUnavailable(f"access log write not confirmed within {self.timeout:g}s")
        if pending.error is not None:
            raise AuditUnavailable(f"access log write failed: {pending.error}") \
                from pending.error

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._pending and not self._closed:
                    self._cond.wait()
                if not self._pending and self._closed:
                    return
                batch = self._pending[:self.max_batch]
                del self._pending[:self.max_batch]
            try:
                self._write(batch)
            except BaseException as exc:  # noqa: BLE001 - every waiter must hear of it
                log.error("access log write of %d record(s) failed: %s", len(batch), exc)
                for item in batch:
                    item.error = exc
            for item in batch:
                item.done.set()

    def _lock(self, conn: Connection) -> None:
        if self.dialect == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_LOCK})

    def _writer(self) -> Connection:
        """A connection whose next transaction takes the write lock (flag read at BEGIN)."""
        conn = self.engine.connect()
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

    def _write(self, batch: list[_Pending]) -> None:
        with self._writer() as conn, conn.begin():
            self._lock(conn)
            seq, prev = self._tail(conn)
            rows, subject_rows = [], []
            for item in batch:
                rec = item.rec
                seq += 1
                subjects = sorted({str(s) for s in rec.subjects})
                sensitive = sorted({str(s) for s in rec.sensitive})
                values = dict(seq=seq, time=rec.time, client=str(rec.client),
                              source=str(rec.source), operation=str(rec.operation),
                              query=str(rec.query), status=str(rec.status),
                              subjects=subjects, sensitive=sensitive, prev_hash=prev)
                prev = values["hash"] = record_hash(**values)
                rows.append(values)
                subject_rows.extend({"subject": s, "seq": seq} for s in subjects)
            conn.execute(insert(access_log), rows)
            if subject_rows:
                conn.execute(insert(access_log_subject), subject_rows)
        self.batches += 1
        self.written += len(batch)

    def close(self) -> None:
        """Write what is queued, then stop the writer thread."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(self.timeout)
        self.engine.dispose()

    # ------------------------------------------------------------------ reading

    def _records(self, conn: Connection, after: int, chunk: int = 5000
                 ) -> Iterator[list[StoredRecord]]:
        while True:
            rows = conn.execute(select(access_log).where(access_log.c.seq > after)
                                .order_by(access_log.c.seq).limit(chunk)).all()
            if not rows:
                return
            yield [_stored(r) for r in rows]
            after = int(rows[-1].seq)

    def verify(self) -> VerifyResult:
        """Recompute the chain from the purge anchor (or the start); report the first break."""
        with self.engine.connect() as conn, conn.begin():
            anchor = conn.execute(select(access_log_anchor.c.seq, access_log_anchor.c.hash)
                                  .where(access_log_anchor.c.id == 1)).first()
            prev_seq, prev_hash = (int(anchor.seq), anchor.hash) if anchor else (0, GENESIS)
            anchor_seq = prev_seq if anchor else None
            checked, first = 0, None

            def fail(seq: int, message: str) -> VerifyResult:
                return VerifyResult(False, checked, first, prev_seq or None, prev_hash,
                                    anchor_seq, seq, message)

            for chunk in self._records(conn, -1):
                subjects: dict[int, set[str]] = {}
                for row in conn.execute(select(access_log_subject).where(
                        access_log_subject.c.seq.between(chunk[0].seq, chunk[-1].seq))):
                    subjects.setdefault(int(row.seq), set()).add(row.subject)
                for rec in chunk:
                    if first is None:
                        first = rec.seq
                    if rec.seq <= prev_seq and anchor is not None:
                        return fail(rec.seq, f"record {rec.seq} is at or before the purge "
                                             f"anchor (seq {prev_seq})")
                    if rec.seq != prev_seq + 1:
                        return fail(rec.seq, f"records {prev_seq + 1}..{rec.seq - 1} are "
                                             f"missing before record {rec.seq}")
                    if rec.prev_hash != prev_hash:
                        return fail(rec.seq, f"record {rec.seq}: prev_hash does not match "
                                             f"the hash of record {prev_seq}")
                    computed = record_hash(rec.seq, rec.time, rec.client, rec.source,
                                           rec.operation, rec.query, rec.status,
                                           rec.subjects, rec.sensitive, rec.prev_hash)
                    if computed != rec.hash:
                        return fail(rec.seq, f"record {rec.seq}: content does not match its "
                                             f"hash (modified)")
                    if subjects.get(rec.seq, set()) != set(rec.subjects):
                        return fail(rec.seq, f"record {rec.seq}: subject index differs from "
                                             f"the record's subjects")
                    prev_seq, prev_hash = rec.seq, rec.hash
                    checked += 1
                stray = set(subjects) - {r.seq for r in chunk}
                if stray:
                    return fail(min(stray), f"subject index names record {min(stray)}, "
                                            f"which does not exist")
        return VerifyResult(True, checked, first, prev_seq or None, prev_hash, anchor_seq)

    def query(self, *, subject: str | None = None, client: str | None = None,
              since: datetime | None = None, until: datetime | None = None,
              limit: int | None = None) -> list[StoredRecord]:
        """Records matching every given condition, oldest first (``until`` exclusive)."""
        stmt = select(access_log)
        if subject is not None:
            stmt = stmt.where(access_log.c.seq.in_(
                select(access_log_subject.c.seq).where(access_log_subject.c.subject == subject)))
        if client is not None:
            stmt = stmt.where(access_log.c.client == client)
        if since is not None:
            stmt = stmt.where(access_log.c.time >= since)
        if until is not None:
            stmt = stmt.where(access_log.c.time < until)
        stmt = stmt.order_by(access_log.c.seq)
        if limit is not None:
            stmt = stmt.limit(limit)
        with self.engine.connect() as conn, conn.begin():
            return [_stored(r) for r in conn.execute(stmt)]

    def count(self) -> int:
        """Records currently held."""
        with self.engine.connect() as conn, conn.begin():
            return int(conn.scalar(select(func.count()).select_from(access_log)) or 0)

    # ------------------------------------------------------------------ retention

    def purge(self, older_than: datetime | str | None = None) -> int:
        """Delete the records older than the cut-off (default: the configured retention).

        Deletes a prefix of the chain (every record up to the newest one older than the
        cut-off) and moves the anchor to it, so ``verify`` still checks what remains.
        Returns how many records were deleted.
        """
        if older_than is None or isinstance(older_than, str):
            cutoff = cutoff_for(older_than or self.retention)
        else:
            cutoff = older_than
        with self._writer() as conn, conn.begin():
            self._lock(conn)
            boundary = conn.scalar(select(func.max(access_log.c.seq))
                                   .where(access_log.c.time < cutoff))
            if boundary is None:
                return 0
            boundary_hash = conn.scalar(select(access_log.c.hash)
                                        .where(access_log.c.seq == boundary))
            deleted = conn.execute(delete(access_log).where(access_log.c.seq <= boundary))
            conn.execute(delete(access_log_subject).where(access_log_subject.c.seq <= boundary))
            conn.execute(delete(access_log_anchor).where(access_log_anchor.c.id == 1))
            conn.execute(insert(access_log_anchor).values(
                id=1, seq=boundary, hash=boundary_hash, purged_at=_now(), cutoff=cutoff))
            return int(deleted.rowcount or 0)


def _stored(row: Any) -> StoredRecord:
    subjects = row.subjects if isinstance(row.subjects, list) else json.loads(row.subjects)
    sensitive = row.sensitive if isinstance(row.sensitive, list) else json.loads(row.sensitive)
    return StoredRecord(int(row.seq), row.time, row.client, row.source, row.operation,
                        row.query, row.status, list(subjects), list(sensitive), row.prev_hash,
                        row.hash)


def records_for(log_: AuditLog, subjects: Iterable[str]) -> list[StoredRecord]:
    """Every record about any of ``subjects`` (a person with several ids), oldest first."""
    found: dict[int, StoredRecord] = {}
    for subject in subjects:
        for rec in log_.query(subject=subject):
            found[rec.seq] = rec
    return [found[k] for k in sorted(found)]
