"""A restricted client's snapshot: the directory as it would be if what it may not see did
not exist.

A client limited to subtrees of the organisation, or to some kinds of entries, must learn
nothing of the rest, through any attribute and through any filter. Hiding values one by one
at render time leaves every derived attribute to chance (an account's department, cost
centre, division, title, path and KLE all come from its primary engagement, which may sit in a
hidden unit) and leaves every filter form to be checked separately (substring, ordering and
value paths on references). So the rule is one construction instead:

- **Subtrees.** The units outside the client's subtrees do not exist for it. Its accounts are
  built again, by the same :class:`~idm_facade.directory.entries.EntryBuilder`, from their
  engagements in visible units only: the primary engagement is the first visible one, and
  department, cost centre, title, employee number, path, KLE, manager and the primary group
  follow from it. A unit's path and manager stop at the top of the visible part;
  its ``hierarchy`` and an account's ``division`` are shown only when that unit is visible.
  Roles an account holds through a hidden unit stay (they are the account's roles) but do not
  name the unit.
- **Kinds.** Entries of kinds the client may not read keep their attributes but are never
  referenced: their ids leave ``member``, ``memberOf``, ``unit``, ``parent``, ``manager``
  and the engagement and role elements, and an account's ``roles`` go away entirely when
  roles are not readable.

The projected entries are indexed as a snapshot of their own, so filters, totals, paging,
sort order and entity tags are computed from what the client sees, with the same planner. A
projection is made once per snapshot and policy, on first use, and goes away with the
snapshot. When the snapshot was patched from another (an incremental refresh) whose
projection for the policy exists, and the change leaves the set of entries the client sees
and (for subtrees) every unit as it was, the projection is patched too: only the changed
entries are projected again (about the cost of the refresh itself, instead of a build of
everything the client sees: 12 s for a directorate at XL, BENCHMARKS.md).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import replace
from threading import Lock
from typing import Any

from idm_facade.directory.entries import Entry, EntryBuilder, _version
from idm_facade.directory.policy import Policy
from idm_facade.directory.snapshot import REMOVED, CacheKey, Snapshot
from schemas.attributes import ACCOUNT, ALL_KINDS, ATTRIBUTES, REFERENCE, ROLE, UNIT

#: Reference attributes whose values name other entries (not the entry itself or its person).
ENTRY_REFS = frozenset(
    name for name, spec in ATTRIBUTES.items()
    if spec.type == REFERENCE and name not in ("id", "personId", "ancestor")
)

_PROJECTIONS: CacheKey[dict[str, Snapshot]] = CacheKey("directory.projections", carry=True)
_lock = Lock()
#: How projections were made ("full", "patched"): for tests and benchmarks.
MADE: Counter[str] = Counter()


def restricted(policy: Policy) -> bool:
    """Does the policy hide some entries (so the client needs its own projection)?"""
    return policy.subtrees is not None or policy.kinds != ALL_KINDS


def is_projected(base: Snapshot, policy: Policy) -> bool:
    """Is the snapshot ``policy`` reads ready (so reading it costs no projection build)?"""
    if not restricted(policy):
        return True
    found = base.peek(_PROJECTIONS)
    return found is not None and policy.fingerprint in found


def projected(base: Snapshot, policy: Policy) -> Snapshot:
    """The snapshot ``policy`` reads: ``base`` itself when nothing is hidden, otherwise the
    projection (made once per snapshot and policy; concurrent first users wait for one)."""
    if not restricted(policy):
        return base
    found = base.cached(_PROJECTIONS, dict)
    key = policy.fingerprint
    snap = found.get(key)
    if snap is None:
        with _lock:
            snap = found.get(key)
            if snap is None:
                snap = _patch(base, policy)
                MADE["patched" if snap is not None else "full"] += 1
                if snap is None:
                    snap = project(base, policy)
                found[key] = snap
    return snap


class _VisibleUnitsBuilder(EntryBuilder):
    """An entry builder for which the units outside ``visible`` do not exist."""

    def __init__(self, base: Snapshot, visible: frozenset[str],
                 accounts: frozenset[str]) -> None:
        assert base.data is not None
        super().__init__(base.data, numbers=base.posix)
        self.visible = visible
        # A manager whose account the client cannot see is a vacant post to it: the walk
        # goes on up, as it would if that account did not exist.
        self.accounts_by_person = {
            person: [a for a in ids if a in accounts]
            for person, ids in self.accounts_by_person.items()}
        self.full_chains = self.chains
        self.chains = {u: _visible_part(chain, visible) for u, chain in self.chains.items()
                       if u in visible}
        units = base.data.units
        self.paths = {u: "\\".join(units[x].name for x in reversed(chain))
                      for u, chain in self.chains.items()}

    def _engagements(self, account: Any) -> list[Any]:
        return [e for e in super()._engagements(account) if e.org_unit_id in self.visible]

    def _directorate(self, unit_id: str | None,
                     chains: dict[str, tuple[str, ...]] | None = None) -> str | None:
        directorate = super()._directorate(unit_id, chains or self.full_chains)
        return directorate if directorate in self.visible else None

    def unit(self, unit: Any) -> Entry:
        """The unit as the client sees it, placed where it is in the whole tree: ``ancestor``
        (never shown, not filterable by clients) keeps the full chain, since LDAP's DIT
        regions and subtree policies address units by their place in it."""
        entry = super().unit(unit)
        entry.attrs["ancestor"] = self.full_chains.get(unit.id, (unit.id,))
        entry.version = _version(entry)
        return entry

    def _hierarchy(self, unit_id: str) -> str | None:
        chain = self.full_chains.get(unit_id, (unit_id,))
        return super()._hierarchy(unit_id) if chain[-1] in self.visible else None


def _visible_part(chain: tuple[str, ...], visible: frozenset[str]) -> tuple[str, ...]:
    """The chain (unit first, root last) up to its first hidden unit."""
    for position, unit in enumerate(chain):
        if unit not in visible:
            return chain[:position]
    return chain


def project(base: Snapshot, policy: Policy) -> Snapshot:
    """Build the projection of ``base`` for ``policy`` (see the module's docstring)."""
    admitted = base.visible_handles(policy, ALL_KINDS)
    kept = [base.entries[h] for h in sorted(admitted)]
    if policy.subtrees is not None and base.data is not None:
        kept = _rebuild_in_subtrees(base, policy, kept)
    ids = frozenset(e.id for e in kept)
    entries = [_without_hidden_refs(e, ids, policy) for e in kept]
    return Snapshot(entries, at=base.at, seq=base.seq, next_boundary=base.next_boundary,
                    data=base.data, grants=base.grants, posix=base.posix)


def _patch(base: Snapshot, policy: Policy) -> Snapshot | None:
    """The projection of ``base`` patched from the one of the snapshot it was patched from,
    or None when that cannot be done safely (no such projection, the visible entries
    changed, or a unit did under a subtree policy)."""
    origin = base.origin
    if origin is None:
        return None
    previous = origin.carried.get(_PROJECTIONS, {}).get(policy.fingerprint)
    if previous is None:
        return None
    admitted = base.visible_handles(policy, ALL_KINDS)
    ids = frozenset(base.entries[h].id for h in admitted)
    if ids != previous.by_id.keys():
        return None
    changed = [base.entries[base.by_id[i]] for i in sorted(origin.changed & ids)]
    if policy.subtrees is not None:
        if any(e.kind == UNIT for e in changed) or base.data is None:
            return None
        changed = _rebuild_in_subtrees(base, policy, changed, ids)
    entries = [_without_hidden_refs(e, ids, policy) for e in changed]
    return previous.patched(entries, set(), at=base.at, seq=base.seq,
                            next_boundary=base.next_boundary, data=base.data,
                            grants=base.grants, posix=base.posix)


def _rebuild_in_subtrees(base: Snapshot, policy: Policy, kept: list[Entry],
                         admitted: frozenset[str] | None = None) -> list[Entry]:
    """Accounts and units built again as if the units outside the subtrees did not exist
    (``admitted``: the ids the client sees, when ``kept`` holds only some of them)."""
    # the units in the subtrees, whatever kinds the client may list (the snapshot's one rule)
    in_subtrees = base.visible_handles(replace(policy, kinds=ALL_KINDS), frozenset({UNIT}))
    visible = {base.entries[h].id for h in in_subtrees}
    accounts = frozenset(i for i in admitted if base.entries[base.by_id[i]].kind == ACCOUNT) \
        if admitted is not None else frozenset(e.id for e in kept if e.kind == ACCOUNT)
    builder = _VisibleUnitsBuilder(base, frozenset(visible), accounts)
    data = base.data
    assert data is not None
    out: list[Entry] = []
    for entry in kept:
        if entry.kind == ACCOUNT and entry.id in data.accounts:
            out.append(builder.account(data.accounts[entry.id]))
        else:
            out.append(entry)
    # Units after accounts: their member lists are filled by the accounts' builds.
    return [builder.unit(data.units[e.id]) if e.kind == UNIT and e.id in data.units else e
            for e in out]


def _without_hidden_refs(entry: Entry, ids: frozenset[str], policy: Policy) -> Entry:
    """``entry`` without references to entries outside ``ids`` (a new entry if any go)."""
    if entry.kind == REMOVED:
        return entry
    attrs = entry.attrs
    changed: dict[str, tuple] = {}
    for name in ENTRY_REFS:
        values = attrs.get(name)
        if values:
            shown = tuple(v for v in values if str(v) in ids)
            if len(shown) != len(values):
                changed[name] = shown
    complex_ = entry.complex
    new_complex: dict[str, tuple[dict, ...]] = {}
    engagements = complex_.get("engagements", ())
    if any(e.get("unit") not in ids for e in engagements):
        new_complex["engagements"] = tuple(
            e if e.get("unit") in ids else {k: v for k, v in e.items() if k != "unit"}
            for e in engagements)
    grants = complex_.get("roles", ())
    if grants and ROLE not in policy.kinds:
        new_complex["roles"] = ()
    elif any(_hidden(g, ids) for g in grants):
        new_complex["roles"] = tuple(_grant_shown(g, ids) for g in grants)
    if not changed and not new_complex:
        return entry
    new_attrs = {k: v for k, v in {**attrs, **changed}.items() if v}
    projected_entry = replace(entry, attrs=new_attrs, complex={**complex_, **new_complex})
    projected_entry.version = _version(projected_entry)
    return projected_entry


def _hidden(grant: dict, ids: frozenset[str]) -> bool:
    return any(grant.get(key) and grant[key] not in ids for key in ("viaUnit", "viaRoleGroup"))


def _grant_shown(grant: dict, ids: Iterable[str]) -> dict:
    """A role element that names no hidden unit or role group."""
    return {k: (None if k in ("viaUnit", "viaRoleGroup") and v not in ids else v)
            for k, v in grant.items()}
