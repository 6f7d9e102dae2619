"""Index paging (RFC 7644 §3.4.2.4) and cursor paging (RFC 9865).

Both slice the one ordered result list the snapshot returns for a query (policy already
applied), so ``totalResults`` is always the full filtered count and every page of a query uses
the same order (sort key, then id).

Cursors are opaque to clients: ``<payload>.<mac>`` in base64url (RFC 3986 unreserved
characters only). The payload holds the offset, the id of the entry just before it, the
snapshot it was cut from, a digest of the query it belongs to and when it was issued; the
HMAC-SHA256 over it uses a per-process random key unless ``[scim] cursor_secret`` is set (set
it when several facade processes sit behind one load balancer). A cursor for another query,
a forged or garbled one is ``invalidCursor``; an old one is ``expiredCursor``. If the snapshot
changed since the cursor was cut, the page resumes after the remembered entry when it is still
in the result (so a refresh in between neither repeats nor skips entries), else at the offset.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import time
from dataclasses import dataclass
from typing import Any

from idm_facade.scim.errors import ScimError, invalid_value

DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000
CURSOR_TIMEOUT = 3600


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass(frozen=True)
class PagingConfig:
    """Page sizes and the cursor key; from the ``[scim]`` config table."""

    default_page_size: int = DEFAULT_PAGE_SIZE
    max_page_size: int = MAX_PAGE_SIZE
    cursor_timeout: int = CURSOR_TIMEOUT
    secret: bytes = b""

    @classmethod
    def from_config(cls, section: dict[str, Any]) -> PagingConfig:
        secret = section.get("cursor_secret")
        return cls(int(section.get("default_page_size", DEFAULT_PAGE_SIZE)),
                   int(section.get("max_page_size", MAX_PAGE_SIZE)),
                   int(section.get("cursor_timeout", CURSOR_TIMEOUT)),
                   str(secret).encode() if secret else os.urandom(32))


@dataclass(frozen=True)
class Page:
    """One page of a result list and the numbers the ListResponse reports."""

    start: int  # 0-based offset into the result
    items: list
    total: int
    next_cursor: str | None = None
    previous_cursor: str | None = None
    cursor_mode: bool = False


def _int(value: Any, name: str, scim_type: str | None = None) -> int | None:
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        raise ScimError(400, f"{name} must be an integer", scim_type or "invalidValue")
    try:
        return int(value)
    except (TypeError, ValueError):
        raise ScimError(400, f"{name} must be an integer, not {value!r}",
                        scim_type or "invalidValue") from None


def query_digest(*parts: Any) -> str:
    """A short digest naming one query (filter, resource types, sort, selection, client)."""
    return hashlib.sha256(repr(parts).encode()).hexdigest()[:16]


class Pager:
    """Cuts pages from result lists; issues and checks cursors."""

    def __init__(self, config: PagingConfig) -> None:
        self.config = config

    def _sign(self, payload: dict) -> str:
        body = _b64(json.dumps(payload, separators=(",", ":")).encode())
        mac = hmac.new(self.config.secret, body.encode(), hashlib.sha256).digest()[:16]
        return f"{body}.{_b64(mac)}"

    def _open(self, cursor: str) -> dict:
        try:
            body, mac = cursor.split(".", 1)
            expected = hmac.new(self.config.secret, body.encode(), hashlib.sha256).digest()[:16]
            if not hmac.compare_digest(_unb64(mac), expected):
                raise ValueError("bad mac")
            payload = json.loads(_unb64(body))
            if not isinstance(payload, dict):
                raise ValueError("bad payload")
            return payload
        except (ValueError, TypeError, UnicodeDecodeError):
            raise ScimError(400, "the cursor is not valid for this server",
                            "invalidCursor") from None

    def count(self, raw: Any, cursor_mode: bool) -> int:
        """The page size asked for, capped at the maximum."""
        count = _int(raw, "count", "invalidCount" if cursor_mode else None)
        if count is None:
            return self.config.default_page_size
        if count < 0:
            if cursor_mode:
                raise ScimError(400, "count must not be negative", "invalidCount")
            count = 0
        return min(count, self.config.max_page_size)

    def page(self, results: list, params: dict[str, Any], query: str, snapshot_id: str) -> Page:
        """The page ``params`` (startIndex/count or cursor/count) asks for."""
        cursor = params.get("cursor")
        if cursor is not None:
            if params.get("startIndex") not in (None, ""):
                raise invalid_value("startIndex and cursor cannot be combined")
            return self._cursor_page(results, str(cursor), params.get("count"), query,
                                     snapshot_id)
        start = _int(params.get("startIndex"), "startIndex")
        start = 1 if start is None or start < 1 else start
        count = self.count(params.get("count"), False)
        offset = start - 1
        return Page(offset, results[offset: offset + count], len(results))

    def _cursor_page(self, results: list, cursor: str, raw_count: Any, query: str,
                     snapshot_id: str) -> Page:
        count = self.count(raw_count, True)
        offset = 0
        if cursor:
            payload = self._open(cursor)
            if payload.get("q") != query:
                raise ScimError(400, "the cursor belongs to another query", "invalidCursor")
            issued = payload.get("t")
            if not isinstance(issued, int | float) or \
                    time.time() - issued > self.config.cursor_timeout:
                raise ScimError(400, "the cursor has expired; start again with cursor=",
                                "expiredCursor")
            claimed = payload.get("o")
            if not isinstance(claimed, int) or claimed < 0:
                raise ScimError(400, "the cursor is not valid for this server",
                                "invalidCursor")
            offset = claimed
            after = payload.get("a")
            if payload.get("s") != snapshot_id and after:
                offset = _resume_after(results, after, offset)
        items = results[offset: offset + count]
        end = offset + len(items)
        now = int(time.time())
        next_cursor = None
        if end < len(results) and count > 0:
            next_cursor = self._sign({"o": end, "a": _id(results[end - 1]) if end else None,
                                      "s": snapshot_id, "q": query, "t": now})
        previous = None
        if offset > 0:
            back = max(0, offset - max(count, 1))
            previous = self._sign({"o": back, "a": _id(results[back - 1]) if back else None,
                                   "s": snapshot_id, "q": query, "t": now})
        return Page(offset, items, len(results), next_cursor, previous, True)


def _id(entry: Any) -> str:
    return str(getattr(entry, "id", entry))


def _resume_after(results: list, after_id: str, offset: int) -> int:
    """Position just after entry ``after_id`` in a (possibly changed) result list."""
    guess = offset - 1
    if 0 <= guess < len(results) and _id(results[guess]) == after_id:
        return offset
    for index, entry in enumerate(results):
        if _id(entry) == after_id:
            return index + 1
    return min(offset, len(results))
