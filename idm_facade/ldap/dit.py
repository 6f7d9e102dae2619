"""The directory information tree: where each directory entry lives in LDAP and how it looks.

Layout under the base DN (``[ldap] base_dn``, default ``dc=<organisation user_key>,dc=dk``)::

    <base>                                   dcObject / organization
      ou=people    uid=<userName>            inetOrgPerson + idmPerson   (kind account)
      ou=units     ou=<name>,ou=<parent>...  organizationalUnit + idmOrgUnit
                                             (the line organisation: one hierarchy)
      ou=groups    cn=<userKey>              groupOfNames + idmGroup     (units, roles,
                                             role groups; member, uniqueMember, memberUid)
      ou=clients   cn=<client name>          the service accounts clients bind as
    ""             rootDSE
    cn=Subschema   subschema subentry, generated from schemas/attributes.py

A unit therefore appears twice: as an organizationalUnit in the ``ou=units`` tree (when it
belongs to the line organisation) and as a group in ``ou=groups``. Each place is a *view*;
a search asks the directory once per view it reaches.

A :class:`Layout` (DNs of every entry, both directions) is built once per snapshot and kept
in ``snapshot.extra``; rendered and BER-encoded entries are cached in it per (entry, view,
policy, attribute selection), so a refresh drops every cached rendering at once.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timezone
from threading import Lock
from typing import Any

from idm_facade.directory import view as dview
from idm_facade.directory.entries import Entry
from idm_facade.directory.policy import Policy
from idm_facade.ldap import ber
from schemas.attributes import (
    ACCOUNT,
    ATTRIBUTES,
    BOOLEAN,
    DATETIME,
    GROUP_KINDS,
    ROLE,
    ROLEGROUP,
    UNIT,
    Attribute,
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


class InvalidDN(ValueError):
    """A string that is not a DN (RFC 4514)."""


# ------------------------------------------------------------------ DN syntax

RDN = tuple[tuple[str, str], ...]
NormDN = tuple[RDN, ...]

_HEX = "0123456789abcdefABCDEF"


def _unescape(value: str) -> str:
    if "\\" not in value:
        return value
    out = bytearray()
    i = 0
    while i < len(value):
        ch = value[i]
        if ch == "\\":
            if i + 1 >= len(value):
                raise InvalidDN("dangling escape")
            nxt = value[i + 1]
            if nxt in _HEX and i + 2 < len(value) and value[i + 2] in _HEX:
                out.append(int(value[i + 1:i + 3], 16))
                i += 3
                continue
            out.extend(nxt.encode())
            i += 2
            continue
        out.extend(ch.encode())
        i += 1
    try:
        return out.decode()
    except UnicodeDecodeError as exc:
        raise InvalidDN("escaped bytes are not UTF-8") from exc


def _split(text: str, sep: str) -> list[str]:
    parts, start, i, quoted = [], 0, 0, False
    while i < len(text):
        ch = text[i]
        if ch == "\\":
            i += 2
            continue
        if ch == '"':
            quoted = not quoted
        elif ch == sep and not quoted:
            parts.append(text[start:i])
            start = i + 1
        i += 1
    parts.append(text[start:])
    return parts


def parse_dn(text: str) -> NormDN:
    """Normalised DN: RDNs leaf first, attribute types lower-case, values unescaped and
    case-folded (every RDN attribute here matches case-insensitively). Raises InvalidDN."""
    text = text.strip()
    if not text:
        return ()
    rdns = []
    for raw in _split(text, ","):
        avas = []
        for ava in _split(raw, "+"):
            if "=" not in ava:
                raise InvalidDN(f"no '=' in RDN {raw.strip()!r}")
            type_, value = ava.split("=", 1)
            type_ = type_.strip().lower()
            if not type_ or not (type_[0].isalpha() or type_[0].isdigit()):
                raise InvalidDN(f"bad attribute type in {raw.strip()!r}")
            value = value.strip()
            if len(value) >= 2 and value[0] == '"' and value[-1] == '"':
                value = value[1:-1]
            value = _unescape(value)
            avas.append((type_, " ".join(value.split()).casefold()))
        rdns.append(tuple(sorted(avas)))
    return tuple(rdns)


def escape_value(value: str) -> str:
    """Escape an attribute value for a DN string (RFC 4514 §2.4)."""
    out = []
    for i, ch in enumerate(value):
        if ch in ',+"\\<>;=' or (ch == "#" and i == 0) or (ch == " " and i in (0, len(value) - 1)):
            out.append("\\" + ch)
        elif ord(ch) < 0x20:
            out.append(f"\\{ord(ch):02x}")
        else:
            out.append(ch)
    return "".join(out)


# ------------------------------------------------------------------ value rendering


def generalized_time(value: datetime) -> str:
    """GeneralizedTime in UTC (``20240131120000Z``)."""
    if value.tzinfo is not None:
        value = value.astimezone(UTC)
    return value.strftime("%Y%m%d%H%M%SZ")


def parse_generalized_time(text: str) -> datetime:
    """GeneralizedTime (``YYYYMMDDHH[MM[SS]][.f]Z`` or with an offset) to an aware datetime."""
    text = text.strip()
    tz = UTC
    if text.endswith("Z"):
        text = text[:-1]
    elif len(text) > 5 and text[-5] in "+-":
        sign = 1 if text[-5] == "+" else -1
        from datetime import timedelta

        tz = timezone(sign * timedelta(hours=int(text[-4:-2]), minutes=int(text[-2:])))
        text = text[:-5]
    text = text.split(".")[0].split(",")[0]
    if len(text) not in (10, 12, 14) or not text.isdigit():
        raise ValueError("not a GeneralizedTime")
    text = text.ljust(14, "0")
    return datetime.strptime(text, "%Y%m%d%H%M%S").replace(tzinfo=tz)


def _text(spec_type: str, value: Any) -> str:
    if spec_type == BOOLEAN or isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if isinstance(value, datetime):
        return generalized_time(value)
    if spec_type == DATETIME:
        return str(value)
    return str(value)


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
    cache: dict[tuple, Any] = field(default_factory=dict)
    lock: Lock = field(default_factory=Lock)

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


def base_dn_for(config: Any, snapshot: Any) -> str:
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
    data = snapshot.extra.get("data")
    org = getattr(data, "organisation", None)
    key = getattr(org, "user_key", None) or "example"
    return f"dc={escape_value(str(key).lower())},dc=dk"


def options_from(config: Any, snapshot: Any) -> LdapOptions:
    """LdapOptions from the ``[ldap]`` table."""
    section = config.section("ldap") if config is not None else {}
    members = section.get("member_attributes", ("member", "uniqueMember", "memberUid"))
    return LdapOptions(
        base_dn=base_dn_for(config, snapshot),
        units_root=section.get("units_root"),
        member_attributes=tuple(members),
        posix=bool(section.get("posix", False)),
    )


_layout_lock = Lock()


def layout_for(snapshot: Any, options: LdapOptions) -> Layout:
    """The snapshot's Layout (built on first use, then kept with the snapshot)."""
    found = snapshot.extra.get("ldap_layout")
    if found is not None and found.options == options:
        return found
    with _layout_lock:
        found = snapshot.extra.get("ldap_layout")
        if found is not None and found.options == options:
            return found
        layout = build_layout(snapshot, options)
        snapshot.extra["ldap_layout"] = layout
        return layout


