"""The LDAP v3 front end: ldaptor decodes requests, the directory answers every search.

ldaptor (``BaseLDAPServer``) is used as the request codec and op dispatcher only. Framing is
our own (a maximum PDU size, no quadratic buffering, garbage or a TLS hello on the plain port
closes the connection), and replies are encoded by :mod:`idm_facade.ldap.ber` so a search
answer is mostly cached bytes.

A search is planned against the DIT (:mod:`idm_facade.ldap.dit`): the base DN and scope become
a region filter per view (people, units, groups), the LDAP filter is translated per view
(:mod:`idm_facade.ldap.filters`), and ``snapshot.search`` answers with the client's policy
applied before anything is counted, limited or paged. Results are sent in chunks, giving the
reactor back between chunks, so one large search never stalls other clients.

Access (RFC 4513): simple binds of service accounts; an anonymous bind succeeds (§5.1.1) but
an anonymous search of anything but the rootDSE and the subschema entry is answered 50
insufficientAccessRights unless anonymous access is configured, so a misconfigured client sees
a clear error instead of an empty directory. Unauthenticated binds (DN without password) get
53 (§5.1.2), SASL 7, LDAPv2 2. Every bind and every search is recorded in the access log before
the result is sent; if the log cannot be written the operation fails with 80 and nothing is
disclosed.
"""

from __future__ import annotations

import heapq
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ldaptor.protocols import pureber, pureldap
from ldaptor.protocols.ldap.ldapserver import BaseLDAPServer
from twisted.internet import defer, protocol, threads
from twisted.internet.interfaces import IListeningPort
from twisted.protocols.policies import TimeoutMixin
from twisted.python.failure import Failure

from idm_facade.directory import filters as f
from idm_facade.directory import view as dview
from idm_facade.directory.policy import Policy
from idm_facade.ldap import ber, controls, dit
from idm_facade.ldap.filters import Translator, matches_static, to_text
from idm_facade.turnlog import turn_log

log = logging.getLogger(__name__)

SUCCESS, OPERATIONS_ERROR, PROTOCOL_ERROR, TIME_LIMIT, SIZE_LIMIT = 0, 1, 2, 3, 4
AUTH_METHOD_NOT_SUPPORTED, NO_SUCH_ATTRIBUTE, NO_SUCH_OBJECT, INVALID_DN = 7, 16, 32, 34
INAPPROPRIATE_AUTH, INVALID_CREDENTIALS, INSUFFICIENT_ACCESS = 48, 49, 50
UNAVAILABLE, UNWILLING, OTHER = 52, 53, 80

SCOPE_BASE, SCOPE_ONE, SCOPE_SUB = 0, 1, 2
_SCOPES = {0: "base", 1: "one", 2: "sub", 3: "children"}

#: Entries sent per reactor turn.
CHUNK = 200

#: Seconds between checks for a new directory snapshot whose DIT layout needs building.
LAYOUT_WATCH_INTERVAL = 0.2

#: Finished answers kept per snapshot (see :class:`_Answer`); the table is emptied when full.
ANSWER_CACHE_ENTRIES = 50_000
#: Answers larger than this many bytes are not kept.
ANSWER_CACHE_MAX_BYTES = 64 << 10

_WRITE_RESPONSES = {
    "LDAPAddRequest": ber.ADD_RESPONSE,
    "LDAPModifyRequest": ber.MODIFY_RESPONSE,
    "LDAPDelRequest": ber.DEL_RESPONSE,
    "LDAPModifyDNRequest": ber.MODDN_RESPONSE,
    "LDAPCompareRequest": ber.COMPARE_RESPONSE,
}


_AUDIT_TYPES: tuple[Any, Any] | None = None


def _audit_types() -> tuple[Any, Any]:
    global _AUDIT_TYPES
    if _AUDIT_TYPES is None:
        from idm_facade.audit import AccessRecord, AuditUnavailable

        _AUDIT_TYPES = (AccessRecord, AuditUnavailable)
    return _AUDIT_TYPES


@dataclass
class Settings:
    """The ``[ldap]`` limits."""

    max_pdu: int = 1 << 20
    idle_timeout: float = 900.0
    size_limit: int = 0
    time_limit: float = 60.0
    page_ttl: float = 300.0
    max_pages: int = 16

    @classmethod
    def from_config(cls, config: Any) -> Settings:
        section = config.section("ldap") if config is not None else {}
        return cls(
            max_pdu=int(section.get("max_pdu", cls.max_pdu)),
            idle_timeout=float(section.get("idle_timeout", cls.idle_timeout)),
            size_limit=int(section.get("size_limit", cls.size_limit)),
            time_limit=float(section.get("time_limit", cls.time_limit)),
            page_ttl=float(section.get("page_ttl", cls.page_ttl)),
            max_pages=int(section.get("max_paged_searches", cls.max_pages)),
        )


