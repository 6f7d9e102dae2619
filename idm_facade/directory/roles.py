"""Effective roles with provenance, following OS2rollekatalog's assignment calculator.

For one account (an IT user; OS2rollekatalog's "user"):

1. direct assignments of job-function roles and role groups to the account;
2. for each engagement the account is scoped to (all of its person's when it is scoped to
   none) that is not marked do-not-inherit: the assignments on the engagement's unit, and on
   each ancestor when the assignment is marked ``inherit``; narrowed by the title list
   (POSITIVE: only those titles, NEGATIVE: all but those), excepted accounts, and excepted
   units (the engagement's unit is, or lies below, an excepted unit);
3. manager-only assignments on units the account's person manages or stands in for as a
   manager substitute (and on their ancestors, when marked ``inherit``), as
   ``CurrentAssignmentCalculator`` gathers ``getManagedOrgUnits()`` and ``getSubstituteFor()``;
4. role groups expanded into their job-function roles.

Each grant keeps where it came from, so "why does she have this role" has an answer. The
computation runs on :class:`~idm_facade.directory.load.OrgData` loaded as of one instant, so
future-dated and ended assignments are simply absent or present at that instant.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime
from typing import Any

DIRECT, UNIT, MANAGER, SUBSTITUTE = "direct", "unit", "manager", "substitute"


@dataclass(frozen=True, slots=True)
class Grant:
    """One reason an account holds a job-function role."""

    role_id: str
    via: str  # direct / unit / manager / substitute
    assignment_id: str
    unit_id: str | None = None  # the unit carrying the assignment (unit / manager grants)
    role_group_id: str | None = None  # set when the role came through a role group
    engagement_id: str | None = None
    valid_from: datetime | None = None
    valid_to: datetime | None = None

    def explain(self, data: Any) -> str:
        """A one-line human explanation."""
        parts = []
        if self.via == DIRECT:
            parts.append("assigned directly")
        elif self.via == UNIT:
            parts.append(f"via unit {_unit_name(data, self.unit_id)}")
        elif self.via == SUBSTITUTE:
            parts.append(f"as manager substitute at {_unit_name(data, self.unit_id)}")
        else:
            parts.append(f"as manager of {_unit_name(data, self.unit_id)}")
        if self.role_group_id:
            group = data.role_groups.get(self.role_group_id)
            parts.append(f"through role group {group.name if group else self.role_group_id}")
        if self.valid_to:
            parts.append(f"until {self.valid_to.isoformat()}")
        return ", ".join(parts)


def _unit_name(data: Any, unit_id: str | None) -> str:
    unit = data.units.get(unit_id) if unit_id else None
    return unit.name if unit else str(unit_id)


@dataclass
class RoleIndex:
    """Per-unit look-ups derived once per load, shared by every account's calculation."""

    chains: dict[str, tuple[str, ...]]
    unit_assignments: dict[str, list[Any]]
    account_assignments: dict[str, list[Any]]
    managed_units: dict[str, list[str]]
    substitute_units: dict[str, list[str]]
    person_engagements: dict[str, list[str]]


def unit_chains(units: dict[str, Any]) -> dict[str, tuple[str, ...]]:
    """For every unit: itself and its ancestors, nearest first (cycles are cut)."""
    chains: dict[str, tuple[str, ...]] = {}
    for start in units:
        if start in chains:
            continue
        path: list[str] = []
        seen: set[str] = set()
        current: str | None = start
        while current is not None and current in units and current not in seen:
            if current in chains:
                break
            path.append(current)
            seen.add(current)
            current = units[current].parent_id
        tail = chains.get(current, ()) if current is not None else ()
        # Fill in every unit on the walked path, so each unit is walked once.
        for i, unit_id in enumerate(path):
            chains[unit_id] = tuple(path[i:]) + tail
    return chains


def build_index(data: Any) -> RoleIndex:
    """Derive the look-ups (cached on ``data.derived``)."""
    cached = data.derived.get("roles")
    if cached is not None:
        return cached
    chains = data.derived.get("chains") or unit_chains(data.units)
    data.derived["chains"] = chains
    by_unit: dict[str, list[Any]] = defaultdict(list)
    for a in data.unit_assignments.values():
        by_unit[a.org_unit_id].append(a)
    by_account: dict[str, list[Any]] = defaultdict(list)
    for a in data.account_assignments.values():
        by_account[a.account_id].append(a)
    managed: dict[str, list[str]] = defaultdict(list)
    for mgr in data.managers.values():
        if mgr.person_id:
            managed[mgr.person_id].append(mgr.org_unit_id)
    substitutes: dict[str, list[str]] = defaultdict(list)
    for row in data.manager_substitutes.values():
        substitutes[row.person_id].append(row.org_unit_id)
    person_engagements: dict[str, list[str]] = defaultdict(list)
    for eng in data.engagements.values():
        person_engagements[eng.person_id].append(eng.id)
    index = RoleIndex(chains, by_unit, by_account, managed, substitutes, person_engagements)
    data.derived["roles"] = index
    return index


def associations_by_person(data: Any) -> dict[str, list[str]]:
    """Units where each person holds an association (MED, TR, ...; OS2rollekatalog's
    functions), derived once per load."""
    cached = data.derived.get("associations_by_person")
    if cached is None:
        cached = defaultdict(list)
        for assoc in data.associations.values():
            if assoc.person_id:
                cached[assoc.person_id].append(assoc.org_unit_id)
        data.derived["associations_by_person"] = cached
    return cached


