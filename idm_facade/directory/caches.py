"""Per-snapshot caches bounded in bytes.

The caches of rendered entries (LDAP and SCIM) and of finished LDAP answers are keyed by
what a client asks: its attribute selection, its request as sent, the Host it names. A
client chooses those freely, so a bound on the number of entries alone bounds nothing: one
5,000-member group read with 4,000 different attribute lists, or under 2,000 different Host
headers, grew the server by 1 to 2 GB. These caches also count bytes.
"""

from __future__ import annotations

from typing import Any


class BoundedDict(dict):
    """A dict that :meth:`keep` empties when the next value would take it past ``max_bytes``
    (or ``max_entries``). Emptying at once keeps a hit a plain dict lookup, which the
    rendering paths make once per entry sent; the cost is a cold cache now and then under
    a flood of distinct requests, never memory. ``size`` is counted without a lock: threads
    that keep values at the same moment may miscount it a little until the next emptying."""

    def __init__(self, max_bytes: int, max_entries: int) -> None:
        super().__init__()
        self.max_bytes = max_bytes
        self.max_entries = max_entries
        self.size = 0

    def keep(self, key: Any, value: Any, nbytes: int) -> None:
        """Cache ``value`` (about ``nbytes`` bytes with its key) under ``key``."""
        if self.size + nbytes > self.max_bytes or len(self) >= self.max_entries:
            self.clear()
        self[key] = value
        self.size += nbytes

    def clear(self) -> None:
        super().clear()
        self.size = 0
