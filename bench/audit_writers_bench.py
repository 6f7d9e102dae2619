"""Two processes appending to one SQLite access log, as the workers of ``serve --workers 2``
do from their event loops: how long one append takes, with and without the writers' file
lock (``idm_facade.access.audit.filelock``).

Each process appends one record at a time for ``--seconds``, pausing ``--pause`` seconds
between appends (the rest of an event loop's work); a third row appends with no pause (the
log saturated). Reported per process: appends/s, median, p99, worst, and how many took over
1 ms. usage: python -m bench.audit_writers_bench [--seconds 4] [--pause 0.0005]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.datasets import machine  # noqa: E402


def _appender(url: str, seconds: float, pause: float, locked: bool, out: Any) -> None:
    from idm_facade.access.audit import AccessRecord, AuditLog
    from idm_facade.config import Config
    from store.engine import make_engine

    audit = AuditLog(make_engine(url), Config({"audit": {"db": url, "sync": "normal"}}))
    if not locked:
        audit._writers = None  # the comparison: SQLite's own busy handler only
    times = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        rec = audit.prepare(AccessRecord(client="bench", source="ldap:127.0.0.1:1",
                                         operation="bind", query="dn=cn=bench",
                                         status="success", subjects=[], sensitive=[]))
        started = time.perf_counter()
        audit.record_many([rec])
        times.append(time.perf_counter() - started)
        if pause:
            time.sleep(pause)
    audit.close()
    times.sort()
    out.put((len(times) / seconds, times[len(times) // 2], times[int(len(times) * 0.99)],
             times[-1], sum(1 for t in times if t > 0.001)))


def _create(url: str) -> None:
    """The log's tables, made once before the writers start (two processes creating them
    at once would race)."""
    from idm_facade.access.audit import AuditLog
    from idm_facade.config import Config
    from store.engine import make_engine

    AuditLog(make_engine(url), Config({"audit": {"db": url, "sync": "normal"}})).close()


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--seconds", type=float, default=4)
    parser.add_argument("--pause", type=float, default=0.0005)
    args = parser.parse_args()
    print(f"machine: {machine()}; load {os.getloadavg()[0]:.2f}; two processes, "
          f"{args.seconds:g} s per row, log in /var/tmp\n")
    print("| writers' lock | pause between appends | appends/s (each) | median | p99 | worst "
          "| appends over 1 ms |")
    print("|---|---|---|---|---|---|---|")
    for pause in (args.pause, 0.0):
        for locked in (False, True, False, True):
            folder = tempfile.mkdtemp(prefix="audit-writers-", dir="/var/tmp")
            url = f"sqlite:///{folder}/audit.db"
            _create(url)
            out: Any = mp.Queue()
            procs = [mp.Process(target=_appender, args=(url, args.seconds, pause, locked, out))
                     for _ in range(2)]
            for proc in procs:
                proc.start()
            results = [out.get() for _ in procs]
            for proc in procs:
                proc.join()
            for rate, median, p99, worst, slow in results:
                print(f"| {'yes' if locked else 'no'} | {pause * 1e3:g} ms | {rate:,.0f} | "
                      f"{median * 1e6:.0f} µs | {p99 * 1e6:.0f} µs | {worst * 1e3:.1f} ms | "
                      f"{slow} |", flush=True)


if __name__ == "__main__":
    main()
