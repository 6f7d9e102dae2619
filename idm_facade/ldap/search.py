"""An LDAP search, apart from the connection: plan it, cut the page, apply the limits.

Nothing here touches a socket, the reactor or the access log: given a decoded request, the
snapshot and DIT layout it is answered from, and the client's policy, these functions say
which entries answer it, which of them go out on this page, with which result code, and whose
data that discloses. :mod:`idm_facade.ldap.protocol` does the talking; keeping the two apart
lets the planning be tested without a server and read without the framing.

Planning: the base DN and scope become a *region* filter per view (people, units, groups),
the LDAP filter is translated per view (:mod:`idm_facade.ldap.filters`), and
``snapshot.search`` answers with the client's policy applied before anything is counted,
limited or paged. Fixed entries (the base, the containers, the client's own entry) are
matched here against their static attributes.
"""

from __future__ import annotations

import heapq
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ldaptor.protocols import pureldap

from idm_facade.access.clients import Client
from idm_facade.directory import filters as f
from idm_facade.directory.limits import NO_DEADLINE, Deadline, Limits, TooComplex
from idm_facade.directory.view import ClientView
from idm_facade.ldap import controls, dit, filtershape, syntax
from idm_facade.ldap.filters import shape
from schemas.attributes import ATTRIBUTES, normalise

SUCCESS, OPERATIONS_ERROR, PROTOCOL_ERROR, TIME_LIMIT, SIZE_LIMIT = 0, 1, 2, 3, 4
ADMIN_LIMIT_EXCEEDED, CONFIDENTIALITY_REQUIRED = 11, 13
AUTH_METHOD_NOT_SUPPORTED, NO_SUCH_ATTRIBUTE, NO_SUCH_OBJECT, INVALID_DN = 7, 16, 32, 34
INAPPROPRIATE_AUTH, INVALID_CREDENTIALS, INSUFFICIENT_ACCESS = 48, 49, 50
BUSY, UNAVAILABLE, UNWILLING, OTHER = 51, 52, 53, 80

SCOPE_BASE, SCOPE_ONE, SCOPE_SUB = 0, 1, 2
_SCOPES = {0: "base", 1: "one", 2: "sub", 3: "children"}


@dataclass
class SearchRequest:
    """One search request, decoded."""

    msgid: int
    base: str
    scope: int
    size_limit: int
    time_limit: int
    types_only: bool
    filter: Any
    attributes: list
    selection: dit.Selection
    text: str

    def query_text(self) -> str:
        """The request as the access log records it."""
        attrs = ",".join(a.decode("utf-8", "replace") if isinstance(a, bytes) else str(a)
                         for a in self.attributes)
        return (f"base={self.base} scope={_SCOPES.get(self.scope, self.scope)} "
                f"filter={self.text}" + (f" attrs={attrs}" if attrs else ""))


@dataclass(frozen=True)
class Answer:
    """A finished small search: its encoded response ops (without message envelopes) and its
    access record's fields.

    Kept per (snapshot, exact request bytes after the message id, client): the request bytes
    hold base, scope, limits, typesOnly, filter, attributes and controls, the client fixes
    policy and its own entry, and the snapshot fixes the data, so the same request gets the
    same answer. A repeated request then skips ldaptor's decoder, filter translation, the
    planner and the disclosure walk; it still gets its own access record before anything is
    sent.
    """

    ops: tuple[bytes, ...]
    done: bytes
    done_ctrls: bytes
    query: str
    status: str
    subjects: tuple[str, ...]
    sensitive: tuple[str, ...]


class Abort(Exception):
    """The search ends with this result code and message (and matchedDN) at once."""

    def __init__(self, code: int, message: str, matched: str = "") -> None:
        super().__init__(message)
        self.code, self.message, self.matched = code, message, matched


@dataclass
class Cut:
    """What one response sends: the fixed and directory entries of the page, and the
    SearchResultDone's code, message and controls."""

    statics: list
    page: list
    code: int
    message: str
    done_ctrls: bytes


