"""The HTTP server: the Flask application in twisted.web, answers held for their record.

The WSGI application runs in a thread pool (``twisted.web.wsgi``). Every SCIM answer needs
its access record committed first. Waiting for that commit in the worker thread costs one
more thread switch per request than serving any Flask request does (a third more on two
cores). With a fast log (:mod:`idm_facade.access.audit.turnlog`) the worker instead hands
the record to the reactor and returns at once; the response's bytes, which twisted.web
writes from the reactor anyway, are held by :class:`HeldRequest` until the record is
committed with the other records of that reactor turn. If the commit fails, the held
response is dropped and a 500 SCIM error goes out instead: no record, no answer.

The application finds the hand-over function in the WSGI environ under :data:`HOLD_KEY`
(absent when the log is not fast: it then calls ``AuditLog.record`` itself). The hand-over
costs the event loop nothing of its own: the worker prepares the record and leaves it on the
request, and the loop takes it up with the response's first write (or its finish, or the
connection's loss), which twisted.web brings to the loop anyway. Every thread switch the loop
saves counts, because the loop is what every request passes.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from collections.abc import Callable
from time import monotonic
from typing import Any

from flask import Flask, Response
from twisted.web.http import HTTPChannel, parse_qs
from twisted.web.http_headers import Headers
from twisted.web.server import NOT_DONE_YET, Request, Site
from twisted.web.wsgi import WSGIResource, _WSGIResponse
from werkzeug.exceptions import HTTPException

from idm_facade import metrics, requestlog
from idm_facade.access.audit.record import CLIENT_KEY, REQUEST_ID_KEY
from idm_facade.access.audit.turnlog import HOLD_KEY, turn_log
from idm_facade.access.facade import Facade
from idm_facade.admin import console as admin_console
from idm_facade.feed import api as feedapi
from idm_facade.roleapi import api as roleapi
from idm_facade.scim import app as scim_app

log = logging.getLogger(__name__)


class HeldRequest(Request):
    """A request whose response bytes can wait in the reactor for an access-log commit."""

    _holding = False
    _failed = False  # the record could not be committed: the error went out instead
    _held: list[bytes]
    _finish_wanted = False
    _error_body: bytes = b""
    _content_type: bytes = b"application/json"
    _turns: Any = None  # the site's TurnLog, set before the application runs
    #: The request's id (its ``X-Request-Id`` if valid, else made up): in the answer's
    #: header, the access record's source and the request log line.
    request_id: str = ""

    # twisted.web parses every query string into ``request.args``, in the event loop that
    # every request passes; a WSGI application reads QUERY_STRING instead and nothing here
    # reads ``args``. So the query is kept aside and parsed only if ``args`` is asked for.
    def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:
        self.__dict__["_t0"] = monotonic()
        IN_FLIGHT[0] += 1
        given = self.requestHeaders.getRawHeaders(b"x-request-id")
        text = given[0].decode("ascii", "replace") if given else ""
        rid = text if REQUEST_ID.fullmatch(text) else os.urandom(6).hex()
        self.__dict__["request_id"] = rid
        self.responseHeaders.setRawHeaders(b"x-request-id", [rid.encode()])
        bare, sep, query = path.partition(b"?")
        if sep:
            self.__dict__["_query"], self.__dict__["_uri"] = query, path
        super().requestReceived(command, bare, version)

    def process(self) -> None:
        uri = self.__dict__.pop("_uri", None)
        if uri is not None:
            self.uri = uri  # the full URI again, for the WSGI environ's QUERY_STRING
        super().process()

    @property  # type: ignore[override]
    def args(self) -> dict[bytes, list[bytes]] | None:
        args = self.__dict__.get("_args")
        query = self.__dict__.pop("_query", None)
        if query is not None and args is not None:
            for key, values in parse_qs(query, 1).items():  # query values first, as twisted
                args[key] = values + args.get(key, [])
        return args

    @args.setter
    def args(self, value: dict[bytes, list[bytes]] | None) -> None:
        self.__dict__["_args"] = value

    def hold_for_record(self, rec: Any, error_body: bytes, content_type: bytes) -> None:
        """The application's hand-over (:data:`HOLD_KEY`; worker thread): leave ``rec``,
        prepared here, for the event loop to take up with the response's first write."""
        pending = (self._turns.audit.prepare(rec), error_body, content_type)
        self.__dict__["_pending"] = pending
        if self._disconnected:
            # The connection is gone: twisted.web may never write or finish this response,
            # and connectionLost may have looked for the record before it was left here.
            # Whoever pops it first (this thread or the loop) hands it over, exactly once.
            mine = self.__dict__.pop("_pending", None)
            if mine is not None:
                self._turns.reactor.callFromThread(self._hold, *mine)

    def _take_pending(self) -> None:
        """Hand a record the application left over to the turn's commit (reactor thread)."""
        pending = self.__dict__.pop("_pending", None)
        if pending is not None:
            self._hold(*pending)

    def _hold(self, row: Any, error_body: bytes, content_type: bytes) -> None:
        """Hold writes and finish until ``row`` is committed (reactor thread)."""
        self._holding, self._held, self._finish_wanted = True, [], False
        self._error_body, self._content_type = error_body, content_type
        self._turns.add(row, self._recorded)

    def write(self, data: bytes) -> None:
        self._take_pending()
        if self._holding:
            self._held.append(data)
        elif not self._failed:
            super().write(data)

    def finish(self) -> None:
        self._take_pending()
        if self._holding:
            self._finish_wanted = True
        elif not (self._failed and (self.finished or self._disconnected)):
            super().finish()

    def connectionLost(self, reason: Any) -> None:
        super().connectionLost(reason)
        self._take_pending()  # nothing goes out, but the request was answered: record it
        if self.__dict__.pop("_t0", None) is not None:
            IN_FLIGHT[0] -= 1  # never finished

    def setResponseCode(self, code: int, message: bytes | None = None) -> None:
        if not self._failed:  # the application's status arrives after the error was sent
            super().setResponseCode(code, message)

    def _recorded(self, error: BaseException | None) -> None:
        held, self._held = self._held, []
        self._holding = False
        if self._disconnected or self.finished:
            return
        if error is not None:
            # Nothing has been sent yet (headers go out with the first write): replace the
            # whole response, and drop whatever the application writes after this.
            super().setResponseCode(500)
            self._failed = True
            self.responseHeaders = Headers()
            self.responseHeaders.setRawHeaders(b"x-request-id",
                                               [self.__dict__["request_id"].encode()])
            self.responseHeaders.setRawHeaders(b"content-type", [self._content_type])
            self.responseHeaders.setRawHeaders(b"content-length",
                                               [str(len(self._error_body)).encode()])
            held = [self._error_body]
        for data in held:
            super().write(data)
        if self._finish_wanted:
            super().finish()


