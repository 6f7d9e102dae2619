"""SCIM point reads against the gunicorn floor (#20's SCIM ``userName eq`` rows).

Provisioning clients (Entra ID, Okta, our own push) look a user up before every write:
``GET /scim/v2/Users?filter=userName eq "..."``. Measured with wrk -t1 -c8 on loopback, in
one run, alternating, against hello-world Flask under gunicorn (the better of 1 and 2 sync
workers, ``../shared/research/perf-floors.md``) and through our own twisted.web site:

- repeated: random names from 5,000, so after warm-up most answers come from the facade's
  answer cache;
- distinct: every request carries a different unused parameter, so no answer is a repeat;
- deep page: ``/scim/v2/Users?startIndex=<half the users>&count=100``, a different unused
  parameter on every request (the answer cache defeated), as a full sync pages through.

The facade runs with one process and with ``--workers 2`` (gunicorn's floor may use both
cores too). usage: python -m bench.scim_floor_bench [--size M] [--seconds 8] [--rounds 3]
"""

from __future__ import annotations

import os
import random
import statistics
import sys
import urllib.parse
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.datasets import machine  # noqa: E402
from bench.roles_bench import PY, arguments, floors_ready, gunicorn_hello, run_wrk  # noqa: E402
from bench.scim_bench import HELLO, ensure_db, start  # noqa: E402


def main() -> None:
    args = arguments(__doc__ or "", "M")
    if not floors_ready("the SCIM floor bench"):
        return
    url = ensure_db(args.size, None)
    from idm_facade.access.clients import ClientRegistry
    from idm_facade.config import Config
    from idm_facade.directory import Directory
    from schemas.attributes import ACCOUNT
    from store.engine import make_engine

    engine = make_engine(url)
    token = ClientRegistry(engine, Config()).add(f"bench-{os.getpid()}", "scim", "default")
    snap = Directory(engine).snapshot
    names = [str(e.first("userName")) for e in snap.entries if e.kind == ACCOUNT]
    engine.dispose()
    picked = random.Random(7).sample(names, min(5000, len(names)))

    def point(name: str) -> str:
        return "/scim/v2/Users?filter=" + urllib.parse.quote(f'userName eq "{name}"')

    repeated = [point(n) for n in picked]
    distinct = [f"{point(random.Random(i).choice(picked))}&n={i}" for i in range(60_000)]
    deep = [f"/scim/v2/Users?startIndex={len(names) // 2}&count=100&n={i}"
            for i in range(60_000)]
    auth = {"Authorization": f"Bearer {token}"}
    serve = [PY, "-c", "from idm_facade.cli import main; main()", "serve", "--db", url,
             "--scim-port", "0"]
    one, base1 = start(serve, r"SCIM\s+(http://\S+)/scim/v2")
    two, base2 = start(serve + ["--workers", "2"], r"SCIM\s+(http://\S+)/scim/v2")
    site, site_url = start([PY, "-c", HELLO, "32"], r"HELLO (\S+)")
    floors = {w: gunicorn_hello(w) for w in (1, 2)}
    rows: dict[str, list[float]] = {}
    try:
        for base in (base1, base2):
            run_wrk(base + "/", 2, auth, repeated)  # warm up: token check, caches
        for number in range(args.rounds):
            for label, target, headers, paths in (
                    ("userName eq, repeated", base1 + "/", auth, repeated),
                    ("userName eq, repeated, --workers 2", base2 + "/", auth, repeated),
                    ("userName eq, every query distinct", base1 + "/", auth, distinct),
                    ("userName eq, distinct, --workers 2", base2 + "/", auth, distinct),
                    ("deep page, distinct", base1 + "/", auth, deep),
                    ("deep page, distinct, --workers 2", base2 + "/", auth, deep),
                    ("hello-world, our twisted.web site", site_url, None, None),
                    ("hello-world, gunicorn 1 worker", floors[1][1], None, None),
                    ("hello-world, gunicorn 2 workers", floors[2][1], None, None)):
                rps = run_wrk(target, args.seconds, headers, paths)[0]
                rows.setdefault(label, []).append(rps)
                print(f"round {number + 1}: {label}: {rps:,.0f} req/s", flush=True)
    finally:
        for proc in (one, two, site, *(p for p, _ in floors.values())):
            proc.terminate()
            proc.wait(timeout=30)
    median = {label: statistics.median(v) for label, v in rows.items()}
    gunicorn = max(median["hello-world, gunicorn 1 worker"],
                   median["hello-world, gunicorn 2 workers"])
    site_floor = median["hello-world, our twisted.web site"]
    print(f"\nmachine: {machine()}; load {os.getloadavg()[0]:.2f}; size {args.size}; "
          f"wrk -t1 -c8 -d{args.seconds:.0f}s, {args.rounds} rounds alternating\n")
    print("| request | req/s (median; range) | vs gunicorn floor | vs our site's hello-world |")
    print("|---|---|---|---|")
    for label, values in rows.items():
        print(f"| {label} | {median[label]:,.0f} ({min(values):,.0f}-{max(values):,.0f}) | "
              f"{median[label] / gunicorn:.2f} | {median[label] / site_floor:.2f} |")


if __name__ == "__main__":
    main()
