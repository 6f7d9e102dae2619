"""Directory entries -> SCIM User / Group JSON, through the client's policy.

Every entry and value comes from the client's view (``idm_facade.directory.view``, the one
policy projection shared with LDAP and the role API), so CPR, address visibility, sensitive
titles and hidden entries follow the same rules everywhere. Attribute selection (``attributes`` /
``excludedAttributes`` with the ``returned`` characteristic) decides *before* building which
attributes are produced: a group's member list is never built when ``members`` is not
returned.

Rendering is cached per snapshot as the client sees it, keyed by (entry id, entry version,
policy, selection, base URL); the cache holds the JSON text, so a list response is assembled
by joining strings.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import date, datetime
from functools import lru_cache
from typing import Any

from idm_facade import metrics
from idm_facade.directory.caches import BoundedDict
from idm_facade.directory.entries import Entry
from idm_facade.directory.snapshot import CacheKey
from idm_facade.directory.view import ClientView
from idm_facade.scim import schema as s
from idm_facade.scim.errors import invalid_value
from schemas.attributes import ACCOUNT, ATTRIBUTES, BOOLEAN, DATETIME, MUNICIPAL_GROUP

#: Rendered resources of one snapshot: {(id, version, policy, selection, base): Rendered}.
#: The selection and the base (from the Host header) are the client's choice, so the cache
#: is bounded in bytes (idm_facade.directory.caches): ``[scim] render_cache_mb``, see
#: :func:`configure`.
_CACHE_KEY: CacheKey[BoundedDict] = CacheKey("scim.render")
_CACHE_LIMIT = 200_000
#: Default of ``[scim] render_cache_mb``, in bytes.
RENDER_CACHE_BYTES = 512 << 20
_cache_bytes = RENDER_CACHE_BYTES
_RENDER_BYTES = metrics.CACHE_BYTES.labels("scim_render")


def configure(render_cache_bytes: int) -> None:
    """Bound the rendered-resource cache of the snapshots made from now on (the SCIM service
    sets it from ``[scim] render_cache_mb`` when it starts)."""
    global _cache_bytes
    _cache_bytes = render_cache_bytes


@dataclass(frozen=True)
class Rendered:
    """One rendered resource: its JSON text and what it disclosed (for the access log)."""

    json: str
    subjects: tuple[str, ...]
    #: Sensitive attributes shown ("cpr", "sensitiveTitle"), for the record's ``sensitive``.
    sensitive: tuple[str, ...]
    version: str


# --------------------------------------------------------------------------- selection

#: (extension URN, name) of extension attributes whose name the core schema of the same
#: resource also uses (the municipal ``roles`` beside core ``User.roles``). Clients may omit
#: only the *core* URN prefix (RFC 7644 §3.10), so an unqualified name means the core
#: attribute, as in filters (``schema.lookup``): ``attributes=roles`` does not bring the
#: request-only role provenance along.
_SHADOWED = frozenset(
    (urn.lower(), key)
    for resource, tables in s.SCHEMAS.items()
    for urn, table in tables.items() if urn != s.CORE[resource]
    for key in table if key in tables[s.CORE[resource]]
)


@dataclass(frozen=True)
class Selection:
    """Which attributes to return: ``attributes`` / ``excludedAttributes`` resolved.

    ``named``/``excluded`` hold (urn lower or None, top lower, sub lower or None).
    """

    named: frozenset[tuple[str | None, str, str | None]] | None
    excluded: frozenset[tuple[str | None, str, str | None]]

    def _match(self, items: frozenset, urn: str, name: str) -> list[str | None] | None:
        """Sub-attribute names mentioned for (urn, name); None when not mentioned."""
        found: list[str | None] | None = None
        for item_urn, top, sub in items:
            if top != name or (item_urn is not None and item_urn != urn):
                continue
            if item_urn is None and (urn, name) in _SHADOWED:
                continue
            found = found or []
            found.append(sub)
        return found

    def wants(self, urn: str, attr: s.ScimAttr) -> tuple[bool, frozenset[str] | None,
                                                          frozenset[str]]:
        """(returned?, only these subs or None for all, subs to drop)."""
        urn_l, key = urn.lower(), attr.key
        if attr.returned == "always":
            return True, None, frozenset()
        if attr.returned == "never":
            return False, None, frozenset()
        dropped: frozenset[str] = frozenset()
        if self.named is not None:
            subs = self._match(self.named, urn_l, key)
            if subs is None:
                return False, None, frozenset()
            only = None if None in subs else frozenset(x for x in subs if x)
            return True, only, dropped
        if attr.returned == "request":
            return False, None, frozenset()
        excluded = self._match(self.excluded, urn_l, key)
        if excluded is not None:
            if None in excluded:
                return False, None, frozenset()
            dropped = frozenset(x for x in excluded if x)
        return True, None, dropped

    def wants_meta(self) -> bool:
        """meta is returned unless excluded, or unless ``attributes`` omits it."""
        if self.named is not None:
            return any(top == "meta" for _, top, _ in self.named)
        return not any(top == "meta" and sub is None for _, top, sub in self.excluded)

    @property
    def key(self) -> tuple:
        return (self.named, self.excluded)


ALL = Selection(None, frozenset())


def _parse_list(text: str | list | None) -> frozenset[tuple[str | None, str, str | None]]:
    items: set[tuple[str | None, str, str | None]] = set()
    if not text:
        return frozenset()
    parts = text if isinstance(text, list) else text.split(",")
    urns = sorted(s.all_urns(), key=len, reverse=True)
    for raw in parts:
        path = str(raw).strip()
        if not path:
            continue
        lowered = path.lower()
        urn = None
        for candidate in urns:
            if lowered == candidate:
                urn, lowered = candidate, ""
                break
            if lowered.startswith(candidate + ":"):
                urn, lowered = candidate, lowered[len(candidate) + 1:]
                break
        if not lowered:
            # A whole schema URN names every attribute of that schema, the ``returned:
            # "request"`` ones (cprNumber, role provenance) included: the client asked for
            # all of it. CPR still needs the policy's grant.
            for resource in (s.USER, s.GROUP):
                for schema_urn, table in s.SCHEMAS[resource].items():
                    if schema_urn.lower() == urn:
                        items.update((urn, key, None) for key in table)
            continue
        top, _, sub = lowered.partition(".")
        items.add((urn, top, sub or None))
    return frozenset(items)


@lru_cache(maxsize=1024)
def selection(attributes: str | None, excluded: str | None) -> Selection:
    """Parse the query parameters (cached: the same strings come back again and again)."""
    if attributes and excluded:
        raise invalid_value("attributes and excludedAttributes are mutually exclusive")
    if attributes:
        return Selection(_parse_list(attributes), frozenset())
    return Selection(None, _parse_list(excluded))


# --------------------------------------------------------------------------- values


def _scalar(value: Any, type_: str) -> Any:
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%dT%H:%M:%SZ")
    if isinstance(value, date):
        return value.isoformat()
    if type_ == BOOLEAN:
        return bool(value)
    return value


def _timestamp(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%dT%H:%M:%SZ")
    return str(value)


def _clean(element: dict, keys: tuple[str, ...] | None = None) -> dict:
    out = {}
    for key, value in element.items():
        if value is None or (keys is not None and key not in keys):
            continue
        out[key] = _scalar(value, DATETIME if isinstance(value, datetime) else "")
    return out


class _Context:
    """Per-request rendering inputs."""

    __slots__ = ("view", "base", "subjects", "sensitive")

    def __init__(self, view: ClientView, base: str) -> None:
        self.view = view
        self.base = base
        self.subjects: set[str] = set()
        self.sensitive: set[str] = set()

    def location(self, entry: Entry) -> str:
        endpoint = "Users" if entry.kind == ACCOUNT else "Groups"
        return f"{self.base}/{endpoint}/{entry.id}"


def _complex(ctx: _Context, entry: Entry, attr: s.ScimAttr, urn: str) -> Any:
    """Build one complex attribute's value (None when empty)."""
    name = attr.name
    view = ctx.view
    if name == "name":
        parts = {"formatted": "formattedName", "familyName": "familyName",
                 "givenName": "givenName"}
        out = {}
        for key, directory in parts.items():
            values = view.values(entry, directory)
            if values:
                out[key] = values[0]
        return out or None
    if name == "manager":
        values = view.values(entry, "manager")
        if not values:
            return None
        target = view.get(str(values[0]))
        out = {"value": values[0]}
        ctx.subjects.update(view.subjects([entry], managers=True))
        if target is not None:
            out["$ref"] = ctx.location(target)
            shown = view.values(target, "displayName")
            if shown:
                out["displayName"] = shown[0]
        return out
    if name in ("groups", "members"):
        directory = "memberOf" if name == "groups" else "member"
        out_list = []
        for ref in view.values(entry, directory):
            target = view.get(str(ref))
            if target is None:
                continue
            element: dict = {"value": target.id, "$ref": ctx.location(target)}
            shown = view.values(target, "displayName")
            if shown:
                element["display"] = shown[0]
            if name == "members":
                element["type"] = "User"
                ctx.subjects.update(view.subjects([target]))
            else:
                element["type"] = "direct"
            out_list.append(element)
        return out_list or None
    if attr.complex:
        elements = view.complex(entry, attr.complex)
        if not elements:
            return None
        if name == "roles" and urn != MUNICIPAL_GROUP and urn == s.CORE[s.USER]:
            # Core User.roles lists each role once; the municipal extension keeps one
            # element per grant (the provenance).
            keys: tuple[str, ...] | None = ("value", "display", "type")
            unique = {e.get("value"): e for e in reversed(elements)}
            elements = tuple(e for e in elements if unique.get(e.get("value")) is e)
        else:
            keys = tuple(attr.subs[k].name for k in attr.subs)
        return [_clean(e, keys) for e in elements] or None
    return None