def _pick_root(snapshot: Any, roots: list[Entry], wanted: str | None) -> str | None:
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


def build_layout(snapshot: Any, options: LdapOptions) -> Layout:
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
        stack = [(snapshot.get(root), units_top)]
        while stack:
            entry, parent_dn = stack.pop()
            if entry is None:
                continue
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


def render_attributes(layout: Layout, view: str, entry: Entry, policy: Policy,
                      snapshot: Any) -> list[tuple[str, list[str], bool]]:
    """(canonical LDAP name, values, operational) of an entry as a client sees it."""
    opts = layout.options
    out: list[tuple[str, list[str], bool]] = [
        ("objectClass", list(_objectclasses(opts)[view]), False)]
    values_of = dview.visible_values

    def refs(attr: str, target: str) -> list[str]:
        ids = values_of(entry, attr, policy, snapshot)
        dns = []
        for ref in ids:
            dn = layout.dn_of(target, str(ref))
            if dn is not None:
                dns.append(dn)
        return dns

    if view == PEOPLE:
        out.append(("cn", [str(v) for v in values_of(entry, "displayName", policy)], False))
        out.append(("ou", [str(v) for v in values_of(entry, "department", policy)], False))
    elif view == UNITS:
        out.append(("ou", [str(v) for v in values_of(entry, "displayName", policy)], False))
    else:
        cn = [str(v) for v in values_of(entry, "userKey", policy)]
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
            values = [_text(spec.type, v) for v in values_of(entry, spec.name, policy, snapshot)]
        if values:
            out.append((name, values, False))
    if view == GROUPS:
        members = values_of(entry, "member", policy, snapshot)
        if "uniqueMember" in opts.member_attributes:
            out.append(("uniqueMember", [d for d in (layout.account_dn.get(str(m))
                                                     for m in members) if d], False))
        if "memberUid" in opts.member_attributes:
            uids = []
            for m in members:
                acc = snapshot.get(str(m))
                if acc is not None:
                    uids.append(str(acc.first("userName", "")))
            out.append(("memberUid", uids, False))
        if "member" not in opts.member_attributes:
            out = [a for a in out if a[0] != "member"]
    if view == PEOPLE and opts.posix:
        # uidNumber and gidNumber come from the entry (above); these two follow from uid.
        uid = str(entry.first("userName", ""))
        out += [("homeDirectory", [f"/home/{uid}"], False),
                ("loginShell", ["/bin/bash"], False)]
    dn = layout.dn_of(view, entry.id) or ""
    has_subs = view == UNITS and entry.id in layout.unit_children
    out += [
        ("entryUUID", [entry.id], True),
        ("createTimestamp", [_text(DATETIME, v) for v in entry.attrs.get("created", ())], True),
        ("modifyTimestamp", [_text(DATETIME, v) for v in entry.attrs.get("modified", ())],
         True),
        ("entryDN", [dn], True),
        ("hasSubordinates", ["TRUE" if has_subs else "FALSE"], True),
        ("subschemaSubentry", [SUBSCHEMA_DN], True),
        ("structuralObjectClass", [_objectclasses(opts)[view][-2]], True),
    ]
    return [a for a in out if a[1]]


