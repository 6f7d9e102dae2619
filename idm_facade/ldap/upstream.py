"""Password checks against the municipality's own directory (Active Directory, or any LDAP
server): the facade does not keep people's passwords, so a person's bind is verified by a
bind to the upstream directory with the same password.

``[ldap.upstream]`` configures it (docs/ldap.md, "Person binds"):

- ``urls``: ``ldap://`` or ``ldaps://`` URLs, tried in order until one connects;
- ``dn_template`` (``uid={username},ou=people,dc=example,dc=org``), or search-then-bind with
  ``search_base``, ``search_filter`` (``(sAMAccountName={username})``), ``bind_dn`` and
  ``bind_password`` (the username is escaped for a DN or a filter, RFC 4514/4515);
- ``ca_file`` (PEM; else the system's trust store), ``starttls`` (for ``ldap://`` URLs),
  ``timeout`` (seconds for connecting and for each answer), ``pool_size`` (connections kept
  open).

Connections are kept open and reused: a bind on an open connection replaces its identity
(RFC 4511 §4.2.1), so one check costs one upstream bind, not a TCP and TLS handshake. A check
never succeeds by default: a connection that cannot be made, an answer that does not come in
time, or a result code other than success or a refusal gives UNAVAILABLE or BUSY, and the
facade answers the client 52 or 51.
"""

from __future__ import annotations

import enum
import logging
import re
import secrets
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from ldaptor.ldapfilter import parseFilter
from ldaptor.protocols import pureldap
from ldaptor.protocols.ldap import ldaperrors
from ldaptor.protocols.ldap.ldapclient import LDAPClient, LDAPClientConnectionLostException
from twisted.internet import defer, endpoints, ssl
from twisted.internet.protocol import connectionDone
from twisted.python.failure import Failure

from idm_facade.ldap import ber
from idm_facade.ldap.bind_settings import UpstreamSettings
from idm_facade.ldap.syntax import escape_filter_value, escape_value
from idm_facade.ldap.transport import write_now

log = logging.getLogger(__name__)


class Outcome(enum.Enum):
    """What the upstream directory said about a password."""

    OK = "ok"
    #: The upstream refused the credentials (wrong password, unknown, disabled, locked).
    REFUSED = "refused"
    #: The password is right but has expired (AD: ``data 532``) ...
    EXPIRED = "expired"
    #: ... or must be changed before it is used (AD: ``data 773``, after a reset). AD says
    #: so only to whoever typed the right password.
    MUST_CHANGE = "must change"
    #: No answer in time: the facade answers 51 (busy).
    BUSY = "busy"
    #: No upstream could be reached, or it answered with an error: 52 (unavailable).
    UNAVAILABLE = "unavailable"


#: Upstream result codes that mean "these credentials are not accepted" (AD answers 49 for a
#: wrong password, a disabled or a locked account; 50/53 for accounts it will not bind).
_REFUSALS = {32, 34, 48, 49, 50, 53}


#: AD's sub-codes of a refused bind, in its diagnostic message ("80090308: LdapErr: ...,
#: comment: AcceptSecurityContext error, data 532, v4563"), read with the pattern AD-aware
#: clients use (Spring Security's ActiveDirectoryLdapAuthenticationProvider, SUB_ERROR_CODE).
_AD_SUBCODE = re.compile(r".*data\s([0-9a-f]{3,4}).*", re.DOTALL)
_AD_OUTCOMES = {0x532: Outcome.EXPIRED, 0x773: Outcome.MUST_CHANGE}
#: Said with strongerAuthRequired (8) or confidentialityRequired (13): the upstream takes
#: simple binds only over TLS, as domain controllers that require LDAP signing do (the
#: default of new Windows Server 2025 forests). The person gets 52 until it is fixed.
_NEEDS_TLS = (" (the upstream takes binds only over TLS: use an ldaps:// URL or "
              "starttls = true in [ldap.upstream])")

