"""Translate ldaptor filter objects into the directory's filter tree, per view of the DIT.

Values arrive as bytes. Attribute names match case-insensitively through the attribute map
(``schemas.attributes.by_ldap_name``), plus the few names a view adds (``cn``, ``ou``,
``uniqueMember``, ``memberUid``). ``objectClass`` is answered by the DIT layer: each view has a
fixed set of classes, so ``(objectClass=inetOrgPerson)`` is TRUE in the people view and FALSE
elsewhere. DN-valued assertions (member, uniqueMember, memberOf, manager, entryDN) are
parsed, normalised and resolved to entry ids before the directory sees them, so spacing and
case in a DN do not matter.

An attribute the view does not know, a value that is not valid for the attribute's syntax,
or an unknown matching rule make that part *Undefined* (RFC 4511 §4.5.1.7), which behaves
as FALSE and stays Undefined under NOT. Policy (CPR and other hidden attributes) is applied
afterwards by the directory's planner, so a hidden attribute also behaves as absent.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from datetime import UTC
from typing import Any

from ldaptor.protocols import pureldap

from idm_facade.directory import filters as f
from idm_facade.directory.view import ClientView
from idm_facade.ldap import dit, subschema, syntax
from schemas.attributes import ATTRIBUTES, BOOLEAN, DATETIME, INTEGER

log = logging.getLogger(__name__)

#: LDAP_MATCHING_RULE_IN_CHAIN (Active Directory's transitive membership rule).
IN_CHAIN = "1.2.840.113556.1.4.1941"
#: Matching rules that are equality under another name.
_EQUALITY_RULES = {
    "caseignorematch", "2.5.13.2", "caseexactmatch", "2.5.13.5", "distinguishednamematch",
    "2.5.13.1", "integermatch", "2.5.13.14", "booleanmatch", "2.5.13.13",
    "caseignoreia5match", "1.3.6.1.4.1.1466.109.114.2", "caseexactia5match",
    "1.3.6.1.4.1.1466.109.114.1", "octetstringmatch", "2.5.13.17", "uuidmatch",
    "1.3.6.1.1.16.2", "generalizedtimematch", "2.5.13.27",
}


class _Undefined(f.Filter):
    """Neither true nor false (unknown attribute, invalid value). FALSE at the top."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "UNDEFINED"


UNDEFINED = _Undefined()


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


def attribute_name(node: Any) -> str:
    """The attribute an assertion names, without options (``cn;lang-da`` is ``cn``)."""
    value = getattr(node, "value", node)
    return _text(value).strip().split(";", 1)[0]


_POSIX_CLASSES = {"posixaccount", "posixgroup", "shadowaccount"}
_posix_warned = [0.0]


def _posix_off(cls: str) -> None:
    """A client asks for POSIX entries while ``[ldap] posix`` is off: the answer is empty,
    and nslcd's ``getent passwd`` would be silently empty too, so say why (once a minute)."""
    now = time.monotonic()
    if now - _posix_warned[0] > 60:
        _posix_warned[0] = now
        log.warning("LDAP: a client searched for objectClass=%s but [ldap] posix is off, so "
                    "nothing matches; set posix = true to serve POSIX accounts and groups "
                    "(nslcd, SSSD)", cls)


#: The directory's comparison for each LDAP comparison filter (approximate match is equality).
COMPARISONS: dict[type, type] = {
    pureldap.LDAPFilter_equalityMatch: f.Eq, pureldap.LDAPFilter_approxMatch: f.Eq,
    pureldap.LDAPFilter_greaterOrEqual: f.Ge, pureldap.LDAPFilter_lessOrEqual: f.Le}


# Three-valued logic (RFC 4511 §4.5.1): Undefined parts decide only when nothing else does;
# otherwise the folding is the one SCIM uses (``all_of`` / ``any_of``). Shared by the
# translator and the translations kept by shape (:mod:`idm_facade.ldap.filtershape`).


def all_parts(parts: list[f.Filter]) -> f.Filter:
    """An LDAP AND of translated parts."""
    if any(p is UNDEFINED or p == f.FALSE for p in parts):
        return f.FALSE if any(p == f.FALSE for p in parts) else UNDEFINED
    return f.all_of(parts)


