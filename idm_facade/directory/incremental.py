"""Incremental refresh: rebuild only the entries a batch of changes can affect.

A full build reads the whole store and rebuilds every entry; at the largest municipality that
takes seconds. Most changes touch one person or one unit, so instead we

1. re-read only the rows the change log names (and the rows that entered or left effect
   since the last snapshot, when a validity boundary has passed) into a copy of the loaded
   data;
2. work out which entries can depend on them (a person's accounts; every account and unit
   below a changed unit; the groups whose member lists move);
3. rebuild those entries and patch the indexes copy-on-write (:meth:`Snapshot.patched`).

Changes this module does not know how to scope (classes, IT systems, the role catalogue,
bulk imports) return None, and the caller does a full build. So does anything unexpected:
correctness first, speed where it is safe.
"""

from __future__ import annotations

import copy
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Engine, or_, select
from sqlalchemy.orm import Session

from idm_facade.directory.entries import DERIVED_DEPENDS, Entry, EntryBuilder, _version
from idm_facade.directory.load import (
    OrgData,
    next_boundary,
    postponed_values,
    system_role_links,
)
from idm_facade.directory.roles import unit_chains
from idm_facade.directory.snapshot import Snapshot
from schemas.attributes import ACCOUNT, UNIT
from store import models as m
from store.changelog import changes_since, last_seq

#: Store table -> (OrgData attribute, model) for the tables refreshed row by row.
_TABLES: dict[str, tuple[str, Any]] = {
    "person": ("persons", m.Person),
    "engagement": ("engagements", m.Engagement),
    "association": ("associations", m.Association),
    "manager": ("managers", m.Manager),
    "leave": ("leaves", m.Leave),
    "account": ("accounts", m.Account),
    "address": ("addresses", m.Address),
    "kle": ("kles", m.Kle),
    "org_unit": ("units", m.OrgUnit),
    "account_role_assignment": ("account_assignments", m.AccountRoleAssignment),
    "unit_role_assignment": ("unit_assignments", m.UnitRoleAssignment),
    "job_role": ("job_roles", m.JobRole),
    "role_group": ("role_groups", m.RoleGroup),
    "system_role": ("system_roles", m.SystemRole),
    "person_kle": ("person_kles", m.PersonKle),
    "manager_substitute": ("manager_substitutes", m.ManagerSubstitute),
}

#: Link tables reloaded with their owner: (owner table, OrgData attribute, table, owner
#: column, target column, as set).
_LINKS: tuple[tuple[str, str, Any, str, str, bool], ...] = (
    ("manager", "manager_responsibilities", m.manager_responsibility, "manager_id",
     "class_id", False),
    ("account", "account_engagements", m.account_engagement, "account_id", "engagement_id",
     False),
    ("kle", "kle_aspects", m.kle_aspect, "kle_id", "class_id", False),
    ("unit_role_assignment", "unit_assignment_titles", m.unit_assignment_title,
     "assignment_id", "class_id", True),
    ("unit_role_assignment", "unit_assignment_excepted_accounts",
     m.unit_assignment_excepted_account, "assignment_id", "account_id", True),
    ("unit_role_assignment", "unit_assignment_excepted_units", m.unit_assignment_excepted_unit,
     "assignment_id", "org_unit_id", True),
    ("role_group", "role_group_members", m.role_group_member, "role_group_id", "job_role_id",
     False),
)

#: Tables whose changes leave every entry in place (not rendered). Postponed constraint
#: values are read per request by the role API, from the reloaded map (:func:`_reload`).
_IGNORED = frozenset({"related_unit", "leave", "job_role_system_role", "postponed_constraint"})

#: Upper bound on touched rows for the incremental path; beyond it a full build is cheaper.
MAX_TOUCHED = 2000


def refresh(engine: Engine, old: Snapshot, at: datetime, directory_system: str
            ) -> Snapshot | None:
    """A new snapshot patched from ``old`` for the store as of ``at``; None = build fully."""
    data = old.data
    if data is None:
        return None
    with Session(engine) as session, session.begin():
        seq = last_seq(session)
        touched: dict[str, set[str]] = defaultdict(set)
        for change in changes_since(session, old.seq):
            if change.object_type == "change_log":
                continue
            if change.object_type not in _TABLES and change.object_type not in _IGNORED:
                return None
            if change.object_id:
                touched[change.object_type].add(change.object_id)
        if old.next_boundary is not None and at >= old.next_boundary:
            for table, (_, model) in _TABLES.items():
                crossed = select(model.id).where(or_(
                    (model.valid_from > old.at) & (model.valid_from <= at),
                    (model.valid_to > old.at) & (model.valid_to <= at)))
                touched[table].update(session.scalars(crossed))
            if _catalogue_crossed(session, old.at, at):
                return None
        if sum(len(v) for v in touched.values()) > MAX_TOUCHED:
            return None
        new = _reload(session, data, touched, at)
        new.seq = seq
        new.next_boundary = next_boundary(session, at)
    return _patch(old, data, new, touched, at, directory_system)


