"""LDAP filters translated once per shape: the structure repeats even when the values don't.

nslcd, SSSD, Nextcloud and GitLab send the same few filters with a different user in each,
``(&(objectClass=posixAccount)(uid=?))`` or ``(uid=?)``. The shape of a filter is its tree with
every asserted value replaced by a slot. Per layout (so per snapshot), view and shape, the
translation is done once into a function of the values: everything that depends on the
attribute names alone (the attribute map, the view's classes, an attribute the view lacks,
the and/or/not folding of parts that no value can change) is decided then, and a request
only applies the values. A search of the naming context translates its filter for three
views and matches it against five fixed entries; most of that needs no values at all.

The translator is the same one (:class:`~idm_facade.ldap.filters.Translator`): the kept
function calls its ``comparer`` and folds with its ``all_parts``/``any_part``/``negated``,
so a kept translation cannot drift from a fresh one. Substring and extensible assertions
are not kept (they are planned in a thread, and the in-chain rule reads the client's view):
a filter holding one is translated afresh. ``tests/test_filter_shapes.py`` checks kept and
fresh translations, and the answers planned from them, agree for random filters and values.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Any, cast

from ldaptor.protocols import pureldap

from idm_facade.directory import filters as f
from idm_facade.directory.view import ClientView
from idm_facade.ldap import dit
from idm_facade.ldap.filters import (
    COMPARISONS,
    UNDEFINED,
    Translator,
    all_parts,
    any_part,
    attribute_name,
    matches_static,
    negated,
)

#: Shapes kept per layout; the table is emptied when full (a client inventing shapes
#: cannot grow it without bound).
MAX_SHAPES = 4096

Values = tuple[Any, ...]
#: A kept translation: a filter (no value changes it) or a function of the values.
Kept = f.Filter | Callable[[Values], f.Filter]


class Unkept(Exception):
    """A filter holding a part whose translation is not kept by shape."""


def shape_of(node: Any) -> tuple[tuple, Values] | None:
    """(shape, values) of a decoded filter: the tree with each asserted value replaced by a
    slot, and the values in order; None for a filter with a part that is not kept."""
    values: list[Any] = []
    try:
        return _shape(node, values), tuple(values)
    except Unkept:
        return None


def _shape(node: Any, values: list[Any]) -> tuple:
    kind = type(node)
    if kind is pureldap.LDAPFilter_and or kind is pureldap.LDAPFilter_or:
        return (kind, tuple(_shape(p, values) for p in node.data))
    if kind is pureldap.LDAPFilter_not:
        return (kind, _shape(node.value, values))
    if kind is pureldap.LDAPFilter_present:
        return (kind, attribute_name(node))
    if kind in COMPARISONS:
        values.append(node.assertionValue.value)
        return (kind, attribute_name(node.attributeDesc))
    raise Unkept


def translate(node: Any, layout: dit.Layout, view: str, seen: ClientView,
              shaped: tuple[tuple, Values] | None) -> f.Filter:
    """The directory filter of ``node`` in ``view``, as ``Translator(layout, view, seen)``
    gives it, from the translation kept for its shape when ``shaped`` (its
    :func:`shape_of`) is given."""
    if shaped is None:
        return Translator(layout, view, seen)(node)
    shape, values = shaped
    table = layout.filters
    key = (view, shape)
    kept = table.get(key)
    if kept is None:
        if len(table) >= MAX_SHAPES:
            table.clear()
        # The kept function lives in the layout's table, so its translator reaches the
        # layout through a weak proxy: a cycle through a layout would outlive it (snapshots
        # and what is built from them are frozen out of the garbage collector's sight).
        weak = cast(dit.Layout, weakref.proxy(layout))
        kept = table[key] = _compile(shape, Translator(weak, view, seen))
    result = kept if isinstance(kept, f.Filter) else kept(values)
    return f.FALSE if result is UNDEFINED else result


def _compile(shape: tuple, translator: Translator) -> Kept:
    """A shape's translation, with the slots numbered in the order :func:`shape_of` filled
    them (depth first, left to right)."""
    slot = [0]

    def build(part: tuple) -> Kept:
        kind, inner = part
        if kind is pureldap.LDAPFilter_present:
            return translator.present(inner)
        if kind in COMPARISONS:
            how = translator.comparer(COMPARISONS[kind], inner)
            index = slot[0]
            slot[0] += 1
            if isinstance(how, f.Filter):
                return how
            return lambda values: how(values[index])
        if kind is pureldap.LDAPFilter_not:
            child = build(inner)
            if isinstance(child, f.Filter):
                return negated(child)
            return lambda values: negated(child(values))
        kids = [build(p) for p in inner]
        fold = all_parts if kind is pureldap.LDAPFilter_and else any_part
        if all(isinstance(k, f.Filter) for k in kids):
            return fold(kids)  # type: ignore[arg-type]
        return lambda values: fold([k if isinstance(k, f.Filter) else k(values)
                                    for k in kids])

    return build(shape)


def static_match(node: Any, which: str, attrs: list[tuple[str, list[str], bool]],
                 layout: dit.Layout, shaped: tuple[tuple, Values] | None,
                 owner: str | None = None) -> bool:
    """Does the fixed entry ``which`` (with ``attrs``; ``owner`` names the client whose own
    entry it is) match ``node``? Kept per shape when the filter asserts values only of
    attributes the entry lacks, which no value can change: ``(uid=?)`` never matches the
    base or a container."""
    if shaped is None:
        return matches_static(node, attrs)
    shape = shaped[0]
    key = ("static", which, owner, shape)
    table = layout.filters
    found = table.get(key)
    if found is None:
        found = matches_static(node, attrs)
        names = {n.lower() for n, _, _ in attrs}
        if not names & _asserted(shape):
            if len(table) >= MAX_SHAPES:
                table.clear()
            table[key] = found
    return found


def _asserted(shape: tuple) -> set[str]:
    """The attribute names (lower case) a shape asserts values of."""
    kind, inner = shape
    if kind in COMPARISONS:
        return {inner.lower()}
    if kind is pureldap.LDAPFilter_present:
        return set()
    if kind is pureldap.LDAPFilter_not:
        return _asserted(inner)
    return set().union(*(_asserted(p) for p in inner)) if inner else set()
