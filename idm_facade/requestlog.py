"""One log line per request, and the request metrics, from one call in each front end.

The access log is the record of what was disclosed to whom; this is the operator's view:
each answered request (SCIM, role API, LDAP operation, health probe) gives one line on
standard error, where the log goes, with the protocol, operation, status, duration, peer,
client and the request id, the same id the access record's ``source`` carries and HTTP
answers send back in ``X-Request-Id``. No query strings, filters or bind names: they can
hold personal data, which belongs in the access log only.

``[logging] requests = false`` turns the lines off (the metrics stay); ``format = "json"``
writes every log line of the process as one JSON object.
"""

from __future__ import annotations

import atexit
import json
import logging
import sys
import threading
import time
from collections import deque
from typing import Any

from idm_facade import metrics

_enabled = True
_json = False


class JsonFormatter(logging.Formatter):
    """Every log record as one JSON object per line (``[logging] format = "json"``)."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(), "logger": record.name,
            "message": record.getMessage()}
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            out.update(fields)
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False, default=str)


def configure(config: Any) -> None:
    """Apply ``[logging]``: request lines on or off, text or JSON."""
    global _enabled, _json
    _enabled = config.get("logging", "requests", True) is not False
    fmt = str(config.get("logging", "format", "text")).lower()
    if fmt not in ("text", "json"):
        from idm_facade.config import ConfigError

        raise ConfigError(f"[logging] format must be \"text\" or \"json\", not {fmt!r}")
    _json = fmt == "json"
    if fmt == "json":
        root = logging.getLogger()
        if not root.handlers:
            logging.basicConfig(level=logging.INFO)
        for handler in root.handlers:
            handler.setFormatter(JsonFormatter())


class _Lines:
    """Request lines, formatted and written in batches by a thread of their own: a line goes
    to standard error at most :data:`FLUSH_SECONDS` later. The thread that serves only queues
    the request's fields (a tuple): measured with cached LDAP searches, formatting and
    writing each line there, or waking the writer every few hundred lines, cost a fifth of
    the throughput.

    Going through :mod:`logging` for each line would cost about 35 microseconds a request (a
    LogRecord, a lock, a flush and a write per line), more than half of what a cached LDAP
    search costs in all. And the thread that serves never writes: a standard error nobody
    reads (a full pipe) stalls only the writer thread; lines beyond :data:`MAX_WAITING` are
    dropped and counted (``idm_facade_request_lines_dropped_total``) rather than held or
    waited for."""

    FLUSH_SECONDS = 0.2
    MAX_WAITING = 50_000

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.lines: deque[tuple] = deque()
        self.stream: Any = None
        self._flusher: threading.Thread | None = None
        self._second = -1
        self._stamp = ""

    def stamp(self, now: float) -> str:
        """The time as logging's default format writes it (computed once a second)."""
        second = int(now)
        if second != self._second:
            self._second = second
            self._stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(second))
        return f"{self._stamp},{int((now - second) * 1000):03d}"

    def add(self, item: tuple) -> None:
        """Queue one request's fields; the line is formatted by the writer thread."""
        lines = self.lines
        if len(lines) >= self.MAX_WAITING:
            metrics.REQUEST_LINES_DROPPED.inc()
            return
        lines.append(item)  # deque.append and popleft are atomic: no lock on this path
        if self._flusher is None:
            self._flusher = threading.Thread(target=self._run, name="request-log",
                                             daemon=True)
            self._flusher.start()
            atexit.register(self.flush)

    def flush(self) -> None:
        lines = self.lines
        with self.lock:  # one flusher at a time (the thread, and atexit)
            items = [lines.popleft() for _ in range(len(lines))]
        if items:
            text = "\n".join(map(_format, items)) + "\n"
            stream = self.stream or sys.stderr
            try:
                stream.write(text)
                stream.flush()
            except (OSError, ValueError):
                pass  # a closed or full stream must not fail requests

    def _run(self) -> None:
        while True:
            time.sleep(self.FLUSH_SECONDS)
            self.flush()


_lines = _Lines()

def done(protocol: str, operation: str, status: str | int, started: float, *,
         request_id: str | None = None, peer: str | None = None, client: str | None = None,
         size: int | None = None) -> None:
    """One request answered: count it and, when on, write its line."""
    seconds = time.monotonic() - started
    metrics.REQUESTS.add(protocol, operation, str(status), seconds)
    if not _enabled:
        return
    _lines.add((time.time(), protocol, operation, status, seconds, request_id, peer, client,
                size))


def _format(item: tuple) -> str:
    """One request line (writer thread)."""
    wall, protocol, operation, status, seconds, request_id, peer, client, size = item
    if _json:
        fields: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(wall))
            + f".{int((wall % 1) * 1000):03d}Z", "level": "info",
            "logger": "idm_facade.requests", "protocol": protocol, "operation": operation,
            "status": status, "ms": round(seconds * 1000, 3), "request_id": request_id,
            "peer": peer, "client": client}
        if size is not None:
            fields["bytes"] = size
        return json.dumps(fields, ensure_ascii=False)
    return (f"{_lines.stamp(wall)} INFO request {protocol} {operation} {status} "
            f"{seconds * 1000:.1f}ms {request_id or '-'} peer={peer or '-'} "
            f"client={client or '-'}" + (f" bytes={size}" if size is not None else ""))
