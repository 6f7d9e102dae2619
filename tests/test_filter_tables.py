"""Filter text -> filter tree, for both protocols, as tables.

SCIM and LDAP filters compile to the one filter tree the planner answers
(``idm_facade.directory.filters``). These tables pin each translator's output for the forms
clients send, so a change to either translator shows up here as a changed row, not only as a
different answer somewhere in an end-to-end test. Rows are (filter text, expected tree).
"""

from __future__ import annotations

import warnings
from datetime import datetime

import pytest

from idm_facade.config import Config
from idm_facade.directory import Directory
from idm_facade.directory import filters as f
from idm_facade.ldap import dit
from idm_facade.ldap.filters import Translator
from idm_facade.scim import schema as s
from idm_facade.scim.errors import ScimError
from idm_facade.scim.filters import translate
from store.engine import make_engine

ENTERPRISE = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User"
MUNI_GROUP = "urn:idm-facade:params:scim:schemas:extension:municipal:1.0:Group"

# ---------------------------------------------------------------------------- SCIM

SCIM_USERS = [
    ('userName eq "anna"', f.Eq("userName", "anna")),
    # attribute names and operators are case-insensitive; values are kept (the directory
    # folds them per caseExact)
    ('USERNAME Eq "Anna"', f.Eq("userName", "Anna")),
    ('userName ne "a"', f.Not(f.Eq("userName", "a"))),
    ('userName co "nn"', f.Substring("userName", any=("nn",))),
    ('userName sw "a"', f.Substring("userName", initial="a")),
    ('userName ew "a"', f.Substring("userName", final="a")),
    ('userName sw ""', f.Present("userName")),
    ("userName pr", f.Present("userName")),
    ("title eq null", f.Not(f.Present("title"))),
    ("title ne null", f.Present("title")),
    ("active eq true", f.Eq("active", True)),
    ('meta.lastModified gt "2024-01-01T00:00:00Z"', f.Gt("modified", "2024-01-01T00:00:00Z")),
    ('emails[type eq "work" and value co "@x"]',
     f.Any_("emails", f.And((f.Eq("type", "work"), f.Substring("value", any=("@x",)))))),
    # Entra's form: the sub-attribute comparison moves inside the value path
    ('emails[type eq "work"].value eq "x@y"',
     f.Any_("emails", f.And((f.Eq("type", "work"), f.Eq("value", "x@y"))))),
    ('emails.value eq "x@y"', f.Eq("emails.value", "x@y")),
    ('not (userName eq "a")', f.Not(f.Eq("userName", "a"))),
    # and/or chains are folded flat
    ('userName eq "a" or userName eq "b" or userName eq "c"',
     f.Or((f.Eq("userName", "a"), f.Eq("userName", "b"), f.Eq("userName", "c")))),
    ('userName eq "a" and (displayName sw "b" or active eq false)',
     f.And((f.Eq("userName", "a"),
            f.Or((f.Substring("displayName", initial="b"), f.Eq("active", False)))))),
    (f'{ENTERPRISE}:employeeNumber eq "42"', f.Eq("employeeNumber", "42")),
    # a number compared with a string attribute is its text
    ("employeeNumber eq 42", f.Eq("employeeNumber", "42")),
    ('externalId eq "X"', f.Eq("externalId", "X")),
    # ids are lower-case and caseExact: an upper-case id matches nothing
    ('id eq "ABC"', f.FALSE),
    ('groups.value eq "g1"', f.Eq("memberOf", "g1")),
    ('name.givenName eq "Anna"', f.Eq("givenName", "Anna")),
]

SCIM_GROUPS = [
    ('members.value eq "x"', f.Eq("member", "x")),
    ('displayName eq "Rådhus"', f.Eq("displayName", "Rådhus")),
    (f'{MUNI_GROUP}:kind eq "unit"', f.Eq("kind", "unit")),
]

SCIM_ERRORS = [
    ('userName eq', "syntax error"),
    ('foo eq "x"', "unknown attribute foo"),
    ("active gt true", "not defined for boolean"),
    ("userName gt null", "cannot compare userName with null"),
    ('emails[emails[type eq "x"]]', "cannot be nested"),
    ('meta.created eq "notadate"', "is not one"),
    ('userName xx "a"', "syntax error"),
    ('emails[type eq "work"].value', "syntax error"),
]


@pytest.mark.parametrize(("text", "tree"), SCIM_USERS, ids=[t for t, _ in SCIM_USERS])
def test_scim_users(text: str, tree: f.Filter) -> None:
    assert translate(text, (s.USER,)) == tree


@pytest.mark.parametrize(("text", "tree"), SCIM_GROUPS, ids=[t for t, _ in SCIM_GROUPS])
def test_scim_groups(text: str, tree: f.Filter) -> None:
    assert translate(text, (s.GROUP,)) == tree


def test_scim_root_endpoint_scopes_each_attribute_to_its_resource_type() -> None:
    assert translate('userName eq "a"', (s.USER, s.GROUP)) == \
        f.And((f.Eq("kind", "account"), f.Eq("userName", "a")))


@pytest.mark.parametrize(("text", "message"), SCIM_ERRORS, ids=[t for t, _ in SCIM_ERRORS])
def test_scim_errors(text: str, message: str) -> None:
    with pytest.raises(ScimError) as caught:
        translate(text, (s.USER,))
    assert caught.value.status == 400
    assert caught.value.scim_type == "invalidFilter"
    assert message in str(caught.value)


# ---------------------------------------------------------------------------- LDAP

