"""The access log: one durable, hash-chained record of every disclosure.

Every SCIM request, LDAP bind and search and role lookup calls :meth:`AuditLog.record` before
its answer leaves; ``record`` returns only when the record is committed to the database and
raises :class:`AuditUnavailable` when it cannot be, so the front end fails the request instead
of disclosing unlogged ("no record, no answer").

:class:`AuditLog` is composed of parts with one job each, one module per part:

- :mod:`~idm_facade.access.audit.writer` (:class:`WriterMixin`): appending records, group
  commit, the flusher and syncer threads, and what ``[audit] sync`` promises;
- :mod:`~idm_facade.access.audit.index` (:class:`IndexMixin`): the derived index by subject,
  client and time, its background thread, its trimming, and the queries it serves;
- :mod:`~idm_facade.access.audit.verify` (:class:`VerifyMixin`): recomputing the hash chain
  and checking the index against it;
- :mod:`~idm_facade.access.audit.retention` (:class:`RetentionMixin`): purging old records
  behind an anchor that keeps the chain verifiable.

They build on :mod:`~idm_facade.access.audit.record` (tables, record types, the hash),
:mod:`~idm_facade.access.audit.settings` (the ``[audit]`` table, where the log and its index
live) and :mod:`~idm_facade.access.audit.db` (connections, locks and marks the parts share).
Each module's docstring explains its part.

The parts share their state on ``self``: each mixin class lists at its top, as annotations,
the attributes and methods it needs from the others. This module sets the shared ones
(engine, dialect, settings, the lock) in :meth:`AuditLog.__init__`, has each part set up
its own, creates the tables, and stops everything in :meth:`AuditLog.close`.
"""

from __future__ import annotations

import logging
import threading
from time import monotonic

from sqlalchemy import Engine, inspect, text

from idm_facade.access.audit.index import IndexMixin
from idm_facade.access.audit.record import _Row as _Row  # re-exported: tests import it here
from idm_facade.access.audit.record import index_metadata, metadata, set_replica_name
from idm_facade.access.audit.record import record_hash as record_hash  # re-exported: tests
from idm_facade.access.audit.retention import RetentionMixin
from idm_facade.access.audit.settings import AuditSettings, _engine_for
from idm_facade.access.audit.verify import VerifyMixin
from idm_facade.access.audit.writer import WriterMixin
from idm_facade.config import Config

log = logging.getLogger(__name__)


class AuditLog(WriterMixin, IndexMixin, VerifyMixin, RetentionMixin):
    """The access log of one facade process (or CLI command)."""

    def __init__(self, engine: Engine, config: Config | None = None, *,
                 max_batch: int = 5000, timeout: float | None = None,
                 group_commit: bool = True, index_interval: float | None = None,
                 index_records: int | None = None) -> None:
        self.config = config or Config()
        if config is not None:
            set_replica_name(config.get("audit", "replica"))
        settings = AuditSettings.read(self.config, engine, timeout=timeout,
                                      index_interval=index_interval,
                                      index_records=index_records)
        self.sync = settings.sync
        self.sync_interval = settings.sync_interval
        self.timeout = settings.timeout
        self.write_timeout = settings.write_timeout
        self.retention = settings.retention
        self.settings = settings
        self.engine = _engine_for(settings.url, self.sync)
        self.dialect = self.engine.dialect.name
        self._lock = threading.Lock()
        self._init_writer(settings.url, max_batch if group_commit else 1)
        self._init_index(settings)
        self._open_tables()

    def _open_tables(self) -> None:
        """Create the log's and the index's tables where missing, reset an index of an
        earlier version, and note the unread indexes of earlier versions purge trims."""
        try:
            metadata.create_all(self.engine)
        except Exception as exc:  # noqa: BLE001 - surfaced on first record instead
            log.error("access log tables could not be created: %s", exc)
        try:
            index_metadata.create_all(self.index_engine)
        except Exception as exc:  # noqa: BLE001 - readers scan the records instead
            log.error("access log index tables could not be created: %s", exc)
        try:
            inspector = inspect(self.engine)
            tables = set(inspector.get_table_names())
            if "access_log_anchor" in tables and "signature" not in {
                    c["name"] for c in inspector.get_columns("access_log_anchor")}:
                with self.engine.begin() as conn:  # a log of a version before signed anchors
                    conn.execute(text("ALTER TABLE access_log_anchor "
                                      "ADD COLUMN signature VARCHAR(64)"))
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
        try:
            self._check_continuity()
        except Exception as exc:  # noqa: BLE001 - an unreachable log fails on first record
            log.error("access log: could not compare the log with its index: %s", exc)

    @property
    def problem(self) -> str | None:
        """Why the log refuses records (fail closed), or None while it takes them."""
        return self._sync_failed

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
        self.note_reached()
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
        if self._writers is not None:
            self._writers.close()
        self.engine.dispose()
        if self._split:
            self.index_engine.dispose()
