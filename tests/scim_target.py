"""scim2-server (PyPI) as a provisioning target the tests and the benchmark start on loopback,
and a forwarding proxy in front of it that answers chosen requests with errors and, given a
token endpoint, lets through only requests with a bearer token that endpoint issued (an
OAuth-protected target)."""

from __future__ import annotations

import http.server
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

TOKEN = "target-token"
SCIM2_SERVER = str(Path(sys.executable).with_name("scim2-server"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Target:
    """scim2-server on a fixed port; stop() and start() again (it forgets everything)."""

    def __init__(self) -> None:
        if not Path(SCIM2_SERVER).exists() and shutil.which("scim2-server") is None:
            pytest.fail("scim2-server is not installed (pip install scim2-server)")
        self.port = _free_port()
        self.proc: subprocess.Popen | None = None
        self.http = httpx.Client(base_url=self.url,
                                 headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.proc = subprocess.Popen([SCIM2_SERVER, "--port", str(self.port), "--bearer-token",
                                      TOKEN], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while True:
            try:
                if self.http.get("/ServiceProviderConfig").status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "scim2-server did not start"
            time.sleep(0.1)

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(timeout=10)
            self.proc = None

    def all(self, kind: str) -> list[dict]:
        found: list[dict] = []
        while True:
            body = self.http.get(f"/{kind}s", params={"startIndex": len(found) + 1,
                                                     "count": 500}).json()
            found += body.get("Resources") or []
            if len(found) >= body["totalResults"] or not body.get("Resources"):
                return found


class Faults(http.server.ThreadingHTTPServer):
    """A forwarding proxy in front of the target that answers the next requests with the
    queued statuses instead (429 with Retry-After, 500), then forwards again. With
    ``tokens`` (a :class:`tests.oauth_server.TokenEndpoint`), a request whose bearer token
    that endpoint did not issue, or has expired or revoked, gets 401."""

    def __init__(self, target: Target, tokens: Any = None) -> None:
        self.target = target
        self.tokens = tokens
        #: One pooled client for forwarding (a connection per request made the proxy the
        #: slowest part of a first sync on a loaded machine).
        self.forward = httpx.Client(timeout=30)
        self.queue: list[int] = []
        self.answered: list[int] = []
        self.lock = threading.Lock()
        super().__init__(("127.0.0.1", 0), _Forward)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Forward(http.server.BaseHTTPRequestHandler):
    server: Faults

    def log_message(self, *args: object) -> None:
        pass

    def _any(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        with self.server.lock:
            fault = self.server.queue.pop(0) if self.server.queue else None
        if fault is not None:
            self.server.answered.append(fault)
            self.send_response(fault)
            if fault == 429:
                self.send_header("Retry-After", "1")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        headers = {k: v for k, v in self.headers.items()
                   if k.lower() in ("authorization", "content-type", "accept")}
        if self.server.tokens is not None:
            given = self.headers.get("Authorization", "")
            if not (given.startswith("Bearer ") and self.server.tokens.valid(given[7:])):
                self.server.answered.append(401)
                self.send_response(401)
                self.send_header("WWW-Authenticate", 'Bearer error="invalid_token"')
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            headers = {k: v for k, v in headers.items() if k.lower() != "authorization"}
            headers["Authorization"] = f"Bearer {TOKEN}"
        response = self.server.forward.request(self.command,
                                               self.server.target.url + self.path,
                                               headers=headers, content=body)
        self.server.answered.append(response.status_code)
        self.send_response(response.status_code)
        self.send_header("Content-Type", response.headers.get("content-type", "text/plain"))
        self.send_header("Content-Length", str(len(response.content)))
        self.end_headers()
        self.wfile.write(response.content)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _any
