"""The LDAP v3 listeners: one factory per port, the DIT layout each snapshot is served with,
the answer cache, and the hand-over of access records to the log.

Connections are :class:`~idm_facade.ldap.protocol.LDAPConnection`; what a search answers is
:mod:`idm_facade.ldap.search`. A search is planned against the DIT (:mod:`idm_facade.ldap.dit`)
of the snapshot the factory serves; a new snapshot's DIT is built off the event loop and
swapped in whole, so a request never mixes one snapshot with another's DNs.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from twisted.internet import defer, protocol, threads
from twisted.internet.interfaces import IListeningPort

from idm_facade import metrics
from idm_facade.access.audit.turnlog import turn_log
from idm_facade.access.facade import Facade
from idm_facade.config import megabytes
from idm_facade.directory.caches import BoundedDict
from idm_facade.directory.limits import Limits
from idm_facade.directory.snapshot import Snapshot
from idm_facade.ldap import dit
from idm_facade.ldap.persons import PersonBinds
from idm_facade.ldap.protocol import LDAPConnection
from idm_facade.ldap.search import Answer

log = logging.getLogger(__name__)

#: Seconds between checks for a new directory snapshot whose DIT layout needs building.
LAYOUT_WATCH_INTERVAL = 0.2


@dataclass
class Settings:
    """The ``[ldap]`` limits."""

    max_pdu: int = 1 << 20
    idle_timeout: float = 900.0
    size_limit: int = 0
    time_limit: float = 60.0
    page_ttl: float = 300.0
    max_pages: int = 16
    #: Open connections per listener; one more is told "busy" (51) and closed, so what
    #: connections hold (RELIABILITY.md: about 1.5 MB each at most) stays bounded.
    max_connections: int = 1000
    #: Bytes of finished answers kept for repeats (``answer_cache_mb``; see
    #: :meth:`LDAPFactory.keep_answer`).
    answer_cache_bytes: int = 64 << 20
    #: Refuse service-account binds without TLS with 13 (``[ldap] require_tls``; person
    #: binds have their own setting, on by default: ``[ldap.persons] require_tls``).
    clients_require_tls: bool = False

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
            max_connections=int(section.get("max_connections", cls.max_connections)),
            answer_cache_bytes=megabytes(section, "answer_cache_mb", cls.answer_cache_bytes),
            clients_require_tls=bool(section.get("require_tls", False)),
        )


_ANSWER_BYTES = metrics.CACHE_BYTES.labels("ldap_answer")


class LDAPFactory(protocol.ServerFactory):
    """Builds one :class:`LDAPConnection` per client connection."""

    def __init__(self, facade: Facade, reactor: Any = None, tls: Any = None,
                 persons: PersonBinds | None = None) -> None:
        self.facade = facade
        #: Person binds (None when no upstream directory is configured).
        self.persons = persons
        self.settings = Settings.from_config(facade.config)
        self.limits = Limits.from_config(facade.config)
        #: Connections open now (see Settings.max_connections), and the connections
        #: themselves (a drain tells the idle ones and waits for the busy ones).
        self.connections = 0
        self.open_connections: set[LDAPConnection] = set()
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
        #: message id, client): Answer}; see :meth:`answers_for`.
        self._answers = self._new_answers()
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

    def submit_record(self, audit: Any, rec: Any, done: Callable[[Any], None],
                      wait: bool = True) -> bool:
        """Append an access record without a pool thread; ``done`` is called in the reactor
        with None once the record is committed, or with the AuditUnavailable error. True when
        the caller need not wait for ``done`` to answer (``wait=False``, a bind's record,
        taken by the reactor's turn writer: see :mod:`idm_facade.access.audit.turnlog`).

        A log whose commits wait for the disk (``[audit] sync = "full"``) writes in its own
        thread and calls back there; outcomes are queued and fired by one ``callFromThread``
        per burst, so a group commit of N records wakes the reactor once, and the reactor keeps
        reading requests while the disk flushes. A log with fast commits (``sync = "normal"``
        on SQLite: tens of microseconds) is written by the reactor itself
        (:mod:`idm_facade.access.audit.turnlog`): the records of one reactor turn are
        committed together right after the turn, which saves two thread switches per batch,
        and on two cores that is a fifth of the time of a cached search.
        """
        turns = self._turns if audit is self.facade.audit else turn_log(self.reactor, audit)
        if turns is None:
            audit.submit(rec, lambda error: self._outcome(done, error))
            return False
        return turns.add(rec, done, wait)

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

    def layout(self, snapshot: Snapshot) -> dit.Layout:
        """The DIT of a snapshot (options read once per snapshot)."""
        options = snapshot.cached(dit.OPTIONS_KEY,
                                  lambda: dit.options_from(self.facade.config, snapshot))
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
        ready = latest.peek(dit.LAYOUT_KEY)
        if ready is not None and ready.options == latest.peek(dit.OPTIONS_KEY):
            self._swap(ready, latest, gen)  # another listener built it already
            return self._served
        self._building = latest
        d = self.in_thread(self.layout, latest)
        d.addCallback(self._swap, latest, gen)
        d.addErrback(self._layout_failed, latest)
        return served

    def answers_for(self, layout: dit.Layout) -> BoundedDict:
        """The answer cache of ``layout`` (emptied when the served layout changes, so an
        answer is never sent from another snapshot than the one that computed it)."""
        if self._answers_layout is not layout:
            self._answers = self._new_answers()
            self._answers_layout = layout
        return self._answers

    def _new_answers(self) -> BoundedDict:
        # Keyed by the request as sent, which a client chooses freely: bounded in bytes
        # (idm_facade.directory.caches), and to 50,000 answers.
        return BoundedDict(self.settings.answer_cache_bytes, 50_000)

    def keep_answer(self, layout: dit.Layout, key: tuple, answer: Answer, size: int) -> None:
        """Keep ``answer`` (``size`` bytes of entries) for repeats of the same request."""
        answers = self.answers_for(layout)
        answers.keep(key, answer, size + 300)  # + the key, the Answer and its fields
        _ANSWER_BYTES.set(answers.size)

    def _swap(self, layout: dit.Layout, snapshot: Snapshot, gen: int) -> None:
        if self._building is snapshot:
            self._building = None
        if gen > self._served_gen:  # never go back to an older snapshot
            self._served = (snapshot, layout)
            self._served_gen = gen

    def _layout_failed(self, failure: Any, snapshot: Snapshot) -> None:
        if self._building is snapshot:
            self._building = None
        log.error("LDAP: building the DIT of a new snapshot failed; serving the previous "
                  "one: %s", failure.getTraceback())


class _LDAPSFactory(LDAPFactory):
    def buildProtocol(self, addr: Any) -> LDAPConnection:
        proto = super().buildProtocol(addr)
        proto._ldaps = True
        return proto


def factories(reactor: Any, facade: Facade, ldap: bool, ldaps: bool
              ) -> tuple[Any | None, Any | None]:
    """The factories of the plain and the LDAPS listener (None when not wanted), each to
    listen with on a TCP port: LDAPS's wraps the LDAP factory in TLS, and each is wrapped
    for the PROXY protocol when ``[ldap] proxy_protocol_from`` names load balancers (the
    header comes before TLS). Shared by :func:`listen` and ``serve --workers``, which adopts
    listening sockets."""
    from twisted.protocols.tls import TLSMemoryBIOFactory

    from idm_facade.access.addresses import proxy_networks
    from idm_facade.ldap import tls
    from idm_facade.ldap.proxied import ProxyProtocolFactory

    context = tls.context_factory(facade.config)
    persons = PersonBinds.from_config(facade.config, facade.clients, reactor)
    if persons is not None:
        reactor.addSystemEventTrigger("before", "shutdown", persons.close)
    balancers = proxy_networks(facade.config)

    def front(factory: Any) -> Any:
        return ProxyProtocolFactory(factory, balancers) if balancers else factory

    plain = LDAPFactory(facade, reactor, context, persons) if ldap else None
    secure = _LDAPSFactory(facade, reactor, context, persons) if ldaps else None
    return (front(plain) if plain is not None else None,
            # mypy cannot see zope's @implementer declarations on these two classes.
            front(TLSMemoryBIOFactory(context, False, secure))  # type: ignore[arg-type]
            if secure is not None else None)


def listen(reactor: Any, facade: Facade, host: str, port: int | None,
           ldaps_port: int | None = None) -> list[IListeningPort]:
    """Start the LDAP listener (and LDAPS when ``ldaps_port`` is given) on ``host``."""
    plain, secure = factories(reactor, facade, port is not None, ldaps_port is not None)
    ports = []
    if plain is not None:
        ports.append(reactor.listenTCP(port, plain, interface=host))
    if secure is not None:
        ports.append(reactor.listenTCP(ldaps_port, secure, interface=host))
    for p in ports:
        address = p.getHost()
        log.info("LDAP listening on %s:%s", address.host, address.port)
    return ports
