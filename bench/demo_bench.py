"""Benchmark: demo generation and import into SQLite and PostgreSQL, with peak memory.

Run ``.venv/bin/python -m bench.demo_bench`` (sizes M and L by default, ``--sizes M L XL`` for
more; ``--update`` rewrites the "Demo data generation and import" section of BENCHMARKS.md).

Each size runs in a fresh child process so ``ru_maxrss`` (the peak resident set size, which
only ever grows) belongs to that size alone. Times are wall-clock:

* generate - ``store.demo.generate`` building the exchange document in memory;
* import - ``store.exchange.import_document``: validation, bulk inserts, commit, into a new
  SQLite file (WAL, as the engine configures it) and a new PostgreSQL database on a throwaway
  local server (``tests.pg.temporary_postgres``, fsync off);
* export - ``export_document`` + canonical JSON text from the SQLite store.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import subprocess
import sys
import tempfile
import textwrap
import time
from contextlib import ExitStack
from datetime import datetime
from pathlib import Path

SECTION = "Demo data generation and import"
BENCHMARKS = Path(__file__).resolve().parent.parent / "BENCHMARKS.md"


def run_one(size: str, seed: int, pg_admin_url: str | None) -> dict:
    """Measure one size in this process; returns the figures as a dict."""
    from store import demo, exchange
    from store.engine import make_engine

    result: dict = {"size": size}
    started = time.perf_counter()
    doc = demo.generate(size, seed=seed, reference=datetime(2025, 3, 15))
    result["generate_s"] = time.perf_counter() - started
    counts = demo.counts(doc)
    result["persons"] = counts["persons"]
    result["org_units"] = counts["org_units"]
    links = sum(len(obj.get(key, [])) for table in ("managers", "accounts", "kles", "role_groups",
                                                   "unit_role_assignments", "job_roles")
                for obj in doc[table]
                for key in ("responsibility_ids", "engagement_ids", "aspect_ids", "job_role_ids",
                            "title_ids", "excepted_account_ids", "excepted_unit_ids",
                            "system_roles"))
    result["rows"] = sum(counts.values()) + links
    with tempfile.TemporaryDirectory() as tmp:
        engine = make_engine(f"sqlite:///{tmp}/bench.db")
        started = time.perf_counter()
        exchange.import_document(engine, doc, actor="bench")
        result["import_sqlite_s"] = time.perf_counter() - started
        started = time.perf_counter()
        text = exchange.dumps(exchange.export_document(engine))
        result["export_s"] = time.perf_counter() - started
        result["json_mb"] = len(text.encode()) / 1e6
        engine.dispose()
    if pg_admin_url:
        from tests.pg import create_database

        url = create_database(pg_admin_url, f"bench_{size.lower()}_{os.getpid()}")
        engine = make_engine(url)
        started = time.perf_counter()
        exchange.import_document(engine, doc, actor="bench")
        result["import_pg_s"] = time.perf_counter() - started
        engine.dispose()
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return result


def machine() -> list[str]:
    """Lines describing this machine: cores, CPU model, memory, Python."""
    cpu = "unknown"
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
        found = re.search(r"^model name\s*:\s*(.+)$", cpuinfo, re.MULTILINE)
        cpu = found.group(1).strip() if found else cpu
    except OSError:
        pass
    ram = "unknown"
    try:
        meminfo = Path("/proc/meminfo").read_text()
        found = re.search(r"^MemTotal:\s*(\d+) kB", meminfo, re.MULTILINE)
        ram = f"{int(found.group(1)) / 1024 / 1024:.1f} GiB" if found else ram
    except OSError:
        pass
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    return [f"- nproc: {os.cpu_count()}", f"- CPU: {cpu}", f"- RAM: {ram}",
            f"- load average when the run ended: {load} (other jobs share this machine, so "
            "times are noisy)",
            f"- Python: {platform.python_version()} ({platform.python_implementation()}), "
            f"{platform.system()} {platform.release()}"]


def _postgres_version(url: str) -> str:
    import psycopg

    with psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://")) as conn:
        row = conn.execute("SHOW server_version").fetchone()
    return f"server {row[0]}" if row else "server version unknown"


def table(results: list[dict]) -> list[str]:
    """The results as a Markdown table."""
    lines = ["| size | persons | org units | rows (incl. links) | generate | import SQLite "
             "| import PostgreSQL | export (SQLite) | JSON | peak RSS |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        pg = f"{r['import_pg_s']:.1f} s" if "import_pg_s" in r else "n/a"
        lines.append(
            f"| {r['size']} | {r['persons']:,} | {r['org_units']:,} | {r['rows']:,} "
            f"| {r['generate_s']:.1f} s | {r['import_sqlite_s']:.1f} s | {pg} "
            f"| {r['export_s']:.1f} s | {r['json_mb']:.0f} MB | {r['peak_rss_mb']:.0f} MB |")
    return lines


def section(results: list[dict], pg_note: str) -> str:
    """The BENCHMARKS.md section text."""
    intro = textwrap.fill(
        "`.venv/bin/python -m bench.demo_bench --sizes M L XL` (seed 1, reference date "
        "2025-03-15). Each size in its own process; generate = building the exchange document "
        "in memory; import = validation + bulk inserts + commit into an empty store; export = "
        "export + canonical JSON text; peak RSS = `ru_maxrss` of that process (generation, both "
        f"imports and the export together). {pg_note}", width=96)
    return "\n".join([
        f"## {SECTION}", "", intro, "",
        *table(results), "",
        "Machine:", "", *machine(), "",
    ])


def update_benchmarks(text: str) -> None:
    """Replace (or append) this benchmark's section of BENCHMARKS.md, leaving others alone."""
    current = BENCHMARKS.read_text(encoding="utf-8") if BENCHMARKS.exists() else \
        "# Benchmarks\n\n"
    pattern = re.compile(rf"^## {re.escape(SECTION)}\n.*?(?=^## |\Z)", re.MULTILINE | re.DOTALL)
    if pattern.search(current):
        updated = pattern.sub(lambda _m: text + "\n", current, count=1)
    else:
        updated = current.rstrip("\n") + "\n\n" + text
    BENCHMARKS.write_text(updated.rstrip("\n") + "\n", encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=["M", "L"])
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--no-postgres", action="store_true")
    parser.add_argument("--repeat", type=int, default=1,
                        help="runs per size; the best time of each figure is reported")
    parser.add_argument("--update", action="store_true",
                        help=f"rewrite the '{SECTION}' section of BENCHMARKS.md")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    parser.add_argument("--pg", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_one(args.one, args.seed, args.pg)))
        return
    results = []
    with ExitStack() as stack:
        pg_url = None
        pg_note = "PostgreSQL: not measured (--no-postgres)."
        if not args.no_postgres:
            from tests.pg import PostgresUnavailable, temporary_postgres

            try:
                pg_url = stack.enter_context(temporary_postgres())
                pg_note = ("PostgreSQL: local throwaway server (`tests.pg`, fsync off), "
                           f"{_postgres_version(pg_url)}.")
            except PostgresUnavailable as exc:
                pg_note = f"PostgreSQL: not measured ({exc})."
        for size in args.sizes:
            runs = []
            for _ in range(args.repeat):
                command = [sys.executable, "-m", "bench.demo_bench", "--one", size,
                           "--seed", str(args.seed)]
                if pg_url:
                    command += ["--pg", pg_url]
                done = subprocess.run(command, capture_output=True, text=True, check=True)
                runs.append(json.loads(done.stdout.strip().splitlines()[-1]))
            # Best of the runs per figure: on a shared machine the minimum is the least noisy.
            results.append({key: min(run[key] for run in runs) if key.endswith("_s")
                            else runs[0][key] for key in runs[0]})
            print(f"{size}: done", file=sys.stderr)
    if args.repeat > 1:
        pg_note += f" Times are the best of {args.repeat} runs."
    text = section(results, pg_note)
    print(text)
    if args.update:
        update_benchmarks(text)


if __name__ == "__main__":
    main()
