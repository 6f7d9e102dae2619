"""The access log: one durable, hash-chained record of every disclosure.

Every SCIM request, LDAP bind and search and role lookup calls :meth:`AuditLog.record` before
its answer leaves; ``record`` returns only when the record is committed to the database and
raises :class:`AuditUnavailable` when it cannot be, so the front end fails the request instead
of disclosing unlogged ("no record, no answer").

Throughput comes from *group commit* without a writer thread: a caller prepares its record
(column values and hash input) in its own thread and joins the open batch; if nobody is
writing, it writes the batch itself in one transaction on the log's long-lived DBAPI connection
(SQLite in WAL mode, or PostgreSQL), commits, and wakes the batch's waiters; records arriving
meanwhile fill the next batch, whose first waiter to wake writes it. A burst of N concurrent
requests costs one commit, not N, and a lone request no thread hop.

Durability (``[audit] sync``):
- ``"normal"`` (default): a commit reaches the operating system before the answer leaves, and
  the disk within ``[audit] sync_interval`` seconds (default 1). A crash of the facade loses
  nothing; a power cut or kernel crash can lose the records of that last interval (the Linux
  audit daemon's default, ``flush = INCREMENTAL_ASYNC``, makes the same trade). If an fsync
  fails, the log refuses every further record until a restart. SQLite runs with
  ``synchronous=NORMAL`` and a background thread fsyncs the WAL file once per interval when
  records were written; PostgreSQL gets ``synchronous_commit = off`` on the log's connection,
  whose own WAL writer bounds the loss the same way. In both modes a record that cannot be
  written fails its request. With SQLite ``normal`` a commit costs tens of microseconds, so an
  event loop writes its records itself (:meth:`AuditLog.record_many`, see
  :attr:`AuditLog.fast_commit`) instead of handing them to a thread.
- ``"full"``: a commit reaches the disk before the answer leaves (SQLite ``synchronous=FULL``;
  PostgreSQL ``synchronous_commit`` as the server has it). At low concurrency every answer so
  waits for one disk flush: with 4 clients, at most about 4 answers per flush time.

The log lives in its own SQLite file beside a SQLite store (``idm.db`` -> ``idm-audit.db``)
unless ``[audit] db`` names a database, or the store's database already holds a log.

Tamper evidence: each record stores ``prev_hash`` and ``hash = SHA-256(canonical JSON of its
fields + prev_hash)``; ``idm-facade audit verify`` recomputes the chain. The writer takes a
database lock per batch (SQLite ``BEGIN IMMEDIATE``, PostgreSQL advisory lock) and reads the
chain's tail inside it, so several facade processes can share one log. On SQLite, once a
process knows the tail it wrote last, it appends the next batch with one INSERT statement that
inserts only if the chain still ends there; when another process appended meanwhile (or a
purge emptied the log past it), nothing is inserted and the batch is appended after the real
tail.

Retention: :meth:`AuditLog.purge` deletes the oldest records (a prefix of the chain) and
stores the last deleted record's seq and hash in ``access_log_anchor``; verification starts
from the anchor, so the remaining chain stays verifiable.

Subject index: "who read data about this person" is a key look-up in
``access_log_postings``, an index *derived* from the records' ``subjects`` (the hashed truth),
like the directory is derived from the store. The write path inserts one row per record and
nothing per subject (a SCIM page of 100 users is 100 subjects; one index row each, on random
B-tree pages, made the log's writer the bottleneck). :meth:`AuditLog.index_subjects` indexes
the records after the progress mark (``access_log_indexed``) in bulk: one posting row per
subject per run, holding that subject's seqs of the run, delta-encoded. A background thread of
the writing process runs it when enough records wait or some seconds passed; every reader of
the index (:meth:`AuditLog.query` by subject, :func:`records_for`, :meth:`AuditLog.verify`) runs
it first, so answers are complete however far the index lags. ``verify`` checks that the
postings hold exactly the (subject, seq) pairs of the records up to the mark.

Where the index lives: on SQLite with a log file, in a file of its own beside it
(``idm-audit.db`` -> ``idm-audit-index.db``), so an indexing run reads the records without a
lock and writes only the index file: record writers (the LDAP event loop among them) never
wait for it. The index file may be deleted at any time; it is rebuilt from seq 0. PostgreSQL
and in-memory or ``file:`` SQLite logs keep the index in the log's database. Postings and
the mark of the previous version inside a SQLite log file are ignored (the index file is
built from 0) and only trimmed by purge.

Purge with an index file of its own runs in two transactions, as no transaction spans two
SQLite files: first the log's (delete the records, move the anchor), then the index file's
(trim the postings up to the anchor, record the anchor as trimmed). A crash in between
leaves index entries at or below the anchor: every reader ignores them (they name no
record), and the next indexing run, reader catch-up or purge finishes the trim.

Clients and time: ``access_log`` has no secondary index (each cost a B-tree page per
commit). The same runs write ``access_log_client_postings`` (one row per client per run) and
``access_log_runs`` (per run: seq range, least and greatest record time); :meth:`query` by
client or time range reads those, then the records after the mark. Purge finds the longest
prefix of records older than the cut-off by reading the records in seq order.
"""

from __future__ import annotations

import hashlib
import json
import json.encoder
import logging
import os
import re
import sqlite3
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from pathlib import Path
from time import monotonic
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
    inspect,
    select,
    text,
    type_coerce,
)
from sqlalchemy.engine import Connection, make_url

from idm_facade.config import Config

log = logging.getLogger(__name__)

#: prev_hash of the first record of a log that was never purged.
GENESIS = "0" * 64
#: PostgreSQL advisory lock key serialising writers of the chain.
_PG_LOCK = 0x1D3F_A0D1
#: PostgreSQL advisory lock key serialising writers of the subject index (indexing runs and
#: purge): row locking lets them run beside record writers, which never wait for an index run.
_PG_INDEX_LOCK = 0x1D3F_A0D2
DEFAULT_RETENTION = "6months"

metadata = MetaData()
#: The derived index's tables. On SQLite with a log file they live in a file of their own
#: beside the log (``idm-audit.db`` -> ``idm-audit-index.db``), so indexing never takes the
#: log's write lock; otherwise (PostgreSQL, in-memory or ``file:`` SQLite) in the log's
#: database.
index_metadata = MetaData()

access_log = Table(
    "access_log", metadata,
    Column("seq", BigInteger().with_variant(Integer, "sqlite"), primary_key=True,
           autoincrement=False),
    # No secondary indexes (each cost a B-tree page per commit): the derived index serves
    # look-ups by time and client. Logs created by earlier versions keep theirs.
    Column("time", DateTime, nullable=False),
    Column("client", String(64), nullable=False),
    Column("source", String(100), nullable=False),
    Column("operation", String(32), nullable=False),
    Column("query", Text, nullable=False),
    Column("status", String(32), nullable=False),
    Column("subjects", JSON, nullable=False),
    Column("sensitive", JSON, nullable=False),
    Column("prev_hash", String(64), nullable=False),
    Column("hash", String(64), nullable=False),
)

