"""POSIX numbers: unique, deterministic from the ids, and never moved within a process.

The allocator is checked on its own with tiny ranges (where collisions are certain), then the
directory on a copy of the S demo store: with a range barely larger than the organisation,
so that most numbers collide and probing decides them, a refresh after a new hire and an
ended account keeps every existing number, never reuses one, and the incremental and full
paths agree.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from idm_facade.config import Config
from idm_facade.directory import Directory, build_snapshot
from idm_facade.directory.posix import PosixNumbers, PosixRange, PosixRangeError, home
from idm_facade.directory.snapshot import Snapshot
from schemas.attributes import ACCOUNT, GROUP_KINDS
from store.engine import make_engine, write_session
from tests.serving import copy_store
from tests.test_incremental import _debug, _end_account, _new_hire, _same

IDS = [f"id-{i:03d}" for i in range(40)]


def test_numbers_are_unique_in_range_and_independent_of_input_order() -> None:
    rng = PosixRange(uid_base=1000, gid_base=5000, size=50)
    first = PosixNumbers(rng)
    first.allocate(IDS, IDS)
    shuffled = list(IDS)
    random.Random(7).shuffle(shuffled)
    second = PosixNumbers(rng)
    second.allocate(shuffled, reversed(shuffled))
    uids = [first.uid(i) for i in IDS]
    gids = [first.gid(i) for i in IDS]
    assert len(set(uids)) == len(IDS) and len(set(gids)) == len(IDS)
    assert all(1000 <= n < 1050 for n in uids)
    assert all(5001 <= n <= 5050 for n in gids)  # 5000 is the no-unit primary group
    assert uids == [second.uid(i) for i in IDS]
    assert gids == [second.gid(i) for i in IDS]
    # 40 ids in 50 slots collide; the smallest id of each home keeps it (linear probing in
    # id order), so the first id always sits at home.
    assert first.uid(IDS[0]) == home(IDS[0], 1000, 50)
    assert sum(first.uid(i) != home(i, 1000, 50) for i in IDS) > 0


def test_a_child_keeps_numbers_never_reuses_and_leaves_its_parent_alone() -> None:
    parent = PosixNumbers(PosixRange(size=60))
    parent.allocate(IDS[:30], ())
    before = {i: parent.uid(i) for i in IDS[:30]}
    child = parent.child()
    child.allocate(IDS, ())  # 10 newcomers, some of which sort before existing ids
    assert {i: child.uid(i) for i in IDS[:30]} == before
    assert len({child.uid(i) for i in IDS}) == len(IDS)
    assert "id-035" not in parent.uids.by_id  # copy-on-write: the parent did not change
    # An id that left keeps its number reserved: the next newcomer probes past it.
    grandchild = child.child()
    grandchild.allocate(["zz-new"], ())
    assert grandchild.uid("zz-new") not in set(before.values())


def test_exhausted_or_malformed_range_is_a_clear_error() -> None:
    numbers = PosixNumbers(PosixRange(size=5))
    with pytest.raises(PosixRangeError, match="posix_range_size"):
        numbers.allocate(IDS[:6], ())
    with pytest.raises(PosixRangeError, match="posix_uid_base"):
        PosixRange.from_config(Config({"directory": {"posix_uid_base": 0}}))
    with pytest.raises(PosixRangeError, match="4294967294"):
        PosixRange(uid_base=2**32 - 10, size=100)
    got = PosixRange.from_config(Config({"directory": {"posix_uid_base": 20000,
                                                       "posix_gid_base": 30000}}))
    assert (got.uid_base, got.gid_base, got.size) == (20000, 30000, 1_000_000_000)


def _numbers(snap: Snapshot) -> tuple[dict[str, int], dict[str, int]]:
    uids = {e.id: e.first("uidNumber") for e in snap.live() if e.kind == ACCOUNT}
    gids = {e.id: e.first("gidNumber") for e in snap.live() if e.kind in GROUP_KINDS}
    return uids, gids


def _check_unique(snap: Snapshot, rng: PosixRange) -> None:
    uids, gids = _numbers(snap)
    assert None not in uids.values() and None not in gids.values()
    assert len(set(uids.values())) == len(uids)
    assert len(set(gids.values())) == len(gids)
    for entry in snap.live():
        if entry.kind == ACCOUNT:
            primary = entry.first("gidNumber")
            units = entry.attrs.get("unit", ())
            assert primary == rng.no_unit_gid if not units else primary in gids.values()


@pytest.fixture
def store_copy(demo_db: str, tmp_path: Path) -> str:
    return copy_store(demo_db, tmp_path / "idm.db")


def test_tight_range_refresh_keeps_numbers_and_matches_full_build(store_copy: str) -> None:
    engine = make_engine(store_copy, create=False)
    probe = build_snapshot(engine, Directory(engine).snapshot.at)
    uids, gids = _numbers(probe)
    # Barely room for everyone: most numbers are decided by probing, not by their home.
    rng = PosixRange(uid_base=200000, gid_base=300000, size=max(len(uids), len(gids)) + 8)
    directory = Directory(engine, posix=rng)
    _check_unique(directory.snapshot, rng)
    start_uids, start_gids = _numbers(directory.snapshot)
    displaced = sum(n != home(i, rng.uid_base, rng.size) for i, n in start_uids.items())
    assert displaced > len(start_uids) // 4
    # A build from nothing depends only on the ids: a second process agrees.
    again = build_snapshot(engine, directory.snapshot.at, numbers=PosixNumbers(rng))
    assert _numbers(again) == (start_uids, start_gids)

    for write in (_new_hire, _end_account):
        with write_session(engine, actor="test") as session:
            write(session)
        old = directory.snapshot
        assert directory.refresh() is True
        snap = directory.snapshot
        assert snap.drift > 0  # the incremental path was taken
        _check_unique(snap, rng)
        new_uids, new_gids = _numbers(snap)
        old_uids, old_gids = _numbers(old)
        assert all(new_uids[i] == n for i, n in old_uids.items() if i in new_uids)
        assert all(new_gids[i] == n for i, n in old_gids.items() if i in new_gids)
        # The incremental patch equals a full build that keeps the numbers handed out.
        full = build_snapshot(engine, snap.at, numbers=old.posix.child())
        assert not _debug(snap, full)
        _same(snap, full)
    ended = set(start_uids) - set(_numbers(directory.snapshot)[0])
    hired = set(_numbers(directory.snapshot)[0]) - set(start_uids)
    assert len(ended) == 1 and len(hired) == 1
    # The ended account's number stays reserved in this process.
    assert start_uids[ended.pop()] != _numbers(directory.snapshot)[0][hired.pop()]

    # A forced full rebuild in the same process moves nobody either.
    kept = _numbers(directory.snapshot)
    assert directory.refresh(force=True) is True
    assert directory.snapshot.drift == 0
    assert _numbers(directory.snapshot) == kept


def test_default_range_numbers_are_homes_and_paths_agree(store_copy: str) -> None:
    engine = make_engine(store_copy, create=False)
    directory = Directory(engine)
    rng = directory.posix
    uids, gids = _numbers(directory.snapshot)
    assert all(n == home(i, rng.uid_base, rng.size) for i, n in uids.items())
    assert all(n == home(i, rng.gid_base + 1, rng.size) for i, n in gids.items())
    with write_session(engine, actor="test") as session:
        _new_hire(session)
    assert directory.refresh() is True
    fresh = build_snapshot(engine, directory.snapshot.at)  # a new process, from nothing
    assert _numbers(directory.snapshot) == _numbers(fresh)
    assert len(_numbers(fresh)[0]) == len(uids) + 1
