"""The Flask application: SCIM 2.0 at ``/scim/v2`` and the role-lookup API at ``/api``.

One catch-all route per prefix dispatches by hand, so every path under ``/scim/v2`` (known or
not, any method) passes the same steps: authenticate the bearer token, answer from ONE
snapshot, write exactly one access record, and only then let the response leave. If the access
log cannot be written the answer is a 500 SCIM error that discloses nothing.

Lists are answered by the client's view (``ClientView.search``: filter, policy, sort, all
inside the directory); this module only pages the ordered result and joins the cached JSON of
each resource. The finished body of a list response is kept per snapshot (an LRU bounded in
bytes, keyed by resource types, the raw query, base URL and policy): a snapshot never
changes, so a repeated query is answered with the same bytes without parsing, searching or
joining again. Cursor pages are not kept (their cursors carry the time they were issued). The
access record is still written for every request, cache hit or not.
"""

from __future__ import annotations

import json
import logging
import threading
from collections import OrderedDict
from functools import lru_cache
from typing import Any
from urllib.parse import parse_qsl

import werkzeug.urls  # noqa: F401 - registers the "werkzeug.url_quote" codec error handler
from flask import Flask, Response, request
from werkzeug.datastructures import ImmutableMultiDict

from idm_facade import metrics
from idm_facade.access.audit.record import CLIENT_KEY, REQUEST_ID_KEY
from idm_facade.access.audit.record import source as audit_source
from idm_facade.access.audit.turnlog import HOLD_KEY
from idm_facade.access.clients import Client, bearer_token
from idm_facade.access.facade import Facade
from idm_facade.config import megabytes
from idm_facade.directory import filters as f
from idm_facade.directory.limits import Limits, TooComplex, TooLong, text_shape
from idm_facade.directory.snapshot import CacheKey
from idm_facade.directory.view import ClientView
from idm_facade.scim import render as render_module
from idm_facade.scim import schema as s
from idm_facade.scim.discovery import Discovery
from idm_facade.scim.errors import (
    SCIM_JSON,
    ScimError,
    invalid_value,
    not_found,
    read_only,
    too_large,
    unauthorized,
)
from idm_facade.scim.filters import sort_attribute, translate
from idm_facade.scim.paging import Pager, PagingConfig, query_digest
from idm_facade.scim.render import render, selection
from schemas.attributes import ACCOUNT

log = logging.getLogger(__name__)

PREFIX = "/scim/v2"
SEARCH_SCHEMA = "urn:ietf:params:scim:api:messages:2.0:SearchRequest"
_LIST_HEAD = '{"schemas":["urn:ietf:params:scim:api:messages:2.0:ListResponse"]'
_RESOURCES = {"users": (s.USER,), "groups": (s.GROUP,)}
_ALL = (s.USER, s.GROUP)
_WRITE_METHODS = {"POST", "PUT", "PATCH", "DELETE"}


_BODY_CACHE_KEY: CacheKey[BodyCache] = CacheKey("scim.bodies")
#: The answer when the request's access record cannot be written: nothing is disclosed.
_LOG_UNAVAILABLE = ScimError(500, "the access log is unavailable: nothing is disclosed")
_LOG_UNAVAILABLE_BODY = json.dumps(_LOG_UNAVAILABLE.body()).encode()
_SCIM_JSON_BYTES = SCIM_JSON.encode()
#: Default byte budget of the per-snapshot list-response cache (``[scim] response_cache_mb``).
DEFAULT_RESPONSE_CACHE_MB = 64
#: Largest SearchRequest body accepted (a filter is limited to 8 KB; the rest is small).
MAX_SEARCH_BODY = 64 * 1024


class Outcome:
    """What one request produced, for the response and the access log."""

    __slots__ = ("body", "status", "headers", "subjects", "sensitive", "query")

    def __init__(self, body: str | bytes | None, status: int = 200,
                 headers: dict[str, str] | None = None) -> None:
        self.body = body
        self.status = status
        self.headers = headers or {}
        # a set while rendering; a sorted tuple when the body came from the cache
        self.subjects: set[str] | tuple[str, ...] = set()
        self.sensitive: set[str] | tuple[str, ...] = set()
        self.query = ""


