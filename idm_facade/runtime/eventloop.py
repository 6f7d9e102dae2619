"""The event loop the servers run on: Twisted's epoll reactor without the legacy log context
around each event."""

from __future__ import annotations

import errno
import logging
import sys
from typing import Any

from twisted.internet.epollreactor import EPollReactor

log = logging.getLogger(__name__)


class DirectReactor(EPollReactor):
    """Twisted's epoll reactor, handing each ready socket straight to its reader or writer.

    The stock ``doPoll`` wraps every event in ``log.callWithLogger``: it asks the connection
    for its log prefix and pushes it as the "system" of Twisted's legacy log context for the
    length of the call. The facade logs through :mod:`logging`, which never reads that
    context, and ``_doReadOrWrite`` itself catches whatever a handler raises and closes that
    connection; the wrapper was about a tenth of a person bind's CPU
    (bench/person_bind_bench.py). Everything else is the stock reactor's.
    """

    def doPoll(self, timeout: float | None) -> None:
        try:
            ready = self._poller.poll(-1 if timeout is None else timeout,
                                      len(self._selectables))
        except OSError as err:
            if err.errno == errno.EINTR:
                return
            raise
        selectables = self._selectables
        handle = self._doReadOrWrite
        for fd, event in ready:
            selectable = selectables.get(fd)
            if selectable is not None:  # closed by an earlier event of this turn
                handle(selectable, fd, event)

    doIteration = doPoll


def install() -> Any:
    """Install :class:`DirectReactor` as the process's reactor and return the reactor in
    use. Called where a server process starts its loop (after ``serve --workers`` forks, so
    no two processes share one epoll set). Should a reactor already be installed (something
    imported ``twisted.internet.reactor`` first), it is kept: a reactor cannot be swapped
    once in use; the warning says so."""
    if "twisted.internet.reactor" in sys.modules:
        from twisted.internet import reactor as installed

        if not isinstance(installed, DirectReactor):
            log.warning("event loop: %s was installed before the server started; "
                        "serving on it", type(installed).__name__)
        return installed
    from twisted.internet.main import installReactor

    direct = DirectReactor()
    installReactor(direct)
    return direct
