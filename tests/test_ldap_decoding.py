"""The quick decoder of binds and searches against ldaptor's decoder, which it stands in for.

:mod:`idm_facade.ldap.decoding` reads simple binds and plain searches straight from the
bytes and builds ldaptor's objects; anything else it leaves to ldaptor. For messages built
and encoded by ldaptor itself (so the wire form is a real client's), and for those messages
cut, extended and with bytes changed, whatever the quick decoder takes must be what
ldaptor's decoder gives: the same classes, tags and values all the way down. And the plain
forms must be taken (else the quick path would silently never run).
"""

from __future__ import annotations

import warnings
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from ldaptor.protocols import pureber, pureldap
from ldaptor.protocols.ldap.ldapserver import BaseLDAPServer

from idm_facade.ldap import ber, decoding

warnings.filterwarnings("ignore", module="ldaptor")

TEXT = st.binary(max_size=40) | st.sampled_from(
    [b"uid", b"objectClass", b"posixAccount", b"cn=x,ou=people,dc=example,dc=org", b""])
LONG = st.binary(min_size=120, max_size=400)  # long-form lengths (0x81, 0x82)
PLAIN_FILTERS = {"and", "or", "not", "eq", "ge", "le", "approx", "present"}


def _filters(plain: bool) -> st.SearchStrategy:
    ava = {"eq": pureldap.LDAPFilter_equalityMatch, "ge": pureldap.LDAPFilter_greaterOrEqual,
           "le": pureldap.LDAPFilter_lessOrEqual, "approx": pureldap.LDAPFilter_approxMatch}
    leaves = [st.builds(lambda cls, a, v: cls(
        attributeDesc=pureldap.LDAPAttributeDescription(a),
        assertionValue=pureldap.LDAPAssertionValue(v)),
        st.sampled_from(list(ava.values())), TEXT, TEXT | LONG),
        st.builds(pureldap.LDAPFilter_present, TEXT)]
    if not plain:
        leaves += [
            st.builds(lambda a, v: pureldap.LDAPFilter_substrings(
                type=a, substrings=[pureldap.LDAPFilter_substrings_initial(v)]), TEXT, TEXT),
            st.builds(lambda a, v: pureldap.LDAPFilter_extensibleMatch(
                type=pureldap.LDAPAttributeDescription(a),
                matchValue=pureldap.LDAPAssertionValue(v), dnAttributes=None,
                matchingRule=None), TEXT, TEXT)]
    return st.recursive(
        st.one_of(*leaves),
        lambda kids: st.builds(pureldap.LDAPFilter_and, st.lists(kids, min_size=1, max_size=3))
        | st.builds(pureldap.LDAPFilter_or, st.lists(kids, min_size=1, max_size=3))
        | st.builds(pureldap.LDAPFilter_not, kids), max_leaves=8)


def _searches(plain: bool) -> st.SearchStrategy:
    numbers = st.integers(-(2**31), 2**31 - 1) if not plain else st.integers(0, 2**31 - 1)
    return st.builds(
        pureldap.LDAPSearchRequest, baseObject=TEXT, scope=st.integers(0, 3),
        derefAliases=st.integers(0, 3), sizeLimit=numbers, timeLimit=numbers,
        typesOnly=st.booleans(), filter=_filters(plain),
        attributes=st.lists(TEXT, max_size=5))


def _binds(plain: bool) -> st.SearchStrategy:
    simple = st.builds(pureldap.LDAPBindRequest, version=st.sampled_from([2, 3, 300]),
                       dn=TEXT, auth=TEXT | LONG)
    if plain:
        return simple
    return simple | st.builds(lambda dn, mech: pureldap.LDAPBindRequest(
        dn=dn, auth=(mech, b"creds"), sasl=True), TEXT, st.sampled_from([b"PLAIN", b"EXTERNAL"]))


def _messages(plain: bool) -> st.SearchStrategy:
    controls = st.none() if plain else st.none() | st.just(
        [(b"1.2.840.113556.1.4.319", False, b"0\x05\x02\x01\x05\x04\x00")])
    return st.builds(lambda op, msgid, ctrls: pureldap.LDAPMessage(
        op, controls=ctrls, id=msgid).toWire(),
        _searches(plain) | _binds(plain), st.integers(1, 2**31 - 1), controls)


def _dump(o: Any) -> Any:
    """Everything about an ldaptor object that the server reads, with exact types."""
    if isinstance(o, pureldap.LDAPMessage):
        return ("message", o.id, o.tag, _dump(o.value), o.controls)
    if isinstance(o, pureldap.LDAPSearchRequest):
        return ("search", o.tag, o.baseObject, o.scope, o.derefAliases, o.sizeLimit,
                o.timeLimit, o.typesOnly, _dump(o.filter), list(o.attributes))
    if isinstance(o, pureldap.LDAPBindRequest):
        return ("bind", o.tag, o.version, o.dn, o.auth, o.sasl)
    if isinstance(o, (pureldap.LDAPFilter_and, pureldap.LDAPFilter_or)):
        return (type(o), o.tag, [_dump(p) for p in o.data])
    if isinstance(o, pureldap.LDAPFilter_not):
        return (type(o), o.tag, _dump(o.value))
    if isinstance(o, pureldap.LDAPAttributeValueAssertion):
        return (type(o), o.tag, _dump(o.attributeDesc), _dump(o.assertionValue))
    if isinstance(o, pureber.BEROctetString):
        return (type(o), o.tag, o.value)
    return (type(o), repr(o))