class LDAPFactory(protocol.ServerFactory):
    """Builds one :class:`LDAPConnection` per client connection."""

    def __init__(self, facade: Any, reactor: Any = None, tls: Any = None) -> None:
        self.facade = facade
        self.settings = Settings.from_config(facade.config)
        self.tls = tls
        if reactor is None:
            from twisted.internet import reactor as default_reactor

            reactor = default_reactor
        self.reactor = reactor
        from twisted.python.threadpool import ThreadPool

        #: Blocking calls (the access log waits for durability, binds verify hashes) run
        #: here; many waiting records share one commit.
        self.pool = ThreadPool(minthreads=2, maxthreads=int(
            facade.config.get("ldap", "threads", 32) if facade.config is not None else 32),
            name="ldap")
        self._pool_started = False
        #: The (snapshot, layout) pair requests are answered from, and its generation; see
        #: :meth:`current`. The first layout is built now, before any client connects.
        first = facade.directory.snapshot
        self._served: tuple[Any, dit.Layout] = (first, self.layout(first))
        self._served_gen = 0
        self._gen = 0
        self._building: Any = None
        self._watch: Any = None
        #: Finished answers of small searches of the served layout: {(request bytes after the
        #: message id, client): _Answer}; see :meth:`answers_for`.
        self._answers: dict[tuple, _Answer] = {}
        self._answers_layout: dit.Layout | None = None
        #: Access-log outcomes handed over by the log's writer thread, fired in the reactor
        #: by one call per burst (see :meth:`submit_record`).
        self._outcomes: deque = deque()
        self._outcomes_lock = threading.Lock()
        self._outcomes_scheduled = False
        #: The reactor's turn writer when the access log's commits are fast (else None).
        self._turns = turn_log(reactor, facade.audit)
        if hasattr(reactor, "callWhenRunning"):
            from twisted.internet.task import LoopingCall

            # Notice new snapshots without waiting for a request, so an idle server has the
            # new layout ready when the next client asks.
            self._watch = LoopingCall(self.current)
            self._watch.clock = reactor
            reactor.callWhenRunning(self._watch.start, LAYOUT_WATCH_INTERVAL, False)
            reactor.addSystemEventTrigger("before", "shutdown", self._stop_watch)

    def _stop_watch(self) -> None:
        if self._watch is not None and self._watch.running:
            self._watch.stop()

    def in_thread(self, fn: Callable, *args: Any) -> defer.Deferred:
        """Run a blocking call in the pool; a Deferred for its result."""
        if not self._pool_started:
            self._pool_started = True
            self.pool.start()
            self.reactor.addSystemEventTrigger("during", "shutdown", self.pool.stop)
        return threads.deferToThreadPool(self.reactor, self.pool, fn, *args)

    def submit_record(self, audit: Any, rec: Any, done: Callable[[Any], None]) -> None:
        """Append an access record without a pool thread; ``done`` is called in the reactor
        with None once the record is committed, or with the AuditUnavailable error.

        A log whose commits wait for the disk (``[audit] sync = "full"``) writes in its own
        thread and calls back there; outcomes are queued and fired by one ``callFromThread``
        per burst, so a group commit of N records wakes the reactor once, and the reactor keeps
        reading requests while the disk flushes. A log with fast commits (``sync = "normal"``
        on SQLite: tens of microseconds) is written by the reactor itself
        (:mod:`idm_facade.turnlog`): the records of one reactor turn are committed together
        right after the turn, which saves two thread switches per batch, and on two cores
        that is a fifth of the time of a cached search.
        """
        turns = self._turns if audit is self.facade.audit else turn_log(self.reactor, audit)
        if turns is None:
            audit.submit(rec, lambda error: self._outcome(done, error))
        else:
            turns.add(rec, done)

    def _outcome(self, done: Callable[[Any], None], error: Any) -> None:  # any thread
        self._outcomes.append((done, error))
        with self._outcomes_lock:
            if self._outcomes_scheduled:
                return
            self._outcomes_scheduled = True
        self.reactor.callFromThread(self._fire_outcomes)

    def _fire_outcomes(self) -> None:
        with self._outcomes_lock:
            self._outcomes_scheduled = False
        outcomes = self._outcomes
        while outcomes:
            done, error = outcomes.popleft()
            try:
                done(error)
            except Exception:
                log.exception("LDAP: failed answering after the access-log write")

    def buildProtocol(self, addr: Any) -> LDAPConnection:
        proto = LDAPConnection()
        proto.factory = self
        return proto

    def layout(self, snapshot: Any) -> dit.Layout:
        """The DIT of a snapshot (options read once per snapshot)."""
        options = snapshot.extra.get("ldap_options")
        if options is None:
            options = dit.options_from(self.facade.config, snapshot)
            snapshot.extra["ldap_options"] = options
        return dit.layout_for(snapshot, options)

    def current(self) -> tuple[Any, dit.Layout]:
        """The (snapshot, layout) pair to answer a request with.

        Building the layout of a snapshot (every DN of every entry) takes about 0.2 s at XL;
        inside the reactor that would stall every client after each directory refresh. So
        when the directory has a newer snapshot, its layout is built in the thread pool
        while requests keep using the previous pair, which stays consistent (a request never
        mixes one snapshot with another's DNs). The new pair replaces it in the reactor
        thread, in one assignment, once its layout is ready.
        """
        latest = self.facade.directory.snapshot
        served = self._served
        if served[0] is latest or self._building is latest:
            return served
        self._gen += 1
        gen = self._gen
        ready = latest.extra.get("ldap_layout")
        if ready is not None and ready.options == latest.extra.get("ldap_options"):
            self._swap(ready, latest, gen)  # another listener built it already
            return self._served
        self._building = latest
        d = self.in_thread(self.layout, latest)
        d.addCallback(self._swap, latest, gen)
        d.addErrback(self._layout_failed, latest)
        return served

    def answers_for(self, layout: dit.Layout) -> dict[tuple, _Answer]:
        """The answer cache of ``layout`` (emptied when the served layout changes, so an
        answer is never sent from another snapshot than the one that computed it)."""
        if self._answers_layout is not layout:
            self._answers = {}
            self._answers_layout = layout
        return self._answers

    def _swap(self, layout: dit.Layout, snapshot: Any, gen: int) -> None:
        if self._building is snapshot:
            self._building = None
        if gen > self._served_gen:  # never go back to an older snapshot
            self._served = (snapshot, layout)
            self._served_gen = gen

    def _layout_failed(self, failure: Any, snapshot: Any) -> None:
        if self._building is snapshot:
            self._building = None
        log.error("LDAP: building the DIT of a new snapshot failed; serving the previous "
                  "one: %s", failure.getTraceback())


