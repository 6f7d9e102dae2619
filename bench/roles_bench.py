"""Role lookup benchmark: effective roles per account in-process, and login lookups over HTTP
against the hello-world floors, measured alternately in one run.

Run: ``.venv/bin/python -m bench.roles_bench [--size XL] [--seconds 8] [--rounds 3]``.

- ``effective_roles(data, account)`` for 2,000 random accounts (median, p99);
- ``GET /api/user/{userId}/roles?system=<a KOMBIT system>`` (what an identity provider asks
  at a KOMBIT login: the OIOBPP with computed constraint values) through ``idm-facade
  serve``, every request for a different random account (a wrk Lua script picks from 5,000
  names), access log on (one durable record per request);
- ``GET /api/roles/{username}`` the same way;
- the floors, in turn with the facade in every round: hello-world Flask through the facade's
  own twisted.web site (what ``bench.scim_bench`` compares with) and hello-world Flask under
  gunicorn, the better of 1 and 2 workers (``../shared/research/perf-floors.md``).

Every HTTP row uses wrk -t1 -c8, the way the gunicorn floor is measured. Ratios are of
medians over the rounds; single figures drift on a shared machine.
"""

from __future__ import annotations

import argparse
import os
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.datasets import machine
from bench.scim_bench import HELLO, ensure_db, ensure_wrk, free_port, start

PY = sys.executable
GUNICORN_APP = """
from flask import Flask
app = Flask("hello")
@app.get("/hello")
def hello():
    return "Hello, World!"
"""
PICK_LUA = """
local paths = {}
for line in io.lines("%s") do paths[#paths + 1] = line end
local tid = 0
function setup(thread) tid = tid + 1; thread:set("seed", tid) end
function init(args) math.randomseed(os.time() * 1000 + seed) end
function request() return wrk.format(nil, paths[math.random(#paths)]) end
"""


def run_wrk(url: str, seconds: float, headers: dict[str, str] | None = None,
            paths: list[str] | None = None) -> tuple[float, str, str]:
    """Requests/s, median and p99 latency of wrk -t1 -c8 on ``url`` (random ``paths``)."""
    cmd = ["wrk", "-t1", "-c8", f"-d{max(int(seconds), 1)}s", "--timeout", "30s", "--latency"]
    for key, value in (headers or {}).items():
        cmd += ["-H", f"{key}: {value}"]
    temp: list[Path] = []
    if paths:
        listing = Path(tempfile.mkstemp(suffix=".txt")[1])
        listing.write_text("\n".join(paths) + "\n")
        script = Path(tempfile.mkstemp(suffix=".lua")[1])
        script.write_text(PICK_LUA % listing)
        temp += [listing, script]
        cmd += ["-s", str(script)]
    try:
        out = subprocess.run(cmd + [url], capture_output=True, text=True, check=True).stdout
    finally:
        for path in temp:
            path.unlink()
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if errors:
        raise SystemExit(f"wrk saw {errors.group(1)} error responses for {url}")
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p50 = re.search(r"^\s+50%\s+(\S+)", out, re.M).group(1)  # type: ignore[union-attr]
    p99 = re.search(r"^\s+99%\s+(\S+)", out, re.M).group(1)  # type: ignore[union-attr]
    return rps, p50, p99