def signature(q: SearchRequest, parsed: controls.SearchControls) -> tuple:
    """What a paging cookie is bound to: the same search, page after page (RFC 2696)."""
    return (q.base, q.scope, q.text, tuple(q.attributes), q.types_only,
            (parsed.sort.attribute, parsed.sort.reverse) if parsed.sort else None)


def cut(q: SearchRequest, parsed: controls.SearchControls, statics: list, results: list,
        done_ctrls: bytes, state: controls.PageState | None, server_size_limit: int,
        new_state: Callable[[], controls.PageState],
        keep: Callable[[controls.PageState], bytes]) -> Cut:
    """The page this response sends, paged (RFC 2696) or limited by sizeLimit.

    ``state``: the paging state the request's cookie named (None on a first page). When
    more pages follow, the state (``new_state()`` on a first page) is advanced and handed
    to ``keep``, which stores it and returns its cookie."""
    total = len(statics) + len(results)
    paged = parsed.paged
    if paged is None:
        limit = q.size_limit
        if server_size_limit and (not limit or limit > server_size_limit):
            limit = server_size_limit
        if limit and total > limit:
            return Cut(statics[:limit], results[:max(0, limit - len(statics))], SIZE_LIMIT,
                       f"size limit of {limit} entries exceeded", done_ctrls)
        return Cut(statics, results, SUCCESS, "", done_ctrls)
    if paged.size == 0:
        return Cut([], [], SUCCESS, "", done_ctrls + controls.paged_response(total, b""))
    offset = state.offset if state is not None else 0
    stop = offset + paged.size
    page_statics = statics[offset:stop]
    page = results[max(0, offset - len(statics)):max(0, stop - len(statics))]
    cookie = b""
    if stop < total:
        state = state or new_state()
        state.offset = stop
        cookie = keep(state)
    return Cut(page_statics, page, SUCCESS, "",
               done_ctrls + controls.paged_response(total, cookie))


def deadline(q: SearchRequest, server_time_limit: float) -> float | None:
    """The monotonic time after which sending stops with timeLimitExceeded (or None)."""
    limit: float = q.time_limit or 0
    if server_time_limit and (not limit or limit > server_time_limit):
        limit = server_time_limit
    return time.monotonic() + limit if limit else None


def planning_deadline(q: SearchRequest, server_time_limit: float, limits: Limits) -> Deadline:
    """When planning must have finished: the search's time limit, the server's, and
    ``[limits] search_seconds``, whichever comes first."""
    ends = deadline(q, server_time_limit)
    planned = limits.deadline().at
    if ends is None or (planned is not None and planned < ends):
        ends = planned
    return Deadline(ends)


def check_shape(q: SearchRequest, limits: Limits) -> None:
    """Refuse a filter over ``[limits]`` with adminLimitExceeded, before it is translated."""
    try:
        limits.check(*shape(q.filter))
    except TooComplex as exc:
        raise Abort(ADMIN_LIMIT_EXCEEDED, str(exc)) from None


def disclosed(page: list, seen: ClientView,
              selection: dit.Selection) -> tuple[list[str], list[str]]:
    """(persons, sensitive attributes) that sending ``page`` discloses, for the record."""
    if selection.types_only or not page:
        return ([], [])
    entries = [e for _, e in page]
    members = any(selection.wants(n) for n in ("member", "uniqueMember", "memberUid"))
    groups = [e for v, e in page if v == dit.GROUPS]
    subjects = set(seen.subjects([e for e in entries if e.kind == "account"],
                                 managers=selection.wants("manager")))
    if members and groups:
        subjects.update(seen.subjects(groups, members=True))
    return sorted(subjects), seen.sensitive(entries, _returned(selection))


def _returned(selection: dit.Selection) -> list[str] | None:
    """The directory attributes of people a selection returns (None: all user attributes)."""
    if selection.user:
        return None
    names: list[str] = []
    for name in selection.names:
        mapped = dit.directory_attrs(dit.PEOPLE, name, True)
        if mapped:
            names.extend(mapped[1])
    return names


# ---------------------------------------------------------------------------- planning


