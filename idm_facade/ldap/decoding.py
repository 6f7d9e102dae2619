"""Decoding the requests clients send most, simple binds and plain searches, quickly.

ldaptor decodes a request through a chain of decoder contexts, a class lookup and a Python
call per BER element: about 35 microseconds for a bind and 50-80 for a point search on the
machines of BENCHMARKS.md, a quarter of what answering a distinct search costs in all. Here
the two requests every login and every nslcd look-up sends are read directly from the
bytes, and the same ldaptor objects are built from them (same classes, tags and values), so
everything after decoding is unchanged.

Only the plain forms are taken: a simple bind, or a search whose filter is made of and, or,
not, equality, ordering, approximate and presence tests, without controls, every element in
the tag and length forms clients send. Anything else (controls, substrings, extensible
matches, SASL, a long or unusual encoding, a filter nested deeper than :data:`MAX_DEPTH`)
returns None and goes to ldaptor, which decides as before. ``tests/test_ldap_decoding.py``
checks, for generated and mutated messages, that whatever this module takes ldaptor decodes
to equal objects.
"""

from __future__ import annotations

from typing import Any

from ldaptor.protocols import pureber, pureldap

#: Filters nested deeper than this go to ldaptor (the limits check them afterwards).
MAX_DEPTH = 32

_MESSAGE_TAG = 0x10  # SEQUENCE, as ldaptor records it (the constructed bit masked off)
_BIND, _SEARCH = 0x60, 0x63
_FILTERS: dict[int, Any] = {
    0xA0: pureldap.LDAPFilter_and, 0xA1: pureldap.LDAPFilter_or,
    0xA2: pureldap.LDAPFilter_not, 0xA3: pureldap.LDAPFilter_equalityMatch,
    0xA5: pureldap.LDAPFilter_greaterOrEqual, 0xA6: pureldap.LDAPFilter_lessOrEqual,
    0x87: pureldap.LDAPFilter_present, 0xA8: pureldap.LDAPFilter_approxMatch,
}
_SETS = (0xA0, 0xA1)
_AVAS = (0xA3, 0xA5, 0xA6, 0xA8)


class _Unfit(Exception):
    """Not a form this module takes: ldaptor decodes it."""


def request(pdu: bytes, head: int) -> Any:
    """The ldaptor ``LDAPMessage`` of a simple bind or a plain search, or None for anything
    else. ``head`` is the length of the message's own tag and length."""
    try:
        return _message(pdu, head)
    except _Unfit:
        return None


def _element(pdu: bytes, pos: int, end: int) -> tuple[int, int, int]:
    """(tag byte, content start, content end) of the element at ``pos``, which must end by
    ``end``. Short lengths and long ones of 1 or 2 bytes, as clients write them."""
    if pos + 2 > end:
        raise _Unfit
    tag = pdu[pos]
    first = pdu[pos + 1]
    if first < 0x80:
        start = pos + 2
        stop = start + first
    elif first == 0x81:
        start = pos + 3
        stop = start + (pdu[pos + 2] if start <= end else 0)
    elif first == 0x82:
        start = pos + 4
        stop = start + (int.from_bytes(pdu[pos + 2:pos + 4], "big") if start <= end else 0)
    else:
        raise _Unfit
    if start > end or stop > end:
        raise _Unfit
    return tag, start, stop


def _integer(pdu: bytes, start: int, stop: int) -> int:
    """A signed INTEGER, ENUMERATED or BOOLEAN content as ldaptor reads it (``ber2int``)."""
    if start == stop or stop - start > 8:
        raise _Unfit
    return int.from_bytes(pdu[start:stop], "big", signed=True)


def _envelope(pdu: bytes, head: int) -> tuple[int, int, int, int]:
    """(message id, operation tag, operation content start and end) of a message without
    controls."""
    end = len(pdu)
    tag, start, stop = _element(pdu, head, end)
    if tag != 0x02:
        raise _Unfit
    msgid = _integer(pdu, start, stop)
    tag, start, stop = _element(pdu, stop, end)
    if stop != end:  # controls or anything else after the operation
        raise _Unfit
    return msgid, tag, start, stop


def _message(pdu: bytes, head: int) -> Any:
    msgid, tag, start, stop = _envelope(pdu, head)
    if tag == _BIND:
        op = _bind(pdu, start, stop)
    elif tag == _SEARCH:
        op = _search(pdu, start, stop)
    else:
        raise _Unfit
    return pureldap.LDAPMessage(value=op, controls=None, id=msgid, tag=_MESSAGE_TAG)