def account_engagements(data: Any, index: RoleIndex, account: Any) -> list[Any]:
    """Engagements in effect the account is scoped to; all its person's when none are named."""
    scoped = data.account_engagements.get(account.id)
    if scoped:
        found = [data.engagements[e] for e in scoped if e in data.engagements]
    elif account.person_id:
        found = [data.engagements[e] for e in index.person_engagements.get(account.person_id, ())]
    else:
        found = []
    return sorted(found, key=lambda e: (not e.is_primary, e.user_key or "", e.id))


def _expand(data: Any, assignment: Any, via: str, unit_id: str | None,
            engagement_id: str | None) -> list[Grant]:
    if assignment.job_role_id:
        if assignment.job_role_id not in data.job_roles:
            return []
        return [Grant(assignment.job_role_id, via, assignment.id, unit_id, None, engagement_id,
                      assignment.valid_from, assignment.valid_to)]
    group_id = assignment.role_group_id
    if group_id not in data.role_groups:
        return []
    return [Grant(role_id, via, assignment.id, unit_id, group_id, engagement_id,
                  assignment.valid_from, assignment.valid_to)
            for role_id in data.role_group_members.get(group_id, ())
            if role_id in data.job_roles]


def _unit_assignment_applies(data: Any, assignment: Any, account_id: str, engagement: Any,
                             at_unit: str, chain: tuple[str, ...]) -> bool:
    if not assignment.inherit and at_unit != engagement.org_unit_id:
        return False
    titles = data.unit_assignment_titles.get(assignment.id, ())
    if assignment.title_mode == "POSITIVE" and engagement.job_function_id not in titles:
        return False
    if assignment.title_mode == "NEGATIVE" and engagement.job_function_id in titles:
        return False
    if account_id in data.unit_assignment_excepted_accounts.get(assignment.id, ()):
        return False
    excepted_units = data.unit_assignment_excepted_units.get(assignment.id)
    return not (excepted_units and any(u in excepted_units for u in chain))


def effective_roles(data: Any, account_id: str) -> list[Grant]:
    """Every grant of every job-function role the account holds at ``data.at``, in the
    canonical order of :func:`_grant_order`."""
    account = data.accounts.get(account_id)
    if account is None:
        return []
    index = build_index(data)
    grants: list[Grant] = []
    for assignment in index.account_assignments.get(account_id, ()):
        grants.extend(_expand(data, assignment, DIRECT, None, None))
    for engagement in account_engagements(data, index, account):
        if engagement.do_not_inherit:
            continue
        chain = index.chains.get(engagement.org_unit_id, ())
        for unit_id in chain:
            for assignment in index.unit_assignments.get(unit_id, ()):
                if assignment.manager_only:
                    continue
                if _unit_assignment_applies(data, assignment, account_id, engagement, unit_id,
                                            chain):
                    grants.extend(_expand(data, assignment, UNIT, unit_id, engagement.id))
    if account.person_id:
        for via, units in ((MANAGER, index.managed_units), (SUBSTITUTE, index.substitute_units)):
            for managed in units.get(account.person_id, ()):
                grants.extend(_manager_grants(data, index, account_id, managed, via))
    return sorted(grants, key=_grant_order)


def _manager_grants(data: Any, index: RoleIndex, account_id: str, managed: str, via: str
                    ) -> list[Grant]:
    """Manager-only assignments reaching the manager (or substitute) of ``managed``: on the
    unit itself, and on its ancestors when marked ``inherit``."""
    grants: list[Grant] = []
    for unit_id in index.chains.get(managed, ()):
        for assignment in index.unit_assignments.get(unit_id, ()):
            if not assignment.manager_only:
                continue
            if unit_id != managed and not assignment.inherit:
                continue
            if account_id in data.unit_assignment_excepted_accounts.get(assignment.id, ()):
                continue
            grants.extend(_expand(data, assignment, via, unit_id, None))
    return grants


_VIA_RANK = {DIRECT: 0, UNIT: 1, MANAGER: 2, SUBSTITUTE: 3}


def _grant_order(grant: Grant) -> tuple:
    """The canonical order of an account's grants: by role id, then direct before unit
    before manager grants, then by the unit, role group, assignment and engagement ids.

    It depends on the grants alone, never on the order rows were loaded or patched in, so a
    full build and an incremental refresh list roles (and ``memberOf``) identically, and so do
    replicas: SCIM bodies, ETags and LDAP answers are byte-identical across them.
    """
    return (grant.role_id, _VIA_RANK.get(grant.via, 4), grant.unit_id or "",
            grant.role_group_id or "", grant.assignment_id, grant.engagement_id or "")


def roles_by_id(grants: list[Grant]) -> dict[str, list[Grant]]:
    """Group grants by role, keeping first-seen order."""
    found: dict[str, list[Grant]] = {}
    for grant in grants:
        found.setdefault(grant.role_id, []).append(grant)
    return found


def describe_roles(data: Any, account_id: str, explain: bool) -> list[str]:
    """Human-readable lines: the account's roles per IT system, with provenance."""
    grants = effective_roles(data, account_id)
    lines: list[str] = []
    by_role = roles_by_id(grants)
    rows = []
    for role_id, role_grants in by_role.items():
        role = data.job_roles[role_id]
        system = data.it_systems.get(role.it_system_id)
        rows.append((system.user_key if system else "?", role.name, role, role_grants))
    for system_key, _name, role, role_grants in sorted(rows, key=lambda r: (r[0], r[1])):
        lines.append(f"{system_key}\t{role.identifier}\t{role.name}")
        if explain:
            for grant in role_grants:
                lines.append(f"\t- {grant.explain(data)}")
    return lines
