"""One LDAP client connection: framing, dispatch, binds, extended operations, and the
conversation of a search (record what is disclosed, then send it).

ldaptor (``BaseLDAPServer``) is used as the request codec only. Framing is our own (a
maximum PDU size, no quadratic buffering, garbage or a TLS hello on the plain port closes the
connection); requests go to ``handle_<ldaptor request class>`` methods, as in ldaptor's own
server; replies are encoded by :mod:`idm_facade.ldap.ber`, so a search answer is mostly
cached bytes. What a search answers is worked out by :mod:`idm_facade.ldap.search`, which
knows nothing of sockets; results are sent in chunks, giving the reactor back between
chunks, so one large search never stalls other clients.

Access (RFC 4513): simple binds of service accounts; an anonymous bind succeeds (§5.1.1) but
an anonymous search of anything but the rootDSE and the subschema entry is answered 50
insufficientAccessRights unless anonymous access is configured, so a misconfigured client sees
a clear error instead of an empty directory. Unauthenticated binds (DN without password) get
53 (§5.1.2), SASL 7, LDAPv2 2. Every bind and every search is recorded in the access log before
the result is sent; if the log cannot be written the operation fails with 80 and nothing is
disclosed.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from time import monotonic
from typing import TYPE_CHECKING, Any

from ldaptor.protocols import pureber, pureldap
from ldaptor.protocols.ldap.ldapserver import BaseLDAPServer
from twisted.internet import defer, protocol
from twisted.protocols.policies import TimeoutMixin
from twisted.python.failure import Failure

from idm_facade import metrics, requestlog
from idm_facade.access.audit import AccessRecord, AuditUnavailable
from idm_facade.access.audit.record import source as audit_source
from idm_facade.access.clients import PERSON, Client
from idm_facade.ldap import ber, controls, decoding, subschema
from idm_facade.ldap.persons import Verdict
from idm_facade.ldap.search import (
    AUTH_METHOD_NOT_SUPPORTED,
    BUSY,
    CONFIDENTIALITY_REQUIRED,
    INVALID_CREDENTIALS,
    OPERATIONS_ERROR,
    OTHER,
    PROTOCOL_ERROR,
    SUCCESS,
    UNAVAILABLE,
    UNWILLING,
    Answer,
)
from idm_facade.ldap.searching import SearchHandling
from idm_facade.ldap.transport import write_now

if TYPE_CHECKING:
    from idm_facade.ldap.server import LDAPFactory

log = logging.getLogger(__name__)

#: How a PROXY protocol header begins (versions 1 and 2): from an address not listed in
#: ``[ldap] proxy_protocol_from`` it is not read, and the log says what to do if it is a
#: load balancer of ours.
_PROXY_STARTS = (b"PROXY ", b"\r\n\r\n\x00\r")
_PROXY_HINT = (" (a PROXY protocol header: if this is a load balancer of yours, list it in "
               "[ldap] proxy_protocol_from)")

#: The BindResponse of every successful bind.
_BIND_OK = ber.result(ber.BIND_RESPONSE, SUCCESS, "")

#: Requests decoded and queued while a bind or a plan runs before reading stops.
MAX_QUEUED = 64

#: Seconds a request waits for a look at its client's row in the store (the bound client's
#: re-check, a bind's check) before it goes on without: as verified before, or 51 for a
#: bind never verified. A hung store then holds up requests this long, not for as long as
#: it hangs.
STORE_WAIT = 2.0
BIND_WAIT = 10.0

_WRITE_RESPONSES = {
    "LDAPAddRequest": ber.ADD_RESPONSE,
    "LDAPModifyRequest": ber.MODIFY_RESPONSE,
    "LDAPDelRequest": ber.DEL_RESPONSE,
    "LDAPModifyDNRequest": ber.MODDN_RESPONSE,
    "LDAPCompareRequest": ber.COMPARE_RESPONSE,
}


def _anonymous(code: int, message: str, status: str) -> Verdict:
    """A bind's verdict that leaves the connection anonymous."""
    return Verdict(code, message, None, "anonymous", status)


