"""The demo municipality: deterministic, synthetic, and shaped like the real thing.

Other components' tests lean on the demo data having vacant managers, SECRET addresses,
multi-engagement people, excepted and title-filtered role assignments and changes dated next
week, so those properties are asserted here rather than assumed there.
"""

from __future__ import annotations

import re
import time
import uuid
from collections import Counter
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Select, func, select

from store import demo, exchange
from store.cpr import birth_date, is_male
from store.engine import make_engine
from store.models import Account, Engagement, Manager, OrgUnit, Person
from store.names import FEMALE_NAMES, MALE_NAMES

REF = datetime(2025, 3, 15)


@pytest.fixture(scope="module")
def small() -> dict[str, Any]:
    return demo.generate("S", seed=1, reference=REF)


def _by_id(doc: dict[str, Any], table: str) -> dict[str, dict[str, Any]]:
    return {obj["id"]: obj for obj in doc[table]}


def _classes(doc: dict[str, Any], facet: str) -> dict[str, dict[str, Any]]:
    """Classes of one facet by user_key."""
    facet_id = next(f["id"] for f in doc["facets"] if f["user_key"] == facet)
    return {c["user_key"]: c for c in doc["classes"] if c["facet_id"] == facet_id}


def _at(text: str) -> datetime:
    return datetime.fromisoformat(text.removesuffix("Z"))


# --------------------------------------------------------------------------- determinism


def test_same_seed_same_bytes_different_seed_different() -> None:
    one = exchange.dumps(demo.generate("S", seed=11, reference=REF))
    assert exchange.dumps(demo.generate("S", seed=11, reference=REF)) == one
    other = exchange.dumps(demo.generate("S", seed=12, reference=REF))
    assert other != one
    later = exchange.dumps(demo.generate("S", seed=11, reference=REF + timedelta(days=1)))
    assert later != one


_DATE = re.compile(r"\d{4}-\d{2}-\d{2}(T[0-9:.]+Z?)?")


def _undated(doc: dict[str, Any]) -> dict[str, list[str]]:
    """The document with every date (and the CPR numbers, which encode a birth date) left
    out: what is left must not depend on the reference day."""
    return {key: [_DATE.sub("D", repr(sorted((k, v) for k, v in row.items() if k != "cpr")))
                  for row in rows]
            for key, rows in doc.items() if isinstance(rows, list)}


@pytest.mark.parametrize("days", [1, 2, 31, 183, 400, -95])
def test_the_municipality_is_the_same_on_every_reference_day(
        small: dict[str, Any], days: int) -> None:
    """Tests build the demo for the day they run and pick people, accounts and units from
    it; if the reference day changed who is who, a test could pass today and fail next week
    (the suite must pass with the clock moved by months). Only dates may move."""
    other = demo.generate("S", seed=1, reference=REF + timedelta(days=days))
    assert _undated(other) == _undated(small)
    assert [p["cpr"] for p in other["persons"]] != [p["cpr"] for p in small["persons"]]


def test_same_seed_gives_identical_exports(sqlite_url: str, tmp_path: Path) -> None:
    exports = []
    for url in (sqlite_url, f"sqlite:///{tmp_path / 'twin.db'}"):
        engine = make_engine(url)
        exchange.import_document(engine, demo.generate("S", seed=4, reference=REF))
        exports.append(exchange.dumps(exchange.export_document(engine)).encode())
        engine.dispose()
    assert exports[0] == exports[1]


@pytest.mark.parametrize("seed", range(1, 41))
def test_every_seed_passes_import_validation(seed: int) -> None:
    """Rare branches (a new hire's assignment, a leaver's second engagement) only show up
    for some seeds; validation catches any fact the generator dates inconsistently."""
    exchange.validate(demo.generate("S", seed=seed, reference=REF + timedelta(days=seed * 17)))


def test_unknown_size_is_refused() -> None:
    with pytest.raises(ValueError, match="XXL"):
        demo.generate("XXL")


# --------------------------------------------------------------------------- shape


