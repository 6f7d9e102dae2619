"""One account's role lookup, and a SCIM point read of users, is answered by the event loop's
fast lane (idm_facade.runtime.fastlane) once its token is verified, and the answer is the
one twisted.web and a worker thread give: same status, headers and body, an access record
each, and no answer without its record.

The first request of a token goes to a worker thread (verifying a token costs a slow hash,
which must not run in the event loop); the later ones take the lane, which
``idm_facade_http_inline_requests`` counts. Lists over every account stay in the threads. The
lane takes only a complete HTTP/1.1 GET head alone in one read: HTTP/1.0, pipelined requests,
a head split over two reads and malformed heads go to twisted.web, so the raw-socket tests
below compare both paths byte for byte and check that answers keep their order on one
connection.
"""

from __future__ import annotations

import json
import re
import socket
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
from sqlalchemy import select

from idm_facade.access.audit import AuditLog, access_log
from store.engine import make_engine
from tests.serving import served_copy


def _inline_count(http: httpx.Client) -> float:
    found = re.search(r"^idm_facade_http_inline_requests_total (\S+)$",
                      http.get("/metrics").text, re.MULTILINE)
    assert found, "the metric is exported"
    return float(found.group(1))


def _records(db: str, query: str) -> list:
    audit = AuditLog(make_engine(db))
    with audit.engine.connect() as conn:
        rows = conn.execute(select(access_log).where(access_log.c.query == query)).all()
    audit.close()
    return rows


def _same(first: httpx.Response, second: httpx.Response) -> None:
    assert (second.status_code, second.content) == (first.status_code, first.content)
    for header in ("content-type", "content-length"):
        assert second.headers.get(header) == first.headers.get(header), header
    assert first.headers["x-request-id"] != second.headers["x-request-id"]


def test_role_lookups_answered_in_the_loop_equal_the_threads(demo_db: str,
                                                             tmp_path: Path) -> None:
    with served_copy(demo_db, tmp_path, "", (("login", "scim", "default"),)) as copy:
        assert copy.serving is not None
        token = copy.secrets["login"]
        http = httpx.Client(base_url=copy.serving.scim_base, timeout=30)
        user = http.get("/scim/v2/Users", params={"count": 1, "attributes": "userName"},
                        headers={"Authorization": f"Bearer {token}"}).json()["Resources"][0]
        name = user["userName"]
        # the SCIM read above verified the token: from here on, lookups are in the loop
        before = _inline_count(http)
        for path in (f"/api/user/{name}/roles", f"/api/roles/{name}",
                     f"/api/user/{name}/rolesAsList?system=", "/api/roles/nobody-here"):
            first = http.get(path, headers={"ApiKey": token})
            second = http.get(path, headers={"Authorization": f"Bearer {token}"})
            _same(first, second)
            assert first.status_code in (200, 404), (path, first.text)
        assert _inline_count(http) == before + 8
        assert len(_records(copy.db, f"/api/user/{name}/roles")) == 2
        assert len(_records(copy.db, "/api/roles/nobody-here")) == 2

        # SCIM point reads of users: by id, and by a filter on userName, externalId or id
        bearer = {"Authorization": f"Bearer {token}"}
        before = _inline_count(http)
        for path, params in ((f"/scim/v2/Users/{user['id']}", {}),
                             ("/scim/v2/Users/no-such-id", {}),
                             ("/scim/v2/Users", {"filter": f'userName eq "{name}"'}),
                             ("/scim/v2/Users", {"filter": f'ID Eq "{user["id"]}"',
                                                 "attributes": "userName"}),
                             ("/scim/v2/Users", {"filter": 'externalId eq "nobody \\"x"'})):
            first = http.get(path, params=params, headers=bearer)
            second = http.get(path, params=params, headers=bearer)
            _same(first, second)
            assert first.status_code in (200, 404), (path, first.text)
        assert _inline_count(http) == before + 10
        found = http.get("/scim/v2/Users", params={"filter": f'userName eq "{name}"'},
                         headers=bearer).json()
        assert [u["id"] for u in found["Resources"]] == [user["id"]]

        # never in the loop: a wrong token (401 as from the threads), lists of every
        # account, groups, other filters and methods
        counted = _inline_count(http)
        wrong = http.get(f"/api/roles/{name}", headers={"ApiKey": token[:-2] + "xx"})
        assert wrong.status_code == 401
        assert http.get("/api/itsystem/all", headers={"ApiKey": token}).status_code == 200
        assert http.post(f"/api/roles/{name}", headers={"ApiKey": token}).status_code == 405
        for params in ([], [("filter", f'userName sw "{name[:2]}"')],
                       [("filter", f'userName eq "{name}" or userName eq "x"')],
                       [("filter", f'userName eq "{name}"'), ("filter", 'userName eq "x"')]):
            assert http.get("/scim/v2/Users", params=params, headers=bearer).status_code \
                in (200, 400)
        assert http.get("/scim/v2/Groups", params={"count": 1},
                        headers=bearer).status_code == 200
        assert _inline_count(http) == counted


