"""Verifying the access log: recompute the hash chain and check the derived index against it.

Tamper evidence: each record stores ``prev_hash`` and ``hash = SHA-256(canonical JSON of its
fields + prev_hash)`` (:func:`~idm_facade.access.audit.record.record_hash`); ``idm-facade
audit verify`` recomputes the chain from the purge anchor (or the start), so a purge
(:mod:`idm_facade.access.audit.retention`) leaves the remaining chain verifiable. The index
(:mod:`idm_facade.access.audit.index`) is brought up to date first; its postings must hold
exactly the (subject, seq) and (client, seq) pairs of the records up to its progress mark,
and its runs must hold each such record's seq and time.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable, Iterator
from typing import Any

from sqlalchemy import Table, select
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DatabaseError

from idm_facade.access.audit.db import DatabaseMixin
from idm_facade.access.audit.index import lost_records
from idm_facade.access.audit.record import (
    GENESIS,
    StoredRecord,
    VerifyResult,
    _stored,
    access_log,
    access_log_anchor,
    access_log_client_postings,
    access_log_postings,
    access_log_runs,
    anchor_signature,
    decode_seqs,
    record_hash,
)
from idm_facade.access.audit.settings import AuditSettings, anchor_key


class VerifyMixin(DatabaseMixin):
    """:meth:`verify`, reading the log and the index through DatabaseMixin's snapshots."""

    # Provided by IndexMixin (index.py): brings the index up to date, never raises.
    _catch_up: Callable[[], None]
    settings: AuditSettings

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
        # One function of about 90 lines, on purpose: the walk checks the chain and the index
        # in a single pass, and the running state it shares (the previous record, the pairs of
        # postings and runs not yet matched) is what makes each check meaningful; split up,
        # that state would have to travel between the pieces.
        try:
            return self._verify()
        except DatabaseError as exc:
            reason = getattr(exc, "orig", None) or exc
            return VerifyResult(False, 0, None, None, GENESIS, None, None,
                                f"the log database cannot be read: {reason}")

    def _anchor_problem(self, anchor: Any) -> str | None:
        """Why the purge anchor cannot be trusted, or None. An anchor says "the records up to
        here were purged": one written by anyone but a purge with this installation's key
        could hide the records after a real purge."""
        key = anchor_key(self.settings, create=False)
        if key is None:
            return (f"the purge anchor (seq {anchor.seq}) cannot be checked: no anchor key "
                    f"([audit] anchor_key, or the key file the purge made)")
        if not anchor.signature:
            return (f"the purge anchor (seq {anchor.seq}) is not signed: written by hand, or "
                    f"by a version before signed anchors (check it, then `idm-facade audit "
                    f"sign-anchor`)")
        expected = anchor_signature(key, anchor.seq, anchor.hash, anchor.purged_at,
                                    anchor.cutoff)
        if not hmac.compare_digest(expected, anchor.signature):
            return f"the purge anchor (seq {anchor.seq}) is forged: its signature is wrong"
        return None

    def _verify(self) -> VerifyResult:
        """:meth:`verify` on a readable database."""
        if self._split:
            with self.engine.connect() as conn:
                tail = self._tail(conn)[0]
            with self.index_engine.connect() as conn:
                mark = max(self._mark(conn), self._seen(conn))
            if mark > tail:
                return VerifyResult(False, 0, None, tail or None, GENESIS, None, tail + 1,
                                    lost_records(mark, tail))
        self._catch_up()
        with self._snapshots() as (conn, index):
            anchor = conn.execute(select(access_log_anchor)
                                  .where(access_log_anchor.c.id == 1)).first()
            prev_seq, prev_hash = (int(anchor.seq), anchor.hash) if anchor else (0, GENESIS)
            anchor_seq = prev_seq if anchor else None
            if anchor is not None:
                problem = self._anchor_problem(anchor)
                if problem:
                    return VerifyResult(False, 0, None, None, GENESIS, anchor_seq,
                                        anchor_seq, problem)
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
                return (_load_postings(index, floor, access_log_postings, "subject", pending,
                                       above, upto)
                        or _load_postings(index, floor, access_log_client_postings, "client",
                                          clients, above, upto))

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
                orphan = min((*pending, *clients))
                which = "subject" if orphan in pending else "client"
                return fail(orphan, f"{which} index names record {orphan}, which does not "
                                    f"exist")
        return VerifyResult(True, checked, first, prev_seq or None, prev_hash, anchor_seq)


def _load_postings(index: Connection, floor: int, table: Table, key: str,
                   pending: dict[int, set[str]], above: int | None,
                   upto: int | None) -> tuple[int, str] | None:
    """Add the (``key`` value, seq) pairs of ``table``'s rows with ``above < first_seq <=
    upto`` to ``pending`` ({seq: values}), skipping seqs at or below ``floor`` (purged
    records); ``(seq, message)`` of the first malformed row or repeated pair, else None."""
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
