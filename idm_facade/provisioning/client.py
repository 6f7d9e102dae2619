"""Speaking SCIM 2.0 (RFC 7644) to a target, over httpx.

Why httpx: connection pooling and keep-alive (a first sync is thousands of requests to one
host), timeouts on connect and read, TLS with a CA file; the standard library has none of
these together.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx

from idm_facade.provisioning.oauth import BearerAuth, TokenSource, TokenUnavailable
from idm_facade.provisioning.targets import Target

SCIM_JSON = "application/scim+json"


class Retry(Exception):
    """Worth trying again later: the target is down, busy (429) or failing (5xx)."""

    def __init__(self, message: str, after: float | None = None) -> None:
        super().__init__(message)
        self.after = after


class Refused(Exception):
    """The target refused the request for good (4xx other than 404/409/429)."""


class Conflict(Exception):
    """409: a resource with the same unique value (userName, displayName) exists."""


class Gone(Exception):
    """404: the resource the facade knew is not there (deleted by hand, target reset)."""


def _quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


class ScimClient:
    """One target's SCIM endpoint."""

    def __init__(self, target: Target) -> None:
        headers = {"Accept": SCIM_JSON, "Content-Type": SCIM_JSON}
        verify: str | bool = target.ca_file if target.ca_file else True
        auth: httpx.Auth | None = None
        #: Access tokens from the target's authorization server (None with a fixed token).
        self.tokens: TokenSource | None = None
        if target.oauth is not None:
            self.tokens = TokenSource(target.oauth, target.timeout, verify)
            auth = BearerAuth(self.tokens)
        elif target.token:
            headers["Authorization"] = f"Bearer {target.token}"
        self.http = httpx.Client(base_url=target.url, headers=headers, auth=auth,
                                 timeout=target.timeout, verify=verify)

    def close(self) -> None:
        self.http.close()
        if self.tokens is not None:
            self.tokens.close()

    def _send(self, method: str, path: str, **kw: Any) -> httpx.Response:
        try:
            response = self.http.request(method, path, **kw)
        except httpx.HTTPError as exc:  # refused, reset, timed out, TLS
            raise Retry(f"{method} {path}: {type(exc).__name__}: {exc}") from None
        except TokenUnavailable as exc:  # the target's authorization server is away
            raise Retry(f"{method} {path}: {exc}", exc.after) from None
        status = response.status_code
        if status == 429 or status >= 500:
            after = response.headers.get("Retry-After")
            raise Retry(f"{method} {path}: {status} {response.text[:200]}",
                        float(after) if after and after.isdigit() else None)
        if status == 404:
            raise Gone(f"{method} {path}: 404")
        if status == 409:
            raise Conflict(f"{method} {path}: 409 {response.text[:200]}")
        if status >= 400:
            raise Refused(f"{method} {path}: {status} {response.text[:300]}")
        return response

    def find(self, kind: str, attribute: str, value: str) -> str | None:
        """The target's id of the ``kind`` resource whose ``attribute`` equals ``value``."""
        response = self._send("GET", f"/{kind}s", params={
            "filter": f"{attribute} eq {_quote(value)}", "attributes": "id"})
        found = response.json().get("Resources") or []
        return str(found[0]["id"]) if found else None

    def create(self, kind: str, body: dict) -> str:
        return str(self._send("POST", f"/{kind}s", json=body).json()["id"])

    def replace(self, kind: str, remote_id: str, body: dict) -> None:
        self._send("PUT", f"/{kind}s/{remote_id}", json=body)

    def patch_active(self, kind: str, remote_id: str, active: bool) -> None:
        """Set ``active`` alone (RFC 7644 §3.5.2): how a leaver is disabled."""
        self._send("PATCH", f"/{kind}s/{remote_id}", json={
            "schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"],
            "Operations": [{"op": "replace", "path": "active", "value": active}]})

    def delete(self, kind: str, remote_id: str) -> None:
        try:
            self._send("DELETE", f"/{kind}s/{remote_id}")
        except Gone:
            pass  # already gone: the wanted outcome

    def all(self, kind: str, page: int = 200, attributes: str | None = None
            ) -> Iterator[dict]:
        """Every ``kind`` resource of the target (paged with startIndex), with only
        ``attributes`` (and ``id``) when given."""
        index = 1
        extra = {"attributes": attributes} if attributes else {}
        while True:
            body = self._send("GET", f"/{kind}s", params={
                "startIndex": index, "count": page, **extra}).json()
            resources = body.get("Resources") or []
            yield from resources
            index += len(resources)
            if not resources or index > int(body.get("totalResults", 0)):
                return
