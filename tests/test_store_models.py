"""The store models on SQLite and PostgreSQL: validity queries, change log, constraints.

Each test runs on both engines (the ``db_url`` fixture) because the point of the store is that
the same code behaves the same on the embedded default and on the production database.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest
from sqlalchemy import Engine, func, select
from sqlalchemy.exc import IntegrityError

from store.engine import make_engine, write_session
from store.exchange import username_key
from store.models import (
    Account,
    Change,
    Engagement,
    Facet,
    ItSystem,
    Klasse,
    OrgUnit,
    Person,
)

NOW = datetime(2025, 3, 15)


def _small_org(engine: Engine, actor: str = "tester") -> dict[str, str]:
    """A root with one child unit, a person with a past, a current and a future engagement."""
    with write_session(engine, actor) as session:
        facet = Facet(id="f-title", user_key="engagement_job_function")
        title = Klasse(id="c-teacher", facet=facet, user_key="laerer", name="Lærer")
        root = OrgUnit(id="u-root", user_key="ROOT", name="Birkeå Kommune")
        school = OrgUnit(id="u-school", user_key="SKOLE", name="Egebæk Skole", parent_id="u-root")
        person = Person(id="p-1", given_name="Anne", surname="Jensen", cpr="0101801998")
        session.add_all([facet, title, root, school, person])
        session.flush()
        session.add_all([
            Engagement(id="e-past", person_id="p-1", org_unit_id="u-root",
                       job_function_id="c-teacher", valid_from=NOW - timedelta(days=400),
                       valid_to=NOW - timedelta(days=10)),
            Engagement(id="e-now", person_id="p-1", org_unit_id="u-school",
                       job_function_id="c-teacher", is_primary=True,
                       valid_from=NOW - timedelta(days=10)),
            Engagement(id="e-future", person_id="p-1", org_unit_id="u-root",
                       job_function_id="c-teacher", valid_from=NOW + timedelta(days=30)),
        ])
    return {"person": "p-1", "school": "u-school"}


def test_valid_at_selects_the_facts_in_effect(db_url: str) -> None:
    engine = make_engine(db_url)
    _small_org(engine)
    with engine.connect() as conn:
        def ids_at(at: datetime) -> list[str]:
            query = select(Engagement.id).where(Engagement.valid_at(at)).order_by(Engagement.id)
            return list(conn.scalars(query))

        assert ids_at(NOW) == ["e-now"]
        assert ids_at(NOW - timedelta(days=100)) == ["e-past"]
        # Half-open: the instant valid_to is already outside, valid_from already inside.
        assert ids_at(NOW - timedelta(days=10)) == ["e-now"]
        assert ids_at(NOW + timedelta(days=30)) == ["e-future", "e-now"]
        later = select(Engagement.id).where(Engagement.valid_now_or_later(NOW))
        assert sorted(conn.scalars(later)) == ["e-future", "e-now"]
        children = select(OrgUnit.name).where(OrgUnit.parent_id == "u-root")
        assert list(conn.scalars(children)) == ["Egebæk Skole"]
    engine.dispose()


def test_writes_append_change_log_entries_with_actor(db_url: str) -> None:
    engine = make_engine(db_url)
    _small_org(engine, actor="alice")
    with write_session(engine, "bob") as session:
        unit = session.get(OrgUnit, "u-school")
        unit.name = "Egebæk Skole og SFO"
    with write_session(engine, "carol") as session:
        session.delete(session.get(Engagement, "e-future"))
    with engine.connect() as conn:
        log = conn.execute(select(Change.seq, Change.actor, Change.object_type, Change.object_id,
                                  Change.operation).order_by(Change.seq)).all()
    created = {(row.object_type, row.object_id) for row in log if row.operation == "create"}
    assert ("org_unit", "u-school") in created and ("engagement", "e-now") in created
    assert all(row.actor == "alice" for row in log if row.operation == "create")
    assert [(r.actor, r.object_type, r.object_id) for r in log if r.operation == "update"] == [
        ("bob", "org_unit", "u-school")]
    assert [(r.actor, r.object_id) for r in log if r.operation == "delete"] == [
        ("carol", "e-future")]
    seqs = [row.seq for row in log]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    engine.dispose()


def test_rolled_back_write_leaves_no_change_log_entry(db_url: str) -> None:
    engine = make_engine(db_url)
    _small_org(engine)
    with engine.connect() as conn:
        before = conn.scalar(select(func.count()).select_from(Change))
    with pytest.raises(RuntimeError), write_session(engine, "mallory") as session:
        session.add(OrgUnit(id="u-ghost", user_key="G", name="Ghost", parent_id="u-root"))
        session.flush()  # the change row is written inside the transaction ...
        raise RuntimeError("abort")  # ... and must vanish with it
    with engine.connect() as conn:
        assert conn.scalar(select(func.count()).select_from(Change)) == before
        assert conn.scalar(select(func.count()).where(Change.actor == "mallory")) == 0
        assert conn.scalar(select(func.count()).where(OrgUnit.id == "u-ghost")) == 0
    engine.dispose()


def test_usernames_are_unique_case_insensitively_per_it_system(db_url: str) -> None:
    engine = make_engine(db_url)
    _small_org(engine)
    with write_session(engine) as session:
        session.add_all([ItSystem(id="s-ad", user_key="AD", name="AD", system_type="AD"),
                         ItSystem(id="s-fk", user_key="FK", name="FK")])
        session.flush()
        session.add(Account(id="a-1", username="AnJe", username_key=username_key("AnJe"),
                            it_system_id="s-ad", person_id="p-1"))
        # The same name in another IT system is a different account and allowed.
        session.add(Account(id="a-2", username="anje", username_key=username_key("anje"),
                            it_system_id="s-fk", person_id="p-1"))
    with pytest.raises(IntegrityError), write_session(engine) as session:
        session.add(Account(id="a-3", username="ANJE", username_key=username_key("ANJE"),
                            it_system_id="s-ad", person_id="p-1"))
    with engine.connect() as conn:
        rows = conn.execute(select(Account.id, Account.username).order_by(Account.id)).all()
    assert [tuple(r) for r in rows] == [("a-1", "AnJe"), ("a-2", "anje")]
    engine.dispose()


def test_cpr_length_is_checked_by_the_database(db_url: str) -> None:
    engine = make_engine(db_url)
    with pytest.raises(IntegrityError), write_session(engine) as session:
        session.add(Person(id="p-x", given_name="A", surname="B", cpr="12345"))
    engine.dispose()
