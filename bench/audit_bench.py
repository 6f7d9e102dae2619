"""Throughput of the access log: group commit versus one transaction per record.

N threads each call :meth:`AuditLog.record` in a loop (every call returns only once its
record is durable: SQLite WAL with ``synchronous=FULL``). With group commit a caller that finds
no write in progress writes everything queued in one transaction while the others wait; without
it (``group_commit=False``) every record is its own transaction and fsync. Prints a Markdown
table for BENCHMARKS.md.

    .venv/bin/python -m bench.audit_bench [--records 2000] [--threads 1,4,8,32] [--dir DIR]

``--subjects 0,1,100`` measures instead what a record's subjects cost: one caller writes
records in batches of 4 (:meth:`AuditLog.record_many`, one commit each) with that many subjects
per record (consecutive ids of a 48,000-person pool, like pages of a sync engine's full pull),
with ``[audit] sync`` full and normal; then, when the log has a derived subject index, the
cost of :meth:`AuditLog.index_subjects` per (subject, record) pair.

    .venv/bin/python -m bench.audit_bench --subjects 0,1,100 [--records 2000] [--dir DIR]
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

from idm_facade.access.audit import AccessRecord, AuditLog
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


POOL = [f"{i:08x}-7e57-4d00-9a00-{i * 2654435761 % 2**48:012x}" for i in range(48_000)]


def subjects_cost(directory: Path, subjects: int, sync: str, records: int,
                  batch: int = 4) -> dict:
    """µs per record written in batches of ``batch`` with ``subjects`` subjects each; then
    µs per (subject, record) pair for indexing them (None without a derived index)."""
    path = directory / f"subjects-{subjects}-{sync}.db"
    for name in (path.name, path.stem + "-index.db"):
        for suffix in ("", "-wal", "-shm"):
            Path(str(path.with_name(name)) + suffix).unlink(missing_ok=True)
    url = f"sqlite:///{path}"
    audit = AuditLog(make_engine(url), Config({"audit": {"db": url, "sync": sync}}))
    cursor = 0
    started = time.perf_counter()
    for b in range(records // batch):
        recs = []
        for i in range(batch):
            chosen = [POOL[(cursor + k) % len(POOL)] for k in range(subjects)]
            cursor += subjects
            recs.append(AccessRecord("bench", "10.0.0.1", "scim.GET /Users",
                                     f"startIndex={b * batch + i}", "200", chosen, []))
        audit.record_many(recs)
    write = (time.perf_counter() - started) / (records // batch * batch)
    index, runs, lock_ms, log_lock_ms = None, 0, 0.0, None
    if hasattr(audit, "index_subjects"):
        started = time.perf_counter()
        audit.index_subjects()
        pairs = records // batch * batch * subjects
        index = (time.perf_counter() - started) / pairs if pairs else None
        runs, lock_ms = audit.index_runs, audit.index_lock_max * 1000
        # The LOG's write lock (what record writers wait for): the same as the index's
        # before the index had its own file.
        log_lock_ms = getattr(audit, "log_lock_max", audit.index_lock_max) * 1000
    result = audit.verify()
    assert result.ok, result
    audit.close()
    return {"write_us": write * 1e6, "index_us": None if index is None else index * 1e6,
            "runs": runs, "lock_ms": lock_ms, "log_lock_ms": log_lock_ms}


def main_subjects(args: argparse.Namespace) -> None:
    print("| subjects per record | sync | µs per record (batch 4) | indexing µs per pair "
          "| indexing runs | longest index lock hold | longest log lock hold by indexing |")
    print("|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        for subjects in (int(s) for s in args.subjects.split(",")):
            for sync in ("full", "normal"):
                r = subjects_cost(Path(tmp), subjects, sync, args.records)
                index = "-" if r["index_us"] is None else f"{r['index_us']:.2f}"
                log_lock = "-" if r["log_lock_ms"] is None else f"{r['log_lock_ms']:.1f} ms"
                print(f"| {subjects} | {sync} | {r['write_us']:,.0f} | {index} | {r['runs']} | "
                      f"{r['lock_ms']:.0f} ms | {log_lock} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--records", type=int, default=2000)
    parser.add_argument("--threads", default="1,4,8,32")
    parser.add_argument("--dir", default=None, help="Where the SQLite files go (a real disk).")
    parser.add_argument("--subjects", default=None,
                        help="Subjects per record, e.g. 0,1,100: measure what subjects cost.")
    args = parser.parse_args()
    cpu = next((line.split(":", 1)[1].strip() for line in
                Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    print(f"{os.cpu_count()} cores ({cpu}), Python {platform.python_version()}, "
          f"{args.records} records per run")
    print()
    if args.subjects:
        main_subjects(args)
        return
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
