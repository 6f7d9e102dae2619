"""``idm-facade serve --workers N``: several facade processes behind the same ports (pre-fork).

One facade process is one Python interpreter, so its reactor thread is bound to one core. To use
more cores on one machine without an external load balancer, the parent process binds the
listening sockets (HTTP, LDAP, LDAPS) itself and forks N workers. Each worker builds its own
:class:`~idm_facade.access.facade.Facade` *after* the fork (directory, client registry and access
log, so no database connection or thread is ever shared between processes) and adopts the
inherited listening sockets with ``reactor.adoptStreamPort``. The kernel hands each new
connection to whichever worker accepts it first. Every worker's directory refreshes itself from
the store's change log, so a write becomes visible through all of them; the access log is one
hash chain that several writers may share (its writer locks the chain per batch).

The parent runs no reactor and opens no database: it binds, forks, announces the ports once
every worker is serving, and supervises. SIGTERM/SIGINT (drain) and SIGHUP (reload) are
forwarded to the workers, which act on them as a single ``serve`` does
(:mod:`idm_facade.runtime.lifecycle`); a worker that dies unexpectedly is restarted after a
short back-off; if workers keep dying before they are ready, the parent stops them all and
exits non-zero, since restarting cannot fix a bad database URL or configuration.

Per-process state that a client may carry from one request to the next must not depend on the
worker: the SCIM cursor key (``[scim] cursor_secret``) is generated once in the parent when the
configuration does not set one, and shared by the workers. LDAP paged-results cookies live on
a connection, which stays with one worker.
"""

from __future__ import annotations

import logging
import os
import secrets
import select
import signal
import socket
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from idm_facade.access.facade import Facade

log = logging.getLogger(__name__)

#: Listen backlog of the shared sockets (the kernel caps it at net.core.somaxconn).
BACKLOG = 1024
#: Consecutive workers dying before they are ready after which the parent gives up.
MAX_START_FAILURES = 3
#: Restart back-off: doubles with each death in the last minute, up to the maximum.
BACKOFF_BASE = 0.5
BACKOFF_MAX = 10.0
#: How long workers get to finish after SIGTERM before they are killed.
STOP_GRACE = 15.0