def _catalogue_crossed(session: Session, since: datetime, at: datetime) -> bool:
    for model in (m.Klasse, m.ItSystem):
        query = select(model.id).where(or_(
            (model.valid_from > since) & (model.valid_from <= at),
            (model.valid_to > since) & (model.valid_to <= at))).limit(1)
        if session.scalar(query) is not None:
            return True
    return False


def _reload(session: Session, data: OrgData, touched: dict[str, set[str]], at: datetime
            ) -> OrgData:
    new = copy.copy(data)
    new.at = at
    changed_attrs = {_TABLES[t][0] for t in touched if t in _TABLES}
    changed_attrs |= {attr for owner, attr, *_ in _LINKS if owner in touched}
    # Link maps count as their owner's table for the derived look-ups.
    changed_attrs |= {_TABLES[owner][0] for owner, *_ in _LINKS if owner in touched}
    # Keep a derived look-up only when its tables are known and none of them changed.
    new.derived = {name: value for name, value in data.derived.items()
                   if name in DERIVED_DEPENDS and not (DERIVED_DEPENDS[name] & changed_attrs)}
    for table, ids in touched.items():
        if table not in _TABLES:
            continue
        attr, model = _TABLES[table]
        query = select(model.__table__).where(model.id.in_(ids), model.valid_at(at))
        fresh = {row.id: row for row in session.execute(query)}
        setattr(new, attr, _replaced(getattr(data, attr), ids, fresh))
    if touched.keys() & {"job_role", "job_role_system_role"}:
        new.job_role_system_roles = system_role_links(session)
    # An assignment's values go with it (deleting one cascades in the database, unlogged).
    if touched.keys() & {"account_role_assignment", "postponed_constraint"}:
        new.postponed_constraints = postponed_values(session)
    for owner, attr, link_table, owner_col, target_col, as_set in _LINKS:
        link_ids = touched.get(owner)
        if not link_ids:
            continue
        found: dict[str, list[str]] = defaultdict(list)
        for row in session.execute(select(link_table.c[owner_col], link_table.c[target_col])
                                   .where(link_table.c[owner_col].in_(link_ids))):
            found[row[0]].append(row[1])
        values = {key: set(v) if as_set else sorted(v) for key, v in found.items()}
        setattr(new, attr, _replaced(getattr(data, attr), link_ids, values))
    return new


def _replaced(old: dict[str, Any], ids: set[str], fresh: dict[str, Any]) -> dict[str, Any]:
    """``old`` with the rows named by ``ids`` replaced by ``fresh`` (or dropped), in id order.

    A full build holds every table in id order (``load._by_id``), and multi-valued attributes
    follow that order; so must a patched table, or an incremental refresh would list the same
    values in another order than a full build. A replaced row keeps its place; only a row new
    to the table forces a re-sort.
    """
    rows = dict(old)
    added = False
    for row_id in ids:
        if row_id in fresh:
            added = added or row_id not in rows
            rows[row_id] = fresh[row_id]
        else:
            rows.pop(row_id, None)
    return dict(sorted(rows.items())) if added else rows


def _subtree(chains: dict[str, tuple[str, ...]], roots: set[str]) -> set[str]:
    return {unit for unit, chain in chains.items() if roots.intersection(chain)}


@dataclass
class _Reach:
    """Which entries a batch of changes can affect (ids), worked out from the changed rows."""

    persons: set[str] = field(default_factory=set)
    accounts: set[str] = field(default_factory=set)
    unit_roots: set[str] = field(default_factory=set)  # their whole subtrees are affected
    direct_units: set[str] = field(default_factory=set)  # only the unit itself
    units: set[str] = field(default_factory=set)  # unit_roots with their subtrees
    role_ids: set[str] = field(default_factory=set)
    group_ids: set[str] = field(default_factory=set)


