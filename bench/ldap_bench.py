"""LDAP benchmark: idm-facade against OpenLDAP slapd (mdb, indexed), same machine, same data.

The demo municipality is generated into a SQLite store, served by ``idm-facade serve``, and
exported as LDIF through the facade's own DIT code (bench/ldap_ldif.py), which slapd loads
with ``slapadd``. Then, against both servers in one run:

- equality search by uid: 1/2/4 python-ldap client processes, persistent connection each,
  random uids of the data set (repeats: after warm-up the facade answers most from its
  answer cache), and 4 processes whose every request is distinct (no cache hits);
- ldclt, 4 threads, ``(employeeNumber=NNNNNN)`` random in the data's range (ldclt cannot
  draw values from a list, so it runs on ``employeeNumber``, also an indexed equality, when
  the numbers are numeric);
- simple binds per second (2 processes; slapd binds its rootdn, the facade a service account);
- a full ``ou=people`` pull (all user attributes), and point-search latency while pulls run.

usage: python bench/ldap_bench.py [--size M] [--seconds 8] [--ldclt PATH] [--workers 1 2]
``--workers`` is passed to ``idm-facade serve``; with several counts every facade variant runs
once per count (all up at the same time, measured one after the other).
Servers listen on 127.0.0.1 only and are stopped by PID at the end.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import random
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
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
    end = time.perf_counter() + seconds
    while (t0 := time.perf_counter()) < end:
        value = rnd.choice(values)
        # distinct: a different (never reached) size limit makes every request's bytes new,
        # so the facade's answer cache never hits; its rendered entries still do.
        r = conn.search_ext_s(base, ldap.SCOPE_SUBTREE, f"({attr}={value})",
                              sizelimit=1000 + seed * 10_000_000 + n if distinct else 0)
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


def run_searches(url, bind, base, values, attr, procs, seconds, distinct=False) -> str:
    q: mp.Queue = mp.Queue()
    ps = [mp.Process(target=_search_worker,
                     args=(url, bind, base, values, attr, seconds, i, q, distinct))
          for i in range(procs)]
    for p in ps:
        p.start()
    res = [q.get() for _ in ps]
    for p in ps:
        p.join()
    n = sum(r[0] for r in res)
    errors = sum(r[1] for r in res)
    lat = [x for r in res for x in r[2]]
    return (f"procs={procs} rate={n / seconds:,.0f}/s errors={errors} "
            f"p50={_pct(lat, .5):.2f}ms p99={_pct(lat, .99):.2f}ms")


def run_binds(url, bind, procs, seconds) -> str:
    q: mp.Queue = mp.Queue()
    ps = [mp.Process(target=_bind_worker, args=(url, bind, seconds, q)) for _ in range(procs)]
    for p in ps:
        p.start()
    n = sum(q.get()[0] for _ in ps)
    for p in ps:
        p.join()
    return f"procs={procs} binds={n / seconds:,.0f}/s"


def full_pull(url, bind, base) -> str:
    conn = ldap.initialize(url)
    conn.simple_bind_s(*bind)
    t0 = time.perf_counter()
    found = conn.search_s(base, ldap.SCOPE_ONELEVEL, "(objectClass=*)")
    return f"entries={len(found)} seconds={time.perf_counter() - t0:.2f}"


def point_during_pull(url, bind, people, base, values, attr, seconds) -> str:
    q: mp.Queue = mp.Queue()
    stop_at = time.perf_counter() + seconds
    puller = mp.Process(target=_pull_worker, args=(url, bind, people, stop_at, q))
    puller.start()
    time.sleep(0.2)
    q2: mp.Queue = mp.Queue()
    point = mp.Process(target=_search_worker,
                       args=(url, bind, base, values, attr, seconds - 0.5, 7, q2))
    point.start()
    n, errors, lat = q2.get()
    pulls = q.get()
    point.join()
    puller.join()
    return (f"pulls={len(pulls)} pull_avg={sum(pulls) / max(1, len(pulls)):.2f}s | point "
            f"searches={n} p50={_pct(lat, .5):.2f}ms p99={_pct(lat, .99):.2f}ms "
            f"max={max(lat) * 1000:.1f}ms")


def ldclt(path: str, port: int, base: str, bind: tuple[str, str], low: int, high: int,
          digits: int) -> str:
    out = subprocess.run(
        [path, "-h", "127.0.0.1", "-p", str(port), "-D", bind[0], "-w", bind[1], "-b", base,
         "-f", "employeeNumber=" + "X" * digits, "-e", "esearch,random", "-r", str(low),
         "-R", str(high), "-n", "4", "-N", "2"], capture_output=True, text=True, timeout=120)
    found = re.search(r"Global average rate:\s*([\d.]+)/thr\s*\(([\d.]+)/sec\)",
                      out.stdout + out.stderr)
    return f"4 threads: {float(found.group(2)):,.0f}/s" if found else \
        f"ldclt failed: {(out.stdout + out.stderr)[-300:]}"


# ------------------------------------------------------------------ main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size", default="M")
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--ldclt", default=shutil.which("ldclt") or "var/bench/389/usr/bin/ldclt")
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--workers", type=int, nargs="+", default=[1],
                        help="idm-facade serve --workers; several counts in the same run")
    args = parser.parse_args()

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
    directory = Directory(engine)
    snapshot = directory.snapshot
    base = clients.base
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
    subprocess.run(["slapd", "-h", f"ldap://127.0.0.1:{slapd_port}", "-f",
                    str(work / "slapd.conf")], check=True)
    time.sleep(1)
    slapd_pid = int((work / "slapd.pid").read_text())

    # The facade twice: with its access log as configured by default (SQLite beside the
    # store, ``[audit] sync = "normal"``: committed to the OS before each answer, on disk
    # within a second; the reactor commits its records itself) and with ``sync = "full"``
    # (on disk before each answer: an fsync per group commit, in the log's writer thread).
    (work / "idm-full.toml").write_text(
        f'[directory]\nstate_dir = "{work}"\n[audit]\nsync = "full"\n'
        f'db = "sqlite:///{work}/audit-full.db"\n')
    exe = Path(sys.executable).with_name("idm-facade")
    servers_procs, facade_ports = [], []
    variants = [(workers, conf) for workers in args.workers
                for conf in ("idm.toml", "idm-full.toml")]
    for workers, conf in variants:
        proc = subprocess.Popen([str(exe), "serve", "--db", db, "--scim-port", "0",
                                 "--ldap-port", "0", "--config", str(work / conf),
                                 "--workers", str(workers)],
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        servers_procs.append(proc)
        port = None
        while port is None:
            line = proc.stdout.readline()  # type: ignore[union-attr]
            if not line:
                raise SystemExit("idm-facade serve did not start")
            found = re.match(r"LDAP\s+127\.0\.0\.1:(\d+)", line)
            port = int(found.group(1)) if found else None
        facade_ports.append(port)

    accounts = [e for e in snapshot.entries if e.kind == "account"]
    uids = [str(e.first("userName")) for e in accounts]
    numbers = [e.first("employeeNumber") for e in accounts if e.first("employeeNumber")]
    servers = {"slapd": (f"ldap://127.0.0.1:{slapd_port}", (f"cn=admin,{base}", "secret"),
                         slapd_port)}
    for (workers, conf), port in zip(variants, facade_ports, strict=True):
        name = "idm-facade" + ("" if args.workers == [1] else f" --workers {workers}") + (
            " (audit sync = full)" if conf == "idm-full.toml" else "")
        servers[name] = (f"ldap://127.0.0.1:{port}", facade_bind, port)
    people = f"ou=people,{base}"
    try:
        nproc = os.cpu_count()
        cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo")
                    if ln.startswith("model name")), "?")
        mem = next((ln.split()[1] for ln in open("/proc/meminfo")
                    if ln.startswith("MemTotal")), "0")
        print(f"# machine: nproc={nproc} cpu={cpu} ram={int(mem) // 1024 // 1024} GiB")
        print(f"# data: size {args.size}, {len(accounts)} accounts, {len(snapshot)} directory "
              f"entries, {count} LDIF entries")
        # Warm the facade's rendering cache once (first-touch costs are reported apart).
        print("## full ou=people pull (first = cold cache on the facade)")
        for name, (url, bind, _) in servers.items():
            print(f"{name}: first {full_pull(url, bind, people)}; "
                  f"second {full_pull(url, bind, people)}", flush=True)
        print("## equality search by uid, python-ldap processes, all attributes")
        for procs in (1, 2, 4):
            for name, (url, bind, _) in servers.items():
                print(f"{name}: {run_searches(url, bind, base, uids, 'uid', procs, args.seconds)}",
                      flush=True)
        print("## same, 4 processes, every request distinct (no answer-cache hits)")
        for name, (url, bind, _) in servers.items():
            print(f"{name}: "
                  f"{run_searches(url, bind, base, uids, 'uid', 4, args.seconds, True)}",
                  flush=True)
        if numbers and all(str(n).isdigit() for n in numbers) and os.path.exists(args.ldclt):
            digits = len(str(numbers[0]))
            low, high = min(int(n) for n in numbers), max(int(n) for n in numbers)
            hit = len(numbers) / (high - low + 1)
            print(f"## ldclt (employeeNumber equality, range {low}-{high}, hit ratio "
                  f"{hit:.0%})")
            for name, (_url, bind, port) in servers.items():
                print(f"{name}: {ldclt(args.ldclt, port, base, bind, low, high, digits)}",
                      flush=True)
        print("## simple binds, 2 processes")
        for name, (url, bind, _) in servers.items():
            print(f"{name}: {run_binds(url, bind, 2, args.seconds / 2)}", flush=True)
        print("## point searches (uid) while one client pulls ou=people repeatedly")
        for name, (url, bind, _) in servers.items():
            result = point_during_pull(url, bind, people, base, uids, "uid", args.seconds)
            print(f"{name}: {result}", flush=True)
    finally:
        for proc in servers_procs:
            proc.terminate()
            proc.wait(timeout=30)
        os.kill(slapd_pid, 15)


if __name__ == "__main__":
    main()