@dataclass
class Sockets:
    """The listening sockets the parent binds and every worker adopts."""

    host: str
    family: int
    http: socket.socket
    ldap: socket.socket | None = None
    ldaps: socket.socket | None = None

    @classmethod
    def bind(cls, host: str, scim_port: int, ldap_port: int | None,
             ldaps_port: int | None) -> Sockets:
        """Bind and listen on every requested port (0 = a free port); OSError on failure."""
        family, _, _, _, address = socket.getaddrinfo(
            host, 0, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
        opened: list[socket.socket] = []

        def listen(port: int | None) -> socket.socket | None:
            if port is None:
                return None
            sock = socket.socket(family, socket.SOCK_STREAM)
            opened.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((address[0], port, *address[2:]))
            sock.listen(BACKLOG)
            sock.setblocking(False)  # the reactor expects it; no worker may block in accept
            sock.set_inheritable(True)
            return sock

        try:
            return cls(host, family, listen(scim_port),  # type: ignore[arg-type]
                       listen(ldap_port), listen(ldaps_port))
        except BaseException:
            for sock in opened:
                sock.close()
            raise

    @property
    def http_port(self) -> int:
        return int(self.http.getsockname()[1])

    @property
    def ldap_ports(self) -> list[int]:
        return [int(s.getsockname()[1]) for s in (self.ldap, self.ldaps) if s is not None]

    def adopt_http(self, reactor: Any, site: Any) -> Any:
        """Serve ``site`` on the shared HTTP socket (in a worker)."""
        return reactor.adoptStreamPort(self.http.fileno(), self.family, site)

    def adopt_ldap(self, reactor: Any, facade: Facade) -> list[Any]:
        """Serve LDAP (and LDAPS) on the shared sockets (in a worker)."""
        from idm_facade.ldap import server as ldap_server

        plain, secure = ldap_server.factories(
            reactor, facade, self.ldap is not None, self.ldaps is not None)
        ports = []
        if plain is not None and self.ldap is not None:
            ports.append(reactor.adoptStreamPort(self.ldap.fileno(), self.family, plain))
        if secure is not None and self.ldaps is not None:
            ports.append(reactor.adoptStreamPort(self.ldaps.fileno(), self.family, secure))
        return ports

    def close(self) -> None:
        for sock in (self.http, self.ldap, self.ldaps):
            if sock is not None:
                sock.close()


@dataclass
class _Slot:
    """One worker position: the process currently filling it and its history."""

    index: int
    pid: int | None = None
    ready: bool = False
    started: float = 0.0
    restart_at: float | None = None
    deaths: list[float] = field(default_factory=list)


class Supervisor:
    """Forks the workers, announces when they all serve, restarts the ones that die."""

    def __init__(self, count: int, sockets: Sockets, work: Callable[[Sockets, int], None],
                 announce: Callable[[Sockets], None]) -> None:
        self.count = count
        self.sockets = sockets
        self.work = work  # runs in the child: serve until stopped (never returns normally)
        self.announce = announce
        self.slots = [_Slot(i) for i in range(count)]
        self.stopping = False
        self.start_failures = 0
        self.announced = False
        self._ready_r, self._ready_w = os.pipe()
        self._buffer = b""

    # ------------------------------------------------------------------ child side

    def _fork(self, slot: _Slot) -> None:
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:  # the worker
            code = 1
            try:
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                signal.signal(signal.SIGINT, signal.SIG_DFL)
                signal.signal(signal.SIGHUP, signal.SIG_IGN)  # until serving installs its own
                _die_with_parent()
                os.close(self._ready_r)
                self.work(self.sockets, self._ready_w)
                code = 0
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else 1
            except BaseException:  # noqa: BLE001 - report, then leave without parent cleanup
                traceback.print_exc()
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        slot.pid, slot.ready, slot.started, slot.restart_at = pid, False, time.monotonic(), None
        log.info("worker %d started (pid %d)", slot.index, pid)

    # ------------------------------------------------------------------ parent side

    def _on_signal(self, signum: int, _frame: Any) -> None:
        if not self.stopping:
            log.info("received %s: stopping the workers", signal.Signals(signum).name)
        self.stopping = True
        self._signal_all(signal.SIGTERM)

    def _on_hup(self, _signum: int, _frame: Any) -> None:
        log.info("received SIGHUP: passing it on to the workers")
        self._signal_all(signal.SIGHUP)

    def _signal_all(self, signum: int) -> None:
        for slot in self.slots:
            if slot.pid is not None:
                try:
                    os.kill(slot.pid, signum)
                except ProcessLookupError:
                    pass

    def _read_ready(self, timeout: float) -> None:
        """Mark workers ready as they report (each writes its pid and a newline)."""
        try:
            readable, _, _ = select.select([self._ready_r], [], [], timeout)
        except InterruptedError:
            return
        if not readable:
            return
        self._buffer += os.read(self._ready_r, 4096)
        *lines, self._buffer = self._buffer.split(b"\n")
        for line in lines:
            pid = int(line)
            for slot in self.slots:
                if slot.pid == pid and not slot.ready:
                    slot.ready = True
                    self.start_failures = 0
                    log.info("worker %d ready (pid %d)", slot.index, pid)

    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            slot = next((s for s in self.slots if s.pid == pid), None)
            if slot is None:
                continue
            slot.pid = None
            if self.stopping:
                continue
            now = time.monotonic()
            slot.deaths = [t for t in slot.deaths if now - t < 60] + [now]
            delay = min(BACKOFF_MAX, BACKOFF_BASE * 2 ** (len(slot.deaths) - 1))
            how = _describe(status)
            if not slot.ready:
                self.start_failures += 1
                log.error("worker %d (pid %d) %s before it was ready (%d in a row)",
                          slot.index, pid, how, self.start_failures)
            else:
                log.error("worker %d (pid %d) %s after %.0f s; restarting in %.1f s",
                          slot.index, pid, how, now - slot.started, delay)
            slot.ready = False
            slot.restart_at = now + delay

    def run(self) -> int:
        """Supervise until stopped; 0 after a requested stop, 1 when workers cannot start."""
        previous = {s: signal.signal(s, self._on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
        previous[signal.SIGHUP] = signal.signal(signal.SIGHUP, self._on_hup)
        try:
            for slot in self.slots:
                self._fork(slot)
            while not self.stopping:
                self._read_ready(0.2)
                self._reap()
                if self.start_failures >= MAX_START_FAILURES:
                    log.error("workers keep dying at start: giving up")
                    self.stopping = True
                    self._signal_all(signal.SIGTERM)
                    break
                if not self.announced and all(s.ready for s in self.slots):
                    self.announced = True
                    self.announce(self.sockets)
                now = time.monotonic()
                for slot in self.slots:
                    if slot.pid is None and slot.restart_at is not None \
                            and now >= slot.restart_at and not self.stopping:
                        self._fork(slot)
            self._wait_all()
            return 1 if self.start_failures >= MAX_START_FAILURES else 0
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
            os.close(self._ready_r)
            os.close(self._ready_w)

    def _wait_all(self) -> None:
        """Wait for every worker after SIGTERM; kill the ones still running after the grace."""
        deadline = time.monotonic() + STOP_GRACE
        while any(s.pid is not None for s in self.slots):
            self._reap()
            if time.monotonic() >= deadline:
                log.error("workers still running %.0f s after SIGTERM: killing them",
                          STOP_GRACE)
                self._signal_all(signal.SIGKILL)
                deadline = float("inf")
            time.sleep(0.05)


def _describe(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"was killed by {signal.Signals(os.WTERMSIG(status)).name}"
    return f"exited with status {os.waitstatus_to_exitcode(status)}"


def _die_with_parent() -> None:
    """Ask Linux to send SIGTERM to this worker if the parent dies (no orphaned workers)."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, int(signal.SIGTERM))  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() == 1:  # the parent died before prctl took effect
        os.kill(os.getpid(), signal.SIGTERM)


def serve_workers(count: int, db: str | None, config_path: str | None, host: str,
                  scim_port: int, ldap_port: int | None, ldaps_port: int | None,
                  threads: int) -> int:
    """Bind the ports, fork ``count`` workers and supervise them; returns the exit status.

    Raises OSError when a port cannot be bound and the serve module's ``LdapUnavailable``
    when LDAP was asked for but is not installed (both before any worker starts).
    """
    from idm_facade.config import load_config
    from idm_facade.runtime import serve

    config = load_config(config_path)
    if ldap_port is not None or ldaps_port is not None:
        try:
            from idm_facade.ldap import tls
        except ImportError as exc:
            raise serve.LdapUnavailable(
                f"LDAP was requested (--ldap-port/--ldaps-port) but the LDAP server is not "
                f"available in this installation: {exc}") from exc
        tls.certificate_paths(config)  # a self-signed certificate is made once, not per worker
    cursor_secret = config.get("scim", "cursor_secret") or secrets.token_urlsafe(32)
    sockets = Sockets.bind(host, scim_port, ldap_port, ldaps_port)

    def work(sockets: Sockets, ready_fd: int) -> None:
        for handler in logging.getLogger().handlers:
            handler.setFormatter(logging.Formatter(
                "%(asctime)s %(levelname)s [worker %(process)d] %(message)s"))
        facade = serve.build_facade(db, config_path)  # database connections open here
        facade.config.raw.setdefault("scim", {})["cursor_secret"] = cursor_secret

        def ready(_listening: serve.Listening) -> None:
            from twisted.internet import reactor

            reactor.callWhenRunning(os.write, ready_fd, b"%d\n" % os.getpid())

        serve.run(facade, host, sockets.http_port, ldap_port, ldaps_port, threads,
                  announce=ready, sockets=sockets)

    def announce(sockets: Sockets) -> None:
        serve.announce_listening(serve.Listening(host, sockets.http_port, sockets.ldap_ports))
        log.info("serving with %d workers", count)

    try:
        return Supervisor(count, sockets, work, announce).run()
    finally:
        sockets.close()
