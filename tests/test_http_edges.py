"""HTTP requests the application never sees still get an answer, in JSON.

Once, a header over 16 KB or a 70 KB request line closed the connection without an answer,
and TRACE, unknown methods and unknown ``/api`` paths answered Flask's HTML page. Sent over
raw sockets and httpx to ``idm-facade serve``.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator

import httpx
import pytest

from tests.serving import Serving, served_copy


@pytest.fixture(scope="module")
def served(demo_db, tmp_path_factory) -> Iterator[tuple[Serving, str]]:
    with served_copy(demo_db, tmp_path_factory.mktemp("http-edges"), "",
                     (("edges", "scim", "default"),), ldap=False) as copy:
        assert copy.serving is not None
        yield copy.serving, copy.secrets["edges"]


def _raw(serving: Serving, request: bytes) -> tuple[int, dict]:
    host, port = serving.scim_base.removeprefix("http://").split(":")  # type: ignore[union-attr]
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(request)
        data = b""
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    return status, json.loads(body)


def test_a_request_line_over_16_kb_is_414(served) -> None:
    serving, _ = served
    status, body = _raw(serving, b"GET /scim/v2/Users?filter=" + b"a" * 70_000
                        + b" HTTP/1.1\r\nHost: x\r\n\r\n")
    assert status == 414 and body["status"] == 414


def test_a_header_over_16_kb_is_431(served) -> None:
    serving, _ = served
    status, body = _raw(serving, b"GET /scim/v2/Users HTTP/1.1\r\nHost: x\r\nX-Big: "
                        + b"b" * 20_000 + b"\r\n\r\n")
    assert status == 431 and "16384" in body["error"]
    many = b"".join(b"X-H%d: %s\r\n" % (i, b"c" * 1000) for i in range(20))
    status, body = _raw(serving, b"GET /scim/v2/Users HTTP/1.1\r\nHost: x\r\n" + many
                        + b"\r\n")
    assert status == 431


def test_garbage_is_a_json_400(served) -> None:
    serving, _ = served
    status, body = _raw(serving, b"NOT HTTP AT ALL\r\n\r\n")
    assert status == 400 and body["status"] == 400


@pytest.mark.parametrize("method, path, status", [
    ("TRACE", "/", 405), ("TRACE", "/api/roles/x", 405), ("BREW", "/", 405),
    ("GET", "/", 404), ("GET", "/api/no/such/path", 404), ("DELETE", "/api/roles/x", 405),
])
def test_unknown_paths_and_methods_answer_json(served, method: str, path: str,
                                              status: int) -> None:
    serving, token = served
    response = httpx.request(method, serving.scim_base.removesuffix("/") + path,  # type: ignore[union-attr]
                             headers={"Authorization": f"Bearer {token}"}, timeout=30)
    assert response.status_code in (status, 404, 405, 501), response.text
    assert response.headers["content-type"].startswith("application/json"), response.text
    assert response.json()["status"] == response.status_code
