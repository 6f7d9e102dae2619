"""Incremental planning gives what planning everything would.

A push target's and a change feed's plan render only the entries that can have changed since
the last plan (:class:`idm_facade.provisioning.desired.Wants`), and compare only those with the
store's record of what the consumer holds (:func:`idm_facade.provisioning.diff.touched`). After
each kind of store change, refreshed incrementally as ``serve`` does, two things must hold:
every kept body equals the body a fresh rendering of the whole snapshot gives (nothing the
change reached was left stale, a member's new name in a feed's group included), and a full
comparison afterwards finds nothing the incremental plan missed.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from idm_facade.directory.view import ClientView
from idm_facade.provisioning import desired
from idm_facade.provisioning.feed import FeedPlanner
from idm_facade.provisioning.outbox import Provisioner
from idm_facade.provisioning.targets import targets
from idm_facade.runtime.serve import build_facade
from schemas.attributes import ACCOUNT, ROLE, UNIT
from store import feed as feed_store
from store.engine import write_session
from store.models import AccountRoleAssignment, OrgUnit, Person
from store.outbox import outbox_item
from tests.serving import copy_store, ending_engagements

_CONFIG = """
[[provisioning.target]]
name = "saas"
url = "http://127.0.0.1:9/scim/v2"
token = "not-used"
groups = ["role", "unit"]

[[provisioning.feed]]
name = "changes"
client = "reader"
groups = ["role", "unit"]
"""


@pytest.fixture()
def planners(demo_db: str, tmp_path: Path) -> Any:
    """A facade over a private copy of the demo store, with one target's provisioner and
    one feed's planner (nothing is sent: only planned)."""
    db = copy_store(demo_db, tmp_path / "idm.db")
    config = tmp_path / "idm-facade.toml"
    config.write_text(_CONFIG)
    facade = build_facade(db, str(config))
    facade.clients.add("reader", "scim", "default")
    (target,) = targets(facade.config)
    from idm_facade.feed.settings import feeds

    (feed,) = feeds(facade.config)
    push = Provisioner(facade.directory.engine, facade, target)
    pull = FeedPlanner(facade.directory.engine, facade, feed)
    yield facade, push, pull
    push.close()
    facade.directory.engine.dispose()


def _digests(items: dict[str, desired.Wanted]) -> dict[str, str]:
    return {entry_id: item.digest for entry_id, item in items.items()}


def _check(facade: Any, push: Provisioner, pull: FeedPlanner) -> tuple[int, int]:
    """Plan both incrementally; assert they agree with a plan of everything."""
    snapshot = facade.directory.snapshot
    queued, appended = push.plan(snapshot), pull.plan(snapshot)
    kept_push, kept_feed = push.wanted(snapshot), pull._wants.of(
        ClientView.of(snapshot, pull.policy()), desired.users_filter(None), pull.feed.groups)
    fresh_push = desired.pushed().of(push.view(snapshot), desired.users_filter(None),
                                     push.target.groups)
    fresh_feed = desired.read().of(ClientView.of(snapshot, pull.policy()),
                                   desired.users_filter(None), pull.feed.groups)
    assert _digests(kept_push) == _digests(fresh_push)
    assert _digests(kept_feed) == _digests(fresh_feed)
    # a full comparison finds nothing more to queue or append
    with facade.directory.engine.connect() as conn:
        before = {(r.entry_id, r.action, r.digest) for r in conn.execute(
            select(outbox_item).where(outbox_item.c.target == "saas"))}
        last = feed_store.head(conn, "changes").last
    push.forget()
    pull.forget()
    assert push.plan(snapshot) == 0
    assert pull.plan(snapshot) == 0
    with facade.directory.engine.connect() as conn:
        after = {(r.entry_id, r.action, r.digest) for r in conn.execute(
            select(outbox_item).where(outbox_item.c.target == "saas"))}
        assert feed_store.head(conn, "changes").last == last
    assert after == before
    return queued, appended


def _write(facade: Any, change: Callable[[Any], None]) -> None:
    with write_session(facade.directory.engine, actor="test") as session:
        change(session)
    assert facade.directory.refresh()
    assert facade.directory.snapshot.origin is not None, "refreshed incrementally"


def test_incremental_plans_equal_full_plans(planners: Any) -> None:
    facade, push, pull = planners
    queued, appended = _check(facade, push, pull)
    assert queued > 100 and appended > 100  # the first plan: everything
    # from the snapshot: accounts in the directory, a role someone does not hold yet
    live = facade.directory.snapshot.live()
    managed = next(e for e in live if e.kind == ACCOUNT and e.attrs.get("manager"))
    manager = facade.directory.snapshot.get(managed.attrs["manager"][0])
    someone = next(e for e in live if e.kind == ACCOUNT and e is not manager
                   and e.attrs.get("memberOf"))
    role_id = next(e.id for e in live if e.kind == ROLE
                   and someone.id not in e.attrs.get("member", ()))
    unit = next(e.id for e in live if e.kind == UNIT)

    def person(entry: Any) -> str:
        return str(entry.attrs["personId"][0])

    def rename(person_id: str, name: str) -> Callable[[Any], None]:
        def change(session: Any) -> None:
            session.get(Person, person_id).given_name = name
        return change

    def grant(session: Any) -> None:
        from datetime import datetime

        session.add(AccountRoleAssignment(account_id=someone.id, job_role_id=role_id,
                                          valid_from=datetime(2000, 1, 1)))

    def rename_unit(session: Any) -> None:
        session.get(OrgUnit, unit).name = "Omdøbt enhed"

    steps = [("a person renamed", rename(person(someone), "Omdøbt")),
             ("a manager renamed", rename(person(manager), "Chefen")),
             ("a role granted", grant),
             ("a unit renamed", rename_unit),
             ("a leaver", ending_engagements(person(someone)))]
    for what, change in steps:
        _write(facade, change)
        queued, appended = _check(facade, push, pull)
        assert queued >= 1 and appended >= 1, what
