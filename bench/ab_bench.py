"""Two checkouts of the facade, measured alternately in one run: did a change cost speed?

    python -m bench.ab_bench --before /path/to/other/checkout [--size M] [--rounds 4]
                             [--seconds 5]

Each side serves its own copy of the same demo store with its own ``idm-facade`` (the
other checkout needs its own ``.venv``). Round by round, alternating sides, it measures

- SCIM ``userName eq`` (repeated, so the answer cache serves it) with wrk, 1 thread, 8
  connections, the way the gunicorn floor is measured (``../shared`` perf floors);
- LDAP ``(uid=...)`` equality searches from 4 python-ldap client processes, each bound
  once, the same uid every time;

and prints each round, the medians and the ratio after/before. On a shared machine single
figures drift; the ratio of medians taken in the same run is what to read.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _cli(checkout: Path, *args: str) -> str:
    exe = checkout / ".venv" / "bin" / "idm-facade"
    out = subprocess.run([str(exe), *args], capture_output=True, text=True, check=True,
                         cwd=checkout)
    return out.stdout


def _side(checkout: Path, base_db: Path, work: Path, name: str, extra: str = "") -> dict:
    db = work / f"{name}.db"
    shutil.copy(base_db, db)
    url = f"sqlite:///{db}"
    config = work / f"{name}.toml"
    state = work / f"{name}-state"
    state.mkdir()
    config.write_text(f'[directory]\nstate_dir = "{state}"\n' + extra.replace("\\n", "\n"))
    scim = _cli(checkout, "clients", "add", f"ab-scim-{name}", "--scim", "--db", url,
                "--config", str(config))
    ldap = _cli(checkout, "clients", "add", f"ab-ldap-{name}", "--ldap", "--db", url,
                "--config", str(config))
    token = re.search(r"token: (\S+)", scim).group(1)  # type: ignore[union-attr]
    bind_dn = re.search(r"bind DN:\s+(\S+)", ldap).group(1)  # type: ignore[union-attr]
    password = re.search(r"password: (\S+)", ldap).group(1)  # type: ignore[union-attr]
    exe = checkout / ".venv" / "bin" / "idm-facade"
    proc = subprocess.Popen([str(exe), "serve", "--db", url, "--host", "127.0.0.1",
                             "--scim-port", "0", "--ldap-port", "0", "--config", str(config)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            cwd=checkout)
    http = ldap_port = None
    assert proc.stdout is not None
    while http is None or ldap_port is None:
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError(f"{name}: serve ended before announcing its ports")
        found = re.match(r"SCIM\s+(http://\S+)/scim/v2", line)
        if found:
            http = found.group(1)
        found = re.match(r"LDAP\s+127\.0\.0\.1:(\d+)", line)
        if found:
            ldap_port = int(found.group(1))
    # Keep reading the server's output (request log lines) so it never waits on a full pipe:
    # in large chunks, the way journald reads, not line by line in Python (which would cost
    # this machine's two cores more than writing the lines costs the server).
    def drain() -> None:
        raw = proc.stdout.buffer  # type: ignore[union-attr]
        while raw.read1(1 << 16):
            pass

    threading.Thread(target=drain, daemon=True).start()
    return {"proc": proc, "http": http, "ldap": ldap_port, "token": token, "dn": bind_dn,
            "password": password, "base": bind_dn.split(",", 2)[2]}


def _wrk(side: dict, uid: str, seconds: int) -> float:
    url = f'{side["http"]}/scim/v2/Users?filter=userName%20eq%20%22{uid}%22'
    out = subprocess.run(["wrk", "-t1", "-c8", f"-d{seconds}s", "-H",
                          f"Authorization: Bearer {side['token']}", url],
                         capture_output=True, text=True, check=True).stdout
    return float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]


def _ldap_client(port: int, dn: str, password: str, base: str, uid: str, seconds: float,
                 out: multiprocessing.Queue) -> None:
    import ldap

    conn = ldap.initialize(f"ldap://127.0.0.1:{port}")
    conn.simple_bind_s(dn, password)
    done = 0
    stop = time.monotonic() + seconds
    while time.monotonic() < stop:
        conn.search_s(f"ou=people,{base}", ldap.SCOPE_ONELEVEL, f"(uid={uid})", ["uid", "cn"])
        done += 1
    conn.unbind_s()
    out.put(done)


def _ldap(side: dict, uid: str, seconds: int, clients: int = 4) -> float:
    queue: multiprocessing.Queue = multiprocessing.Queue()
    procs = [multiprocessing.Process(target=_ldap_client, args=(
        side["ldap"], side["dn"], side["password"], side["base"], uid, seconds, queue))
        for _ in range(clients)]
    for p in procs:
        p.start()
    total = sum(queue.get(timeout=seconds + 60) for _ in procs)
    for p in procs:
        p.join()
    return total / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--before", type=Path, required=True)
    parser.add_argument("--after", type=Path, default=ROOT)
    parser.add_argument("--size", default="M")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--after-config", default="",
                        help='TOML appended to the after side\'s configuration, e.g. '
                             '"[logging]\\nrequests = false"')
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="idm-ab-"))
    base_db = work / "base.db"
    _cli(args.after, "demo-data", "--size", args.size, "--db", f"sqlite:///{base_db}")
    sides = {"before": _side(args.before.resolve(), base_db, work, "before"),
             "after": _side(args.after.resolve(), base_db, work, "after",
                            args.after_config)}
    try:
        import httpx

        first = httpx.get(f"{sides['after']['http']}/scim/v2/Users", params={"count": "1"},
                          headers={"Authorization": f"Bearer {sides['after']['token']}"})
        uid = first.json()["Resources"][0]["userName"]
        results: dict[str, dict[str, list[float]]] = {
            s: {"scim": [], "ldap": []} for s in sides}
        for round_ in range(args.rounds):
            order = ("before", "after") if round_ % 2 == 0 else ("after", "before")
            for name in order:
                results[name]["scim"].append(_wrk(sides[name], uid, args.seconds))
                results[name]["ldap"].append(_ldap(sides[name], uid, args.seconds))
            print(json.dumps({n: {k: v[-1] for k, v in r.items()} for n, r in results.items()}),
                  flush=True)
        print("\n| workload | before (median) | after (median) | after / before |")
        print("|---|---|---|---|")
        for key, label in (("scim", "SCIM userName eq, wrk -t1 -c8"),
                           ("ldap", "LDAP uid= search, 4 python-ldap processes")):
            b = statistics.median(results["before"][key])
            a = statistics.median(results["after"][key])
            print(f"| {label} | {b:,.0f}/s | {a:,.0f}/s | {a / b:.2f} |")
        print(f"\nrounds {args.rounds} x {args.seconds} s, size {args.size}; "
              f"spread before {results['before']}, after {results['after']}")
    finally:
        for side in sides.values():
            side["proc"].terminate()
            side["proc"].wait(timeout=15)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
