"""The pull change feed (``[[provisioning.feed]]``, ``GET /feed/{name}``) over real HTTP
against ``idm-facade serve`` on a copy of the S demo store.

A first read gives every entry the client reads over SCIM, as SCIM shows it; paging with
``after`` and ``limit`` walks the same events; a rename gives one ``replace`` of that user, an
account whose engagements all ended a ``replace`` with ``active: false``, an ended account a
``delete`` with only its id; a client without the CPR grant never sees a CPR number in its
feed while one with the grant does; another client's token is refused (403), none or a bad
one too (401); every answer leaves an access record naming the persons it disclosed; a
cursor whose events were pruned, or one never given out, is 410 with the cursor to go on from;
taking the CPR grant away drops the events that showed CPR numbers.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import httpx
from sqlalchemy import select

from idm_facade.access.audit import AuditLog
from store.engine import make_engine
from store.models import Account, Person
from store.validity import utcnow
from tests.serving import StoreCopy, ending_engagements, served_copy

CONFIG = """
[provisioning]
interval = 0.2
[[provisioning.feed]]
name = "plain"
client = "reader"
[[provisioning.feed]]
name = "hr"
client = "hr"
groups = ["unit"]
[[provisioning.feed]]
name = "short"
client = "other"
retention = "2s"
"""
CLIENTS = (("reader", "scim", "default"), ("hr", "scim", "demo-cpr"),
           ("other", "scim", "default"))


ENTERPRISE = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User"


def _http(copy: StoreCopy, token: str | None) -> httpx.Client:
    assert copy.serving is not None and copy.serving.scim_base
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.Client(base_url=copy.serving.scim_base, headers=headers, timeout=60)


def _read_all(http: httpx.Client, name: str, after: int = 0, limit: int = 1000
              ) -> tuple[list[dict], int]:
    """Every event after ``after``, page by page; and the last ``next``."""
    events: list[dict] = []
    while True:
        page = http.get(f"/feed/{name}", params={"after": after, "limit": limit})
        assert page.status_code == 200, page.text
        body = page.json()
        events += body["events"]
        after = body["next"]
        if not body["more"]:
            return events, after


def _wait(check: Callable[[], bool], what: str, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, what
        time.sleep(0.2)


def _first(http: httpx.Client, name: str) -> tuple[list[dict], int]:
    """Once the feed's first plan is in, every event of it."""
    _wait(lambda: http.get(f"/feed/{name}").json().get("latest", 0) > 0,
          f"feed {name} got no events")
    return _read_all(http, name)


def _new_events(http: httpx.Client, name: str, after: int, entry_id: str
                ) -> tuple[list[dict], int]:
    """The events after ``after`` once one names ``entry_id``."""
    found: list[dict] = []

    def arrived() -> bool:
        nonlocal found
        found = _read_all(http, name, after)[0]
        return any(e["id"] == entry_id for e in found)

    _wait(arrived, f"no event for {entry_id} in feed {name}")
    return found, found[-1]["cursor"]


def _single_account_people(copy: StoreCopy, users: list[dict]) -> list[Account]:
    """Active accounts whose person has no other account the client reads (so a change to
    the person shows in exactly one user)."""
    municipal = "urn:idm-facade:params:scim:schemas:extension:municipal:1.0:User"
    people: dict[str, list[str]] = {}
    for user in users:
        people.setdefault(user[municipal]["personId"], []).append(user["id"])
    ids = sorted(found[0] for found in people.values() if len(found) == 1)
    active = {u["id"] for u in users if u.get("active") is True}
    engine = make_engine(copy.db)
    with engine.connect() as conn:
        rows = conn.execute(select(Account).where(Account.id.in_(ids))
                            .order_by(Account.id)).all()
    engine.dispose()
    return [r for r in rows if r.id in active]


