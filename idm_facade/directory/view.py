"""What one client sees of an entry: the policy projection every front end renders from.

Snapshot searches already apply the policy to *which* entries match (policy before paging).
This module applies it to *what* of each entry is shown, in one place for SCIM, LDAP and the
role-lookup API, so no front end can forget a rule:

- a value stored under a physical name the policy does not list in ``policy.physical(attr)``
  is not shown (CPR without the grant, INTERNAL address buckets for PUBLIC clients, sensitive
  titles without the grant);
- address elements (emails, phoneNumbers, addresses) whose ``visibility`` the policy may not
  read are dropped, and the internal ``visibility`` key is never shown;
- engagement elements lose a sensitive title unless the policy grants sensitive titles;
- when a snapshot is given, references to entries the policy cannot see (group members
  outside a subtree, units of other directorates) are dropped, so a subtree-limited client
  does not learn of hidden entries through a neighbour.

It also says what a response disclosed, for the access log: the persons
(:func:`disclosed_subjects`) and the sensitive attributes (:func:`sensitive_disclosed`).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from idm_facade.directory.entries import Entry
from idm_facade.directory.policy import Policy
from schemas.attributes import (
    ACCOUNT,
    ALL_KINDS,
    ATTRIBUTES,
    GROUP_KINDS,
    REFERENCE,
    VISIBILITY_COMPLEX,
)

if TYPE_CHECKING:
    from idm_facade.directory.snapshot import Snapshot

#: Element keys the directory keeps for its own use and never shows.
_INTERNAL_KEYS = ("visibility", "titleSensitive")

#: Reference attributes whose values are entry ids (checked against visibility).
_ENTRY_REFS = frozenset(
    name for name, spec in ATTRIBUTES.items()
    if spec.type == REFERENCE and name not in ("id", "personId")
)

#: Sensitive-attribute labels recorded in the access log.
CPR = "cpr"
SENSITIVE_TITLE = "sensitiveTitle"


def _restricted(policy: Policy) -> bool:
    """Does the policy hide some entries (so references need checking)?"""
    return policy.subtrees is not None or policy.kinds != ALL_KINDS


def _visible_ids(snapshot: Snapshot, policy: Policy) -> frozenset[int]:
    return snapshot.visible_handles(policy, ALL_KINDS)


def _ref_visible(snapshot: Snapshot, handles: frozenset[int], entry_id: str) -> bool:
    handle = snapshot.by_id.get(entry_id)
    return handle is not None and handle in handles


def visible_values(entry: Entry, logical_attr: str, policy: Policy,
                   snapshot: Snapshot | None = None) -> tuple:
    """Values of directory attribute ``logical_attr`` that ``policy`` may read on ``entry``.

    Visibility buckets are merged in order (PUBLIC first), sensitive titles are included only
    with the grant, CPR only with the grant. With ``snapshot``, entry references (members,
    units, groups, managers) to entries the policy cannot see are dropped.
    """
    names = policy.physical(logical_attr)
    if not names:
        return ()
    if len(names) == 1:
        values = entry.attrs.get(names[0], ())
    else:
        values = tuple(v for name in names for v in entry.attrs.get(name, ()))
    if values and snapshot is not None and logical_attr in _ENTRY_REFS and _restricted(policy):
        handles = _visible_ids(snapshot, policy)
        values = tuple(v for v in values if _ref_visible(snapshot, handles, str(v)))
    return tuple(values)


def visible_complex(entry: Entry, name: str, policy: Policy,
                    snapshot: Snapshot | None = None) -> tuple[dict, ...]:
    """Elements of complex attribute ``name`` (emails, engagements, ...) the policy may see.

    Address elements outside ``policy.visibilities`` are dropped; the ``visibility`` and
    ``titleSensitive`` keys are removed; a sensitive engagement title is removed unless the
    policy grants sensitive titles. When the policy lists only some sub-attributes
    (``emails.value``), the other keys are removed. With ``snapshot``, engagements in units
    the policy cannot see are dropped and role provenance pointing at such units is blanked.
    Returns new dicts: the snapshot's elements are never modified.
    """
    if not policy.may_read_complex(name):
        return ()
    elements = entry.complex.get(name, ())
    if not elements:
        return ()
    allowed = policy.visibilities if name in VISIBILITY_COMPLEX else None
    keep_keys: set[str] | None = None
    if policy.attributes is not None and name not in policy.attributes:
        prefix = f"{name}."
        keep_keys = {a[len(prefix):] for a in policy.attributes if a.startswith(prefix)}
    handles = None
    if snapshot is not None and _restricted(policy) and name in ("engagements", "roles"):
        handles = _visible_ids(snapshot, policy)
    out: list[dict] = []
    for element in elements:
        if allowed is not None and element.get("visibility") not in allowed:
            continue
        shown = {k: v for k, v in element.items() if k not in _INTERNAL_KEYS}
        if name == "engagements":
            if element.get("titleSensitive") and not policy.sensitive_titles:
                shown.pop("title", None)
            if handles is not None and not _ref_visible(snapshot, handles,  # type: ignore[arg-type]
                                                        str(element.get("unit"))):
                continue
        elif name == "roles" and handles is not None and element.get("viaUnit") and \
                not _ref_visible(snapshot, handles, str(element["viaUnit"])):  # type: ignore[arg-type]
            shown["viaUnit"] = None
        if keep_keys is not None:
            shown = {k: v for k, v in shown.items() if k in keep_keys}
        out.append(shown)
    return tuple(out)


def visible_attrs(entry: Entry, policy: Policy,
                  snapshot: Snapshot | None = None) -> dict[str, tuple]:
    """Every simple attribute of ``entry`` the policy may read: {logical name: values}.

    Flattened complex sub-attributes (``emails.value``) are included under their logical
    names; empty attributes are left out.
    """
    out: dict[str, tuple] = {}
    for name, spec in ATTRIBUTES.items():
        if entry.kind not in spec.kinds:
            continue
        values = visible_values(entry, name, policy, snapshot)
        if values:
            out[name] = values
    return out


def disclosed_subjects(entries: Iterable[Entry], policy: Policy, *,
                       snapshot: Snapshot | None = None, members: bool = False) -> list[str]:
    """Person ids disclosed by returning ``entries`` to a client with ``policy``.

    Every account entry discloses its person (even if ``personId`` itself is not returned:
    its name or username is). With ``members=True`` and a snapshot, group entries disclose
    the persons of their visible member accounts too (pass it when member values were
    returned). Sorted, without duplicates.
    """
    found: set[str] = set()
    for entry in entries:
        if entry.kind == ACCOUNT:
            found.update(str(p) for p in entry.attrs.get("personId", ()))
        elif members and snapshot is not None and entry.kind in GROUP_KINDS:
            for member in visible_values(entry, "member", policy, snapshot):
                account = snapshot.get(str(member))
                if account is not None and account.kind == ACCOUNT:
                    found.update(str(p) for p in account.attrs.get("personId", ()))
    return sorted(found)


def sensitive_disclosed(entries: Iterable[Entry], policy: Policy,
                        requested_attrs: Iterable[str] | None) -> list[str]:
    """Which sensitive attributes the response disclosed: ``["cpr"]``, ``["sensitiveTitle"]``.

    ``requested_attrs`` are the logical directory attributes actually returned (for SCIM the
    attributes after ``attributes``/``excludedAttributes`` and ``returned`` rules; for LDAP
    the requested attribute list resolved to directory names); ``None`` means every attribute
    the policy may read was returned. Only values actually present and readable count.
    """
    wanted = None if requested_attrs is None else set(requested_attrs)
    check_cpr = policy.cpr and (wanted is None or "cpr" in wanted)
    check_title = policy.sensitive_titles and (
        wanted is None or "title" in wanted or "engagements" in wanted
        or "engagements.title" in wanted)
    found: set[str] = set()
    if not (check_cpr or check_title):
        return []
    for entry in entries:
        if entry.kind != ACCOUNT:
            continue
        if check_cpr and entry.attrs.get("cpr"):
            found.add(CPR)
        if check_title:
            title_shown = wanted is None or "title" in wanted
            if title_shown and entry.attrs.get("title@SENSITIVE"):
                found.add(SENSITIVE_TITLE)
            eng_shown = wanted is None or "engagements" in wanted or "engagements.title" in wanted
            if eng_shown and any(e.get("titleSensitive") for e in
                                 entry.complex.get("engagements", ())):
                found.add(SENSITIVE_TITLE)
        if len(found) == 2:
            break
    return sorted(found)
