"""The directory information tree: where each directory entry lives in LDAP and how it looks.

Layout under the base DN (``[ldap] base_dn``, default ``dc=<organisation user_key>,dc=dk``)::

    <base>                                   dcObject / organization
      ou=people    uid=<userName>            inetOrgPerson + idmPerson   (kind account)
      ou=units     ou=<name>,ou=<parent>...  organizationalUnit + idmOrgUnit
                                             (the line organisation: one hierarchy)
      ou=groups    cn=<userKey>              groupOfNames + idmGroup     (units, roles,
                                             role groups; member, uniqueMember, memberUid)
      ou=clients   cn=<client name>          the service accounts clients bind as
    ""             rootDSE          (``subschema``)
    cn=Subschema   subschema subentry, generated from schemas/attributes.py (``subschema``)

A unit therefore appears twice: as an organizationalUnit in the ``ou=units`` tree (when it
belongs to the line organisation) and as a group in ``ou=groups``. Each place is a *view*;
a search asks the directory once per view it reaches.

A :class:`Layout` (DNs of every entry, both directions) is built once per snapshot and kept
with the snapshot (:data:`LAYOUT_KEY`); rendered and BER-encoded entries are cached in it per
(entry, view, policy, attribute selection), so a refresh drops every cached rendering at once.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from threading import Lock
from typing import Any

from idm_facade import metrics
from idm_facade.config import megabytes
from idm_facade.directory.caches import BoundedDict
from idm_facade.directory.entries import Entry
from idm_facade.directory.snapshot import CacheKey, Snapshot
from idm_facade.directory.view import ClientView
from idm_facade.ldap import ber
from idm_facade.ldap.syntax import (
    NormDN,
    escape_value,
    ldap_value,
    parse_dn,
)
from schemas.attributes import (
    ACCOUNT,
    ATTRIBUTES,
    DATETIME,
    GROUP_KINDS,
    ROLE,
    ROLEGROUP,
    UNIT,
    Attribute,
    on_declare,
)

PEOPLE, UNITS, GROUPS, CLIENTS = "people", "units", "groups", "clients"
SUBSCHEMA_DN = "cn=Subschema"
VENDOR = "idm-facade"

#: Kinds each view ranges over.
VIEW_KINDS: dict[str, frozenset[str]] = {
    PEOPLE: frozenset({ACCOUNT}),
    UNITS: frozenset({UNIT}),
    GROUPS: frozenset(GROUP_KINDS),
}

#: Directory attributes rendered as DNs (values are entry ids) and the view they point into.
DN_ATTRS: dict[str, str] = {"member": PEOPLE, "memberOf": GROUPS, "manager": PEOPLE}

#: Directory attributes shown only with ``[ldap] posix = true`` (and never on the
#: organizationalUnit view): without it they neither render nor match in filters.
POSIX_ATTRS = frozenset({"uidNumber", "gidNumber"})

#: LDAP names that are operational: returned only with ``+`` or when asked for by name.
OPERATIONAL = ("entryUUID", "createTimestamp", "modifyTimestamp", "entryDN",
               "hasSubordinates", "subschemaSubentry", "structuralObjectClass")
_OPERATIONAL_LOWER = frozenset(n.lower() for n in OPERATIONAL)
_OPERATIONAL_DIR = {"id": "entryUUID", "created": "createTimestamp",
                    "modified": "modifyTimestamp"}


# ------------------------------------------------------------------ schema of the views


def _objectclasses(options: LdapOptions) -> dict[str, tuple[str, ...]]:
    people = ["top", "person", "organizationalPerson", "inetOrgPerson", "idmPerson"]
    groups = ["top", "groupOfNames", "idmGroup"]
    if options.posix:
        people.append("posixAccount")
        groups.append("posixGroup")
    return {PEOPLE: tuple(people), UNITS: ("top", "organizationalUnit", "idmOrgUnit"),
            GROUPS: tuple(groups), CLIENTS: ("top", "applicationProcess", "idmClient")}


@dataclass(frozen=True)
class LdapOptions:
    """The ``[ldap]`` settings the DIT depends on."""

    base_dn: str
    units_root: str | None = None
    member_attributes: tuple[str, ...] = ("member", "uniqueMember", "memberUid")
    posix: bool = False
    #: Bytes of encoded entries kept per snapshot (``[ldap] render_cache_mb``, default 512);
    #: the cache is emptied when the next one would pass it.
    render_cache_bytes: int = 512 << 20


#: Extra LDAP names per view that the attribute map cannot say by itself (one directory
#: attribute per name there): {view: {ldap name lower: (canonical name, directory attrs)}}.
_VIEW_ALIASES: dict[str, dict[str, tuple[str, tuple[str, ...]]]] = {
    PEOPLE: {"cn": ("cn", ("displayName",)), "ou": ("ou", ("department",))},
    UNITS: {"ou": ("ou", ("displayName",)), "cn": ("cn", ())},
    GROUPS: {"cn": ("cn", ("userKey", "displayName")), "ou": ("ou", ())},
}


def directory_attrs(view: str, ldap_name: str, posix: bool = False
                    ) -> tuple[str, tuple[str, ...]] | None:
    """(canonical LDAP name, directory attributes) that an LDAP attribute type names in a
    view; None when the name is unknown there (so a filter on it is Undefined). The posix
    numbers exist only with ``posix`` and outside the organizationalUnit view."""
    lower = ldap_name.lower()
    alias = _VIEW_ALIASES.get(view, {}).get(lower)
    if alias is not None:
        return alias if alias[1] else None
    if lower == "uniquemember":
        return ("uniqueMember", ("member",)) if view == GROUPS else None
    from schemas.attributes import by_ldap_name

    spec = by_ldap_name(lower)
    if spec is None or not (spec.kinds & VIEW_KINDS.get(view, frozenset())):
        return None
    if spec.name in POSIX_ATTRS and not (posix and view in (PEOPLE, GROUPS)):
        return None
    canonical = next(n for n in spec.ldap if n.lower() == lower)
    return canonical, (spec.name,)


def _rendered_attrs(view: str) -> list[tuple[str, Attribute]]:
    """(LDAP name, attribute) pairs rendered for entries of a view, in a fixed order."""
    kinds = VIEW_KINDS[view]
    out: list[tuple[str, Attribute]] = []
    for spec in ATTRIBUTES.values():
        if not spec.ldap or not (spec.kinds & kinds) or spec.name in _OPERATIONAL_DIR:
            continue
        for name in spec.ldap:
            alias = _VIEW_ALIASES.get(view, {}).get(name.lower())
            if alias is not None:
                continue  # rendered by the view's own rule below
            out.append((name, spec))
    return out


_RENDERED = {v: _rendered_attrs(v) for v in VIEW_KINDS}
on_declare(lambda: _RENDERED.update({v: _rendered_attrs(v) for v in VIEW_KINDS}))


# ------------------------------------------------------------------ selection


@dataclass(frozen=True)
class Selection:
    """Which attributes a search asked for (RFC 4511 §4.5.1.8)."""

    user: bool
    operational: bool
    names: frozenset[str]
    types_only: bool = False

    @classmethod
    def parse(cls, requested: Iterable[bytes | str], types_only: bool = False) -> Selection:
        names = []
        for raw in requested:
            name = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
            names.append(name.strip().split(";", 1)[0].lower())
        user = not names or "*" in names
        if names == ["1.1"]:
            return cls(False, False, frozenset(), bool(types_only))
        return cls(user, "+" in names, frozenset(n for n in names if n not in ("*", "+", "1.1")),
                   bool(types_only))

    def wants(self, ldap_name: str, operational: bool = False) -> bool:
        """Is this (canonical) attribute selected?"""
        if ldap_name.lower() in self.names:
            return True
        return self.operational if operational else self.user


# ------------------------------------------------------------------ the layout


@dataclass
class Rendered:
    """One encoded SearchResultEntry and what it disclosed."""

    op: bytes
    subjects: tuple[str, ...]
    cpr: bool


@dataclass
class Layout:
    """DNs of every entry of one snapshot, both ways, and the rendering cache."""

    options: LdapOptions
    base: str
    base_norm: NormDN
    account_dn: dict[str, str] = field(default_factory=dict)
    account_by_uid: dict[str, str] = field(default_factory=dict)
    unit_dn: dict[str, str] = field(default_factory=dict)
    unit_by_dn: dict[NormDN, str] = field(default_factory=dict)
    unit_children: set[str] = field(default_factory=set)
    group_dn: dict[str, str] = field(default_factory=dict)
    group_by_cn: dict[str, str] = field(default_factory=dict)
    line_root: str | None = None
    #: Encoded entries (bounded by the options' ``render_cache_bytes``) and static ones.
    cache: BoundedDict = field(init=False)
    #: Filters translated once per shape (:mod:`idm_facade.ldap.filtershape`).
    filters: dict[tuple, Any] = field(default_factory=dict)
    lock: Lock = field(default_factory=Lock)

    def __post_init__(self) -> None:
        self.cache = BoundedDict(self.options.render_cache_bytes, 400_000)

    @property
    def containers(self) -> dict[str, str]:
        """DN of each container entry under the base."""
        return {v: f"ou={v},{self.base}" for v in (PEOPLE, UNITS, GROUPS, CLIENTS)}

    def dn_of(self, view: str, entry_id: str) -> str | None:
        """DN of an entry in a view, None when it has no place there."""
        if view == PEOPLE:
            return self.account_dn.get(entry_id)
        if view == GROUPS:
            return self.group_dn.get(entry_id)
        if view == UNITS:
            return self.unit_dn.get(entry_id)
        return None

    def id_of_dn(self, dn: NormDN) -> tuple[str, str] | None:
        """(view, entry id) of a DN under the base, None when it names no entry."""
        n = len(self.base_norm)
        if len(dn) < n + 2 or dn[len(dn) - n:] != self.base_norm:
            return None
        rel = dn[:len(dn) - n]
        top = rel[-1]
        if top == (("ou", PEOPLE),) and len(rel) == 2 and len(rel[0]) == 1 \
                and rel[0][0][0] == "uid":
            found = self.account_by_uid.get(rel[0][0][1])
            return (PEOPLE, found) if found else None
        if top == (("ou", GROUPS),) and len(rel) == 2 and len(rel[0]) == 1 \
                and rel[0][0][0] == "cn":
            found = self.group_by_cn.get(rel[0][0][1])
            return (GROUPS, found) if found else None
        if top == (("ou", UNITS),):
            found = self.unit_by_dn.get(dn)
            return (UNITS, found) if found else None
        return None


def base_dn_for(config: Any, snapshot: Snapshot) -> str:
    """The base DN: the access-control module's rule when present, else ``[ldap] base_dn``,
    else ``dc=<organisation user_key>,dc=dk``."""
    try:
        from idm_facade.access import clients as auth

        helper = getattr(auth, "base_dn", None)
    except ImportError:
        helper = None
    if helper is not None:
        return str(helper(config, snapshot))
    configured = config.get("ldap", "base_dn") if config is not None else None
    if configured:
        return str(configured)
    org = getattr(snapshot.data, "organisation", None)
    key = getattr(org, "user_key", None) or "example"
    return f"dc={escape_value(str(key).lower())},dc=dk"


def options_from(config: Any, snapshot: Snapshot) -> LdapOptions:
    """LdapOptions from the ``[ldap]`` table."""
    section = config.section("ldap") if config is not None else {}
    members = section.get("member_attributes", ("member", "uniqueMember", "memberUid"))
    return LdapOptions(
        base_dn=base_dn_for(config, snapshot),
        units_root=section.get("units_root"),
        member_attributes=tuple(members),
        posix=bool(section.get("posix", False)),
        render_cache_bytes=megabytes(section, "render_cache_mb",
                                     LdapOptions.render_cache_bytes),
    )


_layout_lock = Lock()

#: A snapshot's DIT (see :func:`layout_for`) and the ``[ldap]`` options it was built with.
LAYOUT_KEY: CacheKey[Layout] = CacheKey("ldap.layout")
OPTIONS_KEY: CacheKey[LdapOptions] = CacheKey("ldap.options")


def layout_for(snapshot: Snapshot, options: LdapOptions) -> Layout:
    """The snapshot's Layout (built on first use, then kept with the snapshot)."""
    found = snapshot.peek(LAYOUT_KEY)
    if found is not None and found.options == options:
        return found
    with _layout_lock:  # built once: about 0.2 s at the largest municipality
        found = snapshot.peek(LAYOUT_KEY)
        if found is not None and found.options == options:
            return found
        return snapshot.keep(LAYOUT_KEY, build_layout(snapshot, options))