def _service_verdict(client: Client | None) -> Verdict:
    """The verdict of a service account's bind: the client its name and secret found."""
    if client is None:
        return Verdict(INVALID_CREDENTIALS, "invalid credentials", None, "anonymous",
                       f"{INVALID_CREDENTIALS} invalid credentials")
    return Verdict(SUCCESS, "", client, client.name, "success")


class LDAPConnection(SearchHandling, BaseLDAPServer, TimeoutMixin):
    """One client connection."""

    factory: LDAPFactory

    def __init__(self) -> None:
        super().__init__()
        self._buf = bytearray()
        self.client: Client | None = None
        #: The bound client was revoked or its credentials rotated: refuse until a new bind.
        self.unbound_by_revoke = False
        #: Set by the LDAPS listener's factory: TLS from the first byte.
        self._ldaps = False
        self.tls_active = False
        self.closing = False
        self.active: dict[int, bool] = {}  # msgid -> still wanted (False once abandoned)
        self.pages: controls.PagedSearches | None = None
        #: Holds in force (:meth:`hold`); requests are queued while there is one.
        self._holds = 0
        self._queued: list = []
        #: Where the unread bytes of ``_buf`` begin while a request is being handled.
        self._unread_from = 0
        #: Answer-cache key of the request being dispatched from :meth:`dataReceived`.
        self._answer_key: tuple | None = None
        #: The client stopped reading: the transport's buffer is full (see pauseProducing).
        self._out_paused = False
        #: Entry chunks waiting for the client to read.
        self._waiting: list[Callable[[], None]] = []
        self._receiving = False
        #: Reading was stopped by :meth:`_reading` (queue full, client not reading).
        self._not_reading = False
        #: The snapshot a bound person was last found active in (see _refresh_client).
        self._person_checked: Any = None
        #: This connection's part of request ids (``<connection>.<message id>``).
        self._id = os.urandom(4).hex()
        #: When the bytes being read arrived, and each request's arrival by message id
        #: (request metrics and log lines; taken when the request is recorded).
        self._chunk_t = 0.0
        self._arrivals: dict[int, float] = {}

    # ------------------------------------------------------------------ transport

    def connectionMade(self) -> None:
        super().connectionMade()
        settings = self.factory.settings
        self.factory.connections += 1
        self.factory.open_connections.add(self)
        metrics.LDAP_CONNECTIONS.inc()
        if self.factory.connections > settings.max_connections:
            log.warning("LDAP: refusing %s: %d connections open", self._peer(),
                        settings.max_connections)
            self._disconnect(BUSY, "too many connections; try again later")
            return
        self.setTimeout(settings.idle_timeout or None)
        self.pages = controls.PagedSearches(settings.page_ttl, settings.max_pages)
        if self._ldaps:
            self.tls_active = True
        self.transport.registerProducer(self, True)

    # ------------------------------------------------------------------ back-pressure
    #
    # A client that sends requests and does not read the answers must not make the server
    # hold them all: once the transport's buffer is full it calls pauseProducing, and this
    # connection stops sending entries and stops reading the socket (TCP back-pressure on
    # the client) until the buffer has drained. So one connection holds at most the
    # transport's buffer, one chunk of entries per search in flight and one read of input.

    def pauseProducing(self) -> None:
        self._out_paused = True
        self._reading(False)

    def resumeProducing(self) -> None:
        self._out_paused = False
        waiting, self._waiting = self._waiting, []
        for send in waiting:
            send()
        if not self._out_paused and not self.closing:
            self._reading(True)
            self._go_on()

    def stopProducing(self) -> None:
        self._waiting.clear()

    def _reading(self, on: bool) -> None:
        """Start or stop reading the socket (through a TLS layer when there is one)."""
        transport: Any = self.transport
        while transport is not None and not hasattr(transport, "stopReading"):
            transport = getattr(transport, "transport", None)
        if transport is not None:
            (transport.startReading if on else transport.stopReading)()
            self._not_reading = not on

    def connectionLost(self, reason: Any = protocol.connectionDone) -> None:
        super().connectionLost(reason)
        self.factory.connections -= 1
        self.factory.open_connections.discard(self)
        metrics.LDAP_CONNECTIONS.dec()
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

    def shut_down(self) -> None:
        """The server is stopping: notice of disconnection (``unavailable``), then close."""
        self._disconnect(UNAVAILABLE, "the server is shutting down; connect again")

    def _arrived(self, msgid: int) -> None:
        arrivals = self._arrivals
        if len(arrivals) > 256:  # requests never recorded (unbind, abandon, errors)
            arrivals.clear()
        arrivals[msgid] = self._chunk_t

    def dataReceived(self, data: bytes) -> None:
        self._chunk_t = monotonic()
        if self.closing:
            return
        self.resetTimeout()
        self._buf += data
        self._go_on()

    def _go_on(self) -> None:
        """Handle the complete requests in the input buffer (not re-entered: a request
        handled synchronously may release a hold, which comes back here)."""
        if self._receiving or not self._buf:
            return
        self._receiving = True
        try:
            self._receive()
        finally:
            self._receiving = False

    def _receive(self) -> None:
        buf = self._buf
        pos = 0
        max_pdu = self.factory.settings.max_pdu
        while not self.closing and not self._out_paused:
            if self._holds and len(self._queued) >= MAX_QUEUED:
                self._reading(False)  # read on when the bind or plan in progress is done
                break
            try:
                header = ber.pdu_length(buf, pos)
            except ber.BERError:
                log.info("LDAP: closing connection from %s: not LDAP%s", self._peer(),
                         _PROXY_HINT if pos == 0 and buf[:6] in _PROXY_STARTS else "")
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
            if not self._holds:
                key = self._cached_search(pdu, head)
                if key is True:
                    continue
                if key is None:
                    bind = decoding.simple_bind(pdu, head)
                    if bind is not None:  # a login: straight to the bind
                        self._unread_from = end
                        self._simple_bind_now(*bind)
                        continue
            msg = decoding.request(pdu, head)  # simple binds and plain searches
            if msg is None:
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
            if self._holds:
                self._queued.append(msg)
                continue
            self._answer_key = key
            self._unread_from = end
            try:
                self._dispatch_safely(msg)
            finally:
                self._answer_key = None
        del buf[:pos]
        self._unread_from = 0

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
        if msgid <= 0 or self._recheck_due():
            return None  # (a look at the client's row is due: the usual path does it)
        self._arrived(msgid)
        self._refresh_client()
        key = (pdu[pos + 2 + n:], self.client)
        _, layout = self.factory.current()
        answer = self.factory.answers_for(layout).get(key)
        if answer is None:
            return key
        self.active[msgid] = True
        self._send_answer(msgid, answer)
        return True

    def _send_answer(self, msgid: int, answer: Answer) -> None:
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

    def _refresh_client(self) -> None:
        """Take a revoke, rotate or policy change of the bound client into account before
        the next operation (at most a second after it was made anywhere)."""
        if self.client is None:
            return
        if self.client.kind == PERSON:
            snapshot, layout = self.factory.current()
            if snapshot is self._person_checked:
                return
            persons = self.factory.persons
            fresh = persons.current(self.client, snapshot, layout) \
                if persons is not None else None
            self._person_checked = snapshot
        else:
            fresh = self.factory.facade.clients.current(self.client)
        self._refreshed(fresh)

    def _refresh_in_thread(self, msg: Any) -> bool:
        """Look at the bound client's row in a thread, then run ``msg``; False (nothing
        done) when no look is due. The store may hang: after :data:`STORE_WAIT` the request
        goes on with the client as it stood, as when the store is away (nobody can revoke
        meanwhile); the look goes on in its thread, and nobody else waits for it."""
        if not self._recheck_due():
            return False
        client = self.client
        clients = self.factory.facade.clients
        self.hold()
        looked = self.factory.in_thread(clients.current, client)
        looked.addTimeout(STORE_WAIT, self.factory.reactor)

        def go_on(fresh: Any) -> None:
            if self.client is client:
                self._refreshed(client if isinstance(fresh, Failure) else fresh)
            self._dispatch_now(msg)

        looked.addBoth(go_on)
        looked.addErrback(lambda f: log.error("LDAP: %s", f.getTraceback()))
        looked.addBoth(lambda _: self.release())
        return True

    def _recheck_due(self) -> bool:
        """Is a look at the bound client's row in the store due (a service account's, once
        a second)?"""
        client = self.client
        return client is not None and client.kind != PERSON and \
            self.factory.facade.clients.needs_recheck(client)

    def _refreshed(self, fresh: Client | None) -> None:
        if self.client is None:
            return
        if fresh is None:
            log.info("LDAP: %s was revoked, rotated or left; connection from %s unbound",
                     self.client.name, self._peer())
            self.client = None
            self.unbound_by_revoke = True
        else:
            self.client = fresh

    def _dispatch_safely(self, msg: Any) -> None:
        if isinstance(msg.id, int):
            self._arrived(msg.id)
        if not self._refresh_in_thread(msg):
            self._dispatch_now(msg)

    def _dispatch_now(self, msg: Any) -> None:
        try:
            self._refresh_client()
            self.dispatch(msg)
        except Exception:
            self._handler_failed(type(msg.value).__name__)

    def _handler_failed(self, name: str) -> None:
        """A request's handler raised (called from its ``except`` block): logged, and the
        connection ends with a notice, since what it answered is unknown."""
        log.exception("LDAP: failed handling %r", name)
        self._disconnect(OTHER, "internal error")

    def _simple_bind_now(self, msgid: int, version: int, dn: bytes, password: bytes) -> None:
        """A simple bind without controls, read by :func:`decoding.simple_bind`: what
        :meth:`_dispatch_now` and :meth:`dispatch` do for it, without the bound client's
        refresh (the bind replaces that client)."""
        if self._refused_id(msgid):
            return
        self._arrived(msgid)
        try:
            self._answer_bind(msgid, version, dn.decode("utf-8", "replace"), password, False)
        except Exception:
            self._handler_failed("LDAPBindRequest")

    def hold(self) -> None:
        """Queue further requests until :meth:`release` (a bind is in progress: RFC 4511
        §4.2.1 says nothing else may run meanwhile). Holds count: a search planned in a
        thread may hold again for its disclosures before the planning's hold is released,
        and the next request must wait for both."""
        self._holds += 1

    def release(self) -> None:
        """Run the requests that arrived during a bind (or a plan in a thread), once no
        hold is left."""
        self._holds = max(0, self._holds - 1)
        if self._holds:
            return
        while self._queued and not self._holds and not self.closing:
            self._dispatch_safely(self._queued.pop(0))
        if not self._holds and not self._out_paused and not self.closing and self.connected:
            if self._not_reading:  # stopped by _reading: the queue was full
                self._reading(True)
            self._go_on()

    def _host(self) -> str:
        """The client's address without the port (what failures are counted by; worked
        out once per connection, as :meth:`_peer`)."""
        found = self.__dict__.get("_host_text")
        if found is None:
            found = self._peer().rsplit(":", 1)[0]
            if "_peer_text" in self.__dict__:  # not "unknown": looked at again next time
                self.__dict__["_host_text"] = found
        return found

    def _peer(self) -> str:
        """``host:port`` of the client (worked out once per connection: every access record
        names it)."""
        found = self.__dict__.get("_peer_text")
        if found is None:
            try:
                peer = self.transport.getPeer()
                found = f"{peer.host}:{peer.port}"
            except Exception:
                return "unknown"
            self.__dict__["_peer_text"] = found
        return found

    def _write_now(self, data: bytes) -> None:
        """Write to the socket at once when nothing is queued (see :func:`write_now`)."""
        write_now(self.transport, data, self.tls_active)

    def send(self, msgid: int, op: bytes, ctrls: bytes = b"") -> None:
        """Write one response message."""
        if self.connected and not self.closing:
            self.transport.write(ber.message(msgid, op, ctrls))

    # ------------------------------------------------------------------ dispatch

    def dispatch(self, msg: Any) -> None:
        """Hand the request to ``handle_<ldaptor class name>`` (as ldaptor's own server
        does); write requests and compare get 53, anything else protocolError."""
        op = msg.value
        name = type(op).__name__
        if self._refused_id(msg.id):
            return
        handler = getattr(self, f"handle_{name}", None)
        if handler is not None:
            handler(msg.id, op, msg.controls)
        elif isinstance(op, pureldap.LDAPExtendedRequest):
            self.handle_LDAPExtendedRequest(msg.id, op, msg.controls)
        elif name in _WRITE_RESPONSES:
            verb = "compare" if name == "LDAPCompareRequest" else "write"
            self.send(msg.id, ber.result(_WRITE_RESPONSES[name], UNWILLING,
                                         f"this directory is read-only ({verb} refused)"
                                         if verb == "write" else
                                         "compare is not supported; use a search"))
        else:
            self.send(msg.id, ber.extended_response(PROTOCOL_ERROR,
                                                    f"unsupported operation {name}"))

    def _refused_id(self, msgid: Any) -> bool:
        """True, after ending the connection with protocolError, when ``msgid`` is no
        request's message id (RFC 4511 §4.1.1.1: 0 is the unsolicited notification's, and
        ids are int32)."""
        if isinstance(msgid, int) and 0 < msgid < 2**31:
            return False
        self._disconnect(PROTOCOL_ERROR, f"message id {msgid} is not 1..2147483647")
        return True

    def handle_LDAPUnbindRequest(self, msgid: int, op: Any, ctrls: Any) -> None:
        self.closing = True
        self.transport.loseConnection()

    def handle_LDAPAbandonRequest(self, msgid: int, op: Any, ctrls: Any) -> None:
        target = op.value
        if target in self.active:
            self.active[target] = False  # no reply to an abandon (RFC 4511 §4.11)

    # ------------------------------------------------------------------ audit

    def _audit(self, operation: str, query: str, status: str, subjects: list[str],
               sensitive: list[str], client: Client | None = None,
               done: Callable[[bool], None] | None = None, who: str | None = None,
               msgid: int | None = None, wait: bool = True) -> defer.Deferred | None:
        """Record one access (submitted to the log without blocking the reactor; the answer
        waits until the record is durable, and concurrent records share one commit); fires
        True, or False when the log is unavailable (the caller then answers 80 and
        discloses nothing). ``wait=False`` (binds): fires True at once where the log commits
        in the event loop and its last commit succeeded; the record follows within
        milliseconds, before any later disclosure's (:mod:`idm_facade.access.audit.turnlog`)."""
        audit = self.factory.facade.audit
        if audit is None:
            if done is not None:
                done(True)
                return None
            return defer.succeed(True)
        acting = client if client is not None else self.client
        name = who or (acting.name if acting is not None else "anonymous")
        request_id = f"{self._id}.{msgid}" if msgid is not None else self._id
        rec = AccessRecord(client=name, source=audit_source(f"ldap:{self._peer()}", request_id),
                           operation=operation, query=query, status=status, subjects=subjects,
                           sensitive=sensitive)

        started = self._arrivals.pop(msgid, self._chunk_t) if msgid is not None \
            else self._chunk_t
        peer = self._host()

        def counted(ok: bool) -> None:
            requestlog.done("ldap", operation, status.split(" ", 1)[0] if ok else "80",
                            started, request_id=request_id, peer=peer, client=name)

        def failed(failure: Any) -> bool:
            if failure.check(AuditUnavailable) is None:
                log.error("LDAP: access log error: %s", failure.getErrorMessage())
            else:
                log.error("LDAP: access log unavailable; refusing %s", operation)
            return False

        if hasattr(audit, "submit"):
            # Non-blocking: no pool thread waits for the commit.
            d: defer.Deferred[bool] | None = None
            if done is None:
                d = defer.Deferred()
                done = d.callback

            answered = False

            def outcome(error: Any) -> None:
                if answered:
                    if error is not None:  # the next records wait for their commits again
                        log.error("LDAP: access log unavailable; the record of a %s "
                                  "answered before its commit was not written: %s",
                                  operation, error)
                    return
                ok = True if error is None else failed(Failure(error))
                counted(ok)
                done(ok)

            if self.factory.submit_record(audit, rec, outcome, wait):
                answered = True
                counted(True)
                done(True)
            return d
        d = self.factory.in_thread(audit.record, rec)
        d.addCallbacks(lambda _: True, failed)

        def count(ok: bool) -> bool:
            counted(ok)
            return ok

        d.addCallback(count)
        if done is not None:
            d.addCallback(done)
            d.addErrback(lambda f: log.error("LDAP: %s", f.getTraceback()))
            return None
        return d

    # ------------------------------------------------------------------ bind

    def handle_LDAPBindRequest(self, msgid: int, op: Any, ctrls: Any) -> None:
        dn = op.dn.decode("utf-8", "replace") if isinstance(op.dn, bytes) else str(op.dn)
        try:
            controls.parse(ctrls, frozenset())
        except controls.ControlError as exc:
            self.send(msgid, ber.result(ber.BIND_RESPONSE, exc.code, exc.message))
            return
        password = op.auth if isinstance(op.auth, bytes) else str(op.auth or "").encode()
        self._answer_bind(msgid, op.version, dn, password, op.sasl)

    def _answer_bind(self, msgid: int, version: int, dn: str, password: bytes,
                     sasl: bool) -> None:
        """Answer a bind (its controls already read): a person's, a service account's,
        anonymous or refused."""
        query = f"dn={dn}"
        self.client = None  # a bind, even a failed one, starts from anonymous
        self.unbound_by_revoke = False
        self.hold()  # nothing else runs until the bind is answered (RFC 4511 §4.2.1)
        if version != 3:
            decided = _anonymous(PROTOCOL_ERROR, f"LDAPv{version} is not supported",
                                 f"{PROTOCOL_ERROR} LDAPv{version}")
        elif sasl:
            decided = _anonymous(AUTH_METHOD_NOT_SUPPORTED, "SASL is not supported; use a "
                                 "simple bind", f"{AUTH_METHOD_NOT_SUPPORTED} SASL")
        elif not dn and not password:
            decided = _anonymous(SUCCESS, "", "success")  # anonymous (RFC 4513 §5.1.1)
        elif not password:
            decided = _anonymous(UNWILLING, "unauthenticated bind (DN without password) is "
                                 "not allowed", f"{UNWILLING} unauthenticated bind")
        else:
            secret = password.decode("utf-8", "replace")
            persons = self.factory.persons
            snapshot, layout = self.factory.current()
            if persons is not None and dn and persons.is_person_dn(dn, layout):
                # Answered by a plain callback (the path of every login). The snapshot the
                # account was found active in: no need to look again before the next
                # request while it is served.
                try:
                    persons.bind(dn, secret, self._host(), snapshot, layout, self.tls_active,
                                 lambda result: self._bind_decided(msgid, query, snapshot,
                                                                   result))
                except Exception:
                    self._bind_failed(Failure(), msgid)
                return
            if self.factory.settings.clients_require_tls and not self.tls_active:
                # a service account's secret, refused in clear before it is checked
                decided = _anonymous(CONFIDENTIALITY_REQUIRED, "binds need TLS here: use "
                                     "LDAPS or StartTLS", f"{CONFIDENTIALITY_REQUIRED} no TLS")
            else:
                cached = self.factory.facade.clients.bind_from_cache(dn, secret)
                if cached is None:
                    self._check_in_thread(msgid, query, dn, secret)
                    return
                decided = _service_verdict(cached)  # verified before: no slow hash
        self._bind_decided(msgid, query, None, decided)

    def _check_in_thread(self, msgid: int, query: str, dn: str, secret: str) -> None:
        """A service account's bind whose secret has not been verified before: its slow
        hash is checked in a pool thread, out of the event loop."""
        clients = self.factory.facade.clients
        verdict: defer.Deferred[Any] = self.factory.in_thread(clients.authenticate_bind, dn,
                                                              secret)
        verdict.addTimeout(BIND_WAIT, self.factory.reactor)

        def store_hung(failure: Failure) -> Verdict:
            failure.trap(defer.TimeoutError)
            meanwhile = clients.bind_from_cache(dn, secret)
            if meanwhile is not None:  # its look is under way: as verified
                return _service_verdict(meanwhile)
            return Verdict(BUSY, "the credentials cannot be checked now; try again", None,
                           "anonymous", f"{BUSY} store timeout")

        verdict.addCallbacks(_service_verdict, store_hung)
        verdict.addCallbacks(lambda result: self._bind_decided(msgid, query, None, result),
                             self._bind_failed, errbackArgs=(msgid,))

    def _bind_decided(self, msgid: int, query: str, bound_in: Any, result: Verdict) -> None:
        """Record a bind's verdict, then answer it (:meth:`_bind_answered`). A bind's record
        need not be committed before its answer: a bind discloses nothing of anyone (see
        :meth:`_audit`)."""
        try:
            self._audit("bind", query, result.status, [], [], client=result.client,
                        done=lambda ok: self._bind_answered(msgid, bound_in, result, ok),
                        who=result.who, msgid=msgid, wait=False)
        except Exception:
            self._bind_failed(Failure(), msgid)

    def _bind_answered(self, msgid: int, bound_in: Any, result: Verdict, ok: bool) -> None:
        """Send a bind's answer (80 when its record could not be written) and let the
        requests queued behind it run. ``bound_in``: the snapshot a person was found active
        in."""
        try:
            if not ok:
                self.send(msgid, ber.result(ber.BIND_RESPONSE, OTHER, "access log unavailable"))
                return
            if result.code != SUCCESS and result.code != UNWILLING:
                # A person's refusal is counted by the code the client saw: why the facade
                # refused (unknown name, leaver, lockout) is for the access log only, and
                # /metrics answers anyone who reaches the port.
                reason = f"person {result.code}" if result.who.startswith("person:") \
                    else result.status.split(" ", 1)[-1][:40]
                metrics.AUTH_FAILURES.labels("ldap", reason).inc()
            if result.code == SUCCESS:
                self.client = result.client
                self._person_checked = bound_in
            op = _BIND_OK if result.code == SUCCESS and not result.message else \
                ber.result(ber.BIND_RESPONSE, result.code, result.message)
            self._write_now(ber.message(msgid, op))
        except Exception:
            self._internal_error(Failure(), msgid, ber.BIND_RESPONSE)
        finally:
            self.release()

    def _bind_failed(self, failure: Failure, msgid: int) -> None:
        """A bind that failed in the facade: 80, and the queued requests run."""
        try:
            self._internal_error(failure, msgid, ber.BIND_RESPONSE)
        finally:
            self.release()

    def _internal_error(self, failure: Any, msgid: int, tag: int) -> None:
        log.error("LDAP: internal error: %s", failure.getTraceback())
        self.send(msgid, ber.result(tag, OTHER, "internal error"))

    # ------------------------------------------------------------------ extended

    def handle_LDAPExtendedRequest(self, msgid: int, op: Any, ctrls: Any) -> None:
        oid = op.requestName if isinstance(op.requestName, bytes) else \
            str(op.requestName).encode()
        try:
            controls.parse(ctrls, frozenset())
        except controls.ControlError as exc:
            self.send(msgid, ber.extended_response(exc.code, exc.message))
            return
        if oid == subschema.WHOAMI_OID:
            who = self.client.bind_dn if self.client is not None and self.client.bind_dn \
                else ""
            authz = f"dn:{who}" if who else ""
            self.send(msgid, ber.extended_response(SUCCESS, value=authz.encode()))
        elif oid == subschema.STARTTLS_OID:
            if self.tls_active:
                self.send(msgid, ber.extended_response(OPERATIONS_ERROR, "TLS already active",
                                                       name=oid))
                return
            if self.factory.tls is None:
                self.send(msgid, ber.extended_response(UNAVAILABLE, "TLS is not configured",
                                                       name=oid))
                return
            if self._queued or len(self._buf) > self._unread_from:
                # Requests sent after StartTLS before TLS is up were sent in clear: taken as
                # protected they would let a password in clear past require_tls (the
                # STARTTLS command injection of CVE-2011-0411). RFC 4511 §4.14.1: the
                # client sends nothing more until the response. They are answered in clear.
                self.send(msgid, ber.extended_response(
                    OPERATIONS_ERROR, "StartTLS must be the last request before TLS starts",
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
