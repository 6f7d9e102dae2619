"""Data-constraint values (dataafgrænsninger) of an account's system roles.

A job-function role bundles system roles, some with a data constraint: an org-unit or KLE
constraint whose value is not stored but computed per account at login, exactly as
OS2rollekatalog does when it emits the OIOBPP privilege list:

Org-unit constraint (``.../constraints/orgenhed/1`` and the internal ``.../orgunit/1``):

- ``INHERITED``: the units of the account's engagements;
- ``EXTENDED_INHERITED``: those units and all their descendants;
- ``LEVEL_1`` .. ``LEVEL_6``: per engagement unit, the nearest unit on its path to the root
  (itself first) whose ``role_level`` is at most N, plus that unit's whole subtree; when no
  unit on the path qualifies, the engagement unit alone.

KLE constraint (``.../constraints/KLE/1``):

- ``INHERITED``: the *performing* KLE numbers (aspect Udførende) of the engagement units, plus
  those of their ancestors marked ``inherit_kle``;
- ``EXTENDED_INHERITED``: the same for the *interest* aspect (Indsigt);
- ``READ_AND_WRITE``: both, compressed (a code covered by a shorter code is dropped; the
  shorter codes get a ``.*`` suffix). Like OS2rollekatalog, unit KLE is not inherited when
  any of the account's engagements is marked do-not-inherit.
- an empty KLE result becomes ``99.99.99``, so login still succeeds, with no data.

Org-unit values from other relations (both org-unit types, ``UserService.generateOIOBPP``):

- ``INHERITED_FROM_MANAGER_ROLE`` / ``EXTENDED_INHERITED_FROM_MANAGER_ROLE``: the units the
  account's person manages or stands in for as manager substitute (with their descendants);
- ``INHERITED_FROM_FUNCTIONS`` / ``EXTENDED_INHERITED_FROM_FUNCTIONS``: the units of the
  person's functions (OS2rollekatalog's ``UserOUFunction``; here the person's associations);
- ``SELECTED_INHERITED``: the stored selection, either plain unit ids or OS2rollekatalog's
  ``+parent,-excluded`` form (each ``+`` unit with its descendants, minus the ``-`` units;
  ``OrganisationConstraintUtil``).

As in OS2rollekatalog, ``INHERITED``, ``EXTENDED_INHERITED`` and ``LEVEL_N`` are computed only
for KOMBIT's org-unit type, not the internal one, and a computed value that comes out empty
leaves the constraint out. The person's own KLE numbers (``person_kle``) count in every KLE
value, even when an engagement is do-not-inherit (``KleService.getKleAssignments``).

``VALUE`` is the stored literal for any constraint type. ``POSTPONED`` has no value on the
role: each direct assignment of the role supplies one (``postponed_constraint`` rows, matched
by system role and constraint type; :func:`postponed_value`); any other grant leaves it
empty, so the constraint is left out. Values are comma-joined. Everything
here reads :class:`~idm_facade.directory.load.OrgData` and per-load look-ups cached on
``data.derived``, so one account's values cost a few dictionary walks.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from idm_facade.directory import roles as role_calc

#: KOMBIT's org-unit constraint type (``Constants.OU_CONSTRAINT_ENTITY_ID``).
KOMBIT_ORG_UNIT_TYPES = frozenset({
    "http://sts.kombit.dk/constraints/orgenhed/1",
    "https://sts.kombit.dk/constraints/orgenhed/1",
})
#: Every org-unit constraint type: KOMBIT's and OS2rollekatalog's internal one.
ORG_UNIT_TYPES = KOMBIT_ORG_UNIT_TYPES | {"http://digital-identity.dk/constraints/orgunit/1"}
#: Value types computed for both org-unit types.
_EITHER_ORG_TYPE = frozenset({
    "INHERITED_FROM_MANAGER_ROLE", "EXTENDED_INHERITED_FROM_MANAGER_ROLE",
    "INHERITED_FROM_FUNCTIONS", "EXTENDED_INHERITED_FROM_FUNCTIONS", "SELECTED_INHERITED"})
KLE_TYPES = frozenset({
    "http://sts.kombit.dk/constraints/KLE/1",
    "https://sts.kombit.dk/constraints/KLE/1",
})
#: Emitted when a KLE constraint resolves to nothing, so the login succeeds with no data.
EMPTY_KLE = "99.99.99"

PERFORMING, INTEREST = "performing", "interest"
_ASPECTS = {"udfoerende": PERFORMING, "udførende": PERFORMING, "performing": PERFORMING,
            "indsigt": INTEREST, "interest": INTEREST}

#: Units a restricted client may see (None: all of them).
Visible = frozenset[str] | None


@dataclass
class ConstraintIndex:
    """Per-load look-ups shared by every account's computation."""

    chains: dict[str, tuple[str, ...]]
    children: dict[str, list[str]]
    kle: dict[str, dict[str, list[str]]]  # unit -> aspect -> KLE numbers
    subtrees: dict[str, tuple[str, ...]]  # filled lazily
    person_kle: dict[str, dict[str, list[str]]]  # person -> aspect -> KLE numbers


