"""Provisioning out: the first sync of a demo store to scim2-server, and the lag from a store
write to the target holding it.

scim2-server (in memory, one process) is started on loopback; ``idm-facade provisioning sync``
pushes the whole store to it (users, role and unit groups), timed; then ``idm-facade serve``
runs with the target configured, and a person's given name is changed in the store N times:
each time, the seconds until the target holds the new name. Then the steady state: a stream
of store writes at a fixed rate (``--rate`` per second for ``--seconds``, each renaming a
different person with one account, so each is exactly one user delivery), while the
target's users are read over and over: how many of the changes per second the target holds,
and each one's lag from its write (to within one read of the target).

usage: python -m bench.provisioning_bench [--size S] [--changes 5] [--rate 10,25]
                                          [--seconds 20]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.datasets import demo_store, machine  # noqa: E402
from tests.scim_target import TOKEN, Target  # noqa: E402
from tests.serving import served_copy  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="S")
    parser.add_argument("--changes", type=int, default=5)
    parser.add_argument("--rate", default="10,25",
                        help="store writes per second in the steady-state stream; several "
                             "rates, comma-separated, are run one after the other")
    parser.add_argument("--seconds", type=float, default=20.0,
                        help="how long the stream lasts (fewer when the store has fewer "
                             "people with one account)")
    args = parser.parse_args()
    from sqlalchemy import select

    from store.engine import make_engine, write_session
    from store.models import Account, Person

    db = demo_store(args.size)
    target = Target()
    target.start()
    exe = str(Path(sys.executable).with_name("idm-facade"))
    print(f"# machine: {machine()}")
    try:
        with tempfile.TemporaryDirectory() as tmp:
            config = (f'[provisioning]\ninterval = 0.1\n[[provisioning.target]]\n'
                      f'name = "bench"\nurl = "{target.url}"\ntoken = "{TOKEN}"\n'
                      f'groups = ["role", "unit"]\n')
            folder = Path(tmp)
            with served_copy(db, folder, config, start=False) as copy:
                started = time.monotonic()
                out = subprocess.run([exe, "provisioning", "sync", "bench", "--db", copy.db,
                                      "--config", str(copy.config), "--wait", "7200"],
                                     capture_output=True, text=True, check=True)
                seconds = time.monotonic() - started
                sent = int(out.stdout.split(":")[1].split()[0])
                print(f"first sync {args.size}: {sent:,} deliveries in {seconds:.1f} s "
                      f"({sent / seconds:,.0f}/s), users {len(target.all('User')):,}, "
                      f"groups {len(target.all('Group')):,}")
                from tests.serving import start_serve

                copy.serving = start_serve(copy.db, copy.config, ldap=False)
                engine = make_engine(copy.db)
                remote = target.all("User")[:1]  # a user the target holds
                with engine.connect() as conn:
                    account = conn.execute(select(Account).where(
                        Account.id == remote[0]["externalId"])).first()
                lags = []
                for number in range(args.changes):
                    name = f"Bench{number}"
                    with write_session(engine, actor="bench") as session:
                        session.get(Person, account.person_id).given_name = name
                    written = time.monotonic()
                    while True:
                        held = target.http.get(f"/Users/{remote[0]['id']}").json()
                        if held.get("name", {}).get("givenName") == name:
                            break
                        if time.monotonic() - written > 60:
                            raise SystemExit("the change did not reach the target in 60 s")
                        time.sleep(0.02)
                    lags.append(time.monotonic() - written)
                print(f"store write -> target holds it ({args.changes} changes): median "
                      f"{statistics.median(lags):.2f} s, max {max(lags):.2f} s")
                for run, rate in enumerate(float(r) for r in args.rate.split(",")):
                    steady(engine, target, rate, args.seconds, exclude=account.person_id,
                           prefix=f"Steady{run}x")
                engine.dispose()
    finally:
        target.kill()


def steady(engine: Any, target: Target, rate: float, seconds: float, exclude: str,
           prefix: str) -> None:
    """Write a stream of renames at ``rate`` per second and see them arrive at the target."""
    from collections import Counter

    from sqlalchemy import select

    from store.engine import write_session
    from store.models import Account, Person

    held = {u["externalId"] for u in target.all("User") if u.get("externalId")}
    with engine.connect() as conn:
        rows = [r for r in conn.execute(select(Account.id, Account.person_id)
                                        .order_by(Account.id)) if r.id in held]
    users_of = Counter(r.person_id for r in rows)  # users the target holds per person
    people = [(r.id, r.person_id) for r in rows
              if users_of[r.person_id] == 1 and r.person_id != exclude]
    count = min(len(people), int(rate * seconds))
    people = people[:count]
    written: dict[str, float] = {}  # name -> when its write committed

    def write() -> None:
        start = time.monotonic()
        for number, (_, person_id) in enumerate(people):
            pause = start + number / rate - time.monotonic()
            if pause > 0:
                time.sleep(pause)
            name = f"{prefix}{number}"
            with write_session(engine, actor="bench") as session:
                session.get(Person, person_id).given_name = name
            written[name] = time.monotonic()

    writer = threading.Thread(target=write, daemon=True)
    began = time.monotonic()
    writer.start()
    arrived: dict[str, float] = {}
    reads = []
    while len(arrived) < count:
        if time.monotonic() - began > seconds * 3 + 120:
            raise SystemExit(f"steady state: {count - len(arrived)} changes never arrived")
        read_start = time.monotonic()
        # Only the stream's users, by a filter: reading every user of an M store each time
        # would keep the target (and the machine's two cores) busy with the measuring.
        found = target.http.get("/Users", params={
            "filter": f'name.givenName sw "{prefix}"', "count": 5000,
            "attributes": "name"}).json().get("Resources") or []
        for user in found:
            given = user.get("name", {}).get("givenName", "")
            if given.startswith(prefix) and given not in arrived:
                arrived[given] = time.monotonic()
        reads.append(time.monotonic() - read_start)
        time.sleep(0.2)
    writer.join()
    offered = count / (max(written.values()) - began)
    delivered = count / (max(arrived.values()) - began)
    lags = sorted(arrived[name] - written[name] for name in written)
    print(f"steady state: {count} writes at {offered:.1f}/s offered -> {delivered:.1f}/s held "
          f"by the target; lag median {statistics.median(lags):.2f} s, p95 "
          f"{lags[int(len(lags) * 0.95) - 1]:.2f} s, max {lags[-1]:.2f} s (target read "
          f"every {statistics.median(reads):.2f} s)")


if __name__ == "__main__":
    main()
