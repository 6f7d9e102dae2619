"""LDAP benchmark: idm-facade against OpenLDAP slapd (mdb, indexed), same machine, same data.

The demo municipality is generated into a SQLite store, served by ``idm-facade serve``, and
exported as LDIF through the facade's own DIT code (bench/ldap_ldif.py), which slapd loads
with ``slapadd``. Then, in ``--rounds`` rounds, every server is measured on every row, one
after the other (alternating), and each row reports the median and the range of its rounds
with the facade's share of slapd and #20's target where it has one:

- a full ``ou=people`` pull (all user attributes) just after the server started (cold), at
  the start of each round (every server is restarted for it), and once more (warm);
- equality search by uid: 1/2/4 python-ldap client processes, persistent connection each,
  random uids of the data set (repeats: after warm-up the facade answers most from its
  answer cache), and 4 processes whose every request is distinct (no cache hits);
- ldclt, 4 threads, ``(employeeNumber=NNNNNN)`` random in the data's range (ldclt cannot
  draw values from a list, so it runs on ``employeeNumber``, also an indexed equality, when
  the numbers are numeric);
- simple binds per second (2 processes; slapd binds its rootdn, the facade a service account);
- point-search latency (p99) while another client pulls ``ou=people`` again and again.

**Floor: slapd** on the same data, same machine, same run. The facade runs with its access
log as shipped (``[audit] sync = "normal"``) and, with ``--full-sync``, also with
``sync = "full"``.

usage: python -m bench.ldap_bench [--size M] [--seconds 6] [--rounds 3] [--ldclt PATH]
       [--workers 1 2] [--full-sync]
``--workers`` is passed to ``idm-facade serve``; with several counts every facade variant runs
once per count. Servers listen on 127.0.0.1 only and are stopped at the end.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import random
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import ldap  # noqa: E402

SLAPD_CONF = """include /etc/ldap/schema/core.schema
include /etc/ldap/schema/cosine.schema
include /etc/ldap/schema/inetorgperson.schema
include /etc/ldap/schema/nis.schema
include {dir}/idm.schema
modulepath /usr/lib/ldap
moduleload back_mdb
pidfile {dir}/slapd.pid
argsfile {dir}/slapd.args
loglevel none
threads 8
sizelimit unlimited
database mdb
suffix "{base}"
rootdn "cn=admin,{base}"
rootpw secret
directory {dir}/db
maxsize 4294967296
index objectClass eq
index uid,mail,member,employeeNumber,entryUUID eq
index cn,sn pres,eq,sub
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ------------------------------------------------------------------ clients (processes)


def _search_worker(url, bind, base, values, attr, seconds, seed, q, distinct=False):
    conn = ldap.initialize(url)
    conn.protocol_version = 3
    conn.simple_bind_s(*bind)
    rnd = random.Random(seed)
    n = errors = 0
    lat = []
    # distinct: a different (never reached) size limit makes every request's bytes new, so
    # the facade's answer cache never hits (its rendered entries still do); the offset is
    # new in every run, so a second run against the same server repeats nothing either.
    first = 1000 + random.SystemRandom().randrange(10**9) + seed * 10_000_000
    end = time.perf_counter() + seconds
    while (t0 := time.perf_counter()) < end:
        value = rnd.choice(values)
        r = conn.search_ext_s(base, ldap.SCOPE_SUBTREE, f"({attr}={value})",
                              sizelimit=first + n if distinct else 0)
        lat.append(time.perf_counter() - t0)
        n += 1
        errors += len(r) != 1
    q.put((n, errors, lat))


def _bind_worker(url, bind, seconds, q):
    conn = ldap.initialize(url)
    conn.protocol_version = 3
    n = 0
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        conn.simple_bind_s(*bind)
        n += 1
    q.put((n, 0, []))


def _pull_worker(url, bind, base, stop_at, q):
    conn = ldap.initialize(url)
    conn.simple_bind_s(*bind)
    pulls = []
    while time.perf_counter() < stop_at:
        t0 = time.perf_counter()
        conn.search_s(base, ldap.SCOPE_ONELEVEL, "(objectClass=*)")
        pulls.append(time.perf_counter() - t0)
    q.put(pulls)


def _pct(lat: list[float], p: float) -> float:
    lat = sorted(lat)
    return lat[min(len(lat) - 1, int(p * len(lat)))] * 1000 if lat else float("nan")