#: The largest LDAP message ID (RFC 4511 §4.1.1: ``MessageID ::= INTEGER (0 .. maxInt)``).
MAX_MESSAGE_ID = 2**31 - 1


def bind_request(msgid: int, dn: str, password: str) -> bytes:
    """A simple LDAPv3 BindRequest (RFC 4511 §4.2), as ldaptor's ``LDAPBindRequest`` encodes
    it."""
    return ber.message(msgid, ber.tlv(0x60, b"\x02\x01\x03" + ber.octets(dn.encode())
                                      + ber.octets(password.encode(), 0x80)))


#: A BindResponse of success with empty matchedDN and diagnosticMessage, as it ends an
#: LDAPMessage without controls.
_SUCCESS = bytes((ber.BIND_RESPONSE, 7, 0x0A, 1, 0, 4, 0, 4, 0))


def bind_response(frame: bytes) -> tuple[int, int, str] | None:
    """(message ID, result code, diagnostic message) when ``frame`` is exactly one
    LDAPMessage carrying a BindResponse; None when it is anything else or malformed (ldaptor
    then reads, and fails, it as it always did)."""
    n = len(frame)
    if 14 <= n <= 17 and frame[0] == 0x30 and frame[1] == n - 2 and frame[2] == 0x02 and \
            frame[3] == n - 13 and frame.endswith(_SUCCESS):
        # the answer of nearly every bind, success, compared whole instead of parsed
        return ber.read_int(frame[4:n - 9]), 0, ""
    try:
        tag, message, end = ber.read_tlv(frame)
        if tag != 0x30 or end != len(frame):
            return None
        tag, raw_id, pos = ber.read_tlv(message)
        if tag != 0x02:
            return None
        tag, op, _ = ber.read_tlv(message, pos)
        if tag != ber.BIND_RESPONSE:
            return None
        tag, code, pos = ber.read_tlv(op)
        # matchedDN and diagnosticMessage: required by RFC 4511, read leniently (an upstream
        # that leaves them out was answered before they were read, and still is)
        diagnostic = b""
        if pos < len(op):
            _, _, pos = ber.read_tlv(op, pos)
            if pos < len(op):
                text_tag, text, _ = ber.read_tlv(op, pos)
                diagnostic = text if text_tag == 0x04 else b""
    except ber.BERError:
        return None
    if tag != 0x0A or not raw_id or not code:
        return None
    return ber.read_int(raw_id), ber.read_int(code), diagnostic.decode("utf-8", "replace")