def _pick_root(snapshot: Snapshot, roots: list[Entry], wanted: str | None) -> str | None:
    if wanted:
        lw = wanted.casefold()
        for e in roots:
            if lw in (e.id.lower(), str(e.first("userKey", "")).casefold(),
                      str(e.first("displayName", "")).casefold()):
                return e.id
    if not roots:
        return None
    # The line organisation: the root with the most units under it (ties: name, id).
    index = snapshot.equality.get("ancestor", {})
    return max(roots, key=lambda e: (len(index.get(e.id.lower(), ())),
                                     str(e.first("displayName", "")), e.id)).id


def build_layout(snapshot: Snapshot, options: LdapOptions) -> Layout:
    """Compute every DN of one snapshot."""
    base = options.base_dn
    layout = Layout(options=options, base=base, base_norm=parse_dn(base))
    people = f"ou={PEOPLE},{base}"
    groups = f"ou={GROUPS},{base}"
    units_top = f"ou={UNITS},{base}"
    units: list[Entry] = []
    for entry in snapshot.entries:
        if entry.kind == ACCOUNT:
            uid = str(entry.first("userName", entry.id))
            layout.account_dn[entry.id] = f"uid={escape_value(uid)},{people}"
            layout.account_by_uid[" ".join(uid.split()).casefold()] = entry.id
        elif entry.kind in GROUP_KINDS:
            if entry.kind == UNIT:
                units.append(entry)
    # Groups: cn=<userKey>; a clash between kinds keeps the first and suffixes the others.
    for kind in (UNIT, ROLE, ROLEGROUP):
        for handle in sorted(snapshot.by_kind.get(kind, ())):
            entry = snapshot.entries[handle]
            cn = str(entry.first("userKey", entry.id))
            key = " ".join(cn.split()).casefold()
            if key in layout.group_by_cn:
                cn = f"{cn}-{kind}"
                key = " ".join(cn.split()).casefold()
                if key in layout.group_by_cn:
                    cn, key = entry.id, entry.id.lower()
            layout.group_by_cn[key] = entry.id
            layout.group_dn[entry.id] = f"cn={escape_value(cn)},{groups}"
    # The unit tree: one hierarchy, ou=<name> nested by parent; sibling name clashes get the
    # unit code appended.
    roots = [u for u in units if not u.attrs.get("parent")]
    root = _pick_root(snapshot, roots, options.units_root)
    layout.line_root = root
    if root is not None:
        children: dict[str, list[Entry]] = {}
        tree = [u for u in units if root in u.attrs.get("ancestor", ())]
        for u in tree:
            parent = u.first("parent")
            if parent:
                children.setdefault(parent, []).append(u)
        stack: list[tuple[Entry | None, str]] = [(snapshot.get(root), units_top)]
        while stack:
            popped, parent_dn = stack.pop()
            if popped is None:
                continue
            entry = popped
            name = str(entry.first("displayName", entry.id))
            dn = f"ou={escape_value(name)},{parent_dn}"
            norm = parse_dn(dn)
            if norm in layout.unit_by_dn:
                name = f"{name} ({entry.first('userKey', entry.id)})"
                dn = f"ou={escape_value(name)},{parent_dn}"
                norm = parse_dn(dn)
            layout.unit_dn[entry.id] = dn
            layout.unit_by_dn[norm] = entry.id
            kids = children.get(entry.id, [])
            if kids:
                layout.unit_children.add(entry.id)
            for kid in sorted(kids, key=lambda e: (str(e.first("displayName", "")), e.id),
                              reverse=True):
                stack.append((kid, dn))
    return layout


