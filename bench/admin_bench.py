"""Admin console page render time at XL, server side (the target: person and unit pages under
200 ms).

Run: ``.venv/bin/python -m bench.admin_bench [--size XL] [--pages 200]``. The console runs
in-process behind Flask's test client (so the figure is the server's time: routing, the
access record, the view, the template), logged in as an administrator; it renders random
account pages, random unit pages and the largest unit (most members), and prints median,
p99 and max per page kind.
"""

from __future__ import annotations

import argparse
import random
import re
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from bench.datasets import demo_store, machine


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="XL", choices=["S", "M", "L", "XL"])
    parser.add_argument("--pages", type=int, default=200)
    args = parser.parse_args()

    from idm_facade.access.audit import AuditLog
    from idm_facade.access.clients import ClientRegistry
    from idm_facade.access.facade import Facade
    from idm_facade.admin.accounts import AdminRegistry
    from idm_facade.config import Config
    from idm_facade.directory import Directory
    from idm_facade.runtime.http import create_app
    from schemas.attributes import ACCOUNT, UNIT
    from store.engine import make_engine

    tmp = Path(tempfile.mkdtemp(prefix="admin-bench-"))
    db = tmp / "idm.db"
    shutil.copy(demo_store(args.size).removeprefix("sqlite:///"), db)
    engine = make_engine(f"sqlite:///{db}")
    config = Config({"directory": {"state_dir": str(tmp)}})
    directory = Directory(engine)
    facade = Facade(directory=directory, clients=ClientRegistry(engine, config),
                    audit=AuditLog(engine, config), config=config)
    AdminRegistry(engine).add("bench-admin", "admin", "bench admin password")
    client = create_app(facade).test_client()
    page = client.get("/admin/login")
    token = re.search(r'name="csrf" value="([^"]+)"', page.text).group(1)  # type: ignore
    assert client.post("/admin/login", data={"name": "bench-admin", "csrf": token,
                                             "password": "bench admin password"}
                       ).status_code == 302
    snap = directory.snapshot
    rng = random.Random(5)
    accounts = [e.id for e in snap.entries if e.kind == ACCOUNT]
    units = [e for e in snap.entries if e.kind == UNIT]
    members: dict[str, int] = {}
    for entry in snap.entries:
        if entry.kind == ACCOUNT:
            for unit in entry.attrs.get("unit", ()):
                members[str(unit)] = members.get(str(unit), 0) + 1
    largest = max(units, key=lambda u: members.get(u.id, 0))

    def timed(paths: list[str]) -> list[float]:
        out = []
        for path in paths:
            started = time.perf_counter()
            response = client.get(path)
            out.append(time.perf_counter() - started)
            assert response.status_code == 200, (path, response.status_code)
        return out

    timed([f"/admin/account/{a}" for a in rng.sample(accounts, 5)])  # warm up
    rows = {
        "account page": timed([f"/admin/account/{a}"
                               for a in rng.sample(accounts, args.pages)]),
        "unit page": timed([f"/admin/unit/{u.id}" for u in rng.sample(units, args.pages)]),
        f"largest unit ({members.get(largest.id, 0):,} members)":
            timed([f"/admin/unit/{largest.id}"] * 5),
        "organisation tree": timed(["/admin/units"] * 5),
    }
    print(f"machine: {machine()}; size {args.size}: {len(accounts):,} accounts, "
          f"{len(units):,} units\n")
    print("| page | median ms | p99 ms | max ms |")
    print("|---|---|---|---|")
    for label, times in rows.items():
        times.sort()
        print(f"| {label} | {statistics.median(times) * 1e3:.1f} | "
              f"{times[int(len(times) * 0.99)] * 1e3:.1f} | {times[-1] * 1e3:.1f} |")
    engine.dispose()
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
