"""Soak: mixed SCIM and LDAP load for a long time, with a client that does not read and a
client that is revoked half-way; reports memory over time and records lost.

usage: python -m bench.soak [--seconds 1800] [--size S]   (``make soak``)

Load, all over loopback against one ``idm-facade serve`` of the demo store:
- 2 threads of SCIM reads (``userName eq`` of random accounts, and list pages);
- 2 threads of LDAP searches (random uids, and substring searches) on kept connections;
- every 20 s a new connection that pipelines 200 whole-tree searches and never reads (the
  last three stay open);
- a client searching in a loop that is revoked at a third of the run: after the revoke its
  open connection must be refused within a few seconds.

At the end: the server's resident memory in the first and the last quarter of the run (the
median of the samples; "flat" means the last is within 15 % + 20 MB of the first), every
answered SCIM request and LDAP search against the access log's records of its client and
status (lost = answered without a record), ``audit verify``, and the answers the revoked
client got more than 3 s after its revoke (must be 0).
"""

from __future__ import annotations

import argparse
import random
import shutil
import socket
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import ldap
from ldaptor.protocols import pureldap

from bench.datasets import demo_store, machine
from idm_facade.access.audit import AuditLog
from idm_facade.access.clients import ClientRegistry
from idm_facade.config import load_config
from tests.serving import copy_store, ldap_bind, rss_mb, start_serve


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=1800)
    parser.add_argument("--size", default="S")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="idm-soak-"))
    db = copy_store(demo_store(args.size), tmp / "idm.db")
    config_path = tmp / "idm.toml"
    config_path.write_text(f'[directory]\nstate_dir = "{tmp}"\n'
                           f'[audit]\ndb = "sqlite:///{tmp}/audit.db"\n')
    from store.engine import make_engine

    engine = make_engine(db)
    registry = ClientRegistry(engine, load_config(config_path))
    token = registry.add("soak-scim", "scim", "default")
    steady = registry.add("soak-ldap", "ldap", "default")
    doomed = registry.add("soak-revoked", "ldap", "default")
    pusher = registry.add("soak-unread", "ldap", "default")
    from idm_facade.directory import Directory

    snap = Directory(engine).snapshot
    names = [str(e.first("userName")) for e in snap.entries if e.kind == "account"]
    base = registry.base
    serving = start_serve(db, config_path)
    stop = threading.Event()
    answered = {"scim": 0, "ldap": 0}
    errors: list[str] = []
    lock = threading.Lock()

    def scim_load(seed: int) -> None:
        rnd = random.Random(seed)
        with httpx.Client(base_url=f"{serving.scim_base}/scim/v2", timeout=60,
                          headers={"Authorization": f"Bearer {token}"}) as http:
            while not stop.is_set():
                if rnd.random() < 0.8:
                    params = {"filter": f'userName eq "{rnd.choice(names)}"'}
                else:
                    params = {"startIndex": str(rnd.randint(1, 200)), "count": "20"}
                response = http.get("/Users", params=params)
                if response.status_code == 200:
                    with lock:
                        answered["scim"] += 1
                else:
                    errors.append(f"SCIM {response.status_code}")

    def ldap_conn(secret: str, name: str) -> ldap.ldapobject.LDAPObject:
        return ldap_bind(serving.ldap_url, registry.bind_dn_of(name), secret, timeout=60)

    def ldap_load(seed: int) -> None:
        rnd = random.Random(seed)
        conn = ldap_conn(steady, "soak-ldap")
        while not stop.is_set():
            flt = f"(uid={rnd.choice(names)})" if rnd.random() < 0.8 else \
                f"(cn=*{rnd.choice('aeiou')}{rnd.choice('nrst')}*)"
            try:
                conn.search_ext_s(f"ou=people,{base}", ldap.SCOPE_SUBTREE, flt, ["uid", "cn"],
                                  sizelimit=50)
                with lock:
                    answered["ldap"] += 1
            except ldap.SIZELIMIT_EXCEEDED:
                with lock:
                    answered["ldap"] += 1
            except ldap.LDAPError as exc:
                errors.append(f"LDAP {exc}")
        conn.unbind_s()

    def unread_load() -> None:
        kept: list[socket.socket] = []
        request = pureldap.LDAPSearchRequest(baseObject=base.encode(), scope=2,
                                             filter=pureldap.LDAPFilter_present("objectClass"),
                                             attributes=[b"*"])
        bind = pureldap.LDAPBindRequest(dn=registry.bind_dn_of("soak-unread").encode(),
                                        auth=pusher.encode())
        while not stop.wait(0 if not kept else 20):
            sock = socket.create_connection(("127.0.0.1", serving.ldap_ports[0]))
            sock.sendall(pureldap.LDAPMessage(id=1, value=bind).toWire())
            sock.sendall(b"".join(pureldap.LDAPMessage(id=2 + i, value=request).toWire()
                                  for i in range(200)))
            kept.append(sock)
            while len(kept) > 3:
                kept.pop(0).close()
        for sock in kept:
            sock.close()

    revoked_at: list[float] = []
    late_answers = [0]

    def revoked_load() -> None:
        conn = ldap_conn(doomed, "soak-revoked")
        while not stop.wait(0.05):
            try:
                conn.search_s(f"ou=people,{base}", ldap.SCOPE_BASE, "(objectClass=*)")
                if revoked_at and time.monotonic() - revoked_at[0] > 3:
                    late_answers[0] += 1
            except ldap.INSUFFICIENT_ACCESS:
                pass
            except ldap.LDAPError as exc:
                errors.append(f"revoked client: {exc}")

    threads = [threading.Thread(target=scim_load, args=(i,)) for i in range(2)]
    threads += [threading.Thread(target=ldap_load, args=(10 + i,)) for i in range(2)]
    threads += [threading.Thread(target=unread_load), threading.Thread(target=revoked_load)]
    for t in threads:
        t.start()
    samples: list[tuple[float, float]] = []
    started = time.monotonic()
    try:
        while time.monotonic() - started < args.seconds:
            time.sleep(5)
            elapsed = time.monotonic() - started
            samples.append((elapsed, rss_mb(serving.proc.pid)))
            if not revoked_at and elapsed > args.seconds / 3:
                registry.revoke("soak-revoked")
                revoked_at.append(time.monotonic())
            if serving.proc.poll() is not None:
                errors.append("the server exited")
                break
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=120)
        serving.stop()
    _report(args, tmp, db, config_path, samples, answered, errors, late_answers[0])
    engine.dispose()
    shutil.rmtree(tmp, ignore_errors=True)


