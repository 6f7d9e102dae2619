"""The directory's planner against its brute-force oracle, refresh, and snapshot swaps."""

from __future__ import annotations

import threading
import weakref
from datetime import datetime

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from idm_facade.directory import Directory, Policy
from idm_facade.directory import filters as f
from idm_facade.directory.entries import Entry
from idm_facade.directory.policy import ALL, TRUSTED
from idm_facade.directory.snapshot import Snapshot, rewrite
from schemas.attributes import ACCOUNT, ALL_KINDS, ATTRIBUTES, INTEGER, UNIT
from store.engine import make_engine
from tests.orgbuilder import OrgBuilder

ACCOUNTS = frozenset({ACCOUNT})


@pytest.fixture(scope="module")
def directory(demo_db: str) -> Directory:
    return Directory(make_engine(demo_db, create=False))


def _samples(directory: Directory) -> dict[str, list]:
    """Real values per logical attribute, so random filters actually match things."""
    found: dict[str, list] = {}
    for entry in directory.snapshot.live()[::7]:
        for name, values in entry.attrs.items():
            logical = name.split("@", 1)[0]
            if logical == "title@SENSITIVE":
                logical = "title"
            found.setdefault(logical, [])
            if len(found[logical]) < 12:
                found[logical].extend(values[:2])
    return found


FILTER_ATTRS = ["userName", "displayName", "givenName", "familyName", "title", "active",
                "cpr", "employeeNumber", "department", "unit", "ancestor", "kle", "role",
                "memberOf", "emails.value", "phoneNumbers.value", "manager", "kind",
                "unitType", "hierarchy", "member", "orgUnitPath", "created", "nickName",
                "uidNumber", "gidNumber"]


def filters(samples: dict[str, list]) -> st.SearchStrategy[f.Filter]:
    """Random filter trees over real attribute values (and some non-values)."""

    def value_for(attr: str) -> st.SearchStrategy:
        known = samples.get(attr) or ["x"]
        if ATTRIBUTES[attr].type == INTEGER:
            # Neighbours of real numbers probe range edges; digits as text and junk too.
            ints = [v for v in known if isinstance(v, int)] or [0]
            return st.one_of(st.sampled_from(known),
                             st.sampled_from(ints).flatmap(lambda v: st.integers(v - 2, v + 2)),
                             st.sampled_from([str(ints[0]), "nope", 0, 2**40]))
        return st.one_of(st.sampled_from(known), st.sampled_from(["nope", "A", "1"]))

    def leaf(attr: str) -> st.SearchStrategy[f.Filter]:
        text_value = value_for(attr).map(lambda v: v if not isinstance(v, str) else v)
        spec = ATTRIBUTES[attr]
        options = [
            text_value.map(lambda v: f.Eq(attr, v)),
            st.just(f.Present(attr)),
            text_value.map(lambda v: f.Ge(attr, v)),
            text_value.map(lambda v: f.Le(attr, v)),
            text_value.map(lambda v: f.Gt(attr, v)),
            text_value.map(lambda v: f.Lt(attr, v)),
        ]
        if spec.type == "string":
            def cut(v: object, start: int, stop: int) -> str:
                return str(v)[start:stop]

            options += [
                value_for(attr).map(lambda v: f.Substring(attr, initial=cut(v, 0, 2))),
                value_for(attr).map(lambda v: f.Substring(attr, any=(cut(v, 1, 3),))),
                value_for(attr).map(lambda v: f.Substring(attr, final=cut(v, -2, None))),
                value_for(attr).map(lambda v: f.Substring(attr, initial=cut(v, 0, 1),
                                                          any=(cut(v, 2, 3),),
                                                          final=cut(v, -1, None))),
            ]
        return st.one_of(*options)

    leaves = st.sampled_from(FILTER_ATTRS).flatmap(leaf)
    value_paths = st.sampled_from(samples.get("emails.value") or ["x"]).map(
        lambda v: f.Any_("emails", f.And((f.Eq("type", "work"), f.Substring("value", any=(
            str(v)[:3],))))))
    base = st.one_of(leaves, value_paths, st.sampled_from([f.TRUE, f.FALSE]))
    return st.recursive(base, lambda children: st.one_of(
        st.lists(children, min_size=1, max_size=4).map(lambda xs: f.And(tuple(xs))),
        st.lists(children, min_size=1, max_size=4).map(lambda xs: f.Or(tuple(xs))),
        children.map(f.Not),
    ), max_leaves=8)


POLICIES = [Policy(), TRUSTED, ALL,
            Policy(name="narrow", kinds=ACCOUNTS, attributes=frozenset({"userName", "title"}))]


def test_planner_equals_brute_force(directory: Directory) -> None:
    """Property: on random filters and every policy, the planner returns exactly what
    checking every entry returns."""
    snap = directory.snapshot
    samples = _samples(directory)
    assert len(snap) > 300

    @settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
    @given(flt=filters(samples), policy=st.sampled_from(POLICIES),
           kinds=st.sampled_from([ACCOUNTS, ALL_KINDS, frozenset({UNIT})]))
    def check(flt: f.Filter, policy: Policy, kinds: frozenset[str]) -> None:
        universe = snap.visible_handles(policy, kinds)
        physical = rewrite(flt, policy)
        assert snap.select(physical, universe) == snap.brute_force(physical, universe)

    check()