class _Client(LDAPClient):
    """ldaptor's client with binds of its own: a person's bind is the hot path (one upstream
    bind per login), and encoding the request and decoding the answer here costs a few
    microseconds against ldaptor's tens. Everything else (search-then-bind's search,
    StartTLS, an answer in a form not read here) goes through ldaptor as before.

    Message IDs count per connection and wrap at maxInt: ldaptor's one process-wide counter
    would pass maxInt after two billion requests, which the upstream would refuse."""

    tls = False

    def __init__(self, reactor: Any, timeout: float) -> None:
        super().__init__()
        #: The reactor that times answers, and how long one may take.
        self.reactor = reactor
        self.timeout = timeout
        self._last_id = 0
        self._pending = b""
        #: Binds sent here, by message ID: called with (result code, message), or with a
        #: Failure when the connection was lost or the answer did not come in time.
        self._binds: dict[int, Callable[[Any], None]] = {}
        #: When the latest bind sent times out, and the one timer that watches it: re-armed
        #: when it fires, not made and cancelled for every bind (see :meth:`_check_time`).
        self._deadline = 0.0
        self._timer: Any = None

    def _next_id(self) -> int:
        while True:
            self._last_id = self._last_id % MAX_MESSAGE_ID + 1
            if self._last_id not in self.onwire and self._last_id not in self._binds:
                return self._last_id

    def _send(self, op: Any, controls: Any = None) -> Any:
        if not self.connected:
            raise LDAPClientConnectionLostException()
        return pureldap.LDAPMessage(op, controls=controls, id=self._next_id())

    def send(self, op: Any, controls: Any = None) -> defer.Deferred:
        """As ldaptor's, but sent at once instead of on the next reactor turn (a bind is
        one request and one answer: the turn saved is a good part of its latency)."""
        msg = self._send(op, controls=controls)
        d: defer.Deferred = defer.Deferred()
        self.onwire[msg.id] = (d, False, None, None, None)
        write_now(self.transport, msg.toWire(), self.tls)
        return d

    def bind_then(self, dn: str, password: str, answered: Callable[[Any], None]) -> None:
        """Send a simple bind; ``answered`` is called once, with the answer's (result code,
        diagnostic message), or with a Failure: the connection was lost, or no answer came
        within :attr:`timeout` (``defer.TimeoutError``; the connection is then closed)."""
        if not self.connected:
            raise LDAPClientConnectionLostException()
        msgid = self._next_id()
        request = bind_request(msgid, dn, password)
        self._binds[msgid] = answered
        self._deadline = self.reactor.seconds() + self.timeout
        if self._timer is None:
            self._timer = self.reactor.callLater(self.timeout, self._check_time)
        write_now(self.transport, request, self.tls)

    def bind_code(self, dn: str, password: str) -> defer.Deferred[tuple[int, str]]:
        """:meth:`bind_then` as a Deferred."""
        d: defer.Deferred[tuple[int, str]] = defer.Deferred()
        self.bind_then(dn, password, lambda answer: d.errback(answer)
                       if isinstance(answer, Failure) else d.callback(answer))
        return d

    def _check_time(self) -> None:
        """The timer fired: fail the binds waiting when the latest is overdue (all of them:
        the connection is closed), else watch again until the latest one's deadline."""
        self._timer = None
        if not self._binds:
            return
        left = self._deadline - self.reactor.seconds()
        if left > 0:
            self._timer = self.reactor.callLater(left, self._check_time)
            return
        self._fail_binds(Failure(defer.TimeoutError()))
        self.transport.abortConnection()

    def dataReceived(self, data: bytes) -> None:
        """Answers to our binds are read here; every other message goes to ldaptor whole."""
        buffer = self._pending + data if self._pending else data
        pos = 0
        try:
            while True:
                head = ber.pdu_length(buffer, pos)
                if head is None:
                    break
                end = pos + head[0] + head[1]
                if end > len(buffer):
                    break
                frame = buffer[pos:end]
                pos = end
                if not self._bind_answered(frame):
                    super().dataReceived(frame)
        except ber.BERError:
            super().dataReceived(buffer[pos:])  # not LDAP: ldaptor fails it as before
            pos = len(buffer)
        self._pending = buffer[pos:]

    def _bind_answered(self, frame: bytes) -> bool:
        """Fire the bind this frame answers; False when it answers no bind of ours."""
        answer = bind_response(frame)
        if answer is None:
            return False
        answered = self._binds.pop(answer[0], None)
        if answered is None:
            return False
        answered(answer[1:])
        return True

    def _fail_binds(self, failure: Failure) -> None:
        while self._binds:
            _, answered = self._binds.popitem()
            answered(failure)

    def connectionLost(self, reason: Any = connectionDone) -> None:
        super().connectionLost(reason)
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        self._fail_binds(reason if isinstance(reason, Failure) else Failure(reason))


class _Unavailable(Exception):
    """No upstream connection could be made or the connection failed mid-way."""