def _report(args: argparse.Namespace, tmp: Path, db: str, config_path: Path,
            samples: list[tuple[float, float]], answered: dict[str, int], errors: list[str],
            late: int) -> None:
    audit = AuditLog(make_engine_for(db), load_config(config_path))
    recorded_scim = sum(1 for r in audit.query(client="soak-scim") if r.status == "200")
    recorded_ldap = sum(1 for r in audit.query(client="soak-ldap")
                        if r.operation == "search" and r.status in ("success", "4"))
    verified = audit.verify()
    audit.close()
    quarter = max(1, len(samples) // 4)
    first = statistics.median(m for _, m in samples[:quarter])
    last = statistics.median(m for _, m in samples[-quarter:])
    peak = max(m for _, m in samples)
    flat = last <= first * 1.15 + 20
    print(f"Machine: {machine()}")
    print(f"soak: {args.seconds:.0f} s, size {args.size}")
    print(f"answered: SCIM {answered['scim']}, LDAP {answered['ldap']}")
    print(f"recorded: SCIM {recorded_scim}, LDAP {recorded_ldap}; lost: "
          f"{max(0, answered['scim'] - recorded_scim) + max(0, answered['ldap'] - recorded_ldap)}")
    print(f"memory (MB): first quarter {first:.0f}, last quarter {last:.0f}, peak {peak:.0f}: "
          f"{'flat' if flat else 'GROWING'}")
    print(f"revoked client answered more than 3 s after its revoke: {late}")
    print(f"audit verify: {'OK' if verified.ok else 'BROKEN ' + verified.message}, "
          f"{verified.checked} records")
    print(f"errors: {len(errors)} {sorted(set(errors))[:5]}")
    ok = flat and late == 0 and verified.ok and answered["scim"] <= recorded_scim \
        and answered["ldap"] <= recorded_ldap and not errors
    sys.exit(0 if ok else 1)


def make_engine_for(db: str):  # noqa: ANN201 - an Engine
    from store.engine import make_engine

    return make_engine(db, create=False)


if __name__ == "__main__":
    main()