def _attribute(ctx: _Context, entry: Entry, urn: str, attr: s.ScimAttr) -> Any:
    if attr.type == s.COMPLEX_TYPE:
        return _complex(ctx, entry, attr, urn)
    values = ctx.view.values(entry, attr.directory or "")
    if not values:
        return None
    if attr.multi:
        return [_scalar(v, attr.type) for v in values]
    return _scalar(values[0], attr.type)


def _note_sensitive(ctx: _Context, entry: Entry, attr: s.ScimAttr, value: Any) -> None:
    """Note a CPR number or a sensitive job title that ``value`` (as sent) shows: attributes
    the map marks ``cpr`` or ``title`` sensitive, and engagement titles."""
    spec = ATTRIBUTES.get(attr.directory or "")
    if spec is not None and spec.sensitivity in ("cpr", "title"):
        ctx.sensitive.update(ctx.view.sensitive([entry], [spec.name]))
    elif attr.complex == "engagements" and any("title" in e for e in value):
        ctx.sensitive.update(ctx.view.sensitive([entry], ["engagements.title"]))


def _prune(value: Any, only: frozenset[str] | None, dropped: frozenset[str]) -> Any:
    if not isinstance(value, (dict, list)) or (only is None and not dropped):
        return value

    def one(element: dict) -> dict:
        return {k: v for k, v in element.items()
                if (only is None or k.lower() in only) and k.lower() not in dropped}

    if isinstance(value, list):
        pruned = [one(e) for e in value if isinstance(e, dict)]
        return [e for e in pruned if e] or None
    return one(value) or None