def _exchange(base: str, *chunks: bytes, answers: int = 1, pause: float = 0.0
              ) -> tuple[list[tuple[str, dict[str, str], bytes]], bool]:
    """Send ``chunks`` on one connection (``pause`` seconds apart) and read ``answers``
    HTTP responses: [(status line, headers, body)], and whether the server then closed."""
    url = urlsplit(base)
    sock = socket.create_connection((url.hostname, url.port), timeout=10)
    try:
        for number, chunk in enumerate(chunks):
            if number and pause:
                time.sleep(pause)
            sock.sendall(chunk)
        data = b""
        out = []
        while len(out) < answers:
            while b"\r\n\r\n" not in data:
                more = sock.recv(65536)
                assert more, f"connection closed after {len(out)} answers: {data!r}"
                data += more
            head, _, data = data.partition(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            headers = {k.strip().lower(): v.strip() for k, _, v in
                       (line.partition(":") for line in lines[1:])}
            size = int(headers.get("content-length", "0"))
            while len(data) < size:
                more = sock.recv(65536)
                assert more, "connection closed inside a body"
                data += more
            out.append((lines[0], headers, data[:size]))
            data = data[size:]
        sock.settimeout(0.5)
        try:
            closed = sock.recv(1) == b""
        except TimeoutError:
            closed = False
        return out, closed
    finally:
        sock.close()


def _get(path: str, token: str, version: str = "HTTP/1.1", extra: str = "") -> bytes:
    return (f"GET {path} {version}\r\nHost: localhost\r\nAuthorization: Bearer {token}\r\n"
            f"{extra}\r\n").encode()


def test_the_lane_answers_as_twisted_web_does_and_keeps_order(demo_db: str,
                                                              tmp_path: Path) -> None:
    with served_copy(demo_db, tmp_path, "", (("login", "scim", "default"),)) as copy:
        assert copy.serving is not None
        base = copy.serving.scim_base
        token = copy.secrets["login"]
        http = httpx.Client(base_url=base, timeout=30)
        users = http.get("/scim/v2/Users", params={"count": 2, "attributes": "userName"},
                         headers={"Authorization": f"Bearer {token}"}).json()["Resources"]
        name, other = users[0]["userName"], users[1]["userName"]
        paths = [f"/api/user/{name}/roles", f"/api/roles/{other}", "/api/roles/nobody",
                 f"/scim/v2/Users/{users[0]['id']}",
                 f'/scim/v2/Users?filter=userName%20eq%20%22{name}%22&attributes=userName']

        # HTTP/1.0 goes through twisted.web and a worker thread, HTTP/1.1 through the lane:
        # the same answers (Date and the request id aside)
        for path in paths:
            before = _inline_count(http)
            [(status0, head0, body0)], closed0 = _exchange(base, _get(path, token, "HTTP/1.0"))
            assert _inline_count(http) == before and closed0
            [(status1, head1, body1)], closed1 = _exchange(base, _get(path, token))
            assert _inline_count(http) == before + 1 and not closed1
            assert status1.split(" ", 1)[1].upper() == status0.split(" ", 1)[1].upper(), path
            assert body1 == body0, path
            for header in ("content-type", "content-length", "etag", "location"):
                assert head1.get(header) == head0.get(header), (path, header)
            assert head1["x-request-id"] and head1["date"]

        # a conditional read of a user: 304 without a body either way
        etag = _exchange(base, _get(paths[3], token))[0][0][1]["etag"]
        assert etag.startswith('W/"')
        before = _inline_count(http)
        [(status0, _, body0)], _ = _exchange(
            base, _get(paths[3], token, "HTTP/1.0", f"If-None-Match: {etag}\r\n"))
        [(status1, head1, body1)], closed1 = _exchange(
            base, _get(paths[3], token, extra=f"If-None-Match: {etag}\r\n"))
        assert status0.split(" ")[1] == status1.split(" ")[1] == "304"
        assert body0 == body1 == b"" and head1["etag"] == etag and not closed1
        assert _inline_count(http) == before + 1

        # pipelined requests in one read, and a head split over two reads: twisted.web
        # takes them, the answers keep their order; then the lane on the same connection
        before = _inline_count(http)
        answers, _ = _exchange(base, _get(paths[0], token) + _get(paths[1], token),
                               answers=2)
        assert "nameID" in _json(answers[0])
        assert _json(answers[1])["account"]["userName"] == other
        request = _get(paths[1], token)
        answers, _ = _exchange(base, request[:20], request[20:], _get(paths[0], token),
                               answers=2, pause=0.2)
        assert _json(answers[0])["account"]["userName"] == other
        assert "nameID" in _json(answers[1])
        # the lane took the second pipelined request (twisted.web hands it back once the
        # first is answered, the connection idle again) and the last, alone in its read
        assert _inline_count(http) == before + 2

        # a lane answer, then a request for the threads, then the lane, on one connection
        answers, _ = _exchange(base, _get(paths[1], token), _get("/api/itsystem/all", token),
                               _get(paths[2], token), answers=3, pause=0.3)
        assert [a[0].split(" ")[1] for a in answers] == ["200", "200", "404"]
        assert isinstance(_json(answers[1]), list)

        # Connection: close is honoured; a malformed head is twisted.web's 400, and the
        # server goes on
        [(status, head, _)], closed = _exchange(base, _get(paths[1], token,
                                                           extra="Connection: close\r\n"))
        assert status.split(" ")[1] == "200" and closed and head["connection"] == "close"
        [(status, _, _)], closed = _exchange(
            base, _get(paths[1], token, extra="Bad Header Line\r\n"))
        assert status.split(" ")[1] == "400" and closed
        assert http.get(paths[1], headers={"ApiKey": token}).status_code == 200
        assert len(_records(copy.db, f"/api/roles/{other}")) >= 7


def _json(answer: tuple[str, dict[str, str], bytes]) -> Any:
    return json.loads(answer[2])