class _Channel(HTTPChannel):
    """twisted.web's HTTP channel, answering requests it cannot take with a JSON error
    instead of closing the connection silently (a line over 16 KB) or with a bare 400, and
    handing the requests its site's fast lane takes (:mod:`fastlane`) to the lane while the
    connection is idle."""

    #: A fast-lane answer is waiting for its record: what arrives meanwhile waits too.
    _fast_busy = False
    _fast_paused = False
    _fast_backlog: list[bytes]

    def dataReceived(self, data: bytes) -> None:
        if self._fast_busy:
            self._fast_backlog.append(data)
            if not self._fast_paused and \
                    sum(map(len, self._fast_backlog)) > self._optimisticEagerReadSize:
                self._fast_paused = True
                transport: Any = self.transport
                transport.pauseProducing()
            return
        lane = getattr(getattr(self, "site", None), "lane", None)
        if lane is not None and not self._handlingRequest and not self.requests \
                and self.line_mode and not self._buffer \
                and getattr(self, "_HTTPChannel__first_line", 0) == 1:
            self.resetTimeout()
            if lane.take(self, data):
                return
        super().dataReceived(data)

    def fast_begin(self) -> None:
        """The lane took a request: hold further input until its answer is out."""
        self._fast_busy, self._fast_backlog = True, []

    def fast_done(self, answer: bytes, close: bool) -> None:
        """Send the lane's answer, then go on with what arrived meanwhile."""
        self._fast_busy = False
        if not self.connected:
            return  # the client went away while the record was committed
        transport: Any = self.transport
        transport.write(answer)
        if close:
            self.loseConnection()
            return
        backlog, self._fast_backlog = b"".join(self._fast_backlog), []
        if self._fast_paused:
            self._fast_paused = False
            transport.resumeProducing()
        if backlog:
            self.dataReceived(backlog)

    def lineLengthExceeded(self, line: bytes) -> None:
        first = getattr(self, "_HTTPChannel__first_line", 0)
        if first:
            self._refuse(414, "URI Too Long", "the request line is longer than 16384 bytes")
        else:
            self._refuse(431, "Request Header Fields Too Large",
                         "a header line is longer than 16384 bytes")

    def _respondToBadRequestAndDisconnect(self) -> None:
        if self._receivedHeaderSize > self.totalHeadersSize:
            self._refuse(431, "Request Header Fields Too Large",
                         f"the request line and headers exceed {self.totalHeadersSize} bytes")
        else:
            self._refuse(400, "Bad Request", "the request is not valid HTTP")

    def _refuse(self, status: int, reason: str, detail: str) -> None:
        body = json.dumps({"error": detail, "status": status}).encode()
        transport: Any = self.transport
        transport.write(b"HTTP/1.1 %d %s\r\nContent-Type: application/json\r\n"
                        b"Content-Length: %d\r\nConnection: close\r\n\r\n"
                        % (status, reason.encode(), len(body)) + body)
        self.loseConnection()


