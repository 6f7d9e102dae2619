"""A small OAuth 2.0 authorization server on loopback for the provisioning tests: the token
endpoint of the client credentials grant (RFC 6749 §4.4), standing in for a target's own
authorization server (Entra ID, Keycloak), which the facade does not control either.

It checks HTTP Basic client authentication (RFC 6749 §2.3.1) and ``grant_type``, issues
random bearer tokens that expire after ``expires_in`` seconds, can revoke every token it
issued, and can be stopped and started again on the same port (down, then back)."""

from __future__ import annotations

import base64
import http.server
import json
import secrets
import threading
import time
from urllib.parse import parse_qs, unquote_plus


class TokenEndpoint:
    """The token endpoint at ``url``; ``valid(token)`` is what a resource server asks."""

    def __init__(self, client_id: str, client_secret: str, expires_in: float = 3.0) -> None:
        self.client_id = client_id
        self.client_secret = client_secret
        self.expires_in = expires_in
        self.lock = threading.Lock()
        self.issued: dict[str, float] = {}  # token -> monotonic expiry
        self.grants = 0  # tokens issued
        self.refused = 0  # requests with wrong client credentials or grant
        self.server: http.server.ThreadingHTTPServer | None = None
        self.port = 0
        self.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/token"

    def start(self) -> None:
        server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), _Handler)
        server.endpoint = self  # type: ignore[attr-defined]
        self.port = int(server.server_address[1])
        self.server = server
        threading.Thread(target=server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        """Down: connections to the port are refused until :meth:`start`."""
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None

    def valid(self, token: str) -> bool:
        with self.lock:
            until = self.issued.get(token)
        return until is not None and time.monotonic() < until

    def revoke_all(self) -> None:
        with self.lock:
            self.issued.clear()

    def issue(self) -> str:
        token = secrets.token_urlsafe(24)
        with self.lock:
            self.issued[token] = time.monotonic() + self.expires_in
            self.grants += 1
        return token


class _Handler(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass

    def _answer(self, status: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Cache-Control", "no-store")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        endpoint: TokenEndpoint = self.server.endpoint  # type: ignore[attr-defined]
        length = int(self.headers.get("Content-Length") or 0)
        form = parse_qs(self.rfile.read(length).decode())
        auth = self.headers.get("Authorization", "")
        client = None
        if auth.startswith("Basic "):
            pair = base64.b64decode(auth[6:]).decode()
            user, _, password = pair.partition(":")
            client = (unquote_plus(user), unquote_plus(password))
        if self.path != "/token" or client != (endpoint.client_id, endpoint.client_secret):
            with endpoint.lock:
                endpoint.refused += 1
            self._answer(401, {"error": "invalid_client"})
            return
        if form.get("grant_type") != ["client_credentials"]:
            with endpoint.lock:
                endpoint.refused += 1
            self._answer(400, {"error": "unsupported_grant_type"})
            return
        self._answer(200, {"access_token": endpoint.issue(), "token_type": "Bearer",
                           "expires_in": endpoint.expires_in})