def _simple_bind_of(message: Any) -> tuple[int, int, bytes, bytes] | None:
    """What ``decoding.simple_bind`` must give for a message ``decoding.request`` read as
    ``message`` (None: not a simple bind without controls)."""
    if message is None or message.controls is not None or not isinstance(
            message.value, pureldap.LDAPBindRequest) or message.value.sasl:
        return None
    op = message.value
    return message.id, op.version, op.dn, op.auth


def _ldaptor(pdu: bytes) -> Any:
    msg, used = pureber.berDecodeObject(BaseLDAPServer.berdecoder, pdu)
    assert used == len(pdu)
    return msg


def _head(pdu: bytes) -> int | None:
    try:
        found = ber.pdu_length(pdu, 0)
    except ber.BERError:
        return None
    if found is None or found[0] + found[1] != len(pdu):
        return None
    return found[0]


@settings(max_examples=400, deadline=None)
@given(_messages(plain=True))
def test_plain_binds_and_searches_are_decoded_as_ldaptor_decodes_them(pdu: bytes) -> None:
    quick = decoding.request(pdu, _head(pdu))
    assert quick is not None, "a plain bind or search must take the quick path"
    assert _dump(quick) == _dump(_ldaptor(pdu))
    assert quick.toWire() == pdu
    bind = decoding.simple_bind(pdu, _head(pdu))
    assert bind == _simple_bind_of(quick)
    assert (bind is not None) == isinstance(quick.value, pureldap.LDAPBindRequest)


@settings(max_examples=300, deadline=None)
@given(_messages(plain=False))
def test_other_forms_are_left_to_ldaptor_or_decoded_alike(pdu: bytes) -> None:
    quick = decoding.request(pdu, _head(pdu))
    if quick is not None:
        assert _dump(quick) == _dump(_ldaptor(pdu))
    assert decoding.simple_bind(pdu, _head(pdu)) == _simple_bind_of(quick)


@settings(max_examples=600, deadline=None)
@given(_messages(plain=True), st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)),
                                       min_size=1, max_size=3), st.integers(-3, 3))
def test_changed_bytes_are_never_decoded_differently(pdu: bytes, changes: list,
                                                     resize: int) -> None:
    """Bytes changed, the message cut or lengthened: the quick decoder takes it only when
    ldaptor decodes it to the same objects (else ldaptor decides, as before)."""
    data = bytearray(pdu)
    for where, value in changes:
        data[where % len(data)] = value
    data = data[:len(data) + resize] if resize < 0 else data + bytes(resize)
    changed = bytes(data)
    head = _head(changed)
    if head is None:
        return  # the connection's framing refuses it before any decoder sees it
    quick = decoding.request(changed, head)
    # the bind's own reading takes exactly the simple binds the general one takes
    assert decoding.simple_bind(changed, head) == _simple_bind_of(quick)
    if quick is None:
        return
    try:
        expected = _ldaptor(changed)
    except Exception as exc:  # noqa: BLE001 - what ldaptor refuses, the quick path must too
        raise AssertionError(f"taken by the quick decoder, refused by ldaptor: {exc}") from exc
    assert _dump(quick) == _dump(expected)


def test_unusual_encodings_go_to_ldaptor() -> None:
    """Controls, SASL, substrings and deep nesting are ldaptor's."""
    search = pureldap.LDAPSearchRequest(filter=pureldap.LDAPFilter_present("uid"))
    paged = pureldap.LDAPMessage(search, controls=[
        (b"1.2.840.113556.1.4.319", False, b"0\x05\x02\x01\x05\x04\x00")], id=1).toWire()
    assert decoding.request(paged, _head(paged)) is None
    sasl = pureldap.LDAPMessage(pureldap.LDAPBindRequest(
        dn=b"", auth=(b"EXTERNAL", None), sasl=True), id=2).toWire()
    assert decoding.request(sasl, _head(sasl)) is None
    assert decoding.simple_bind(sasl, _head(sasl)) is None
    with_controls = pureldap.LDAPMessage(pureldap.LDAPBindRequest(dn=b"uid=a", auth=b"pw"),
                                         controls=[(b"1.2.3", False, None)], id=4).toWire()
    assert decoding.simple_bind(with_controls, _head(with_controls)) is None
    deep: Any = pureldap.LDAPFilter_present("uid")
    for _ in range(decoding.MAX_DEPTH + 2):
        deep = pureldap.LDAPFilter_not(deep)
    nested = pureldap.LDAPMessage(pureldap.LDAPSearchRequest(filter=deep), id=3).toWire()
    assert decoding.request(nested, _head(nested)) is None
    assert _dump(_ldaptor(nested).value.filter)[0] is pureldap.LDAPFilter_not
