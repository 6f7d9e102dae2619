"""Provisioning out: the first sync of a demo store to scim2-server, and the lag from a store
write to the target holding it.

scim2-server (in memory, one process) is started on loopback; ``idm-facade provisioning sync``
pushes the whole store to it (users, role and unit groups), timed; then ``idm-facade serve``
runs with the target configured, and a person's given name is changed in the store N times:
each time, the seconds until the target holds the new name.

usage: python -m bench.provisioning_bench [--size S] [--changes 5]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.datasets import demo_store, machine  # noqa: E402
from tests.scim_target import TOKEN, Target  # noqa: E402
from tests.serving import served_copy  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="S")
    parser.add_argument("--changes", type=int, default=5)
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
                                      "--config", str(copy.config)], capture_output=True,
                                     text=True, check=True)
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
                engine.dispose()
                print(f"store write -> target holds it ({args.changes} changes): median "
                      f"{statistics.median(lags):.2f} s, max {max(lags):.2f} s")
    finally:
        target.kill()


if __name__ == "__main__":
    main()
