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

    def __init__(self, reactor: Any, audit: Any) -> None:
        self.reactor = reactor
        self.audit = audit
        self._turn: list[tuple[Any, Callable[[BaseException | None], None]]] = []

    def add(self, rec: Any, done: Callable[[BaseException | None], None]) -> None:
        """Queue ``rec`` (reactor thread only); ``done(None)`` runs in the reactor once it
        is committed, ``done(error)`` when the commit failed."""
        self._turn.append((rec, done))
        if len(self._turn) == 1:
            self.reactor.callLater(0, self._write)

    def _write(self) -> None:
        turn, self._turn = self._turn, []
        error: BaseException | None = None
        try:
            self.audit.record_many([rec for rec, _ in turn])
        except Exception as exc:  # noqa: BLE001 - every waiting request must hear of it
            error = exc
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