class _Resource(WSGIResource):
    """WSGIResource that gives the application a way to hold its response for a record."""

    def __init__(self, reactor: Any, threadpool: Any, application: Callable,
                 audit: Any) -> None:
        super().__init__(reactor, threadpool, application)
        #: The reactor's TurnLog (None when the log is not fast enough for the event loop).
        self.turns = turn_log(reactor, audit)

    def render(self, request: Request) -> Any:
        if not isinstance(request, HeldRequest):
            return super().render(request)
        # WSGIResource.render, with the hand-over and the request id added to the environ it
        # builds (twisted.web offers no hook for that; its response class is private, the
        # e2e tests cover it).
        response = _WSGIResponse(self._reactor, self._threadpool, self._application, request)
        response.environ[REQUEST_ID_KEY] = request.request_id
        request.__dict__["_environ"] = response.environ
        turns = self.turns
        if turns is not None:
            request._turns = turns
            response.environ[HOLD_KEY] = request.hold_for_record
        response.start()
        return NOT_DONE_YET


def http_site(reactor: Any, app: Any, threads: int, audit: Any = None) -> Site:
    """A twisted.web Site serving a WSGI app from a thread pool started with the reactor;
    with ``audit``, responses can be held for their access record (see the module). A fast
    lane for the most frequent requests can be added (:func:`fastlane.install`)."""
    from twisted.python.threadpool import ThreadPool

    pool = ThreadPool(minthreads=min(4, threads), maxthreads=threads, name="wsgi")
    reactor.callWhenRunning(pool.start)
    reactor.addSystemEventTrigger("after", "shutdown", pool.stop)
    site = Site(_Resource(reactor, pool, app, audit), requestFactory=HeldRequest)
    site.lane = None  # type: ignore[attr-defined]
    site.protocol = _Channel  # type: ignore[assignment]
    site.displayTracebacks = False
    site.log = _request_done  # type: ignore[method-assign,assignment]
    return site


#: HTTP requests received and not yet finished (a drain waits for them); reactor thread only.
IN_FLIGHT = [0]
REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")
_SCIM_RESOURCES = {"Users", "Groups", "Schemas", "ResourceTypes", "ServiceProviderConfig",
                   ".search", "Bulk", "Me"}
_PLAIN = {"/healthz", "/readyz", "/metrics"}


def route_of(path: str) -> tuple[str, str]:
    """(protocol, route) of a request path, with ids left out so the metrics' label values
    stay few: ``/scim/v2/Users/{id}``, ``/api/user/…``."""
    if path.startswith("/scim/v2"):
        parts = path[len("/scim/v2"):].strip("/").split("/")
        resource = parts[0] if parts[0] in _SCIM_RESOURCES else "{other}"
        return "scim", "/scim/v2/" + resource + ("/{id}" if len(parts) > 1 else "")
    if path.startswith("/api/"):
        parts = path.strip("/").split("/")
        return "api", "/".join(["", *parts[:2]]) + ("/…" if len(parts) > 2 else "")
    if path.startswith("/admin"):
        parts = path.strip("/").split("/")
        return "admin", "/".join(["", *parts[:2]]) + ("/…" if len(parts) > 2 else "")
    if path.startswith("/feed/"):
        return "feed", "/feed/{name}"
    return "http", path if path in _PLAIN else "{other}"