_SEQ = BigInteger().with_variant(Integer, "sqlite")

#: The derived subject index: one row per subject per indexing run (a purge may split none,
#: only trim). ``seqs``: the subject's seqs of the run as gaps after ``first_seq``,
#: comma-separated ("" for one seq; "3,1" for first_seq, +3, +4): see :func:`encode_seqs`.
access_log_postings = Table(
    "access_log_postings", index_metadata,
    Column("subject", Text, primary_key=True),
    Column("first_seq", _SEQ, primary_key=True, autoincrement=False),
    Column("last_seq", _SEQ, nullable=False),
    Column("seqs", Text, nullable=False),
    # Grows at its right edge (seqs only increase), so it is cheap to keep: verify walks the
    # postings by first_seq; purge finds the rows that start at or below its boundary.
    Index("ix_access_log_postings_first", "first_seq"),
)

#: The derived client index: one row per client per indexing run, seqs encoded as in
#: :data:`access_log_postings`.
access_log_client_postings = Table(
    "access_log_client_postings", index_metadata,
    Column("client", String(64), primary_key=True),
    Column("first_seq", _SEQ, primary_key=True, autoincrement=False),
    Column("last_seq", _SEQ, nullable=False),
    Column("seqs", Text, nullable=False),
    Index("ix_access_log_client_postings_first", "first_seq"),
)

#: The derived time index: one row per indexing run, the run's seq range (every record in
#: it) and the least and greatest ``time`` among its records. Records' times are set by the
#: writing process before its seq is assigned, so they are only nearly ascending in seq; a
#: query by time reads the runs whose time range meets the asked one.
access_log_runs = Table(
    "access_log_runs", index_metadata,
    Column("first_seq", _SEQ, primary_key=True, autoincrement=False),
    Column("last_seq", _SEQ, nullable=False),
    Column("min_time", DateTime, nullable=False),
    Column("max_time", DateTime, nullable=False),
)

#: Progress of the derived index (row ``id = 1``): every record with seq <= ``seq`` is in the
#: postings; moved in the same transaction as the postings it covers. Row ``id = 2`` (own
#: index file only): the index holds nothing at or below this seq, the anchor of the last
#: purge whose trim completed (see :meth:`AuditLog.purge`).
access_log_indexed = Table(
    "access_log_indexed", index_metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("seq", _SEQ, nullable=False),
)