def _aspect(data: Any, class_id: str) -> str | None:
    cls = data.classes.get(class_id)
    if cls is None:
        return None
    for text in (cls.user_key, cls.name):
        found = _ASPECTS.get(str(text or "").casefold())
        if found:
            return found
    return None


def build_index(data: Any) -> ConstraintIndex:
    """Derive the look-ups once per load (cached on ``data.derived``)."""
    cached = data.derived.get("constraints")
    if cached is not None:
        return cached
    role_calc.build_index(data)  # fills data.derived["chains"]
    chains = data.derived["chains"]
    children: dict[str, list[str]] = defaultdict(list)
    for unit in data.units.values():
        if unit.parent_id and unit.parent_id in data.units:
            children[unit.parent_id].append(unit.id)
    for kids in children.values():
        kids.sort(key=lambda u: (data.units[u].name, u))
    kle: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    for row in sorted(data.kles.values(), key=lambda k: k.id):
        number_cls = data.classes.get(row.kle_number_id)
        if number_cls is None:
            continue
        number = number_cls.user_key
        for class_id in data.kle_aspects.get(row.id, ()):
            aspect = _aspect(data, class_id)
            if aspect and number not in kle[row.org_unit_id][aspect]:
                kle[row.org_unit_id][aspect].append(number)
    person_kle: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    for row in sorted(data.person_kles.values(), key=lambda k: k.id):
        number_cls = data.classes.get(row.kle_number_id)
        aspect = _aspect(data, row.aspect_id)
        if number_cls is None or aspect is None:
            continue
        if number_cls.user_key not in person_kle[row.person_id][aspect]:
            person_kle[row.person_id][aspect].append(number_cls.user_key)
    index = ConstraintIndex(chains, dict(children), kle, {}, person_kle)
    data.derived["constraints"] = index
    return index


def subtree(index: ConstraintIndex, unit_id: str) -> tuple[str, ...]:
    """The unit and all its descendants, pre-order (cycles cut)."""
    known = index.subtrees.get(unit_id)
    if known is not None:
        return known
    found: list[str] = []
    seen: set[str] = set()
    stack = [unit_id]
    while stack:
        current = stack.pop()
        if current in seen:
            continue
        seen.add(current)
        found.append(current)
        stack.extend(reversed(index.children.get(current, ())))
    result = tuple(found)
    index.subtrees[unit_id] = result
    return result


def engagement_units(data: Any, account_id: str, visible: Visible = None
                     ) -> tuple[list[str], bool]:
    """Units of the account's engagements in effect (first seen order), and whether any of
    those engagements is marked do-not-inherit; only engagements in ``visible`` units count
    when it is given."""
    account = data.accounts.get(account_id)
    if account is None:
        return [], False
    engagements = role_calc.account_engagements(data, role_calc.build_index(data), account)
    if visible is not None:
        engagements = [e for e in engagements if e.org_unit_id in visible]
    units = list(dict.fromkeys(e.org_unit_id for e in engagements if e.org_unit_id in data.units))
    return units, any(e.do_not_inherit for e in engagements)