def plan(q: SearchRequest, parsed: controls.SearchControls, seen: ClientView,
         layout: dit.Layout, norm: syntax.NormDN, client: Client | None,
         ends: Deadline = NO_DEADLINE) -> tuple[list, list, bytes]:
    """(static entries, [(view, entry)], sort response control) for a search of ``norm``
    (the parsed base DN) by ``client`` (None when anonymous) reading through ``seen``;
    past ``ends`` it stops with :class:`~idm_facade.directory.limits.TooLong`."""
    shaped = filtershape.shape_of(q.filter)
    statics, views = _regions(q, seen, layout, norm, client, shaped)
    sort_attr: dict[str, str | None] = {}
    sort_ctrl = b""
    descending = False
    if parsed.sort is not None and views:
        descending = parsed.sort.reverse
        for view, _ in views:
            mapped = dit.directory_attrs(view, parsed.sort.attribute, layout.options.posix)
            sort_attr[view] = mapped[1][0] if mapped else None
        if not any(sort_attr.values()):
            if parsed.sort.critical:
                raise Abort(controls.UNAVAILABLE_CRITICAL,
                            f"cannot sort by {parsed.sort.attribute}: unknown attribute")
            sort_ctrl = controls.sort_response(NO_SUCH_ATTRIBUTE, parsed.sort.attribute)
        else:
            sort_ctrl = controls.sort_response(SUCCESS)
    per_view = []
    for view, region in views:
        translated = filtershape.translate(q.filter, layout, view, seen, shaped)
        if translated == f.FALSE or region == f.FALSE:
            continue
        parts = [p for p in (region, translated) if p != f.TRUE]
        flt = f.And(tuple(parts)) if len(parts) > 1 else parts[0] if parts else f.TRUE
        found_entries = seen.search(flt, kinds=dit.VIEW_KINDS[view],
                                    sort_by=sort_attr.get(view), descending=descending,
                                    deadline=ends)
        per_view.append((view, found_entries))
    results: list = []
    if len(per_view) == 1 or not any(sort_attr.values()):
        for view, found_entries in per_view:
            results.extend((view, e) for e in found_entries)
    else:
        results = list(heapq.merge(
            *[[(view, e) for e in found] for view, found in per_view],
            key=_merge_key(sort_attr, seen), reverse=descending))
    return statics, results, sort_ctrl