class UpstreamPool:
    """Open connections to the upstream directory, and password checks over them."""

    def __init__(self, settings: UpstreamSettings, reactor: Any) -> None:
        self.settings = settings
        self.reactor = reactor
        self._idle: deque[LDAPClient] = deque()
        self._open = 0
        self._waiting: deque[defer.Deferred] = deque()
        self._trust: Any = None
        #: {username: upstream DN} (:meth:`_template_dn`).
        self._dns: dict[str, str] = {}
        #: Connections opened so far (a test checks that one serves many checks).
        self.connects = 0
        #: Whom :meth:`round_trip` checks: a name no account has (random, so not one the
        #: upstream could hold) and a random password.
        self._nobody = ("idm-facade-no-such-account-" + secrets.token_hex(12),
                        secrets.token_urlsafe(18))

    # ------------------------------------------------------------------ connections

    def _tls_options(self, host: str) -> Any:
        if self._trust is None and self.settings.ca_file:
            pem = Path(self.settings.ca_file).read_bytes()
            certs = [ssl.Certificate.loadPEM(b"-----BEGIN CERTIFICATE-----" + part)
                     for part in pem.split(b"-----BEGIN CERTIFICATE-----")[1:]]
            self._trust = ssl.trustRootFromCertificates(certs)
        return ssl.optionsForClientTLS(host, trustRoot=self._trust)

    @defer.inlineCallbacks
    def _connect_one(self, url: str) -> Any:
        parts = urlsplit(url)
        host = parts.hostname or "localhost"
        port = parts.port or (636 if parts.scheme == "ldaps" else 389)
        endpoint: Any = endpoints.HostnameEndpoint(self.reactor, host, port,
                                                   timeout=self.settings.timeout)
        if parts.scheme == "ldaps":
            endpoint = endpoints.wrapClientTLS(self._tls_options(host), endpoint)
        client = yield self._within(endpoints.connectProtocol(
            endpoint, _Client(self.reactor, self.settings.timeout)))
        client.tls = parts.scheme == "ldaps"
        if parts.scheme == "ldap" and self.settings.starttls:
            try:
                yield self._within(client.startTLS(self._tls_options(host)))
                client.tls = True
            except Exception:
                client.transport.abortConnection()
                raise
        return client

    @defer.inlineCallbacks
    def _connect(self) -> Any:
        """A new connection to the first upstream URL that answers."""
        last: Exception | None = None
        for url in self.settings.urls:
            try:
                client = yield self._connect_one(url)
            except Exception as exc:  # noqa: BLE001 - refused, timed out, TLS failed
                log.warning("LDAP upstream %s: cannot connect: %s", url, exc)
                last = exc
                continue
            self.connects += 1
            return client
        raise _Unavailable(str(last))

    def _within(self, d: defer.Deferred) -> defer.Deferred:
        return d.addTimeout(self.settings.timeout, self.reactor)

    @defer.inlineCallbacks
    def _acquire(self) -> Any:
        while self._idle:
            client = self._idle.popleft()
            if client.connected:
                return client
            self._open -= 1
        if self._open >= self.settings.pool_size:
            waiter: defer.Deferred = defer.Deferred()
            self._waiting.append(waiter)
            client = yield self._within(waiter)
            return client
        self._open += 1
        try:
            client = yield self._connect()
        except Exception:
            self._open -= 1
            raise
        return client

    def _next_waiter(self) -> defer.Deferred | None:
        while self._waiting:
            waiter = self._waiting.popleft()
            if not waiter.called:  # not timed out meanwhile
                return waiter
        return None

    def _give_back(self, client: Any, usable: bool) -> None:
        if usable and client.connected:
            waiter = self._next_waiter()
            if waiter is not None:
                waiter.callback(client)
            else:
                self._idle.append(client)
            return
        self._open -= 1
        if client.connected:
            client.transport.abortConnection()
        waiter = self._next_waiter()
        if waiter is None:
            return
        # The waiter takes the freed place with a new connection.
        self._open += 1

        def made(new: Any) -> None:
            if waiter.called:
                self._give_back(new, True)
            else:
                waiter.callback(new)

        def failed(failure: Any) -> None:
            self._open -= 1
            if not waiter.called:
                waiter.errback(failure)

        self._connect().addCallbacks(made, failed)

    # ------------------------------------------------------------------ checks

    def _template_dn(self, username: str) -> str:
        """``username``'s DN from ``dn_template``, escaped; kept for the next login (at most
        :attr:`MAX_DNS`)."""
        found = self._dns.get(username)
        if found is None:
            assert self.settings.dn_template is not None
            if len(self._dns) >= self.MAX_DNS:
                self._dns.clear()
            found = self._dns[username] = self.settings.dn_template.replace(
                "{username}", escape_value(username))
        return found

    #: Upstream DNs kept by :meth:`_template_dn`.
    MAX_DNS = 8192

    def _absent_dn(self) -> str:
        """A DN under the search base that no entry has (the random name of
        :attr:`_nobody`: letters, digits and hyphens, so nothing to escape)."""
        base = self.settings.search_base
        return f"cn={self._nobody[0]},{base}" if base else f"cn={self._nobody[0]}"

    @defer.inlineCallbacks
    def _dn_for(self, client: Any, username: str) -> Any:
        """The upstream DN of ``username`` (None when the search finds not exactly one)."""
        s = self.settings
        if s.dn_template is not None:
            return self._template_dn(username)
        code, message = yield client.bind_code(s.bind_dn or "", s.bind_password or "")
        if code != 0:
            # AD's message says why ("data 532": the search account's password expired)
            log.error("LDAP upstream: the search account's bind was refused (%d): %s%s",
                      code, message[:200], _NEEDS_TLS if code in (8, 13) else "")
            raise _Unavailable(f"search bind refused ({code})")
        found: list[str] = []
        done: defer.Deferred = defer.Deferred()

        def handler(msg: Any) -> bool:
            if isinstance(msg, pureldap.LDAPSearchResultEntry):
                found.append(msg.objectName.decode() if isinstance(msg.objectName, bytes)
                             else str(msg.objectName))
                return False
            if isinstance(msg, pureldap.LDAPSearchResultDone):
                done.callback(int(msg.resultCode))
                return True
            return False

        request = pureldap.LDAPSearchRequest(
            baseObject=(s.search_base or "").encode(),
            scope=pureldap.LDAP_SCOPE_wholeSubtree,
            filter=parseFilter(s.search_filter.replace("{username}",
                                                       escape_filter_value(username))),
            attributes=[b"1.1"], sizeLimit=2)
        client.send_multiResponse(request, handler)
        code = yield self._within(done)
        if code not in (0, 4) or len(found) != 1:
            return None
        return found[0]

    def check(self, username: str, password: str, answer: Callable[[Outcome], None]) -> None:
        """Call ``answer`` once with the :class:`Outcome` of binding as ``username`` with
        ``password`` (at once, or when the upstream has answered). A connection that broke
        while idle is replaced once; whatever goes wrong, the outcome is never OK.

        The usual case (a DN from the template, an open idle connection) is one bind on
        that connection with plain callbacks: it is the path of every login, and Deferreds
        and a timer made and cancelled per bind cost more than the bind's own encoding and
        decoding. Everything else takes the general path (:meth:`_verify`)."""
        if not password:
            answer(Outcome.REFUSED)
            return
        client = None
        if self.settings.dn_template is not None and self._idle:
            client = self._idle.popleft()
            if not client.connected:
                self._open -= 1
                client = None
        if client is None:
            self._general(username, password, (1, 2), answer)
            return

        def answered(result: Any) -> None:
            if not isinstance(result, Failure):
                self._give_back(client, True)
                answer(self._outcome(*result))
                return
            self._give_back(client, False)
            if result.check(defer.TimeoutError):
                log.warning("LDAP upstream: no answer within %.1f s", self.settings.timeout)
                answer(Outcome.BUSY)
                return
            # closed while idle: a new connection
            self._general(username, password, (2,), answer)

        try:
            client.bind_then(self._template_dn(username), password, answered)
        except Exception:  # noqa: BLE001 - lost as it was taken: the general path
            answered(Failure())

    def _general(self, username: str, password: str, attempts: tuple[int, ...],
                 answer: Callable[[Outcome], None]) -> None:
        """:meth:`_verify`, its outcome given to ``answer``; an error nobody foresaw is
        UNAVAILABLE (never OK), and still answered."""
        def failed(failure: Failure) -> None:
            log.error("LDAP upstream: the password check failed: %s", failure.getTraceback())
            answer(Outcome.UNAVAILABLE)

        self._verify(username, password, attempts).addCallbacks(answer, failed)

    def verify(self, username: str, password: str) -> defer.Deferred[Outcome]:
        """:meth:`check` as a Deferred."""
        d: defer.Deferred[Outcome] = defer.Deferred()
        self.check(username, password, d.callback)
        return d

    def round_trip(self, answer: Callable[[Outcome], None]) -> None:
        """A password check of a name no account has (:attr:`_nobody`), made exactly as
        :meth:`check` checks a person's: the same code, the same bind on a pooled
        connection, and upstream the same work, a name looked up and refused. (An anonymous
        bind would take measurably less: the upstream looks nothing up for it.) No
        real account gets a failed logon. Calls ``answer`` with the check's
        :class:`Outcome` (REFUSED, or BUSY or UNAVAILABLE when the upstream cannot answer).
        A refusal decided by the facade takes as long as a check this way."""
        self.check(*self._nobody, answer)

    @staticmethod
    def _outcome(code: int, message: str) -> Outcome:
        if code == 0:
            return Outcome.OK
        if code in _REFUSALS:
            found = _AD_SUBCODE.match(message) if code == 49 else None
            if found is not None:
                return _AD_OUTCOMES.get(int(found.group(1), 16), Outcome.REFUSED)
            return Outcome.REFUSED
        hint = _NEEDS_TLS if code in (8, 13) else ""
        log.warning("LDAP upstream answered a bind with result code %d: %s%s", code,
                    message[:200] or "(no message)", hint)
        return Outcome.UNAVAILABLE

    @defer.inlineCallbacks
    def _verify(self, username: str, password: str, attempts: tuple[int, ...]) -> Any:
        """:meth:`check` in general: a connection to make or wait for, a DN to search."""
        for attempt in attempts:
            try:
                client = yield self._acquire()
            except defer.TimeoutError:
                return Outcome.BUSY
            except Exception as exc:  # noqa: BLE001 - fail closed
                log.warning("LDAP upstream unavailable: %s", exc)
                return Outcome.UNAVAILABLE
            usable = True
            try:
                dn = yield self._dn_for(client, username)
                if dn is None:
                    # Nobody found: refused, after the bind a found name gets, so that a
                    # name the upstream lacks (or a refusal the facade decided, see
                    # round_trip) takes the same three round trips as a wrong password.
                    yield client.bind_code(self._absent_dn(), password)
                    return Outcome.REFUSED
                answer = yield client.bind_code(dn, password)
            except defer.TimeoutError:
                usable = False
                log.warning("LDAP upstream: no answer within %.1f s", self.settings.timeout)
                return Outcome.BUSY
            except (ldaperrors.LDAPException, ConnectionError, _Unavailable) as exc:
                usable = False
                if attempt == 1 and not isinstance(exc, _Unavailable):
                    continue  # an idle connection the upstream closed: try a new one
                log.warning("LDAP upstream failed: %s", exc)
                return Outcome.UNAVAILABLE
            except Exception as exc:  # noqa: BLE001 - a lost connection, fail closed
                usable = False
                if attempt == 1:
                    continue
                log.warning("LDAP upstream failed: %s", exc)
                return Outcome.UNAVAILABLE
            finally:
                self._give_back(client, usable)
            return self._outcome(*answer)
        return Outcome.UNAVAILABLE

    def close(self) -> None:
        """Close every idle connection (shutdown)."""
        while self._idle:
            client = self._idle.popleft()
            if client.connected:
                client.transport.loseConnection()