def test_planner_finds_known_entries(directory: Directory) -> None:
    snap = directory.snapshot
    account = next(e for e in snap.entries if e.kind == ACCOUNT)
    name = account.first("userName")
    hits = snap.search(f.Eq("userName", name.upper()), kinds=ACCOUNTS, policy=Policy())
    assert [e.id for e in hits] == [account.id]
    prefix = snap.search(f.Substring("userName", initial=name[:2]), kinds=ACCOUNTS,
                         policy=Policy())
    assert account in prefix and all(e.first("userName").lower().startswith(name[:2].lower())
                                     for e in prefix)


def test_hidden_attributes_behave_as_absent(directory: Directory) -> None:
    snap = directory.snapshot
    with_cpr = next(e for e in snap.entries if e.attrs.get("cpr"))
    cpr = with_cpr.first("cpr")
    # A person may hold several accounts: every one of them carries the person's CPR.
    holders = [e for e in snap.live() if e.kind == ACCOUNT and cpr in e.attrs.get("cpr", ())]
    assert with_cpr in holders
    assert snap.search(f.Eq("cpr", cpr), kinds=ACCOUNTS, policy=ALL) == holders
    assert snap.search(f.Eq("cpr", cpr), kinds=ACCOUNTS, policy=Policy()) == []
    assert snap.search(f.Present("cpr"), kinds=ACCOUNTS, policy=Policy()) == []
    everyone = snap.search(f.TRUE, kinds=ACCOUNTS, policy=Policy())
    assert snap.search(f.Not(f.Eq("cpr", cpr)), kinds=ACCOUNTS, policy=Policy()) == everyone


def test_internal_addresses_hidden_from_public_clients(directory: Directory) -> None:
    snap = directory.snapshot
    entry = next(e for e in snap.entries if e.attrs.get("emails.value@INTERNAL"))
    mail = entry.first("emails.value@INTERNAL")
    assert entry in snap.search(f.Eq("emails.value", mail), kinds=ACCOUNTS, policy=TRUSTED)
    assert entry not in snap.search(f.Eq("emails.value", mail), kinds=ACCOUNTS,
                                    policy=Policy())
    path = f.Any_("emails", f.Eq("value", mail))
    assert entry in snap.search(path, kinds=ACCOUNTS, policy=TRUSTED)
    assert entry not in snap.search(path, kinds=ACCOUNTS, policy=Policy())


def populated_directorate(snap: Snapshot) -> Entry:
    """A unit right below a root whose subtree holds accounts with roles.

    Which unit that is depends on the demo's reference day (the generator draws ids and
    dates from one random stream), so it is looked for, never assumed to be the first."""
    for entry in snap.live():
        if entry.kind == UNIT and entry.attrs.get("parent") and \
                len(entry.attrs.get("ancestor", ())) == 2 and snap.search(
                    f.And((f.Eq("ancestor", entry.id), f.Present("role"))), kinds=ACCOUNTS,
                    policy=Policy()):
            return entry
    raise AssertionError("the demo has no directorate with accounts")


def test_subtree_policy_limits_universe_and_counts(directory: Directory) -> None:
    snap = directory.snapshot
    unit = populated_directorate(snap)
    limited = Policy(name="subtree", subtrees=(unit.id,))
    seen = snap.search(f.TRUE, kinds=ACCOUNTS, policy=limited)
    assert seen and all(unit.id in e.attrs["ancestor"] for e in seen)
    assert len(seen) < len(snap.search(f.TRUE, kinds=ACCOUNTS, policy=Policy()))


def test_results_are_stably_ordered(directory: Directory) -> None:
    snap = directory.snapshot
    by_name = snap.search(f.TRUE, kinds=ACCOUNTS, policy=Policy(), sort_by="userName")
    names = [e.first("userName").casefold() for e in by_name]
    assert names == sorted(names)
    by_id = snap.search(f.TRUE, kinds=ACCOUNTS, policy=Policy())
    assert [e.id for e in by_id] == sorted(e.id for e in by_id)