#: The index of earlier versions (one row per subject and record, written with each record).
#: No longer written or read; never created. Purge still trims it where it exists, so it holds
#: no person id beyond the retention; drop it once no older facade shares the log.
_legacy = MetaData()
access_log_subject = Table(
    "access_log_subject", _legacy,
    Column("subject", String(64), primary_key=True),
    Column("seq", _SEQ, primary_key=True, autoincrement=False),
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


def encode_seqs(seqs: list[int]) -> tuple[int, int, str]:
    """``(first_seq, last_seq, seqs text)`` of ascending seqs: the gaps after the first."""
    return seqs[0], seqs[-1], ",".join(str(b - a) for a, b in zip(seqs, seqs[1:],
                                                                     strict=False))


def decode_seqs(first_seq: int, text_: str) -> list[int]:
    """The seqs of a posting row; ValueError when the text is not ascending gaps."""
    seqs = [int(first_seq)]
    if text_:
        for gap in text_.split(","):
            step = int(gap)
            if step <= 0:
                raise ValueError(f"gap {gap!r} is not positive")
            seqs.append(seqs[-1] + step)
    return seqs


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


_encode = json.encoder.encode_basestring  # what json.dumps(ensure_ascii=False) uses


def _json_list(values: list[str]) -> str:
    return "[" + ",".join(map(_encode, values)) + "]"


#: Records with at most this many subjects share their JSON fragments (:func:`_fragments`).
_MEMO_SUBJECTS = 16


@lru_cache(maxsize=4096)
def _fragments(client: str, source: str, operation: str, query: str, status: str,
               subjects: tuple, sensitive: tuple) -> tuple[str, str, str, str, str]:
    """The JSON of a record's subjects and sensitive list, and its hash payload around
    prev_hash, seq and time. Memoised: clients repeat requests (the same query by the same
    client from the same address), and encoding is most of what preparing a record costs."""
    subjects_json = _json_list(sorted({str(s) for s in subjects}))
    sensitive_json = _json_list(sorted({str(s) for s in sensitive}))
    head = f'{{"client":{_encode(client)},"operation":{_encode(operation)},"prev_hash":'
    middle = f',"query":{_encode(query)},"sensitive":{sensitive_json},"seq":'
    tail = (f',"source":{_encode(source)},"status":{_encode(status)},'
            f'"subjects":{subjects_json},"time":')
    return subjects_json, sensitive_json, head, middle, tail


class _Row:
    """A record ready to append: its column values and its hash payload around seq/prev_hash.

    Built in the calling thread so the single writer only adds ``seq`` and ``prev_hash``,
    hashes and inserts. ``head + _encode(prev_hash) + middle + str(seq) + tail`` is
    byte-for-byte the canonical JSON :func:`record_hash` hashes (keys sorted: client,
    operation, prev_hash, query, sensitive, seq, source, status, subjects, time).
    """

    __slots__ = ("time", "client", "source", "operation", "query", "status",
                 "subjects_json", "sensitive_json", "head", "middle", "tail", "sqlite_columns")

    def __init__(self, rec: AccessRecord) -> None:
        time = rec.time if rec.time is not None else _now()
        self.time = time
        self.client, self.source = str(rec.client), str(rec.source)
        self.operation, self.query, self.status = str(rec.operation), str(rec.query), \
            str(rec.status)
        key = (self.client, self.source, self.operation, self.query, self.status,
               tuple(rec.subjects), tuple(rec.sensitive))
        fragments = _fragments(*key) if len(key[5]) <= _MEMO_SUBJECTS else \
            _fragments.__wrapped__(*key)
        self.subjects_json, self.sensitive_json, self.head, self.middle, tail = fragments
        self.tail = f'{tail}"{time.isoformat(timespec="microseconds")}"}}'
        # The SQLite columns between seq and prev_hash, ready here (in the caller's thread)
        # so the single writer only chains, hashes and inserts.
        self.sqlite_columns = (time.isoformat(" ", "microseconds"), self.client, self.source,
                               self.operation, self.query, self.status, self.subjects_json,
                               self.sensitive_json)

    def hash(self, seq: int, prev_hash: str) -> str:
        payload = self.head + _encode(prev_hash) + self.middle + str(seq) + self.tail
        return hashlib.sha256(payload.encode("utf-8")).hexdigest()


class _Batch:
    """Records that share one transaction; their callers wait on ``cond``; ``callbacks`` are
    those of :meth:`AuditLog.submit`; ``waiting`` counts callers of ``record`` in it (one of
    them can lead its write; a batch without any is written by the flusher thread)."""

    __slots__ = ("rows", "done", "error", "cond", "callbacks", "waiting")

    def __init__(self, lock: threading.Lock) -> None:
        self.rows: list[_Row] = []
        self.done = False
        self.error: BaseException | None = None
        self.cond = threading.Condition(lock)
        self.callbacks: list[Callable[[AuditUnavailable | None], None]] = []
        self.waiting = 0


_COLUMNS = ("seq, time, client, source, operation, query, status, subjects, sensitive, "
            "prev_hash, hash")


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


class AuditLog:
    """The access log of one facade process (or CLI command)."""

    def __init__(self, engine: Engine, config: Config | None = None, *,
                 max_batch: int = 5000, timeout: float | None = None,
                 group_commit: bool = True, index_interval: float | None = None,
                 index_records: int | None = None) -> None:
        self.config = config or Config()
        url = self.config.get("audit", "db") or _default_url(engine)
        self.sync = str(self.config.get("audit", "sync", DEFAULT_SYNC)).lower()
        if self.sync not in SYNC_MODES:
            raise ValueError(f"[audit] sync = {self.sync!r}: use one of {', '.join(SYNC_MODES)}")
        interval = self.config.get("audit", "sync_interval", 1.0)
        try:
            self.sync_interval = float(interval)
        except (TypeError, ValueError):
            self.sync_interval = -1.0
        if not 0 < self.sync_interval <= 60:
            raise ValueError(f"[audit] sync_interval = {interval!r}: use a number of seconds "
                             "above 0 and at most 60")
        self.engine = _engine_for(str(url), self.sync)
        self.dialect = self.engine.dialect.name
        #: Commits only reach the operating system; the disk follows within ``sync_interval``.
        #: True only for SQLite, where such a commit is cheap enough to run in an event loop.
        self.fast_commit = self.sync == "normal" and self.dialect == "sqlite"
        self._wal = self._wal_path(str(url)) if self.fast_commit else None
        #: Highest seq written and highest known to be on disk (``sync = "normal"``).
        self.written_seq = 0
        self.synced_seq = 0
        self._syncer: threading.Thread | None = None
        self._sync_wake = threading.Event()
        self._sync_stop = threading.Event()
        #: Set when an fsync of the log failed: records since the last good one may be lost,
        #: and a retried fsync could succeed without them, so the log refuses every further
        #: record until the process restarts (fail closed).
        self._sync_failed: str | None = None
        self.max_batch = max_batch if group_commit else 1
        self.timeout = float(timeout if timeout is not None
                             else self.config.get("audit", "timeout", 30))
        self.retention = str(self.config.get("audit", "retention", DEFAULT_RETENTION))
        parse_age(self.retention)  # a bad setting fails at start, not at purge time
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._queue: deque[_Batch] = deque()
        self._writing = False  # a caller is leading a write (and owns ``_conn``)
        self._conn: Any = None  # the writer's long-lived DBAPI connection
        self._closed = False
        #: Writes batches nobody waits in (only :meth:`submit` records); started on demand.
        self._flusher: threading.Thread | None = None
        self._flush = threading.Condition(self._lock)
        self._flush_wanted = False
        if self.dialect == "postgresql":
            self._sql_lock = "SELECT pg_advisory_xact_lock(%s)"
            p = "%s"
            json_p = "CAST(%s AS JSON)"
        else:
            self._sql_lock = ""
            p = json_p = "?"
        self._sql_tail = "SELECT seq, hash FROM access_log ORDER BY seq DESC LIMIT 1"
        self._sql_anchor = f"SELECT seq, hash FROM access_log_anchor WHERE id = {p}"
        self._sql_insert = (f"INSERT INTO access_log ({_COLUMNS}) VALUES "
                            f"({p}, {p}, {p}, {p}, {p}, {p}, {p}, {json_p}, {json_p}, {p}, {p})")
        self._sql_insert_rows: dict[int, str] = {}  # by row count, for _append_after_tail
        #: Batches and records written (the benchmark reports records per commit).
        self.batches = 0
        self.written = 0
        # The subject index is brought up to date in the background when this many records
        # wait, or when records waited this many seconds; readers catch it up themselves.
        self.index_interval = float(index_interval if index_interval is not None
                                    else self.config.get("audit", "index_interval", 10))
        self.index_records = int(index_records if index_records is not None
                                 else self.config.get("audit", "index_records", 20_000))
        if self.index_interval <= 0 or self.index_records <= 0:
            raise ValueError("[audit] index_interval and index_records must be above 0")
        self._unindexed = 0  # records written by this process since its indexer last ran
        self._indexer: threading.Thread | None = None
        self._index_wake = threading.Event()
        self._index_stop = threading.Event()
        #: Runs and (subject, record) pairs indexed by this object (benchmark, tests).
        self.index_runs = 0
        self.indexed_pairs = 0
        #: Longest time a run of this object held the write lock, in seconds (benchmark).
        self.index_lock_max = 0.0
        #: Longest time a run of this object held the LOG's write lock (benchmark): 0 with
        #: an index file of its own.
        self.log_lock_max = 0.0
        #: Where the derived index lives: its own SQLite file (``_split``), or the log's
        #: database. The index is disposable, so its file never waits for an fsync: a crash
        #: can only roll it back to an earlier consistent state, which the next run redoes.
        index_url = _index_url(str(url))
        self._split = index_url is not None
        self.index_engine = (_engine_for(index_url, "normal", self.timeout) if index_url
                             else self.engine)
        try:
            metadata.create_all(self.engine)
        except Exception as exc:  # noqa: BLE001 - surfaced on first record instead
            log.error("access log tables could not be created: %s", exc)
        try:
            index_metadata.create_all(self.index_engine)
        except Exception as exc:  # noqa: BLE001 - readers scan the records instead
            log.error("access log index tables could not be created: %s", exc)
        try:
            tables = set(inspect(self.engine).get_table_names())
        except Exception:  # noqa: BLE001 - an unreachable log fails on first record
            tables = set()
        try:
            self._rebuild_older_index()
        except Exception as exc:  # noqa: BLE001 - retried by the next process start
            log.error("access log: could not reset an index of an earlier version: %s", exc)
        #: Indexes of earlier versions inside the log's database, no longer read or written:
        #: purge still trims them, so they hold no person id longer than the records do.
        self._legacy_index = "access_log_subject" in tables
        self._old_postings = self._split and "access_log_postings" in tables

    @staticmethod
    def _wal_path(url: str) -> Path | None:
        """The SQLite log's WAL file (fsynced by the syncer thread), None for in-memory."""
        path = _sqlite_file(url)
        return None if path is None else path.with_name(path.name + "-wal")

    # ------------------------------------------------------------------ writing

    @staticmethod
    def prepare(rec: AccessRecord) -> Any:
        """``rec`` ready to append (its time, column values and hash input), for
        :meth:`record_many`: a thread that hands its record to an event loop prepares it
        first, so the loop, which every request passes, only chains and inserts it."""
        if rec.time is None:
            rec.time = _now()
        return _Row(rec)

    def record_many(self, recs: list[Any]) -> None:
        """Append several records (each an :class:`AccessRecord` or :meth:`prepare`'s result)
        in one batch; returns once they are committed (durable as ``sync`` says). Raises
        :class:`AuditUnavailable`.

        For an event loop with a fast log (:attr:`fast_commit`): it collects the records of
        one turn and writes them here, in its own thread, without a thread hop."""
        rows = [rec if isinstance(rec, _Row) else self.prepare(rec) for rec in recs]
        if rows:
            self._append(rows)

    def record(self, rec: AccessRecord) -> None:
        """Append ``rec``; returns once it is durable. Raises :class:`AuditUnavailable`.

        Group commit without a writer thread: the record joins the open batch; if no
        caller is writing, this caller leads: it writes the queued batches in order, each in
        one transaction, until its own is committed, then hands the lead to a waiter of the
        next batch. Others wait on their batch's condition. A lone caller so writes its own
        record with no thread hop, and while one batch commits the next one fills.
        """
        self._append([self.prepare(rec)])

    def _append(self, rows: list[_Row]) -> None:
        """Join ``rows`` to the open batch and wait for (or lead) its commit; when nobody
        writes or waits, write them at once (the event loop's case: no batch to wait on)."""
        with self._lock:
            if self._closed:
                raise AuditUnavailable("the access log is closed")
            if self._sync_failed is not None:
                raise AuditUnavailable(self._sync_failed)
            alone = not self._writing and not self._queue
            if alone:
                self._writing = True
        if alone:
            error = self._write_logged(rows)
            with self._lock:
                self._hand_on()
            if error is not None:
                raise AuditUnavailable(f"access log write failed: {error}") from error
            return
        with self._lock:
            batch = self._join_batch(rows)
            batch.waiting += 1
            if self._writing:
                deadline = monotonic() + self.timeout
                while self._writing and not batch.done:
                    remaining = deadline - monotonic()
                    if remaining <= 0 or not batch.cond.wait(remaining) and \
                            self._writing and not batch.done:
                        batch.waiting -= 1
                        raise AuditUnavailable(
                            f"access log write not confirmed within {self.timeout:g}s")
                if batch.done:
                    self._check(batch)
                    return
            self._writing = True
        self._lead(batch)
        self._check(batch)

    def _join_batch(self, rows: list[_Row]) -> _Batch:
        """Add ``rows`` to the open batch (a new one when full); call with the lock held."""
        queue = self._queue
        if queue and len(queue[-1].rows) < self.max_batch:
            batch = queue[-1]
        else:
            batch = _Batch(self._lock)
            queue.append(batch)
        batch.rows.extend(rows)
        return batch

    def submit(self, rec: AccessRecord,
               callback: Callable[[AuditUnavailable | None], None]) -> None:
        """Append ``rec`` without waiting: ``callback(None)`` once it is durable, or
        ``callback(AuditUnavailable)`` when it cannot be written.

        For callers that must not block (an event loop): the record joins the open batch like
        one of :meth:`record`, and the same chain, batching and durability apply. The callback
        runs in the thread that wrote the batch (or in the caller's when the log is closed),
        so it must only hand the outcome over, e.g. to the event loop.
        """
        row = self.prepare(rec)
        with self._lock:
            closed = self._closed or self._sync_failed is not None
            if not closed:
                batch = self._join_batch([row])
                batch.callbacks.append(callback)
                if not self._writing:
                    self._writing = True
                    self._wake_flusher()
        if closed:
            callback(AuditUnavailable(self._sync_failed or "the access log is closed"))

    def _wake_flusher(self) -> None:
        """Hand the lead to the flusher thread (called with the lock held, ``_writing`` set)."""
        self._flush_wanted = True
        if self._flusher is None:
            self._flusher = threading.Thread(target=self._flush_loop, name="audit-flusher",
                                             daemon=True)
            self._flusher.start()
        self._flush.notify()

    def _flush_loop(self) -> None:
        while True:
            with self._lock:
                while not self._flush_wanted:
                    self._flush.wait()
                self._flush_wanted = False
            self._lead(None)

    @staticmethod
    def _check(batch: _Batch) -> None:
        if batch.error is not None:
            raise AuditUnavailable(f"access log write failed: {batch.error}") from batch.error

    def _lead(self, mine: _Batch | None) -> None:
        """Write queued batches, oldest first, until ``mine`` (None: all) is committed."""
        # Runs with ``_writing`` set by the caller; hands the lead on (or clears the flag)
        # before it returns.
        while True:
            with self._lock:
                current = self._queue.popleft() if self._queue else None
                if current is None:  # only when flushing at close
                    self._writing = False
                    self._idle.notify_all()
                    return
            error = self._write_logged(current.rows)
            with self._lock:
                current.error, current.done = error, True
                current.cond.notify_all()
                handed = current is mine
                if handed:
                    self._hand_on()
            if current.callbacks:
                failure = None if error is None else AuditUnavailable(
                    f"access log write failed: {error}")
                for callback in current.callbacks:
                    try:
                        callback(failure)
                    except Exception:  # noqa: BLE001 - one bad callback must not stop others
                        log.exception("access log: a submit callback failed")
            if handed:
                return

    def _write_logged(self, rows: list[_Row]) -> BaseException | None:
        """Write ``rows`` in one transaction; the error (logged) if that failed."""
        try:
            self._write_rows(rows)
        except BaseException as exc:  # noqa: BLE001 - every waiter must hear of it
            log.error("access log write of %d record(s) failed: %s", len(rows), exc)
            return exc
        return None

    def _hand_on(self) -> None:
        """The lead's write is done (call with the lock held): hand the lead to the next
        batch's waiter, or to the flusher when nobody waits in it, or clear ``_writing``."""
        if self._queue and not self._queue[0].waiting:
            self._wake_flusher()  # nobody waits in the next batch to lead it
            return
        self._writing = False
        for waiting in self._queue:  # one waiter per batch wakes: it leads
            waiting.cond.notify()
        self._idle.notify_all()

    def _connection(self) -> Any:
        """The writer's DBAPI connection, opened once and kept (dropped after an error)."""
        if self._conn is None:
            conn = self.engine.raw_connection()
            try:
                cursor = conn.cursor()
                if self.dialect == "sqlite":
                    cursor.execute(f"PRAGMA busy_timeout={int(self.timeout * 1000)}")
                elif self.dialect == "postgresql":
                    cursor.execute(f"SET lock_timeout = {int(self.timeout * 1000)}")
                    if self.sync == "normal":
                        cursor.execute("SET synchronous_commit = off")
                    conn.commit()
                cursor.close()
            except BaseException:
                conn.invalidate()
                raise
            self._conn = conn
        return self._conn

    def _write_rows(self, rows: list[_Row]) -> None:
        """One transaction: lock, read the tail, insert the records (one row each: the
        subject index is derived later, in bulk, by :meth:`index_subjects`). On SQLite, once
        this process knows the tail, one INSERT statement (see :meth:`_append_after_tail`)."""
        conn = self._connection()
        sqlite = self.dialect == "sqlite"
        try:
            cursor = conn.cursor()
            if sqlite and self._known_tail is not None and len(rows) <= self.LEAN_ROWS:
                seq = self._append_after_tail(cursor, rows)
                if seq is not None:
                    cursor.close()
                    self._written(rows, seq)
                    return
            if sqlite:
                cursor.execute("BEGIN IMMEDIATE")
            elif self._sql_lock:
                cursor.execute(self._sql_lock, (_PG_LOCK,))
            cursor.execute(self._sql_tail)
            tail = cursor.fetchone()
            if tail is None:
                cursor.execute(self._sql_anchor, (1,))
                tail = cursor.fetchone() or (0, GENESIS)
            seq, prev = int(tail[0]), tail[1]
            values = []
            for row in rows:
                seq += 1
                digest = row.hash(seq, prev)
                values.append((seq, *row.sqlite_columns, prev, digest) if sqlite else (
                    seq, row.time, row.client, row.source, row.operation, row.query,
                    row.status, row.subjects_json, row.sensitive_json, prev, digest))
                prev = digest
            cursor.executemany(self._sql_insert, values)
            if sqlite:
                cursor.execute("COMMIT")
                self._known_tail = (seq, prev)
            else:
                conn.commit()
            cursor.close()
        except BaseException:
            self._known_tail = None
            self._drop_or_rollback(conn)
            raise
        self._written(rows, seq)

    #: Batches up to this size are appended by one multi-row INSERT (SQLite's limit on
    #: statement parameters stays far away; larger batches take the general path).
    LEAN_ROWS = 64
    #: (seq, hash) of the last record this process committed to a SQLite log; None when
    #: unknown (start, after an error, after another process appended).
    _known_tail: tuple[int, str] | None = None

    def _append_after_tail(self, cursor: Any, rows: list[_Row]) -> int | None:
        """Append ``rows`` after the tail this process committed last, as ONE autocommit
        statement instead of lock, read, insert and commit, which matters most where an event
        loop commits (each SQLite call hands the interpreter lock to other threads and must
        wait to get it back). The statement inserts only if the chain still ends where this
        process left it (the greatest seq, or the purge anchor when purge emptied the log):
        when another process appended meanwhile it changes nothing, the tail is forgotten and
        None returned, so the caller appends after the real tail. Returns the last seq."""
        seq, prev = self._known_tail  # type: ignore[misc]
        values: list[Any] = []
        for row in rows:
            seq += 1
            digest = row.hash(seq, prev)
            values.append(seq)
            values += row.sqlite_columns
            values.append(prev)
            values.append(digest)
            prev = digest
        values.append(self._known_tail[0])  # type: ignore[index]
        sql = self._sql_insert_rows.get(len(rows))
        if sql is None:
            sql = self._sql_insert_rows[len(rows)] = (
                f"INSERT INTO access_log ({_COLUMNS}) SELECT * FROM (VALUES "
                + ", ".join(["(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"] * len(rows))
                + ") WHERE coalesce((SELECT max(seq) FROM access_log), (SELECT seq FROM "
                  "access_log_anchor WHERE id = 1), 0) = ?")
        try:
            cursor.execute(sql, values)
        except sqlite3.IntegrityError:  # cannot happen with the guard; kept as a backstop
            self._known_tail = None
            return None
        if cursor.rowcount != len(rows):
            self._known_tail = None
            return None
        self._known_tail = (seq, prev)
        return seq

    def _written(self, rows: list[_Row], seq: int) -> None:
        """Count a committed batch ending at ``seq``; have it synced (``normal``) and indexed
        later."""
        self.written_seq = seq
        self.batches += 1
        self.written += len(rows)
        if self._wal is not None:
            self._need_sync()
        self._need_index(len(rows))

    # ------------------------------------------------------------------ syncing

    def _need_sync(self) -> None:
        """Records were committed without fsync: have the syncer flush them within the
        interval (started on first use)."""
        if self._syncer is None:
            with self._lock:
                if self._syncer is None:
                    self._syncer = threading.Thread(target=self._sync_loop,
                                                    name="audit-syncer", daemon=True)
                    self._syncer.start()
        self._sync_wake.set()

    def _sync_loop(self) -> None:
        """Once per interval with new records: fsync the WAL file, so committed records reach
        the disk (SQLite ``synchronous=NORMAL`` would only sync it at checkpoints)."""
        while True:
            self._sync_wake.wait()
            if self._sync_stop.is_set():
                return
            self._sync_wake.clear()
            self.sync_now()
            if self._sync_stop.wait(self.sync_interval):  # records of the next interval
                return

    def sync_now(self) -> None:
        """Flush every record committed so far to the disk (``sync = "normal"``): fsync the
        WAL file (SQLite itself syncs it only before a checkpoint)."""
        if self._wal is None:
            return
        upto = self.written_seq
        try:
            fd = os.open(self._wal, os.O_RDONLY)
        except FileNotFoundError:
            fd = None  # checkpointed and removed: its records are in the synced database
        if fd is not None:
            try:
                os.fsync(fd)
            except OSError as exc:
                self._sync_failed = (f"the access log could not be flushed to disk ({exc}); "
                                     "it refuses further records until the facade restarts")
                log.critical("access log: fsync of %s failed: %s. Records committed since "
                             "seq %d may be lost; refusing every further request until a "
                             "restart.", self._wal, exc, self.synced_seq)
                return
            finally:
                os.close(fd)
        self.synced_seq = max(self.synced_seq, upto)

    # ------------------------------------------------------------------ subject index

    #: One indexing run covers at most this many records and (subject, record) pairs, so the
    #: write lock it takes for its inserts is held briefly; :meth:`index_subjects` loops.
    RUN_RECORDS = 50_000
    RUN_PAIRS = 200_000

    def _need_index(self, records: int) -> None:
        """``records`` were written: signal the indexer thread (started on first use) when
        enough wait. Never waits for it; a lost count under a race only delays a run."""
        self._unindexed += records
        if self._indexer is None:
            with self._lock:
                if self._indexer is None:
                    self._indexer = threading.Thread(target=self._index_loop,
                                                     name="audit-indexer", daemon=True)
                    self._indexer.start()
        if self._unindexed >= self.index_records:
            self._index_wake.set()

    def _index_loop(self) -> None:
        """Index when signalled, or every ``index_interval`` seconds while records wait."""
        while True:
            woken = self._index_wake.wait(self.index_interval)
            if self._index_stop.is_set():
                return
            if woken:
                self._index_wake.clear()
            elif not self._unindexed:
                continue
            try:
                self.index_subjects(stop=self._index_stop)
            except Exception as exc:  # noqa: BLE001 - readers catch up; the next run retries
                log.warning("access log: indexing subjects failed (readers catch up): %s", exc)

    def index_subjects(self, stop: threading.Event | None = None) -> int:
        """Bring the subject index up to the chain's tail as of this call; returns how many
        records this call indexed (0 when another process or thread already had).

        Runs of at most :attr:`RUN_RECORDS` records: each reads the progress mark and the
        records after it without locking anything, groups their subjects, then takes the
        index's write lock (:meth:`_index_lock`), checks the mark has not moved (another
        indexer, or a purge, was faster: the run is dropped and redone from the new mark),
        inserts one posting row per subject and moves the mark, in one short transaction.
        With the index in its own file that transaction locks only the index file: record
        writers never wait for it. First it finishes a purge's trim of the index that a crash
        interrupted (:meth:`purge`).
        """
        self._unindexed = 0  # this call covers everything written before it starts
        with self.engine.connect() as conn, conn.begin():
            target = self._tail(conn)[0]
            anchor = self._anchor_seq(conn)
        if self._split:
            with self.index_engine.connect() as conn, conn.begin():
                trimmed, mark = self._trimmed(conn), self._mark(conn)
            if mark > target:  # an index of another (deleted or replaced) log: rebuild it
                log.warning("access log: the index covers seq %d but the log ends at %d; "
                            "rebuilding the index", mark, target)
                self._trim_index(None)
            elif trimmed < anchor:  # a purge stopped between its two steps: finish it
                self._trim_index(anchor)
        total = 0
        while stop is None or not stop.is_set():
            done = self._index_run(target)
            if done == 0:
                break
            total += done or 0
        return total

    def _index_run(self, upto: int) -> int | None:
        """One run up to seq ``upto``: records indexed, 0 when none wait, None when the mark
        moved under it."""
        by_subject: dict[str, list[int]] = {}
        by_client: dict[str, list[int]] = {}
        decoded: dict[str, list[str]] = {}
        records = pairs = 0
        first_seq: int | None = None
        low = high = None
        with self.index_engine.connect() as conn, conn.begin():
            mark = after = self._mark(conn)
        with self.engine.connect() as conn, conn.begin():
            while after < upto and records < self.RUN_RECORDS and pairs < self.RUN_PAIRS:
                rows = conn.execute(
                    select(access_log.c.seq, access_log.c.time, access_log.c.client,
                           type_coerce(access_log.c.subjects, Text))
                    .where(access_log.c.seq > after, access_log.c.seq <= upto)
                    .order_by(access_log.c.seq)
                    .limit(min(1000, self.RUN_RECORDS - records))).all()
                if not rows:
                    break
                for seq, time, client, subjects in rows:
                    seq = int(seq)
                    if isinstance(subjects, str):
                        # Records repeat their subject lists (a client re-reading the same
                        # people): decode each distinct text once per run.
                        text_ = subjects
                        subjects = decoded.get(text_)
                        if subjects is None:
                            if len(decoded) >= 10_000:
                                decoded.clear()
                            subjects = decoded[text_] = json.loads(text_)
                    for subject in subjects:
                        by_subject.setdefault(subject, []).append(seq)
                    by_client.setdefault(client, []).append(seq)
                    pairs += len(subjects)
                    if first_seq is None:
                        first_seq, low, high = seq, time, time
                    else:
                        low, high = min(low, time), max(high, time)
                records += len(rows)
                after = int(rows[-1].seq)
        if not records:
            return 0
        postings = []
        for subject in sorted(by_subject):
            first, last, seqs = encode_seqs(by_subject[subject])
            postings.append({"subject": subject, "first_seq": first, "last_seq": last,
                             "seqs": seqs})
        client_postings = []
        for client in sorted(by_client):
            first, last, seqs = encode_seqs(by_client[client])
            client_postings.append({"client": client, "first_seq": first, "last_seq": last,
                                    "seqs": seqs})
        with self._writer(self.index_engine) as conn, conn.begin():
            locked = monotonic()
            self._index_lock(conn)
            if self._mark(conn) != mark:
                return None
            if postings:
                conn.execute(insert(access_log_postings), postings)
            conn.execute(insert(access_log_client_postings), client_postings)
            # The run covers (mark, after]: records purged meanwhile only make it wider.
            conn.execute(insert(access_log_runs).values(first_seq=mark + 1, last_seq=after,
                                                        min_time=low, max_time=high))
            self._set_mark(conn, after)
        held = monotonic() - locked
        self.index_lock_max = max(self.index_lock_max, held)
        if not self._split:
            self.log_lock_max = max(self.log_lock_max, held)
        self.index_runs += 1
        self.indexed_pairs += pairs
        return records

    def _rebuild_older_index(self) -> None:
        """An index with a mark but no runs was written by a version that indexed only
        subjects (in the log's database on PostgreSQL; or an index file without the client
        and time parts): empty it, so the next run indexes everything from seq 0. (An index
        whose every run was purged is emptied too: it indexes nothing that still exists.)"""
        with self._writer(self.index_engine) as conn, conn.begin():
            self._index_lock(conn)
            if self._mark(conn) and conn.scalar(select(func.count())
                                                .select_from(access_log_runs)) == 0:
                for table in (access_log_postings, access_log_client_postings,
                              access_log_indexed):
                    conn.execute(delete(table))

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

    @staticmethod
    def _set_mark(conn: Connection, seq: int, row: int = 1) -> None:
        moved = conn.execute(access_log_indexed.update().where(access_log_indexed.c.id == row)
                             .values(seq=seq))
        if not moved.rowcount:
            conn.execute(insert(access_log_indexed).values(id=row, seq=seq))

    @staticmethod
    def _anchor_seq(conn: Connection) -> int:
        """Seq of the last purged record (0: never purged): no record at or below it exists."""
        return int(conn.scalar(select(access_log_anchor.c.seq)
                               .where(access_log_anchor.c.id == 1)) or 0)

    def _catch_up(self) -> None:
        """Index what waits before reading the index; on failure (lock not obtained in time)
        readers still answer completely: they scan the records after the mark."""
        try:
            self.index_subjects()
        except Exception as exc:  # noqa: BLE001 - the answer stays complete, only slower
            log.warning("access log: could not bring the subject index up to date: %s", exc)

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

    def _subject_seqs(self, conn: Connection, index: Connection, subject: str) -> list[int]:
        """Seqs of the records about ``subject``: its postings, plus the records after the
        mark that name it (those the index does not cover yet)."""
        mark = self._mark(index)
        seqs: set[int] = set()
        for first, seqs_text in index.execute(
                select(access_log_postings.c.first_seq, access_log_postings.c.seqs)
                .where(access_log_postings.c.subject == subject)):
            seqs.update(decode_seqs(first, seqs_text))
        for seq, subjects in conn.execute(select(access_log.c.seq, access_log.c.subjects)
                                          .where(access_log.c.seq > mark)):
            if subject in (json.loads(subjects) if isinstance(subjects, str) else subjects):
                seqs.add(int(seq))
        anchor = self._anchor_seq(conn)
        return sorted(seq for seq in seqs if seq > anchor)

    def _drop_or_rollback(self, conn: Any) -> None:
        try:
            if self.dialect == "sqlite":
                if getattr(conn.driver_connection, "in_transaction", False):
                    conn.driver_connection.execute("ROLLBACK")
            else:
                conn.rollback()
        except Exception:  # noqa: BLE001 - a broken connection is replaced on next write
            self._conn = None
            try:
                conn.invalidate()
            except Exception:  # noqa: BLE001
                pass

    def close(self) -> None:
        """Write what is queued, then close the writer's connection."""
        with self._lock:
            self._closed = True
            deadline = monotonic() + self.timeout
            while self._writing and monotonic() < deadline:
                self._idle.wait(deadline - monotonic())
            if self._writing:
                log.error("access log: a write is still running at close")
                return
            self._writing = True
        self._lead(None)
        self._index_stop.set()
        self._index_wake.set()
        indexer = self._indexer
        if indexer is not None and indexer is not threading.current_thread():
            indexer.join(self.timeout)
        self._sync_stop.set()
        self._sync_wake.set()
        self.sync_now()
        if self._conn is not None:
            try:
                self._conn.close()
            finally:
                self._conn = None
        self.engine.dispose()
        if self._split:
            self.index_engine.dispose()

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
        """Recompute the chain from the purge anchor (or the start) and check the subject
        index against it; report the first break.

        The index is brought up to date first. The postings must hold exactly the
        (subject, seq) pairs of the records up to the progress mark: walked by ``first_seq``
        alongside the records, so memory stays bounded by one indexing run.
        """
        self._catch_up()
        with self._snapshots() as (conn, index):
            anchor = conn.execute(select(access_log_anchor.c.seq, access_log_anchor.c.hash)
                                  .where(access_log_anchor.c.id == 1)).first()
            prev_seq, prev_hash = (int(anchor.seq), anchor.hash) if anchor else (0, GENESIS)
            anchor_seq = prev_seq if anchor else None
            floor = prev_seq  # index entries at or below the anchor name purged records
            mark = self._mark(index)
            checked, first = 0, None
            pending: dict[int, set[str]] = {}  # postings' pairs not yet matched to a record
            clients: dict[int, set[str]] = {}  # the same for the client postings
            runs = iter(index.execute(select(access_log_runs)
                                      .order_by(access_log_runs.c.first_seq)).all())
            run = next(runs, None)

            def fail(seq: int, message: str) -> VerifyResult:
                return VerifyResult(False, checked, first, prev_seq or None, prev_hash,
                                    anchor_seq, seq, message)

            def load(above: int | None, upto: int | None) -> tuple[int, str] | None:
                """Add the postings with ``above < first_seq <= upto`` to ``pending`` (and
                ``clients``)."""
                return (load_table(access_log_postings, "subject", pending, above, upto)
                        or load_table(access_log_client_postings, "client", clients, above,
                                      upto))

            def load_table(table: Table, key: str, pending: dict[int, set[str]],
                           above: int | None, upto: int | None) -> tuple[int, str] | None:
                stmt = select(table).order_by(table.c.first_seq)
                if above is not None:
                    stmt = stmt.where(table.c.first_seq > above)
                if upto is not None:
                    stmt = stmt.where(table.c.first_seq <= upto)
                for row in index.execute(stmt):
                    value = row._mapping[key]
                    name = f"{key} index row ({value!r}, {row.first_seq})"
                    try:
                        seqs = decode_seqs(row.first_seq, row.seqs)
                    except ValueError as exc:
                        return int(row.first_seq), f"{name} is malformed: {exc}"
                    if seqs[-1] != row.last_seq:
                        return int(row.first_seq), f"{name}: last_seq does not match its seqs"
                    for seq in seqs:
                        if seq <= floor:
                            continue
                        holders = pending.setdefault(seq, set())
                        if value in holders:
                            return seq, f"{name} lists record {seq} twice for its {key}"
                        holders.add(value)
                return None

            loaded: int | None = None
            for chunk in self._records(conn, -1):
                broken = load(loaded, chunk[-1].seq)
                if broken:
                    return fail(*broken)
                loaded = chunk[-1].seq
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
                    expected = set(rec.subjects) if rec.seq <= mark else set()
                    if pending.pop(rec.seq, set()) != expected:
                        return fail(rec.seq, f"record {rec.seq}: subject index differs from "
                                             f"the record's subjects")
                    if clients.pop(rec.seq, set()) != ({rec.client} if rec.seq <= mark
                                                       else set()):
                        return fail(rec.seq, f"record {rec.seq}: client index differs from "
                                             f"the record's client")
                    while run is not None and run.last_seq < rec.seq:
                        run = next(runs, None)
                    if rec.seq <= mark and (run is None or run.first_seq > rec.seq
                                            or not run.min_time <= rec.time <= run.max_time):
                        return fail(rec.seq, f"record {rec.seq}: time index has no run "
                                             f"holding its seq and time")
                    prev_seq, prev_hash = rec.seq, rec.hash
                    checked += 1
                stray = [seq for seq in (*pending, *clients) if seq <= loaded]
                if stray:
                    which = "subject" if min(stray) in pending else "client"
                    return fail(min(stray), f"{which} index names record {min(stray)}, "
                                            f"which does not exist")
            broken = load(loaded, None)
            if broken:
                return fail(*broken)
            if pending or clients:
                stray = min((*pending, *clients))
                which = "subject" if stray in pending else "client"
                return fail(stray, f"{which} index names record {stray}, which does not "
                                   f"exist")
        return VerifyResult(True, checked, first, prev_seq or None, prev_hash, anchor_seq)

    def _trim_postings(self, conn: Connection, boundary: int) -> None:
        """Drop the subject index's pairs up to ``boundary``: rows wholly below it go, rows
        straddling it are rewritten from their first seq above it; a mark below it moves up
        (those records are gone, nothing is left to index)."""
        for postings, key in ((access_log_postings, "subject"),
                              (access_log_client_postings, "client")):
            conn.execute(delete(postings).where(postings.c.first_seq <= boundary,
                                                postings.c.last_seq <= boundary))
            for row in conn.execute(select(postings)
                                    .where(postings.c.first_seq <= boundary)).all():
                kept = [seq for seq in decode_seqs(row.first_seq, row.seqs) if seq > boundary]
                conn.execute(delete(postings).where(postings.c[key] == row._mapping[key],
                                                    postings.c.first_seq == row.first_seq))
                first, last, seqs = encode_seqs(kept)
                conn.execute(insert(postings).values({key: row._mapping[key], "first_seq": first,
                                                      "last_seq": last, "seqs": seqs}))
        runs = access_log_runs
        conn.execute(delete(runs).where(runs.c.last_seq <= boundary))
        conn.execute(runs.update().where(runs.c.first_seq <= boundary)
                     .values(first_seq=boundary + 1))  # its times stay a bound of the rest
        if self._mark(conn) < boundary:
            self._set_mark(conn, boundary)
        if self._split:
            self._set_mark(conn, boundary, 2)

    def _trim_index(self, boundary: int | None) -> None:
        """The second step of a purge with an index file of its own, in one transaction of
        that file: trim the index up to ``boundary`` (None: empty it and index from 0)."""
        with self._writer(self.index_engine) as conn, conn.begin():
            if boundary is None:
                for table in (access_log_postings, access_log_client_postings,
                              access_log_runs, access_log_indexed):
                    conn.execute(delete(table))
            elif self._trimmed(conn) < boundary:
                self._trim_postings(conn, boundary)

    def _trim_old_tables(self, conn: Connection, boundary: int) -> None:
        """Trim the unread indexes of earlier versions in the log's database (purge's log
        step): no person id may outlive its records there either."""
        if self._legacy_index:
            conn.execute(delete(access_log_subject).where(access_log_subject.c.seq <= boundary))
        if self._old_postings:
            conn.execute(text("DELETE FROM access_log_postings WHERE first_seq <= :b"),
                         {"b": boundary})

    def query(self, *, subject: str | None = None, client: str | None = None,
              since: datetime | None = None, until: datetime | None = None,
              limit: int | None = None) -> list[StoredRecord]:
        """Records matching every given condition, oldest first (``until`` exclusive).

        The derived index is brought up to date first and serves every condition: subject
        and client postings give seqs, the runs' time ranges give seq ranges (a record is
        read only from the runs whose [min_time, max_time] meets [since, until)); the
        records after its mark are scanned. So the answer is complete however far the index
        lagged. Every condition is checked again on the records read."""
        stmt = select(access_log)
        if client is not None:
            stmt = stmt.where(access_log.c.client == client)
        if since is not None:
            stmt = stmt.where(access_log.c.time >= since)
        if until is not None:
            stmt = stmt.where(access_log.c.time < until)
        stmt = stmt.order_by(access_log.c.seq)
        if subject is None and client is None and since is None and until is None:
            if limit is not None:
                stmt = stmt.limit(limit)
            with self.engine.connect() as conn, conn.begin():
                return [_stored(r) for r in conn.execute(stmt)]
        self._catch_up()
        found: list[StoredRecord] = []

        def take(rows: Iterable[Any]) -> bool:
            """Add the matching rows; True once ``limit`` is reached."""
            for row in rows:
                rec = _stored(row)
                if subject is None or subject in rec.subjects:
                    found.append(rec)
                    if limit is not None and len(found) >= limit:
                        return True
            return False

        with self._snapshots() as (conn, index):
            mark = self._mark(index)
            seqs: set[int] | None = None
            if subject is not None:
                seqs = set(self._posted(index, access_log_postings, "subject", subject))
            if client is not None:
                posted = set(self._posted(index, access_log_client_postings, "client",
                                          client))
                seqs = posted if seqs is None else seqs & posted
            if seqs is not None:
                ordered = sorted(seqs)
                for start in range(0, len(ordered), 500):
                    if take(conn.execute(stmt.where(
                            access_log.c.seq.in_(ordered[start:start + 500])))):
                        return found
            else:
                runs = select(access_log_runs.c.first_seq, access_log_runs.c.last_seq) \
                    .where(access_log_runs.c.first_seq <= mark) \
                    .order_by(access_log_runs.c.first_seq)
                if since is not None:
                    runs = runs.where(access_log_runs.c.max_time >= since)
                if until is not None:
                    runs = runs.where(access_log_runs.c.min_time < until)
                for first, last in index.execute(runs).all():
                    if take(conn.execute(stmt.where(access_log.c.seq >= first,
                                                    access_log.c.seq <= last))):
                        return found
            take(conn.execute(stmt.where(access_log.c.seq > mark)))
        return found

    @staticmethod
    def _posted(index: Connection, table: Table, key: str, value: str) -> list[int]:
        """The seqs a posting table holds for ``value`` (may name purged records)."""
        seqs: list[int] = []
        for first, seqs_text in index.execute(select(table.c.first_seq, table.c.seqs)
                                              .where(table.c[key] == value)):
            seqs.extend(decode_seqs(first, seqs_text))
        return seqs

    def count(self) -> int:
        """Records currently held."""
        with self.engine.connect() as conn, conn.begin():
            return int(conn.scalar(select(func.count()).select_from(access_log)) or 0)

    # ------------------------------------------------------------------ retention

    @staticmethod
    def _old_prefix(conn: Connection, cutoff: datetime, chunk: int = 5000) -> int | None:
        """The last seq of the longest prefix of the chain whose records are all older than
        ``cutoff`` (None: the first record is not).

        Read in seq order (the primary key) from the first record on, so it reads just the
        records purge deletes, plus one: no index by time is needed, derived or not, and none
        is trusted to decide what is deleted."""
        after, boundary = -1, None
        while True:
            rows = conn.execute(select(access_log.c.seq, access_log.c.time)
                                .where(access_log.c.seq > after)
                                .order_by(access_log.c.seq).limit(chunk)).all()
            for seq, time in rows:
                if time >= cutoff:
                    return boundary
                boundary = int(seq)
            if len(rows) < chunk:
                return boundary
            after = int(rows[-1].seq)

    def purge(self, older_than: datetime | str | None = None) -> int:
        """Delete the records older than the cut-off (default: the configured retention).

        Deletes the longest prefix of the chain whose records are all older than the cut-off
        and moves the anchor to its last record, so ``verify`` still checks what remains. A
        record's time is set by its writing process before its seq is assigned, so times are
        only nearly ascending in seq: an old record behind a newer one waits for the next
        purge after that one is old too; a record newer than the cut-off is never deleted.
        Returns how many records were deleted.
        """
        if older_than is None or isinstance(older_than, str):
            cutoff = cutoff_for(older_than or self.retention)
        else:
            cutoff = older_than
        with self._writer() as conn, conn.begin():
            self._chain_lock(conn)
            if not self._split:  # then the index's: indexing runs take only that one
                self._index_lock(conn)
            boundary = self._old_prefix(conn, cutoff)
            if boundary is None:
                deleted = 0
            else:
                boundary_hash = conn.scalar(select(access_log.c.hash)
                                            .where(access_log.c.seq == boundary))
                deleted = int(conn.execute(delete(access_log)
                                           .where(access_log.c.seq <= boundary)).rowcount or 0)
                if not self._split:
                    self._trim_postings(conn, boundary)
                self._trim_old_tables(conn, boundary)
                conn.execute(delete(access_log_anchor).where(access_log_anchor.c.id == 1))
                conn.execute(insert(access_log_anchor).values(
                    id=1, seq=boundary, hash=boundary_hash, purged_at=_now(), cutoff=cutoff))
            anchor = self._anchor_seq(conn)
        if self._split and anchor:
            # Second step, own transaction of the index file: after the records are gone, so
            # a crash in between leaves index entries at or below the anchor, which readers
            # ignore and the next purge or indexing run trims (also when nothing was deleted
            # now: an earlier purge's trim may have been interrupted).
            self._trim_index(anchor)
        return deleted


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
