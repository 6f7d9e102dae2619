"""Appending to the access log: group commit, and the threads that flush and fsync.

Every SCIM request, LDAP bind and search and role lookup calls :meth:`WriterMixin.record`
before its answer leaves; ``record`` returns only when the record is committed to the
database and raises :class:`AuditUnavailable` when it cannot be, so the front end fails the
request instead of disclosing unlogged ("no record, no answer").

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

Chaining: the writer takes a database lock per batch (SQLite ``BEGIN IMMEDIATE``, PostgreSQL
advisory lock) and reads the chain's tail inside it, so several facade processes can share
one log. On SQLite, once a process knows the tail it wrote last, it appends the next batch
with one INSERT statement that inserts only if the chain still ends there; when another
process appended meanwhile (or a purge emptied the log past it), nothing is inserted and the
batch is appended after the real tail.

The writer inserts one row per record and nothing per subject; the subject, client and time
index is derived later, in bulk (:mod:`idm_facade.access.audit.index`): each committed batch
only counts towards the next indexing run.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
from collections import deque
from collections.abc import Callable
from pathlib import Path
from time import monotonic
from typing import Any

from sqlalchemy import Engine

from idm_facade import metrics
from idm_facade.access.audit.db import _PG_LOCK
from idm_facade.access.audit.filelock import FileLock
from idm_facade.access.audit.record import GENESIS, AccessRecord, AuditUnavailable, _now, _Row
from idm_facade.access.audit.settings import _sqlite_file

log = logging.getLogger(__name__)


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


class WriterMixin:
    """Appending records: group commit on the writer's long-lived DBAPI connection, the
    flusher thread for batches nobody waits in, and (``sync = "normal"``) the syncer thread
    that fsyncs the SQLite log's WAL file."""

    # Set by AuditLog.__init__ (shared with the other parts).
    engine: Engine
    dialect: str
    sync: str
    sync_interval: float
    timeout: float
    write_timeout: float
    _lock: threading.Lock
    # Provided by IndexMixin (index.py): counts records towards the next indexing run.
    _need_index: Callable[[int], None]

    def _init_writer(self, url: str, max_batch: int) -> None:
        """The writer's state, for a log at ``url`` (AuditLog.__init__ calls this once the
        shared attributes above are set)."""
        #: Commits only reach the operating system; the disk follows within ``sync_interval``.
        #: True only for SQLite, where such a commit is cheap enough to run in an event loop.
        self.fast_commit = self.sync == "normal" and self.dialect == "sqlite"
        self._wal = self._wal_path(url) if self.fast_commit else None
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
        #: The SQLite log file and its (device, inode) when the writer opened it: a file
        #: deleted or replaced while serving must stop the answers, not take records into an
        #: unlinked file (:meth:`_check_file`).
        self._file = _sqlite_file(url)
        self._file_id: tuple[int, int] | None = None
        #: Taken around each append, so writers in other processes (``--workers N``) wait
        #: for each other without SQLite's sleeping busy handler (:mod:`filelock`).
        self._writers = FileLock(Path(f"{self._file}.lock")) if self._file is not None \
            else None
        self._file_checked = 0.0
        self.max_batch = max_batch
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
        started = monotonic()
        try:
            self._write_rows(rows)
        except BaseException as exc:  # noqa: BLE001 - every waiter must hear of it
            log.error("access log write of %d record(s) failed: %s", len(rows), exc)
            return exc
        metrics.AUDIT_COMMIT.observe(monotonic() - started)
        metrics.AUDIT_RECORDS.inc(len(rows))
        return None

    def queued(self) -> int:
        """Records waiting for a commit (``/metrics``)."""
        with self._lock:
            return sum(len(batch.rows) for batch in self._queue)

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
                    cursor.execute(f"PRAGMA busy_timeout={int(self.write_timeout * 1000)}")
                elif self.dialect == "postgresql":
                    cursor.execute(f"SET lock_timeout = {int(self.write_timeout * 1000)}")
                    if self.sync == "normal":
                        cursor.execute("SET synchronous_commit = off")
                    conn.commit()
                cursor.close()
            except BaseException:
                conn.invalidate()
                raise
            self._conn = conn
            self._file_id = self._file_identity()
        return self._conn

    def _file_identity(self) -> tuple[int, int] | None:
        if self._file is None:
            return None
        try:
            st = os.stat(self._file)
        except FileNotFoundError:
            return None
        return st.st_dev, st.st_ino

    def _check_file(self) -> None:
        """Refuse to write (from now on, fail closed) when the log file this writer opened
        was deleted or replaced: checked at most every 0.2 s, one ``stat`` each time."""
        if self._file is None or self._file_id is None:
            return
        now = monotonic()
        if now - self._file_checked < 0.2:
            return
        self._file_checked = now
        if self._file_identity() != self._file_id:
            self.fail_closed(f"the access log file {self._file} was deleted or replaced "
                             "while serving; no answer is given until it is restored and the "
                             "server restarted")
            raise AuditUnavailable(self._sync_failed or "")

    def fail_closed(self, reason: str) -> None:
        """Refuse every further record in this process (logged once)."""
        with self._lock:
            first = self._sync_failed is None
            if first:
                self._sync_failed = reason
        if first:
            log.error("access log: %s", reason)

    def _write_rows(self, rows: list[_Row]) -> None:
        """One transaction: lock, read the tail, insert the records (one row each: the
        subject index is derived later, in bulk, by :meth:`index_subjects`). On SQLite, once
        this process knows the tail, one INSERT statement (see :meth:`_append_after_tail`),
        and the writers of other processes kept out by a file lock while it runs."""
        conn = self._connection()
        self._check_file()
        writers = self._writers
        held = writers is not None and writers.acquire(self.write_timeout)
        try:
            self._write_locked(conn, rows)
        finally:
            if held:
                writers.release()  # type: ignore[union-attr]

    def _write_locked(self, conn: Any, rows: list[_Row]) -> None:
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