@dataclass
class _Query:
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


@dataclass(frozen=True)
class _Answer:
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


class _Abort(Exception):
    def __init__(self, code: int, message: str, matched: str = "") -> None:
        super().__init__(message)
        self.code, self.message, self.matched = code, message, matched


class LDAPConnection(BaseLDAPServer, TimeoutMixin):
    """One client connection."""

    factory: LDAPFactory

    def __init__(self) -> None:
        super().__init__()
        self._buf = bytearray()
        self.client: Any = None
        self.tls_active = False
        self.closing = False
        self.active: dict[int, bool] = {}  # msgid -> still wanted (False once abandoned)
        self.pages: controls.PagedSearches | None = None
        self._held = False
        self._queued: list = []
        #: Answer-cache key of the request being dispatched from :meth:`dataReceived`.
        self._answer_key: tuple | None = None

    # ------------------------------------------------------------------ transport

    def connectionMade(self) -> None:
        super().connectionMade()
        settings = self.factory.settings
        self.setTimeout(settings.idle_timeout or None)
        self.pages = controls.PagedSearches(settings.page_ttl, settings.max_pages)
        if getattr(self, "_ldaps", False):
            self.tls_active = True

    def connectionLost(self, reason: Any = protocol.connectionDone) -> None:
        super().connectionLost(reason)
        self.setTimeout(None)
        for msgid in list(self.active):
            self.active[msgid] = False
        if self.pages is not None:
            self.pages.clear()

    def timeoutConnection(self) -> None:
        self._disconnect(UNAVAILABLE, "idle timeout")

    def _disconnect(self, code: int, message: str) -> None:
        """Send a notice of disconnection (RFC 4511 §4.4.1) and close."""
        if self.closing:
            return
        self.closing = True
        try:
            self.transport.write(ber.message(0, ber.extended_response(
                code, message, name=ber.NOTICE_OF_DISCONNECTION)))
        finally:
            self.transport.loseConnection()

    def dataReceived(self, data: bytes) -> None:
        if self.closing:
            return
        self.resetTimeout()
        self._buf += data
        buf = self._buf
        pos = 0
        max_pdu = self.factory.settings.max_pdu
        while not self.closing:
            try:
                header = ber.pdu_length(buf, pos)
            except ber.BERError:
                log.info("LDAP: closing connection from %s: not LDAP", self._peer())
                self._disconnect(PROTOCOL_ERROR, "malformed LDAP message")
                return
            if header is None:
                break
            head, size = header
            if size > max_pdu:
                self._disconnect(PROTOCOL_ERROR, f"message larger than {max_pdu} bytes")
                return
            end = pos + head + size
            if end > len(buf):
                break
            pdu = bytes(buf[pos:end])
            pos = end
            key = None
            if not self._held:
                key = self._cached_search(pdu, head)
                if key is True:
                    continue
            try:
                msg, used = pureber.berDecodeObject(self.berdecoder, pdu)
                if msg is None or used != len(pdu) or not isinstance(
                        msg, pureldap.LDAPMessage) or not isinstance(
                        msg.value, pureldap.LDAPProtocolRequest):
                    raise ValueError("not an LDAP request")
            except Exception as exc:  # ldaptor raises many kinds on bad input
                log.info("LDAP: undecodable message from %s: %s", self._peer(), exc)
                self._disconnect(PROTOCOL_ERROR, "undecodable LDAP message")
                return
            if self._held:
                self._queued.append(msg)
                continue
            self._answer_key = key
            try:
                self._dispatch_safely(msg)
            finally:
                self._answer_key = None
        del buf[:pos]

    def _cached_search(self, pdu: bytes, head: int) -> Any:
        """Answer a search request from the answer cache without decoding it.

        Returns True when answered, else the request's cache key (None when it is not a
        search request or its envelope is unusual; ldaptor then decodes it as usual).
        """
        pos = head
        if len(pdu) < pos + 3 or pdu[pos] != 0x02:
            return None
        n = pdu[pos + 1]
        if not 1 <= n <= 4 or len(pdu) < pos + 3 + n or pdu[pos + 2 + n] != 0x63:
            return None
        msgid = int.from_bytes(pdu[pos + 2:pos + 2 + n], "big", signed=True)
        if msgid <= 0:
            return None
        key = (pdu[pos + 2 + n:], self.client)
        _, layout = self.factory.current()
        answer = self.factory.answers_for(layout).get(key)
        if answer is None:
            return key
        self.active[msgid] = True
        self._send_answer(msgid, answer)
        return True

    def _send_answer(self, msgid: int, answer: _Answer) -> None:
        """Record a finished answer, then write it in one go."""
        def send() -> None:
            if self.connected and not self.closing:
                envelope = ber.integer(msgid)
                out = [ber.tlv(0x30, envelope + op) for op in answer.ops]
                out.append(ber.tlv(0x30, envelope + answer.done + answer.done_ctrls))
                self.active.pop(msgid, None)
                self._write_now(b"".join(out))

        self._after_audit(msgid, answer.query, answer.status, list(answer.subjects),
                          list(answer.sensitive), send)

    def _dispatch_safely(self, msg: Any) -> None:
        try:
            self.dispatch(msg)
        except Exception:
            log.exception("LDAP: failed handling %r", type(msg.value).__name__)
            self._disconnect(OTHER, "internal error")

    def hold(self) -> None:
        """Queue further requests until :meth:`release` (a bind is in progress: RFC 4511
        §4.2.1 says nothing else may run meanwhile)."""
        self._held = True

    def release(self) -> None:
        """Run the requests that arrived during a bind."""
        self._held = False
        while self._queued and not self._held and not self.closing:
            self._dispatch_safely(self._queued.pop(0))

    def _peer(self) -> str:
        try:
            peer = self.transport.getPeer()
            return f"{peer.host}:{peer.port}"
        except Exception:
            return "unknown"

    def _write_now(self, data: bytes) -> None:
        """Write to the socket at once when nothing is queued on a plain TCP transport.

        ``transport.write`` only buffers: the bytes leave on the next reactor turn, after
        registering for writability and before unregistering again (two epoll_ctl calls and
        a loop turn per answer). A small answer on an idle connection fits the socket buffer,
        so it is sent here; whatever is not accepted goes through the transport as usual.
        """
        t = self.transport
        sock = getattr(t, "socket", None)
        if (sock is not None and not self.tls_active and not getattr(t, "TLS", False)
                and not t.dataBuffer and not t._tempDataBuffer and not t.disconnecting):
            try:
                sent = sock.send(data)
            except BlockingIOError:
                sent = 0
            except OSError:
                sent = 0  # the transport notices the error itself
            if sent >= len(data):
                return
            data = data[sent:]
        t.write(data)

    def send(self, msgid: int, op: bytes, ctrls: bytes = b"") -> None:
        """Write one response message."""
        if self.connected and not self.closing:
            self.transport.write(ber.message(msgid, op, ctrls))

    # ------------------------------------------------------------------ dispatch

    def dispatch(self, msg: Any) -> None:
        op = msg.value
        name = type(op).__name__
        if name == "LDAPSearchRequest":
            self.search(msg.id, op, msg.controls)
        elif name == "LDAPBindRequest":
            self.bind(msg.id, op, msg.controls)
        elif name == "LDAPUnbindRequest":
            self.closing = True
            self.transport.loseConnection()
        elif name == "LDAPAbandonRequest":
            target = op.value
            if target in self.active:
                self.active[target] = False  # no reply to an abandon (RFC 4511 §4.11)
        elif isinstance(op, pureldap.LDAPExtendedRequest):
            self.extended(msg.id, op, msg.controls)
        elif name in _WRITE_RESPONSES:
            verb = "compare" if name == "LDAPCompareRequest" else "write"
            self.send(msg.id, ber.result(_WRITE_RESPONSES[name], UNWILLING,
                                         f"this directory is read-only ({verb} refused)"
                                         if verb == "write" else
                                         "compare is not supported; use a search"))
        else:
            self.send(msg.id, ber.extended_response(PROTOCOL_ERROR,
                                                    f"unsupported operation {name}"))

    # ------------------------------------------------------------------ audit

    def _audit(self, operation: str, query: str, status: str, subjects: list[str],
               sensitive: list[str], client: Any = None,
               done: Callable[[bool], None] | None = None) -> defer.Deferred | None:
        """Record one access (submitted to the log without blocking the reactor; the answer
        waits until the record is durable, and concurrent records share one commit); fires
        True, or False when the log is unavailable (the caller then answers 80 and
        discloses nothing)."""
        audit = self.factory.facade.audit
        if audit is None:
            if done is not None:
                done(True)
                return None
            return defer.succeed(True)
        record_cls, unavailable = _audit_types()
        who = client if client is not None else self.client
        name = who.name if who is not None else "anonymous"
        rec = record_cls(client=name, source=f"ldap:{self._peer()}", operation=operation,
                         query=query, status=status, subjects=subjects, sensitive=sensitive)

        def failed(failure: Any) -> bool:
            if failure.check(unavailable) is None:
                log.error("LDAP: access log error: %s", failure.getErrorMessage())
            else:
                log.error("LDAP: access log unavailable; refusing %s", operation)
            return False

        if hasattr(audit, "submit"):
            # Non-blocking: no pool thread waits for the commit.
            d = None
            if done is None:
                d = defer.Deferred()
                done = d.callback

            def outcome(error: Any) -> None:
                done(True if error is None else failed(Failure(error)))

            self.factory.submit_record(audit, rec, outcome)
            return d
        d = self.factory.in_thread(audit.record, rec)
        d.addCallbacks(lambda _: True, failed)
        if done is not None:
            d.addCallback(done)
            d.addErrback(lambda f: log.error("LDAP: %s", f.getTraceback()))
            return None
        return d

    # ------------------------------------------------------------------ bind

    def bind(self, msgid: int, op: Any, ctrls: Any) -> None:
        dn = op.dn.decode("utf-8", "replace") if isinstance(op.dn, bytes) else str(op.dn)
        query = f"dn={dn}"
        try:
            controls.parse(ctrls, frozenset())
        except controls.ControlError as exc:
            self.send(msgid, ber.result(ber.BIND_RESPONSE, exc.code, exc.message))
            return
        self.client = None  # a bind, even a failed one, starts from anonymous
        password = op.auth if isinstance(op.auth, bytes) else str(op.auth or "").encode()
        if op.version != 3:
            verdict = defer.succeed((PROTOCOL_ERROR, f"LDAPv{op.version} is not supported",
                                     None))
        elif op.sasl:
            verdict = defer.succeed((AUTH_METHOD_NOT_SUPPORTED,
                                     "SASL is not supported; use a simple bind", None))
        elif not dn and not password:
            verdict = defer.succeed((SUCCESS, "", None))  # anonymous (RFC 4513 §5.1.1)
        elif not password:
            verdict = defer.succeed((UNWILLING, "unauthenticated bind (DN without password) "
                                     "is not allowed", None))
        else:
            def check(client: Any) -> tuple[int, str, Any]:
                if client is None:
                    return INVALID_CREDENTIALS, "invalid credentials", None
                return SUCCESS, "", client

            verdict = self.factory.in_thread(self.factory.facade.clients.authenticate_bind,
                                             dn, password.decode("utf-8", "replace"))
            verdict.addCallback(check)
        self.hold()

        def audited(ok: bool, code: int, message: str, client: Any) -> None:
            if not ok:
                self.send(msgid, ber.result(ber.BIND_RESPONSE, OTHER, "access log unavailable"))
            else:
                if code == SUCCESS:
                    self.client = client
                self.send(msgid, ber.result(ber.BIND_RESPONSE, code, message))

        def decided(result: tuple[int, str, Any]) -> defer.Deferred | None:
            code, message, client = result
            status = "success" if code == SUCCESS else f"{code}"
            d = self._audit("bind", query, status, [], [], client=client)
            d.addCallback(audited, code, message, client)
            return d

        verdict.addCallback(decided)
        verdict.addErrback(self._internal_error, msgid, ber.BIND_RESPONSE)
        verdict.addBoth(lambda _: self.release())

    def _internal_error(self, failure: Any, msgid: int, tag: int) -> None:
        log.error("LDAP: internal error: %s", failure.getTraceback())
        self.send(msgid, ber.result(tag, OTHER, "internal error"))

    # ------------------------------------------------------------------ extended

    def extended(self, msgid: int, op: Any, ctrls: Any) -> None:
        oid = op.requestName if isinstance(op.requestName, bytes) else \
            str(op.requestName).encode()
        try:
            controls.parse(ctrls, frozenset())
        except controls.ControlError as exc:
            self.send(msgid, ber.extended_response(exc.code, exc.message))
            return
        if oid == dit.WHOAMI_OID:
            who = self.client.bind_dn if self.client is not None and self.client.bind_dn \
                else ""
            authz = f"dn:{who}" if who else ""
            self.send(msgid, ber.extended_response(SUCCESS, value=authz.encode()))
        elif oid == dit.STARTTLS_OID:
            if self.tls_active:
                self.send(msgid, ber.extended_response(OPERATIONS_ERROR, "TLS already active",
                                                       name=oid))
                return
            if self.factory.tls is None:
                self.send(msgid, ber.extended_response(UNAVAILABLE, "TLS is not configured",
                                                       name=oid))
                return
            self.send(msgid, ber.extended_response(SUCCESS, name=oid))
            self.transport.startTLS(self.factory.tls)
            self.tls_active = True
        elif oid == b"1.3.6.1.4.1.4203.1.11.1":
            self.send(msgid, ber.extended_response(UNWILLING,
                                                   "this directory is read-only"))
        else:
            self.send(msgid, ber.extended_response(
                PROTOCOL_ERROR, f"unsupported extended operation {oid.decode(errors='replace')}"))

    # ------------------------------------------------------------------ search

    def _done(self, msgid: int, code: int, message: str = "", matched: str = "",
              ctrls: bytes = b"") -> None:
        self.active.pop(msgid, None)
        self.send(msgid, ber.result(ber.SEARCH_DONE, code, message, matched),
                  ber.controls(ctrls) if ctrls else b"")

    def search(self, msgid: int, op: Any, ctrls: Any) -> None:
        try:
            parsed = controls.parse(ctrls, controls.SEARCH_CONTROLS)
        except controls.ControlError as exc:
            self._done(msgid, exc.code, exc.message)
            return
        base = op.baseObject.decode("utf-8", "replace") if isinstance(op.baseObject, bytes) \
            else str(op.baseObject)
        selection = dit.Selection.parse(op.attributes, bool(op.typesOnly))
        text = to_text(op.filter)
        query = _Query(msgid, base, op.scope, op.sizeLimit, op.timeLimit, bool(op.typesOnly),
                       op.filter, list(op.attributes), selection, text)
        self.active[msgid] = True
        try:
            self._search(query, parsed)
        except _Abort as exc:
            self._done(msgid, exc.code, exc.message, exc.matched)

    def _query_text(self, q: _Query) -> str:
        attrs = ",".join(a.decode("utf-8", "replace") if isinstance(a, bytes) else str(a)
                         for a in q.attributes)
        return f"base={q.base} scope={_SCOPES.get(q.scope, q.scope)} filter={q.text}" + (
            f" attrs={attrs}" if attrs else "")

    def _search(self, q: _Query, parsed: controls.SearchControls) -> None:
        snapshot, layout = self.factory.current()
        try:
            norm = dit.parse_dn(q.base)
        except dit.InvalidDN as exc:
            raise _Abort(INVALID_DN, f"invalid base DN: {exc}") from exc
        # The rootDSE and the subschema entry are readable by everyone.
        if not norm or norm == (((("cn", "subschema"),)),):
            if not norm and q.scope != SCOPE_BASE:
                raise _Abort(NO_SUCH_OBJECT, "search the naming context "
                             f"{layout.base} (the root DSE has base scope only)")
            dn, attrs = ("", dit.root_dse(layout)) if not norm else dit.subschema(layout)
            hit = q.scope != SCOPE_ONE and matches_static(q.filter, attrs)
            sel = q.selection
            if not norm and sel.user and not sel.names:
                sel = dit.Selection(True, True, sel.names, sel.types_only)

            def answer() -> None:
                if hit:
                    self.send(q.msgid, dit.encode_static(dn, attrs, sel))
                self._done(q.msgid, SUCCESS)

            self._after_audit(q.msgid, self._query_text(q), "success", [], [], answer)
            return
        policy = self._policy()
        if policy is None:
            message = ("anonymous access is disabled: bind as a service account "
                       f"(cn=<name>,ou=clients,{layout.base})")
            self._after_audit(q.msgid, self._query_text(q), f"{INSUFFICIENT_ACCESS}", [], [],
                              lambda: self._done(q.msgid, INSUFFICIENT_ACCESS, message))
            return
        # A paged search keeps the snapshot (and layout) of its first page, so a refresh
        # between pages neither breaks the search nor shifts its pages (RFC 2696 needs one
        # consistent result set); the snapshot lives as long as the cookie.
        signature = (q.base, q.scope, q.text, tuple(q.attributes), q.types_only,
                     (parsed.sort.attribute, parsed.sort.reverse) if parsed.sort else None)
        sort_ctrl = b""
        paged = parsed.paged
        state = None
        if paged is not None and paged.cookie:
            try:
                state = self.pages.take(paged.cookie, signature)  # type: ignore[union-attr]
            except controls.ControlError as exc:
                raise _Abort(exc.code, exc.message) from exc
            results = state.results
            statics = state.extra["statics"]
            snapshot, layout = state.extra["snapshot"], state.extra["layout"]
        else:
            statics, results, sort_ctrl = self._plan(q, parsed, snapshot, layout, policy, norm)
        total = len(statics) + len(results)
        done_ctrls = sort_ctrl
        code, message = SUCCESS, ""
        if paged is not None:
            offset = state.offset if state is not None else 0
            if paged.size == 0:
                page_statics, page = [], []
                cookie = b""
            else:
                combined_start = offset
                stop = offset + paged.size
                page_statics = statics[combined_start:stop]
                r_start = max(0, combined_start - len(statics))
                r_stop = max(0, stop - len(statics))
                page = results[r_start:r_stop]
                if stop < total:
                    state = state or controls.PageState(
                        signature, results, 0, 0.0, total,
                        {"statics": statics, "snapshot": snapshot, "layout": layout})
                    state.offset = stop
                    cookie = self.pages.keep(state)  # type: ignore[union-attr]
                else:
                    cookie = b""
            done_ctrls += controls.paged_response(total, cookie)
        else:
            limit = q.size_limit
            server_limit = self.factory.settings.size_limit
            if server_limit and (not limit or limit > server_limit):
                limit = server_limit
            page_statics, page = statics, results
            if limit and total > limit:
                page_statics = statics[:limit]
                page = results[:max(0, limit - len(statics))]
                code, message = SIZE_LIMIT, f"size limit of {limit} entries exceeded"
        # Record what is about to be disclosed, before anything is sent.
        subjects, sensitive = self._disclosed(page, policy, snapshot, q.selection)
        status = "success" if code == SUCCESS else f"{code}"
        deadline = None
        limit_s = q.time_limit or 0
        server_t = self.factory.settings.time_limit
        if server_t and (not limit_s or limit_s > server_t):
            limit_s = server_t
        if limit_s:
            deadline = time.monotonic() + limit_s

        key = self._answer_key
        if paged is None and key is not None and len(page_statics) + len(page) <= CHUNK:
            # Small and complete: encode it all now, keep it for the same request, and send
            # it in one write.
            ops = tuple([dit.encode_static(dn, attrs, q.selection) for dn, attrs in page_statics]
                        + [dit.encode_entry(layout, view, entry, policy, snapshot,
                                            q.selection).op for view, entry in page])
            finished = _Answer(ops, ber.result(ber.SEARCH_DONE, code, message),
                               ber.controls(done_ctrls) if done_ctrls else b"",
                               self._query_text(q), status, tuple(subjects), tuple(sensitive))
            if sum(map(len, ops)) <= ANSWER_CACHE_MAX_BYTES:
                answers = self.factory.answers_for(layout)
                if len(answers) >= ANSWER_CACHE_ENTRIES:
                    answers.clear()
                answers[key] = finished
            self._send_answer(q.msgid, finished)
            return

        def answer() -> None:
            for dn, attrs in page_statics:
                self.send(q.msgid, dit.encode_static(dn, attrs, q.selection))
            self._send_entries(q, page, 0, layout, policy, snapshot, code, message,
                               done_ctrls, deadline)

        self._after_audit(q.msgid, self._query_text(q), status, subjects, sensitive, answer)

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

        self._audit("search", query, status, subjects, sensitive, done=guarded)

    def _send_entries(self, q: _Query, page: list, start: int, layout: dit.Layout,
                      policy: Policy, snapshot: Any, code: int, message: str,
                      done_ctrls: bytes, deadline: float | None) -> None:
        """Send ``page[start:]`` a chunk per reactor turn, then SearchResultDone."""
        if not self.active.get(q.msgid) or not self.connected or self.closing:
            self.active.pop(q.msgid, None)  # abandoned or gone: no reply at all
            return
        stop = min(len(page), start + CHUNK)
        write = self.transport.write
        msgid = q.msgid
        selection = q.selection
        envelope = ber.integer(msgid)
        for i in range(start, stop):
            view, entry = page[i]
            op = dit.encode_entry(layout, view, entry, policy, snapshot, selection).op
            write(ber.tlv(0x30, envelope + op))
        if stop < len(page):
            if deadline is not None and time.monotonic() > deadline:
                self._done(msgid, TIME_LIMIT, "time limit exceeded", ctrls=done_ctrls)
                return
            self.resetTimeout()
            self.factory.reactor.callLater(0, self._send_entries, q, page, stop, layout,
                                           policy, snapshot, code, message, done_ctrls,
                                           deadline)
            return
        self._done(msgid, code, message, ctrls=done_ctrls)

    def _policy(self) -> Policy | None:
        if self.client is not None:
            return self.client.policy
        return self.factory.facade.clients.anonymous_policy()

    def _disclosed(self, page: list, policy: Policy, snapshot: Any,
                   selection: dit.Selection) -> tuple[list[str], list[str]]:
        if selection.types_only or not page:
            return ([], [])
        entries = [e for _, e in page]
        members = any(selection.wants(n) for n in ("member", "uniqueMember", "memberUid"))
        groups = [e for v, e in page if v == dit.GROUPS]
        subjects = set(dview.disclosed_subjects([e for e in entries if e.kind == "account"],
                                                policy))
        if members and groups:
            subjects.update(dview.disclosed_subjects(groups, policy, snapshot=snapshot,
                                                     members=True))
        sensitive = []
        if policy.cpr and selection.wants("idmCprNumber") and any(
                e.attrs.get("cpr") for e in entries if e.kind == "account"):
            sensitive.append("cpr")
        return sorted(subjects), sensitive

    # ------------------------------------------------------------------ planning

    def _plan(self, q: _Query, parsed: controls.SearchControls, snapshot: Any,
              layout: dit.Layout, policy: Policy, norm: dit.NormDN
              ) -> tuple[list, list, bytes]:
        """(static entries, [(view, entry)], sort response control) for a search."""
        n = len(layout.base_norm)
        if len(norm) < n or norm[len(norm) - n:] != layout.base_norm:
            raise _Abort(NO_SUCH_OBJECT, f"no such entry: {q.base} is outside {layout.base}")
        rel = norm[:len(norm) - n]
        scope = q.scope
        statics: list[tuple[str, list]] = []
        views: list[tuple[str, f.Filter]] = []
        containers = {(("ou", v),): v for v in (dit.PEOPLE, dit.UNITS, dit.GROUPS, dit.CLIENTS)}
        root_units = f.Eq("ancestor", layout.line_root) if layout.line_root else f.FALSE

        def add_static(which: str) -> None:
            dn, attrs = dit.static_entry(layout, which, self.client.name if self.client
                                         else None)
            if matches_static(q.filter, attrs):
                statics.append((dn, attrs))

        def client_entry() -> None:
            if self.client is not None and self.client.bind_dn:
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
                    views = [(dit.PEOPLE, f.TRUE), (dit.UNITS, root_units),
                             (dit.GROUPS, f.TRUE)]
                    client_entry()
        elif len(rel) == 1 and rel[0] in containers:
            which = containers[rel[0]]
            if scope in (SCOPE_BASE, SCOPE_SUB):
                add_static(which)
            if scope != SCOPE_BASE:
                if which == dit.CLIENTS:
                    client_entry()
                elif which == dit.UNITS:
                    region = root_units if scope == SCOPE_SUB else (
                        f.Eq("id", layout.line_root) if layout.line_root else f.FALSE)
                    views = [(dit.UNITS, region)]
                else:
                    views = [(which, f.TRUE)]
        else:
            top = rel[-1]
            found = layout.id_of_dn(norm)
            if top == (("ou", dit.CLIENTS),) and len(rel) == 2:
                own = self.client.bind_dn if self.client is not None else None
                if own and dit.parse_dn(own) == norm:
                    if scope != SCOPE_ONE:
                        add_static(dit.CLIENTS + ":self")
                else:
                    raise _Abort(NO_SUCH_OBJECT, f"no such entry: {q.base}",
                                 matched=f"ou={dit.CLIENTS},{layout.base}")
            elif found is None:
                raise _Abort(NO_SUCH_OBJECT, f"no such entry: {q.base}",
                             matched=self._matched(layout, rel))
            else:
                view, entry_id = found
                # The entry must be visible to this client, or it does not exist for it.
                if not snapshot.search(f.Eq("id", entry_id), kinds=dit.VIEW_KINDS[view],
                                       policy=policy):
                    raise _Abort(NO_SUCH_OBJECT, f"no such entry: {q.base}",
                                 matched=self._matched(layout, rel))
                if view == dit.UNITS:
                    region = {SCOPE_BASE: f.Eq("id", entry_id),
                              SCOPE_ONE: f.Eq("parent", entry_id),
                              SCOPE_SUB: f.Eq("ancestor", entry_id)}.get(scope, f.And((
                                  f.Eq("ancestor", entry_id), f.Not(f.Eq("id", entry_id)))))
                    views = [(dit.UNITS, f.And((root_units, region)))]
                elif scope != SCOPE_ONE:
                    views = [(view, f.Eq("id", entry_id))]
        results: list = []
        sort_ctrl = b""
        sort_attr: dict[str, str | None] = {}
        descending = False
        if parsed.sort is not None and views:
            descending = parsed.sort.reverse
            for view, _ in views:
                mapped = dit.directory_attrs(view, parsed.sort.attribute,
                                             layout.options.posix)
                sort_attr[view] = mapped[1][0] if mapped else None
            if not any(sort_attr.values()):
                if parsed.sort.critical:
                    raise _Abort(controls.UNAVAILABLE_CRITICAL,
                                 f"cannot sort by {parsed.sort.attribute}: unknown attribute")
                sort_ctrl = controls.sort_response(NO_SUCH_ATTRIBUTE, parsed.sort.attribute)
            else:
                sort_ctrl = controls.sort_response(SUCCESS)
        per_view = []
        for view, region in views:
            translated = Translator(layout, view, snapshot)(q.filter)
            if translated == f.FALSE or region == f.FALSE:
                continue
            parts = [p for p in (region, translated) if p != f.TRUE]
            flt = f.And(tuple(parts)) if len(parts) > 1 else parts[0] if parts else f.TRUE
            found_entries = snapshot.search(flt, kinds=dit.VIEW_KINDS[view], policy=policy,
                                            sort_by=sort_attr.get(view), descending=descending)
            per_view.append((view, found_entries))
        if len(per_view) == 1 or not sort_attr or not any(sort_attr.values()):
            for view, found_entries in per_view:
                results.extend((view, e) for e in found_entries)
        else:
            results = list(heapq.merge(
                *[[(view, e) for e in found] for view, found in per_view],
                key=_merge_key(sort_attr, policy), reverse=descending))
        return statics, results, sort_ctrl

    @staticmethod
    def _matched(layout: dit.Layout, rel: dit.NormDN) -> str:
        return layout.base


