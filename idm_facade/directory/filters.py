"""The one filter tree both protocols compile to, and its brute-force evaluator.

SCIM filters and LDAP filters are translated into these nodes over *directory attribute names*
(see ``schemas.attributes``). The planner answers them with indexes; :func:`matches` answers
them entry by entry and is the oracle the planner is tested against.

Semantics (the same for both protocols):
- comparisons follow the attribute's rules: strings fold case unless caseExact, integers and
  timestamps compare as numbers and instants;
- multi-valued attributes match when any value matches;
- ``Not`` is the complement over the entries the query ranges over (an entry without the
  attribute matches ``Not(Eq(...))``);
- ``Any(complex, sub)`` matches when one element of a complex attribute matches ``sub`` as a
  whole (SCIM value paths ``emails[type eq "work" and value co "@x"]``).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, cast

from schemas.attributes import (
    ATTRIBUTES,
    BOOLEAN,
    COMPLEX,
    DATETIME,
    INTEGER,
    REFERENCE,
    STRING,
    normalise,
)


class Filter:
    """Base of all filter nodes (immutable, hashable, comparable)."""

    __slots__ = ()


@dataclass(frozen=True, slots=True)
class And(Filter):
    parts: tuple[Filter, ...]


@dataclass(frozen=True, slots=True)
class Or(Filter):
    parts: tuple[Filter, ...]


@dataclass(frozen=True, slots=True)
class Not(Filter):
    part: Filter


@dataclass(frozen=True, slots=True)
class Eq(Filter):
    attr: str
    value: Any


@dataclass(frozen=True, slots=True)
class Substring(Filter):
    """LDAP substring: ``initial*any*any*final``; SCIM sw / co / ew are special cases."""

    attr: str
    initial: str | None = None
    any: tuple[str, ...] = ()
    final: str | None = None


@dataclass(frozen=True, slots=True)
class Ge(Filter):
    attr: str
    value: Any


@dataclass(frozen=True, slots=True)
class Le(Filter):
    attr: str
    value: Any


@dataclass(frozen=True, slots=True)
class Gt(Filter):
    """Strictly greater (SCIM ``gt``); kept apart from ``Ge`` because for multi-valued
    attributes ``gt`` is not ``ge and not eq``."""

    attr: str
    value: Any


@dataclass(frozen=True, slots=True)
class Lt(Filter):
    attr: str
    value: Any


@dataclass(frozen=True, slots=True)
class Present(Filter):
    attr: str


@dataclass(frozen=True, slots=True)
class Any_(Filter):
    """One element of complex attribute ``complex`` matches ``part`` (sub-attribute names)."""

    complex: str
    part: Filter


@dataclass(frozen=True, slots=True)
class Const(Filter):
    """Always true or always false (``(objectClass=*)``, or an attribute the client may not
    read, which behaves as absent)."""

    value: bool


TRUE, FALSE = Const(True), Const(False)

#: Nodes that compare one attribute's values: what ``_leaf`` evaluates.
Comparison = Eq | Substring | Ge | Le | Gt | Lt
Leaf = Comparison | Present

_ORDERINGS = frozenset({Ge, Le, Gt, Lt})

#: Which comparisons are defined for which attribute type, for both protocols: SCIM answers
#: an undefined one with 400 invalidFilter (RFC 7644 §3.4.2.2), LDAP treats it as Undefined
#: (RFC 4511 §4.5.1.7: no matching rule for it). Substrings are for strings; booleans have
#: equality only; presence is defined for every type.
DEFINED: dict[str, frozenset[type]] = {
    STRING: frozenset({Eq, Substring, Present, *_ORDERINGS}),
    REFERENCE: frozenset({Eq, Substring, Present, *_ORDERINGS}),
    INTEGER: frozenset({Eq, Present, *_ORDERINGS}),
    DATETIME: frozenset({Eq, Present, *_ORDERINGS}),
    BOOLEAN: frozenset({Eq, Present}),
}


def defined(node_type: type, attr_type: str) -> bool:
    """Is a ``node_type`` comparison (Eq, Substring, Ge, ...) defined for ``attr_type``?"""
    return node_type in DEFINED.get(attr_type, DEFINED[STRING])


def all_of(parts: Iterable[Filter]) -> Filter:
    """The conjunction of ``parts``, folded the same way for both protocols: nested ``And``
    merged, TRUE dropped, FALSE absorbing, one part is itself, no part is TRUE."""
    return _fold(And, parts, TRUE, FALSE)


def any_of(parts: Iterable[Filter]) -> Filter:
    """The disjunction of ``parts``: nested ``Or`` merged, FALSE dropped, TRUE absorbing,
    one part is itself, no part is FALSE."""
    return _fold(Or, parts, FALSE, TRUE)


def _fold(cls: type[And] | type[Or], parts: Iterable[Filter], neutral: Const,
          absorbing: Const) -> Filter:
    kept: list[Filter] = []
    for part in parts:
        if part == absorbing:
            return absorbing
        if part == neutral:
            continue
        kept.extend(part.parts if isinstance(part, cls) else (part,))
    return kept[0] if len(kept) == 1 else cls(tuple(kept)) if kept else neutral

#: Element keys the directory keeps for policy checks inside value paths.
_ELEMENT_KEYS = frozenset({"visibility", "titleSensitive"})

LEAVES = (Eq, Substring, Ge, Le, Gt, Lt, Present)


def attrs_of(node: Filter) -> set[str]:
    """Every attribute name a filter mentions (complex parts as ``complex.sub``)."""
    if isinstance(node, (And, Or)):
        return set().union(*(attrs_of(p) for p in node.parts)) if node.parts else set()
    if isinstance(node, Not):
        return attrs_of(node.part)
    if isinstance(node, Any_):
        return {f"{node.complex}.{a}" for a in attrs_of(node.part)}
    if isinstance(node, LEAVES):
        return {node.attr}
    return set()


# --------------------------------------------------------------------------- evaluation


def _rules(attr: str) -> tuple[str, bool]:
    spec = ATTRIBUTES.get(attr.split("@", 1)[0])
    if spec is None:
        return "string", False
    return spec.type, spec.case_exact


def substring_match(text: str, initial: str | None, any_: tuple[str, ...],
                    final: str | None) -> bool:
    """Substring match on already-normalised strings, anchored at both ends as LDAP defines."""
    pos = 0
    if initial:
        if not text.startswith(initial):
            return False
        pos = len(initial)
    end = len(text)
    if final:
        if len(text) - pos < len(final) or not text.endswith(final):
            return False
        end = len(text) - len(final)
    for part in any_:
        found = text.find(part, pos, end)
        if found < 0:
            return False
        pos = found + len(part)
    return True


def _leaf(node: Leaf, values: tuple, type_: str, exact: bool) -> bool:
    if isinstance(node, Present):
        return bool(values)
    if not values:
        return False
    try:
        return _compare(node, values, type_, exact)
    except (TypeError, ValueError):
        return False  # a value that cannot be compared under the attribute's rules


def _compare(node: Comparison, values: tuple, type_: str, exact: bool) -> bool:
    norm = [normalise(type_, exact, v) for v in values]
    if isinstance(node, Eq):
        key = normalise(type_, exact, node.value)
        return key in norm
    if isinstance(node, Substring):
        fold = (lambda s: s) if exact else str.casefold
        initial = fold(node.initial) if node.initial else None
        final = fold(node.final) if node.final else None
        parts = tuple(fold(p) for p in node.any)
        return any(substring_match(str(v), initial, parts, final) for v in norm)
    key = normalise(type_, exact, node.value)
    if isinstance(node, Ge):
        return any(v >= key for v in norm)
    if isinstance(node, Le):
        return any(v <= key for v in norm)
    if isinstance(node, Gt):
        return any(v > key for v in norm)
    if isinstance(node, Lt):
        return any(v < key for v in norm)
    raise TypeError(f"not a leaf: {node!r}")


def matches(entry: Any, node: Filter) -> bool:
    """Brute force: does ``entry`` (an object with ``attrs`` and ``complex``) match ``node``?

    Attribute names here are physical directory names (after policy rewriting).
    """
    if isinstance(node, And):
        return all(matches(entry, p) for p in node.parts)
    if isinstance(node, Or):
        return any(matches(entry, p) for p in node.parts)
    if isinstance(node, Not):
        return not matches(entry, node.part)
    if isinstance(node, Const):
        return node.value
    if isinstance(node, Any_):
        return any(element_matches(el, node.complex, node.part)
                   for el in entry.complex.get(node.complex, ()))
    leaf = cast(Leaf, node)  # every other node kind is handled above
    type_, exact = _rules(leaf.attr)
    return _leaf(leaf, entry.attrs.get(leaf.attr, ()), type_, exact)


def element_matches(element: dict, complex_name: str, node: Filter) -> bool:
    """Does one element of a complex attribute match a sub-filter over its keys?"""
    if isinstance(node, And):
        return all(element_matches(element, complex_name, p) for p in node.parts)
    if isinstance(node, Or):
        return any(element_matches(element, complex_name, p) for p in node.parts)
    if isinstance(node, Not):
        return not element_matches(element, complex_name, node.part)
    if isinstance(node, Const):
        return node.value
    if isinstance(node, Any_):
        return False
    leaf = cast(Leaf, node)  # every other node kind is handled above
    if leaf.attr not in COMPLEX.get(complex_name, ()) and leaf.attr not in _ELEMENT_KEYS:
        return False
    value = element.get(leaf.attr)
    values = () if value is None else (value,)
    type_, exact = _rules(f"{complex_name}.{leaf.attr}")
    if leaf.attr in ("primary", "titleSensitive"):
        type_ = "boolean"
    return _leaf(leaf, values, type_, exact)