def encode_entry(layout: Layout, view: str, entry: Entry, policy: Policy, snapshot: Any,
                 selection: Selection) -> Rendered:
    """The encoded SearchResultEntry (cached per snapshot, entry, view, policy, selection)."""
    key = (entry.id, view, policy, selection)
    found = layout.cache.get(key)
    if found is not None:
        return found
    attrs = render_attributes(layout, view, entry, policy, snapshot)
    pairs: list[tuple[bytes, list[bytes]]] = []
    cpr = False
    members_sent = False
    for name, values, operational in attrs:
        if not selection.wants(name, operational):
            continue
        if name == "idmCprNumber":
            cpr = True
        if name in ("member", "uniqueMember", "memberUid"):
            members_sent = True
        pairs.append((name.encode(), [] if selection.types_only else
                      [v.encode() for v in values]))
    if selection.types_only:
        cpr = False  # no value was disclosed
    subjects = tuple(dview.disclosed_subjects([entry], policy, snapshot=snapshot,
                                              members=members_sent and not
                                              selection.types_only))
    dn = layout.dn_of(view, entry.id) or ""
    rendered = Rendered(ber.search_entry(dn.encode(), pairs), subjects, cpr)
    if len(layout.cache) > 400_000:
        layout.cache.clear()
    layout.cache[key] = rendered
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
    return found  # type: ignore[return-value]


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


