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


def test_distinct_hosts_and_selections_cannot_grow_the_render_cache(demo_db, tmp_path
                                                                    ) -> None:
    """Rendered SCIM resources are cached per attribute selection and per base URL, which
    comes from the Host header: both the client's choice. Counted by entries, the cache let
    a client grow the server without bound (at M, one 5,000-member group read under 2,000
    Host names grew it from 211 to 2,011 MB). Bounded by bytes (``[scim] render_cache_mb``,
    shown by ``idm_facade_cache_bytes{cache="scim_render"}``), it stays within its bound."""
    with served_copy(demo_db, tmp_path, "[scim]\nrender_cache_mb = 0.25\n",
                     (("edges", "scim", "default"),), ldap=False) as copy:
        assert copy.serving is not None
        base = f"{copy.serving.scim_base}/scim/v2"
        headers = {"Authorization": f"Bearer {copy.secrets['edges']}"}
        with httpx.Client(timeout=30) as client:
            groups = client.get(f"{base}/Groups", headers=headers,
                                params={"count": 1000, "attributes": "members"}).json()
            big = max(groups["Resources"], key=lambda g: len(g.get("members", [])))
            sent = 0
            for i in range(300):
                reply = client.get(f"{base}/Groups/{big['id']}",
                                   headers={**headers, "Host": f"h{i}.example"})
                assert reply.status_code == 200 and f"h{i}.example" in reply.text
                sent += len(reply.content)
            assert sent > 4 * (1 << 20)  # unbounded, the cache would hold several MB
            scrape = client.get(f"{copy.serving.scim_base}/metrics").text
        held = [float(line.rsplit(" ", 1)[1]) for line in scrape.splitlines()
                if line.startswith('idm_facade_cache_bytes{cache="scim_render"}')]
        assert len(held) == 1 and 0 < held[0] <= 0.25 * (1 << 20), held