def _patch(old: Snapshot, old_data: OrgData, new: OrgData, touched: dict[str, set[str]],
           at: datetime, directory_system: str) -> Snapshot | None:
    numbers = old.posix
    if numbers is None:
        return None  # no record of the posix numbers handed out: rebuild fully
    builder = EntryBuilder(new, directory_system, numbers.child())
    chains = new.derived["chains"]
    old_chains = old_data.derived.get("chains") or unit_chains(old_data.units)
    reach = _rows_reach(old_data, new, touched)
    _catalogue_reach(old, old_data, new, touched, reach)
    _spread(old_data, new, chains, old_chains, reach)
    # New accounts and units get posix numbers in sorted id order, as a full build gives them.
    system_id = builder.system_id
    builder.numbers.allocate(
        (a for a in reach.accounts
         if getattr(new.accounts.get(a), "it_system_id", None) == system_id),
        [*(u for u in (reach.units | reach.direct_units | reach.unit_roots) if u in new.units),
         *(r for r in reach.role_ids if r in new.job_roles),
         *(g for g in reach.group_ids if g in new.role_groups)])
    changed: list[Entry] = []
    removed: set[str] = set()
    grants = dict(old.grants)
    moved = _rebuild_accounts(old, new, builder, reach, changed, removed, grants)
    if not _rebuild_groups(old, new, builder, reach, moved, changed, removed):
        return None
    for entry in changed:
        if entry.kind == ACCOUNT and entry.id in removed:
            removed.discard(entry.id)
    return old.patched(changed, removed, at=at, seq=new.seq, next_boundary=new.next_boundary,
                       data=new, grants=grants, posix=builder.numbers)


def _rows_reach(old_data: OrgData, new: OrgData, touched: dict[str, set[str]]) -> _Reach:
    """The persons, accounts and units the changed rows name, before and after the change."""
    reach = _Reach(persons=set(touched.get("person", ())),
                   accounts=set(touched.get("account", ())))

    def both(attr: str, row_id: str) -> list[Any]:
        return [r for r in (getattr(old_data, attr).get(row_id), getattr(new, attr).get(row_id))
                if r is not None]

    for row_id in touched.get("engagement", ()):
        reach.persons.update(r.person_id for r in both("engagements", row_id))
    for row_id in touched.get("association", ()):
        reach.persons.update(r.person_id for r in both("associations", row_id) if r.person_id)
    for row_id in touched.get("account", ()):
        reach.persons.update(r.person_id for r in both("accounts", row_id) if r.person_id)
    for row_id in touched.get("address", ()):
        for row in both("addresses", row_id):
            if row.person_id:
                reach.persons.add(row.person_id)
            if row.account_id:
                reach.accounts.add(row.account_id)
            if row.engagement_id:
                for eng in both("engagements", row.engagement_id):
                    reach.persons.add(eng.person_id)
            if row.org_unit_id:
                reach.direct_units.add(row.org_unit_id)
    for row_id in touched.get("account_role_assignment", ()):
        reach.accounts.update(r.account_id for r in both("account_assignments", row_id))
    for row_id in touched.get("manager", ()):
        for row in both("managers", row_id):
            reach.unit_roots.add(row.org_unit_id)
            if row.person_id:
                reach.persons.add(row.person_id)
    for row_id in touched.get("manager_substitute", ()):
        reach.persons.update(r.person_id for r in both("manager_substitutes", row_id))
    for row_id in touched.get("kle", ()):
        reach.unit_roots.update(r.org_unit_id for r in both("kles", row_id))
    for row_id in touched.get("unit_role_assignment", ()):
        reach.unit_roots.update(r.org_unit_id for r in both("unit_assignments", row_id))
    reach.unit_roots.update(touched.get("org_unit", ()))
    return reach


def _catalogue_reach(old: Snapshot, old_data: OrgData, new: OrgData,
                     touched: dict[str, set[str]], reach: _Reach) -> None:
    """Role catalogue: whoever held, or is assigned, a changed role or role group (directly,
    through a unit, or through a role group bundling a changed role) is re-derived."""
    reach.role_ids = role_ids = set(touched.get("job_role", ()))
    reach.group_ids = group_ids = set(touched.get("role_group", ()))
    bundles = {g for data in (old_data, new) for g, members in data.role_group_members.items()
               if role_ids.intersection(members)}
    for catalogue_id in role_ids | group_ids | bundles:
        before = old.get(catalogue_id)
        if before is not None:
            reach.accounts.update(before.attrs.get("member", ()))
    if role_ids or group_ids:
        reach_groups = group_ids | bundles
        for data in (old_data, new):
            for a in data.account_assignments.values():
                if a.job_role_id in role_ids or a.role_group_id in reach_groups:
                    reach.accounts.add(a.account_id)
            for a in data.unit_assignments.values():
                if a.job_role_id in role_ids or a.role_group_id in reach_groups:
                    reach.unit_roots.add(a.org_unit_id)