PAGED_OID = b"1.2.840.113556.1.4.319"
SORT_OID = b"1.2.840.113556.1.4.473"
SORT_RESPONSE_OID = b"1.2.840.113556.1.4.474"
STARTTLS_OID = b"1.3.6.1.4.1.1466.20037"
WHOAMI_OID = b"1.3.6.1.4.1.4203.1.11.3"


def root_dse(layout: Layout) -> list[tuple[str, list[str], bool]]:
    """The rootDSE attributes (RFC 4512 §5.1). All but objectClass are operational, so
    ``+`` returns them; a request for no attributes (or ``*``) gets them as well."""
    return [
        ("objectClass", ["top", "extensibleObject"], False),
        ("namingContexts", [layout.base], True),
        ("subschemaSubentry", [SUBSCHEMA_DN], True),
        ("supportedLDAPVersion", ["3"], True),
        ("supportedControl", [PAGED_OID.decode(), SORT_OID.decode()], True),
        ("supportedExtension", [STARTTLS_OID.decode(), WHOAMI_OID.decode()], True),
        ("supportedFeatures", ["1.3.6.1.4.1.4203.1.5.1", "1.3.6.1.4.1.4203.1.5.3"], True),
        ("supportedSASLMechanisms", [], True),
        ("vendorName", [VENDOR], True),
        ("vendorVersion", [_version()], True),
        ("entryDN", [""], True),
    ]


def _version() -> str:
    try:
        from importlib.metadata import version

        return f"{VENDOR} {version('idm-facade')}"
    except Exception:  # not installed as a distribution
        return VENDOR


# ------------------------------------------------------------------ subschema

