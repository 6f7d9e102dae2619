"""Filters translated once per shape give what a fresh translation gives, for any values.

:mod:`idm_facade.ldap.filtershape` keeps, per layout, view and shape (the filter with its
values replaced by slots), a function of the values. The risk is a kept translation that
decided something from the first request's values and applies it to the next request's.
So every example here is two filters of one shape with independently drawn values: the
first is translated (and kept), then the second through the kept translation, and both are
compared with fresh :class:`~idm_facade.ldap.filters.Translator` translations, with the
entries they select, and with the fixed entries (base, containers) they match.

The values are drawn from what the demo directory holds (uids, DNs of groups and people,
object classes, numbers, timestamps) and from what it does not (malformed DNs, numbers that
are not numbers, other classes), so the value-dependent branches (DN resolution, syntax
checks, objectClass, memberUid) are all taken.
"""

from __future__ import annotations

import warnings
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from ldaptor.protocols import pureber, pureldap

from idm_facade.config import Config
from idm_facade.directory import Directory
from idm_facade.directory.policy import Policy
from idm_facade.directory.view import ClientView
from idm_facade.ldap import dit, filtershape
from idm_facade.ldap.filters import Translator, matches_static
from store.engine import make_engine

warnings.filterwarnings("ignore", module="ldaptor")

NAMES = ["uid", "UID", "cn", "sn", "givenName", "mail", "objectClass", "memberOf", "member",
         "uniqueMember", "memberUid", "entryDN", "manager", "employeeNumber", "uidNumber",
         "gidNumber", "idmActive", "createTimestamp", "modifyTimestamp", "entryUUID", "ou",
         "description", "hasSubordinates", "title", "noSuchAttribute", "cn;lang-da"]
COMPARE = [pureldap.LDAPFilter_equalityMatch, pureldap.LDAPFilter_approxMatch,
           pureldap.LDAPFilter_greaterOrEqual, pureldap.LDAPFilter_lessOrEqual]
VIEWS = [dit.PEOPLE, dit.UNITS, dit.GROUPS]  # the views a search translates its filter for
STATICS = ["base", dit.PEOPLE, dit.UNITS, dit.GROUPS, dit.CLIENTS]


class World(tuple):
    """(layout, a client's view, values worth asserting); a short repr for hypothesis."""

    def __repr__(self) -> str:
        return "world"


@pytest.fixture(scope="module", params=[False, True], ids=["plain", "posix"])
def world(request: Any, demo_db: str) -> World:
    """(layout, a client's view, values worth asserting) over the S demo directory."""
    engine = make_engine(demo_db, create=False)
    snapshot = Directory(engine).snapshot
    engine.dispose()
    layout = dit.layout_for(snapshot, dit.options_from(
        Config({"ldap": {"posix": request.param}}), snapshot))
    seen = ClientView.of(snapshot, Policy(name="default"))
    accounts = [e for e in snapshot.entries if e.kind == "account"][:6]
    values = [str(e.first("userName")) for e in accounts]
    values += [str(e.first("employeeNumber") or "") for e in accounts[:2]]
    values += list(layout.account_dn.values())[:3] + list(layout.group_dn.values())[:3]
    values += list(layout.unit_dn.values())[:2]
    values += [v.upper() for v in values[:3]] + [f"  {values[0]} "]
    values += ["inetOrgPerson", "groupOfNames", "posixAccount", "organizationalUnit", "top",
               "TRUE", "false", "maybe", "1000", "-3", "12x", "20240101000000Z", "2024",
               "cn=nobody,ou=groups," + layout.base, "not a dn", "=,=", "", "*", "ø"]
    return World((layout, seen, [v.encode() for v in values]))


def _leaf(draw: Any, values: list[bytes]) -> tuple:
    name = draw(st.sampled_from(NAMES))
    if draw(st.integers(0, 4)) == 0:
        return ("present", name)
    return ("compare", draw(st.sampled_from(COMPARE)), name, draw(st.sampled_from(values)))


def _tree(draw: Any, values: list[bytes], depth: int) -> tuple:
    if depth == 0 or draw(st.integers(0, 2)) == 0:
        return _leaf(draw, values)
    kind = draw(st.sampled_from(["and", "or", "not"]))
    if kind == "not":
        return ("not", _tree(draw, values, depth - 1))
    return (kind, [_tree(draw, values, depth - 1) for _ in range(draw(st.integers(1, 3)))])


def _revalued(draw: Any, tree: tuple, values: list[bytes]) -> tuple:
    """The same shape with every asserted value drawn again."""
    if tree[0] == "compare":
        return (*tree[:3], draw(st.sampled_from(values)))
    if tree[0] == "not":
        return ("not", _revalued(draw, tree[1], values))
    if tree[0] in ("and", "or"):
        return (tree[0], [_revalued(draw, t, values) for t in tree[1]])
    return tree