def _spread(old_data: OrgData, new: OrgData, chains: dict[str, tuple[str, ...]],
            old_chains: dict[str, tuple[str, ...]], reach: _Reach) -> None:
    """From the named rows to every entry that shows them: units below a changed unit, the
    people working there, their managers, and every account of an affected person."""
    # A changed person who manages units changes the "manager" of everyone below each of them.
    managed: dict[str, set[str]] = defaultdict(set)
    for data in (old_data, new):
        for mgr in data.managers.values():
            if mgr.person_id:
                managed[mgr.person_id].add(mgr.org_unit_id)
    for person in list(reach.persons):
        reach.unit_roots.update(managed.get(person, ()))
    reach.units = _subtree(chains, reach.unit_roots) | _subtree(old_chains, reach.unit_roots)
    if reach.unit_roots:
        # Managers of units in the subtree may gain or lose manager-only roles.
        for data in (old_data, new):
            for mgr in data.managers.values():
                if mgr.person_id and mgr.org_unit_id in reach.units:
                    reach.persons.add(mgr.person_id)
        for data, data_chains in ((old_data, old_chains), (new, chains)):
            for eng in data.engagements.values():
                if reach.units.intersection(data_chains.get(eng.org_unit_id, ())):
                    reach.persons.add(eng.person_id)
    for data in (old_data, new):
        for acc in data.accounts.values():
            if acc.person_id in reach.persons:
                reach.accounts.add(acc.id)


def _rebuild_accounts(old: Snapshot, new: OrgData, builder: EntryBuilder, reach: _Reach,
                      changed: list[Entry], removed: set[str],
                      grants: dict[str, list[Any]]) -> dict[str, tuple[set[str], set[str]]]:
    """Rebuild the affected accounts; returns the groups whose members move: {group id:
    (accounts joining, accounts leaving)}."""
    moved: dict[str, tuple[set[str], set[str]]] = defaultdict(lambda: (set(), set()))
    for account_id in reach.accounts:
        before = old.get(account_id)
        row = new.accounts.get(account_id)
        after = builder.account(row) if row is not None and \
            row.it_system_id == builder.system_id else None
        old_groups = set(before.attrs.get("memberOf", ())) if before else set()
        new_groups = set(after.attrs.get("memberOf", ())) if after else set()
        for group in new_groups - old_groups:
            moved[group][0].add(account_id)
        for group in old_groups - new_groups:
            moved[group][1].add(account_id)
        if after is not None:
            changed.append(after)
            grants[account_id] = builder.grants[account_id]
        elif before is not None:
            removed.add(account_id)
            grants.pop(account_id, None)
    return moved


def _rebuild_groups(old: Snapshot, new: OrgData, builder: EntryBuilder, reach: _Reach,
                    moved: dict[str, tuple[set[str], set[str]]], changed: list[Entry],
                    removed: set[str]) -> bool:
    """Units in reach are rebuilt with patched members; changed roles and role groups are
    rebuilt whole; other groups only get their member lists patched. False when a group the
    old snapshot does not know gains members (the caller then builds fully)."""
    rebuild_units = reach.units | reach.direct_units | {
        g for g in moved if g in new.units or getattr(old.get(g), "kind", None) == UNIT}
    for unit_id in rebuild_units:
        before = old.get(unit_id)
        members = set(before.attrs.get("member", ())) if before else set()
        adds, drops = moved.get(unit_id, (set(), set()))
        builder.unit_members[unit_id] = (members - drops) | adds
        row = new.units.get(unit_id)
        if row is not None:
            changed.append(builder.unit(row))
        elif before is not None:
            removed.add(unit_id)
    for catalogue_id, rows, build, members_of in (
            *((r, new.job_roles, builder.role, builder.role_members) for r in reach.role_ids),
            *((g, new.role_groups, builder.role_group, builder.group_members)
              for g in reach.group_ids)):
        before = old.get(catalogue_id)
        adds, drops = moved.get(catalogue_id, (set(), set()))
        members_of[catalogue_id] = (
            set(before.attrs.get("member", ())) if before else set()) - drops | adds
        row = rows.get(catalogue_id)
        if row is not None:
            changed.append(build(row))
        elif before is not None:
            removed.add(catalogue_id)
    for group_id, (adds, drops) in moved.items():
        if group_id in rebuild_units or group_id in reach.role_ids or \
                group_id in reach.group_ids:
            continue
        before = old.get(group_id)
        if before is None:
            return False
        members = (set(before.attrs.get("member", ())) - drops) | adds
        attrs = dict(before.attrs)
        if members:
            attrs["member"] = tuple(sorted(members))
        else:
            attrs.pop("member", None)
        entry = Entry(before.id, before.kind, attrs, before.complex)
        entry.version = _version(entry)
        changed.append(entry)
    return True
