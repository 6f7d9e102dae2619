"""Demo stores for benchmarks, built once and kept under ``var/bench/`` for reuse.

Each size lives in its own SQLite file; building XL takes a while, so a file that already
holds the size's data is reused.
"""

from __future__ import annotations

from pathlib import Path

from store.engine import make_engine

BENCH_DIR = Path("var/bench")


def demo_store(size: str, seed: int = 1) -> str:
    """URL of a SQLite store holding the demo municipality of ``size`` (built if missing)."""
    from store.demo import generate
    from store.exchange import import_document

    BENCH_DIR.mkdir(parents=True, exist_ok=True)
    path = BENCH_DIR / f"demo-{size}-{seed}.db"
    url = f"sqlite:///{path}"
    marker = path.with_suffix(".ok")
    if marker.exists():
        from store.engine import missing_columns

        engine = make_engine(url, create=False)
        outdated = bool(missing_columns(engine))
        engine.dispose()
        if outdated:  # made by an earlier version of the store: build it again
            marker.unlink()
    if not marker.exists():
        path.unlink(missing_ok=True)
        engine = make_engine(url)
        import_document(engine, generate(size, seed=seed), actor="bench")
        engine.dispose()
        marker.write_text("ok\n")
    return url


def machine() -> str:
    """One line describing this machine, for BENCHMARKS.md."""
    import os
    import platform

    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = ""
    try:
        kb = int(Path("/proc/meminfo").read_text().split()[1])
        mem = f", {kb / 1024 / 1024:.0f} GiB RAM"
    except (OSError, ValueError, IndexError):
        pass
    return f"{os.cpu_count()} cores ({cpu}){mem}, Python {platform.python_version()}"