#: Standard attribute types used here: (OID, syntax OID, equality, ordering, single, operational)
_STANDARD: dict[str, tuple[str, str, str, str | None, bool]] = {
    "objectClass": ("2.5.4.0", "1.3.6.1.4.1.1466.115.121.1.38", "objectIdentifierMatch", None,
                    False),
    "cn": ("2.5.4.3", "1.3.6.1.4.1.1466.115.121.1.15", "caseIgnoreMatch", None, False),
    "sn": ("2.5.4.4", "1.3.6.1.4.1.1466.115.121.1.15", "caseIgnoreMatch", None, False),
    "o": ("2.5.4.10", "1.3.6.1.4.1.1466.115.121.1.15", "caseIgnoreMatch", None, False),
    "ou": ("2.5.4.11", "1.3.6.1.4.1.1466.115.121.1.15", "caseIgnoreMatch", None, False),
    "title": ("2.5.4.12", "1.3.6.1.4.1.1466.115.121.1.15", "caseIgnoreMatch", None, False),
    "businessCategory": ("2.5.4.15", "1.3.6.1.4.1.1466.115.121.1.15", "caseIgnoreMatch", None,
                         False),
    "telephoneNumber": ("2.5.4.20", "1.3.6.1.4.1.1466.115.121.1.50",
                        "telephoneNumberMatch", None, False),
    "member": ("2.5.4.31", "1.3.6.1.4.1.1466.115.121.1.12", "distinguishedNameMatch", None,
               False),
    "givenName": ("2.5.4.42", "1.3.6.1.4.1.1466.115.121.1.15", "caseIgnoreMatch", None,
                  False),
    "uniqueMember": ("2.5.4.50", "1.3.6.1.4.1.1466.115.121.1.34", "uniqueMemberMatch", None,
                     False),
    "uid": ("0.9.2342.19200300.100.1.1", "1.3.6.1.4.1.1466.115.121.1.15", "caseIgnoreMatch",
            None, False),
    "mail": ("0.9.2342.19200300.100.1.3", "1.3.6.1.4.1.1466.115.121.1.26",
             "caseIgnoreIA5Match", None, False),
    "manager": ("0.9.2342.19200300.100.1.10", "1.3.6.1.4.1.1466.115.121.1.12",
                "distinguishedNameMatch", None, False),
    "displayName": ("2.16.840.1.113730.3.1.241", "1.3.6.1.4.1.1466.115.121.1.15",
                    "caseIgnoreMatch", None, True),
    "employeeNumber": ("2.16.840.1.113730.3.1.3", "1.3.6.1.4.1.1466.115.121.1.15",
                       "caseIgnoreMatch", None, True),
    "departmentNumber": ("2.16.840.1.113730.3.1.2", "1.3.6.1.4.1.1466.115.121.1.15",
                         "caseIgnoreMatch", None, False),
    "memberUid": ("1.3.6.1.1.1.1.12", "1.3.6.1.4.1.1466.115.121.1.26", "caseExactIA5Match",
                  None, False),
    "memberOf": ("1.2.840.113556.1.2.102", "1.3.6.1.4.1.1466.115.121.1.12",
                 "distinguishedNameMatch", None, False),
    "entryUUID": ("1.3.6.1.1.16.4", "1.3.6.1.1.16.1", "UUIDMatch", "UUIDOrderingMatch", True),
    "createTimestamp": ("2.5.18.1", "1.3.6.1.4.1.1466.115.121.1.24", "generalizedTimeMatch",
                        "generalizedTimeOrderingMatch", True),
    "modifyTimestamp": ("2.5.18.2", "1.3.6.1.4.1.1466.115.121.1.24", "generalizedTimeMatch",
                        "generalizedTimeOrderingMatch", True),
    "entryDN": ("1.3.6.1.1.20", "1.3.6.1.4.1.1466.115.121.1.12", "distinguishedNameMatch",
                None, True),
    "hasSubordinates": ("2.5.18.9", "1.3.6.1.4.1.1466.115.121.1.7", "booleanMatch", None,
                        True),
    "subschemaSubentry": ("2.5.18.10", "1.3.6.1.4.1.1466.115.121.1.12",
                          "distinguishedNameMatch", None, True),
    "structuralObjectClass": ("2.5.21.9", "1.3.6.1.4.1.1466.115.121.1.38",
                              "objectIdentifierMatch", None, True),
    "dc": ("0.9.2342.19200300.100.1.25", "1.3.6.1.4.1.1466.115.121.1.26",
           "caseIgnoreIA5Match", None, True),
    "description": ("2.5.4.13", "1.3.6.1.4.1.1466.115.121.1.15", "caseIgnoreMatch", None,
                    False),
    "attributeTypes": ("2.5.21.5", "1.3.6.1.4.1.1466.115.121.1.3",
                       "objectIdentifierFirstComponentMatch", None, False),
    "objectClasses": ("2.5.21.6", "1.3.6.1.4.1.1466.115.121.1.37",
                      "objectIdentifierFirstComponentMatch", None, False),
    "matchingRules": ("2.5.21.4", "1.3.6.1.4.1.1466.115.121.1.30",
                      "objectIdentifierFirstComponentMatch", None, False),
    "matchingRuleUse": ("2.5.21.8", "1.3.6.1.4.1.1466.115.121.1.31",
                        "objectIdentifierFirstComponentMatch", None, False),
    "ldapSyntaxes": ("1.3.6.1.4.1.1466.101.120.16", "1.3.6.1.4.1.1466.115.121.1.54",
                     "objectIdentifierFirstComponentMatch", None, False),
    "dITContentRules": ("2.5.21.2", "1.3.6.1.4.1.1466.115.121.1.16",
                        "objectIdentifierFirstComponentMatch", None, False),
    "dITStructureRules": ("2.5.21.1", "1.3.6.1.4.1.1466.115.121.1.17",
                          "integerFirstComponentMatch", None, False),
    "nameForms": ("2.5.21.7", "1.3.6.1.4.1.1466.115.121.1.35",
                  "objectIdentifierFirstComponentMatch", None, False),
    "uidNumber": ("1.3.6.1.1.1.1.0", "1.3.6.1.4.1.1466.115.121.1.27", "integerMatch",
                  "integerOrderingMatch", True),
    "gidNumber": ("1.3.6.1.1.1.1.1", "1.3.6.1.4.1.1466.115.121.1.27", "integerMatch",
                  "integerOrderingMatch", True),
    "homeDirectory": ("1.3.6.1.1.1.1.3", "1.3.6.1.4.1.1466.115.121.1.26", "caseExactIA5Match",
                      None, True),
    "loginShell": ("1.3.6.1.1.1.1.4", "1.3.6.1.4.1.1466.115.121.1.26", "caseExactIA5Match",
                   None, True),
}