# ------------------------------------------------------------------ rendering


def render_attributes(layout: Layout, view: str, entry: Entry, seen: ClientView
                      ) -> list[tuple[str, list[str], bool]]:
    """(canonical LDAP name, values, operational) of an entry as a client sees it."""
    opts = layout.options
    out: list[tuple[str, list[str], bool]] = [
        ("objectClass", list(_objectclasses(opts)[view]), False)]
    values_of = seen.values

    def refs(attr: str, target: str) -> list[str]:
        ids = values_of(entry, attr)
        dns = []
        for ref in ids:
            dn = layout.dn_of(target, str(ref))
            if dn is not None:
                dns.append(dn)
        return dns

    if view == PEOPLE:
        out.append(("cn", [str(v) for v in values_of(entry, "displayName")], False))
        out.append(("ou", [str(v) for v in values_of(entry, "department")], False))
    elif view == UNITS:
        out.append(("ou", [str(v) for v in values_of(entry, "displayName")], False))
    else:
        cn = [str(v) for v in values_of(entry, "userKey")]
        dn = layout.group_dn.get(entry.id, "")
        rdn_value = parse_dn(dn)[0][0][1] if dn else ""
        if not cn or cn[0].casefold() != rdn_value:
            cn.insert(0, rdn_value)
        out.append(("cn", cn, False))
    for name, spec in _RENDERED[view]:
        if view == UNITS and spec.name == "member":
            continue  # organizationalUnit carries no members; see the group view
        if spec.name in POSIX_ATTRS and not (opts.posix and view != UNITS):
            continue
        if spec.name in DN_ATTRS:
            values = refs(spec.name, DN_ATTRS[spec.name])
        else:
            values = [ldap_value(spec.type, v) for v in values_of(entry, spec.name)]
        if values:
            out.append((name, values, False))
    if view == GROUPS:
        members = values_of(entry, "member")
        if "uniqueMember" in opts.member_attributes:
            out.append(("uniqueMember", [d for d in (layout.account_dn.get(str(m))
                                                     for m in members) if d], False))
        if "memberUid" in opts.member_attributes:
            uids = []
            for m in members:
                acc = seen.get(str(m))
                if acc is not None:
                    uids.append(str(seen.first(acc, "userName", "")))
            out.append(("memberUid", uids, False))
        if "member" not in opts.member_attributes:
            out = [a for a in out if a[0] != "member"]
    if view == PEOPLE and opts.posix:
        # uidNumber and gidNumber come from the entry (above); these two follow from uid.
        uid = str(seen.first(entry, "userName", ""))
        out += [("homeDirectory", [f"/home/{uid}"], False),
                ("loginShell", ["/bin/bash"], False)]
    dn = layout.dn_of(view, entry.id) or ""
    has_subs = view == UNITS and entry.id in layout.unit_children
    out += [
        ("entryUUID", [entry.id], True),
        ("createTimestamp", [ldap_value(DATETIME, v) for v in values_of(entry, "created")], True),
        ("modifyTimestamp", [ldap_value(DATETIME, v) for v in values_of(entry, "modified")], True),
        ("entryDN", [dn], True),
        ("hasSubordinates", ["TRUE" if has_subs else "FALSE"], True),
        ("subschemaSubentry", [SUBSCHEMA_DN], True),
        ("structuralObjectClass", [_objectclasses(opts)[view][-2]], True),
    ]
    return [a for a in out if a[1]]


