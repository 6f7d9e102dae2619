"""What the access log stores: its tables, its records and the hash that chains them.

The tables of the log (``access_log``, ``access_log_anchor``) and of its derived index
(postings, runs and progress mark, kept by :mod:`idm_facade.access.audit.index`); the record
types the rest of the facade passes around (:class:`AccessRecord` in, :class:`StoredRecord`
out, :class:`VerifyResult` from verification); and the pure functions on them: the delta
encoding of a posting's seqs and the hash that chains the records.

Tamper evidence: each record stores ``prev_hash`` and ``hash = SHA-256(canonical JSON of its
fields + prev_hash)`` (:func:`record_hash`); ``idm-facade audit verify`` recomputes the chain
(:mod:`idm_facade.access.audit.verify`). :class:`_Row` prepares that JSON around seq and
prev_hash in the caller's thread, so the writer (:mod:`idm_facade.access.audit.writer`) only
chains, hashes and inserts.

Nothing here opens a connection or starts a thread, and nothing here imports another part of
the log: every other module of the package builds on this one.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import json.encoder
import os
import socket
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    DateTime,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
)

#: prev_hash of the first record of a log that was never purged.
GENESIS = "0" * 64

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
    #: HMAC-SHA256 of the row under the installation's anchor key (:func:`anchor_signature`):
    #: whoever can write the log's database but not read the facade's key cannot move the
    #: anchor forward to hide the records after it.
    Column("signature", String(64), nullable=True),
)


def anchor_signature(key: bytes, seq: int, digest: str, purged_at: datetime,
                     cutoff: datetime) -> str:
    """The signature of a purge anchor (whole seconds: both databases keep them exactly)."""
    text = f"{int(seq)}|{digest}|{purged_at:%Y-%m-%dT%H:%M:%S}|{cutoff:%Y-%m-%dT%H:%M:%S}"
    return hmac.new(key, text.encode(), hashlib.sha256).hexdigest()


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


#: WSGI environ key of the request id the HTTP server gave the request (``X-Request-Id``).
REQUEST_ID_KEY = "idm_facade.request_id"
#: WSGI environ key where the application leaves the authenticated client's name (for the
#: request log line).
CLIENT_KEY = "idm_facade.client"

_replica: str | None = None
_replica_name: str | None = None


def _forget_replica() -> None:
    global _replica
    _replica = None


def set_replica_name(name: str | None) -> None:
    """The configured name of this replica (``[audit] replica``; default the host name)."""
    global _replica_name
    _replica_name = name
    _forget_replica()


# Worked out again in a forked child, so each ``serve --workers`` worker names itself.
os.register_at_fork(after_in_child=_forget_replica)


def replica() -> str:
    """This process as access records name it: ``<replica name or host>/<pid>``."""
    global _replica
    if _replica is None:
        _replica = f"{(_replica_name or socket.gethostname())[:40]}/{os.getpid()}"
    return _replica


def source(peer: str, request_id: str | None = None) -> str:
    """An access record's ``source``: where the request came from, which replica answered
    it and the request's id (the same id as in the request log line and the
    ``X-Request-Id`` header): ``<peer> @<replica> #<request id>``, at most 100 characters."""
    text = f"{peer} @{replica()}"
    if request_id:
        text += f" #{request_id}"
    return text[:100]


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


_encode = json.encoder.encode_basestring  # what json.dumps(ensure_ascii=False) uses


def _json_list(values: list[str]) -> str:
    return "[" + ",".join(map(_encode, values)) + "]"


#: Records with at most this many subjects share their JSON fragments (:func:`_fragments`).
_MEMO_SUBJECTS = 16


@lru_cache(maxsize=4096)
def _fragments(client: str, operation: str, query: str, status: str,
               subjects: tuple, sensitive: tuple) -> tuple[str, str, str, str, str]:
    """The JSON of a record's subjects and sensitive list, and its hash payload around
    prev_hash, seq, source and time. Memoised: clients repeat requests (the same query by the
    same client), and encoding is most of what preparing a record costs. The source is left
    out of the key: it carries the request's id, different every time."""
    subjects_json = _json_list(sorted({str(s) for s in subjects}))
    sensitive_json = _json_list(sorted({str(s) for s in sensitive}))
    head = f'{{"client":{_encode(client)},"operation":{_encode(operation)},"prev_hash":'
    middle = f',"query":{_encode(query)},"sensitive":{sensitive_json},"seq":'
    after_source = f',"status":{_encode(status)},"subjects":{subjects_json},"time":'
    return subjects_json, sensitive_json, head, middle, after_source


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
        key = (self.client, self.operation, self.query, self.status,
               tuple(rec.subjects), tuple(rec.sensitive))
        fragments = _fragments(*key) if len(key[4]) <= _MEMO_SUBJECTS else \
            _fragments.__wrapped__(*key)
        self.subjects_json, self.sensitive_json, self.head, self.middle, after = fragments
        stamp = time.isoformat(timespec="microseconds")  # formatted once: a few us each
        self.tail = f',"source":{_encode(self.source)}{after}"{stamp}"}}'
        # The SQLite columns between seq and prev_hash, ready here (in the caller's thread)
        # so the single writer only chains, hashes and inserts.
        self.sqlite_columns = (stamp.replace("T", " ", 1), self.client, self.source,
                               self.operation, self.query, self.status, self.subjects_json,
                               self.sensitive_json)

    def hash(self, seq: int, prev_hash: str) -> str:
        payload = self.head + _encode(prev_hash) + self.middle + str(seq) + self.tail
        return hashlib.sha256(payload.encode("utf-8")).hexdigest()


def _stored(row: Any) -> StoredRecord:
    subjects = row.subjects if isinstance(row.subjects, list) else json.loads(row.subjects)
    sensitive = row.sensitive if isinstance(row.sensitive, list) else json.loads(row.sensitive)
    return StoredRecord(int(row.seq), row.time, row.client, row.source, row.operation,
                        row.query, row.status, list(subjects), list(sensitive), row.prev_hash,
                        row.hash)
