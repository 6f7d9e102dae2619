"""One consistent, indexed snapshot of the directory, and the planner that queries it.

Entries get a small integer handle; indexes map normalised values to sets of handles:
- equality: ``{attr: {key: {handle, ...}}}`` for attributes marked ``indexed``;
- ordered: ``{attr: sorted [(key, handle), ...]}`` for attributes marked ``ordered``, used for
  prefix substrings and ranges by bisection.

The planner (:meth:`Snapshot.select`) answers a filter with set algebra on those indexes:
indexed equality is a hash look-up, ``and`` intersects starting from the smallest operand,
``or`` unions, and ``not`` plus anything no index answers are checked entry by entry on the
candidate set only. Results come back ordered by (sort key, id), a stable order for paging.

A snapshot is never modified after it is built; a refresh builds a new one and swaps it in.
"""

from __future__ import annotations

import bisect
from collections import OrderedDict, defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from datetime import datetime
from threading import Lock
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from idm_facade.directory import filters as f
from idm_facade.directory.entries import Entry
from idm_facade.directory.limits import NO_DEADLINE, Deadline
from idm_facade.directory.policy import Policy
from schemas.attributes import ATTRIBUTES, normalise

if TYPE_CHECKING:
    from idm_facade.directory.load import OrgData
    from idm_facade.directory.posix import PosixNumbers
    from idm_facade.directory.roles import Grant

T = TypeVar("T")
_MISSING: Any = object()


class CacheKey(Generic[T]):
    """Names one per-snapshot cache slot and says what it holds.

    Front ends keep what they derive from a snapshot (rendered resources, finished list
    bodies, the LDAP tree, the role API's look-ups) with the snapshot it was derived from, so
    it goes away with it and can never be served from another one. Each defines its own key
    (``CacheKey[BodyCache]("scim.bodies")``): the snapshot knows nothing of SCIM or LDAP, and
    a reader of the key knows the type of what comes back.
    """

    __slots__ = ("name", "carry")

    def __init__(self, name: str, carry: bool = False) -> None:
        self.name = name
        #: Handed on to the next snapshot patched from this one (:attr:`Snapshot.origin`), for
        #: caches that can be patched instead of made again (restricted clients' projections).
        self.carry = carry

    def __repr__(self) -> str:
        return f"CacheKey({self.name!r})"

@dataclass(frozen=True)
class Origin:
    """What a snapshot patched from another knows of it: the ids of the entries the patch
    changed or added, and the other's caches marked ``carry``."""

    changed: frozenset[str]
    carried: dict[CacheKey[Any], Any]


_MAX = "\U0010ffff"
#: Kind of the tombstone left at a removed entry's handle by :meth:`Snapshot.patched`.
REMOVED = "removed"
_CACHE_SIZE = 256
#: Entries checked one by one between two looks at the deadline.
_CHECK_EVERY = 2048


def _spec_rules(attr: str) -> tuple[str, bool, bool, bool]:
    spec = ATTRIBUTES.get(attr.split("@", 1)[0])
    if spec is None:
        return "string", False, False, False
    return spec.type, spec.case_exact, spec.indexed, spec.ordered