def run_searches(url, bind, base, values, attr, procs, seconds, distinct=False) -> float:
    """Searches per second from ``procs`` client processes (an error aborts the bench)."""
    q: mp.Queue = mp.Queue()
    ps = [mp.Process(target=_search_worker,
                     args=(url, bind, base, values, attr, seconds, i, q, distinct))
          for i in range(procs)]
    for p in ps:
        p.start()
    res = [q.get() for _ in ps]
    for p in ps:
        p.join()
    errors = sum(r[1] for r in res)
    if errors:
        raise SystemExit(f"{url}: {errors} searches did not find exactly one entry")
    return sum(r[0] for r in res) / seconds


def run_binds(url, bind, procs, seconds) -> float:
    """Simple binds per second from ``procs`` client processes."""
    q: mp.Queue = mp.Queue()
    ps = [mp.Process(target=_bind_worker, args=(url, bind, seconds, q)) for _ in range(procs)]
    for p in ps:
        p.start()
    n = sum(q.get()[0] for _ in ps)
    for p in ps:
        p.join()
    return n / seconds


def full_pull(url, bind, base) -> float:
    """Seconds for one client to read every entry below ``base`` (one level)."""
    conn = ldap.initialize(url)
    conn.simple_bind_s(*bind)
    t0 = time.perf_counter()
    conn.search_s(base, ldap.SCOPE_ONELEVEL, "(objectClass=*)")
    return time.perf_counter() - t0


def point_during_pull(url, bind, people, base, values, attr, seconds) -> float:
    """p99 (ms) of point searches while another client pulls ``people`` again and again."""
    q: mp.Queue = mp.Queue()
    stop_at = time.perf_counter() + seconds
    puller = mp.Process(target=_pull_worker, args=(url, bind, people, stop_at, q))
    puller.start()
    time.sleep(0.2)
    q2: mp.Queue = mp.Queue()
    point = mp.Process(target=_search_worker,
                       args=(url, bind, base, values, attr, seconds - 0.5, 7, q2))
    point.start()
    _n, _errors, lat = q2.get()
    q.get()
    point.join()
    puller.join()
    return _pct(lat, .99)


def ldclt(path: str, port: int, base: str, bind: tuple[str, str], low: int, high: int,
          digits: int) -> float:
    """Searches per second of ldclt with 4 threads (its global average)."""
    out = subprocess.run(
        [path, "-h", "127.0.0.1", "-p", str(port), "-D", bind[0], "-w", bind[1], "-b", base,
         "-f", "employeeNumber=" + "X" * digits, "-e", "esearch,random", "-r", str(low),
         "-R", str(high), "-n", "4", "-N", "2"], capture_output=True, text=True, timeout=120)
    found = re.search(r"Global average rate:\s*([\d.]+)/thr\s*\(([\d.]+)/sec\)",
                      out.stdout + out.stderr)
    if not found:
        raise SystemExit(f"ldclt failed: {(out.stdout + out.stderr)[-300:]}")
    return float(found.group(2))


# ------------------------------------------------------------------ servers


class Server:
    """One server under test: how to start it, and where it listens once started."""

    def __init__(self, name: str, bind: tuple[str, str], command: list[str],
                 port_line: str | None = None, pidfile: Path | None = None,
                 port: int | None = None) -> None:
        self.name, self.bind, self.command = name, bind, command
        self.port_line, self.pidfile, self.port = port_line, pidfile, port
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"ldap://127.0.0.1:{self.port}"

    def start(self) -> None:
        if self.pidfile is not None:  # slapd daemonises and writes its pid file
            subprocess.run(self.command, check=True)
            for _ in range(100):
                try:
                    ldap.initialize(self.url).simple_bind_s(*self.bind)
                    return
                except ldap.SERVER_DOWN:
                    time.sleep(0.1)
            raise SystemExit(f"{self.name} did not start")
        self.proc = subprocess.Popen(self.command, stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL, text=True)
        while True:
            line = self.proc.stdout.readline()  # type: ignore[union-attr]
            if not line:
                raise SystemExit(f"{self.name} did not start")
            found = re.match(self.port_line or "", line)
            if found:
                self.port = int(found.group(1))
                return

    def stop(self) -> None:
        if self.pidfile is not None:
            if self.pidfile.exists():
                pid = int(self.pidfile.read_text())
                os.kill(pid, 15)
                for _ in range(100):
                    try:
                        os.kill(pid, 0)
                    except ProcessLookupError:
                        return
                    time.sleep(0.1)
            return
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(timeout=30)
            self.proc = None