def any_part(parts: list[f.Filter]) -> f.Filter:
    """An LDAP OR of translated parts."""
    if any(p == f.TRUE for p in parts):
        return f.TRUE
    kept = [p for p in parts if p is not UNDEFINED]
    if not any(p != f.FALSE for p in kept):
        return UNDEFINED if any(p is UNDEFINED for p in parts) else f.FALSE
    return f.any_of(kept)


def negated(inner: f.Filter) -> f.Filter:
    """An LDAP NOT of a translated part (Undefined stays Undefined)."""
    if inner is UNDEFINED:
        return UNDEFINED
    if isinstance(inner, f.Const):
        return f.Const(not inner.value)
    return f.Not(inner)


class Translator:
    """Translates one search's filter for one view."""

    def __init__(self, layout: dit.Layout, view: str, seen: ClientView) -> None:
        self.layout = layout
        self.view = view
        self.seen = seen
        self.classes = {c.lower() for c in dit._objectclasses(layout.options)[view]}
        self.posix = layout.options.posix

    def __call__(self, node: Any) -> f.Filter:
        result = self.node(node)
        return f.FALSE if result is UNDEFINED else result

    # -------------------------------------------------------------- structure

    def node(self, node: Any) -> f.Filter:
        if isinstance(node, pureldap.LDAPFilter_and):
            return all_parts([self.node(p) for p in node.data])
        if isinstance(node, pureldap.LDAPFilter_or):
            return any_part([self.node(p) for p in node.data])
        if isinstance(node, pureldap.LDAPFilter_not):
            return negated(self.node(node.value))
        if isinstance(node, pureldap.LDAPFilter_present):
            return self.present(attribute_name(node))
        if isinstance(node, pureldap.LDAPFilter_substrings):
            return self.substrings(node)
        if isinstance(node, pureldap.LDAPFilter_extensibleMatch):
            return self.extensible(node)
        op = COMPARISONS.get(type(node))
        if op is not None:
            return self.compare(op, attribute_name(node.attributeDesc), node.assertionValue.value)
        return UNDEFINED

    # -------------------------------------------------------------- leaves

    def present(self, name: str) -> f.Filter:
        lower = name.lower()
        if lower == "objectclass":
            return f.TRUE
        if lower in ("entryuuid", "entrydn", "hassubordinates", "subschemasubentry",
                     "createtimestamp", "modifytimestamp", "structuralobjectclass"):
            return f.TRUE
        if lower == "memberuid" and self.view == dit.GROUPS:
            return f.Present("member")
        mapped = dit.directory_attrs(self.view, name, self.posix)
        if mapped is None:
            return _lacking(name)
        return self._any([f.Present(a) for a in mapped[1]])

    def _any(self, parts: Sequence[f.Filter]) -> f.Filter:
        return f.any_of(parts)

    def _resolve_dn(self, raw: Any, view: str | None) -> str | None:
        try:
            norm = syntax.parse_dn(_text(raw))
        except syntax.InvalidDN:
            return None
        found = self.layout.id_of_dn(norm)
        if found is None or (view is not None and found[0] != view
                             and not (view == dit.GROUPS and found[0] == dit.UNITS)):
            return None
        return found[1]

    def compare(self, cls: type, name: str, raw: Any) -> f.Filter:
        """``name`` compared by ``cls`` (Eq, Ge, Le) with the asserted value ``raw``."""
        how = self.comparer(cls, name)
        return how if isinstance(how, f.Filter) else how(raw)

    def comparer(self, cls: type, name: str) -> f.Filter | Callable[[Any], f.Filter]:
        """What comparing ``name`` by ``cls`` translates to: a filter when the asserted
        value cannot change it (an attribute this view lacks, an ordering on a DN), else a
        function of the value. The part that depends on the name alone is decided here once,
        so a translation kept by shape only calls the function."""
        lower = name.lower()
        if lower in ("objectclass", "entrydn"):
            if cls is not f.Eq:
                return UNDEFINED
            return self._object_class if lower == "objectclass" else self._entry_dn
        if lower == "memberuid":
            if self.view != dit.GROUPS:
                return _lacking(name)
            if cls is not f.Eq:
                return UNDEFINED  # memberUid has equality only
            return self._member_uid
        if lower == "hassubordinates":
            return UNDEFINED
        mapped = dit.directory_attrs(self.view, name, self.posix)
        if mapped is None:
            return _lacking(name)
        attrs = tuple(mapped[1])
        if cls is not f.Eq and any(a in dit.DN_ATTRS for a in attrs):
            return UNDEFINED  # DNs have equality only
        return lambda raw: self._mapped(cls, attrs, raw)

    def _object_class(self, raw: Any) -> f.Filter:
        wanted = _text(raw).strip().lower()
        if wanted in _POSIX_CLASSES and not self.posix:
            _posix_off(wanted)
        return f.TRUE if wanted in self.classes else f.FALSE

    def _entry_dn(self, raw: Any) -> f.Filter:
        found = self._resolve_dn(raw, None)
        if found is None:
            return f.FALSE
        return f.Eq("id", found) if self.layout.dn_of(self.view, found) else f.FALSE

    def _member_uid(self, raw: Any) -> f.Filter:
        account = self.layout.account_by_uid.get(" ".join(_text(raw).split()).casefold())
        return f.Eq("member", account) if account else f.FALSE

    def _mapped(self, cls: type, attrs: tuple[str, ...], raw: Any) -> f.Filter:
        """``raw`` compared with the directory attributes an LDAP name maps to."""
        text = _text(raw)
        parts: list[f.Filter] = []
        for attr in attrs:
            if attr in dit.DN_ATTRS:
                found = self._resolve_dn(raw, dit.DN_ATTRS[attr])
                parts.append(f.Eq(attr, found) if found else f.FALSE)
                continue
            value = self._typed(attr, text)
            if value is None:
                parts.append(UNDEFINED)
                continue
            parts.append(cls(attr, value))
        kept = [p for p in parts if p is not UNDEFINED and p != f.FALSE]
        if not kept:
            return UNDEFINED if any(p is UNDEFINED for p in parts) else f.FALSE
        return self._any(kept)

    def _typed(self, attr: str, text: str) -> Any:
        spec = ATTRIBUTES.get(attr)
        type_ = spec.type if spec else "string"
        try:
            if type_ == INTEGER:
                return int(text.strip())
            if type_ == BOOLEAN:
                upper = text.strip().upper()
                if upper not in ("TRUE", "FALSE"):
                    return None
                return upper == "TRUE"
            if type_ == DATETIME:
                # The directory keeps instants as naive UTC.
                return syntax.parse_generalized_time(text).astimezone(UTC).replace(tzinfo=None)
        except ValueError:
            return None
        return text

    def substrings(self, node: Any) -> f.Filter:
        name = attribute_name(node.type)
        initial, any_, final = substring_parts(node)
        lower = name.lower()
        if lower == "objectclass":
            return self._local_substring(self.classes, initial, tuple(any_), final)
        if lower == "memberuid" and self.view == dit.GROUPS:
            ids = [aid for uid, aid in self.layout.account_by_uid.items()
                   if f.substring_match(uid, _fold(initial), tuple(a.casefold() for a in any_),
                                        _fold(final))]
            if not ids:
                return f.FALSE
            return self._any([f.Eq("member", i) for i in ids])
        mapped = dit.directory_attrs(self.view, name, self.posix)
        if mapped is None:
            return _lacking(name)
        parts = []
        for attr in mapped[1]:
            spec = ATTRIBUTES.get(attr)
            if attr in dit.DN_ATTRS or (spec and not f.defined(f.Substring, spec.type)):
                continue  # substring matching is defined for strings only
            parts.append(f.Substring(attr, initial, tuple(any_), final))
        return self._any(parts) if parts else UNDEFINED

    @staticmethod
    def _local_substring(values: set[str], initial: str | None, any_: tuple[str, ...],
                         final: str | None) -> f.Filter:
        hit = any(f.substring_match(v, _fold(initial), tuple(a.casefold() for a in any_),
                                    _fold(final)) for v in values)
        return f.TRUE if hit else f.FALSE

    def extensible(self, node: Any) -> f.Filter:
        rule = _text(node.matchingRule.value).strip().lower() if node.matchingRule else None
        name = attribute_name(node.type) if node.type else None
        value = node.matchValue.value
        if name is None:
            return UNDEFINED  # rule-only assertions over every attribute: not supported
        if rule == IN_CHAIN:
            return self.in_chain(name, value)
        if rule is None or rule in _EQUALITY_RULES:
            return self.compare(f.Eq, name, value)
        return UNDEFINED

    def in_chain(self, name: str, raw: Any) -> f.Filter:
        """``memberOf:1.2.840.113556.1.4.1941:=G``: members of G or of any group nested in
        G; ``member:1.2.840.113556.1.4.1941:=A``: groups reaching A through nesting.

        Groups here hold accounts only (no group is a member of a group), so the closure is
        computed honestly but is always the direct membership."""
        lower = name.lower()
        if lower == "memberof" and self.view == dit.PEOPLE:
            start = self._resolve_dn(raw, dit.GROUPS)
            if start is None:
                return f.FALSE
            groups = self._nested_groups(start)
            return self._any([f.Eq("memberOf", g) for g in sorted(groups)])
        if lower in ("member", "uniquemember") and self.view == dit.GROUPS:
            target = self._resolve_dn(raw, None)
            if target is None:
                return f.FALSE
            direct = [f.Eq("member", target)]
            # Groups containing a group that contains the target: none can exist here, but
            # follow group-valued members should the directory ever hold them.
            return self._any(direct)
        return UNDEFINED

    def _nested_groups(self, start: str) -> set[str]:
        seen = {start}
        frontier = [start]
        while frontier:
            current = self.seen.get(frontier.pop())
            if current is None:
                continue
            for member in self.seen.values(current, "member"):
                child = self.seen.get(str(member))
                if child is not None and child.kind != "account" and child.id not in seen:
                    seen.add(child.id)
                    frontier.append(child.id)
        return seen