def test_small_counts(small: dict[str, Any]) -> None:
    counts = demo.counts(small)
    assert counts["persons"] == demo.SIZES["S"] == 300
    assert counts["organisation"] == 1
    assert 20 <= counts["org_units"] <= 60  # about one unit per ten persons
    assert counts["engagements"] > counts["persons"]
    assert counts["accounts"] >= 2 * counts["persons"] - 10  # AD + FK-Org for (nearly) all
    exchange.validate(small)  # the generator's output passes the importer's checks


def test_organisation_and_classification(small: dict[str, Any]) -> None:
    org = small["organisation"][0]
    assert org["name"].endswith(" Kommune") and org["kombit_domain"]
    weights = (2, 7, 6, 5, 4, 3, 2, 1)
    assert len(org["cvr"]) == 8 and sum(w * int(d) for w, d in zip(weights, org["cvr"],
                                                                  strict=True)) % 11 == 0
    facets = {f["user_key"] for f in small["facets"]}
    assert {"org_unit_type", "org_unit_level", "org_unit_hierarchy", "engagement_job_function",
            "engagement_type", "primary_type", "association_type", "trade_union",
            "manager_type", "manager_level", "responsibility", "leave_type", "visibility",
            "employee_address_type", "org_unit_address_type", "kle_number",
            "kle_aspect"} <= facets
    titles = _classes(small, "engagement_job_function")
    assert 35 <= len(titles) <= 60
    assert {c["name"] for c in titles.values() if c["sensitive"]} >= {"Flexjob"}
    assert {c["scope"] for c in _classes(small, "visibility").values()} == {
        "PUBLIC", "INTERNAL", "SECRET"}
    unit_scopes = {c["scope"] for c in _classes(small, "org_unit_address_type").values()}
    assert {"EMAIL", "PHONE", "DAR", "EAN", "PNUMBER", "WWW", "TEXT"} <= unit_scopes
    kle = _classes(small, "kle_number")
    topics = [c for key, c in kle.items() if re.fullmatch(r"\d\d\.\d\d\.\d\d", key)]
    assert len(topics) >= 100
    assert all("syntetisk" in c["name"] and c["parent_id"] in _by_id(small, "classes")
               for c in topics)
    assert set(_classes(small, "kle_aspect")) == {"UDFOERENDE", "ANSVARLIG", "INDSIGT"}


def test_persons_are_synthetic_and_consistent(small: dict[str, Any]) -> None:
    persons = small["persons"]
    cprs = [p["cpr"] for p in persons]
    assert len(set(cprs)) == len(cprs)
    for person in persons:
        cpr = person["cpr"]
        born = birth_date(cpr)  # raises on an impossible date
        age_days = (REF.date() - born).days
        assert 18 * 365 <= age_days <= 67 * 365
        first = person["given_name"].split()[0]
        male = first in MALE_NAMES
        assert male != (first in FEMALE_NAMES)
        assert is_male(cpr) == male
        assert cpr[8:] == demo.SYNTHETIC_CPR_SUFFIX["male" if male else "female"]
        weights = (4, 3, 2, 7, 6, 5, 4, 3, 2, 1)
        assert sum(w * int(d) for w, d in zip(weights, cpr, strict=True)) % 11 != 0


