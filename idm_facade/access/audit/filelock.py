"""One writer at a time between the processes that append to one SQLite log.

Every worker of ``serve --workers N`` appends to the same log from its event loop. SQLite
lets one writer in at a time and makes the others wait in its busy handler, which sleeps:
1 ms on the first conflict, then 2, 5, 10 ms and more. Those sleeps happen in the event loop,
so every LDAP and HTTP client of that worker waits with them. Measured with two processes
appending one record at a time with 0.5 ms of other work between appends: 6-7 % of appends
took over 1 ms (p99 1.3 ms); appending as fast as they could, one process starved the
other for up to 0.7 s. An append holds the write lock for some tens of microseconds, so a
writer that waits by polling a file lock at microsecond steps gets in almost at once: p99
0.34 ms, as with one process (``BENCHMARKS.md``, "Access log").

The lock is ``flock`` on a file beside the log (``<log>.lock``), taken around each append.
The waiting is bounded by ``[audit] write_timeout`` like SQLite's own, after which the
append fails (and its request with it: no record, no answer). A writer that cannot create the
lock file (a read-only directory) appends without it and SQLite's own locking still keeps
the chain whole; the lock only changes how writers wait, never what they write.
"""

from __future__ import annotations

import fcntl
import logging
import os
import time
from pathlib import Path

log = logging.getLogger(__name__)

#: The first pause between attempts, and the longest.
FIRST_PAUSE = 10e-6
LONGEST_PAUSE = 1e-3


class LockTimeout(TimeoutError):
    """Another process held the log's write lock longer than ``write_timeout``."""


class FileLock:
    """An exclusive lock on ``path`` between processes (and between separate opens)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None
        self._unusable = False

    def _open(self) -> int | None:
        if self._fd is None and not self._unusable:
            try:
                self._fd = os.open(self.path, os.O_CREAT | os.O_RDWR | os.O_CLOEXEC, 0o600)
            except OSError as exc:
                self._unusable = True
                log.warning("access log: cannot open the writers' lock file %s (%s); "
                            "appending without it", self.path, exc)
        return self._fd

    def acquire(self, timeout: float) -> bool:
        """Take the lock, waiting at most ``timeout`` seconds (:class:`LockTimeout`);
        False when there is no lock file to take (nothing to release)."""
        fd = self._open()
        if fd is None:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            pass
        deadline = time.monotonic() + timeout
        pause = FIRST_PAUSE
        while True:
            time.sleep(pause)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return True
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise LockTimeout(f"another process held {self.path} for more than "
                                      f"{timeout:g} s") from None
                pause = min(pause * 2, LONGEST_PAUSE)

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