def _regions(q: SearchRequest, seen: ClientView, layout: dit.Layout, norm: syntax.NormDN,
             client: Client | None, shaped: tuple[tuple, tuple] | None
             ) -> tuple[list, list[tuple[str, f.Filter]]]:
    """The fixed entries that match, and the (view, region filter) pairs to search, for the
    base DN and scope. One branch per kind of base: the naming context, a container
    (``ou=people`` ...), or an entry below one; the branches are the DIT's shape, so the
    function stays whole (a reason for its length)."""
    n = len(layout.base_norm)
    if len(norm) < n or norm[len(norm) - n:] != layout.base_norm:
        raise Abort(NO_SUCH_OBJECT, f"no such entry: {q.base} is outside {layout.base}")
    rel = norm[:len(norm) - n]
    scope = q.scope
    statics: list[tuple[str, list]] = []
    views: list[tuple[str, f.Filter]] = []
    containers = {(("ou", v),): v for v in (dit.PEOPLE, dit.UNITS, dit.GROUPS, dit.CLIENTS)}
    root_units = f.Eq("ancestor", layout.line_root) if layout.line_root else f.FALSE

    def add_static(which: str) -> None:
        owner = client.name if client else None
        dn, attrs = dit.static_entry(layout, which, owner)
        if filtershape.static_match(q.filter, which, attrs, layout, shaped, owner):
            statics.append((dn, attrs))

    def client_entry() -> None:
        if client is not None and client.bind_dn:
            add_static(dit.CLIENTS + ":self")

    if not rel:
        if scope == SCOPE_BASE:
            add_static("base")
        else:
            if scope == SCOPE_SUB:
                add_static("base")
            for v in (dit.PEOPLE, dit.UNITS, dit.GROUPS, dit.CLIENTS):
                add_static(v)
            if scope != SCOPE_ONE:
                views = [(dit.PEOPLE, f.TRUE), (dit.UNITS, root_units), (dit.GROUPS, f.TRUE)]
                client_entry()
    elif len(rel) == 1 and rel[0] in containers:
        which = containers[rel[0]]
        if scope in (SCOPE_BASE, SCOPE_SUB):
            add_static(which)
        if scope != SCOPE_BASE:
            if which == dit.CLIENTS:
                client_entry()
            elif which == dit.UNITS:
                region: f.Filter = root_units if scope == SCOPE_SUB else (
                    f.Eq("id", layout.line_root) if layout.line_root else f.FALSE)
                views = [(dit.UNITS, region)]
            else:
                views = [(which, f.TRUE)]
    else:
        top = rel[-1]
        found = layout.id_of_dn(norm)
        if top == (("ou", dit.CLIENTS),) and len(rel) == 2:
            own = client.bind_dn if client is not None else None
            if own and syntax.parse_dn(own) == norm:
                if scope != SCOPE_ONE:
                    add_static(dit.CLIENTS + ":self")
            else:
                raise Abort(NO_SUCH_OBJECT, f"no such entry: {q.base}",
                            matched=f"ou={dit.CLIENTS},{layout.base}")
        elif found is None:
            raise Abort(NO_SUCH_OBJECT, f"no such entry: {q.base}", matched=layout.base)
        else:
            view, entry_id = found
            # The entry must be visible to this client, or it does not exist for it.
            if not seen.search(f.Eq("id", entry_id), kinds=dit.VIEW_KINDS[view]):
                raise Abort(NO_SUCH_OBJECT, f"no such entry: {q.base}", matched=layout.base)
            if view == dit.UNITS:
                by_scope: dict[int, f.Filter] = {SCOPE_BASE: f.Eq("id", entry_id),
                                                 SCOPE_ONE: f.Eq("parent", entry_id),
                                                 SCOPE_SUB: f.Eq("ancestor", entry_id)}
                region = by_scope.get(scope, f.And((  # 3: children (subordinates only)
                    f.Eq("ancestor", entry_id), f.Not(f.Eq("id", entry_id)))))
                views = [(dit.UNITS, f.And((root_units, region)))]
            elif scope != SCOPE_ONE:
                views = [(view, f.Eq("id", entry_id))]
    return statics, views


def _merge_key(sort_attr: dict[str, str | None], seen: ClientView) -> Callable:
    def key(item: tuple[str, Any]) -> tuple:
        view, entry = item
        attr = sort_attr.get(view)
        if attr:
            values = seen.values(entry, attr)
            if values:
                spec = ATTRIBUTES[attr]
                return (0, str(normalise(spec.type, spec.case_exact, values[0])), entry.id)
        return (1, "", entry.id)

    return key


def search_problem(op: Any) -> str | None:
    """What makes a decoded SearchRequest malformed (RFC 4511 §4.5.1), or None: ldaptor
    accepts any integer for the scope and the limits, and empty substrings."""
    if op.scope not in (0, 1, 2, 3):
        return f"scope {op.scope} is not baseObject (0), singleLevel (1), wholeSubtree (2) " \
               "or subordinateSubtree (3)"
    if op.sizeLimit < 0 or op.timeLimit < 0:
        return "sizeLimit and timeLimit must be 0 or more"
    if op.derefAliases not in (0, 1, 2, 3):
        return f"derefAliases {op.derefAliases} is not 0..3"
    stack = [op.filter]
    while stack:
        node = stack.pop()
        if isinstance(node, (pureldap.LDAPFilter_and, pureldap.LDAPFilter_or)):
            stack.extend(node.data)
        elif isinstance(node, pureldap.LDAPFilter_not):
            stack.append(node.value)
        elif isinstance(node, pureldap.LDAPFilter_substrings):
            if not node.substrings:
                return "a substring filter needs at least one part"
            for part in node.substrings:
                if not getattr(part, "value", b""):
                    return "a substring filter's parts must not be empty"
    return None