def _engagements_by_person(doc: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    grouped: dict[str, list[dict[str, Any]]] = {p["id"]: [] for p in doc["persons"]}
    for engagement in doc["engagements"]:
        grouped[engagement["person_id"]].append(engagement)
    return grouped


def test_engagements(small: dict[str, Any]) -> None:
    grouped = _engagements_by_person(small)
    assert all(sum(e["is_primary"] for e in engs) == 1 for engs in grouped.values())
    numbers = [e["user_key"] for e in small["engagements"]]
    assert len(set(numbers)) == len(numbers) and all(n.isdigit() for n in numbers)
    assert all(0 < e["fraction"] <= 1_000_000 for e in small["engagements"])
    assert any(e["do_not_inherit"] for e in small["engagements"])
    units = _by_id(small, "org_units")
    for engagement in small["engagements"]:
        assert _at(engagement["valid_from"]) >= _at(units[engagement["org_unit_id"]]
                                                     ["valid_from"])
    ref_iso = REF.isoformat() + "Z"
    assert any(e["valid_from"] > ref_iso for e in small["engagements"])  # starts next month
    next_week = (REF + timedelta(days=7)).isoformat() + "Z"
    assert any(e["valid_to"] == next_week for e in small["engagements"])  # ends next week
    assert any(e["valid_to"] and e["valid_to"] < ref_iso for e in small["engagements"])  # past
    assert small["leaves"] and all(
        _at(lv["valid_from"]) > _at(_by_id(small, "engagements")[lv["engagement_id"]]
                                    ["valid_from"]) for lv in small["leaves"])


def test_hierarchies(small: dict[str, Any]) -> None:
    units = _by_id(small, "org_units")
    roots = [u for u in units.values() if u["parent_id"] is None]
    assert sorted(u["name"] for u in roots) == ["Birkeå Kommune", "Hoved-MED",
                                                "Lønorganisation"]
    levels = {c["id"]: key for key, c in _classes(small, "org_unit_level").items()}
    payroll_root = next(u for u in roots if u["name"] == "Lønorganisation")
    payroll = [u for u in units.values() if u["parent_id"] == payroll_root["id"]]
    assert payroll and all(levels[u["unit_level_id"]].startswith("NY") for u in payroll)
    assert any(levels[u["unit_level_id"]] == "Afdelings-niveau" for u in units.values())
    for link in small["related_units"]:
        assert units[link["unit_a_id"]]["name"] == units[link["unit_b_id"]]["name"]
    assert {u["role_level"] for u in units.values()} >= {1, 2, 3, 4}
    assert any(u["inherit_kle"] for u in units.values())
    ref_iso = REF.isoformat() + "Z"
    assert any(u["valid_from"] > ref_iso for u in units.values())  # opens next month


def test_managers_and_associations(small: dict[str, Any]) -> None:
    line_root = next(u for u in small["org_units"] if u["name"] == "Birkeå Kommune")
    children: dict[str, list[str]] = {}
    for unit in small["org_units"]:
        children.setdefault(unit["parent_id"], []).append(unit["id"])
    line, stack = set(), [line_root["id"]]
    while stack:
        node = stack.pop()
        line.add(node)
        stack.extend(children.get(node, []))
    per_unit = Counter(m["org_unit_id"] for m in small["managers"])
    assert set(per_unit) == line and set(per_unit.values()) == {1}
    assert all(m["responsibility_ids"] for m in small["managers"])
    assert any(m["person_id"] is None for m in small["managers"])  # some vacancies
    grouped = _engagements_by_person(small)
    for manager in small["managers"]:
        if manager["person_id"]:  # a manager is engaged in the unit she manages
            assert manager["org_unit_id"] in {e["org_unit_id"]
                                              for e in grouped[manager["person_id"]]}
    types = {c["id"]: key for key, c in _classes(small, "association_type").items()}
    kinds = {types[a["association_type_id"]] for a in small["associations"]}
    assert {"lr-formand", "tr", "amr"} <= kinds
    assert any(a["trade_union_id"] for a in small["associations"])


def test_accounts_and_addresses(small: dict[str, Any]) -> None:
    systems = {s["user_key"]: s for s in small["it_systems"]}
    assert systems["AD"]["system_type"] == "AD"
    assert {"KOMBIT", "SAML"} <= {s["system_type"] for s in systems.values()}
    ad = [a for a in small["accounts"] if a["it_system_id"] == systems["AD"]["id"]]
    keys = [a["username"].lower() for a in ad]
    assert len(set(keys)) == len(keys)
    assert all(re.fullmatch(r"[a-z]{4}\d*", a["username"]) for a in ad)
    assert {a["person_id"] for a in ad} == {p["id"] for p in small["persons"]} - {
        p for p, engs in _engagements_by_person(small).items()
        if all(e["valid_to"] and e["valid_to"] <= REF.isoformat() + "Z" for e in engs)}
    fk = [a for a in small["accounts"] if a["it_system_id"] == systems["FK-Organisation"]["id"]]
    assert len(fk) == len({a["person_id"] for a in ad})
    assert all(uuid.UUID(a["external_id"]).version == 4 for a in fk)
    engagements = _by_id(small, "engagements")
    for account in small["accounts"]:
        assert account["engagement_ids"]
        assert all(engagements[e]["person_id"] == account["person_id"]
                   for e in account["engagement_ids"])
    vis = {c["id"]: c["scope"] for c in _classes(small, "visibility").values()}
    person_vis = Counter(vis[a["visibility_id"]] for a in small["addresses"] if a["person_id"])
    assert person_vis["PUBLIC"] + person_vis["INTERNAL"] > 10 * person_vis["SECRET"] > 0
    unit_types = {c["id"]: c["scope"] for c in _classes(small, "org_unit_address_type").values()}
    unit_scopes = {unit_types[a["address_type_id"]] for a in small["addresses"]
                   if a["org_unit_id"]}
    assert {"EMAIL", "PHONE", "EAN", "PNUMBER", "DAR", "TEXT"} <= unit_scopes
    assert any(a["account_id"] for a in small["addresses"])


def test_kle_and_role_catalogue(small: dict[str, Any]) -> None:
    aspects = {c["id"]: key for key, c in _classes(small, "kle_aspect").items()}
    responsible = Counter(k["kle_number_id"] for k in small["kles"]
                          if "ANSVARLIG" in {aspects[a] for a in k["aspect_ids"]})
    assert responsible and max(responsible.values()) == 1  # one responsible unit per number
    domain = small["organisation"][0]["kombit_domain"]
    pattern = re.compile(rf"http://{re.escape(domain)}/roles/usersystemrole/[a-z0-9-]+/1")
    kombit = {s["id"] for s in small["it_systems"] if s["system_type"] in ("KOMBIT", "SAML")}
    assert all(pattern.fullmatch(r["identifier"]) for r in small["system_roles"]
               if r["it_system_id"] in kombit)
    constraints = {(c["constraint_type"], c["constraint_value_type"])
                   for j in small["job_roles"] for c in j["system_roles"] if c["constraint_type"]}
    assert ("http://sts.kombit.dk/constraints/KLE/1", "INHERITED") in constraints
    org_types = {v for t, v in constraints if t == "http://sts.kombit.dk/constraints/orgenhed/1"}
    assert org_types == {"INHERITED", "EXTENDED_INHERITED", "LEVEL_2",
                         "INHERITED_FROM_MANAGER_ROLE", "EXTENDED_INHERITED_FROM_MANAGER_ROLE",
                         "INHERITED_FROM_FUNCTIONS", "EXTENDED_INHERITED_FROM_FUNCTIONS",
                         "SELECTED_INHERITED", "POSTPONED"}
    kle_types = {v for t, v in constraints if t == "http://sts.kombit.dk/constraints/KLE/1"}
    assert kle_types == {"INHERITED", "EXTENDED_INHERITED", "READ_AND_WRITE", "POSTPONED"}
    assert all(2 <= len(g["job_role_ids"]) for g in small["role_groups"])


def test_rollekatalog_extras(small: dict[str, Any]) -> None:
    """Each OS2rollekatalog feature the role API serves appears in the S demo: registered
    constraint identifiers (and a few links without, for the made-up fallback), person KLE,
    manager substitutes, a delegated role held by accounts, an access-blocked system."""
    links = [c for j in small["job_roles"] for c in j["system_roles"] if c["constraint_type"]]
    named = [c for c in links if c.get("constraint_identifier")]
    assert named and len(named) < len(links)
    assert all(c["constraint_identifier"].endswith("/1/parametric") for c in named)
    assert small["person_kles"] and small["manager_substitutes"]
    delegated = [j for j in small["job_roles"] if j.get("delegated_from_cvr")]
    assert len(delegated) == 1 and len(delegated[0]["delegated_from_cvr"]) == 8
    assert any(a["job_role_id"] == delegated[0]["id"]
               for a in small["account_role_assignments"])
    blocked = [s for s in small["it_systems"] if s.get("access_blocked")]
    assert len(blocked) == 1 and blocked[0]["system_type"] == "SAML"
    assert any(j["it_system_id"] == blocked[0]["id"] for j in small["job_roles"])


def test_postponed_constraints_and_weights(small: dict[str, Any]) -> None:
    """The role with POSTPONED constraints (OS2rollekatalog's ``allowPostponing``) is held
    directly by a few accounts, each assignment with its own values; one account holds it
    twice, one assignment lacks the KLE value; one system role of its system weighs 2."""
    (role,) = [j for j in small["job_roles"] if j.get("allow_postponing")]
    postponed = {(c["system_role_id"], c["constraint_type"]) for c in role["system_roles"]
                 if c["constraint_value_type"] == "POSTPONED"}
    assert len(postponed) == 2
    assignments = {a["id"]: a for a in small["account_role_assignments"]
                   if a["job_role_id"] == role["id"]}
    values = small["postponed_constraints"]
    assert values and {v["assignment_id"] for v in values} == set(assignments)
    assert all((v["system_role_id"], v["constraint_type"]) in postponed and v["value"]
               for v in values)
    per_assignment = Counter(v["assignment_id"] for v in values)
    assert sorted(per_assignment.values()).count(1) == 1
    holders = Counter(a["account_id"] for a in assignments.values())
    assert max(holders.values()) == 2
    weights = {r.get("weight", 1) for r in small["system_roles"]
               if r["it_system_id"] == role["it_system_id"]}
    assert weights == {1, 2}


def test_role_assignments_cover_every_rule(small: dict[str, Any]) -> None:
    rows = small["unit_role_assignments"]
    assert {r["title_mode"] for r in rows} == {"NONE", "POSITIVE", "NEGATIVE"}
    assert all(r["title_ids"] for r in rows if r["title_mode"] != "NONE")
    assert any(r["excepted_account_ids"] for r in rows)
    assert any(r["excepted_unit_ids"] for r in rows)
    assert any(r["manager_only"] for r in rows)
    assert {r["inherit"] for r in rows} == {True, False}
    assert any(r["role_group_id"] for r in rows) and any(r["job_role_id"] for r in rows)
    ref_iso = REF.isoformat() + "Z"
    assert any(r["valid_from"] > ref_iso for r in rows)
    assert any(r["valid_to"] == (REF + timedelta(days=7)).isoformat() + "Z" for r in rows)
    units = _by_id(small, "org_units")
    for row in rows:  # an excepted unit lies below the assignment's unit
        for excepted in row["excepted_unit_ids"]:
            assert units[excepted]["parent_id"] == row["org_unit_id"]
    assert small["account_role_assignments"]


# --------------------------------------------------------------------------- in the store


def test_demo_in_the_store(db_url: str, small: dict[str, Any]) -> None:
    engine = make_engine(db_url)
    exchange.import_document(engine, small, actor="demo-data")
    with engine.connect() as conn:
        def count(query: Select) -> int:
            return conn.scalar(select(func.count()).select_from(query.subquery()))

        assert count(select(Person.id)) == 300
        now_units = count(select(OrgUnit.id).where(OrgUnit.valid_at(REF)))
        later_units = count(select(OrgUnit.id).where(OrgUnit.valid_at(REF + timedelta(days=60))))
        assert later_units == now_units + 1
        now = count(select(Engagement.id).where(Engagement.valid_at(REF)))
        week = count(select(Engagement.id).where(Engagement.valid_at(REF + timedelta(days=8))))
        month = count(select(Engagement.id).where(Engagement.valid_at(REF + timedelta(days=60))))
        assert now != week and week < month  # leavers go next week, new hires come next month
        assert count(select(Manager.id).where(Manager.person_id.is_(None))) >= 1
        dup = (select(Account.it_system_id, Account.username_key)
               .group_by(Account.it_system_id, Account.username_key)
               .having(func.count() > 1))
        assert count(dup) == 0
    engine.dispose()


def test_medium_counts_and_speed(tmp_path: Path) -> None:
    started = time.perf_counter()
    doc = demo.generate("M", seed=1, reference=REF)
    engine = make_engine(f"sqlite:///{tmp_path / 'm.db'}")
    counts = exchange.import_document(engine, doc)
    elapsed = time.perf_counter() - started
    engine.dispose()
    assert counts["persons"] == 5_000
    assert 400 <= counts["org_units"] <= 650
    grouped = _engagements_by_person(doc)
    multi = sum(1 for engs in grouped.values()
                if sum(1 for e in engs if e["valid_to"] is None) >= 2) / len(grouped)
    assert 0.10 <= multi <= 0.15, multi
    vacant = sum(1 for m in doc["managers"] if m["person_id"] is None) / len(doc["managers"])
    assert 0.02 <= vacant <= 0.09, vacant
    assert elapsed < 20, f"M took {elapsed:.1f}s to generate and import"