# ------------------------------------------------------------------ main

#: (row, #20's target for the facade's share of slapd, higher is better)
TARGETS = {
    "every request distinct, 4 processes": ("at least 60 %", True),
    "ldclt, 4 threads": ("at least 75 %", True),
    "simple binds, 2 processes": ("at least 50 %", True),
    "full ou=people pull, cold (s)": ("at most 2x", False),
    "point-search p99 beside a pulling client (ms)": ("at most 3x", False),
}


def report(results: dict[str, dict[str, list[float]]], servers: list[Server]) -> None:
    """One Markdown table: per row, each server's median (range), and the facade's ratio."""
    names = [s.name for s in servers]
    print("\n| workload | " + " | ".join(f"{n}: median (range)" for n in names)
          + " | idm-facade vs slapd | #20's target |")
    print("|---" * (len(names) + 3) + "|")
    for row, per_server in results.items():
        cells, medians = [], {}
        for name in names:
            values = per_server.get(name, [])
            if not values:
                cells.append("–")
                continue
            medians[name] = statistics.median(values)
            fmt = "{:,.2f}" if "(s)" in row or "(ms)" in row else "{:,.0f}"
            cells.append(f"{fmt.format(medians[name])} ({fmt.format(min(values))}-"
                         f"{fmt.format(max(values))})")
        target, higher = TARGETS.get(row, ("–", "(s)" not in row and "(ms)" not in row))
        ratio = "–"
        facade = next((n for n in names if n.startswith("idm-facade")), None)
        if facade in medians and medians.get("slapd"):
            value = medians[facade] / medians["slapd"]
            ratio = f"{value:.0%}" if higher else f"{value:.1f}x"
        print(f"| {row} | " + " | ".join(cells) + f" | {ratio} | {target} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size", default="M")
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--ldclt", default=shutil.which("ldclt") or "var/bench/389/usr/bin/ldclt")
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--workers", type=int, nargs="+", default=[1],
                        help="idm-facade serve --workers; several counts in the same run")
    parser.add_argument("--full-sync", action="store_true",
                        help='also run the facade with [audit] sync = "full"')
    args = parser.parse_args()

    from bench.datasets import machine
    from bench.ldap_ldif import export_ldif
    from idm_facade.access.clients import ClientRegistry
    from idm_facade.config import Config
    from idm_facade.directory import Directory
    from store import demo, exchange
    from store.engine import make_engine

    work = Path(args.workdir or tempfile.mkdtemp(prefix="ldapbench-"))
    work.mkdir(parents=True, exist_ok=True)
    db = f"sqlite:///{work / 'idm.db'}"
    engine = make_engine(db)
    t0 = time.perf_counter()
    exchange.import_document(engine, demo.generate(args.size, 1), actor="bench")
    print(f"# demo {args.size} imported in {time.perf_counter() - t0:.1f}s", flush=True)
    config = Config({"directory": {"state_dir": str(work)}})
    clients = ClientRegistry(engine, config)
    secret = clients.add("bench", "ldap", "default")
    facade_bind = (clients.bind_dn_of("bench"), secret)
    snapshot = Directory(engine).snapshot
    base = clients.base
    engine.dispose()
    (work / "idm.toml").write_text(f'[directory]\nstate_dir = "{work}"\n')

    # LDIF + schema for slapd, rendered by the facade's DIT code.
    t0 = time.perf_counter()
    count = export_ldif(snapshot, config, work / "data.ldif", work / "idm.schema")
    print(f"# exported {count} entries as LDIF in {time.perf_counter() - t0:.1f}s", flush=True)
    (work / "db").mkdir(exist_ok=True)
    (work / "slapd.conf").write_text(SLAPD_CONF.format(dir=work, base=base))
    subprocess.run(["slaptest", "-f", str(work / "slapd.conf"), "-u"], check=True,
                   capture_output=True)
    t0 = time.perf_counter()
    subprocess.run(["slapadd", "-q", "-f", str(work / "slapd.conf"), "-l",
                    str(work / "data.ldif")], check=True)
    print(f"# slapadd {time.perf_counter() - t0:.2f}s", flush=True)
    slapd_port = free_port()
    servers = [Server("slapd", (f"cn=admin,{base}", "secret"),
                      ["slapd", "-h", f"ldap://127.0.0.1:{slapd_port}", "-f",
                       str(work / "slapd.conf")], pidfile=work / "slapd.pid", port=slapd_port)]

    # The facade with its access log as configured by default (SQLite beside the store,
    # ``[audit] sync = "normal"``: committed to the OS before each answer, on disk within a
    # second; the reactor commits its records itself) and, with --full-sync, with
    # ``sync = "full"`` (on disk before each answer: an fsync per group commit).
    (work / "idm-full.toml").write_text(
        f'[directory]\nstate_dir = "{work}"\n[audit]\nsync = "full"\n'
        f'db = "sqlite:///{work}/audit-full.db"\n')
    exe = Path(sys.executable).with_name("idm-facade")
    for workers in args.workers:
        for conf in ("idm.toml", "idm-full.toml") if args.full_sync else ("idm.toml",):
            name = "idm-facade" + ("" if args.workers == [1] else f" --workers {workers}") + (
                " (audit sync = full)" if conf == "idm-full.toml" else "")
            servers.append(Server(name, facade_bind,
                                  [str(exe), "serve", "--db", db, "--scim-port", "0",
                                   "--ldap-port", "0", "--config", str(work / conf),
                                   "--workers", str(workers)],
                                  port_line=r"LDAP\s+127\.0\.0\.1:(\d+)"))

    accounts = [e for e in snapshot.entries if e.kind == "account"]
    uids = [str(e.first("userName")) for e in accounts]
    numbers = [e.first("employeeNumber") for e in accounts if e.first("employeeNumber")]
    people = f"ou=people,{base}"
    use_ldclt = bool(numbers) and all(str(n).isdigit() for n in numbers) and \
        os.path.exists(args.ldclt)
    digits = len(str(numbers[0])) if numbers else 0
    low, high = (min(int(n) for n in numbers), max(int(n) for n in numbers)) if use_ldclt \
        else (0, 0)
    sec = args.seconds
    rows: list[tuple[str, Callable[[Server], float]]] = [
        ("full ou=people pull, warm (s)", lambda s: full_pull(s.url, s.bind, people)),
        *[(f"uid equality, {n} process{'es' if n > 1 else ''} (answer cache)",
           lambda s, n=n: run_searches(s.url, s.bind, base, uids, "uid", n, sec))
          for n in (1, 2, 4)],
        ("every request distinct, 4 processes",
         lambda s: run_searches(s.url, s.bind, base, uids, "uid", 4, sec, True)),
        *([("ldclt, 4 threads",
            lambda s: ldclt(args.ldclt, s.port, base, s.bind, low, high, digits))]
          if use_ldclt else []),
        ("simple binds, 2 processes", lambda s: run_binds(s.url, s.bind, 2, sec / 2)),
        ("point-search p99 beside a pulling client (ms)",
         lambda s: point_during_pull(s.url, s.bind, people, base, uids, "uid", sec)),
    ]
    results: dict[str, dict[str, list[float]]] = {
        "full ou=people pull, cold (s)": {}, **{row: {} for row, _ in rows}}
    load = os.getloadavg()
    print(f"# machine: {machine()}; load average at the start {load[0]:.2f} / {load[1]:.2f} "
          f"/ {load[2]:.2f}")
    print(f"# data: size {args.size}, {len(accounts)} accounts, {len(snapshot)} directory "
          f"entries, {count} LDIF entries"
          + (f"; ldclt over employeeNumber {low}-{high} ({len(numbers) / (high - low + 1):.0%}"
             " hits)" if use_ldclt else "; no ldclt"))
    print(f"# {args.rounds} rounds of {sec:.0f}s per row and server, servers one after the "
          "other; each round starts every server afresh (the cold pull)", flush=True)
    try:
        for number in range(args.rounds):
            for server in servers:
                server.stop()
                server.start()
                results["full ou=people pull, cold (s)"].setdefault(server.name, []).append(
                    full_pull(server.url, server.bind, people))
            for row, measure in rows:
                for server in servers:
                    value = measure(server)
                    results[row].setdefault(server.name, []).append(value)
                    print(f"round {number + 1} | {row} | {server.name}: {value:,.2f}",
                          flush=True)
        report(results, servers)
    finally:
        for server in servers:
            server.stop()


if __name__ == "__main__":
    main()
