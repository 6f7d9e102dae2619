"""What one client sees of one snapshot: :class:`ClientView`, the only read API a front end
gets.

A front end asks its client's view for entries (``search``, ``get``) and for their values
(``values``, ``complex``, ``first``); it never reads an entry's stored attributes itself. Two
layers make sure nothing hidden gets out:

- **Which entries, and what they are made of.** For a client limited to subtrees or kinds,
  the view reads its own projection of the snapshot (:mod:`idm_facade.directory.projection`):
  the directory as it would be if the hidden units and entries did not exist. Derived
  attributes, filters, totals, sort order and entity tags are all computed from it.
- **Which values of an entry.** A value stored under a physical name the policy does not list
  in ``policy.physical(attr)`` is not shown (CPR without the grant, INTERNAL address buckets
  for PUBLIC clients, sensitive titles without the grant); address elements whose
  ``visibility`` the policy may not read are dropped, and the internal ``visibility`` key is
  never shown; engagement elements lose a sensitive title unless the policy grants sensitive
  titles.

The view also says what a response disclosed, for the access log: the persons
(:meth:`ClientView.subjects`) and the sensitive attributes (:meth:`ClientView.sensitive`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import datetime
from typing import TypeVar

from idm_facade.directory import filters as f
from idm_facade.directory.entries import Entry
from idm_facade.directory.limits import NO_DEADLINE, Deadline
from idm_facade.directory.load import OrgData
from idm_facade.directory.policy import Policy
from idm_facade.directory.projection import projected, restricted
from idm_facade.directory.snapshot import CacheKey, Snapshot
from schemas.attributes import (
    ACCOUNT,
    ATTRIBUTES,
    GROUP_KINDS,
    UNIT,
    VISIBILITY_COMPLEX,
)

T = TypeVar("T")

#: Element keys the directory keeps for its own use and never shows.
_INTERNAL_KEYS = ("visibility", "titleSensitive")

#: Sensitive-attribute labels recorded in the access log.
CPR = "cpr"
SENSITIVE_TITLE = "sensitiveTitle"

_VIEWS: CacheKey[dict[Policy, ClientView]] = CacheKey("directory.views")


class ClientView:
    """One client's reading of one snapshot (see the module docstring).

    Made with :meth:`of`, which keeps one view per policy with the snapshot, so what a view
    caches lives as long as the snapshot and no longer.
    """

    __slots__ = ("policy", "_base", "_snap", "_units")

    def __init__(self, base: Snapshot, policy: Policy) -> None:
        self.policy = policy
        self._base = base
        self._snap = projected(base, policy)
        self._units: frozenset[str] | None = None

    @classmethod
    def of(cls, base: Snapshot, policy: Policy) -> ClientView:
        """The view of ``base`` for ``policy`` (one per snapshot and policy)."""
        views = base.cached(_VIEWS, dict)
        found = views.get(policy)
        if found is None:
            found = views.setdefault(policy, cls(base, policy))
        return found

    # ------------------------------------------------------------------ the snapshot

    @property
    def at(self) -> datetime:
        """The instant the snapshot shows."""
        return self._base.at

    @property
    def seq(self) -> int:
        """The change-log position the snapshot includes."""
        return self._base.seq

    @property
    def catalogue(self) -> OrgData:
        """The store rows of the role and IT-system catalogues (no person data is read
        through it by front ends: accounts come from the view)."""
        assert self._base.data is not None, "a snapshot built from the store"
        return self._base.data

    def cached(self, key: CacheKey[T], make: Callable[[], T]) -> T:
        """A per-snapshot cache slot of what this client sees (kept with the projection,
        so two policies with different projections never share it)."""
        return self._snap.cached(key, make)

    # ------------------------------------------------------------------ entries

    def search(self, flt: f.Filter, *, kinds: frozenset[str], sort_by: str | None = None,
               descending: bool = False, deadline: Deadline = NO_DEADLINE) -> list[Entry]:
        """Entries of ``kinds`` this client may see matching ``flt``, in a stable order
        (:class:`~idm_facade.directory.limits.TooLong` past ``deadline``)."""
        return self._snap.search(flt, kinds=kinds, policy=self.policy, sort_by=sort_by,
                                 descending=descending, deadline=deadline)

    def get(self, entry_id: str) -> Entry | None:
        """The entry with this id as the client sees it, or None when hidden or unknown."""
        entry = self._snap.get(entry_id)
        if entry is None or entry.kind not in self.policy.kinds:
            return None
        return entry

    def unit_ids(self) -> frozenset[str] | None:
        """Ids of the units the client may see; None when it sees every unit."""
        if not restricted(self.policy):
            return None
        if self._units is None:
            snap = self._snap
            self._units = frozenset(snap.entries[h].id for h in snap.by_kind.get(UNIT, ()))
        return self._units

    # ------------------------------------------------------------------ values

    def values(self, entry: Entry, logical_attr: str) -> tuple:
        """Values of directory attribute ``logical_attr`` the client may read on ``entry``.

        Visibility buckets are merged in order (PUBLIC first), sensitive titles are included
        only with the grant, CPR only with the grant.
        """
        names = self.policy.physical(logical_attr)
        if not names:
            return ()
        if len(names) == 1:
            return entry.attrs.get(names[0], ())
        return tuple(v for name in names for v in entry.attrs.get(name, ()))

    def first(self, entry: Entry, logical_attr: str, default: object = None) -> object:
        """The first value the client may read, or ``default``."""
        values = self.values(entry, logical_attr)
        return values[0] if values else default

    def complex(self, entry: Entry, name: str) -> tuple[dict, ...]:
        """Elements of complex attribute ``name`` (emails, engagements, ...) the client sees.

        Address elements outside ``policy.visibilities`` are dropped; the ``visibility`` and
        ``titleSensitive`` keys are removed; a sensitive engagement title is removed unless
        the policy grants sensitive titles. When the policy lists only some sub-attributes
        (``emails.value``), the other keys are removed. Returns new dicts: the snapshot's
        elements are never modified.
        """
        policy = self.policy
        if not policy.may_read_complex(name):
            return ()
        elements = entry.complex.get(name, ())
        if not elements:
            return ()
        allowed = policy.visibilities if name in VISIBILITY_COMPLEX else None
        keep_keys: set[str] | None = None
        if policy.attributes is not None and name not in policy.attributes:
            prefix = f"{name}."
            keep_keys = {a[len(prefix):] for a in policy.attributes if a.startswith(prefix)}
        out: list[dict] = []
        for element in elements:
            if allowed is not None and element.get("visibility") not in allowed:
                continue
            shown = {k: v for k, v in element.items() if k not in _INTERNAL_KEYS}
            if name == "engagements" and element.get("titleSensitive") \
                    and not policy.sensitive_titles:
                shown.pop("title", None)
            if keep_keys is not None:
                shown = {k: v for k, v in shown.items() if k in keep_keys}
            out.append(shown)
        return tuple(out)

    def attrs(self, entry: Entry) -> dict[str, tuple]:
        """Every simple attribute of ``entry`` the client may read: {logical name: values}.

        Flattened complex sub-attributes (``emails.value``) are included under their logical
        names; empty attributes are left out.
        """
        out: dict[str, tuple] = {}
        for name, spec in ATTRIBUTES.items():
            if entry.kind not in spec.kinds:
                continue
            values = self.values(entry, name)
            if values:
                out[name] = values
        return out

    # ------------------------------------------------------------------ what was disclosed

    def subjects(self, entries: Iterable[Entry], *, members: bool = False,
                 managers: bool = False) -> list[str]:
        """Person ids disclosed by returning ``entries`` to this client.

        Every account entry discloses its person (even if ``personId`` itself is not
        returned: its name or username is). With ``managers=True`` (pass it when the
        ``manager`` value was returned: it names the manager), the manager's person too; with
        ``members=True``, group entries disclose the persons of their member accounts (pass
        it when member values were returned). Sorted, without duplicates.
        """
        found: set[str] = set()
        for entry in entries:
            if entry.kind == ACCOUNT:
                found.update(str(p) for p in entry.attrs.get("personId", ()))
                if managers:
                    for manager in self.values(entry, "manager"):
                        self._person_of(str(manager), found)
            elif members and entry.kind in GROUP_KINDS:
                for member in self.values(entry, "member"):
                    self._person_of(str(member), found)
        return sorted(found)

    def _person_of(self, account_id: str, found: set[str]) -> None:
        account = self._snap.get(account_id)
        if account is not None and account.kind == ACCOUNT:
            found.update(str(p) for p in account.attrs.get("personId", ()))

    def sensitive(self, entries: Iterable[Entry], requested_attrs: Iterable[str] | None
                  ) -> list[str]:
        """Which sensitive attributes the response disclosed: ``["cpr"]``,
        ``["sensitiveTitle"]``.

        ``requested_attrs`` are the logical directory attributes actually returned (for SCIM
        the attributes after ``attributes``/``excludedAttributes`` and ``returned`` rules; for
        LDAP the requested attribute list resolved to directory names); ``None`` means every
        attribute the policy may read was returned. Only values actually present and readable
        count.
        """
        policy = self.policy
        wanted = None if requested_attrs is None else set(requested_attrs)
        # every attribute the map marks cpr-sensitive, declared ones included
        cpr_attrs = [n for n, spec in ATTRIBUTES.items() if spec.sensitivity == "cpr"
                     and (wanted is None or n in wanted)] if policy.cpr else []
        check_cpr = bool(cpr_attrs)
        check_title = policy.sensitive_titles and (
            wanted is None or "title" in wanted or "engagements" in wanted
            or "engagements.title" in wanted)
        found: set[str] = set()
        if not (check_cpr or check_title):
            return []
        for entry in entries:
            if entry.kind != ACCOUNT:
                continue
            if check_cpr and any(entry.attrs.get(n) for n in cpr_attrs):
                found.add(CPR)
            if check_title:
                title_shown = wanted is None or "title" in wanted
                if title_shown and entry.attrs.get("title@SENSITIVE"):
                    found.add(SENSITIVE_TITLE)
                eng_shown = wanted is None or "engagements" in wanted \
                    or "engagements.title" in wanted
                if eng_shown and policy.may_read_complex("engagements") and any(
                        e.get("titleSensitive") and e.get("title")
                        for e in entry.complex.get("engagements", ())):
                    found.add(SENSITIVE_TITLE)
            if len(found) == 2:
                break
        return sorted(found)
