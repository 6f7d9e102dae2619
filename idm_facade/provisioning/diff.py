"""The one diff of provisioning: what a consumer should hold against what it was last given.

Both consumers of planned changes use it: the outbox of a push target (what the target
last accepted) and a pull change feed (what the feed last recorded for its client). Keeping
one diff means a feed and a target with the same policy see the same changes, and a fix to
how leavers or unchanged entries are treated reaches both.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from idm_facade.provisioning.desired import GROUP, Wanted


@dataclass(frozen=True)
class Held:
    """What the consumer was last given of one entry."""

    kind: str
    digest: str
    #: ``present``, or ``disabled`` (a leaver a target keeps with ``active: false``).
    state: str = "present"


@dataclass(frozen=True)
class Change:
    """One difference: ``upsert`` (new or changed; ``item`` is what it should be),
    ``disable`` or ``delete`` (no longer given; ``item`` is None)."""

    entry_id: str
    kind: str
    action: str
    item: Wanted | None = None
    #: Whether the consumer holds the entry already (an upsert is then a replace).
    known: bool = False


def changes(want: Mapping[str, Wanted], held: Mapping[str, Held], leaver: str
            ) -> list[Change]:
    """The changes that make ``held`` into ``want``, wanted entries first (in ``want``'s
    order: users before the groups naming them). An entry no longer wanted becomes
    ``delete`` when it is a group or ``leaver`` is ``delete``, else ``disable`` (once)."""
    out: list[Change] = []
    for entry_id, item in want.items():
        had = held.get(entry_id)
        if had is not None and had.state == "present" and had.digest == item.digest:
            continue
        out.append(Change(entry_id, item.kind, "upsert", item, had is not None))
    for entry_id, had in held.items():
        if entry_id in want:
            continue
        action = "delete" if had.kind == GROUP or leaver == "delete" else "disable"
        if action == "disable" and had.state == "disabled":
            continue
        out.append(Change(entry_id, had.kind, action, None, True))
    return out


def touched(want: Mapping[str, Wanted], last: Mapping[str, Wanted] | None,
            dirty: set[str]) -> set[str] | None:
    """The entries a plan must compare with what the consumer holds: those whose wanted
    body is not the very object the last plan wanted (:class:`desired.Wants` keeps the
    objects of unchanged entries), those no longer wanted, and ``dirty`` ones; None (every
    entry) when there was no last plan to go by."""
    if last is None:
        return None
    out = {entry_id for entry_id, item in want.items() if last.get(entry_id) is not item}
    out.update(entry_id for entry_id in last if entry_id not in want)
    out.update(dirty)
    return out


def only(want: Mapping[str, Wanted], ids: set[str] | None) -> Mapping[str, Wanted]:
    """``want`` cut to ``ids`` (all of it for None), in ``want``'s order."""
    if ids is None:
        return want
    return {entry_id: item for entry_id, item in want.items() if entry_id in ids}