#: A finished list body: (bytes, sorted subjects, sorted sensitive labels).
_Body = tuple[bytes, tuple[str, ...], tuple[str, ...]]


class BodyCache:
    """LRU of finished list-response bodies for ONE snapshot, bounded in bytes.

    Values are (body bytes, sorted subjects, sorted sensitive labels). Kept with the snapshot
    (``Snapshot.cached``) so it goes away with the snapshot it was computed from.
    """

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._data: OrderedDict[tuple, _Body] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def get(self, key: tuple) -> _Body | None:
        with self._lock:
            found = self._data.get(key)
            if found is not None:
                self._data.move_to_end(key)
            return found

    def put(self, key: tuple, value: _Body) -> None:
        size = len(value[0]) + 64 * len(value[1]) + 256
        if size > self.max_bytes // 4:  # one huge page must not evict everything else
            return
        with self._lock:
            old = self._data.pop(key, None)
            if old is not None:
                self._bytes -= len(old[0]) + 64 * len(old[1]) + 256
            self._data[key] = value
            self._bytes += size
            while self._bytes > self.max_bytes and self._data:
                _, dropped = self._data.popitem(last=False)
                self._bytes -= len(dropped[0]) + 64 * len(dropped[1]) + 256


@lru_cache(maxsize=2048)
def _parse_args(raw: bytes) -> ImmutableMultiDict:
    """``request.args`` exactly as werkzeug parses it, memoised per query string (clients
    repeat the same queries; the result is immutable, so sharing it is safe)."""
    return ImmutableMultiDict(parse_qsl(raw.decode(), keep_blank_values=True,
                                        errors="werkzeug.url_quote"))


def _args(req: Any) -> ImmutableMultiDict:
    return _parse_args(req.query_string)


def _weak_equal(header: str, tag: str) -> bool:
    """RFC 9110 weak comparison against an If-None-Match list."""
    bare = tag[2:] if tag.startswith("W/") else tag
    for candidate in header.split(","):
        candidate = candidate.strip()
        if candidate == "*":
            return True
        if (candidate[2:] if candidate.startswith("W/") else candidate) == bare:
            return True
    return False