def shape(node: Any) -> tuple[int, int]:
    """(terms, depth) of a decoded LDAP filter, walked without recursion (a filter nested
    thousands deep must be measured before anything recursive touches it)."""
    terms = deepest = 0
    stack = [(node, 1)]
    while stack:
        current, depth = stack.pop()
        deepest = max(deepest, depth)
        if isinstance(current, (pureldap.LDAPFilter_and, pureldap.LDAPFilter_or)):
            stack.extend((p, depth + 1) for p in current.data)
        elif isinstance(current, pureldap.LDAPFilter_not):
            stack.append((current.value, depth + 1))
        else:
            terms += 1
    return terms, deepest


#: Filters answered from the indexes in microseconds: planned in the event loop.
_CHEAP_LEAVES = (pureldap.LDAPFilter_equalityMatch, pureldap.LDAPFilter_present)


def cheap(node: Any, whole_container: bool = False) -> bool:
    """Is this a point look-up (an equality or presence test, or an and/or of at most four),
    worth planning in the event loop rather than handing to a thread? Over a whole container
    or the naming context (``whole_container``) presence tests alone select everything
    (``(objectClass=*)`` is a pull): then an equality must narrow it."""
    if isinstance(node, _CHEAP_LEAVES):
        return not whole_container or isinstance(node, pureldap.LDAPFilter_equalityMatch)
    if isinstance(node, (pureldap.LDAPFilter_and, pureldap.LDAPFilter_or)):
        if not (0 < len(node.data) <= 4 and all(isinstance(p, _CHEAP_LEAVES)
                                                for p in node.data)):
            return False
        if not whole_container:
            return True
        equalities = [isinstance(p, pureldap.LDAPFilter_equalityMatch) for p in node.data]
        return any(equalities) if isinstance(node, pureldap.LDAPFilter_and) else all(equalities)
    return False


