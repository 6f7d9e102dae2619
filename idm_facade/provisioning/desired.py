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
from dataclasses import dataclass
from typing import Any

from idm_facade.directory import filters as f
from idm_facade.directory.view import ClientView
from idm_facade.provisioning.targets import Target
from idm_facade.scim import filters as scim_filters
from idm_facade.scim import schema as scim_schemas
from idm_facade.scim.render import render, selection
from schemas.attributes import ACCOUNT, CORE_GROUP, CORE_USER, ENTERPRISE_USER

USER, GROUP = "User", "Group"
_USER_SELECTION = selection(None, "groups,roles,x509Certificates,entitlements")
_GROUP_SELECTION = selection(None, None)
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


def _user(view: ClientView, entry: object) -> Wanted:
    rendered = render(view, entry, _BASE, _USER_SELECTION)  # type: ignore[arg-type]
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


def _group(view: ClientView, entry: object, users: set[str]) -> Wanted:
    rendered = render(view, entry, _BASE, _GROUP_SELECTION)  # type: ignore[arg-type]
    doc = json.loads(rendered.json)
    members = sorted(m["value"] for m in doc.get("members", ())
                     if m.get("type", "User") == "User" and m["value"] in users)
    body = {"schemas": [CORE_GROUP], "externalId": doc["id"],
            "displayName": doc.get("displayName") or doc["id"],
            "members": [{"value": m, "type": "User"} for m in members]}
    return Wanted(doc["id"], GROUP, body, _digest(body), ())


def wanted(view: ClientView, target: Target) -> dict[str, Wanted]:
    """Everything ``target`` should hold, users first (groups name them)."""
    flt = scim_filters.translate(target.filter, ("User",)) if target.filter else f.TRUE
    out: dict[str, Wanted] = {}
    for entry in view.search(flt, kinds=frozenset({ACCOUNT})):
        item = _user(view, entry)
        out[item.entry_id] = item
    users = set(out)
    for entry in view.search(f.TRUE, kinds=frozenset(target.groups)):
        item = _group(view, entry, users)
        out[item.entry_id] = item
    return out


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


def readable(view: ClientView, flt: str | None, groups: tuple[str, ...]) -> dict[str, Wanted]:
    """What a client reads through ``view``, for its change feed: every user (narrowed by
    ``flt``) and group of ``groups`` it may see, each the whole SCIM resource as
    ``/scim/v2`` gives it (every attribute its policy allows, CPR only with the grant),
    without ``meta``, whose timestamps change when nothing the client sees does, and
    without ``$ref`` URLs."""
    users = scim_filters.translate(flt, ("User",)) if flt else f.TRUE
    out: dict[str, Wanted] = {}
    for entry in view.search(users, kinds=frozenset({ACCOUNT})):
        item = _readable(view, entry, USER)
        out[item.entry_id] = item
    for entry in view.search(f.TRUE, kinds=frozenset(groups)):
        item = _readable(view, entry, GROUP)
        out[item.entry_id] = item
    return out