class ScimService:
    """The SCIM request handlers of one facade."""

    def __init__(self, facade: Facade) -> None:
        self.facade = facade
        self.paging = PagingConfig.from_config(facade.config.section("scim"))
        self.pager = Pager(self.paging)
        self.discovery = Discovery(self.paging)
        section = facade.config.section("scim")
        self.cache_bytes = megabytes(section, "response_cache_mb",
                                     DEFAULT_RESPONSE_CACHE_MB << 20)
        render_module.configure(megabytes(section, "render_cache_mb",
                                          render_module.RENDER_CACHE_BYTES))
        self._bases: dict[tuple, str] = {}
        self.limits = Limits.from_config(facade.config)
        from idm_facade.access.audit import AccessRecord, AuditUnavailable

        self._record_type = AccessRecord
        self._audit_error = AuditUnavailable

    # ------------------------------------------------------------------ entry point

    def handle(self, path: str, req: Any = None) -> Response:
        """Answer one request under /scim/v2 and record it. ``req`` is the werkzeug request
        (the server's fast lane answers without Flask: :mod:`idm_facade.runtime.fastlane`);
        None means Flask's current request."""
        # The request object itself, once: every ``flask.request.x`` goes through a context
        # proxy, and the hot path (a repeated query) is short enough for that to show.
        if req is None:
            req = request._get_current_object()  # type: ignore[attr-defined]
        environ = req.environ
        method = environ["REQUEST_METHOD"]
        path = path.strip("/")
        client = None
        try:
            token = bearer_token(environ.get("HTTP_AUTHORIZATION"))
            client = self.facade.clients.authenticate_token(token) if token else None
            if client is None:
                metrics.AUTH_FAILURES.labels("scim", "no token" if token is None
                                             else "invalid token").inc()
                raise unauthorized() if token is None else unauthorized(
                    "the bearer token is not valid")
            environ[CLIENT_KEY] = client.name
            outcome = self.dispatch(client, method, path, req)
        except ScimError as exc:
            outcome = Outcome(json.dumps(exc.body()), exc.status, exc.headers)
        except Exception:  # noqa: BLE001 - a bug must not take the answer's audit with it
            log.exception("SCIM request failed: %s %s", method, req.full_path)
            err = ScimError(500, "internal error")
            outcome = Outcome(json.dumps(err.body()), 500)
        query = outcome.query or req.query_string.decode("utf-8", "replace")
        rec = self._record_type(
            client=client.name if client is not None else "-",
            source=audit_source(environ.get("REMOTE_ADDR") or "", environ.get(REQUEST_ID_KEY)),
            operation=f"scim.{method} /{path}",
            query=query, status=str(outcome.status), subjects=sorted(outcome.subjects),
            sensitive=sorted(outcome.sensitive))
        hold = environ.get(HOLD_KEY)
        if hold is not None:
            # The server holds this response until the record is committed in its event
            # loop, and sends this error instead if it cannot be (idm_facade.runtime.http).
            hold(rec, _LOG_UNAVAILABLE_BODY, _SCIM_JSON_BYTES)
        else:
            try:
                self.facade.audit.record(rec)
            except self._audit_error:
                return _LOG_UNAVAILABLE.response()
        response = Response(outcome.body, status=outcome.status, content_type=SCIM_JSON)
        if outcome.headers:
            response.headers.update(outcome.headers)
        return response

    def base(self, req: Any) -> str:
        """``scheme://host/scim/v2`` of this request (werkzeug's host_url, kept per Host)."""
        env = req.environ
        key = (env.get("wsgi.url_scheme"), env.get("HTTP_HOST"), env.get("SERVER_NAME"),
               env.get("SERVER_PORT"))
        found = self._bases.get(key)
        if found is None:
            found = req.host_url.rstrip("/") + PREFIX
            if len(self._bases) >= 256:  # Host is client-chosen: keep the memo bounded
                self._bases.clear()
            self._bases[key] = found
        return found

    # ------------------------------------------------------------------ routing

    def dispatch(self, client: Client, method: str, path: str, req: Any) -> Outcome:
        parts = path.split("/") if path else []
        head = parts[0].lower() if parts else ""
        if method in ("GET", "HEAD"):
            if not parts:
                return self.list(client, _ALL, None, req.query_string, req)
            if head == "serviceproviderconfig" and len(parts) == 1:
                return Outcome(self.discovery.documents(self.base(req))["spc"])
            if head in ("resourcetypes", "schemas") and len(parts) <= 2:
                return self.discovery_doc(head, parts[1] if len(parts) == 2 else None, req)
            if head in _RESOURCES and len(parts) == 1:
                return self.list(client, _RESOURCES[head], None, req.query_string, req)
            if head in _RESOURCES and len(parts) == 2:
                return self.get(client, _RESOURCES[head][0], parts[1], req)
            if head in ("me", "bulk"):
                raise ScimError(501, f"/{parts[0]} is not supported by this service")
            raise not_found(f"no such endpoint: {PREFIX}/{path}")
        if method == "POST" and parts and parts[-1].lower() == ".search":
            if len(parts) == 1:
                return self.search(client, _ALL, req)
            if len(parts) == 2 and head in _RESOURCES:
                return self.search(client, _RESOURCES[head], req)
        if method in _WRITE_METHODS or method == "OPTIONS":
            if head in ("me", "bulk"):
                raise ScimError(501, f"/{parts[0]} is not supported by this service")
            known = (not parts or head in _RESOURCES or head in (
                "serviceproviderconfig", "resourcetypes", "schemas"))
            if not known:
                raise not_found(f"no such endpoint: {PREFIX}/{path}")
            raise read_only(method)
        raise ScimError(405, f"{method} is not supported", headers={"Allow": "GET, HEAD"})

    def discovery_doc(self, head: str, ident: str | None, req: Any) -> Outcome:
        docs = self.discovery.documents(self.base(req))
        if head == "resourcetypes":
            key = "rts" if ident is None else f"rt:{ident.lower()}"
        else:
            key = "schemas" if ident is None else f"schema:{ident.lower()}"
        body = docs.get(key)
        if body is None:
            kind = "resource type" if head == "resourcetypes" else "schema"
            raise not_found(f"no such {kind}: {ident}")
        return Outcome(body)

    # ------------------------------------------------------------------ resources

    def get(self, client: Client, resource: str, ident: str, req: Any) -> Outcome:
        view = ClientView.of(self.facade.directory.snapshot, client.policy)
        entry = view.get(ident)
        if entry is None or (entry.kind == ACCOUNT) != (resource == s.USER):
            raise not_found(f"{resource} {ident} not found")
        args = _args(req)
        sel = selection(args.get("attributes"), args.get("excludedAttributes"))
        base = self.base(req)
        rendered = render(view, entry, base, sel)
        headers = {"ETag": rendered.version,
                   "Location": f"{base}/{s.ENDPOINTS[resource]}/{entry.id}"}
        match = req.environ.get("HTTP_IF_NONE_MATCH")
        if match and _weak_equal(match, rendered.version):
            return Outcome(None, 304, headers)
        outcome = Outcome(rendered.json, 200, headers)
        outcome.subjects = set(rendered.subjects)
        outcome.sensitive = rendered.sensitive
        return outcome

    def search(self, client: Client, resources: tuple[str, ...], req: Any) -> Outcome:
        length = req.content_length
        if length is not None and length > MAX_SEARCH_BODY:
            raise too_large(f"a SearchRequest body is limited to {MAX_SEARCH_BODY} bytes")
        raw = req.get_data(cache=False)
        if len(raw) > MAX_SEARCH_BODY:
            raise too_large(f"a SearchRequest body is limited to {MAX_SEARCH_BODY} bytes")
        try:
            body = json.loads(raw or b"{}")
        except (ValueError, RecursionError):
            raise ScimError(400, "the request body is not JSON (or is nested too deeply)",
                            "invalidSyntax") from None
        if not isinstance(body, dict):
            raise ScimError(400, "the request body must be a SearchRequest object",
                            "invalidSyntax")
        schemas = body.get("schemas")
        if schemas is not None and (not isinstance(schemas, list)
                                    or SEARCH_SCHEMA not in schemas):
            raise ScimError(400, f"a SearchRequest needs schemas [{SEARCH_SCHEMA}]",
                            "invalidSyntax")
        params: dict[str, Any] = {}
        for key in ("filter", "sortBy", "sortOrder", "cursor"):
            if body.get(key) is not None:
                if not isinstance(body[key], str):
                    raise invalid_value(f"{key} must be a string")
                params[key] = body[key]
        for key in ("startIndex", "count"):
            if body.get(key) is not None:
                if isinstance(body[key], bool) or not isinstance(body[key], int):
                    raise invalid_value(f"{key} must be an integer")
                params[key] = body[key]
        for key in ("attributes", "excludedAttributes"):
            value = body.get(key)
            if value:
                if isinstance(value, str):
                    params[key] = value
                elif isinstance(value, list) and all(isinstance(v, str) for v in value):
                    params[key] = ",".join(value)
                else:
                    raise invalid_value(f"{key} must be a list of attribute names")
        query = json.dumps(params, sort_keys=True)
        outcome = self.list(client, resources, params, b"POST " + query.encode(), req)
        outcome.query = query
        return outcome

    def list(self, client: Client, resources: tuple[str, ...], params: Any | None,
             raw: bytes | None, req: Any) -> Outcome:
        """A ListResponse; ``raw`` (the query string or the SearchRequest's canonical JSON)
        keys the snapshot's body cache: the same raw query gives the same parameters.
        ``params`` None means the request's query arguments (parsed only on a cache miss)."""
        view = ClientView.of(self.facade.directory.snapshot, client.policy)
        cache = key = None
        if raw is not None and self.cache_bytes > 0:
            cache = view.cached(_BODY_CACHE_KEY, lambda: BodyCache(self.cache_bytes))
            key = (resources, raw, self.base(req), client.policy)
            hit = cache.get(key)
            if hit is not None:
                outcome = Outcome(hit[0])
                outcome.subjects = hit[1]
                outcome.sensitive = hit[2]
                return outcome
        if params is None:
            params = _args(req)
        outcome = self._list(view, client, resources, params, req)
        if cache is not None and params.get("cursor") is None:
            body = outcome.body.encode() if isinstance(outcome.body, str) else outcome.body
            outcome.body = body
            subjects = tuple(sorted(outcome.subjects))
            outcome.subjects = subjects
            sensitive = tuple(sorted(outcome.sensitive))
            cache.put(key, (body or b"", subjects, sensitive))  # type: ignore[arg-type]
        return outcome

    def _list(self, view: ClientView, client: Client, resources: tuple[str, ...],
              params: Any, req: Any) -> Outcome:
        text = params.get("filter")
        if text not in (None, ""):
            try:
                self.limits.check(*text_shape(str(text)))
            except TooComplex as exc:
                raise ScimError(400, str(exc), "tooMany") from None
        flt = translate(str(text), resources) if text not in (None, "") else f.TRUE
        sort_path = params.get("sortBy")
        sort_by = sort_attribute(str(sort_path), resources) if sort_path else None
        order = str(params.get("sortOrder") or "ascending").lower()
        if order not in ("ascending", "descending"):
            raise invalid_value("sortOrder must be ascending or descending")
        sel = selection(params.get("attributes"), params.get("excludedAttributes"))
        policy = client.policy
        kinds = frozenset().union(*(s.KINDS[r] for r in resources))
        try:
            results = view.search(flt, kinds=kinds, sort_by=sort_by,
                                  descending=order == "descending",
                                  deadline=self.limits.deadline())
        except TooLong:
            raise ScimError(400, f"the search took longer than {self.limits.seconds:g} s; "
                            "narrow the filter", "tooMany") from None
        digest = query_digest(text, resources, sort_by, order, client.name,
                              policy.fingerprint) \
            if params.get("cursor") is not None else ""
        page = self.pager.page(results, params, digest, f"{view.seq}:{view.at.isoformat()}")
        base = self.base(req)
        parts = [_LIST_HEAD, f',"totalResults":{page.total}']
        if not page.cursor_mode:
            parts.append(f',"startIndex":{page.start + 1}')
        parts.append(f',"itemsPerPage":{len(page.items)}')
        if page.next_cursor:
            parts.append(f',"nextCursor":"{page.next_cursor}"')
        if page.previous_cursor:
            parts.append(f',"previousCursor":"{page.previous_cursor}"')
        parts.append(',"Resources":[')
        outcome = Outcome(None)
        texts = []
        subjects: set[str] = set()
        sensitive: set[str] = set()
        for entry in page.items:
            rendered = render(view, entry, base, sel)
            texts.append(rendered.json)
            subjects.update(rendered.subjects)
            sensitive.update(rendered.sensitive)
        outcome.subjects = subjects
        outcome.sensitive = sensitive
        parts.append(",".join(texts))
        parts.append("]}")
        outcome.body = "".join(parts)
        return outcome


def register(app: Flask, facade: Facade) -> ScimService:
    """Add SCIM's routes (everything under /scim/v2) for ``facade`` to ``app``."""
    service = ScimService(facade)
    app.extensions["scim"] = service
    methods = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]

    @app.route(PREFIX, methods=methods, defaults={"path": ""}, strict_slashes=False)
    @app.route(f"{PREFIX}/<path:path>", methods=methods)
    def scim(path: str) -> Response:
        return service.handle(path)

    # The two list endpoints also as plain rules: matching a rule without a converter costs
    # less, and they are the requests clients repeat most. Same handler, same answers.
    for name in ("Users", "Groups"):
        app.add_url_rule(f"{PREFIX}/{name}", f"scim_{name.lower()}",
                         lambda name=name: service.handle(name), methods=methods)
    return service