def substring_parts(node: Any, fold: Any = None
                    ) -> tuple[str | None, tuple[str, ...], str | None]:
    """(initial, any, final) of an LDAP substring filter, each folded by ``fold`` if given."""
    initial = final = None
    any_: list[str] = []
    for part in node.substrings:
        value = _text(part.value)
        if fold is not None:
            value = fold(value)
        if isinstance(part, pureldap.LDAPFilter_substrings_initial):
            initial = value
        elif isinstance(part, pureldap.LDAPFilter_substrings_final):
            final = value
        else:
            any_.append(value)
    return initial, tuple(any_), final


_KNOWN_TYPES = subschema.attribute_type_names()


def _lacking(name: str) -> f.Filter:
    """An assertion on an attribute this view's entries never carry: FALSE when the server
    recognises the type (the entries simply lack it, so ``(!(uid=x))`` over groups matches
    every group, as in slapd), Undefined when it does not (RFC 4511 §4.5.1.7)."""
    return f.FALSE if name.lower() in _KNOWN_TYPES else UNDEFINED


def _fold(value: str | None) -> str | None:
    return value.casefold() if value else value


def matches_static(node: Any, attrs: list[tuple[str, list[str], bool]]) -> bool:
    """Evaluate an LDAP filter against a static entry (base, containers, rootDSE): these are
    not directory entries, hold no personal data and are a handful, so they are checked
    here; everything else goes to the directory."""
    values = {n.lower(): [v.casefold() for v in vals] for n, vals, _ in attrs}
    return bool(_static(node, values))