def org_unit_values(data: Any, account_id: str, value_type: str, visible: Visible = None
                    ) -> list[str]:
    """Unit ids an org-unit constraint of ``value_type`` resolves to for the account (only
    ``visible`` ones when given)."""
    index = build_index(data)
    units, _ = engagement_units(data, account_id, visible)
    found: dict[str, None] = {}
    if value_type == "INHERITED":
        found.update(dict.fromkeys(units))
    elif value_type == "EXTENDED_INHERITED":
        for unit in units:
            found.update(dict.fromkeys(subtree(index, unit)))
    elif value_type.startswith("LEVEL_") and value_type[6:].isdigit():
        limit = int(value_type[6:])
        for unit in units:
            anchor = next((u for u in index.chains.get(unit, (unit,))
                           if data.units[u].role_level is not None
                           and data.units[u].role_level <= limit), None)
            if anchor is None:
                found[unit] = None
            else:
                found.update(dict.fromkeys(subtree(index, anchor)))
    if visible is not None:
        return [u for u in found if u in visible]
    return list(found)


def kle_values(data: Any, account_id: str, aspect: str, visible: Visible = None) -> list[str]:
    """KLE numbers of ``aspect`` (performing/interest) the account has through its units
    (only ``visible`` ones when given)."""
    index = build_index(data)
    units, blocked = engagement_units(data, account_id, visible)
    account = data.accounts.get(account_id)
    person = getattr(account, "person_id", None)
    own = index.person_kle.get(person, {}) if person else {}
    found: dict[str, None] = dict.fromkeys(own.get(aspect, ()))
    if blocked:
        units = []
    for unit in units:
        for position, current in enumerate(index.chains.get(unit, (unit,))):
            if visible is not None and current not in visible:
                break
            if position > 0 and not data.units[current].inherit_kle:
                continue
            found.update(dict.fromkeys(index.kle.get(current, {}).get(aspect, ())))
    return sorted(found)


def wildcard(code: str) -> str:
    """A KLE code shorter than a full one (``NN.NN.NN``, 8 characters) as a prefix: ``.*``
    appended, as OS2rollekatalog does for every value type (KleService)."""
    return code + ".*" if len(code) < 8 else code


def compress_kle(codes: list[str]) -> list[str]:
    """Drop codes covered by a shorter code in the list; shorter (group/area) codes get
    ``.*`` so a receiving system reads them as prefixes."""
    unique = sorted(set(codes), key=lambda c: (len(c), c))
    kept: list[str] = []
    for code in unique:
        if any(code.startswith(k + ".") for k in kept):
            continue
        kept.append(code)
    return sorted(wildcard(c) for c in kept)


def constraint_value(data: Any, account_id: str, constraint_type: str | None,
                     value_type: str | None, literal: str | None, visible: Visible = None
                     ) -> str | None:
    """The comma-joined value of one constraint for the account; None when the row carries
    no constraint (or one of a kind computed elsewhere that resolves to nothing). With
    ``visible``, computed as if only those units existed."""
    if not constraint_type or not value_type:
        return None
    if value_type == "VALUE":
        return literal or ""
    if constraint_type in KLE_TYPES:
        if value_type == "INHERITED":
            codes = [wildcard(c) for c in kle_values(data, account_id, PERFORMING, visible)]
        elif value_type == "EXTENDED_INHERITED":
            codes = [wildcard(c) for c in kle_values(data, account_id, INTEREST, visible)]
        elif value_type == "READ_AND_WRITE":
            codes = compress_kle(kle_values(data, account_id, PERFORMING, visible)
                                 + kle_values(data, account_id, INTEREST, visible))
        else:
            codes = [literal] if literal else []
        return ",".join(codes) if codes else EMPTY_KLE
    if constraint_type in ORG_UNIT_TYPES:
        if value_type in _EITHER_ORG_TYPE:
            values = related_unit_values(data, account_id, value_type, literal, visible)
        elif constraint_type in KOMBIT_ORG_UNIT_TYPES:
            values = org_unit_values(data, account_id, value_type, visible)
        else:
            values = []
        return ",".join(values)
    return literal


