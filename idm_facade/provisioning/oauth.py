"""Access tokens for a target from an OAuth 2.0 authorization server: the client credentials
grant (RFC 6749 §4.4).

Why here and not in a library: the grant is one form POST, and what matters is how it fails.
A token endpoint that is down, slow or refusing must be a retryable failure of that one
target (:class:`TokenUnavailable`, which the SCIM client turns into its ``Retry``: the same
back-off as a 5xx from the target itself), never an exception that ends the worker; and the
client secret must never reach a log line, an error message or ``provisioning status``. So
errors name the token endpoint, the HTTP status and the RFC 6749 §5.2 ``error`` code only,
never a body.

The token is kept until shortly before ``expires_in`` runs out (a tenth of its life, at most
a minute early) and fetched again then; a 401 from the target (a revoked token, a restarted
authorization server) drops it so the next request fetches a new one, once
(:class:`BearerAuth`).
"""

from __future__ import annotations

import base64
import threading
import time
from collections.abc import Generator
from urllib.parse import quote_plus

import httpx

from idm_facade.provisioning.targets import OAuth

#: Assumed lifetime of a token whose response gives no ``expires_in`` (RFC 6749 §5.1 makes
#: it optional): short enough that a rotated token is picked up soon.
DEFAULT_LIFETIME = 300.0
#: Longest the token is dropped ahead of its expiry.
MAX_MARGIN = 60.0


class TokenUnavailable(Exception):
    """The token endpoint gave no token (down, refusing, not answering OAuth); worth trying
    again later."""

    def __init__(self, message: str, after: float | None = None) -> None:
        super().__init__(message)
        self.after = after


def basic_credentials(client_id: str, client_secret: str) -> str:
    """The ``Authorization`` value of RFC 6749 §2.3.1: each part form-encoded first (so a
    ``:`` in an id or secret survives), then HTTP Basic."""
    pair = f"{quote_plus(client_id)}:{quote_plus(client_secret)}"
    return "Basic " + base64.b64encode(pair.encode()).decode("ascii")


class TokenSource:
    """One target's access token: fetched on first use, reused until shortly before it
    expires, fetched again when the target says it is no longer good."""

    def __init__(self, oauth: OAuth, timeout: float, verify: str | bool = True) -> None:
        self.oauth = oauth
        self.http = httpx.Client(timeout=timeout, verify=verify)
        self._lock = threading.Lock()
        self._token: str | None = None
        self._until = 0.0
        #: Tokens fetched so far (``/metrics`` could show it; the tests read it).
        self.fetched = 0

    def close(self) -> None:
        self.http.close()

    def token(self) -> str:
        """A token believed valid now; :class:`TokenUnavailable` when the endpoint gives
        none."""
        with self._lock:
            if self._token is None or time.monotonic() >= self._until:
                self._token, lifetime = self._fetch()
                self._until = time.monotonic() + lifetime - min(MAX_MARGIN, lifetime / 10)
                self.fetched += 1
            return self._token

    def forget(self, token: str) -> None:
        """The target refused ``token``: fetch another next time (unless one already was)."""
        with self._lock:
            if self._token == token:
                self._token = None

    def _fetch(self) -> tuple[str, float]:
        oauth = self.oauth
        form = {"grant_type": "client_credentials"}
        if oauth.scope:
            form["scope"] = oauth.scope
        where = f"token endpoint {oauth.token_url}"
        try:
            response = self.http.post(oauth.token_url, data=form, headers={
                "Authorization": basic_credentials(oauth.client_id, oauth.client_secret),
                "Accept": "application/json"})
        except httpx.HTTPError as exc:
            raise TokenUnavailable(f"{where}: {type(exc).__name__}") from None
        try:
            body = response.json()
        except ValueError:
            body = None
        if response.status_code != 200:
            code = body.get("error") if isinstance(body, dict) else None
            after = response.headers.get("Retry-After")
            raise TokenUnavailable(
                f"{where}: {response.status_code}" + (f" {code}" if code else ""),
                float(after) if after and after.isdigit() else None)
        if not isinstance(body, dict) or not isinstance(body.get("access_token"), str) \
                or str(body.get("token_type", "")).lower() != "bearer":
            raise TokenUnavailable(f"{where}: the answer is not a bearer access token "
                                   f"(RFC 6749 §5.1)")
        try:
            lifetime = float(body.get("expires_in", DEFAULT_LIFETIME))
        except (TypeError, ValueError):
            lifetime = DEFAULT_LIFETIME
        return body["access_token"], max(1.0, lifetime)


class BearerAuth(httpx.Auth):
    """httpx authentication with a :class:`TokenSource`: the current token on every request;
    on a 401 the token is dropped and the request sent once more with a new one."""

    def __init__(self, tokens: TokenSource) -> None:
        self.tokens = tokens

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request,
                                                              httpx.Response, None]:
        token = self.tokens.token()
        request.headers["Authorization"] = f"Bearer {token}"
        response = yield request
        if response.status_code == 401:
            self.tokens.forget(token)
            request.headers["Authorization"] = f"Bearer {self.tokens.token()}"
            yield request