#: The standard object classes the views use (RFC 4519, 2798, 2307, 4512).
_STANDARD_CLASSES = (
    "( 2.5.6.0 NAME 'top' ABSTRACT MUST objectClass )",
    "( 1.3.6.1.4.1.1466.101.120.111 NAME 'extensibleObject' SUP top AUXILIARY )",
    "( 2.5.20.1 NAME 'subschema' AUXILIARY MAY ( attributeTypes $ objectClasses ) )",
    "( 2.5.17.0 NAME 'subentry' SUP top STRUCTURAL MUST cn )",
    "( 2.5.6.4 NAME 'organization' SUP top STRUCTURAL MUST o MAY description )",
    "( 1.3.6.1.4.1.1466.344 NAME 'dcObject' SUP top AUXILIARY MUST dc )",
    "( 2.5.6.5 NAME 'organizationalUnit' SUP top STRUCTURAL MUST ou MAY description )",
    "( 2.5.6.6 NAME 'person' SUP top STRUCTURAL MUST ( sn $ cn ) MAY ( telephoneNumber $ "
    "description ) )",
    "( 2.5.6.7 NAME 'organizationalPerson' SUP person STRUCTURAL MAY ( title $ ou $ "
    "telephoneNumber ) )",
    "( 2.16.840.1.113730.3.2.2 NAME 'inetOrgPerson' SUP organizationalPerson STRUCTURAL "
    "MAY ( departmentNumber $ displayName $ employeeNumber $ givenName $ mail $ manager $ "
    "o $ uid ) )",
    "( 2.5.6.9 NAME 'groupOfNames' SUP top STRUCTURAL MUST cn MAY ( member $ "
    "businessCategory $ o $ ou $ description ) )",
    "( 2.5.6.17 NAME 'groupOfUniqueNames' SUP top STRUCTURAL MUST cn MAY ( uniqueMember $ "
    "businessCategory $ o $ ou $ description ) )",
    "( 2.5.6.11 NAME 'applicationProcess' SUP top STRUCTURAL MUST cn MAY description )",
    "( 1.3.6.1.1.1.2.0 NAME 'posixAccount' SUP top AUXILIARY MUST ( cn $ uid $ uidNumber $ "
    "gidNumber $ homeDirectory ) MAY ( loginShell $ description ) )",
    "( 1.3.6.1.1.1.2.2 NAME 'posixGroup' SUP top AUXILIARY MUST ( cn $ gidNumber ) "
    "MAY ( memberUid $ description ) )",
)
_OPERATIONAL_USAGE = {"entryUUID", "createTimestamp", "modifyTimestamp", "entryDN",
                      "hasSubordinates", "subschemaSubentry", "structuralObjectClass",
                      "attributeTypes", "objectClasses", "matchingRules", "matchingRuleUse",
                      "ldapSyntaxes", "dITContentRules", "dITStructureRules", "nameForms"}

_SYNTAX = {"string": ("1.3.6.1.4.1.1466.115.121.1.15", "caseIgnoreMatch",
                      "caseIgnoreOrderingMatch"),
           "integer": ("1.3.6.1.4.1.1466.115.121.1.27", "integerMatch", "integerOrderingMatch"),
           "boolean": ("1.3.6.1.4.1.1466.115.121.1.7", "booleanMatch", None),
           "dateTime": ("1.3.6.1.4.1.1466.115.121.1.24", "generalizedTimeMatch",
                        "generalizedTimeOrderingMatch"),
           "reference": ("1.3.6.1.4.1.1466.115.121.1.15", "caseIgnoreMatch", None)}