LDAP_PEOPLE = [
    ("(uid=anna)", f.Eq("userName", "anna")),
    ("(UID=Anna)", f.Eq("userName", "Anna")),
    ("(objectClass=*)", f.TRUE),
    ("(objectClass=inetOrgPerson)", f.TRUE),
    ("(objectClass=groupOfNames)", f.FALSE),
    ("(cn=*nn*)", f.Substring("displayName", any=("nn",))),
    ("(sn=Han*)", f.Substring("familyName", initial="Han")),
    ("(mail=*@x)", f.Substring("emails.value", final="@x")),
    ("(!(uid=a))", f.Not(f.Eq("userName", "a"))),
    ("(&(uid=a)(sn=b))", f.And((f.Eq("userName", "a"), f.Eq("familyName", "b")))),
    ("(|(uid=a)(uid=b))", f.Or((f.Eq("userName", "a"), f.Eq("userName", "b")))),
    # an unknown attribute is Undefined (RFC 4511 §4.5.1.7): FALSE at the top, dropped
    # from an or, and it makes an and (or a not) Undefined too
    ("(foo=bar)", f.FALSE),
    ("(&(foo=bar)(uid=a))", f.FALSE),
    ("(|(foo=bar)(uid=a))", f.Eq("userName", "a")),
    ("(!(foo=bar))", f.FALSE),
    # approximate matching is equality (RFC 4511 allows it)
    ("(uid~=anna)", f.Eq("userName", "anna")),
    ("(createTimestamp>=20240101000000Z)", f.Ge("created", datetime(2024, 1, 1))),
    ("(idmCprNumber=0101011234)", f.Eq("cpr", "0101011234")),
    ("(displayName=*)", f.Present("displayName")),
    ("(!(memberUid=x))", f.TRUE),
]

LDAP_GROUPS = [
    ("(objectClass=groupOfNames)", f.TRUE),
    ("(objectClass=inetOrgPerson)", f.FALSE),
    ("(cn=*nn*)", f.Or((f.Substring("userKey", any=("nn",)),
                        f.Substring("displayName", any=("nn",))))),
    ("(displayName=*)", f.Present("displayName")),
    ("(createTimestamp>=20240101000000Z)", f.Ge("created", datetime(2024, 1, 1))),
    ("(sn=Han*)", f.FALSE),
    # uid is a type the server knows; groups just lack it, so the negation matches every
    # group (RFC 4511 §4.5.1.7; slapd answers the same), while an unknown type stays
    # Undefined and its negation matches nothing
    ("(uid=a)", f.FALSE),
    ("(!(uid=a))", f.TRUE),
    ("(!(foo=bar))", f.FALSE),
]


@pytest.fixture(scope="module")
def layout_and_snapshot(demo_db: str) -> tuple[dit.Layout, object]:
    engine = make_engine(demo_db, create=False)
    snapshot = Directory(engine).snapshot
    engine.dispose()
    return dit.layout_for(snapshot, dit.options_from(Config(), snapshot)), snapshot


def _ldap(text: str, view: str, layout_and_snapshot: tuple) -> f.Filter:
    with warnings.catch_warnings():  # ldaptor's filter parser uses pyparsing's old names
        warnings.simplefilter("ignore")
        from ldaptor import ldapfilter

        parsed = ldapfilter.parseFilter(text)
    layout, snapshot = layout_and_snapshot
    return Translator(layout, view, snapshot)(parsed)


@pytest.mark.parametrize(("text", "tree"), LDAP_PEOPLE, ids=[t for t, _ in LDAP_PEOPLE])
def test_ldap_people(text: str, tree: f.Filter, layout_and_snapshot: tuple) -> None:
    assert _ldap(text, dit.PEOPLE, layout_and_snapshot) == tree


@pytest.mark.parametrize(("text", "tree"), LDAP_GROUPS, ids=[t for t, _ in LDAP_GROUPS])
def test_ldap_groups(text: str, tree: f.Filter, layout_and_snapshot: tuple) -> None:
    assert _ldap(text, dit.GROUPS, layout_and_snapshot) == tree


def test_ldap_dn_valued_assertions_resolve_to_entry_ids(layout_and_snapshot: tuple) -> None:
    """``memberOf=<group DN>`` becomes an equality on the group's id; a DN naming nothing
    matches nothing (and is not an error)."""
    layout, snapshot = layout_and_snapshot
    group_id, group_dn = next(iter(layout.group_dn.items()))
    assert _ldap(f"(memberOf={group_dn})", dit.PEOPLE, layout_and_snapshot) == \
        f.Eq("memberOf", group_id)
    assert _ldap(f"(memberOf=cn=nobody,ou=groups,{layout.base})", dit.PEOPLE,
                 layout_and_snapshot) == f.FALSE


CHEAP = [  # (filter, planned in the event loop below one entry, over a whole container)
    ("(uid=a)", True, True),
    ("(objectClass=*)", True, False),  # a pull of everything: the thread pool
    ("(&(objectClass=posixAccount)(uid=a))", True, True),
    ("(&(objectClass=*)(uid=*))", True, False),
    ("(|(uid=a)(mail=b))", True, True),
    ("(|(uid=a)(mail=*))", True, False),
    ("(uid=a*)", False, False),
    ("(!(uid=a))", False, False),
]


@pytest.mark.parametrize(("text", "below", "whole"), CHEAP, ids=[t for t, _, _ in CHEAP])
def test_which_searches_are_planned_in_the_event_loop(text: str, below: bool,
                                                      whole: bool) -> None:
    from idm_facade.ldap.filters import cheap

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from ldaptor import ldapfilter

        parsed = ldapfilter.parseFilter(text)
    assert cheap(parsed) is below
    assert cheap(parsed, whole_container=True) is whole