def related_unit_values(data: Any, account_id: str, value_type: str, literal: str | None,
                        visible: Visible = None) -> list[str]:
    """Unit ids of the manager-role, function and selected value types (module docstring)."""
    index = build_index(data)
    account = data.accounts.get(account_id)
    person = getattr(account, "person_id", None)
    extended = value_type.startswith("EXTENDED_")
    if value_type == "SELECTED_INHERITED":
        units = selected_units(index, literal or "")
        extended = False
    elif not person:
        units = []
    elif value_type.endswith("_FROM_MANAGER_ROLE"):  # managed units, and stood in for
        roles = role_calc.build_index(data)
        units = [*roles.managed_units.get(person, ()), *roles.substitute_units.get(person, ())]
    else:
        units = role_calc.associations_by_person(data).get(person, [])
    found: dict[str, None] = {}
    for unit in units:
        if unit not in data.units:
            continue
        found.update(dict.fromkeys(subtree(index, unit) if extended else (unit,)))
    return [u for u in found if visible is None or u in visible]


def selected_units(index: ConstraintIndex, value: str) -> list[str]:
    """A stored selection: plain ids, or ``+parent,-excluded,...`` where each ``+`` unit
    brings its descendants and the ``-`` units after it are taken out
    (``OrganisationConstraintUtil.getOrganisationConstraintUuids``)."""
    parts = [p.strip() for p in value.split(",") if p.strip()]
    if not any(p[0] in "+-" for p in parts):
        return parts
    found: dict[str, None] = {}
    excluded: set[str] = set()
    for part in parts:
        if part.startswith("+"):
            found.update(dict.fromkeys(subtree(index, part[1:])))
        elif part.startswith("-"):
            excluded.add(part[1:])
    return [u for u in found if u not in excluded]


POSTPONED = "POSTPONED"


def postponed_text(value: str, constraint_type: str, visible: Visible = None) -> str:
    """A stored postponed value as OS2rollekatalog hands it out: split at commas when the
    current assignments are computed (``CurrentAssignmentMapper``) and joined again with
    commas, which drops trailing empty parts as Java's ``split`` does. An org-unit value
    names only ``visible`` units when given, like every computed org-unit value here."""
    value = value.rstrip(",")
    if visible is None or constraint_type not in ORG_UNIT_TYPES:
        return value
    return ",".join(unit for unit in value.split(",") if unit in visible)


def postponed_value(postponed: Iterable[Any], system_role_id: str, constraint_type: str,
                    visible: Visible = None) -> str:
    """The value an assignment gives a POSTPONED constraint of one system role
    (``UserService.generateOIOBPPPrivileges``: the values of every postponed row of the
    assignment with that constraint type and system role, appended). Empty when the
    assignment gives none."""
    return "".join(postponed_text(row.value, constraint_type, visible) for row in postponed
                   if row.system_role_id == system_role_id
                   and row.constraint_type == constraint_type)


def system_role_constraints(data: Any, account_id: str, job_role_id: str,
                            visible: Visible = None, postponed: Iterable[Any] = ()
                            ) -> list[tuple[Any, list[tuple[str, str]]]]:
    """The system roles of a job role, each with its (constraint type, value) pairs for the
    account (as if only ``visible`` units existed, when given); ``postponed``: the postponed
    constraint rows of the assignment the role is held through (none for a grant through a
    unit or role group)."""
    postponed = tuple(postponed)
    result = []
    for link in data.job_role_system_roles.get(job_role_id, ()):
        system_role = data.system_roles.get(link.system_role_id)
        if system_role is None:
            continue
        pairs: list[tuple[str, str]] = []
        if link.constraint_value_type == POSTPONED:
            value = (postponed_value(postponed, link.system_role_id, link.constraint_type,
                                     visible) if link.constraint_type else None)
        else:
            value = constraint_value(data, account_id, link.constraint_type,
                                     link.constraint_value_type, link.constraint_value, visible)
        if value is not None:
            pairs.append((link.constraint_type, value))
        result.append((link, pairs))
    return result
