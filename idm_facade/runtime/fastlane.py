"""The fast lane: the requests clients repeat at every login and before every write, answered
in the event loop straight from the socket's bytes, without twisted.web's request machinery
or Flask's dispatch.

Which requests: GETs of one account's roles (``/api/user/{id}/...``, ``/api/roles/{name}``)
and SCIM point reads of users (by id; ``filter=userName|externalId|id eq "..."``), from a
client whose token was verified recently (verifying a token costs a slow hash, which must not
run in the event loop: the first request of a token takes the ordinary path). They cost a few
dictionary look-ups each, so the cost of serving them is mostly the serving: measured on the
role lookup, twisted.web's request objects and the WSGI environ took about a quarter of the
event loop's time and Flask's dispatch another quarter (``BENCHMARKS.md``, Role lookup).

The lane answers with the very handlers the Flask routes call (``roleapi.api.answer``,
``ScimService.handle``), given a werkzeug request built from the head, so an answer is the
same whichever way it was served (``tests/test_http_inline.py`` compares them). It takes a
request only when that is plainly safe: a complete HTTP/1.1 GET head, alone in the bytes
read (no pipelined request behind it), without a body, with the connection idle. Everything
else, including a request that arrives in two reads, goes to twisted.web as before. The
answer waits for its access record like every other (one commit per reactor turn), and the
connection reads nothing else meanwhile, so answers leave in order.
"""

from __future__ import annotations

import io
import logging
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from time import monotonic
from typing import Any
from urllib.parse import parse_qs, unquote_to_bytes

from twisted.web.http import datetimeToString
from werkzeug.wrappers import Request, Response

from idm_facade import metrics, requestlog
from idm_facade.access.audit.record import CLIENT_KEY, REQUEST_ID_KEY
from idm_facade.access.audit.turnlog import HOLD_KEY, TurnLog
from idm_facade.access.clients import bearer_token
from idm_facade.access.facade import Facade
from idm_facade.roleapi import api as roleapi
from idm_facade.runtime import http

log = logging.getLogger(__name__)
#: Longest request head the lane reads (twisted.web's own limit for all headers).
MAX_HEAD = 16384
#: A SCIM filter the lane takes on ``/scim/v2/Users``: one equality on a unique attribute.
_SCIM_POINT = re.compile(r'\s*(?:userName|externalId|id)\s+eq\s+"(?:[^"\\]|\\.)*"\s*',
                         re.IGNORECASE)