def build(ctx: _Context, entry: Entry, sel: Selection) -> dict:
    """The SCIM resource for ``entry`` as a dict."""
    resource = s.USER if entry.kind == ACCOUNT else s.GROUP
    core = s.CORE[resource]
    doc: dict[str, Any] = {"schemas": [core], "id": entry.id}
    for urn, table in s.SCHEMAS[resource].items():
        target = doc if urn == core else {}
        for attr in table.values():
            if attr.name == "id":
                continue
            wanted, only, dropped = sel.wants(urn, attr)
            if not wanted:
                continue
            value = _attribute(ctx, entry, urn, attr)
            value = _prune(value, only, dropped)
            if value is None or value == []:
                continue
            _note_sensitive(ctx, entry, attr, value)
            target[attr.name] = value
        if urn != core and target:
            doc["schemas"].append(urn)
            doc[urn] = target
    if sel.wants_meta():
        created = ctx.view.first(entry, "created")
        modified = ctx.view.first(entry, "modified", created)
        doc["meta"] = {"resourceType": resource, "created": _timestamp(created),
                       "lastModified": _timestamp(modified), "location": ctx.location(entry),
                       "version": etag(entry)}
        doc["meta"] = {k: v for k, v in doc["meta"].items() if v is not None}
    if entry.kind == ACCOUNT:
        ctx.subjects.update(ctx.view.subjects([entry]))
    return doc


def etag(entry: Entry) -> str:
    """Weak entity tag from the entry's whole state (not from the projected JSON)."""
    return f'W/"{entry.version}"'


def render(view: ClientView, entry: Entry, base: str, sel: Selection) -> Rendered:
    """Render (or fetch from the per-snapshot cache) one resource as the client sees it."""
    cache = view.cached(_CACHE_KEY, lambda: BoundedDict(_cache_bytes, _CACHE_LIMIT))
    key = (entry.id, entry.version, view.policy, sel.key, base)
    found = cache.get(key)
    if found is not None:
        return found
    ctx = _Context(view, base)
    doc = build(ctx, entry, sel)
    rendered = Rendered(json.dumps(doc, separators=(",", ":"), ensure_ascii=False),
                        tuple(sorted(ctx.subjects)), tuple(sorted(ctx.sensitive)),
                        etag(entry))
    # bytes: the JSON (str: about one byte a character here) and roughly the rest
    cache.keep(key, rendered, len(rendered.json) + 64 * len(rendered.subjects) + 300)
    _RENDER_BYTES.set(cache.size)
    return rendered
