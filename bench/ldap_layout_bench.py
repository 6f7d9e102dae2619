"""LDAP: how long the DIT layout (every DN of a snapshot) stalls the reactor, at XL.

The layout is derived from a directory snapshot. This script measures what a client sees
when a new snapshot appears:

- in-process: the time ``dit.build_layout`` takes for the XL snapshot;
- over the wire, against ``idm-facade serve`` on a copy of the XL demo store: the first
  point search after start, steady point-search latency, and, after a change is written to
  the store, the worst point-search latency on one connection (searching back to back) from
  the write until 2 s after the change became visible. When the layout is built inside the
  reactor, that worst case is the rebuild pause: every client waits for it.

usage: python bench/ldap_layout_bench.py [--size XL] [--rounds 3]
The server listens on 127.0.0.1 only and is stopped by PID at the end.
"""

from __future__ import annotations

import argparse
import re
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import ldap  # noqa: E402

from bench.datasets import demo_store, machine  # noqa: E402


def _copy_store(url: str, target: Path) -> str:
    """Copy a SQLite store consistently (the bench store is shared: this run writes)."""
    source = sqlite3.connect(url.removeprefix("sqlite:///"))
    dest = sqlite3.connect(target)
    source.backup(dest)
    dest.close()
    source.close()
    return f"sqlite:///{target}"


def _in_process(url: str) -> tuple[float, int, str, str]:
    from idm_facade.config import Config
    from idm_facade.directory import Directory
    from idm_facade.ldap import dit
    from store.engine import make_engine

    engine = make_engine(url)
    snap = Directory(engine).snapshot
    options = dit.options_from(Config({}), snap)
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        dit.build_layout(snap, options)
        best = min(best, time.perf_counter() - t0)
    engine.dispose()
    account = next(e for e in snap.entries if e.kind == "account" and e.attrs.get("personId"))
    return best, len(snap.entries), account.first("userName"), account.first("personId")


def _timed(conn, base: str, flt: str) -> tuple[float, list]:
    t0 = time.perf_counter()
    res = conn.search_s(base, ldap.SCOPE_ONELEVEL, flt, ["givenName"])
    return time.perf_counter() - t0, res


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", default="XL")
    parser.add_argument("--rounds", type=int, default=3, help="changes written, one by one")
    args = parser.parse_args()
    url = demo_store(args.size)
    build_s, entries, uid, person_id = _in_process(url)
    print(f"machine: {machine()}")
    print(f"{args.size}: {entries} entries; dit.build_layout best of 3: {build_s * 1000:.0f} ms")

    from idm_facade.access.clients import ClientRegistry
    from idm_facade.config import Config
    from store.engine import make_engine, write_session
    from store.models import Person

    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        db = _copy_store(url, tmp / "idm.db")
        engine = make_engine(db)
        config = Config({"directory": {"state_dir": str(tmp)}})
        secret = ClientRegistry(engine, config).add("bench", "ldap", "default")
        cfg = tmp / "idm.toml"
        cfg.write_text(f'[directory]\nstate_dir = "{tmp}"\n')
        exe = Path(sys.executable).with_name("idm-facade")
        started = time.perf_counter()
        proc = subprocess.Popen(
            [str(exe), "serve", "--db", db, "--host", "127.0.0.1", "--scim-port", "0",
             "--ldap-port", "0", "--config", str(cfg)],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        try:
            port = None
            assert proc.stdout is not None
            for line in proc.stdout:
                found = re.match(r"LDAP\s+127\.0\.0\.1:(\d+)", line)
                if found:
                    port = int(found.group(1))
                    break
            if port is None:
                raise SystemExit("serve did not start")
            print(f"serve listening after {time.perf_counter() - started:.1f} s")
            conn = ldap.initialize(f"ldap://127.0.0.1:{port}")
            conn.protocol_version = 3
            base_dn = ClientRegistry(engine, config).base
            conn.simple_bind_s(f"cn=bench,ou=clients,{base_dn}", secret)
            people = f"ou=people,{base_dn}"
            first, _ = _timed(conn, people, f"(uid={uid})")
            steady = sorted(_timed(conn, people, f"(uid={uid})")[0] for _ in range(200))
            print(f"first point search after start: {first * 1000:.0f} ms; steady p50 "
                  f"{statistics.median(steady) * 1000:.2f} ms, p99 "
                  f"{steady[int(len(steady) * 0.99)] * 1000:.2f} ms")
            for round_ in range(args.rounds):
                new_name = f"Benchname{round_}"
                with write_session(engine, "bench") as session:
                    session.get(Person, person_id).given_name = new_name
                written = time.perf_counter()
                worst, seen_at, count = 0.0, None, 0
                while True:
                    took, res = _timed(conn, people, f"(uid={uid})")
                    count += 1
                    worst = max(worst, took)
                    now = time.perf_counter()
                    if seen_at is None and res and res[0][1].get("givenName") == [
                            new_name.encode()]:
                        seen_at = now
                    if seen_at is not None and now - seen_at > 2:
                        break
                    if now - written > 60:
                        raise SystemExit("the change did not become visible in 60 s")
                print(f"refresh {round_ + 1}: visible {(seen_at - written) * 1000:.0f} ms "
                      f"after the write; worst point search {worst * 1000:.0f} ms "
                      f"({count} searches)")
            conn.unbind_s()
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
            engine.dispose()
    shutil.rmtree(tmp_name, ignore_errors=True)


if __name__ == "__main__":
    main()
