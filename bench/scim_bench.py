"""SCIM throughput with wrk on loopback: idm-facade serve vs a hello-world Flask app.

Both run the same way (Flask in twisted.web's WSGIResource on a thread pool, one process),
so the ratio shows what SCIM work costs on top of serving any Flask request. Optionally
(``--peer``) the python-scim peer server scim2-server is installed into a separate venv, seeded
with 10,000 users (with work emails) and a 5,000-member group, and measured on the same four
requests with the same wrk settings.

The facade keeps finished list responses per snapshot, so a repeated identical query is
answered from that cache. The "unique query" rows defeat it (wrk appends a different unused
parameter to every request) and show what a list request costs when it is not a repeat.

    python -m bench.scim_bench --size XL [--peer] [--duration 10] [--connections 32]
                               [--workers 1 2] [--audit-sync full normal]

``--workers`` is passed to ``idm-facade serve``; with several counts the facade is started
once per count, one after the other, and every facade row is measured for each (labelled
"--workers N" unless the only count is 1). ``--audit-sync`` does the same for the access log's
``[audit] sync`` setting (default: only the default, "normal").

The store is a copy of ``bench.datasets.demo_store(size)`` in a temporary directory (the
access-log records the run writes go there, not into the shared bench store).

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
import statistics
import subprocess
import sys
import tempfile
import threading
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
from idm_facade.runtime.http import http_site
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
    """Start a server and wait for the line announcing its URL; keep draining its output so
    a chatty server never blocks on a full pipe."""
    env = dict(env or os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=env, cwd=ROOT)
    deadline = time.time() + timeout
    while time.time() < deadline:
        line = proc.stdout.readline()  # type: ignore[union-attr]
        if not line:
            break
        found = re.search(pattern, line)
        if found:
            threading.Thread(target=proc.stdout.read, daemon=True).start()  # type: ignore
            return proc, found.group(1)
    proc.kill()
    raise SystemExit(f"{cmd[0]} did not start")


#: wrk script: append a parameter the server ignores, different on every request and thread,
#: so no two requests share a query string (defeats the list-response cache).
UNIQUE_LUA = """
local counter = 0
local threads = 0
function setup(thread)
  threads = threads + 1
  thread:set("tid", threads)
end
function request()
  counter = counter + 1
  return wrk.format(nil, wrk.path .. "&unique=" .. tid .. "-" .. counter)