def _static(node: Any, values: dict[str, list[str]]) -> bool | None:
    if isinstance(node, pureldap.LDAPFilter_and):
        results = [_static(p, values) for p in node.data]
        if any(r is False for r in results):
            return False
        return None if any(r is None for r in results) else True
    if isinstance(node, pureldap.LDAPFilter_or):
        results = [_static(p, values) for p in node.data]
        if any(r is True for r in results):
            return True
        return None if any(r is None for r in results) else False
    if isinstance(node, pureldap.LDAPFilter_not):
        inner = _static(node.value, values)
        return None if inner is None else not inner
    if isinstance(node, pureldap.LDAPFilter_present):
        name = attribute_name(node).lower()
        return name == "objectclass" or name in values
    if isinstance(node, (pureldap.LDAPFilter_equalityMatch, pureldap.LDAPFilter_approxMatch)):
        name = attribute_name(node.attributeDesc).lower()
        if name not in values:
            return None
        return _text(node.assertionValue.value).casefold() in values[name]
    if isinstance(node, pureldap.LDAPFilter_substrings):
        name = attribute_name(node.type).lower()
        if name not in values:
            return None
        initial, any_, final = substring_parts(node, str.casefold)
        return any(f.substring_match(v, initial, any_, final) for v in values[name])
    return None


def _esc(value: Any) -> str:
    raw = value if isinstance(value, bytes) else str(value).encode()
    out = []
    for byte in raw:
        ch = chr(byte)
        if ch in "*()\\" or byte == 0 or byte > 0x7E:
            out.append(f"\\{byte:02x}")
        else:
            out.append(ch)
    text = "".join(out)
    try:  # keep readable UTF-8 in the log: unescape multi-byte sequences that decode
        return raw.decode() if not any(c in raw.decode() for c in "*()\\\0") else text
    except UnicodeDecodeError:
        return text


def to_text(node: Any) -> str:
    """RFC 4515 string form of an ldaptor filter (for the access log)."""
    if isinstance(node, pureldap.LDAPFilter_and):
        return "(&" + "".join(to_text(p) for p in node.data) + ")"
    if isinstance(node, pureldap.LDAPFilter_or):
        return "(|" + "".join(to_text(p) for p in node.data) + ")"
    if isinstance(node, pureldap.LDAPFilter_not):
        return "(!" + to_text(node.value) + ")"
    if isinstance(node, pureldap.LDAPFilter_present):
        return f"({attribute_name(node)}=*)"
    if isinstance(node, pureldap.LDAPFilter_substrings):
        initial, final, any_ = "", "", []
        for part in node.substrings:
            if isinstance(part, pureldap.LDAPFilter_substrings_initial):
                initial = _esc(part.value)
            elif isinstance(part, pureldap.LDAPFilter_substrings_final):
                final = _esc(part.value)
            else:
                any_.append(_esc(part.value))
        return f"({attribute_name(node.type)}={initial}*" + "".join(a + "*" for a in any_) + \
            f"{final})"
    if isinstance(node, pureldap.LDAPFilter_extensibleMatch):
        name = attribute_name(node.type) if node.type else ""
        dn = ":dn" if node.dnAttributes and node.dnAttributes.value else ""
        rule = f":{_text(node.matchingRule.value)}" if node.matchingRule else ""
        return f"({name}{dn}{rule}:={_esc(node.matchValue.value)})"
    ops = {pureldap.LDAPFilter_equalityMatch: "=", pureldap.LDAPFilter_approxMatch: "~=",
           pureldap.LDAPFilter_greaterOrEqual: ">=", pureldap.LDAPFilter_lessOrEqual: "<="}
    for cls, op in ops.items():
        if isinstance(node, cls):
            return f"({attribute_name(node.attributeDesc)}{op}{_esc(node.assertionValue.value)})"
    return "(?)"
