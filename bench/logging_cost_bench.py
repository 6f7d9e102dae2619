"""What the access log costs end to end: SCIM throughput with and without it.

The same facade (``idm_facade.runtime.serve.build_facade`` + ``listen``: Flask in twisted.web's
WSGIResource on a 32-thread pool, one process) is served twice on the same demo store: once
with the real :class:`~idm_facade.access.audit.AuditLog` (its default location, durable commit per
batch) and once with :class:`NullSink`, a do-nothing stand-in that exists only in this
benchmark (the product has no way to turn the log off). wrk on loopback requests
``GET /Users?filter=userName eq "..."``; the hello-world Flask app served the same way gives
the ceiling.

    .venv/bin/python -m bench.logging_cost_bench [--size M] [--duration 8] [--connections 8,32]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

from bench.scim_bench import HELLO, PY, ensure_db, ensure_wrk, machine, q, start, stop, wrk


class NullSink:
    """Accepts every record and keeps nothing: the "without the log" side, bench only."""

    def record(self, rec: object) -> None:
        """Drop the record."""

    def close(self) -> None:
        """Nothing to close."""


def serve(db: str, sink: str) -> None:
    """Child process: serve SCIM on an OS-chosen port, with the real log or the null sink."""
    from twisted.internet import reactor

    from idm_facade.runtime.serve import build_facade, listen

    facade = build_facade(db)
    if sink == "none":
        facade.audit.close()
        facade.audit = NullSink()  # type: ignore[assignment]
    listening = listen(reactor, facade, "127.0.0.1", 0)
    print(f"SCIM http://127.0.0.1:{listening.http_port}/scim/v2", flush=True)
    reactor.addSystemEventTrigger("after", "shutdown", facade.audit.close)
    reactor.run()  # type: ignore[attr-defined]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="M", choices=["S", "M", "L", "XL"])
    parser.add_argument("--db", default=None, help="SQLite file (default: a temp file per size)")
    parser.add_argument("--duration", type=int, default=8)
    parser.add_argument("--connections", default="8,32")
    parser.add_argument("--serve", choices=["log", "none"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    path = Path(args.db or Path(tempfile.gettempdir()) / f"idm-bench-{args.size}.db")
    if args.serve:
        serve(f"sqlite:///{path}", args.serve)
        return
    if ensure_wrk() is None:
        print("wrk is not installed and cannot be installed here: skipping")
        return
    url = ensure_db(args.size, path)
    from idm_facade.access.audit import AuditLog
    from idm_facade.access.clients import ClientRegistry
    from idm_facade.config import Config
    from idm_facade.directory import Directory
    from store.engine import make_engine

    engine = make_engine(url)
    registry = ClientRegistry(engine, Config())
    name = f"bench-{os.getpid()}"
    token = registry.add(name, "scim", "default")
    snap = Directory(engine).snapshot
    entries = [e for e in snap.entries if e.kind == "account" and e.first("userName")]
    user = entries[len(entries) // 2]
    user_name = user.first("userName")
    audit = AuditLog(engine)
    before = audit.count()
    connections = [int(c) for c in args.connections.split(",")]
    target = "/Users?filter=" + q(f'userName eq "{user_name}"')
    results: dict[tuple[str, int], tuple[float, str]] = {}
    try:
        hello, hello_url = start([PY, "-c", HELLO, "32"], r"HELLO (\S+)")
        try:
            for c in connections:
                wrk(hello_url, None, 2, c)
                results[("hello", c)] = wrk(hello_url, None, args.duration, c)
        finally:
            stop(hello)
        for sink in ("log", "none"):
            server, base = start([PY, "-m", "bench.logging_cost_bench", "--serve", sink,
                                  "--db", str(path)], r"SCIM (\S+)")
            try:
                for c in connections:
                    wrk(base + target, token, 2, c)  # warm up
                    results[(sink, c)] = wrk(base + target, token, args.duration, c)
                    print(f"{sink} c={c}: {results[(sink, c)][0]:.0f} req/s", flush=True)
            finally:
                stop(server)
        written = audit.count() - before
        assert audit.verify().ok
    finally:
        registry.revoke(name)
        audit.close()
        engine.dispose()
    print()
    print(f"Machine: {machine()}. Demo size {args.size}; wrk -t2 -d{args.duration}s; "
          f"{written:,} access-log records written and verified.")
    print()
    print("| connections | hello-world Flask | userName eq, no log | userName eq, access log "
          "| cost of the log |")
    print("|---|---|---|---|---|")
    for c in connections:
        hello_rps = results[("hello", c)][0]
        none_rps, log_rps = results[("none", c)][0], results[("log", c)][0]
        print(f"| {c} | {hello_rps:,.0f} req/s | {none_rps:,.0f} req/s "
              f"({none_rps / hello_rps:.0%}) | {log_rps:,.0f} req/s ({log_rps / hello_rps:.0%}) "
              f"| {1 - log_rps / none_rps:.0%} of the throughput |")


if __name__ == "__main__":
    sys.exit(main())
