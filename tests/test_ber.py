"""The reply encoder (:mod:`idm_facade.ldap.ber`) against ldaptor's encoder, the codec the
facade's requests are decoded with: the same bytes for the integers every reply carries
(message IDs, result codes), whose small values take a shortcut of their own."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from ldaptor.protocols import pureber, pureldap

from idm_facade.ldap import ber

#: Around every boundary of one, two and three content octets, both signs.
EDGES = [n + d for n in (0, 0x7F, 0x80, 0xFF, 0x7FFF, 0x8000, 0xFFFF, 0x7FFFFF, 2**31 - 1)
         for d in (-1, 0, 1)] + [-1, -128, -129, -32768, -32769]


@settings(max_examples=500, deadline=None)
@given(st.one_of(st.sampled_from(EDGES), st.integers(-2**40, 2**40)))
def test_integer_is_ldaptors_encoding(n: int) -> None:
    assert ber.integer(n) == pureber.BERInteger(n).toWire()
    assert ber.integer(n, 0x0A) == pureber.BEREnumerated(n).toWire()


@settings(max_examples=300, deadline=None)
@given(st.integers(1, 2**31 - 1), st.integers(0, 123))
def test_a_bind_response_is_ldaptors_encoding(msgid: int, code: int) -> None:
    ours = ber.message(msgid, ber.result(ber.BIND_RESPONSE, code, ""))
    theirs = pureldap.LDAPMessage(pureldap.LDAPBindResponse(resultCode=code), id=msgid)
    assert ours == theirs.toWire()