def gunicorn_hello(workers: int) -> tuple[subprocess.Popen, str]:
    """Hello-world Flask under gunicorn with ``workers`` sync workers."""
    folder = Path(tempfile.mkdtemp(prefix="hello-gunicorn-"))
    (folder / "hello_app.py").write_text(GUNICORN_APP)
    port = free_port()
    exe = Path(PY).with_name("gunicorn")
    proc = subprocess.Popen([str(exe), "-w", str(workers), "-b", f"127.0.0.1:{port}",
                             "--chdir", str(folder), "hello_app:app"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/hello"
    import httpx

    for _ in range(100):
        try:
            httpx.get(url, timeout=1)
            return proc, url
        except httpx.HTTPError:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit("gunicorn did not start")


def in_process(size: str) -> tuple[int, float, float]:
    """Accounts, and effective_roles median/p99 in microseconds over 2,000 accounts."""
    from bench.datasets import demo_store
    from idm_facade.directory import Directory
    from idm_facade.directory.roles import effective_roles
    from schemas.attributes import ACCOUNT
    from store.engine import make_engine

    engine = make_engine(demo_store(size))
    snap = Directory(engine).snapshot
    accounts = [e for e in snap.entries if e.kind == ACCOUNT]
    sample = random.Random(7).sample(accounts, min(2000, len(accounts)))
    times = []
    for entry in sample:
        started = time.perf_counter()
        effective_roles(snap.data, entry.id)
        times.append(time.perf_counter() - started)
    times.sort()
    engine.dispose()
    return len(accounts), statistics.median(times) * 1e6, times[int(len(times) * 0.99)] * 1e6


def arguments(doc: str, size: str) -> argparse.Namespace:
    """``--size``, ``--seconds`` (per wrk run) and ``--rounds`` of an HTTP floor bench."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--size", default=size, choices=["S", "M", "L", "XL"])
    parser.add_argument("--seconds", type=float, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    return parser.parse_args()


def floors_ready(what: str) -> bool:
    """Whether wrk and gunicorn are there (else say which bench is skipped)."""
    if ensure_wrk() is None or shutil.which("gunicorn", path=str(Path(PY).parent)) is None:
        print(f"wrk or gunicorn is missing: skipping {what}")
        return False
    return True


def main() -> None:
    args = arguments(__doc__ or "", "XL")
    if not floors_ready("the role API bench"):
        return
    count, er_median, er_p99 = in_process(args.size)
    print(f"effective_roles per account: median {er_median:.0f} us, p99 {er_p99:.0f} us "
          f"({count:,} accounts)", flush=True)

    url = ensure_db(args.size, None)
    from idm_facade.access.clients import ClientRegistry
    from idm_facade.config import Config
    from idm_facade.directory import Directory
    from schemas.attributes import ACCOUNT
    from store.engine import make_engine

    engine = make_engine(url)
    token = ClientRegistry(engine, Config()).add(f"bench-{os.getpid()}", "scim", "default")
    snap = Directory(engine).snapshot
    data = snap.data
    names = [str(e.first("userName")) for e in snap.entries if e.kind == ACCOUNT]
    kombit = sorted(s.user_key for s in data.it_systems.values()
                    if s.system_type == "KOMBIT" and not s.access_blocked)[1]
    engine.dispose()
    picked = random.Random(11).sample(names, min(5000, len(names)))
    login_paths = [f"/api/user/{n}/roles?system={kombit}" for n in picked]
    roles_paths = [f"/api/roles/{n}" for n in picked]
    auth = {"Authorization": f"Bearer {token}"}

    server, base = start([PY, "-c", "from idm_facade.cli import main; main()", "serve",
                          "--db", url, "--scim-port", "0"], r"SCIM\s+(http://\S+)/scim/v2")
    # the facade on both cores, as gunicorn's floor may be (its better of 1 and 2 workers)
    server2, base2 = start([PY, "-c", "from idm_facade.cli import main; main()", "serve",
                            "--db", url, "--scim-port", "0", "--workers", "2"],
                           r"SCIM\s+(http://\S+)/scim/v2")
    site, site_url = start([PY, "-c", HELLO, "32"], r"HELLO (\S+)")
    floors = {w: gunicorn_hello(w) for w in (1, 2)}
    rows: dict[str, list[tuple[float, str, str]]] = {}
    try:
        run_wrk(base + "/", 2, auth, login_paths)  # warm up: caches, thread pool
        run_wrk(base2 + "/", 2, auth, login_paths)
        for number in range(args.rounds):
            for label, target, headers, paths in (
                    ("GET /api/user/{id}/roles?system=KOMBIT", base + "/", auth, login_paths),
                    ("GET /api/roles/{username}", base + "/", auth, roles_paths),
                    ("GET /api/user/{id}/roles?system=KOMBIT, --workers 2", base2 + "/", auth,
                     login_paths),
                    ("hello-world, our twisted.web site", site_url, None, None),
                    ("hello-world, gunicorn 1 worker", floors[1][1], None, None),
                    ("hello-world, gunicorn 2 workers", floors[2][1], None, None)):
                result = run_wrk(target, args.seconds, headers, paths)
                rows.setdefault(label, []).append(result)
                print(f"round {number + 1}: {label}: {result[0]:,.0f} req/s "
                      f"(p50 {result[1]}, p99 {result[2]})", flush=True)
    finally:
        for proc in (server, server2, site, *(p for p, _ in floors.values())):
            proc.terminate()
            proc.wait(timeout=30)

    median = {label: statistics.median(r[0] for r in results) for label, results in rows.items()}
    gunicorn = max(median["hello-world, gunicorn 1 worker"],
                   median["hello-world, gunicorn 2 workers"])
    site_floor = median["hello-world, our twisted.web site"]
    print(f"\nmachine: {machine()}; load {os.getloadavg()[0]:.2f}; size {args.size}, "
          f"{count:,} accounts; wrk -t1 -c8 -d{args.seconds:.0f}s, {args.rounds} rounds "
          f"alternating; KOMBIT system {kombit}\n")
    print("| request | req/s (median; range) | p50 / p99 (last round) | vs gunicorn floor "
          "| vs our site's hello-world |")
    print("|---|---|---|---|---|")
    for label, results in rows.items():
        values = [r[0] for r in results]
        print(f"| {label} | {median[label]:,.0f} ({min(values):,.0f}-{max(values):,.0f}) | "
              f"{results[-1][1]} / {results[-1][2]} | {median[label] / gunicorn:.2f} | "
              f"{median[label] / site_floor:.2f} |")


if __name__ == "__main__":
    main()
