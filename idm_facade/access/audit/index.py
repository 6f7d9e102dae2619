"""The access log's derived index (by subject, client and time) and the queries it serves.

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

Clients and time: ``access_log`` has no secondary index (each cost a B-tree page per
commit). The same runs write ``access_log_client_postings`` (one row per client per run) and
``access_log_runs`` (per run: seq range, least and greatest record time); :meth:`query` by
client or time range reads those, then the records after the mark.

The index trims itself when purge asks (:meth:`IndexMixin._trim_index`, and in the log's
own transaction :meth:`IndexMixin._trim_postings`): purge
(:mod:`idm_facade.access.audit.retention`) decides what is deleted, this module what that
means for the index's rows and marks.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Iterable
from datetime import datetime
from time import monotonic
from typing import Any

from sqlalchemy import Table, Text, delete, func, insert, select, type_coerce
from sqlalchemy.engine import Connection

from idm_facade.access.audit.db import DatabaseMixin
from idm_facade.access.audit.record import (
    StoredRecord,
    _stored,
    access_log,
    access_log_client_postings,
    access_log_indexed,
    access_log_postings,
    access_log_runs,
    decode_seqs,
    encode_seqs,
)
from idm_facade.access.audit.settings import AuditSettings, _engine_for, _index_url
from store.engine import in_chunks

log = logging.getLogger(__name__)


class IndexMixin(DatabaseMixin):
    """The derived index: bringing it up to date (in a background thread, and before every
    read), trimming it for purge, and answering queries from it."""

    # Set by AuditLog.__init__ (shared with the other parts); engine, dialect, index_engine
    # and _split: see DatabaseMixin (this part sets index_engine and _split).
    timeout: float
    _lock: threading.Lock
    # Provided by WriterMixin (writer.py): refuse every further record in this process; the
    # highest seq it wrote.
    fail_closed: Callable[[str], None]
    written_seq: int

    #: One indexing run covers at most this many records and (subject, record) pairs, so the
    #: write lock it takes for its inserts is held briefly; :meth:`index_subjects` loops.
    RUN_RECORDS = 50_000
    RUN_PAIRS = 200_000

    def _init_index(self, settings: AuditSettings) -> None:
        """The index's state and database (AuditLog.__init__ calls this once the shared
        attributes are set)."""
        # When the background thread indexes: see AuditSettings.index_interval.
        self.index_interval = settings.index_interval
        self.index_records = settings.index_records
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
        index_url = _index_url(settings.url)
        self._split = index_url is not None
        self.index_engine = (_engine_for(index_url, "normal", self.timeout) if index_url
                             else self.engine)

    # ------------------------------------------------------------------ indexing

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
            self.note_reached()

    def note_reached(self) -> None:
        """Note in the index file how far this process has written the log, so a log file
        deleted or replaced later is known to have lost records (:meth:`_check_continuity`)
        even when they were never indexed."""
        if not self._split or not self.written_seq:
            return
        try:
            with self.index_engine.connect() as conn, conn.begin():
                if self._seen(conn) < self.written_seq:
                    self._set_mark(conn, self.written_seq, 3)
        except Exception as exc:  # noqa: BLE001 - evidence only; the next interval retries
            log.warning("access log: could not note the log's progress: %s", exc)

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
            if mark > target:  # the log lost records: say so, never paper over it
                self.fail_closed(lost_records(mark, target))
                return 0
            if trimmed < anchor:  # a purge stopped between its two steps: finish it
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

    def _check_continuity(self) -> None:
        """Fail closed when the index covers records the log no longer has (the log file
        was deleted or replaced): the records of answers given are gone, and a fresh log
        must not carry on as if nothing happened. ``idm-facade audit reset-index`` is the
        operator's acknowledgement (:meth:`reset_index`)."""
        if not self._split:
            return
        with self.engine.connect() as conn:
            target = self._tail(conn)[0]
        with self.index_engine.connect() as conn:
            mark = max(self._mark(conn), self._seen(conn))
        if mark > target:
            self.fail_closed(lost_records(mark, target))

    def reset_index(self) -> None:
        """Empty the index, accepting that the log it was built from is gone (the CLI's
        ``audit reset-index``, after the loss has been looked into)."""
        self._trim_index(None)
        with self.index_engine.connect() as conn, conn.begin():
            self._set_mark(conn, 0, 3)

    def _catch_up(self) -> None:
        """Index what waits before reading the index; on failure (lock not obtained in time)
        readers still answer completely: they scan the records after the mark."""
        try:
            self.index_subjects()
        except Exception as exc:  # noqa: BLE001 - the answer stays complete, only slower
            log.warning("access log: could not bring the subject index up to date: %s", exc)

    # ------------------------------------------------------------------ trimming (for purge)

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

    # ------------------------------------------------------------------ queries

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
                for chunk in in_chunks(seqs):
                    if take(conn.execute(stmt.where(access_log.c.seq.in_(chunk)))):
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


def records_for(log_: IndexMixin, subjects: Iterable[str]) -> list[StoredRecord]:
    """Every record about any of ``subjects`` (a person with several ids), oldest first."""
    found: dict[int, StoredRecord] = {}
    for subject in subjects:
        for rec in log_.query(subject=subject):
            found[rec.seq] = rec
    return [found[k] for k in sorted(found)]


def lost_records(mark: int, tail: int) -> str:
    """The reason given when the index covers more records than the log holds."""
    return (f"the access log ends at record {tail} but its index covers records up to "
            f"{mark}: {mark - tail} or more records are missing (the log file was deleted or "
            "replaced); no answer is given until the log is restored, or the loss is "
            "acknowledged with 'idm-facade audit reset-index'")