def private_oid(kind: str, name: str) -> str:
    """A stable OID for an own schema element, under the UUID arc 2.25 (X.667): no
    registration needed and no clash with anyone's."""
    return "2.25." + str(uuid.uuid5(uuid.NAMESPACE_URL, f"urn:idm-facade:{kind}:{name}").int)


def _idm_attribute_types() -> list[tuple[str, Attribute]]:
    seen: dict[str, Attribute] = {}
    for spec in ATTRIBUTES.values():
        for name in spec.ldap:
            if name not in _STANDARD and name not in seen:
                seen[name] = spec
    return sorted(seen.items())


def attribute_type_definitions() -> list[str]:
    """RFC 4512 AttributeTypeDescriptions: standard types we serve plus our own idm* types."""
    out = []
    for name, (oid, syntax, eq, order, single) in _STANDARD.items():
        parts = [f"( {oid} NAME '{name}'", f"EQUALITY {eq}"]
        if order:
            parts.append(f"ORDERING {order}")
        parts.append(f"SYNTAX {syntax}")
        if single:
            parts.append("SINGLE-VALUE")
        if name in _OPERATIONAL_USAGE:
            parts.append("NO-USER-MODIFICATION USAGE directoryOperation")
        out.append(" ".join(parts) + " )")
    for name, spec in _idm_attribute_types():
        syntax, eq, order = _SYNTAX.get(spec.type, _SYNTAX["string"])
        if spec.case_exact and spec.type == "string":
            eq, order = "caseExactMatch", "caseExactOrderingMatch"
        desc = spec.description.replace("'", "")
        parts = [f"( {private_oid('at', name)} NAME '{name}'", f"DESC '{desc}'",
                 f"EQUALITY {eq}"]
        if order:
            parts.append(f"ORDERING {order}")
        parts.append(f"SYNTAX {syntax}")
        if not spec.multi:
            parts.append("SINGLE-VALUE")
        out.append(" ".join(parts) + " )")
    return out


def object_class_definitions() -> list[str]:
    """Our auxiliary classes (the standard structural ones are the usual RFC 4519/2798)."""
    idm = [n for n, _ in _idm_attribute_types()]
    person = " $ ".join(n for n in idm if ATTRIBUTES[_ldap_to_dir(n)].kinds & {ACCOUNT})
    group = " $ ".join([n for n in idm if ATTRIBUTES[_ldap_to_dir(n)].kinds & GROUP_KINDS]
                       + ["displayName", "memberUid", "uniqueMember", "mail",
                          "telephoneNumber"])
    unit = " $ ".join([n for n in idm if ATTRIBUTES[_ldap_to_dir(n)].kinds & {UNIT}]
                      + ["displayName", "mail", "telephoneNumber"])
    return [*_STANDARD_CLASSES,
        f"( {private_oid('oc', 'idmPerson')} NAME 'idmPerson' SUP top AUXILIARY "
        f"MAY ( {person} $ memberOf ) )",
        f"( {private_oid('oc', 'idmGroup')} NAME 'idmGroup' SUP top AUXILIARY "
        f"MAY ( {group} ) )",
        f"( {private_oid('oc', 'idmOrgUnit')} NAME 'idmOrgUnit' SUP top AUXILIARY "
        f"MAY ( {unit} ) )",
        f"( {private_oid('oc', 'idmClient')} NAME 'idmClient' SUP top AUXILIARY )",
    ]


def _ldap_to_dir(ldap_name: str) -> str:
    from schemas.attributes import by_ldap_name

    spec = by_ldap_name(ldap_name)
    assert spec is not None
    return spec.name


def subschema(layout: Layout) -> tuple[str, list[tuple[str, list[str], bool]]]:
    """The subschema subentry (RFC 4512 §4.2)."""
    return SUBSCHEMA_DN, [
        ("objectClass", ["top", "subentry", "subschema", "extensibleObject"], False),
        ("cn", ["Subschema"], False),
        ("attributeTypes", attribute_type_definitions(), True),
        ("objectClasses", object_class_definitions(), True),
        ("entryDN", [SUBSCHEMA_DN], True),
        ("subschemaSubentry", [SUBSCHEMA_DN], True),
    ]
