"""What a target should hold: its users and groups, worked out from one snapshot as the
target's policy sees it; and what a change feed's client should read (:func:`readable`).

The bodies are the facade's own SCIM resources (:func:`idm_facade.scim.render.render`, so a
target gets exactly what a client with the same policy would read), cut to the core and
enterprise schemas every SCIM server knows: no ``id``, ``meta``, ``groups`` or ``roles``
(groups carry their members), and ``externalId`` set to the facade's id, which is how the
facade finds its resources at the target again. References to other entries (``manager``,
``members``) hold the facade's ids here; the sender puts the target's ids in.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from idm_facade.directory import filters as f
from idm_facade.directory.view import ClientView
from idm_facade.scim import filters as scim_filters
from idm_facade.scim import schema as scim_schemas
from idm_facade.scim.render import render, selection
from schemas.attributes import ACCOUNT, CORE_GROUP, CORE_USER, ENTERPRISE_USER

USER, GROUP = "User", "Group"
_USER_SELECTION = selection(None, "groups,roles,x509Certificates,entitlements")
_GROUP_SELECTION = selection(None, "members")  # members: by id, from the entry
_BASE = "urn:idm-facade:provisioning"  # $ref values are dropped; any base does


@dataclass(frozen=True)
class Wanted:
    """One resource a target should hold."""

    entry_id: str
    kind: str
    body: dict
    digest: str
    #: Persons the body discloses (for the access record of its delivery).
    subjects: tuple[str, ...]
    #: Sensitive attributes the body shows ("cpr"), for the access record.
    sensitive: tuple[str, ...] = ()


def _digest(body: dict) -> str:
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def _user(view: ClientView, entry: Any) -> Wanted:
    rendered = render(view, entry, _BASE, _USER_SELECTION)
    doc = json.loads(rendered.json)
    body: dict = {"schemas": [s for s in doc["schemas"] if s in (CORE_USER, ENTERPRISE_USER)],
                  "externalId": doc["id"]}
    for key, value in doc.items():
        if key in ("schemas", "id", "meta", "externalId") or key.startswith("urn:"):
            continue
        body[key] = value
    enterprise = doc.get(ENTERPRISE_USER)
    if enterprise:
        enterprise = dict(enterprise)
        manager = enterprise.pop("manager", None)
        if manager and manager.get("value"):
            enterprise["manager"] = {"value": manager["value"]}
        body[ENTERPRISE_USER] = enterprise
    return Wanted(doc["id"], USER, body, _digest(body), rendered.subjects)


def _group(view: ClientView, entry: Any, users: frozenset[str]) -> Wanted:
    rendered = render(view, entry, _BASE, _GROUP_SELECTION)
    doc = json.loads(rendered.json)
    body = {"schemas": [CORE_GROUP], "externalId": doc["id"],
            "displayName": doc.get("displayName") or doc["id"],
            "members": [{"value": m, "type": "User"} for m in sorted(_pushed_members(
                view, entry, users))]}
    return Wanted(doc["id"], GROUP, body, _digest(body), ())


def _pushed_members(view: ClientView, entry: Any, users: frozenset[str]) -> frozenset[str]:
    """The members of a group a target gets: the accounts it gets (which it may see)."""
    return users.intersection(map(str, view.values(entry, "member")))


def users_filter(flt: str | None) -> f.Filter:
    """The filter tree of a target's or feed's ``filter`` (every account when unset)."""
    return scim_filters.translate(flt, ("User",)) if flt else f.TRUE


#: Makes one resource's :class:`Wanted` from (view, entry, the ids of the users given).
Make = Callable[[ClientView, Any, frozenset[str]], Wanted]
#: What else than its entry one resource's body depends on, from the same arguments: the
#: entries it shows something of (compared by identity) and a value (compared by equality).
Depends = Callable[[ClientView, Any, frozenset[str]], tuple[tuple, Any]]


def _named(*attrs: str) -> Depends:
    """Depends on the entries that ``attrs`` name (their ids, display names, visibility and
    persons show in the body)."""
    def depends(view: ClientView, entry: Any, _: frozenset[str]) -> tuple[tuple, Any]:
        return tuple(view.get(str(ref)) for attr in attrs
                     for ref in view.values(entry, attr)), None
    return depends


def _members_given(view: ClientView, entry: Any, users: frozenset[str]) -> tuple[tuple, Any]:
    """A pushed group depends on which of its members the target gets, nothing else."""
    return (), _pushed_members(view, entry, users)


class Wants:
    """What one consumer should hold, worked out again for every new snapshot while
    rendering only what can have changed.

    A refresh leaves the entries it did not rebuild as the same objects in the next snapshot
    (:meth:`Snapshot.patched`), and a body depends only on its entry, the policy and what
    its ``depends`` says (the entries it names, or a group's given members). So an entry
    whose object and dependencies are those of the last plan keeps its :class:`Wanted` (the
    same object, which tells the planners that nothing changed for it); only the others are
    rendered. A single change at the largest municipality then costs a walk over the
    entries, not a rendering of each. A new policy (a feed's client changed) forgets
    everything.
    """

    def __init__(self, user: tuple[Make, Depends], group: tuple[Make, Depends]) -> None:
        self._kinds = {USER: user, GROUP: group}
        self._policy: Any = None
        #: entry id -> (entry, its dependencies, what was made of them)
        self._kept: dict[str, tuple[Any, tuple[tuple, Any], Wanted]] = {}

    def of(self, view: ClientView, users: f.Filter, groups: tuple[str, ...]
           ) -> dict[str, Wanted]:
        """Everything the consumer should hold now, users first (groups name them)."""
        if view.policy != self._policy:
            self._policy, self._kept = view.policy, {}
        kept, fresh = self._kept, {}
        out: dict[str, Wanted] = {}
        accounts = view.search(users, kinds=frozenset({ACCOUNT}))
        given = frozenset(e.id for e in accounts)
        for kind, entries in ((USER, accounts),
                              (GROUP, view.search(f.TRUE, kinds=frozenset(groups)))):
            make, depends = self._kinds[kind]
            for entry in entries:
                named, key = now = depends(view, entry, given)
                had = kept.get(entry.id)
                if had is not None and had[0] is entry and had[1][1] == key \
                        and len(had[1][0]) == len(named) \
                        and all(a is b for a, b in zip(had[1][0], named, strict=True)):
                    item = had[2]
                else:
                    item = make(view, entry, given)
                fresh[entry.id] = (entry, now, item)
                out[item.entry_id] = item
        self._kept = fresh
        return out


def pushed() -> Wants:
    """A :class:`Wants` of what a push target should hold: users without groups (their
    manager by id only), groups with the given members by id."""
    return Wants((lambda view, entry, _: _user(view, entry), _named("manager")),
                 (_group, _members_given))


def _every_attribute() -> str:
    """Every schema of Users and Groups by URN: every attribute, the ``returned: request``
    ones (cprNumber, role provenance) included, and no ``meta``."""
    urns = [urn for resource in (scim_schemas.USER, scim_schemas.GROUP)
            for urn in scim_schemas.SCHEMAS[resource]]
    return ",".join(urns)


def _without_refs(value: Any) -> Any:
    """``value`` without ``$ref``: a reference URL holds the base URL the client asked at,
    which a feed planned once for every replica and listener does not know (``value`` is
    the id the URL would end in)."""
    if isinstance(value, dict):
        return {k: _without_refs(v) for k, v in value.items() if k != "$ref"}
    if isinstance(value, list):
        return [_without_refs(v) for v in value]
    return value


def _readable(view: ClientView, entry: Any, kind: str) -> Wanted:
    rendered = render(view, entry, _BASE, selection(_every_attribute(), None))
    body = _without_refs(json.loads(rendered.json))
    return Wanted(body["id"], kind, body, _digest(body), rendered.subjects, rendered.sensitive)


def read() -> Wants:
    """A :class:`Wants` of what a change feed's client reads through its view: every user
    (narrowed by the feed's filter) and group of the feed's kinds it may see, each the whole
    SCIM resource as ``/scim/v2`` gives it (every attribute its policy allows, CPR only with
    the grant), without ``meta``, whose timestamps change when nothing the client sees does,
    and without ``$ref`` URLs."""
    names = _named("manager", "memberOf", "member")
    return Wants((lambda view, entry, _: _readable(view, entry, USER), names),
                 (lambda view, entry, _: _readable(view, entry, GROUP), names))
