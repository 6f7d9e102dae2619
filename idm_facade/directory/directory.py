"""The directory: the current snapshot, and keeping it current.

:class:`Directory` owns one :class:`Snapshot` at a time. Readers take ``directory.snapshot``
once per request and use only that object, so they always see one whole snapshot. A refresh
builds a new snapshot off to the side and swaps the reference (an atomic assignment).

It refreshes when the store's change log moves past the snapshot's sequence number (polled,
cheaply: one ``max(seq)`` query) and when the clock passes the next validity boundary, so a
change dated next Monday takes effect on Monday with no write. The clock is injectable.
"""

from __future__ import annotations

import gc
import logging
import threading
import time
from collections.abc import Callable
from datetime import datetime

from sqlalchemy import Engine
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from idm_facade.directory import incremental
from idm_facade.directory.entries import DEFAULT_DIRECTORY_SYSTEM, build_entries
from idm_facade.directory.load import load
from idm_facade.directory.posix import PosixNumbers, PosixRange
from idm_facade.directory.snapshot import Snapshot
from store.changelog import last_seq
from store.validity import utcnow

log = logging.getLogger(__name__)


def _settle() -> None:
    """Collect once, then move every surviving object out of the collector's sight.

    A snapshot is a million long-lived objects; without this, each full collection walks them
    all and stalls requests (and refreshes) for about a second at the largest size. The
    snapshot is acyclic, so reference counting still frees it when it is replaced.
    """
    gc.collect()
    gc.freeze()
    if _freeze_survivors not in gc.callbacks:
        gc.callbacks.append(_freeze_survivors)


def _freeze_survivors(phase: str, info: dict) -> None:
    """After every full collection, freeze what survived it.

    What the front ends build from a snapshot after it was frozen (the LDAP layout, rendered
    resources, answer caches) is long-lived too. Left in the collector's oldest generation,
    it was walked by every full collection: at the largest size under SCIM load, full
    collections took 0.1-2 s of every 10 s, holding the interpreter lock, so every request
    waited. What survives a full collection is, at that moment, reachable; freezing it costs
    nothing but this: a frozen object that later becomes part of a garbage cycle stays until the
    next full directory build unfreezes and collects everything (acyclic garbage is freed by
    reference counting as always).
    """
    if phase == "stop" and info.get("generation") == 2:
        gc.freeze()

Clock = Callable[[], datetime]


#: The steps of a snapshot build, in order (``progress`` is told each when it is done).
BUILD_STEPS = ("load the store", "build entries", "index")


def build_snapshot(engine: Engine, at: datetime,
                   directory_system: str = DEFAULT_DIRECTORY_SYSTEM,
                   numbers: PosixNumbers | None = None,
                   progress: Callable[[str], None] | None = None) -> Snapshot:
    """Load the store as of ``at`` and build a fully indexed snapshot. ``numbers``: posix
    numbers handed out before, kept as they are (None: allocate afresh, default range);
    ``progress`` hears of each of :data:`BUILD_STEPS` as it is done (a first start at XL
    takes most of a minute, and an operator should see it move)."""
    step = progress or (lambda _name: None)
    data = load(engine, at)
    step(BUILD_STEPS[0])
    entries, builder = build_entries(data, directory_system, numbers)
    step(BUILD_STEPS[1])
    snapshot = Snapshot(entries, at=at, seq=data.seq, next_boundary=data.next_boundary,
                        data=data, grants=builder.grants, posix=builder.numbers)
    step(BUILD_STEPS[2])
    return snapshot


class Directory:
    """Holds the current snapshot and refreshes it from the store."""

    def __init__(self, engine: Engine, *, clock: Clock = utcnow,
                 directory_system: str = DEFAULT_DIRECTORY_SYSTEM,
                 poll_interval: float = 0.2, posix: PosixRange | None = None,
                 progress: Callable[[str], None] | None = None) -> None:
        self.engine = engine
        self.posix = posix or PosixRange()
        self.clock = clock
        self.directory_system = directory_system
        self.poll_interval = poll_interval
        self._refresh_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.last_build_seconds = 0.0
        self.last_refresh_seconds = 0.0
        #: Wall-clock time the store was last seen to match the snapshot (``/readyz``,
        #: ``/metrics``: how stale the answers may be while the store is away).
        self.checked_at = time.time()
        #: Why the last look at the store failed (None while it answers). The last good
        #: snapshot keeps being served meanwhile.
        self.store_problem: str | None = None
        self.snapshot: Snapshot = self._build(progress)
        self.checked_at = time.time()

    def _build(self, progress: Callable[[str], None] | None = None) -> Snapshot:
        started = time.perf_counter()
        gc.unfreeze()  # let the collector see (and free) what older snapshots left behind
        # A rebuild keeps every posix number handed out so far in this process.
        previous = getattr(self, "snapshot", None)
        handed_out = previous.posix if previous is not None else None
        numbers = handed_out.child() if handed_out is not None else PosixNumbers(self.posix)
        snapshot = build_snapshot(self.engine, self.clock(), self.directory_system, numbers,
                                  progress)
        _settle()
        self.last_build_seconds = time.perf_counter() - started
        log.info("directory built: %d entries, seq %d, %.2fs", len(snapshot), snapshot.seq,
                 self.last_build_seconds)
        return snapshot

    def stale(self) -> bool:
        """Has the store changed, or a validity boundary passed, since the snapshot?"""
        current = self.snapshot
        boundary = current.next_boundary
        if boundary is not None and self.clock() >= boundary:
            return True
        with Session(self.engine) as session:
            return last_seq(session) != current.seq

    def refresh(self, force: bool = False) -> bool:
        """Rebuild and swap in a new snapshot if anything changed; True when it did."""
        with self._refresh_lock:
            if not force and not self.stale():
                return False
            if not force:
                started = time.perf_counter()
                try:
                    patched = incremental.refresh(self.engine, self.snapshot, self.clock(),
                                                  self.directory_system)
                except Exception:  # never serve a wrong patch: fall back to a full build
                    log.exception("incremental refresh failed; rebuilding fully")
                    patched = None
                if patched is not None:
                    gc.freeze()
                    self.last_refresh_seconds = time.perf_counter() - started
                    self.snapshot = patched
                    return True
            self.snapshot = self._build()
            self.last_refresh_seconds = self.last_build_seconds
            return True

    def start(self) -> None:
        """Poll for changes in a background thread until :meth:`stop`."""
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="directory-refresh",
                                        daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the background refresh."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None

    def _run(self) -> None:
        while not self._stop.wait(self.poll_interval):
            try:
                self.refresh()
            except Exception as exc:  # keep serving the last good snapshot
                problem = " ".join(str(exc).split())[:300] or type(exc).__name__
                if self.store_problem is None:  # once per outage, not every poll
                    log.error("directory refresh failed; serving the snapshot of %s: %s",
                              time.strftime("%H:%M:%S", time.localtime(self.checked_at)),
                              problem, exc_info=not isinstance(exc, DBAPIError))
                self.store_problem = problem
                continue
            self.checked_at = time.time()
            if self.store_problem is not None:
                log.info("directory refresh works again (seq %d)", self.snapshot.seq)
                self.store_problem = None
