"""Person binds: binds per second and latency through the facade against direct binds to the
same upstream directory (issue target: at least half of direct).

A real OpenLDAP slapd plays the municipality's AD (tests/upstream_ldap.py) with one user per
active account of the demo store; the facade is ``idm-facade serve`` with ``[ldap.upstream]``
pointing at it. Each client process keeps one connection and binds again and again as a
random person with the right password (``user@suffix`` through the facade, the user's DN
directly), alternating facade and direct rounds in one run so both see the same machine.
A third row,
the facade's own service-account binds (no upstream), shows what the upstream check adds.

usage: python -m bench.person_bind_bench [--size S] [--seconds 5] [--procs 2] [--rounds 2]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import ldap  # noqa: E402

from bench.datasets import demo_store, machine  # noqa: E402
from tests.serving import served_copy  # noqa: E402
from tests.upstream_ldap import BASE, UpstreamDirectory  # noqa: E402

SUFFIX = "kommune.test"


def _worker(url: str, names: list[tuple[str, str]], seconds: float, seed: int,
            q: mp.Queue) -> None:
    rng = random.Random(seed)
    conn = ldap.initialize(url)
    conn.protocol_version = 3
    lat: list[float] = []
    errors = 0
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        name, password = rng.choice(names)
        t0 = time.perf_counter()
        try:
            conn.simple_bind_s(name, password)
        except ldap.LDAPError:
            errors += 1
        lat.append(time.perf_counter() - t0)
    q.put((len(lat), errors, lat))


def _pct(lat: list[float], p: float) -> float:
    lat = sorted(lat)
    return lat[min(len(lat) - 1, int(p * len(lat)))] * 1000 if lat else float("nan")


def run(url: str, names: list[tuple[str, str]], procs: int, seconds: float
        ) -> tuple[float, int, float, float]:
    """(binds per second, errors, p50 ms, p99 ms)."""
    q: mp.Queue = mp.Queue()
    ps = [mp.Process(target=_worker, args=(url, names, seconds, i, q)) for i in range(procs)]
    for p in ps:
        p.start()
    res = [q.get() for _ in ps]
    for p in ps:
        p.join()
    lat = [x for r in res for x in r[2]]
    return (sum(r[0] for r in res) / seconds, sum(r[1] for r in res), _pct(lat, .5),
            _pct(lat, .99))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="S")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--procs", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    from idm_facade.directory import Directory
    from idm_facade.directory.entries import ACCOUNT
    from store.engine import make_engine

    db = demo_store(args.size)
    engine = make_engine(db)
    users = sorted(str(e.first("userName")) for e in Directory(engine).snapshot.entries
                   if e.kind == ACCOUNT and e.first("active") is True)
    engine.dispose()
    passwords = {u: f"pw-{i}-{u}" for i, u in enumerate(users)}
    print(f"# machine: {machine()}")
    print(f"# {args.size}: {len(users)} active accounts, each a user of the upstream slapd")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        upstream = UpstreamDirectory(folder / "upstream", passwords)
        upstream.start()
        config = (f'[ldap.upstream]\nurls = ["{upstream.url}"]\n'
                  f'dn_template = "uid={{username}},ou=people,{BASE}"\n'
                  f'[ldap.persons]\nupn_suffixes = ["{SUFFIX}"]\n'
                  # the benchmark binds thousands of times from one address
                  f'address_lockout_after = 1000000\n')
        (folder / "facade").mkdir()
        try:
            with served_copy(db, folder / "facade", config,
                             (("bench", "ldap", "default"),)) as copy:
                assert copy.serving is not None
                facade = copy.serving.ldap_url
                via = [(f"{u}@{SUFFIX}", p) for u, p in passwords.items()]
                direct = [(f"uid={u},ou=people,{BASE}", p) for u, p in passwords.items()]
                run(facade, via, args.procs, 1.0)  # warm-up: the upstream pool fills
                service = [(copy.bind_dn("bench"), copy.secrets["bench"])]
                results: dict[str, list[tuple[float, int, float, float]]] = {
                    "facade": [], "direct": [], "client": []}
                for _ in range(args.rounds):
                    results["client"].append(run(facade, service, args.procs, args.seconds))
                    results["direct"].append(run(upstream.url, direct, args.procs,
                                                 args.seconds))
                    results["facade"].append(run(facade, via, args.procs, args.seconds))
        finally:
            upstream.stop()
    print(f"\n{args.procs} client processes, persistent connections, {args.seconds:.0f} s "
          f"per round, {args.rounds} rounds alternating; best round of each\n")
    print("| target | binds/s | errors | p50 ms | p99 ms |")
    print("|---|---|---|---|---|")
    best = {k: max(v) for k, v in results.items()}
    for name, (rate, errors, p50, p99) in best.items():
        label = {"facade": "idm-facade person bind (user@suffix, checked upstream)",
                 "direct": "slapd direct (user DN)",
                 "client": "idm-facade service-account bind (no upstream)"}[name]
        print(f"| {label} | {rate:,.0f} | {errors} | {p50:.2f} | {p99:.2f} |")
    ratio = best["facade"][0] / best["direct"][0]
    print(f"\nfacade / direct binds per second: {ratio:.2f} (target >= 0.5; floor: slapd "
          f"direct binds, the upstream itself)")


if __name__ == "__main__":
    main()