def _request_done(request: Request) -> None:
    """twisted.web's per-request log hook: the request metrics and the request log line."""
    started = request.__dict__.pop("_t0", None)
    if started is None:
        return
    IN_FLIGHT[0] -= 1
    path = request.path.decode("utf-8", "replace") if isinstance(request.path, bytes) \
        else str(request.path)
    protocol, route = route_of(path)
    method = request.method.decode("ascii", "replace") if isinstance(request.method, bytes) \
        else str(request.method)
    environ = request.__dict__.get("_environ") or {}
    peer = request.getClientAddress()
    requestlog.done(protocol, f"{method} {route}", request.code, started,
                    request_id=request.__dict__.get("request_id"),
                    peer=getattr(peer, "host", None), client=environ.get(CLIENT_KEY),
                    size=request.sentLength)


def create_app(facade: Facade) -> Flask:
    """The HTTP application of one facade: SCIM at /scim/v2, role lookup at /api, change
    feeds at /feed.

    Assembled here, above both front ends, so neither imports the other."""
    app = Flask("idm_facade")
    app.json.sort_keys = False  # type: ignore[attr-defined]
    scim_app.register(app, facade)
    app.register_blueprint(roleapi.blueprint(facade), url_prefix="/api")
    app.register_blueprint(admin_console.blueprint(facade), url_prefix="/admin")
    app.register_blueprint(feedapi.blueprint(facade), url_prefix="/feed")
    app.register_error_handler(HTTPException, _json_error)
    _health(app, facade)
    return app


def _health(app: Flask, facade: Facade) -> None:
    """``/healthz`` (the process answers), ``/readyz`` (it may answer clients: a snapshot is
    loaded, the access log takes records, the store answered the last look for changes;
    else 503 with the reasons) and ``/metrics`` (Prometheus). No token, and nothing about any
    person, so a load balancer, Kubernetes or Prometheus can probe them.

    While the store is away the last snapshot keeps being served (reads need nothing but
    memory), and ``/readyz`` says 503 with its age so a balancer can prefer a replica that
    is current; when the store returns, the refresh catches up."""

    @app.get("/healthz")
    def healthz() -> Response:
        return Response(json.dumps({"status": "ok"}), mimetype="application/json")

    metrics.sample("directory", metrics.directory_reader(facade.directory, facade.audit))

    @app.get("/readyz")
    def readyz() -> Response:
        directory = facade.directory
        snapshot = directory.snapshot
        problems = []
        audit_problem = getattr(facade.audit, "problem", None)
        if audit_problem:
            problems.append(f"access log: {audit_problem}")
        if directory.store_problem:
            problems.append(f"store: {directory.store_problem}")
        age = max(0.0, time.time() - directory.checked_at)
        body = {"status": "ready" if not problems else "not ready", "problems": problems,
                "snapshot": {"seq": snapshot.seq, "at": snapshot.at.isoformat(),
                             "entries": len(snapshot), "age_seconds": round(age, 3),
                             "build_seconds": round(directory.last_build_seconds, 3)},
                "store": "unreachable" if directory.store_problem else "reachable"}
        return Response(json.dumps(body), status=200 if not problems else 503,
                        mimetype="application/json")

    @app.get("/metrics")
    def prometheus() -> Response:
        body, content_type = metrics.exposition()
        return Response(body, content_type=content_type)


def _json_error(exc: HTTPException) -> Response:
    """Outside /scim/v2 (which answers every path itself), an unknown path or method is a
    JSON error like the role API's own, never Flask's HTML page."""
    status = exc.code or 500
    response = Response(json.dumps({"error": exc.description or exc.name, "status": status}),
                        status=status, mimetype="application/json")
    for key, value in exc.get_headers():
        if key.lower() != "content-type":
            response.headers[key] = value
    return response
