"""Writers in several processes (``serve --workers N``) take turns on one SQLite log through
the writers' file lock (idm_facade.access.audit.filelock): an append waits while another
process holds it, gives up after ``[audit] write_timeout`` (the request then fails: no
record, no answer), and the chain stays whole either way.

The other writer here is a real second process holding the lock, as a worker in the middle
of its append would.
"""

from __future__ import annotations

import stat
import subprocess
import sys
from pathlib import Path

import pytest

from idm_facade.access.audit import AccessRecord, AuditLog, AuditUnavailable
from idm_facade.config import Config
from store.engine import make_engine

#: Holds the lock on argv[1] until stdin closes, touching argv[2] just before it lets go.
HOLDER = """
import fcntl, os, sys
fd = os.open(sys.argv[1], os.O_RDWR)
fcntl.flock(fd, fcntl.LOCK_EX)
print("held", flush=True)
sys.stdin.read()
open(sys.argv[2], "w").close()
fcntl.flock(fd, fcntl.LOCK_UN)
"""


def _rec(i: int) -> AccessRecord:
    return AccessRecord("crm", "127.0.0.1:5000", "search", f"q-{i}", "ok", [f"p{i}"], [])


def _log(tmp_path: Path, timeout: float) -> AuditLog:
    url = f"sqlite:///{tmp_path}/audit.db"
    return AuditLog(make_engine(url), Config({"audit": {"db": url,
                                                        "write_timeout": timeout}}))


def _hold(lock: Path, marker: Path) -> subprocess.Popen:
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(lock), str(marker)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert holder.stdout is not None and holder.stdout.readline() == "held\n"
    return holder


def test_an_append_waits_for_the_other_process_then_goes_in(tmp_path: Path) -> None:
    audit = _log(tmp_path, 30)
    try:
        audit.record(_rec(1))
        lock = tmp_path / "audit.db.lock"
        assert lock.exists() and stat.S_IMODE(lock.stat().st_mode) == 0o600
        released = tmp_path / "released"
        holder = _hold(lock, released)
        assert holder.stdin is not None
        holder.stdin.close()  # it lets go a moment after this; the append must wait for it
        audit.record(_rec(2))
        assert released.exists(), "the append went in while the other process held the lock"
        holder.wait(timeout=30)
        result = audit.verify()
        assert result.ok and result.checked == 2
    finally:
        audit.close()


def test_an_append_gives_up_after_write_timeout_and_loses_nothing(tmp_path: Path) -> None:
    audit = _log(tmp_path, 0.3)
    holder = None
    try:
        audit.record(_rec(1))
        holder = _hold(tmp_path / "audit.db.lock", tmp_path / "released")
        with pytest.raises(AuditUnavailable, match="held .* for more than 0.3 s"):
            audit.record(_rec(2))
        assert holder.stdin is not None
        holder.stdin.close()
        holder.wait(timeout=30)
        holder = None
        audit.record(_rec(3))  # the log goes on once the other writer is done
        result = audit.verify()
        assert result.ok and result.checked == 2
    finally:
        if holder is not None:
            holder.kill()
        audit.close()

