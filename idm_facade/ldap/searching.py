"""Answering LDAP searches on one connection: plan, record, then send.

The connection (:mod:`idm_facade.ldap.protocol`) frames messages and dispatches them; this
part does what a search request asks: check it, plan it (in the event loop for a point
look-up, else in a pool thread, time-limited), page or cut it, write its access record, and
send the answer, in one write when small or a chunk per event-loop turn, waiting while the
client does not read. What a search answers is decided in :mod:`idm_facade.ldap.search`,
which knows no sockets.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from twisted.python.failure import Failure

from idm_facade.directory.limits import Deadline, TooLong
from idm_facade.directory.policy import Policy
from idm_facade.directory.projection import is_projected
from idm_facade.directory.view import ClientView
from idm_facade.ldap import ber, controls, dit, subschema, syntax
from idm_facade.ldap.filters import cheap, matches_static, to_text
from idm_facade.ldap.search import (
    INSUFFICIENT_ACCESS,
    INVALID_DN,
    NO_SUCH_OBJECT,
    OTHER,
    PROTOCOL_ERROR,
    SCOPE_BASE,
    SCOPE_ONE,
    SUCCESS,
    TIME_LIMIT,
    UNWILLING,
    Abort,
    Answer,
    Cut,
    SearchRequest,
    check_shape,
    cut,
    deadline,
    disclosed,
    plan,
    planning_deadline,
    search_problem,
    signature,
)

if TYPE_CHECKING:
    from idm_facade.access.clients import Client
    from idm_facade.ldap.server import LDAPFactory

#: Entries sent per reactor turn. Point searches beside a pulling client wait for at most one
#: chunk: in one run of three rounds, 50 gave them a p99 of 1.5-2.7 ms against 2.8-3.6 ms
#: with 200, and the pull was no slower (BENCHMARKS.md, LDAP).
CHUNK = 50
#: Answers of at most this many entries are small: sent in one write (and kept for repeats
#: when complete).
SMALL = 200
#: Answers of more entries than this have what they disclose worked out in a pool thread,
#: and pulls (presence tests alone over a container) of a directory larger than this are
#: planned there: each costs the event loop about 6 ms per 1,000 entries, which every other
#: client would wait for. Below it the hop to a thread costs more than it saves.
LARGE = 1000
#: Answers larger than this many bytes are not kept (see
#: :meth:`~idm_facade.ldap.server.LDAPFactory.keep_answer` for the whole table's bound).
ANSWER_CACHE_MAX_BYTES = 64 << 10


class SearchHandling:
    """The search operation of :class:`~idm_facade.ldap.protocol.LDAPConnection`."""

    # Provided by LDAPConnection (the connection's state and its ways to send and record).
    factory: LDAPFactory
    transport: Any
    connected: int
    closing: bool
    client: Client | None
    unbound_by_revoke: bool
    active: dict[int, bool]
    pages: controls.PagedSearches | None
    _answer_key: tuple | None
    _out_paused: bool
    _waiting: list[Callable[[], None]]
    send: Callable[..., None]
    hold: Callable[[], None]
    release: Callable[[], None]
    resetTimeout: Callable[[], None]
    _audit: Callable[..., Any]
    _internal_error: Callable[[Any, int, int], None]
    _send_answer: Callable[[int, Answer], None]

    def _done(self, msgid: int, code: int, message: str = "", matched: str = "",
              ctrls: bytes = b"") -> None:
        self.active.pop(msgid, None)
        self.send(msgid, ber.result(ber.SEARCH_DONE, code, message, matched),
                  ber.controls(ctrls) if ctrls else b"")

    def handle_LDAPSearchRequest(self, msgid: int, op: Any, ctrls: Any) -> None:
        try:
            parsed = controls.parse(ctrls, controls.SEARCH_CONTROLS)
        except controls.ControlError as exc:
            self._done(msgid, exc.code, exc.message)
            return
        problem = search_problem(op)
        if problem:
            self._done(msgid, PROTOCOL_ERROR, problem)
            return
        base = op.baseObject.decode("utf-8", "replace") if isinstance(op.baseObject, bytes) \
            else str(op.baseObject)
        selection = dit.Selection.parse(op.attributes, bool(op.typesOnly))
        query = SearchRequest(msgid, base, op.scope, op.sizeLimit, op.timeLimit,
                              bool(op.typesOnly), op.filter, list(op.attributes), selection,
                              to_text(op.filter))
        self.active[msgid] = True
        try:
            self._search(query, parsed)
        except Abort as exc:
            self._done(msgid, exc.code, exc.message, exc.matched)

    def _search(self, q: SearchRequest, parsed: controls.SearchControls) -> None:
        check_shape(q, self.factory.limits)
        snapshot, layout = self.factory.current()
        try:
            norm = syntax.parse_dn(q.base)
        except syntax.InvalidDN as exc:
            raise Abort(INVALID_DN, f"invalid base DN: {exc}") from exc
        # The rootDSE and the subschema entry are readable by everyone.
        if not norm or norm == (((("cn", "subschema"),)),):
            self._search_static(q, layout, norm)
            return
        policy = self._policy()
        if policy is None:
            message = ("anonymous access is disabled: bind as a service account "
                       f"(cn=<name>,ou=clients,{layout.base})")
            if self.unbound_by_revoke:
                message = ("the bound identity is no longer valid (client revoked or rotated, "
                           "or the person no longer has a current engagement): bind again")
            self._after_audit(q.msgid, q.query_text(), f"{INSUFFICIENT_ACCESS}", [], [],
                              lambda: self._done(q.msgid, INSUFFICIENT_ACCESS, message))
            return
        # A paged search keeps the snapshot (and layout) of its first page, so a refresh
        # between pages neither breaks the search nor shifts its pages (RFC 2696 needs one
        # consistent result set); the snapshot lives as long as the cookie.
        signed = signature(q, parsed)
        if parsed.paged is not None and parsed.paged.cookie:
            try:
                state = self.pages.take(parsed.paged.cookie, signed)  # type: ignore[union-attr]
            except controls.ControlError as exc:
                raise Abort(exc.code, exc.message) from exc
            snapshot, layout = state.extra["snapshot"], state.extra["layout"]
            if state.extra.get("policy") != policy:
                raise Abort(UNWILLING, "the client's policy changed since the first page: "
                            "start the paged search again")
            self._planned(q, parsed, signed, snapshot, layout, policy, state,
                          (state.extra["statics"], state.results, b""))
            return
        ends = planning_deadline(q, self.factory.settings.time_limit, self.factory.limits)
        client = self.client
        # A search of the naming context or a container (not of one entry below it) with
        # presence tests alone is a pull: planned in the thread pool like other long ones.
        whole = len(norm) <= len(layout.base_norm) + 1 and q.scope != SCOPE_BASE and \
            len(layout.account_dn) + len(layout.group_dn) + len(layout.unit_dn) > LARGE
        if cheap(q.filter, whole) and is_projected(snapshot, policy):
            result = self._plan(q, parsed, snapshot, layout, policy, norm, client, ends)
            self._planned(q, parsed, signed, snapshot, layout, policy, None, result)
            return
        # Anything that may take long (substrings, negations, many terms, a restricted
        # client's first projection) is planned in a pool thread, so one search never holds
        # up the event loop; the connection's later requests wait, as during a bind.
        self.hold()
        planning = self.factory.in_thread(self._plan, q, parsed, snapshot, layout, policy,
                                          norm, client, ends)
        planning.addCallback(lambda result: self._planned(q, parsed, signed, snapshot, layout,
                                                          policy, None, result))
        planning.addErrback(self._plan_failed, q.msgid)
        planning.addBoth(lambda _: self.release())

    @staticmethod
    def _plan(q: SearchRequest, parsed: controls.SearchControls, snapshot: Any,
              layout: dit.Layout, policy: Policy, norm: syntax.NormDN, client: Client | None,
              ends: Deadline) -> tuple[list, list, bytes]:
        """Plan one search (in the event loop or a pool thread): time-limited."""
        try:
            return plan(q, parsed, ClientView.of(snapshot, policy), layout, norm, client, ends)
        except TooLong as exc:
            raise Abort(TIME_LIMIT, str(exc)) from None

    def _plan_failed(self, failure: Failure, msgid: int) -> None:
        if failure.check(Abort):
            exc = failure.value
            self._done(msgid, exc.code, exc.message, exc.matched)
        else:
            self._internal_error(failure, msgid, ber.SEARCH_DONE)

    def _planned(self, q: SearchRequest, parsed: controls.SearchControls, signed: Any,
                 snapshot: Any, layout: dit.Layout, policy: Policy, state: Any,
                 result: tuple[list, list, bytes]) -> None:
        """Cut the page of a planned search and answer it."""
        if not self.active.get(q.msgid) or not self.connected:
            self.active.pop(q.msgid, None)  # abandoned or gone while planning
            return
        statics, results, sort_ctrl = result
        page = cut(q, parsed, statics, results, sort_ctrl, state,
                   self.factory.settings.size_limit,
                   lambda: controls.PageState(signed, results, 0, 0.0,
                                              len(statics) + len(results),
                                              {"statics": statics, "snapshot": snapshot,
                                               "layout": layout, "policy": policy}),
                   self.pages.keep)  # type: ignore[union-attr]
        self._answer(q, page, parsed.paged is None, ClientView.of(snapshot, policy), layout)

    def _search_static(self, q: SearchRequest, layout: dit.Layout, norm: syntax.NormDN) -> None:
        """Answer a search of the rootDSE or the subschema entry (readable by everyone)."""
        if not norm and q.scope != SCOPE_BASE:
            raise Abort(NO_SUCH_OBJECT, "search the naming context "
                        f"{layout.base} (the root DSE has base scope only)")
        dn, attrs = ("", subschema.root_dse(layout)) if not norm else subschema.subschema(layout)
        hit = q.scope != SCOPE_ONE and matches_static(q.filter, attrs)
        sel = q.selection
        if not norm and sel.user and not sel.names:
            sel = dit.Selection(True, True, sel.names, sel.types_only)

        def answer() -> None:
            if hit:
                self.send(q.msgid, dit.encode_static(dn, attrs, sel))
            self._done(q.msgid, SUCCESS)

        self._after_audit(q.msgid, q.query_text(), "success", [], [], answer)

    def _answer(self, q: SearchRequest, page: Cut, cacheable: bool, seen: ClientView,
                layout: dit.Layout) -> None:
        """Record what ``page`` discloses, then send it: in one write (and kept for the same
        request) when it is small and complete, else a chunk per reactor turn."""
        status = "success" if page.code == SUCCESS else f"{page.code}"
        key = self._answer_key
        if len(page.page) > LARGE:
            # What a large answer discloses (every person, and each one's manager) takes about
            # 6 microseconds an entry: 30 ms for a full pull of 5,000 people, which the event
            # loop would owe every other client. It is worked out in a pool thread, and the
            # connection's later requests wait, as while planning.
            self.hold()
            found = self.factory.in_thread(disclosed, page.page, seen, q.selection)
            found.addCallback(lambda pair: self._answer_in_chunks(q, page, status, seen,
                                                                  layout, *pair))
            found.addErrback(self._internal_error, q.msgid, ber.SEARCH_DONE)
            found.addBoth(lambda _: self.release())
            return
        subjects, sensitive = disclosed(page.page, seen, q.selection)
        if cacheable and key is not None and len(page.statics) + len(page.page) <= SMALL:
            ops = tuple([dit.encode_static(dn, attrs, q.selection)
                         for dn, attrs in page.statics]
                        + [dit.encode_entry(layout, view, entry, seen, q.selection).op
                           for view, entry in page.page])
            finished = Answer(ops, ber.result(ber.SEARCH_DONE, page.code, page.message),
                              ber.controls(page.done_ctrls) if page.done_ctrls else b"",
                              q.query_text(), status, tuple(subjects), tuple(sensitive))
            size = sum(map(len, ops))
            if size <= ANSWER_CACHE_MAX_BYTES:
                self.factory.keep_answer(layout, key, finished, size)
            self._send_answer(q.msgid, finished)
            return
        self._answer_in_chunks(q, page, status, seen, layout, subjects, sensitive)

    def _answer_in_chunks(self, q: SearchRequest, page: Cut, status: str, seen: ClientView,
                          layout: dit.Layout, subjects: list[str],
                          sensitive: list[str]) -> None:
        """Record the page, then send its entries a chunk per reactor turn."""
        ends = deadline(q, self.factory.settings.time_limit)

        def answer() -> None:
            for dn, attrs in page.statics:
                self.send(q.msgid, dit.encode_static(dn, attrs, q.selection))
            self._send_entries(q, page.page, 0, layout, seen, page.code,
                               page.message, page.done_ctrls, ends)

        self._after_audit(q.msgid, q.query_text(), status, subjects, sensitive, answer)

    def _after_audit(self, msgid: int, query: str, status: str, subjects: list[str],
                     sensitive: list[str], answer: Callable[[], None]) -> None:
        """Record the search, then answer; 80 and nothing else when the log fails."""
        def recorded(ok: bool) -> None:
            if not self.active.get(msgid):
                self.active.pop(msgid, None)  # abandoned meanwhile: no reply
                return
            if ok:
                answer()
            else:
                self._done(msgid, OTHER, "access log unavailable")

        def guarded(ok: bool) -> None:
            try:
                recorded(ok)
            except Exception:
                self._internal_error(Failure(), msgid, ber.SEARCH_DONE)

        self._audit("search", query, status, subjects, sensitive, done=guarded, msgid=msgid)

    def _send_entries(self, q: SearchRequest, page: list, start: int, layout: dit.Layout,
                      seen: ClientView, code: int, message: str,
                      done_ctrls: bytes, deadline: float | None) -> None:
        """Send ``page[start:]`` a chunk per reactor turn, then SearchResultDone."""
        if not self.active.get(q.msgid) or not self.connected or self.closing:
            self.active.pop(q.msgid, None)  # abandoned or gone: no reply at all
            return
        if self._out_paused:  # the client is not reading: go on when it does
            self._waiting.append(lambda: self._send_entries(
                q, page, start, layout, seen, code, message, done_ctrls, deadline))
            return
        stop = min(len(page), start + CHUNK)
        write = self.transport.write
        msgid = q.msgid
        selection = q.selection
        envelope = ber.integer(msgid)
        for i in range(start, stop):
            view, entry = page[i]
            op = dit.encode_entry(layout, view, entry, seen, selection).op
            write(ber.tlv(0x30, envelope + op))
        if stop < len(page):
            if deadline is not None and time.monotonic() > deadline:
                self._done(msgid, TIME_LIMIT, "time limit exceeded", ctrls=done_ctrls)
                return
            self.resetTimeout()
            self.factory.reactor.callLater(0, self._send_entries, q, page, stop, layout,
                                           seen, code, message, done_ctrls, deadline)
            return
        self._done(msgid, code, message, ctrls=done_ctrls)

    def _policy(self) -> Policy | None:
        if self.client is not None:
            return self.client.policy
        if self.unbound_by_revoke:
            return None
        return self.factory.facade.clients.anonymous_policy()
