"""POSIX numbers (uidNumber, gidNumber): unique, and stable for as long as possible.

Unix clients (nslcd, sssd) own files by number, so a number that moves or is handed to
someone else is worse than none. The store holds no numbers, so we derive them:

- each id has a *home* number, ``base + hash(id) mod size``; with the default range of a
  billion numbers two ids share a home only rarely;
- a build from nothing gives every id its home, taking ids in sorted order and probing
  linearly (home + 1, + 2, ... wrapping inside the range) past numbers already taken, so the
  result depends only on the set of ids and the range: a restart gives the same numbers;
- a refresh (incremental or full) keeps every number already handed out in this process and
  only allocates for ids it has not seen, in sorted order, past every number ever taken. So
  within a process a number never changes and is never reused, even after its entry left.

Across a restart the numbers of a collision chain can differ from what the previous process
handed out (an id that arrived later but sorts first takes the home it lost before). With the
default range that needs two ids of one municipality to share a home out of a billion; a
deployment that needs hard guarantees across restarts must hold the numbers in the source
system. Accounts (uid space) and groups (gid space) have separate ranges.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

#: Default first number: clear of local users and of the usual 60000-65535 system ranges.
DEFAULT_BASE = 100_000
#: Default numbers per space: below 2**31 with the default base, so 32-bit signed tools cope.
DEFAULT_SIZE = 1_000_000_000


class PosixRangeError(ValueError):
    """The configured range cannot hold every entry (or is malformed)."""


@dataclass(frozen=True)
class PosixRange:
    """Where numbers come from: ``[directory] posix_uid_base``, ``posix_gid_base`` and
    ``posix_range_size``.

    uidNumbers are ``uid_base .. uid_base + size - 1``. gidNumber ``gid_base`` itself is the
    primary group of accounts without a unit; groups get ``gid_base + 1 .. gid_base + size``.
    """

    uid_base: int = DEFAULT_BASE
    gid_base: int = DEFAULT_BASE
    size: int = DEFAULT_SIZE

    def __post_init__(self) -> None:
        for name in ("uid_base", "gid_base"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise PosixRangeError(f"posix_{name} must be a positive integer, not {value!r}")
        if not isinstance(self.size, int) or self.size < 2:
            raise PosixRangeError(f"posix_range_size must be an integer >= 2, not {self.size!r}")
        top = max(self.uid_base, self.gid_base + 1) + self.size - 1
        if top > 2**32 - 2:
            raise PosixRangeError(f"posix numbers would reach {top}, beyond 4294967294")

    @classmethod
    def from_config(cls, config: Any) -> PosixRange:
        """The range from the ``[directory]`` table (defaults when absent)."""
        section = config.section("directory") if config is not None else {}
        try:
            return cls(int(section.get("posix_uid_base", DEFAULT_BASE)),
                       int(section.get("posix_gid_base", DEFAULT_BASE)),
                       int(section.get("posix_range_size", DEFAULT_SIZE)))
        except (TypeError, ValueError) as exc:
            raise PosixRangeError(f"[directory] posix settings: {exc}") from exc

    @property
    def no_unit_gid(self) -> int:
        """Primary gidNumber of accounts without a unit (no group entry carries it)."""
        return self.gid_base


def home(entry_id: str, first: int, size: int) -> int:
    """The number an id gets when nobody else wants it (stable across Python versions)."""
    digest = hashlib.blake2b(entry_id.encode(), digest_size=8).digest()
    return first + int.from_bytes(digest, "big") % size


class _Space:
    """One number space (uid or gid): id -> number, and the numbers taken.

    Copy-on-write: a child shares its parent's tables until it allocates, so a refresh that
    adds nobody costs nothing and an older snapshot's numbers never change under it.
    """

    __slots__ = ("first", "size", "by_id", "taken", "_owned")

    def __init__(self, first: int, size: int, by_id: dict[str, int] | None = None,
                 taken: set[int] | None = None) -> None:
        self.first = first
        self.size = size
        self.by_id: dict[str, int] = by_id if by_id is not None else {}
        self.taken: set[int] = taken if taken is not None else set()
        self._owned = by_id is None

    def child(self) -> _Space:
        return _Space(self.first, self.size, self.by_id, self.taken)

    def allocate(self, ids: Iterable[str]) -> None:
        """Numbers for the ids that have none yet, in sorted id order."""
        new = sorted({i for i in ids if i not in self.by_id})
        if not new:
            return
        if not self._owned:
            self.by_id = dict(self.by_id)
            self.taken = set(self.taken)
            self._owned = True
        if len(self.taken) + len(new) > self.size:
            raise PosixRangeError(
                f"posix range of {self.size} numbers from {self.first} cannot hold "
                f"{len(self.taken) + len(new)} entries: raise [directory] posix_range_size")
        last = self.first + self.size
        for entry_id in new:
            number = home(entry_id, self.first, self.size)
            while number in self.taken:
                number += 1
                if number == last:
                    number = self.first
            self.taken.add(number)
            self.by_id[entry_id] = number

    def get(self, entry_id: str) -> int:
        number = self.by_id.get(entry_id)
        if number is None:
            self.allocate((entry_id,))
            number = self.by_id[entry_id]
        return number


class PosixNumbers:
    """The numbers handed out so far: one per account (uid) and one per group (gid)."""

    def __init__(self, posix_range: PosixRange | None = None, *,
                 _uids: _Space | None = None, _gids: _Space | None = None) -> None:
        self.range = posix_range or PosixRange()
        self.uids = _uids or _Space(self.range.uid_base, self.range.size)
        self.gids = _gids or _Space(self.range.gid_base + 1, self.range.size)

    def child(self) -> PosixNumbers:
        """A copy-on-write successor for the next snapshot (same numbers, same range)."""
        return PosixNumbers(self.range, _uids=self.uids.child(), _gids=self.gids.child())

    def allocate(self, account_ids: Iterable[str], group_ids: Iterable[str]) -> None:
        """Allocate for every id not seen yet (each space in sorted id order)."""
        self.uids.allocate(account_ids)
        self.gids.allocate(group_ids)

    def uid(self, account_id: str) -> int:
        """uidNumber of an account."""
        return self.uids.get(account_id)

    def gid(self, group_id: str) -> int:
        """gidNumber of a group (unit, role, role group)."""
        return self.gids.get(group_id)
