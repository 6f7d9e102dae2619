"""One account's role lookup, and a SCIM point read of users, is answered in the event loop
once its token is verified, and the answer is the one a worker thread gives: same status,
headers and body, an access record each, and no answer without its record.

The first request of a token goes to a worker thread (verifying a token costs a slow hash,
which must not run in the event loop); the later ones are answered in the loop, which
``idm_facade_http_inline_requests`` counts. Lists over every account stay in the threads.
"""

from __future__ import annotations

import re
from pathlib import Path

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