end
"""


def wrk(url: str, token: str | None, duration: int, connections: int,
        unique: bool = False) -> tuple[float, str]:
    cmd = ["wrk", "-t2", f"-c{connections}", f"-d{duration}s", "--timeout", "30s", "--latency"]
    if token:
        cmd += ["-H", f"Authorization: Bearer {token}"]
    script = None
    if unique:
        script = Path(tempfile.mkstemp(suffix=".lua")[1])
        script.write_text(UNIQUE_LUA)
        cmd += ["-s", str(script)]
    try:
        out = subprocess.run(cmd + [url], capture_output=True, text=True, check=True).stdout
    finally:
        if script is not None:
            script.unlink()
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    latency = re.search(r"Latency\s+(\S+)", out).group(1)  # type: ignore[union-attr]
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if errors:
        raise SystemExit(f"wrk saw {errors.group(1)} error responses for {url}")
    return rps, latency


def q(text: str) -> str:
    return urllib.parse.quote(text, safe="")


def ensure_db(size: str, path: Path | None) -> str:
    """A SQLite store holding demo ``size``: ``path`` as given, else a temporary copy of the
    shared bench store (built once by bench.datasets)."""
    if path is not None:
        url = f"sqlite:///{path}"
        if not path.exists():
            print(f"generating demo municipality {size} into {path} ...", flush=True)
            subprocess.run([PY, "-c", "from idm_facade.cli import main; main()", "demo-data",
                            "--size", size, "--db", url], check=True, cwd=ROOT)
        return url
    from bench.datasets import demo_store

    cwd = os.getcwd()
    os.chdir(ROOT)
    try:
        shared = Path(demo_store(size).removeprefix("sqlite:///")).resolve()
    finally:
        os.chdir(cwd)
    copy = Path(tempfile.mkdtemp(prefix="scim-bench-")) / shared.name
    shutil.copyfile(shared, copy)
    return f"sqlite:///{copy}"


def targets(base: str, token: str) -> dict[str, str]:
    """Pick the users and the ~5,000-member group the URLs name (through SCIM itself)."""
    client = httpx.Client(base_url=base, headers={"Authorization": f"Bearer {token}"},
                          timeout=300)
    total = client.get("/Users", params={"count": 0}).json()["totalResults"]
    middle = client.get("/Users", params={"startIndex": total // 2, "count": 50}).json()
    user = next(r for r in middle["Resources"] if any(
        e.get("type") == "work" for e in r.get("emails", [])))
    mail = next(e["value"] for e in user["emails"] if e.get("type") == "work")
    # the smallest group with at least 5,000 members (else the largest): in the XL demo the
    # roles everyone holds have ~48,000 members, org units at most ~2,400
    best, best_key = None, None
    start = 1
    while True:
        page = client.get("/Groups", params={"startIndex": start, "count": 200,
                                              "attributes": "members.value"}).json()
        for group in page["Resources"]:
            size = len(group.get("members", []))
            key = (0, size) if size >= 5000 else (1, -size)
            if best_key is None or key < best_key:
                best, best_key = group, key
        start += 200
        if start > page["totalResults"]:
            break
    assert best is not None
    return {"userName": user["userName"], "mail": mail, "group": best["id"],
            "members": str(len(best.get("members", []))), "users": str(total)}


def peer_version(venv: Path) -> str:
    out = subprocess.run([str(venv / "bin" / "python"), "-c",
                          "import importlib.metadata as m; print(m.version('scim2-server'))"],
                         capture_output=True, text=True, check=False).stdout.strip()
    return out or "?"


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def peer(duration: int, connections: int) -> tuple[dict[str, tuple[float, str]], str]:
    """scim2-server (own venv under the temp dir, not the project's) with 10,000 users and
    one 5,000-member group; returns the wrk results and the peer's version."""
    venv = Path(tempfile.gettempdir()) / "scim2-server-venv"
    if not (venv / "bin" / "scim2-server").exists():
        subprocess.run([PY, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "scim2-server"], check=True)
    token = "peer-bench-token"
    port = free_port()
    proc, base = start([str(venv / "bin" / "scim2-server"), "--hostname", "127.0.0.1",
                        "--port", str(port), "--bearer-token", token],
                       rf"(http://127\.0\.0\.1:{port}/v2)", timeout=60)
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
        size = len(client.get(f"/Groups/{gid}").json().get("members", []))
        total = client.get("/Users", params={"count": 0}).json()["totalResults"]
        print(f"peer seeded: {total} users, group with {size} members", flush=True)
        urls = request_urls(base, "user5000", "user5000@kommune.example", gid)
        results = {}
        for name, url in urls.items():
            wrk(url, token, 2, connections)  # warm up, like ours
            results[name] = wrk(url, token, duration, connections)
            print(f"peer {name}: {results[name][0]:.1f} req/s, mean {results[name][1]}",
                  flush=True)
        return results, peer_version(venv)
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


def request_urls(base: str, user: str, mail: str, group: str) -> dict[str, str]:
    """The four benchmarked requests, by row label (the same for the facade and the peer)."""
    by_name = f'userName eq "{user}"'
    by_mail = f'emails[type eq "work"].value eq "{mail}"'
    return {
        "userName eq": f"{base}/Users?filter={q(by_name)}",
        "emails[type eq work].value eq": f"{base}/Users?filter={q(by_mail)}",
        "startIndex=5001&count=100": f"{base}/Users?startIndex=5001&count=100",
        "5,000-member group, excludedAttributes=members":
            f"{base}/Groups/{group}?excludedAttributes=members",
    }


def paired(hello_url: str, url: str, token: str, connections: int, seconds: int,
           rounds: int = 9) -> list[float]:
    """``url`` against the hello-world app, measured alternately (hello, facade, hello,
    facade, ..., hello): each facade run is compared with the mean of the hello-world runs
    just before and just after it, so drift of the shared machine cancels to first order."""
    ratios = []
    before = wrk(hello_url, None, seconds, connections)[0]
    for _ in range(rounds):
        ours = wrk(url, token, seconds, connections)[0]
        after = wrk(hello_url, None, seconds, connections)[0]
        hello_rps = (before + after) / 2
        ratios.append(ours / hello_rps)
        print(f"paired: hello-world {before:.0f} / {after:.0f} req/s around facade "
              f"{ours:.0f} req/s ({ours / hello_rps:.0%})", flush=True)
        before = after
    return ratios


def facade_rows(base: str, token: str, t: dict[str, str],
                args: argparse.Namespace) -> dict[str, tuple[float, str]]:
    """wrk over the facade's four requests, repeated and with unique query strings."""
    urls = request_urls(base, t["userName"], t["mail"], t["group"])
    results = {}
    for label, target in urls.items():
        wrk(target, token, 2, args.connections)  # warm up (caches, thread pool)
        results[label] = wrk(target, token, args.duration, args.connections)
        print(f"{label}: {results[label][0]:.0f} req/s, mean {results[label][1]}", flush=True)
    for label in ("userName eq", "emails[type eq work].value eq", "startIndex=5001&count=100"):
        unique = f"{label} (unique query)"
        results[unique] = wrk(urls[label], token, args.duration, args.connections, unique=True)
        print(f"{unique}: {results[unique][0]:.0f} req/s, mean {results[unique][1]}",
              flush=True)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="XL", choices=["S", "M", "L", "XL"])
    parser.add_argument("--db", default=None,
                        help="SQLite file (default: a temporary copy of the bench demo store)")
    parser.add_argument("--duration", type=int, default=8)
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--threads", type=int, default=32)
    parser.add_argument("--workers", type=int, nargs="+", default=[1],
                        help="idm-facade serve --workers; several counts are measured one "
                             "after the other in the same run")
    parser.add_argument("--audit-sync", nargs="+", default=["normal"],
                        choices=["full", "normal"],
                        help="[audit] sync of the facade; several are measured one after "
                             "the other")
    parser.add_argument("--pairs", type=int, default=9,
                        help="facade userName eq runs measured between hello-world runs")
    parser.add_argument("--peer", action="store_true", help="also measure scim2-server")
    parser.add_argument("--peer-connections", type=int, default=4,
                        help="wrk connections for the peer (its slow requests run one after "
                             "another under the GIL: many connections only add latency)")
    args = parser.parse_args()
    if ensure_wrk() is None:
        print("wrk is not installed and cannot be installed here: skipping the SCIM bench")
        return
    url = ensure_db(args.size, Path(args.db) if args.db else None)
    if not args.db:  # the temporary copy goes when the run ends
        import atexit

        atexit.register(shutil.rmtree, Path(url.removeprefix("sqlite:///")).parent, True)
    from idm_facade.access.clients import ClientRegistry
    from idm_facade.config import Config
    from store.engine import make_engine

    engine = make_engine(url)
    registry = ClientRegistry(engine, Config())
    name = f"bench-{os.getpid()}"
    token = registry.add(name, "scim", "default")
    engine.dispose()
    # The hello-world app stays up: besides its own row it is measured in turn with the
    # facade's userName eq (see ``paired``), since single figures drift on a shared machine.
    hello, hello_url = start([PY, "-c", HELLO, str(args.threads)], r"HELLO (\S+)")
    results: dict[str, tuple[float, str]] = {}
    paired_ratios: dict[str, list[float]] = {}
    wrk(hello_url, None, 2, args.connections)
    results["hello-world Flask (same server)"] = wrk(hello_url, None, args.duration,
                                                      args.connections)
    print(f"hello-world: {results['hello-world Flask (same server)'][0]:.0f} req/s",
          flush=True)
    try:
        for workers, sync in [(w, s) for w in args.workers for s in args.audit_sync]:
            suffix = ("" if args.workers == [1] else f" (--workers {workers})") + (
                "" if args.audit_sync == ["normal"] else f" (audit sync = {sync})")
            config = Path(url.removeprefix("sqlite:///")).with_name(f"idm-{sync}.toml")
            config.write_text(f'[audit]\nsync = "{sync}"\n')
            started = time.time()
            server, base = start([PY, "-c", "from idm_facade.cli import main; main()", "serve",
                                  "--db", url, "--scim-port", "0", "--threads",
                                  str(args.threads), "--workers", str(workers),
                                  "--config", str(config)],
                                 r"SCIM\s+(http://\S+/scim/v2)")
            try:
                print(f"facade{suffix} up in {time.time() - started:.1f}s", flush=True)
                t = targets(base, token)
                print(f"targets: {t}", flush=True)
                results.update({label + suffix: value for label, value in
                                facade_rows(base, token, t, args).items()})
                by_name = request_urls(base, t["userName"], t["mail"], t["group"])["userName eq"]
                paired_ratios["userName eq" + suffix] = paired(
                    hello_url, by_name, token, args.connections, max(args.duration // 2, 3),
                    args.pairs)
            finally:
                stop(server)
    finally:
        stop(hello)
        engine = make_engine(url)
        ClientRegistry(engine, Config()).revoke(name)
        engine.dispose()
    peer_results, version = (peer(max(args.duration, 10), args.peer_connections) if args.peer
                              else ({}, ""))
    hello_rps = results["hello-world Flask (same server)"][0]
    print()
    print(f"Machine: {machine()}. Demo size {args.size} ({t['users']} users; group with "
          f"{t['members']} members). wrk -t2 -c{args.connections} -d{args.duration}s."
          + (f" Peer: scim2-server {version}, 10,000 users, 5,000-member group, wrk -t2 "
             f"-c{args.peer_connections} -d{max(args.duration, 10)}s." if version else ""))
    print()
    print("| Request | req/s | mean latency | vs hello-world | scim2-server req/s | "
          "peer mean latency | ours / peer |")
    print("|---|---|---|---|---|---|---|")
    for label, (rps, latency) in results.items():
        ratio = f"{rps / hello_rps:.0%}"
        found = peer_results.get(re.sub(r" \((unique query|--workers \d+|audit sync = \w+)\)",
                                        "", label))
        peer_cell = f"{found[0]:.1f}" if found else "-"
        peer_latency = found[1] if found else "-"
        times = f"{rps / found[0]:.0f}x" if found and found[0] else "-"
        print(f"| {label} | {rps:.0f} | {latency} | {ratio} | {peer_cell} | {peer_latency} "
              f"| {times} |")
    print()
    for label, ratios in paired_ratios.items():
        ordered = sorted(ratios)
        print(f"{label} / hello-world, measured in turn ({len(ratios)} runs, each against the "
              f"hello-world runs around it): {', '.join(f'{r:.0%}' for r in ratios)}; median "
              f"{statistics.median(ratios):.0%}, middle half {ordered[len(ordered) // 4]:.0%}-"
              f"{ordered[(3 * len(ordered)) // 4]:.0%}")


if __name__ == "__main__":
    main()
