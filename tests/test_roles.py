"""Effective roles: one hand-built case per rule of the OS2rollekatalog algorithm, the
``idm-facade roles`` command, and the directory picking up a future-dated assignment when its
clock passes the start with no write."""

from __future__ import annotations

from datetime import timedelta

import pytest
from click.testing import CliRunner
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from idm_facade.cli import main
from idm_facade.directory import Directory
from idm_facade.directory.load import load
from idm_facade.directory.roles import DIRECT, MANAGER, UNIT, effective_roles
from store import models as m
from store.engine import make_engine
from store.validity import utcnow
from tests.orgbuilder import OrgBuilder


@pytest.fixture
def engine(sqlite_url: str) -> Engine:
    return make_engine(sqlite_url)


@pytest.fixture
def org(engine: Engine) -> OrgBuilder:
    return OrgBuilder(engine)


def roles_of(engine: Engine, account: str, at=None) -> dict[str, list]:
    data = load(engine, at or utcnow())
    found: dict[str, list] = {}
    for grant in effective_roles(data, account):
        found.setdefault(grant.role_id, []).append(grant)
    return found


def member(org: OrgBuilder, unit: str, name: str, title: str | None = None, **kw) -> str:
    person = org.person(name, "Testsen")
    engagement = org.engagement(person, unit, title, **kw)
    return org.account(person, name.lower(), engagements=(engagement,))


def test_inherit_on_and_off(engine, org):
    root = org.unit("Root")
    child = org.unit("Child", root)
    inherited = org.job_role("Inherited")
    local = org.job_role("Local")
    org.assign_unit(root, inherited, inherit=True)
    org.assign_unit(root, local, inherit=False)
    at_root = member(org, root, "Rita")
    at_child = member(org, child, "Carl")
    assert set(roles_of(engine, at_root)) == {inherited, local}
    child_roles = roles_of(engine, at_child)
    assert set(child_roles) == {inherited}
    grant = child_roles[inherited][0]
    assert grant.via == UNIT and grant.unit_id == root


def test_title_positive_and_negative(engine, org):
    unit = org.unit("Unit")
    nurse, clerk = org.title("Sygeplejerske"), org.title("Kontorelev")
    only_nurses = org.job_role("OnlyNurses")
    not_nurses = org.job_role("NotNurses")
    org.assign_unit(unit, only_nurses, title_mode="POSITIVE", titles=(nurse,))
    org.assign_unit(unit, not_nurses, title_mode="NEGATIVE", titles=(nurse,))
    a_nurse = member(org, unit, "Nina", nurse)
    a_clerk = member(org, unit, "Karl", clerk)
    assert set(roles_of(engine, a_nurse)) == {only_nurses}
    assert set(roles_of(engine, a_clerk)) == {not_nurses}


def test_excepted_account(engine, org):
    unit = org.unit("Unit")
    role = org.job_role("Everyone")
    kept = member(org, unit, "Kept")
    left_out = member(org, unit, "Leftout")
    org.assign_unit(unit, role, excepted_accounts=(left_out,))
    assert role in roles_of(engine, kept)
    assert role not in roles_of(engine, left_out)


def test_excepted_unit_and_below(engine, org):
    root = org.unit("Root")
    excepted = org.unit("Excepted", root)
    below = org.unit("Below", excepted)
    sibling = org.unit("Sibling", root)
    role = org.job_role("Broad")
    org.assign_unit(root, role, inherit=True, excepted_units=(excepted,))
    assert role in roles_of(engine, member(org, sibling, "Sib"))
    assert role not in roles_of(engine, member(org, excepted, "Exc"))
    assert role not in roles_of(engine, member(org, below, "Bel"))


def test_manager_only(engine, org):
    parent = org.unit("Parent")
    unit = org.unit("Unit", parent)
    boss_role = org.job_role("Boss")
    inherited_boss = org.job_role("InheritedBoss")
    org.assign_unit(unit, boss_role, manager_only=True)
    org.assign_unit(parent, inherited_boss, manager_only=True, inherit=True)
    staff = member(org, unit, "Staff")
    boss_person = org.person("Bo", "Boss")
    boss = org.account(boss_person, "bo")
    org.manager(unit, boss_person)
    assert not roles_of(engine, staff)
    found = roles_of(engine, boss)
    assert set(found) == {boss_role, inherited_boss}
    assert found[boss_role][0].via == MANAGER and found[boss_role][0].unit_id == unit


