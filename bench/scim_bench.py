"""SCIM throughput with wrk on loopback: idm-facade serve vs a hello-world Flask app.

Both run the same way (Flask in twisted.web's WSGIResource on a thread pool, one process),
so the ratio shows what SCIM work costs on top of serving any Flask request. Optionally
(``--peer``) the python-scim peer server scim2-server is installed into a separate venv, seeded
with 10,000 users and a 5,000-member group, and measured on the same URLs.

    python -m bench.scim_bench --size XL [--peer] [--duration 10]

Needs wrk (installed with apt-get when missing and possible; otherwise the bench says so and
stops). Prints a Markdown table for BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.parse
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable

HELLO = """
import sys
from flask import Flask
from twisted.internet import reactor
from idm_facade.serve import http_site
app = Flask("hello")
@app.get("/hello")
def hello():
    return "Hello, World!"
port = reactor.listenTCP(0, http_site(reactor, app, int(sys.argv[1])), interface="127.0.0.1")
print("HELLO http://127.0.0.1:%d/hello" % port.getHost().port, flush=True)
reactor.run()
"""


def ensure_wrk() -> str | None:
    found = shutil.which("wrk")
    if found:
        return found
    if os.geteuid() == 0 and shutil.which("apt-get"):
        subprocess.run(["apt-get", "install", "-y", "wrk"], capture_output=True, check=False)
    return shutil.which("wrk")


def machine() -> str:
    cpu = platform.processor() or "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        mem = next(int(x.split()[1]) for x in Path("/proc/meminfo").read_text().splitlines()
                   if x.startswith("MemTotal"))
        ram = f"{mem / 1024 / 1024:.0f} GiB RAM"
    except (OSError, StopIteration):
        ram = "? RAM"
    return f"{os.cpu_count()} CPUs ({cpu}), {ram}, Python {platform.python_version()}"


def start(cmd: list[str], pattern: str, env: dict | None = None,
          timeout: float = 900) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            env=env, cwd=ROOT)
    deadline = time.time() + timeout
    while time.time() < deadline:
        line = proc.stdout.readline()  # type: ignore[union-attr]
        if not line:
            break
        found = re.search(pattern, line)
        if found:
            return proc, found.group(1)
    proc.kill()
    raise SystemExit(f"{cmd[0]} did not start")


def wrk(url: str, token: str | None, duration: int, connections: int) -> tuple[float, str]:
    cmd = ["wrk", "-t2", f"-c{connections}", f"-d{duration}s", "--latency"]
    if token:
        cmd += ["-H", f"Authorization: Bearer {token}"]
    out = subprocess.run(cmd + [url], capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    latency = re.search(r"Latency\s+(\S+)", out).group(1)  # type: ignore[union-attr]
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if errors:
        raise SystemExit(f"wrk saw {errors.group(1)} error responses for {url}")
    return rps, latency


def q(text: str) -> str:
    return urllib.parse.quote(text, safe="")


def ensure_db(size: str, path: Path) -> str:
    url = f"sqlite:///{path}"
    if not path.exists():
        print(f"generating demo municipality {size} into {path} ...", flush=True)
        subprocess.run([PY, "-c", "from idm_facade.cli import main; main()", "demo-data",
                        "--size", size, "--db", url], check=True, cwd=ROOT)
    return url


def targets(base: str, token: str) -> dict[str, str]:
    """Pick the users and the ~5,000-member group the URLs name (through SCIM itself)."""
    client = httpx.Client(base_url=base, headers={"Authorization": f"Bearer {token}"},
                          timeout=300)
    total = client.get("/Users", params={"count": 0}).json()["totalResults"]
    middle = client.get("/Users", params={"startIndex": total // 2, "count": 50}).json()
    user = next(r for r in middle["Resources"] if any(
        e.get("type") == "work" for e in r.get("emails", [])))
    mail = next(e["value"] for e in user["emails"] if e.get("type") == "work")
    best, best_gap = None, None
    start = 1
    while True:
        page = client.get("/Groups", params={"startIndex": start, "count": 200,
                                              "attributes": "members.value"}).json()
        for group in page["Resources"]:
            gap = abs(len(group.get("members", [])) - 5000)
            if best_gap is None or gap < best_gap:
                best, best_gap = group, gap
        start += 200
        if start > page["totalResults"]:
            break
    assert best is not None
    return {"userName": user["userName"], "mail": mail, "group": best["id"],
            "members": str(len(best.get("members", []))), "users": str(total)}


def peer(duration: int, connections: int) -> dict[str, float]:
    """scim2-server 0.8.x with 10,000 users and one 5,000-member group."""
    venv = Path(tempfile.gettempdir()) / "scim2-server-venv"
    if not (venv / "bin" / "scim2-server").exists():
        subprocess.run([PY, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "scim2-server"], check=True)
    token = "peer-bench-token"
    proc, base = start([str(venv / "bin" / "scim2-server"), "--hostname", "127.0.0.1",
                        "--port", "18999", "--bearer-token", token],
                       r"(http://127\.0\.0\.1:18999/v2)", timeout=60)
    try:
        time.sleep(1)
        client = httpx.Client(base_url=base, headers={"Authorization": f"Bearer {token}",
                                                      "Content-Type": "application/scim+json"},
                              timeout=300)
        ids = []
        for chunk in range(10):
            ops = []
            for i in range(chunk * 1000, chunk * 1000 + 1000):
                ops.append({"method": "POST", "path": "/Users", "bulkId": f"u{i}", "data": {
                    "schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"],
                    "userName": f"user{i}", "externalId": f"ext{i}",
                    "name": {"givenName": f"Given{i}", "familyName": f"Family{i}"},
                    "emails": [{"value": f"user{i}@kommune.example", "type": "work",
                                "primary": True}]}})
            out = client.post("/Bulk", content=json.dumps({
                "schemas": ["urn:ietf:params:scim:api:messages:2.0:BulkRequest"],
                "Operations": ops}))
            out.raise_for_status()
            ids += [o["location"].rsplit("/", 1)[1] for o in out.json()["Operations"]]
        group = client.post("/Groups", content=json.dumps({
            "schemas": ["urn:ietf:params:scim:schemas:core:2.0:Group"], "displayName": "big",
            "members": [{"value": i} for i in ids[:5000]]}))
        group.raise_for_status()
        gid = group.json()["id"]
        peer_name = 'userName eq "user5000"'
        peer_mail = 'emails[type eq "work"].value eq "user5000@kommune.example"'
        urls = {
            "userName eq": f"{base}/Users?filter={q(peer_name)}",
            "emails[type eq work].value eq": f"{base}/Users?filter={q(peer_mail)}",
            "startIndex=5001&count=100": f"{base}/Users?startIndex=5001&count=100",
            "5,000-member group, excludedAttributes=members":
                f"{base}/Groups/{gid}?excludedAttributes=members",
        }
        return {name: wrk(url, token, duration, connections)[0] for name, url in urls.items()}
    finally:
        stop(proc)


def stop(proc: subprocess.Popen) -> None:
    """Terminate a server we started; kill it if it does not stop in time."""
    proc.terminate()
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="XL", choices=["S", "M", "L", "XL"])
    parser.add_argument("--db", default=None, help="SQLite file (default: a temp file per size)")
    parser.add_argument("--duration", type=int, default=8)
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--threads", type=int, default=32)
    parser.add_argument("--peer", action="store_true", help="also measure scim2-server")
    args = parser.parse_args()
    if ensure_wrk() is None:
        print("wrk is not installed and cannot be installed here: skipping the SCIM bench")
        return
    path = Path(args.db or Path(tempfile.gettempdir()) / f"idm-bench-{args.size}.db")
    url = ensure_db(args.size, path)
    from idm_facade.auth import ClientRegistry
    from idm_facade.config import Config
    from store.engine import make_engine

    engine = make_engine(url)
    registry = ClientRegistry(engine, Config())
    name = f"bench-{os.getpid()}"
    token = registry.add(name, "scim", "default")
    engine.dispose()
    started = time.time()
    server, base = start([PY, "-c", "from idm_facade.cli import main; main()", "serve",
                          "--db", url, "--scim-port", "0", "--threads", str(args.threads)],
                         r"SCIM\s+(http://\S+/scim/v2)")
    hello, hello_url = start([PY, "-c", HELLO, str(args.threads)], r"HELLO (\S+)")
    try:
        print(f"facade up in {time.time() - started:.1f}s", flush=True)
        t = targets(base, token)
        print(f"targets: {t}", flush=True)
        by_name = 'userName eq "{}"'.format(t["userName"])
        by_mail = 'emails[type eq "work"].value eq "{}"'.format(t["mail"])
        urls = {
            "hello-world Flask (same server)": (hello_url, None),
            "userName eq": (f"{base}/Users?filter={q(by_name)}", token),
            "emails[type eq work].value eq": (f"{base}/Users?filter={q(by_mail)}", token),
            "startIndex=5001&count=100": (f"{base}/Users?startIndex=5001&count=100", token),
            "5,000-member group, excludedAttributes=members": (
                f"{base}/Groups/{t['group']}?excludedAttributes=members", token),
        }
        results = {}
        for label, (target, tok) in urls.items():
            wrk(target, tok, 2, args.connections)  # warm up (caches, thread pool)
            results[label] = wrk(target, tok, args.duration, args.connections)
            print(f"{label}: {results[label][0]:.0f} req/s, mean {results[label][1]}",
                  flush=True)
    finally:
        for proc in (server, hello):
            stop(proc)
        engine = make_engine(url)
        ClientRegistry(engine, Config()).revoke(name)
        engine.dispose()
    peer_results = peer(args.duration, args.connections) if args.peer else {}
    hello_rps = results["hello-world Flask (same server)"][0]
    print()
    print(f"Machine: {machine()}. Demo size {args.size} ({t['users']} users; group with "
          f"{t['members']} members). wrk -t2 -c{args.connections} -d{args.duration}s.")
    print()
    print("| Request | req/s | mean latency | vs hello-world | scim2-server req/s | ratio |")
    print("|---|---|---|---|---|---|")
    for label, (rps, latency) in results.items():
        ratio = f"{rps / hello_rps:.0%}"
        peer_rps = peer_results.get(label)
        peer_cell = f"{peer_rps:.1f}" if peer_rps else "-"
        times = f"{rps / peer_rps:.0f}x" if peer_rps else "-"
        print(f"| {label} | {rps:.0f} | {latency} | {ratio} | {peer_cell} | {times} |")


if __name__ == "__main__":
    main()