def test_refresh_after_write_and_atomic_swap(tmp_path) -> None:
    """A write becomes visible after refresh; concurrent readers only ever see whole
    snapshots (each reader sees both of a pair of accounts written together, or neither)."""
    engine = make_engine(f"sqlite:///{tmp_path / 'idm.db'}")
    org = OrgBuilder(engine)
    unit = org.unit("Rådhus")
    directory = Directory(engine)
    assert directory.snapshot.search(f.TRUE, kinds=ACCOUNTS, policy=Policy()) == []
    torn: list[int] = []
    stop = threading.Event()

    def reader() -> None:
        while not stop.is_set():
            snap = directory.snapshot
            names = {e.first("userName") for e in snap.search(f.TRUE, kinds=ACCOUNTS,
                                                               policy=Policy())}
            pairs = {n[:-1] for n in names}
            for pair in pairs:
                if {pair + "a", pair + "b"} - names:
                    torn.append(1)

    threads = [threading.Thread(target=reader) for _ in range(3)]
    for t in threads:
        t.start()
    from store import models as m
    from store.engine import write_session

    for i in range(5):
        with write_session(engine, actor="test") as session:
            person = m.Person(given_name="P", surname=str(i))
            session.add(person)
            session.flush()
            for suffix in "ab":
                session.add(m.Account(username=f"u{i}{suffix}", username_key=f"u{i}{suffix}",
                                      it_system_id=org.ad, person_id=person.id))
        assert directory.refresh() is True
    stop.set()
    for t in threads:
        t.join()
    assert not torn
    assert directory.refresh() is False  # nothing new
    names = {e.first("userName") for e in directory.snapshot.search(
        f.TRUE, kinds=ACCOUNTS, policy=Policy())}
    assert names == {f"u{i}{s}" for i in range(5) for s in "ab"}
    assert unit


def test_validity_boundary_refresh_without_write(tmp_path) -> None:
    """An engagement dated in the future shows up once the clock passes its start."""
    engine = make_engine(f"sqlite:///{tmp_path / 'idm.db'}")
    org = OrgBuilder(engine)
    unit = org.unit("Skole")
    person = org.person("Ida", "Future")
    start = datetime(2030, 1, 1)
    org.engagement(person, unit, valid_from=start)
    account = org.account(person, "ida")
    now = [datetime(2029, 12, 31)]
    directory = Directory(engine, clock=lambda: now[0])
    entry = directory.snapshot.get(account)
    assert entry.first("active") is False and not entry.attrs.get("unit")
    assert directory.snapshot.next_boundary == start
    assert directory.refresh() is False
    now[0] = datetime(2030, 1, 2)
    assert directory.refresh() is True
    entry = directory.snapshot.get(account)
    assert entry.first("active") is True and entry.attrs["unit"] == (unit,)


def test_sensitive_titles_cannot_be_probed_in_value_paths(tmp_path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'idm.db'}")
    org = OrgBuilder(engine)
    unit = org.unit("Jobcenter")
    person = org.person("Flex", "Ansat")
    org.engagement(person, unit, title=org.title("Flexjob", sensitive=True))
    account = org.account(person, "flex")
    snap = Directory(engine).snapshot
    probe = f.Any_("engagements", f.Eq("title", "Flexjob"))
    granted = Policy(name="titles", sensitive_titles=True)
    assert [e.id for e in snap.search(probe, kinds=ACCOUNTS, policy=granted)] == [account]
    assert snap.search(probe, kinds=ACCOUNTS, policy=Policy()) == []
    assert snap.search(f.Eq("title", "Flexjob"), kinds=ACCOUNTS, policy=Policy()) == []
    assert snap.get(snap.entries[0].id) is snap.entries[0]  # handle 0 is a real handle


def test_references_to_hidden_entries_cannot_be_probed(directory: Directory) -> None:
    """A subtree-limited client filtering groups by a hidden account's id finds nothing,
    as if the reference did not exist; by a visible account's id it finds its groups."""
    from idm_facade.directory.view import ClientView
    from schemas.attributes import ROLE

    snap = directory.snapshot
    unit = populated_directorate(snap)
    limited = ClientView.of(snap, Policy(name="subtree", subtrees=(unit.id,)))
    everything = ClientView.of(snap, Policy())
    inside = limited.search(f.Present("role"), kinds=ACCOUNTS)[0]
    outside = next(e for e in snap.live() if e.kind == ACCOUNT and e.attrs.get("role")
                   and unit.id not in e.attrs.get("ancestor", ()))
    roles = frozenset({ROLE})
    assert everything.search(f.Eq("member", outside.id), kinds=roles)
    assert limited.search(f.Eq("member", outside.id), kinds=roles) == []
    assert limited.search(f.Substring("member", outside.id[:8], (), None), kinds=roles) == []
    assert limited.search(f.Eq("member", inside.id), kinds=roles)
    assert limited.search(f.Eq("manager", outside.id), kinds=ACCOUNTS) == []


def test_survivors_of_full_collections_are_frozen(directory: Directory) -> None:
    """Long-lived objects built after the snapshot (caches, layouts) leave the collector's
    sight at the next full collection, so full collections stay short; garbage cycles made
    before it are still collected."""
    import gc

    assert directory.snapshot is not None
    long_lived = [[i] for i in range(20_000)]  # tracked containers (lists), kept alive
    cycle: list = []
    cycle.append(cycle)
    probe = weakref.ref(_Probe(cycle))
    del cycle
    before = gc.get_freeze_count()
    gc.collect()
    assert probe() is None  # the garbage cycle was collected, not frozen
    assert gc.get_freeze_count() >= before + len(long_lived)
    assert gc.get_count()[0] < 100  # nothing young left behind


class _Probe:
    """A garbage-collectable object held only by a reference cycle."""

    def __init__(self, cycle: list) -> None:
        self.cycle = cycle
        cycle.append(self)
