"""Throughput of the access log: group commit versus one transaction per record.

N threads each call :meth:`AuditLog.record` in a loop (every call returns only once its
record is durable: SQLite WAL with ``synchronous=FULL``). With group commit a caller that finds
no write in progress writes everything queued in one transaction while the others wait; without
it (``group_commit=False``) every record is its own transaction and fsync. Prints a Markdown
table for BENCHMARKS.md.

    .venv/bin/python -m bench.audit_bench [--records 2000] [--threads 1,4,8,32] [--dir DIR]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import threading
import time
from pathlib import Path

from idm_facade.audit import AccessRecord, AuditLog
from idm_facade.config import Config
from store.engine import make_engine


def run(directory: Path, threads: int, records: int, group: bool) -> dict:
    """Write ``records`` records from ``threads`` threads; rate and latencies."""
    path = directory / f"audit-{threads}-{int(group)}.db"
    for suffix in ("", "-wal", "-shm"):
        Path(str(path) + suffix).unlink(missing_ok=True)
    url = f"sqlite:///{path}"
    audit = AuditLog(make_engine(url), Config({"audit": {"db": url}}), group_commit=group)
    per_thread = max(1, records // threads)
    latencies: list[float] = []
    lock = threading.Lock()

    def work(t: int) -> None:
        mine = []
        for i in range(per_thread):
            started = time.perf_counter()
            audit.record(AccessRecord("bench", f"10.0.0.{t}", "search",
                                      f"(&(objectClass=person)(uid=u{t}-{i}))", "ok",
                                      [f"person-{t}-{i}", f"person-{i}"], []))
            mine.append(time.perf_counter() - started)
        with lock:
            latencies.extend(mine)

    workers = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
    started = time.perf_counter()
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    elapsed = time.perf_counter() - started
    result = audit.verify()
    assert result.ok and result.checked == per_thread * threads, result
    audit.close()
    latencies.sort()
    return {"rate": per_thread * threads / elapsed, "batches": audit.batches,
            "written": audit.written,
            "median_ms": statistics.median(latencies) * 1000,
            "p99_ms": latencies[int(len(latencies) * 0.99) - 1] * 1000}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--records", type=int, default=2000)
    parser.add_argument("--threads", default="1,4,8,32")
    parser.add_argument("--dir", default=None, help="Where the SQLite files go (a real disk).")
    args = parser.parse_args()
    cpu = next((line.split(":", 1)[1].strip() for line in
                Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    print(f"{os.cpu_count()} cores ({cpu}), Python {platform.python_version()}, "
          f"{args.records} records per run")
    print()
    print("| threads | mode | records/s | records per commit | latency median | p99 |")
    print("|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        for threads in (int(t) for t in args.threads.split(",")):
            for group in (False, True):
                r = run(Path(tmp), threads, args.records, group)
                mode = "group commit" if group else "one transaction per record"
                print(f"| {threads} | {mode} | {r['rate']:,.0f} | "
                      f"{r['written'] / r['batches']:.1f} | {r['median_ms']:.2f} ms | "
                      f"{r['p99_ms']:.2f} ms |", flush=True)


if __name__ == "__main__":
    main()