_RENDER_BYTES = metrics.CACHE_BYTES.labels("ldap_render")


def encode_entry(layout: Layout, view: str, entry: Entry, seen: ClientView,
                 selection: Selection) -> Rendered:
    """The encoded SearchResultEntry (cached per snapshot, entry, view, policy, selection)."""
    key = (entry.id, view, seen.policy, selection)
    found = layout.cache.get(key)
    if found is not None:
        return found
    attrs = render_attributes(layout, view, entry, seen)
    pairs: list[tuple[bytes, list[bytes]]] = []
    cpr = False
    members_sent = managers_sent = False
    for name, values, operational in attrs:
        if not selection.wants(name, operational):
            continue
        if name == "idmCprNumber":
            cpr = True
        if name in ("member", "uniqueMember", "memberUid"):
            members_sent = True
        managers_sent = managers_sent or name == "manager"
        pairs.append((name.encode(), [] if selection.types_only else
                      [v.encode() for v in values]))
    if selection.types_only:
        cpr = False  # no value was disclosed
    shown = not selection.types_only
    subjects = tuple(seen.subjects([entry], members=members_sent and shown,
                                   managers=managers_sent and shown))
    dn = layout.dn_of(view, entry.id) or ""
    rendered = Rendered(ber.search_entry(dn.encode(), pairs), subjects, cpr)
    # bytes: the entry, and roughly its key, the Rendered and the subjects' tuple
    layout.cache.keep(key, rendered, len(rendered.op) + 200)
    _RENDER_BYTES.set(layout.cache.size)
    return rendered


