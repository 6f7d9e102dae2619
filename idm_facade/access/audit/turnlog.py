"""Access records committed by the event loop, one commit per loop turn.

With ``[audit] sync = "normal"`` on SQLite (:attr:`AuditLog.fast_commit`) a commit costs tens
of microseconds. Handing each record to another thread and waiting for it costs more than
that: a thread switch and a GIL hand-over each way. So the front ends running in the Twisted
reactor (LDAP, and the HTTP site for SCIM) give their records to the reactor's
:class:`TurnLog`: the records of one loop turn are committed together, in the reactor thread,
right after the turn, and each request's answer leaves only when its record is committed
(or is replaced by an error when the commit fails: no record, no answer).

One TurnLog per (reactor, access log), shared by every listener of the process, so LDAP and
HTTP records of the same turn share one commit.

**Bind records** do not hold their answer (``add(..., wait=False)``): a bind discloses nothing
of anyone, and a commit before each bind's answer was about 40 % of a person bind's time. They
are committed with the next record that does hold an answer, or within ``[audit]
bind_record_delay`` seconds (default 0.01), whichever comes first, in the order they were
added. So every disclosure's record, and the record of the bind that let its client in, are
durable before the disclosure leaves; a crash can lose the bind records of that last moment,
and a stop commits them first. "No record, no answer" still holds for binds where it can
matter: until the first commit succeeds, once one has failed, and while the log refuses
records, bind records hold their answers (80 when they cannot be written).
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

#: WSGI environ key of ``hold(record, error_body, content_type)``: commit ``record`` in the
#: reactor before the response leaves; send ``error_body`` (bytes of a 500 response of
#: ``content_type``) instead when it cannot be committed. The HTTP site puts it there
#: (``runtime.http``); the SCIM and role-API applications take it from there.
HOLD_KEY = "idm_facade.hold_for_record"

#: {access log: {reactor: TurnLog}}; weak so a closed log's turn logs go with it.
_TURN_LOGS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


class TurnLog:
    """Collects the records of one reactor turn and commits them together after it."""

    #: Records waiting at most, before they are committed at the end of the turn anyway.
    MAX_WAITING = 256

    def __init__(self, reactor: Any, audit: Any) -> None:
        self.reactor = reactor
        self.audit = audit
        #: Seconds a record that holds no answer (a bind's) may wait for a commit
        #: (``[audit] bind_record_delay``; 0: it holds its answer like every record).
        self.bind_delay: float = audit.settings.bind_record_delay
        self._turn: list[tuple[Any, Callable[[BaseException | None], None]]] = []
        #: A commit is due at the end of this turn / within ``bind_delay`` seconds.
        self._soon = False
        self._later = False
        #: The last commit succeeded. Until the first one, and after a failed one, every
        #: record holds its answer, so a log that cannot be written stops binds too.
        self.trusted = False
        #: Shutting down: nothing waits for a timer that may never fire.
        self._stopping = False
        if hasattr(reactor, "addSystemEventTrigger"):
            reactor.addSystemEventTrigger("before", "shutdown", self._stop)

    def add(self, rec: Any, done: Callable[[BaseException | None], None],
            wait: bool = True) -> bool:
        """Queue ``rec`` (reactor thread only); ``done(None)`` runs in the reactor once it
        is committed, ``done(error)`` when the commit failed.

        ``wait=False`` (a bind's record): the caller may answer before the commit, and True
        is returned, unless no commit has succeeded yet, the last one failed, the log
        refuses records or the process is stopping (then False: wait for ``done`` as for any
        record)."""
        self._turn.append((rec, done))
        later = not wait and self.bind_delay > 0 and self.trusted and not self._stopping and \
            len(self._turn) < self.MAX_WAITING and self.audit.problem is None
        if later:
            if not self._later and not self._soon:
                self._later = True
                self.reactor.callLater(self.bind_delay, self._write_later)
        elif not self._soon:
            self._soon = True
            self.reactor.callLater(0, self._write_soon)
        return later

    def _write_soon(self) -> None:
        self._soon = False
        self._write()

    def _write_later(self) -> None:
        self._later = False
        self._write()

    def _stop(self) -> None:
        """Commit what waits, before the reactor stops running its timers."""
        self._stopping = True
        self._write()

    def _write(self) -> None:
        turn, self._turn = self._turn, []
        if not turn:
            return
        error: BaseException | None = None
        try:
            self.audit.record_many([rec for rec, _ in turn])
        except Exception as exc:  # noqa: BLE001 - every waiting request must hear of it
            error = exc
        self.trusted = error is None
        for _, done in turn:
            try:
                done(error)
            except Exception:
                log.exception("failed answering after the access-log write")


def turn_log(reactor: Any, audit: Any) -> TurnLog | None:
    """The reactor's TurnLog for ``audit``, or None when its commits are not fast enough to
    run in the event loop (``sync = "full"``, PostgreSQL): callers then use the log's own
    writer thread (``AuditLog.submit``) or ``AuditLog.record`` in a worker thread."""
    if audit is None or not getattr(audit, "fast_commit", False):
        return None
    by_reactor = _TURN_LOGS.setdefault(audit, {})
    found = by_reactor.get(id(reactor))
    if found is None or found.reactor is not reactor:
        found = by_reactor[id(reactor)] = TurnLog(reactor, audit)
    return found
