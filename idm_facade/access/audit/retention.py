"""Retention: purging the access log's oldest records, and keeping the chain verifiable.

:meth:`AuditLog.purge` deletes the oldest records (a prefix of the chain) and
stores the last deleted record's seq and hash in ``access_log_anchor``; verification starts
from the anchor, so the remaining chain stays verifiable.

Purge finds the longest prefix of records older than the cut-off by reading the records in
seq order (:meth:`RetentionMixin._old_prefix`).

Purge with an index file of its own runs in two transactions, as no transaction spans two
SQLite files: first the log's (delete the records, move the anchor), then the index file's
(trim the postings up to the anchor, record the anchor as trimmed). A crash in between
leaves index entries at or below the anchor: every reader ignores them (they name no
record), and the next indexing run, reader catch-up or purge finishes the trim.

The index's part of a purge is its own (:mod:`idm_facade.access.audit.index`); the
indexes of earlier versions inside the log's database are trimmed here.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from sqlalchemy import delete, insert, select, text, update
from sqlalchemy.engine import Connection

from idm_facade.access.audit.db import DatabaseMixin
from idm_facade.access.audit.record import (
    _now,
    access_log,
    access_log_anchor,
    access_log_subject,
    anchor_signature,
)
from idm_facade.access.audit.settings import AuditSettings, anchor_key, cutoff_for


class RetentionMixin(DatabaseMixin):
    """:meth:`purge`: the log's records (and with them its index) older than the retention."""

    # Set by AuditLog.__init__: the configured retention, and whether the log's database
    # still holds indexes of earlier versions (which purge trims too).
    retention: str
    settings: AuditSettings
    _legacy_index: bool
    _old_postings: bool
    # Provided by IndexMixin (index.py): trim the index up to a purged boundary, in the
    # log's transaction (index in the log's database) or in the index file's own.
    _trim_postings: Callable[[Connection, int], None]
    _trim_index: Callable[[int | None], None]

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
                purged_at = _now().replace(microsecond=0)
                cutoff = cutoff.replace(microsecond=0)
                key = anchor_key(self.settings, create=True)
                assert key is not None
                conn.execute(insert(access_log_anchor).values(
                    id=1, seq=boundary, hash=boundary_hash, purged_at=purged_at,
                    cutoff=cutoff, signature=anchor_signature(key, boundary,
                                                              str(boundary_hash), purged_at,
                                                              cutoff)))
            anchor = self._anchor_seq(conn)
        if self._split and anchor:
            # Second step, own transaction of the index file: after the records are gone, so
            # a crash in between leaves index entries at or below the anchor, which readers
            # ignore and the next purge or indexing run trims (also when nothing was deleted
            # now: an earlier purge's trim may have been interrupted).
            self._trim_index(anchor)
        return deleted

    def sign_anchor(self) -> bool:
        """Sign the current purge anchor with this installation's key (the CLI's ``audit
        sign-anchor``: for an anchor made before anchors were signed, once the operator has
        looked at it). False when there is no anchor."""
        key = anchor_key(self.settings, create=True)
        assert key is not None
        with self._writer() as conn, conn.begin():
            self._chain_lock(conn)
            row = conn.execute(select(access_log_anchor).where(
                access_log_anchor.c.id == 1)).first()
            if row is None:
                return False
            purged_at = row.purged_at.replace(microsecond=0)
            cutoff = row.cutoff.replace(microsecond=0)
            conn.execute(update(access_log_anchor).where(access_log_anchor.c.id == 1).values(
                purged_at=purged_at, cutoff=cutoff,
                signature=anchor_signature(key, row.seq, row.hash, purged_at, cutoff)))
        return True

    def _trim_old_tables(self, conn: Connection, boundary: int) -> None:
        """Trim the unread indexes of earlier versions in the log's database (purge's log
        step): no person id may outlive its records there either."""
        if self._legacy_index:
            conn.execute(delete(access_log_subject).where(access_log_subject.c.seq <= boundary))
        if self._old_postings:
            conn.execute(text("DELETE FROM access_log_postings WHERE first_seq <= :b"),
                         {"b": boundary})