class Snapshot:
    """Entries, their indexes and the planner. Thread-safe to read; never mutated."""

    def __init__(self, entries: Iterable[Entry], *, at: datetime, seq: int,
                 next_boundary: datetime | None, data: OrgData | None = None,
                 grants: dict[str, list[Grant]] | None = None,
                 posix: PosixNumbers | None = None) -> None:
        self.at = at
        self.seq = seq
        self.next_boundary = next_boundary
        self._keep(data, grants, posix)
        self.entries: list[Entry] = sorted(entries, key=lambda e: e.id)
        self.by_id: dict[str, int] = {e.id: h for h, e in enumerate(self.entries)}
        self.equality: dict[str, dict[Any, set[int]]] = defaultdict(dict)
        self.ordered: dict[str, list[tuple[Any, int]]] = {}
        self.by_kind: dict[str, set[int]] = defaultdict(set)
        self._visible_cache: OrderedDict = OrderedDict()
        self._result_cache: OrderedDict = OrderedDict()
        self._lock = Lock()
        #: Entries added or removed since the last full index (0: handles are in id order).
        self.drift = 0
        #: Set on a snapshot made by :meth:`patched` (None for a full build).
        self.origin: Origin | None = None
        self._index()

    # ------------------------------------------------------------------ build

    def _index(self) -> None:
        ordered: dict[str, list[tuple[Any, int]]] = defaultdict(list)
        for handle, entry in enumerate(self.entries):
            self.by_kind[entry.kind].add(handle)
            for attr, values in entry.attrs.items():
                type_, exact, indexed, is_ordered = _spec_rules(attr)
                if not (indexed or is_ordered):
                    continue
                bucket = self.equality[attr] if indexed else None
                for value in values:
                    key = normalise(type_, exact, value)
                    if bucket is not None:
                        found = bucket.get(key)
                        if found is None:
                            bucket[key] = {handle}
                        else:
                            found.add(handle)
                    if is_ordered:
                        ordered[attr].append((key, handle))
        for attr, pairs in ordered.items():
            pairs.sort()
            self.ordered[attr] = pairs

    def _index_entry(self, handle: int, entry: Entry, sign: int,
                     copied: set, ordered_changes: dict[str, list]) -> None:
        """Add (sign 1) or remove (sign -1) one entry's values, copying what it touches so
        the snapshot this one was patched from is never modified."""
        for attr, values in entry.attrs.items():
            type_, exact, indexed, is_ordered = _spec_rules(attr)
            if not (indexed or is_ordered):
                continue
            for value in values:
                key = normalise(type_, exact, value)
                if indexed:
                    if attr not in copied:
                        self.equality[attr] = dict(self.equality.get(attr, {}))
                        copied.add(attr)
                    bucket = self.equality[attr]
                    if (attr, key) not in copied:
                        bucket[key] = set(bucket.get(key, ()))
                        copied.add((attr, key))
                    if sign > 0:
                        bucket[key].add(handle)
                    else:
                        bucket[key].discard(handle)
                        if not bucket[key]:
                            del bucket[key]
                            copied.discard((attr, key))
                if is_ordered:
                    ordered_changes[attr].append((sign, (key, handle)))

    def patched(self, changed: list[Entry], removed: set[str], *, at: datetime, seq: int,
                next_boundary: datetime | None, data: OrgData | None,
                grants: dict[str, list[Grant]], posix: PosixNumbers | None) -> Snapshot:
        """A new snapshot with ``changed`` entries replaced or added and ``removed`` ones
        dropped, its indexes patched copy-on-write (cost proportional to the change, no store
        access). This snapshot is left untouched.

        Handles stay stable: a new entry gets the next free handle and a removed one leaves a
        :data:`REMOVED` tombstone, so no other entry's handle (and index membership) moves.
        When tombstones and out-of-order handles pass a tenth of the entries, the indexes are
        rebuilt from the entries in memory instead, which restores id order.
        """
        new_ids = [e.id for e in changed if e.id not in self.by_id]
        removed = {r for r in removed if r in self.by_id}
        drift = self.drift + len(new_ids) + len(removed)
        origin = Origin(frozenset(e.id for e in changed),
                        {k: v for k, v in self._caches.items() if k.carry})
        if drift > max(100, len(self.entries) // 10):
            keep = {e.id: e for e in self.entries if e.kind != REMOVED and e.id not in removed}
            keep.update({e.id: e for e in changed})
            rebuilt = Snapshot(keep.values(), at=at, seq=seq, next_boundary=next_boundary,
                               data=data, grants=grants, posix=posix)
            rebuilt.origin = origin
            return rebuilt
        snap = object.__new__(Snapshot)
        snap.origin = origin
        snap.at, snap.seq, snap.next_boundary = at, seq, next_boundary
        snap._keep(data, grants, posix)
        snap.drift = drift
        snap.entries = list(self.entries)
        snap.by_id = self.by_id
        snap.by_kind = self.by_kind
        snap.equality = dict(self.equality)
        snap.ordered = dict(self.ordered)
        snap._visible_cache = OrderedDict()
        snap._result_cache = OrderedDict()
        snap._lock = Lock()
        if new_ids or removed:
            snap.by_id = dict(self.by_id)
            snap.by_kind = defaultdict(set, {k: set(v) for k, v in self.by_kind.items()})
        copied: set = set()
        ordered_changes: dict[str, list] = defaultdict(list)
        for entry_id in removed:
            handle = snap.by_id.pop(entry_id)
            old = self.entries[handle]
            snap._index_entry(handle, old, -1, copied, ordered_changes)
            snap.by_kind[old.kind].discard(handle)
            snap.entries[handle] = Entry(entry_id, REMOVED, {}, {})
        for entry in changed:
            known = snap.by_id.get(entry.id)
            if known is None:
                handle = len(snap.entries)
                snap.entries.append(entry)
                snap.by_id[entry.id] = handle
                snap.by_kind[entry.kind].add(handle)
                snap._index_entry(handle, entry, 1, copied, ordered_changes)
                continue
            # Index only what changed: a group's member list moves by one, not thousands.
            handle = known
            before = self.entries[handle]
            gone, came = _attr_diff(before, entry)
            snap._index_entry(handle, gone, -1, copied, ordered_changes)
            snap.entries[handle] = entry
            snap._index_entry(handle, came, 1, copied, ordered_changes)
        for attr, ops in ordered_changes.items():
            pairs = list(snap.ordered.get(attr, ()))
            for sign, pair in ops:
                if sign < 0:
                    at_index = bisect.bisect_left(pairs, pair)
                    if at_index < len(pairs) and pairs[at_index] == pair:
                        del pairs[at_index]
                else:
                    bisect.insort(pairs, pair)
            snap.ordered[attr] = pairs
        return snap

    def live(self) -> list[Entry]:
        """Every entry in effect (patched snapshots keep tombstones of removed entries in
        ``entries`` so that handles stay stable)."""
        return [e for e in self.entries if e.kind != REMOVED]

    # ------------------------------------------------------------------ access

    def get(self, entry_id: str) -> Entry | None:
        """The entry with this id (no policy applied)."""
        handle = self.by_id.get(entry_id)
        if handle is None:
            handle = self.by_id.get(str(entry_id).lower())
        return self.entries[handle] if handle is not None else None

    def __len__(self) -> int:
        return len(self.by_id)

    def visible_handles(self, policy: Policy, kinds: frozenset[str]) -> frozenset[int]:
        """Handles of the entries of ``kinds`` the policy admits (cached per policy)."""
        key = (policy, kinds)
        with self._lock:
            found = self._visible_cache.get(key)
            if found is not None:
                self._visible_cache.move_to_end(key)
                return found
        admitted: set[int] = set()
        for kind in kinds & policy.kinds:
            admitted |= self.by_kind.get(kind, set())
        if policy.subtrees is not None:
            under: set[int] = set()
            index = self.equality.get("ancestor", {})
            for unit in policy.subtrees:
                under |= index.get(unit.lower(), set())
            from schemas.attributes import ROLE, ROLEGROUP

            keep_always = self.by_kind.get(ROLE, set()) | self.by_kind.get(ROLEGROUP, set())
            admitted &= under | keep_always
        result = frozenset(admitted)
        with self._lock:
            self._visible_cache[key] = result
            if len(self._visible_cache) > _CACHE_SIZE:
                self._visible_cache.popitem(last=False)
        return result

    # ------------------------------------------------------------------ queries

    def search(self, flt: f.Filter, *, kinds: frozenset[str], policy: Policy,
               sort_by: str | None = None, descending: bool = False,
               deadline: Deadline = NO_DEADLINE) -> list[Entry]:
        """All entries of ``kinds`` visible to ``policy`` that match ``flt``, in a stable
        order: by ``sort_by`` (a directory attribute; missing values last) then id.

        Entries are admitted and attributes hidden here; references to hidden entries are
        not: a restricted client reads its projection of the snapshot
        (:class:`~idm_facade.directory.view.ClientView`), where they do not exist.

        Results are cached per (filter, kinds, policy, sort) for the life of the snapshot,
        so paging through a large result costs one evaluation. Checking entries one by one
        stops with :class:`~idm_facade.directory.limits.TooLong` past ``deadline``.
        """
        key = (flt, kinds, policy, sort_by, descending)
        with self._lock:
            cached = self._result_cache.get(key)
            if cached is not None:
                self._result_cache.move_to_end(key)
                return cached
        universe = self.visible_handles(policy, kinds)
        rewritten = rewrite(flt, policy)
        handles = self.select(rewritten, universe, deadline)
        result = self._order(handles, sort_by, descending, policy)
        with self._lock:
            self._result_cache[key] = result
            if len(self._result_cache) > _CACHE_SIZE:
                self._result_cache.popitem(last=False)
        return result

    def _order(self, handles: set[int] | frozenset[int], sort_by: str | None,
               descending: bool, policy: Policy) -> list[Entry]:
        if self.drift:
            entries_ = self.entries
            ordered = sorted(handles, key=lambda h: entries_[h].id)
        else:
            ordered = sorted(handles)  # a fresh build hands out handles in id order
        entries = [self.entries[h] for h in ordered]
        if sort_by and sort_by != "id":
            names = policy.physical(sort_by)
            spec = ATTRIBUTES.get(sort_by)
            type_, exact = (spec.type, spec.case_exact) if spec else ("string", False)

            def key(entry: Entry) -> tuple:
                for name in names:
                    values = entry.attrs.get(name)
                    if values:
                        return (0, normalise(type_, exact, values[0]))
                return (1, "")

            present = [e for e in entries if key(e)[0] == 0]
            missing = [e for e in entries if key(e)[0] == 1]
            present.sort(key=key, reverse=descending)
            entries = present + missing
        elif descending:
            entries.reverse()
        return entries

    # ------------------------------------------------------------------ planner

    def select(self, node: f.Filter, universe: frozenset[int] | set[int],
               deadline: Deadline = NO_DEADLINE) -> set[int] | frozenset[int]:
        """Handles in ``universe`` matching ``node`` (physical names), using indexes."""
        exact = self._indexed(node)
        if exact is not None:
            return exact & universe if len(exact) < len(universe) else universe & exact
        if isinstance(node, f.And):
            indexed: list[set[int]] = []
            rest: list[f.Filter] = []
            candidates: set[int] | frozenset[int]
            for part in node.parts:
                found = self._indexed(part)
                (indexed.append(found) if found is not None else rest.append(part))
            if indexed:
                indexed.sort(key=len)
                candidates = set(indexed[0])
                for other in indexed[1:]:
                    candidates &= other
                    if not candidates:
                        break
                candidates &= universe
            else:
                # No operand is indexed: narrow with the first operand, then check the rest.
                candidates = self.select(rest[0], universe, deadline)
                rest = rest[1:]
            for part in rest:
                if not candidates:
                    break
                candidates = self.select(part, candidates, deadline)
            return candidates
        if isinstance(node, f.Or):
            either: set[int] = set()
            for part in node.parts:
                either |= self.select(part, universe, deadline)
            return either
        if isinstance(node, f.Not):
            return set(universe) - self.select(node.part, universe, deadline)
        if isinstance(node, f.Const):
            return set(universe) if node.value else set()
        if deadline.at is None or len(universe) <= _CHECK_EVERY:
            deadline.check()
            return {h for h in universe if f.matches(self.entries[h], node)}
        matched: set[int] = set()
        entries = self.entries
        for count, handle in enumerate(universe):
            if not count % _CHECK_EVERY:
                deadline.check()
            if f.matches(entries[handle], node):
                matched.add(handle)
        return matched

    def _indexed(self, node: f.Filter) -> set[int] | None:
        """The exact answer of ``node`` from indexes alone, or None when they cannot give it."""
        if isinstance(node, f.Eq):
            type_, exact, indexed, _ = _spec_rules(node.attr)
            if indexed:
                try:
                    key = normalise(type_, exact, node.value)
                except (TypeError, ValueError):
                    return set()
                return self.equality.get(node.attr, {}).get(key, set())
            return None
        if isinstance(node, f.Substring) and not node.any and not node.final and node.initial:
            type_, exact, _, is_ordered = _spec_rules(node.attr)
            if is_ordered and type_ == "string":
                prefix = node.initial if exact else node.initial.casefold()
                return self._range(node.attr, prefix, True, prefix + _MAX, False)
            return None
        if isinstance(node, (f.Ge, f.Le, f.Gt, f.Lt)):
            type_, exact, _, is_ordered = _spec_rules(node.attr)
            if not is_ordered:
                return None
            try:
                key = normalise(type_, exact, node.value)
            except (TypeError, ValueError):
                return set()
            if isinstance(node, f.Ge):
                return self._range(node.attr, key, True, None, False)
            if isinstance(node, f.Gt):
                return self._range(node.attr, key, False, None, False)
            if isinstance(node, f.Le):
                return self._range(node.attr, None, False, key, True)
            return self._range(node.attr, None, False, key, False)
        if isinstance(node, f.Or):
            parts = [self._indexed(p) for p in node.parts]
            union: set[int] = set()
            for p in parts:
                if p is None:
                    return None
                union |= p
            return union
        return None

    def _range(self, attr: str, low: Any, low_incl: bool, high: Any, high_incl: bool
               ) -> set[int]:
        pairs = self.ordered.get(attr)
        if not pairs:
            return set()
        try:
            if low is None:
                start = 0
            elif low_incl:
                start = bisect.bisect_left(pairs, (low, -1))
            else:
                start = bisect.bisect_right(pairs, (low, len(self.entries)))
            if high is None:
                stop = len(pairs)
            elif high_incl:
                stop = bisect.bisect_right(pairs, (high, len(self.entries)))
            else:
                stop = bisect.bisect_left(pairs, (high, -1))
        except TypeError:
            return set()
        return {h for _, h in pairs[start:stop]}

    def brute_force(self, node: f.Filter, universe: Iterable[int]) -> set[int]:
        """The oracle: check every entry of ``universe`` one by one."""
        return {h for h in universe if f.matches(self.entries[h], node)}

    # ------------------------------------------------------------------ build products, caches

    def _keep(self, data: OrgData | None, grants: dict[str, list[Grant]] | None,
              posix: PosixNumbers | None) -> None:
        #: The store rows as of ``at`` the entries were built from (the role API's
        #: catalogues and constraints, and the next incremental refresh, read them).
        self.data = data
        #: Effective role grants per account id, with provenance.
        self.grants: dict[str, list[Grant]] = grants or {}
        #: POSIX numbers handed out so far (kept across refreshes in one process).
        self.posix = posix
        self._caches: dict[CacheKey[Any], Any] = {}

    def cached(self, key: CacheKey[T], make: Callable[[], T]) -> T:
        """The value under ``key`` for this snapshot, made by ``make`` on first use.

        Two threads may both make it the first time; one value wins and both get it, so no
        lock is held while making (a slow make must not stall unrelated readers)."""
        found = self._caches.get(key, _MISSING)
        if found is _MISSING:
            found = self._caches.setdefault(key, make())
        return found

    def peek(self, key: CacheKey[T]) -> T | None:
        """The value under ``key`` if it was made already, else None."""
        return self._caches.get(key)

    def keep(self, key: CacheKey[T], value: T) -> T:
        """Store ``value`` under ``key`` (replacing what was there); returns it."""
        self._caches[key] = value
        return value


def _attr_diff(before: Entry, after: Entry) -> tuple[Entry, Entry]:
    """Two pseudo-entries holding the values ``after`` dropped and the ones it added."""
    gone: dict[str, tuple] = {}
    came: dict[str, tuple] = {}
    for attr in before.attrs.keys() | after.attrs.keys():
        old = before.attrs.get(attr, ())
        new = after.attrs.get(attr, ())
        if old == new:
            continue
        old_set, new_set = set(old), set(new)
        if old_set - new_set:
            gone[attr] = tuple(old_set - new_set)
        if new_set - old_set:
            came[attr] = tuple(new_set - old_set)
    return Entry(before.id, before.kind, gone), Entry(after.id, after.kind, came)


def _flatten_any(node: f.Any_) -> f.Filter | None:
    """A superset filter of a value path over the flattened ``complex.sub`` attributes.

    Only positive parts carry over (``not`` inside a value path is not monotone), so a
    ``Not`` becomes "anything". Returns None when nothing narrows.
    """

    def walk(part: f.Filter) -> f.Filter | None:
        if isinstance(part, f.And):
            kept = [w for w in (walk(p) for p in part.parts) if w is not None]
            return f.And(tuple(kept)) if kept else None
        if isinstance(part, f.Or):
            alternatives = [walk(p) for p in part.parts]
            ok = [k for k in alternatives if k is not None]
            return f.Or(tuple(ok)) if len(ok) == len(alternatives) else None
        if isinstance(part, f.LEAVES) and f"{node.complex}.{part.attr}" in ATTRIBUTES:
            return replace(part, attr=f"{node.complex}.{part.attr}")
        return None

    return walk(node.part)


def rewrite(node: f.Filter, policy: Policy) -> f.Filter:
    """Translate logical attribute names to the physical names this policy may read.

    Attributes the client may not read become absent (``Present`` false, comparisons false,
    so ``not`` of them true): a filter cannot reveal what the client cannot read.
    Value paths keep logical sub-names; visibility is enforced on their elements.
    """
    if isinstance(node, f.And):
        return f.And(tuple(rewrite(p, policy) for p in node.parts))
    if isinstance(node, f.Or):
        return f.Or(tuple(rewrite(p, policy) for p in node.parts))
    if isinstance(node, f.Not):
        return f.Not(rewrite(node.part, policy))
    if isinstance(node, f.Any_):
        if not policy.may_read_complex(node.complex):
            return f.FALSE
        inner = f.Any_(node.complex, _restrict_elements(node.part, node.complex, policy))
        # The flattened sub-attributes give an indexed superset; elements are checked on it.
        superset = _flatten_any(node)
        return f.And((rewrite(superset, policy), inner)) if superset is not None else inner
    if isinstance(node, f.LEAVES):
        names = policy.physical(node.attr)
        if not names:
            return f.FALSE
        if len(names) == 1:
            return replace(node, attr=names[0])
        return f.Or(tuple(replace(node, attr=n) for n in names))
    return node


def _restrict_elements(part: f.Filter, complex_name: str, policy: Policy) -> f.Filter:
    """Inside a value path over an address list, admit only elements the policy may see."""
    if complex_name in ("emails", "phoneNumbers", "addresses"):
        allowed = f.Or(tuple(f.Eq("visibility", v) for v in policy.visibilities))
        return f.And((allowed, part))
    if complex_name == "engagements" and not policy.sensitive_titles \
            and "title" in f.attrs_of(part):
        # A masked title must not be probed by filter either.
        return f.And((f.Not(f.Eq("titleSensitive", True)), part))
    return part

