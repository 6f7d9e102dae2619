"""``GET /feed/{name}?after=<cursor>&limit=<n>``: a change feed for consumers that poll.

The events are those of RFC 9967 (SCIM Profile for Security Event Tokens) §2.4, served as
plain JSON over this authenticated GET rather than as signed SETs pushed or polled with RFC
8936: the consumer already trusts this endpoint with the same bearer token it reads
``/scim/v2`` with, and a JSON page is what a script can poll. Each event::

    {"cursor": 17, "type": "replace",
     "event": "urn:ietf:params:scim:event:prov:put:full",
     "resourceType": "User", "id": "...", "externalId": "...",
     "time": "2026-03-02T08:00:01Z", "resource": {...}}

``type`` is ``create`` (``prov:create:full``), ``replace`` (``prov:put:full``: the whole
resource as it is now) or ``delete`` (``prov:delete``: the client can no longer read the
entry; only its id). ``resource`` is what ``GET /scim/v2/Users/{id}`` shows the feed's
client, every attribute its policy allows, without ``meta``; its ``$ref`` URLs are those of
the address the feed was read at. The page ends with ``next`` (the
cursor to ask after next time), ``more`` (whether more events are waiting now) and
``latest`` (the newest cursor).

Only the feed's own client may read it (401 without a valid token, 403 with another
client's). A cursor older than the feed keeps (its events were pruned) or newer than any it
gave out is 410 Gone: the consumer reads everything again over SCIM and goes on from
``latest`` in the error body. Every answer writes its access record (the persons the page
discloses, and whether CPR was among them) before it leaves; no record, no answer.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

from flask import Blueprint, Response, jsonify, request

from idm_facade import metrics
from idm_facade.access.audit.record import CLIENT_KEY, REQUEST_ID_KEY
from idm_facade.access.audit.record import source as audit_source
from idm_facade.access.clients import bearer_token
from idm_facade.access.facade import Facade
from idm_facade.feed.settings import Feed, feeds
from schemas.attributes import ENTERPRISE_USER
from store import feed as feed_store

log = logging.getLogger(__name__)

#: RFC 9967 §2.4 event URIs of the feed's event types.
EVENT_URIS = {
    "create": "urn:ietf:params:scim:event:prov:create:full",
    "replace": "urn:ietf:params:scim:event:prov:put:full",
    "delete": "urn:ietf:params:scim:event:prov:delete",
}
FEED_SCHEMA = "urn:idm-facade:params:feed:1.0:Events"
DEFAULT_LIMIT = 100
MAX_LIMIT = 1000


class FeedError(Exception):
    """A request that ends in a JSON error body."""

    def __init__(self, status: int, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status = status
        self.body = {"error": message, "status": status, **extra}


def _int_arg(name: str, default: int, low: int, high: int | None = None) -> int:
    raw = request.args.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise FeedError(400, f"{name} must be an integer, got {raw!r}") from None
    if value < low:
        raise FeedError(400, f"{name} must be at least {low}")
    return min(value, high) if high is not None else value


def _time(value: datetime) -> str:
    return value.replace(microsecond=0).isoformat() + "Z"


#: Where the values of reference attributes point, for their ``$ref`` (RFC 7643 §2.3.7):
#: ``members`` by each element's ``type``.
_REFERENCES = {"groups": "Groups", "members": None}


def _ref(base: str, endpoint: str, element: Any) -> Any:
    if not isinstance(element, dict) or not element.get("value"):
        return element
    return {**element, "$ref": f"{base}/{endpoint}/{element['value']}"}


def with_refs(resource: dict, base: str) -> dict:
    """``resource`` with the ``$ref`` URLs ``/scim/v2`` gives under ``base`` (the reader's
    ``scheme://host/scim/v2``). Events are planned once for every replica and listener, so
    they keep only the ids; each reader gets the URLs of the address it asked at, and a
    resource equal to what SCIM shows it."""
    out = dict(resource)
    for key, endpoint in _REFERENCES.items():
        if isinstance(out.get(key), list):
            out[key] = [_ref(base, endpoint or ("Groups" if isinstance(e, dict) and
                                                e.get("type") == "Group" else "Users"), e)
                        for e in out[key]]
    enterprise = out.get(ENTERPRISE_USER)
    if isinstance(enterprise, dict) and isinstance(enterprise.get("manager"), dict):
        out[ENTERPRISE_USER] = {**enterprise, "manager": _ref(base, "Users", enterprise["manager"])}
    return out


def _event(row: Any, base: str) -> dict[str, Any]:
    event: dict[str, Any] = {"cursor": int(row.cursor), "type": row.type,
                             "event": EVENT_URIS[row.type], "resourceType": row.kind,
                             "id": row.entry_id}
    if row.type != "delete":
        if row.external_id:
            event["externalId"] = row.external_id
    event["time"] = _time(row.at)
    if row.type != "delete":
        event["resource"] = with_refs(row.body, base)
    return event


class FeedService:
    """The feeds of one facade, read from its configuration (again after a reload)."""

    def __init__(self, facade: Facade) -> None:
        self.facade = facade
        self._config: Any = None
        self._feeds: dict[str, Feed] = {}

    def feed(self, name: str) -> Feed | None:
        config = self.facade.config
        if config is not self._config:
            self._feeds = {f.name: f for f in feeds(config)}
            self._config = config
        return self._feeds.get(name)

    def page(self, name: str) -> tuple[dict, list[str], list[str]]:
        """The page of feed ``name`` for this request: (body, subjects, sensitive)."""
        token = bearer_token(request.headers.get("Authorization"))
        client = self.facade.clients.authenticate_token(token) if token else None
        if client is None:
            metrics.AUTH_FAILURES.labels("feed", "no token" if token is None
                                         else "invalid token").inc()
            raise FeedError(401, "a valid bearer token is required")
        request.environ[CLIENT_KEY] = client.name
        feed = self.feed(name)
        if feed is None:
            raise FeedError(404, f"unknown feed: {name}")
        if feed.client != client.name:
            raise FeedError(403, f"client {client.name} may not read feed {name}")
        after = _int_arg("after", 0, 0)
        limit = _int_arg("limit", DEFAULT_LIMIT, 1, MAX_LIMIT)
        with self.facade.directory.engine.connect() as conn:
            head = feed_store.head(conn, name)
            if after < head.pruned:
                raise FeedError(410, f"cursor {after} is older than the events feed {name} "
                                     f"keeps (from {head.pruned}); read everything again "
                                     f"over SCIM, then go on after {head.last}",
                                latest=head.last, oldest=head.pruned)
            if after > head.last:
                raise FeedError(410, f"cursor {after} was never given out by feed {name}; "
                                     f"read everything again over SCIM, then go on after "
                                     f"{head.last}", latest=head.last, oldest=head.pruned)
            rows = feed_store.events(conn, name, after, limit + 1)
        more = len(rows) > limit
        rows = rows[:limit]
        base = request.host_url.rstrip("/") + "/scim/v2"
        subjects: set[str] = set()
        sensitive: set[str] = set()
        for row in rows:
            subjects.update(row.subjects or ())
            sensitive.update(row.sensitive or ())
        body = {"schemas": [FEED_SCHEMA], "feed": name,
                "events": [_event(r, base) for r in rows],
                "next": int(rows[-1].cursor) if rows else after, "more": more,
                "latest": max(head.last, int(rows[-1].cursor) if rows else 0)}
        return body, sorted(subjects), sorted(sensitive)


def blueprint(facade: Facade) -> Blueprint:
    """The ``/feed`` routes of one facade."""
    from idm_facade.access.audit import AccessRecord, AuditUnavailable

    service = FeedService(facade)
    bp = Blueprint("feed", __name__)

    @bp.get("/<name>")
    def read(name: str) -> Response:
        status = 200
        subjects: list[str] = []
        sensitive: list[str] = []
        try:
            body, subjects, sensitive = service.page(name)
        except FeedError as exc:
            status, body = exc.status, exc.body
        except Exception:  # noqa: BLE001 - a bug must not take the answer's record with it
            log.exception("feed request failed: %s", request.full_path)
            status, body = 500, {"error": "internal error", "status": 500}
        try:
            facade.audit.record(AccessRecord(
                client=request.environ.get(CLIENT_KEY) or "-",
                source=audit_source(request.remote_addr or "",
                                    request.environ.get(REQUEST_ID_KEY)),
                operation="feed.read", query=request.full_path.rstrip("?"),
                status=str(status), subjects=subjects, sensitive=sensitive))
        except AuditUnavailable:
            status, body = 500, {"error": "access log unavailable; nothing disclosed",
                                 "status": 500}
        response = jsonify(body)
        response.status_code = status
        if status == 401:
            response.headers["WWW-Authenticate"] = 'Bearer realm="idm-facade"'
        return response

    return bp
