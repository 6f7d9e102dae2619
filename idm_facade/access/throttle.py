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
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


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
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings
        self.clock = clock
        self._counts: dict[str, _Count] = {}

    def _current(self, key: str) -> _Count | None:
        count = self._counts.get(key)
        if count is not None and self.clock() - count.last >= self.settings.lockout_seconds:
            del self._counts[key]
            return None
        return count

    def locked(self, key: str) -> bool:
        """Is ``key`` locked out now?"""
        count = self._current(key)
        return count is not None and count.failures >= self.settings.lockout_after

    def delay(self, key: str) -> float:
        """Seconds to wait before answering the next attempt for ``key``."""
        count = self._current(key)
        s = self.settings
        if count is None or count.failures < s.delay_after:
            return 0.0
        return min(s.max_delay, s.first_delay * 2 ** (count.failures - s.delay_after))

    def failed(self, key: str) -> None:
        """Count one more failure for ``key``."""
        count = self._current(key)
        now = self.clock()
        if count is None:
            self._counts[key] = _Count(1, now)
        else:
            count.failures += 1
            count.last = now
        if len(self._counts) > 100_000:  # bounded: forget what has expired
            for stale in [k for k, c in self._counts.items()
                          if now - c.last >= self.settings.lockout_seconds]:
                del self._counts[stale]

    def succeeded(self, key: str) -> None:
        """Clear ``key``'s count."""
        self._counts.pop(key, None)