_HEADER_NAME = re.compile(rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+")


@dataclass(frozen=True)
class Route:
    """A path the lane answers: ``pattern`` over the percent-decoded path (its named groups
    are the handler's arguments), ``accepts`` over the raw query string (None: any)."""

    pattern: re.Pattern[str]
    call: Callable[..., Response]
    accepts: Callable[[bytes], bool] | None = None


def _rule(rule: str) -> re.Pattern[str]:
    """A Flask rule (``/user/<user>/roles``) as a pattern with one named group per part."""
    return re.compile(re.sub(r"<(\w+)>", r"(?P<\1>[^/]+)", rule))


def _point_filter(query: bytes) -> bool:
    found = parse_qs(query.decode("latin-1")).get("filter")
    return found is not None and len(found) == 1 and \
        _SCIM_POINT.fullmatch(found[0]) is not None


def routes(app: Any, facade: Facade) -> list[Route]:
    """The lane's routes for the application ``create_app`` built: the role API's
    one-account routes, and SCIM's user by id and point filter. Lists over every account
    (``/api/itsystem/...``, ``/api/read/...``, other SCIM lists, groups with long member
    lists) stay in the worker threads, where a long one cannot hold up LDAP and other
    clients."""
    found = []
    for rule, operation, handler in roleapi.ROUTES:
        if rule.startswith(("/roles/", "/user/")):
            def call(req: Request, operation: str = operation, handler: Any = handler,
                     **args: str) -> Response:
                return roleapi.answer(facade, operation, handler, args, req)
            found.append(Route(_rule("/api" + rule), call))
    scim = app.extensions["scim"]
    found.append(Route(re.compile(r"/scim/v2/Users/(?P<ident>[^/]+)"),
                       lambda req, ident: scim.handle("Users/" + ident, req)))
    found.append(Route(re.compile(r"/scim/v2/Users/?"), lambda req: scim.handle("Users", req),
                       _point_filter))
    return found


class Lane:
    """Takes the requests of :func:`routes` off a connection (see the module)."""

    def __init__(self, routes: list[Route], facade: Facade, turns: TurnLog) -> None:
        self.routes = routes
        self.clients = facade.clients
        self.turns = turns
        self._date = (0, b"")

    def take(self, channel: Any, data: bytes) -> bool:
        """Answer ``data`` if it is one request the lane takes; False leaves it to
        twisted.web (nothing has been consumed)."""
        if not data.startswith(b"GET /") or len(data) > MAX_HEAD:
            return False
        end = data.find(b"\r\n\r\n")
        if end < 0 or end + 4 != len(data):
            return False  # incomplete, or another request behind it
        lines = data[:end].split(b"\r\n")
        first = lines[0].split(b" ")
        if len(first) != 3 or first[2] != b"HTTP/1.1":
            return False
        headers: dict[bytes, bytes] = {}
        for line in lines[1:]:
            name, sep, value = line.partition(b":")
            if not sep or not _HEADER_NAME.fullmatch(name):
                return False  # folded or malformed: twisted.web says what is wrong
            name = name.lower()
            value = value.strip(b" \t")
            headers[name] = headers[name] + b", " + value if name in headers else value
        if b"transfer-encoding" in headers or headers.get(b"content-length", b"0") != b"0" \
                or b"expect" in headers or b"upgrade" in headers:
            return False
        target = first[1]
        raw_path, _, query = target.partition(b"?")
        if b"#" in target:
            return False
        decoded = unquote_to_bytes(raw_path)
        try:
            path = decoded.decode("utf-8")
        except UnicodeDecodeError:
            return False
        for route in self.routes:
            match = route.pattern.fullmatch(path)
            if match is not None:
                break
        else:
            return False
        if route.accepts is not None and not route.accepts(query):
            return False
        if not self._verified(headers):
            return False
        self._answer(channel, route, match.groupdict(), decoded, query, headers)
        return True

    def _verified(self, headers: dict[bytes, bytes]) -> bool:
        given = headers.get(b"authorization")
        token = bearer_token(given.decode("latin-1")) if given is not None else None
        if not token:  # OS2rollekatalog's ApiKey header
            given = headers.get(b"apikey")
            token = given.decode("latin-1").strip() if given else None
        return token is not None and self.clients.verified_recently(token)

    def _answer(self, channel: Any, route: Route, args: dict[str, str], path: bytes,
                query: bytes, headers: dict[bytes, bytes]) -> None:
        started = monotonic()
        http.IN_FLIGHT[0] += 1
        metrics.HTTP_INLINE.inc()
        given = headers.get(b"x-request-id", b"").decode("ascii", "replace")
        rid = given if http.REQUEST_ID.fullmatch(given) else os.urandom(6).hex()
        pending: list[tuple[Any, bytes, bytes]] = []

        def hold(rec: Any, error_body: bytes, content_type: bytes) -> None:
            pending.append((self.turns.audit.prepare(rec), error_body, content_type))

        scheme, remote, local, port = _connection(channel)
        environ: dict[str, Any] = {
            "REQUEST_METHOD": "GET", "SCRIPT_NAME": "", "PATH_INFO": path.decode("latin-1"),
            "QUERY_STRING": query.decode("latin-1"), "SERVER_PROTOCOL": "HTTP/1.1",
            "SERVER_NAME": (headers.get(b"host") or b"").decode("latin-1").rsplit(":", 1)[0]
            or local, "SERVER_PORT": port, "REMOTE_ADDR": remote, "CONTENT_LENGTH": "",
            "wsgi.url_scheme": scheme,
            "wsgi.input": io.BytesIO(), "wsgi.errors": io.StringIO(),
            REQUEST_ID_KEY: rid, HOLD_KEY: hold}
        for field, value in headers.items():
            key = field.decode("latin-1").upper().replace("-", "_")
            if key not in ("CONTENT_TYPE", "CONTENT_LENGTH"):
                key = "HTTP_" + key
            environ[key] = value.decode("latin-1")
        try:
            response = route.call(Request(environ), **args)
        except Exception:  # noqa: BLE001 - the handlers answer their own errors; a last resort
            log.exception("fast lane: request failed: %s", path.decode("utf-8", "replace"))
            pending.clear()
            response = Response(b'{"error":"internal error","status":500}', 500,
                                mimetype="application/json")
        body = response.get_data()
        head = [b"HTTP/1.1 " + response.status.encode("latin-1")]
        for header, text in response.headers.items():
            if header.lower() != "content-length":
                head.append(f"{header}: {text}".encode("latin-1"))
        if response.status_code not in (204, 304):
            head.append(b"Content-Length: %d" % len(body))
        close = b"close" in (option.strip() for option in
                             headers.get(b"connection", b"").lower().split(b","))
        head += [b"X-Request-Id: " + rid.encode(), b"Date: " + self._now()]
        if close:
            head.append(b"Connection: close")
        out = b"\r\n".join(head) + b"\r\n\r\n" + body
        status = response.status_code

        def send(error: BaseException | None) -> None:
            nonlocal out, status
            if error is not None:  # no record, no answer: the error goes out instead
                _, error_body, content_type = pending[0]
                status = 500
                out = b"\r\n".join([
                    b"HTTP/1.1 500 INTERNAL SERVER ERROR", b"Content-Type: " + content_type,
                    b"Content-Length: %d" % len(error_body), b"X-Request-Id: " + rid.encode(),
                    b"Date: " + self._now()]) + b"\r\n\r\n" + error_body
            http.IN_FLIGHT[0] -= 1
            protocol, name = http.route_of(path.decode("utf-8", "replace"))
            client = environ.get(CLIENT_KEY)
            requestlog.done(protocol, f"GET {name}", status, started, request_id=rid,
                            peer=remote or None,
                            client=client if isinstance(client, str) else None, size=len(out))
            channel.fast_done(out, close)

        channel.fast_begin()
        if pending:
            self.turns.add(pending[0][0], send)
        else:
            send(None)

    def _now(self) -> bytes:
        """The Date header's value, worked out once a second."""
        second = int(monotonic())
        if self._date[0] != second:
            self._date = (second, datetimeToString(time.time()))
        return self._date[1]


def _connection(channel: Any) -> tuple[str, str, str, str]:
    """(scheme, peer address, own address, own port) of a connection, worked out once: they
    do not change while it is open (HTTP has no STARTTLS)."""
    found = channel.__dict__.get("_lane_connection")
    if found is None:
        peer, host = channel.transport.getPeer(), channel.transport.getHost()
        found = ("https" if channel.isSecure() else "http", getattr(peer, "host", ""),
                 getattr(host, "host", ""), str(getattr(host, "port", "")))
        channel.__dict__["_lane_connection"] = found
    return found


def install(site: Any, app: Any, facade: Facade) -> None:
    """Give ``site`` (from :func:`http.http_site`) a lane for ``app``'s routes, when its
    access log commits in the event loop (else every request takes the ordinary path)."""
    turns = site.resource.turns
    if turns is not None:
        site.lane = Lane(routes(app, facade), facade, turns)
