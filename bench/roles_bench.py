"""Role lookup benchmark: effective-roles time per account, and lookups per second over HTTP.

Run: ``.venv/bin/python -m bench.roles_bench [SIZE] [--seconds N] [--clients N]`` (default
XL, 10 s, 4 client processes). It builds (or reuses) the demo store of SIZE, builds the
directory, and measures:

- ``effective_roles(data, account)`` for a sample of accounts (the issue-3 target is under
  1 ms per account);
- the in-process cost of one ``/api/roles`` answer from a warm snapshot;
- ``GET /api/roles/{username}`` per second over loopback HTTP: the role API served by waitress
  in this process (access log on, one durable record per request, group commit), hammered by
  client processes with keep-alive httpx clients, each asking for random usernames.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import random
import statistics
import threading
import time

from bench.datasets import demo_store, machine


def _client(base: str, token: str, names: list[str], seconds: float, seed: int,
            out: mp.Queue) -> None:
    import httpx

    rng = random.Random(seed)
    done = errors = 0
    latencies: list[float] = []
    with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {token}"},
                      timeout=30) as http:
        stop = time.perf_counter() + seconds
        while time.perf_counter() < stop:
            started = time.perf_counter()
            response = http.get(f"/roles/{rng.choice(names)}")
            latencies.append(time.perf_counter() - started)
            if response.status_code == 200:
                done += 1
            else:
                errors += 1
    out.put((done, errors, latencies))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("size", nargs="?", default="XL")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--clients", type=int, default=4)
    args = parser.parse_args()

    import tempfile

    from flask import Flask
    from waitress.server import create_server

    from idm_facade.access.audit import AuditLog
    from idm_facade.access.clients import ClientRegistry
    from idm_facade.access.facade import Facade
    from idm_facade.config import Config
    from idm_facade.directory import Directory
    from idm_facade.directory.policy import Policy
    from idm_facade.directory.roles import effective_roles
    from idm_facade.roleapi.api import blueprint, role_view, roles_json
    from schemas.attributes import ACCOUNT
    from store.engine import make_engine

    url = demo_store(args.size)
    engine = make_engine(url)
    started = time.perf_counter()
    directory = Directory(engine)
    build = time.perf_counter() - started
    snap = directory.snapshot
    data = snap.data
    accounts = [e for e in snap.entries if e.kind == ACCOUNT]
    rng = random.Random(7)
    sample = rng.sample(accounts, min(2000, len(accounts)))

    # effective_roles per account (the per-load index is already built by the directory)
    times = []
    for entry in sample:
        t0 = time.perf_counter()
        effective_roles(data, entry.id)
        times.append(time.perf_counter() - t0)
    times.sort()
    er_median, er_p99 = statistics.median(times), times[int(len(times) * 0.99)]

    # one /api/roles answer in-process (warm)
    policy = Policy(name="default")
    view = role_view(snap)
    t0 = time.perf_counter()
    for entry in sample:
        roles_json(view, entry, policy, None)
    in_process = (time.perf_counter() - t0) / len(sample)

    tmp = tempfile.mkdtemp(prefix="roles-bench-")
    config = Config({"audit": {"db": f"sqlite:///{tmp}/audit.db"}})
    clients = ClientRegistry(engine, config)
    name = f"bench-{int(time.time())}"
    token = clients.add(name, "scim", "default")
    audit = AuditLog(engine, config)
    facade = Facade(directory=directory, clients=clients, audit=audit, config=config)
    app = Flask("roles-bench")
    app.register_blueprint(blueprint(facade), url_prefix="/api")
    server = create_server(app, host="127.0.0.1", port=0, threads=8)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{server.effective_port}/api"
    names = [e.first("userName") for e in sample]

    ctx = mp.get_context("spawn")
    out: mp.Queue = ctx.Queue()
    procs = [ctx.Process(target=_client, args=(base, token, names, args.seconds, i, out))
             for i in range(args.clients)]
    for proc in procs:
        proc.start()
    results = [out.get() for _ in procs]
    for proc in procs:
        proc.join()
    done = sum(r[0] for r in results)
    errors = sum(r[1] for r in results)
    lat = sorted(x for r in results for x in r[2])
    server.close()
    clients.revoke(name)
    audit.close()

    print(f"machine: {machine()}")
    print(f"size {args.size}: {len(accounts):,} accounts, directory build {build:.1f}s")
    print(f"effective_roles per account: median {er_median * 1e6:.0f} us, "
          f"p99 {er_p99 * 1e6:.0f} us (n={len(times)})")
    print(f"/api/roles answer in-process (warm): {in_process * 1e6:.0f} us")
    print(f"HTTP: {done / args.seconds:,.0f} lookups/s with {args.clients} client processes "
          f"over {args.seconds:.0f}s, {errors} errors; latency median "
          f"{statistics.median(lat) * 1e3:.1f} ms, p99 {lat[int(len(lat) * 0.99)] * 1e3:.1f} ms; "
          f"access log: {audit.written:,} records in {audit.batches:,} commits")


if __name__ == "__main__":
    main()
