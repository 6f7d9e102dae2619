"""Slowing down and locking out password guessing.

Consecutive failures are counted per key (an account; a source address). From
``delay_after`` failures on, each further attempt waits before it is answered, doubling up to
``max_delay``; from ``lockout_after`` failures on, the key is locked for ``lockout_seconds``
and attempts are refused without checking the password (the caller answers exactly as for a
wrong password, so a lockout tells an attacker nothing). A success clears the account's count.
Counts are forgotten ``lockout_seconds`` after the last failure.

The counts live in the process. Each replica behind a load balancer (and each worker of
``serve --workers``) counts on its own, so N replicas allow up to N times the attempts
before every one has locked the account; the upstream directory's own lockout (AD's) still
applies across all of them.

Whoever can reach the port can make keys (every unknown name typed is counted, so that an
unknown name behaves exactly like a known one), so their cost is bounded: a key longer than
:data:`MAX_KEY` characters is kept as its SHA-256, and at most :data:`MAX_KEYS` keys are
kept; beyond that the ones whose last failure is oldest are forgotten first, in constant time
per failure. Source addresses are counted per :func:`address_key`: an IPv6 client holds a
whole /64 (its interface identifier is its own choice), so the /64 is the key.
"""

from __future__ import annotations

import hashlib
import ipaddress
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from idm_facade.access.addresses import ip_of

#: Keys longer than this are kept as their SHA-256 (a bind name can be as long as a message).
MAX_KEY = 256

#: Keys kept at most; past it, the ones whose last failure is oldest are forgotten first.
MAX_KEYS = 100_000


def address_key(host: str) -> str:
    """The key a source address is counted under: an IPv4 address (also when written as an
    IPv4-mapped IPv6 address) as it is, an IPv6 address as its /64 network, anything else
    (not an IP address) as it is."""
    address = ip_of(host)
    if address is None:
        return host
    if isinstance(address, ipaddress.IPv6Address):
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)


class ThrottleConfigError(ValueError):
    """A throttle setting is malformed (the message names it)."""


@dataclass(frozen=True)
class ThrottleSettings:
    """When to slow down and when to lock out, per key."""

    delay_after: int = 3
    first_delay: float = 0.5
    max_delay: float = 4.0
    lockout_after: int = 10
    lockout_seconds: float = 900.0

    @classmethod
    def from_table(cls, table: dict[str, Any], prefix: str = "") -> ThrottleSettings:
        """Settings from a config table; keys are ``<prefix><field>``."""
        values: dict[str, Any] = {}
        for name, default in (("delay_after", cls.delay_after),
                              ("first_delay", cls.first_delay),
                              ("max_delay", cls.max_delay),
                              ("lockout_after", cls.lockout_after),
                              ("lockout_seconds", cls.lockout_seconds)):
            raw = table.get(prefix + name, default)
            try:
                value = type(default)(raw)
            except (TypeError, ValueError):
                raise ThrottleConfigError(f"{prefix}{name} must be a number, not {raw!r}") \
                    from None
            if isinstance(raw, bool) or value < 0:
                raise ThrottleConfigError(f"{prefix}{name} must be a number >= 0")
            values[name] = value
        if values["lockout_after"] < 1:
            raise ThrottleConfigError(f"{prefix}lockout_after must be at least 1")
        return cls(**values)


@dataclass
class _Count:
    failures: int
    last: float


class Throttle:
    """Failure counts per key, with the delay and lockout they earn."""

    def __init__(self, settings: ThrottleSettings,
                 clock: Callable[[], float] = time.monotonic, max_keys: int = MAX_KEYS) -> None:
        self.settings = settings
        self.clock = clock
        self.max_keys = max_keys
        #: Ordered by last failure, oldest first (a failure moves its key to the end).
        self._counts: OrderedDict[str, _Count] = OrderedDict()

    def __len__(self) -> int:
        """Keys counted now (expired ones included until they are pruned)."""
        return len(self._counts)

    @staticmethod
    def _key(key: str) -> str:
        if len(key) <= MAX_KEY:
            return key
        return "sha256:" + hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()

    def _current(self, key: str) -> _Count | None:
        count = self._counts.get(key)
        if count is not None and self.clock() - count.last >= self.settings.lockout_seconds:
            del self._counts[key]
            return None
        return count

    def standing(self, key: str) -> tuple[bool, float]:
        """(is ``key`` locked out now, seconds to wait before answering it): :meth:`locked`
        and :meth:`delay` in one look, for a path that asks both on every attempt."""
        count = self._current(self._key(key))
        if count is None:
            return False, 0.0
        s = self.settings
        if count.failures >= s.lockout_after:
            return True, 0.0
        if count.failures < s.delay_after:
            return False, 0.0
        return False, min(s.max_delay, s.first_delay * 2 ** (count.failures - s.delay_after))

    def locked(self, key: str) -> bool:
        """Is ``key`` locked out now?"""
        return self.standing(key)[0]

    def delay(self, key: str) -> float:
        """Seconds to wait before answering the next attempt for ``key`` (0 once locked: a
        lockout is answered at once)."""
        return self.standing(key)[1]

    def failed(self, key: str) -> None:
        """Count one more failure for ``key``."""
        key = self._key(key)
        count = self._current(key)
        now = self.clock()
        if count is None:
            self._counts[key] = _Count(1, now)
        else:
            count.failures += 1
            count.last = now
            self._counts.move_to_end(key)
        # Expired keys are at the front; so are the first to go when there are too many.
        counts = self._counts
        while counts:
            oldest = next(iter(counts.values()))
            if len(counts) <= self.max_keys and \
                    now - oldest.last < self.settings.lockout_seconds:
                break
            counts.popitem(last=False)

    def succeeded(self, key: str) -> None:
        """Clear ``key``'s count."""
        self._counts.pop(self._key(key), None)
