"""Request controls: RFC 2696 simple paged results and RFC 2891 server-side sorting.

Paging holds the whole ordered result of the first page's search (after policy, from the
snapshot that answered it) in a per-connection table keyed by an opaque random cookie, so
later pages are slices of one consistent result even if the directory refreshes meanwhile.
Cookies are bound to the connection and to the search they started (base, scope, filter,
attributes), expire after ``page_ttl`` seconds, and a page size of 0 ends the search
(RFC 2696 §3). Unknown critical controls make the operation fail with 12
(unavailableCriticalExtension); unknown non-critical ones are ignored (RFC 4511 §4.1.11).
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass, field
from typing import Any

from idm_facade.ldap import ber
from idm_facade.ldap.subschema import PAGED_OID, SORT_OID, SORT_RESPONSE_OID

UNAVAILABLE_CRITICAL = 12
PROTOCOL_ERROR = 2

#: Controls understood on a search.
SEARCH_CONTROLS = frozenset({PAGED_OID, SORT_OID})


class ControlError(Exception):
    """A control the server cannot honour: carries the LDAP result code."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass
class Paged:
    """A decoded paged-results request control."""

    size: int
    cookie: bytes
    critical: bool


@dataclass
class Sort:
    """A decoded server-side sort request (first key only is used)."""

    attribute: str
    reverse: bool
    rule: str | None
    critical: bool
    keys: int = 1


@dataclass
class SearchControls:
    """The controls of one request that this server acts on."""

    paged: Paged | None = None
    sort: Sort | None = None


def _oid(value: Any) -> bytes:
    return value if isinstance(value, bytes) else str(value).encode()


def parse(controls: list | None, understood: frozenset[bytes]) -> SearchControls:
    """Decode the controls of a request; raise ControlError for unusable critical ones."""
    found = SearchControls()
    for oid_raw, critical, value in controls or ():
        oid = _oid(oid_raw)
        critical = bool(critical)
        if oid not in understood:
            if critical:
                raise ControlError(UNAVAILABLE_CRITICAL,
                                   f"critical control {oid.decode(errors='replace')} is not "
                                   "supported")
            continue
        raw = value if isinstance(value, bytes) else (value.encode() if value else b"")
        try:
            if oid == PAGED_OID:
                found.paged = _paged(raw, critical)
            elif oid == SORT_OID:
                found.sort = _sort(raw, critical)
        except (ber.BERError, IndexError, ValueError) as exc:
            raise ControlError(PROTOCOL_ERROR,
                               f"malformed value of control {oid.decode()}: {exc}") from exc
    return found


def _paged(raw: bytes, critical: bool) -> Paged:
    tag, content, _ = ber.read_tlv(raw)
    if tag != 0x30:
        raise ValueError("not a SEQUENCE")
    items = ber.read_all(content)
    if len(items) != 2 or items[0][0] != 0x02 or items[1][0] != 0x04:
        raise ValueError("expected SEQUENCE { size INTEGER, cookie OCTET STRING }")
    size = ber.read_int(items[0][1])
    if size < 0:
        raise ValueError("negative page size")
    return Paged(size, items[1][1], critical)


def _sort(raw: bytes, critical: bool) -> Sort:
    tag, content, _ = ber.read_tlv(raw)
    if tag != 0x30:
        raise ValueError("not a SEQUENCE")
    keys = ber.read_all(content)
    if not keys:
        raise ValueError("no sort keys")
    key_tag, key_content = keys[0]
    parts = ber.read_all(key_content)
    if key_tag != 0x30 or not parts or parts[0][0] != 0x04:
        raise ValueError("bad sort key")
    attribute = parts[0][1].decode()
    rule, reverse = None, False
    for tag, body in parts[1:]:
        if tag == 0x80:
            rule = body.decode()
        elif tag == 0x81:
            reverse = bool(body and body[0])
    return Sort(attribute, reverse, rule, critical, len(keys))


def paged_response(total: int, cookie: bytes) -> bytes:
    """The paged-results response control."""
    return ber.control(PAGED_OID, ber.sequence(ber.integer(total), ber.octets(cookie)))


def sort_response(code: int, attribute: str | None = None) -> bytes:
    """The sort response control (RFC 2891 §1.2)."""
    body = ber.integer(code, 0x0A)
    if attribute:
        body += ber.octets(attribute.encode(), 0x80)
    return ber.control(SORT_RESPONSE_OID, ber.sequence(body))


@dataclass
class PageState:
    """A paged search in progress."""

    signature: tuple
    results: list
    offset: int
    expires: float
    total: int
    extra: dict = field(default_factory=dict)


class PagedSearches:
    """The paged searches of one connection, keyed by opaque cookies."""

    def __init__(self, ttl: float = 300.0, limit: int = 16) -> None:
        self.ttl = ttl
        self.limit = limit
        self.states: dict[bytes, PageState] = {}

    def _expire(self) -> None:
        now = time.monotonic()
        for cookie in [c for c, s in self.states.items() if s.expires < now]:
            del self.states[cookie]

    def take(self, cookie: bytes, signature: tuple) -> PageState:
        """The state a cookie continues; ControlError when unknown, expired or reused for
        another search."""
        self._expire()
        state = self.states.pop(cookie, None)
        if state is None:
            raise ControlError(PROTOCOL_ERROR, "paged results cookie is invalid or expired")
        if state.signature != signature:
            raise ControlError(PROTOCOL_ERROR,
                               "paged results cookie belongs to a different search")
        return state

    def keep(self, state: PageState) -> bytes:
        """Store a state for its next page; returns the new cookie."""
        self._expire()
        while len(self.states) >= self.limit:
            oldest = min(self.states, key=lambda c: self.states[c].expires)
            del self.states[oldest]
        cookie = secrets.token_bytes(16)
        state.expires = time.monotonic() + self.ttl
        self.states[cookie] = state
        return cookie

    def clear(self) -> None:
        """Forget every paged search (connection closed)."""
        self.states.clear()