# ------------------------------------------------------------------ static entries


def static_entry(layout: Layout, which: str, client_name: str | None = None
                 ) -> tuple[str, list[tuple[str, list[str], bool]]]:
    """(DN, attributes) of the base entry, a container, or a client entry (kept in the
    layout's cache: a point search below the base meets six of them)."""
    key = ("static", which, client_name)
    found = layout.cache.get(key)
    if found is None:
        found = layout.cache[key] = _static_entry(layout, which, client_name)
    return found


def _static_entry(layout: Layout, which: str, client_name: str | None
                  ) -> tuple[str, list[tuple[str, list[str], bool]]]:
    base = layout.base
    if which == "base":
        first = layout.base_norm[0][0] if layout.base_norm else ("dc", "")
        attrs = [("objectClass", ["top", "dcObject", "organization"], False),
                 (first[0], [first[1]], False) if first[0] != "o" else ("o", [first[1]], False),
                 ("o", [first[1]], False)]
        if first[0] == "o":
            attrs = attrs[:1] + attrs[2:]
        dn = base
        subs = True
    elif which == CLIENTS + ":self":
        dn = f"cn={escape_value(client_name or '')},ou={CLIENTS},{base}"
        attrs = [("objectClass", ["top", "applicationProcess", "idmClient"], False),
                 ("cn", [client_name or ""], False)]
        subs = False
    else:
        dn = f"ou={which},{base}"
        attrs = [("objectClass", ["top", "organizationalUnit"], False), ("ou", [which], False)]
        subs = True
    attrs += [("entryDN", [dn], True), ("hasSubordinates", ["TRUE" if subs else "FALSE"], True),
              ("subschemaSubentry", [SUBSCHEMA_DN], True),
              ("entryUUID", [str(uuid.uuid5(uuid.NAMESPACE_URL, "ldap:" + dn.lower()))], True),
              ("structuralObjectClass", [attrs[0][1][-1] if which != "base" else
                                         "organization"], True)]
    return dn, attrs


def encode_static(dn: str, attrs: list[tuple[str, list[str], bool]],
                  selection: Selection) -> bytes:
    """Encode a static entry under an attribute selection."""
    pairs = [(n.encode(), [] if selection.types_only else [v.encode() for v in vals])
             for n, vals, op in attrs if selection.wants(n, op)]
    return ber.search_entry(dn.encode(), pairs)