def _ldaptor(tree: tuple) -> Any:
    """The filter as the server receives it: built, encoded and decoded by ldaptor."""
    def build(t: tuple) -> Any:
        if t[0] == "present":
            return pureldap.LDAPFilter_present(t[1])
        if t[0] == "compare":
            return t[1](attributeDesc=pureldap.LDAPAttributeDescription(t[2]),
                        assertionValue=pureldap.LDAPAssertionValue(t[3]))
        if t[0] == "not":
            return pureldap.LDAPFilter_not(build(t[1]))
        cls = pureldap.LDAPFilter_and if t[0] == "and" else pureldap.LDAPFilter_or
        return cls([build(p) for p in t[1]])

    wire = build(tree).toWire()
    decoded, _ = pureber.berDecodeObject(
        pureldap.LDAPBERDecoderContext_Filter(fallback=pureber.BERDecoderContext()), wire)
    return decoded


@st.composite
def same_shape(draw: Any, values: list[bytes]) -> tuple[Any, Any]:
    tree = _tree(draw, values, 3)
    return _ldaptor(tree), _ldaptor(_revalued(draw, tree, values))


@settings(max_examples=300, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_kept_translation_equals_fresh_translation(world: tuple, data: Any) -> None:
    layout, seen, values = world
    first, second = data.draw(same_shape(values))
    shaped_first, shaped_second = filtershape.shape_of(first), filtershape.shape_of(second)
    assert shaped_first is not None and shaped_second is not None
    assert shaped_first[0] == shaped_second[0]  # one shape, so the second uses the kept one
    for view in VIEWS:
        for node, shaped in ((first, shaped_first), (second, shaped_second)):
            fresh = Translator(layout, view, seen)(node)
            kept = filtershape.translate(node, layout, view, seen, shaped)
            assert kept == fresh, (view, node)
            kinds = dit.VIEW_KINDS[view]
            assert [e.id for e in seen.search(kept, kinds=kinds)] == \
                [e.id for e in seen.search(fresh, kinds=kinds)]
    for which, owner in [(w, None) for w in STATICS] + [(dit.CLIENTS + ":self", "app"),
                                                        (dit.CLIENTS + ":self", "other")]:
        _, attrs = dit.static_entry(layout, which, owner)
        for node, shaped in ((first, shaped_first), (second, shaped_second)):
            assert filtershape.static_match(node, which, attrs, layout, shaped, owner) == \
                matches_static(node, attrs), (which, owner, node)


def test_a_kept_translation_meets_values_it_was_not_made_with(world: tuple) -> None:
    """Pinned cases of the property above: a class, a DN and a number decided by the first
    request's value must not decide the next request's."""
    layout, seen, _ = world
    group = next(iter(layout.group_dn.values()))
    people = dit.PEOPLE
    cases = [
        ("(objectClass=inetOrgPerson)", "(objectClass=groupOfNames)"),
        (f"(memberOf={group})", "(memberOf=cn=nobody,ou=groups," + layout.base + ")"),
        ("(&(uid=nobody)(memberOf=not a dn))", f"(&(uid=nobody)(memberOf={group}))"),
        ("(uidNumber>=12x)", "(uidNumber>=1000)"),
        ("(!(idmActive=maybe))", "(!(idmActive=TRUE))"),
    ]
    from ldaptor import ldapfilter

    for first_text, second_text in cases:
        first, second = ldapfilter.parseFilter(first_text), ldapfilter.parseFilter(second_text)
        for node in (first, second):
            shaped = filtershape.shape_of(node)
            assert shaped is not None
            assert filtershape.translate(node, layout, people, seen, shaped) == \
                Translator(layout, people, seen)(node), node
    # Both orders were kept under one shape each: the table holds them.
    assert any(key[0] == people for key in layout.filters)


def test_substrings_and_extensible_matches_are_translated_afresh() -> None:
    from ldaptor import ldapfilter

    assert filtershape.shape_of(ldapfilter.parseFilter("(uid=a*)")) is None
    assert filtershape.shape_of(ldapfilter.parseFilter(
        "(&(uid=x)(memberOf:1.2.840.113556.1.4.1941:=cn=g))")) is None
    assert filtershape.shape_of(ldapfilter.parseFilter("(|(uid=a)(cn=*))")) is not None


def test_the_table_is_bounded(world: tuple) -> None:
    """A client that invents a new shape with every request cannot grow the table past
    :data:`~idm_facade.ldap.filtershape.MAX_SHAPES`."""
    layout, seen, _ = world
    uid = _ldaptor(("compare", pureldap.LDAPFilter_equalityMatch, "uid", b"x"))
    for n in range(filtershape.MAX_SHAPES + 50):
        node = pureldap.LDAPFilter_and([uid, pureldap.LDAPFilter_present(f"x{n}".encode())])
        filtershape.translate(node, layout, dit.PEOPLE, seen, filtershape.shape_of(node))
        assert len(layout.filters) <= filtershape.MAX_SHAPES
    assert len(layout.filters) >= 50  # it was emptied once, then filled again