def simple_bind(pdu: bytes, head: int) -> tuple[int, int, bytes, bytes] | None:
    """``(message id, version, name, password)`` of a simple bind without controls (every
    login's request), read straight into the values the bind handler takes; None for
    anything else. The same reading as :func:`request`'s, without building ldaptor's
    objects."""
    try:
        msgid, tag, start, stop = _envelope(pdu, head)
        if tag != _BIND:
            return None
        return (msgid, *_bind_fields(pdu, start, stop))
    except _Unfit:
        return None


def _bind_fields(pdu: bytes, pos: int, end: int) -> tuple[int, bytes, bytes]:
    """(version, name, password) of a simple bind's operation."""
    tag, start, stop = _element(pdu, pos, end)
    if tag != 0x02:
        raise _Unfit
    version = _integer(pdu, start, stop)
    tag, start, stop = _element(pdu, stop, end)
    if tag != 0x04:
        raise _Unfit
    dn = pdu[start:stop]
    tag, start, stop = _element(pdu, stop, end)
    if tag != 0x80 or stop != end:  # simple authentication, nothing after it
        raise _Unfit
    return version, dn, pdu[start:stop]


def _bind(pdu: bytes, pos: int, end: int) -> Any:
    version, dn, password = _bind_fields(pdu, pos, end)
    return pureldap.LDAPBindRequest(version=version, dn=dn, auth=password,
                                    tag=pureldap.LDAPBindRequest.tag, sasl=False)


def _search(pdu: bytes, pos: int, end: int) -> Any:
    tag, start, stop = _element(pdu, pos, end)
    if tag != 0x04:
        raise _Unfit
    base = pdu[start:stop]
    numbers = []
    for wanted in (0x0A, 0x0A, 0x02, 0x02, 0x01):  # scope, deref, size, time, typesOnly
        tag, start, stop = _element(pdu, stop, end)
        if tag != wanted:
            raise _Unfit
        numbers.append(_integer(pdu, start, stop))
    flt, stop = _filter(pdu, stop, end, 0)
    tag, start, stop = _element(pdu, stop, end)
    if tag != 0x30 or stop != end:
        raise _Unfit
    attributes = []
    pos = start
    while pos < stop:
        tag, first, last = _element(pdu, pos, stop)
        if tag != 0x04:
            raise _Unfit
        attributes.append(pdu[first:last])
        pos = last
    scope, deref, size, time, types_only = numbers
    return pureldap.LDAPSearchRequest(
        baseObject=base, scope=scope, derefAliases=deref, sizeLimit=size, timeLimit=time,
        typesOnly=0xFF if types_only else 0,  # as ldaptor's BERBoolean keeps TRUE
        filter=flt, attributes=attributes,
        tag=pureldap.LDAPSearchRequest.tag)


def _filter(pdu: bytes, pos: int, end: int, depth: int) -> tuple[Any, int]:
    """(the ldaptor filter at ``pos``, where it ends)."""
    if depth > MAX_DEPTH:
        raise _Unfit
    tag, start, stop = _element(pdu, pos, end)
    cls = _FILTERS.get(tag)
    if cls is None:
        raise _Unfit
    if tag in _AVAS:
        kind, first, last = _element(pdu, start, stop)
        kind2, first2, last2 = _element(pdu, last, stop)
        if kind != 0x04 or kind2 != 0x04 or last2 != stop:
            raise _Unfit
        return cls(attributeDesc=pureber.BEROctetString(pdu[first:last]),
                   assertionValue=pureber.BEROctetString(pdu[first2:last2]),
                   tag=cls.tag), stop
    if tag == 0x87:
        return cls(pdu[start:stop], tag=cls.tag), stop
    if tag in _SETS:
        parts = []
        inner = start
        while inner < stop:
            part, inner = _filter(pdu, inner, stop, depth + 1)
            parts.append(part)
        if not parts:
            raise _Unfit  # ldaptor's own reading of an empty set decides
        return cls(parts, tag=cls.tag), stop
    inner_filter, inner = _filter(pdu, start, stop, depth + 1)  # not
    if inner != stop:
        raise _Unfit
    return cls(value=inner_filter, tag=cls.tag), stop
