"""Directory benchmark: snapshot build, indexed queries, effective roles, change -> visible.

Run: ``.venv/bin/python -m bench.directory_bench [SIZES...]`` (default M L XL). Each size runs
in its own process so peak memory is that size's alone. Prints a Markdown table.
"""

from __future__ import annotations

import json
import resource
import statistics
import subprocess
import sys
import time

SIZES = ("M", "L", "XL")


def _time(fn, repeat: int) -> float:
    """Median seconds of ``fn()`` over ``repeat`` runs."""
    samples = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - started)
    return statistics.median(samples)


def measure(size: str) -> dict:
    """All figures for one size (runs inside a fresh process)."""
    import shutil
    import tempfile
    from pathlib import Path

    from bench.datasets import demo_store
    from idm_facade.directory import Directory, Policy, roles
    from idm_facade.directory import filters as f
    from schemas.attributes import ACCOUNT
    from store import models as m
    from store.engine import make_engine, write_session

    # The benchmark writes; work on a copy so the cached demo store stays as generated.
    source = Path(demo_store(size).removeprefix("sqlite:///"))
    copy = Path(tempfile.mkdtemp(prefix="idm-bench-")) / "idm.db"
    shutil.copy(source, copy)
    engine = make_engine(f"sqlite:///{copy}", create=False)
    started = time.perf_counter()
    directory = Directory(engine)
    build = time.perf_counter() - started
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    snap = directory.snapshot
    accounts = [e for e in snap.entries if e.kind == ACCOUNT]
    policy = Policy()
    kinds = frozenset({ACCOUNT})
    names = [e.first("userName") for e in accounts[:: max(1, len(accounts) // 200)]]

    def eq_queries() -> None:
        for name in names:
            snap.select(f.Eq("userName", name), snap.visible_handles(policy, kinds))

    eq_us = _time(eq_queries, 5) / len(names) * 1e6
    unit = accounts[0].attrs["unit"][0]
    mixed = f.And((f.Eq("unit", unit), f.Substring("familyName", any=("e",))))

    def and_query() -> None:
        snap.select(mixed, snap.visible_handles(policy, kinds))

    and_us = _time(and_query, 50) * 1e6
    matched = len(snap.select(f.Eq("unit", unit), snap.visible_handles(policy, kinds)))
    data = snap.data
    sample = [e.id for e in accounts[:: max(1, len(accounts) // 500)]]

    def role_calc() -> None:
        for account_id in sample:
            roles.effective_roles(data, account_id)

    roles_us = _time(role_calc, 3) / len(sample) * 1e6
    subtree_s, accounts_only_s, subtree_size, subtree_policy = _projections(snap)
    target = accounts[len(accounts) // 2]
    started = time.perf_counter()
    with write_session(engine, actor="bench") as session:
        person = session.get(m.Person, target.first("personId"))
        marker = f"Benchmark{time.time_ns()}"
        person.nickname_given_name = marker
    committed = time.perf_counter()
    assert directory.refresh() is True
    visible = time.perf_counter() - committed
    assert directory.snapshot.get(target.id).first("nickName", "").startswith(marker)
    from idm_facade.directory import projection

    made = projection.MADE["patched"]
    started = time.perf_counter()
    projection.projected(directory.snapshot, subtree_policy)
    patched_s = time.perf_counter() - started
    assert projection.MADE["patched"] == made + 1, "the projection was not patched"
    with write_session(engine, actor="bench") as session:
        account = session.get(m.Account, target.id)
        name = f"bench{time.time_ns()}"
        session.add(m.Account(username=name, username_key=name,
                              it_system_id=account.it_system_id, person_id=account.person_id))
    committed = time.perf_counter()
    assert directory.refresh() is True
    added = time.perf_counter() - committed
    assert directory.snapshot.search(f.Eq("userName", name), kinds=kinds, policy=policy)
    started = time.perf_counter()
    directory.refresh(force=True)
    full_refresh = time.perf_counter() - started
    shutil.rmtree(copy.parent, ignore_errors=True)
    return {
        "size": size, "accounts": len(accounts), "entries": len(snap),
        "build_s": round(build, 2), "peak_rss_mb": round(rss_mb),
        "eq_us": round(eq_us, 1), "and_us": round(and_us, 1), "and_matched": matched,
        "roles_us": round(roles_us, 1), "change_visible_s": round(visible, 3),
        "full_refresh_s": round(full_refresh, 2),
        "added_visible_s": round(added, 3),
        "write_s": round(committed - started, 3),
        "subtree_projection_s": round(subtree_s, 2), "subtree_entries": subtree_size,
        "patched_projection_s": round(patched_s, 3),
        "accounts_only_projection_s": round(accounts_only_s, 2),
    }


def _projections(snap) -> tuple[float, float, int, object]:
    """Seconds to build a restricted client's projection (once per snapshot and policy):
    for the directorate with the most entries under it, and for accounts only. The first is
    kept with the snapshot, so the next refresh can patch it."""
    from idm_facade.directory import Policy
    from idm_facade.directory.policy import ACCOUNTS_ONLY
    from idm_facade.directory.projection import project, projected
    from schemas.attributes import UNIT

    index = snap.equality["ancestor"]
    units = [e for e in snap.entries if e.kind == UNIT]
    roots = {e.id for e in units if not e.attrs.get("parent")}
    directorates = [e.id for e in units if set(e.attrs.get("parent", ())) & roots]
    top = max(directorates, key=lambda u: len(index.get(u.lower(), ())))
    policy = Policy(name="bench-subtree", subtrees=(top,))
    started = time.perf_counter()
    made = projected(snap, policy)
    subtree = time.perf_counter() - started
    started = time.perf_counter()
    project(snap, Policy(name="bench-accounts", kinds=ACCOUNTS_ONLY))
    return subtree, time.perf_counter() - started, len(made), policy


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "--one":
        print(json.dumps(measure(sys.argv[2])))
        return
    from bench.datasets import machine

    sizes = sys.argv[1:] or list(SIZES)
    rows = []
    for size in sizes:
        out = subprocess.run([sys.executable, "-m", "bench.directory_bench", "--one", size],
                             capture_output=True, text=True, check=True)
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    print(f"Machine: {machine()}\n")
    print("| size | accounts | entries | build (s) | peak RSS (MB) | userName eq (µs) "
          "| unit eq AND familyName co (µs, matched) | effective roles / account (µs) "
          "| change -> visible, incremental (s) | new account -> visible (s) "
          "| forced full rebuild (s) | subtree projection (s, entries) "
          "| accounts-only projection (s) | subtree projection patched after the change (s) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['size']} | {r['accounts']} | {r['entries']} | {r['build_s']} "
              f"| {r['peak_rss_mb']} | {r['eq_us']} | {r['and_us']} ({r['and_matched']}) "
              f"| {r['roles_us']} | {r['change_visible_s']} | {r['added_visible_s']} "
              f"| {r['full_refresh_s']} | {r['subtree_projection_s']} "
              f"({r['subtree_entries']}) | {r['accounts_only_projection_s']} "
              f"| {r['patched_projection_s']} |")


if __name__ == "__main__":
    main()
