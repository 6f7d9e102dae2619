"""Person binds: binds per second and latency through the facade against direct binds to the
same upstream directory (issue target: at least half of direct).

A real OpenLDAP slapd plays the municipality's AD (tests/upstream_ldap.py) with one user per
active account of the demo store; the facade is ``idm-facade serve`` with ``[ldap.upstream]``
pointing at it. Each client process keeps one connection and binds again and again as a
random person with the right password (``user@suffix`` through the facade, the user's DN
directly), alternating facade and direct rounds in one run so both see the same machine.
The
same facade with ``serve --workers 2`` is a row of its own (one Python process is one core),
and the facade's own service-account binds (no upstream) show what the upstream check adds.
The CPU time of the one-process facade per person bind is printed too: with the machine's
cores shared by clients, slapd and the facade, it is what bounds the rate.

Direct binds are the issue's floor, but nothing in the path can match them: every hop adds
two loopback crossings and two wake-ups to a bind that slapd answers in 60 us. So two
floors that sit in the path are measured as well (bench/proxies.py): OpenLDAP doing the
facade's job (slapd's ``remoteauth`` overlay: a local entry per user, the password checked
by the same upstream), HAProxy copying TCP, the cost of the hop alone, and a byte relay on
the facade's own stack (bench/relay.py), the cost of a hop written in Python on Twisted.

Person binds need TLS by default, so the facade and slapd are measured over LDAPS too (the
connections stay open: one handshake, then each record encrypted); and the facade as it runs
by default, with TLS on both hops (LDAPS from the client, LDAPS to the upstream, whose pooled
connections keep their sessions).

usage: python -m bench.person_bind_bench [--size S] [--seconds 5] [--procs 2] [--rounds 3]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import random
import statistics
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import ldap  # noqa: E402

from bench.datasets import demo_store, machine  # noqa: E402
from bench.proxies import (  # noqa: E402
    REMOTEAUTH_BASE,
    haproxy_tcp,
    slapd_remoteauth,
    twisted_relay,
)
from tests.serving import served_copy  # noqa: E402
from tests.upstream_ldap import BASE, UpstreamDirectory  # noqa: E402

SUFFIX = "kommune.test"


def _worker(url: str, names: list[tuple[str, str]], seconds: float, seed: int,
            q: mp.Queue) -> None:
    rng = random.Random(seed)
    if url.startswith("ldaps://"):  # the facade's self-signed certificate, the test CA's
        ldap.set_option(ldap.OPT_X_TLS_REQUIRE_CERT, ldap.OPT_X_TLS_NEVER)
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


def _cpu_seconds(pid: int) -> float:
    """User plus system CPU time of one process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="S")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--procs", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
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
    print(f"# load average at the start: {os.getloadavg()[0]:.2f}")
    print(f"# {args.size}: {len(users)} active accounts, each a user of the upstream slapd")
    rows = ("client", "direct", "haproxy", "relay", "remoteauth", "facade", "facade2",
            "direct_tls", "facade_tls", "facade_tls2")
    results: dict[str, list[tuple[float, int, float, float]]] = {k: [] for k in rows}
    cpu: list[float] = []
    with tempfile.TemporaryDirectory() as tmp, ExitStack() as stack:
        folder = Path(tmp)
        upstream = UpstreamDirectory(folder / "upstream", passwords)
        upstream.start()
        stack.callback(upstream.stop)
        remoteauth = stack.enter_context(slapd_remoteauth(
            folder / "remoteauth", upstream.url,
            {u: f"uid={u},ou=people,{BASE}" for u in passwords}))
        haproxy = stack.enter_context(haproxy_tcp(folder / "haproxy", "127.0.0.1",
                                                  upstream.port))
        relay, relay_pid = stack.enter_context(twisted_relay("127.0.0.1", upstream.port))
        relay_cpu: list[float] = []
        config = (f'[ldap.upstream]\nurls = ["{upstream.url}"]\n'
                  f'dn_template = "uid={{username}},ou=people,{BASE}"\n'
                  # the upstream in clear on loopback, as the other rows reach it
                  f'require_tls = false\n'
                  f'[ldap.persons]\nupn_suffixes = ["{SUFFIX}"]\n'
                  # the benchmark binds thousands of times from one address
                  f'address_lockout_after = 1000000\n'
                  # in clear on loopback, as the direct binds it is compared with
                  f'require_tls = false\n')
        # The defaults: LDAPS to the upstream too (checked against its test CA).
        both = config.replace(f'["{upstream.url}"]', f'["{upstream.ldaps_url}"]').replace(
            "require_tls = false\n", f'ca_file = "{upstream.ca_file}"\n', 1)
        servers = {}
        for label, workers, text in (("facade", 1, config), ("facade2", 2, config),
                                     ("facade_tls2", 1, both)):
            (folder / label).mkdir()
            servers[label] = stack.enter_context(served_copy(
                db, folder / label, text, (("bench", "ldap", "default"),), workers=workers,
                ldaps=True))
        one = servers["facade"].serving
        assert one is not None
        via = [(f"{u}@{SUFFIX}", p) for u, p in passwords.items()]
        direct = [(f"uid={u},ou=people,{BASE}", p) for u, p in passwords.items()]
        local = [(f"uid={u},ou=people,{REMOTEAUTH_BASE}", p) for u, p in passwords.items()]
        for copy in servers.values():
            assert copy.serving is not None
            run(copy.serving.ldap_url, via, args.procs, 1.0)  # warm-up: the pool fills
        service = [(servers["facade"].bind_dn("bench"), servers["facade"].secrets["bench"])]
        for _ in range(args.rounds):
            results["client"].append(run(one.ldap_url, service, args.procs, args.seconds))
            results["direct"].append(run(upstream.url, direct, args.procs, args.seconds))
            results["haproxy"].append(run(haproxy, direct, args.procs, args.seconds))
            before = _cpu_seconds(relay_pid)
            results["relay"].append(run(relay, direct, args.procs, args.seconds))
            relay_cpu.append((_cpu_seconds(relay_pid) - before)
                             / max(1.0, results["relay"][-1][0] * args.seconds))
            results["remoteauth"].append(run(remoteauth, local, args.procs, args.seconds))
            before = _cpu_seconds(one.proc.pid)
            results["facade"].append(run(one.ldap_url, via, args.procs, args.seconds))
            cpu.append((_cpu_seconds(one.proc.pid) - before)
                       / max(1.0, results["facade"][-1][0] * args.seconds))
            two = servers["facade2"].serving
            assert two is not None
            results["facade2"].append(run(two.ldap_url, via, args.procs, args.seconds))
            results["direct_tls"].append(run(upstream.ldaps_url, direct, args.procs,
                                             args.seconds))
            results["facade_tls"].append(run(f"ldaps://127.0.0.1:{one.ldap_ports[1]}", via,
                                             args.procs, args.seconds))
            tls2 = servers["facade_tls2"].serving
            assert tls2 is not None
            results["facade_tls2"].append(run(f"ldaps://127.0.0.1:{tls2.ldap_ports[1]}", via,
                                              args.procs, args.seconds))
    print(f"\n{args.procs} client processes, persistent connections, {args.seconds:.0f} s "
          f"per round, {args.rounds} rounds alternating; median (range) of the rounds\n")
    print("| target | binds/s | errors | p50 ms | p99 ms |")
    print("|---|---|---|---|---|")
    labels = {"facade": "idm-facade person bind (user@suffix, checked upstream)",
              "facade2": "the same, `serve --workers 2`",
              "direct": "slapd direct (user DN; the issue's floor)",
              "haproxy": "through HAProxy, TCP mode (user DN; the hop alone)",
              "relay": "through a Twisted byte relay (user DN; the hop on our stack)",
              "remoteauth": "slapd remoteauth, checked by the same upstream (local DN)",
              "client": "idm-facade service-account bind (no upstream)",
              "direct_tls": "slapd direct over LDAPS",
              "facade_tls": "idm-facade person bind over LDAPS (upstream in clear)",
              "facade_tls2": "idm-facade person bind, LDAPS on both hops (the defaults)"}
    median = {k: sorted(v)[len(v) // 2] for k, v in results.items()}
    for name in rows:
        rate, errors, p50, p99 = median[name]
        low, high = min(r[0] for r in results[name]), max(r[0] for r in results[name])
        print(f"| {labels[name]} | {rate:,.0f} ({low:,.0f}-{high:,.0f}) | {errors} | "
              f"{p50:.2f} | {p99:.2f} |")
    print(f"\nCPU of the one facade process per person bind: "
          f"{statistics.median(cpu) * 1e6:.0f} us (median of the rounds); of the Twisted "
          f"relay per bind: {statistics.median(relay_cpu) * 1e6:.0f} us")
    for name in ("facade", "facade2"):
        ratio = median[name][0] / median["direct"][0]
        print(f"{labels[name]} / direct binds per second: {ratio:.2f} (target >= 0.5; "
              f"floor: slapd direct binds, the upstream itself)")
    for name in ("facade_tls", "facade_tls2"):
        print(f"{labels[name]} / {labels['direct_tls']}: "
              f"{median[name][0] / median['direct_tls'][0]:.2f}")
    for name in ("haproxy", "relay", "remoteauth"):
        print(f"{labels[name]} / direct: {median[name][0] / median['direct'][0]:.2f}; "
              f"the facade's person bind / it: {median['facade'][0] / median[name][0]:.2f}")


if __name__ == "__main__":
    main()