def _merge_key(sort_attr: dict[str, str | None], policy: Policy) -> Callable:
    from schemas.attributes import ATTRIBUTES, normalise

    def key(item: tuple[str, Any]) -> tuple:
        view, entry = item
        attr = sort_attr.get(view)
        if attr:
            for name in policy.physical(attr):
                values = entry.attrs.get(name)
                if values:
                    spec = ATTRIBUTES[attr]
                    return (0, str(normalise(spec.type, spec.case_exact, values[0])), entry.id)
        return (1, "", entry.id)

    return key


class _LDAPSFactory(LDAPFactory):
    def buildProtocol(self, addr: Any) -> LDAPConnection:
        proto = super().buildProtocol(addr)
        proto._ldaps = True  # type: ignore[attr-defined]
        return proto


def factories(reactor: Any, facade: Any, ldap: bool, ldaps: bool
              ) -> tuple[Any, LDAPFactory | None, LDAPFactory | None]:
    """The TLS context and the factories of the plain and the LDAPS listener (None when not
    wanted); shared by :func:`listen` and ``serve --workers``, which adopts listening sockets."""
    from idm_facade.ldap import tls

    context = tls.context_factory(facade.config)
    return (context, LDAPFactory(facade, reactor, context) if ldap else None,
            _LDAPSFactory(facade, reactor, context) if ldaps else None)


def listen(reactor: Any, facade: Any, host: str, port: int,
           ldaps_port: int | None = None) -> list[IListeningPort]:
    """Start the LDAP listener (and LDAPS when ``ldaps_port`` is given) on ``host``."""
    context, plain, secure = factories(reactor, facade, port is not None,
                                       ldaps_port is not None)
    ports = []
    if plain is not None:
        ports.append(reactor.listenTCP(port, plain, interface=host))
    if secure is not None:
        ports.append(reactor.listenSSL(ldaps_port, secure, context, interface=host))
    for p in ports:
        address = p.getHost()
        log.info("LDAP listening on %s:%s", address.host, address.port)
    return ports