def test_role_group_expands(engine, org):
    unit = org.unit("Unit")
    first, second = org.job_role("First"), org.job_role("Second")
    group = org.role_group("Bundle", (first, second))
    account = member(org, unit, "Grete")
    org.assign_account(account, group=group)
    found = roles_of(engine, account)
    assert set(found) == {first, second}
    assert all(g.role_group_id == group and g.via == DIRECT for gs in found.values() for g in gs)


def test_do_not_inherit_engagement(engine, org):
    unit = org.unit("Unit")
    unit_role, own_role = org.job_role("UnitRole"), org.job_role("OwnRole")
    org.assign_unit(unit, unit_role)
    account = member(org, unit, "Dora", do_not_inherit=True)
    org.assign_account(account, own_role)
    assert set(roles_of(engine, account)) == {own_role}


def test_future_dated_and_ended(engine, org):
    now = utcnow()
    unit = org.unit("Unit")
    future, ended = org.job_role("Future"), org.job_role("Ended")
    account = member(org, unit, "Frida")
    org.assign_account(account, future, valid_from=now + timedelta(days=10))
    org.assign_account(account, ended, valid_to=now - timedelta(days=1))
    assert set(roles_of(engine, account)) == set()
    assert set(roles_of(engine, account, now + timedelta(days=11))) == {future}
    assert set(roles_of(engine, account, now - timedelta(days=2))) == {ended}


def test_roles_command(engine, org, sqlite_url):
    now = utcnow()
    unit = org.unit("Sundhed")
    role = org.job_role("Journal", identifier="journal-laes")
    later = org.job_role("Later", identifier="later-role")
    account = member(org, unit, "Ulla")
    org.assign_unit(unit, role)
    org.assign_account(account, later, valid_from=now + timedelta(days=3))
    runner = CliRunner()
    result = runner.invoke(main, ["roles", "ULLA", "--explain", "--db", sqlite_url])
    assert result.exit_code == 0, result.output
    assert "journal-laes" in result.output and "via unit Sundhed" in result.output
    assert "later-role" not in result.output
    date = (now + timedelta(days=4)).strftime("%Y-%m-%d")
    result = runner.invoke(main, ["roles", "ulla", "--at", date, "--db", sqlite_url])
    assert result.exit_code == 0, result.output
    assert "later-role" in result.output and "journal-laes" in result.output
    result = runner.invoke(main, ["roles", "nobody", "--db", sqlite_url])
    assert result.exit_code != 0 and "unknown user: nobody" in result.output
    # each disclosure by the command is in the access log, with the account's person
    from idm_facade.access.audit import AuditLog

    audit = AuditLog(make_engine(sqlite_url))
    records = [r for r in audit.query(client="cli") if r.operation == "cli.roles"]
    audit.close()
    assert len(records) == 2 and records[0].source.startswith("cli:")
    with Session(engine) as session:
        person = session.get(m.Account, account).person_id
    assert all(r.subjects == [person] for r in records)


def test_export_is_recorded_as_a_disclosure_of_everyone(tmp_path, engine, org, sqlite_url):
    """``export`` writes every person with their CPR number: one access record lists them all
    and says cpr, before the file is written."""
    member(org, org.unit("Sundhed"), "Vera")
    result = CliRunner().invoke(main, ["export", str(tmp_path / "out.json"), "--db", sqlite_url])
    assert result.exit_code == 0, result.output
    from idm_facade.access.audit import AuditLog

    audit = AuditLog(make_engine(sqlite_url))
    (record,) = [r for r in audit.query(client="cli") if r.operation == "cli.export"]
    audit.close()
    with Session(engine) as session:
        persons = sorted(session.scalars(select(m.Person.id)))
    assert record.subjects == persons


def test_directory_picks_up_future_assignment_without_write(engine, org):
    start = utcnow()
    clock = [start]
    unit = org.unit("Unit")
    role = org.job_role("Monday")
    account = member(org, unit, "Mona")
    org.assign_account(account, role, valid_from=start + timedelta(days=5))
    directory = Directory(engine, clock=lambda: clock[0])
    assert role not in directory.snapshot.get(account).attrs.get("role", ())
    assert directory.refresh() is False
    clock[0] = start + timedelta(days=5, seconds=1)
    assert directory.refresh() is True
    entry = directory.snapshot.get(account)
    assert role in entry.attrs["role"]
    assert [e["value"] for e in entry.complex["roles"]] == [role]


def test_the_command_says_its_version() -> None:
    from importlib.metadata import version

    result = CliRunner().invoke(main, ["--version"])
    assert result.exit_code == 0 and result.output.strip() == \
        f"idm-facade, version {version('idm-facade')}"