def test_feed_over_http(demo_db: str, tmp_path: Path) -> None:
    with served_copy(demo_db, tmp_path, CONFIG, CLIENTS) as copy:
        reader = _http(copy, copy.secrets["reader"])
        hr = _http(copy, copy.secrets["hr"])

        # The first read gives every entry the client reads over SCIM, as SCIM shows it.
        events, cursor = _first(reader, "plain")
        assert [e["cursor"] for e in events] == list(range(1, len(events) + 1))
        assert {e["type"] for e in events} == {"create"}
        assert {e["event"] for e in events} == {"urn:ietf:params:scim:event:prov:create:full"}
        users = reader.get("/scim/v2/Users", params={"count": 5000}).json()["Resources"]
        groups = reader.get("/scim/v2/Groups", params={"count": 5000,
                                                       "attributes": "id"}).json()["Resources"]
        assert sorted(e["id"] for e in events if e["resourceType"] == "User") == \
            sorted(u["id"] for u in users)
        assert sorted(e["id"] for e in events if e["resourceType"] == "Group") == \
            sorted(g["id"] for g in groups)
        by_id = {e["id"]: e for e in events}
        for user in users[:20]:
            resource = by_id[user["id"]]["resource"]
            for key, value in user.items():  # what SCIM shows by default, and the feed
                if key == "meta":               # adds the attributes returned on request
                    continue
                if isinstance(value, dict):
                    for sub, inner in value.items():
                        assert resource[key][sub] == inner, (key, sub)
                else:  # $ref URLs included: those of the address the feed was read at
                    assert resource[key] == value, (user["id"], key)
        managed = next(u for u in users if (u.get(ENTERPRISE) or {}).get("manager"))
        assert by_id[managed["id"]]["resource"][ENTERPRISE]["manager"]["$ref"] == \
            managed[ENTERPRISE]["manager"]["$ref"]
        group = next(g for g in reader.get("/scim/v2/Groups", params={
            "count": 5000, "attributes": "members"}).json()["Resources"] if g.get("members"))
        assert by_id[group["id"]]["resource"]["members"] == group["members"]

        # Paging with after and limit walks the same events.
        page = reader.get("/feed/plain", params={"after": 0, "limit": 7}).json()
        assert [e["cursor"] for e in page["events"]] == list(range(1, 8))
        assert page["next"] == 7 and page["more"] is True
        second = reader.get("/feed/plain", params={"after": page["next"], "limit": 7}).json()
        assert [e["cursor"] for e in second["events"]] == list(range(8, 15))
        assert second["events"] == events[7:14]
        end = reader.get("/feed/plain", params={"after": cursor}).json()
        assert end["events"] == [] and end["more"] is False and end["next"] == cursor

        # CPR: only with the grant.
        hr_events, _ = _first(hr, "hr")
        hr_text = json.dumps(hr_events)
        assert "cprNumber" in hr_text
        assert "cprNumber" not in json.dumps(events)
        assert {e["resourceType"] for e in hr_events if e["resourceType"] == "Group"} \
            and all(e["resource"].get("urn:idm-facade:params:scim:schemas:extension:"
                                      "municipal:1.0:Group", {}).get("kind") == "unit"
                    for e in hr_events if e["resourceType"] == "Group")

        # Another client's token, none, or a bad one.
        refused = reader.get("/feed/hr")
        assert refused.status_code == 403
        assert refused.json()["status"] == 403 and "may not read feed hr" in \
            refused.json()["error"]
        for http in (_http(copy, None), _http(copy, "idmf_nobody_not-a-token")):
            answer = http.get("/feed/plain")
            assert answer.status_code == 401 and answer.json()["status"] == 401
            assert "events" not in answer.json()
        assert reader.get("/feed/nosuch").status_code == 404
        assert reader.get("/feed/plain", params={"after": "x"}).status_code == 400

        # /metrics: how far each feed has got (no token needed, nothing about persons)
        scraped = httpx.get(f"{copy.serving.scim_base}/metrics", timeout=30).text
        latest = re.search(r"^idm_facade_feed_plain_latest (\S+)$", scraped, re.M)
        assert latest and float(latest.group(1)) >= cursor
        assert re.search(r"^idm_facade_feed_plain_oldest 0(\.0)?$", scraped, re.M)

        # A rename: one replace of that user.
        candidates = _single_account_people(copy, users)
        renamed, leaver, ended = candidates[0], candidates[1], candidates[2]

        def rename(session) -> None:
            session.get(Person, renamed.person_id).given_name = "Omdøbt"

        copy.write(rename)
        found, cursor = _new_events(reader, "plain", cursor, renamed.id)
        mine = [e for e in found if e["id"] == renamed.id]
        assert len(mine) == 1 and mine[0]["type"] == "replace"
        assert mine[0]["event"] == "urn:ietf:params:scim:event:prov:put:full"
        assert mine[0]["resource"]["name"]["givenName"] == "Omdøbt"
        assert all(e["type"] == "replace" and e["resourceType"] == "Group"
                   for e in found if e["id"] != renamed.id)

        # A leaver whose engagements all ended: a replace with active false.
        copy.write(ending_engagements(leaver.person_id))
        found, cursor = _new_events(reader, "plain", cursor, leaver.id)
        mine = [e for e in found if e["id"] == leaver.id]
        assert len(mine) == 1 and mine[0]["type"] == "replace"
        assert mine[0]["resource"]["active"] is False

        # An ended account: no longer readable, so a delete with only its id.
        def end_account(session) -> None:
            session.get(Account, ended.id).valid_to = utcnow()

        copy.write(end_account)
        found, cursor = _new_events(reader, "plain", cursor, ended.id)
        mine = [e for e in found if e["id"] == ended.id]
        assert len(mine) == 1 and mine[0]["type"] == "delete"
        assert mine[0]["event"] == "urn:ietf:params:scim:event:prov:delete"
        assert "resource" not in mine[0] and mine[0]["resourceType"] == "User"
        assert reader.get(f"/scim/v2/Users/{ended.id}").status_code == 404

        # Every answer has its access record, naming the persons it disclosed.
        audit = AuditLog(make_engine(copy.db))
        try:
            before = [r for r in audit.query(client="reader") if r.operation == "feed.read"]
            page = reader.get("/feed/plain", params={"after": 0, "limit": 3})
            assert page.status_code == 200
            refused = reader.get("/feed/hr")
            after = [r for r in audit.query(client="reader") if r.operation == "feed.read"]
            assert len(after) == len(before) + 2
            shown = {e["resource"]["urn:idm-facade:params:scim:schemas:extension:"
                                  "municipal:1.0:User"]["personId"]
                     for e in page.json()["events"] if e["resourceType"] == "User"}
            assert shown and shown <= set(after[-2].subjects)
            assert after[-2].status == "200" and after[-1].status == "403"
            assert after[-1].subjects == []
            hr_reads = [r for r in audit.query(client="hr") if r.operation == "feed.read"]
            assert any("cpr" in r.sensitive for r in hr_reads)
            assert not any("cpr" in r.sensitive for r in after)
        finally:
            audit.close()

        # Pruned events: an old cursor is 410 with where to go on from.
        other = _http(copy, copy.secrets["other"])
        _wait(lambda: other.get("/feed/short").status_code == 410,
              "the short feed's events were never pruned", seconds=30)
        gone = other.get("/feed/short", params={"after": 0})
        assert gone.json()["status"] == 410 and "read everything again" in gone.json()["error"]
        latest = gone.json()["latest"]
        assert latest > 0
        assert other.get("/feed/short", params={"after": latest}).status_code == 200
        assert other.get("/feed/short", params={"after": latest + 1000}).status_code == 410
        assert isinstance(datetime.fromisoformat(events[0]["time"].rstrip("Z")), datetime)

        # provisioning status shows how far each feed is.
        exe = str(Path(sys.executable).with_name("idm-facade"))
        status = subprocess.run([exe, "provisioning", "status", "--db", copy.db, "--config",
                                 str(copy.config)], capture_output=True, text=True,
                                timeout=120)
        assert status.returncode == 0, status.stderr
        lines = {line.split()[0]: line.split() for line in status.stdout.splitlines()}
        assert int(lines["plain"][1]) >= cursor and lines["plain"][3] == "reader"
        assert int(lines["short"][2]) > 1  # its first events were pruned

        # The CPR grant taken away: the events that showed CPR numbers are dropped (a
        # reader behind is told to resync), and what follows shows none.
        taken = subprocess.run([exe, "clients", "policy", "hr", "default", "--db", copy.db,
                                "--config", str(copy.config)], capture_output=True, text=True,
                               timeout=120)
        assert taken.returncode == 0, taken.stderr
        _wait(lambda: hr.get("/feed/hr", params={"after": 0}).status_code == 410,
              "the hr feed kept its events after the CPR grant was taken away", seconds=30)
        oldest = hr.get("/feed/hr", params={"after": 0}).json()["oldest"]
        after_change, _ = _read_all(hr, "hr", oldest)
        assert after_change and {e["type"] for e in after_change} <= {"replace", "delete"}
        assert "cprNumber" not in json.dumps(after_change)
