"""The JSON exchange format: validation before writing, atomic import, lossless round trips.

Documents here are small and hand-written so each bad case changes exactly one thing; the
demo-sized round trip lives beside them. Every import test runs on SQLite and PostgreSQL.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, func, select
from sqlalchemy.exc import IntegrityError

from store import demo, exchange
from store.engine import make_engine
from store.exchange import ExchangeError, StoreNotEmptyError
from store.models import Base, Change, OrgUnit, Person

REF = datetime(2025, 3, 15)
T0 = "2020-01-01T00:00:00Z"


def small_doc() -> dict[str, Any]:
    """A complete little municipality touching every table and every embedded link list."""
    def cls(ident: str, facet: str, key: str, **extra: Any) -> dict[str, Any]:
        return {"id": ident, "facet_id": facet, "user_key": key, "name": key.title(), **extra}

    return {
        "format": "idm-facade-exchange", "version": 1,
        "organisation": [{"id": "org", "user_key": "birkeaa", "name": "Birkeå Kommune",
                          "municipality_code": 998, "cvr": "99000004",
                          "kombit_domain": "birkeaa.kommune.example"}],
        "facets": [{"id": "f-title", "user_key": "engagement_job_function"},
                   {"id": "f-resp", "user_key": "responsibility"},
                   {"id": "f-aspect", "user_key": "kle_aspect"},
                   {"id": "f-kle", "user_key": "kle_number"},
                   {"id": "f-addr", "user_key": "employee_address_type"},
                   {"id": "f-vis", "user_key": "visibility"},
                   {"id": "f-assoc", "user_key": "association_type"},
                   {"id": "f-leave", "user_key": "leave_type"}],
        "classes": [
            cls("c-teacher", "f-title", "laerer"),
            cls("c-flex", "f-title", "flexjob", sensitive=True, owner_unit_id="u-school"),
            cls("c-mus", "f-resp", "mus"),
            cls("c-udf", "f-aspect", "UDFOERENDE"), cls("c-ans", "f-aspect", "ANSVARLIG"),
            cls("c-kle-main", "f-kle", "10"),
            cls("c-kle", "f-kle", "10.01.00", parent_id="c-kle-main"),
            cls("c-email", "f-addr", "EmailEmployee", scope="EMAIL"),
            cls("c-secret", "f-vis", "Secret", scope="SECRET"),
            cls("c-amr", "f-assoc", "amr"), cls("c-barsel", "f-leave", "barselsorlov"),
        ],
        # Children listed before their parent: import must order them itself.
        "org_units": [
            {"id": "u-school", "user_key": "SKOLE", "name": "Egebæk Skole",
             "parent_id": "u-root", "role_level": 2, "valid_from": T0},
            {"id": "u-root", "user_key": "ROOT", "name": "Birkeå Kommune", "role_level": 1,
             "inherit_kle": True, "valid_from": T0},
            {"id": "u-pay", "user_key": "LOEN", "name": "Lønorganisation", "valid_from": T0},
        ],
        "related_units": [{"id": "r-1", "unit_a_id": "u-pay", "unit_b_id": "u-school"}],
        "persons": [
            {"id": "p-anne", "given_name": "Anne", "surname": "Jensen", "cpr": "0101801998",
             "seniority": "2010-08-01"},
            {"id": "p-bo", "given_name": "Bo", "surname": "Holm", "cpr": "2902004999"},
        ],
        "engagements": [
            {"id": "e-anne", "user_key": "010001", "person_id": "p-anne",
             "org_unit_id": "u-school", "job_function_id": "c-teacher", "is_primary": True,
             "fraction": 1000000, "valid_from": T0},
            {"id": "e-bo", "person_id": "p-bo", "org_unit_id": "u-school",
             "job_function_id": "c-flex", "is_primary": True, "do_not_inherit": True,
             "valid_from": T0, "valid_to": "2030-01-01T00:00:00Z"},
        ],
        "associations": [{"id": "as-1", "person_id": None, "org_unit_id": "u-school",
                          "association_type_id": "c-amr"}],
        "managers": [{"id": "m-1", "person_id": "p-anne", "org_unit_id": "u-school",
                      "responsibility_ids": ["c-mus"]},
                     {"id": "m-2", "person_id": None, "org_unit_id": "u-root"}],
        "leaves": [{"id": "l-1", "person_id": "p-bo", "engagement_id": "e-bo",
                    "leave_type_id": "c-barsel", "valid_from": "2024-01-01T00:00:00Z",
                    "valid_to": "2024-06-01T00:00:00Z"}],
        "it_systems": [{"id": "s-ad", "user_key": "AD", "name": "Active Directory",
                        "system_type": "AD"},
                       {"id": "s-kombit", "user_key": "KOMBIT-sag", "name": "Sag",
                        "system_type": "KOMBIT"}],
        "accounts": [
            {"id": "a-anne", "username": "AnJe", "external_id": "x-1", "it_system_id": "s-ad",
             "person_id": "p-anne", "is_primary": True, "engagement_ids": ["e-anne"]},
            {"id": "a-bo", "username": "boho", "it_system_id": "s-ad", "person_id": "p-bo",
             "engagement_ids": ["e-bo"]},
        ],
        "addresses": [{"id": "ad-1", "address_type_id": "c-email", "visibility_id": "c-secret",
                       "value": "anje@birkeaa.example", "person_id": "p-anne",
                       "account_id": "a-anne"}],
        "kles": [{"id": "k-1", "org_unit_id": "u-school", "kle_number_id": "c-kle",
                  "aspect_ids": ["c-udf", "c-ans"]}],
        "system_roles": [{"id": "sr-1", "it_system_id": "s-kombit",
                          "identifier": "http://birkeaa.kommune.example/roles/usersystemrole/"
                                        "sag-laes/1", "name": "Læs"},
                         {"id": "sr-2", "it_system_id": "s-kombit",
                          "identifier": "http://birkeaa.kommune.example/roles/usersystemrole/"
                                        "sag-skriv/1", "name": "Skriv", "weight": 2}],
        "job_roles": [{"id": "jr-1", "it_system_id": "s-kombit", "identifier": "sag-laeser",
                       "name": "Sagslæser",
                       "system_roles": [{"id": "jrs-1", "system_role_id": "sr-1",
                                         "constraint_type":
                                             "http://sts.kombit.dk/constraints/orgenhed/1",
                                         "constraint_value_type": "INHERITED"}]},
                      {"id": "jr-2", "it_system_id": "s-kombit", "identifier": "sag-udskudt",
                       "name": "Sagsbehandler", "allow_postponing": True,
                       "system_roles": [{"id": "jrs-2", "system_role_id": "sr-2",
                                         "constraint_type":
                                             "http://sts.kombit.dk/constraints/orgenhed/1",
                                         "constraint_value_type": "POSTPONED"}]}],
        "role_groups": [{"id": "rg-1", "identifier": "alle", "name": "Alle",
                         "job_role_ids": ["jr-1"]}],
        "account_role_assignments": [{"id": "ara-1", "account_id": "a-bo",
                                      "role_group_id": "rg-1"},
                                     {"id": "ara-2", "account_id": "a-anne",
                                      "job_role_id": "jr-2"}],
        "unit_role_assignments": [{"id": "ura-1", "org_unit_id": "u-root", "job_role_id": "jr-1",
                                   "inherit": True, "title_mode": "NEGATIVE",
                                   "title_ids": ["c-flex"], "excepted_account_ids": ["a-bo"],
                                   "excepted_unit_ids": ["u-pay"]}],
        "postponed_constraints": [{"id": "pc-1", "assignment_id": "ara-2",
                                   "system_role_id": "sr-2",
                                   "constraint_type":
                                       "http://sts.kombit.dk/constraints/orgenhed/1",
                                   "value": "u-school,u-pay"}],
    }


def _count(engine: Engine, model: type[Base]) -> int:
    with engine.connect() as conn:
        return conn.scalar(select(func.count()).select_from(model))


def _find(doc: dict, table: str, ident: str) -> dict:
    return next(obj for obj in doc[table] if obj["id"] == ident)


# --------------------------------------------------------------------------- round trips


def test_import_then_export_is_lossless(db_url: str, tmp_path: Path) -> None:
    doc = small_doc()
    engine = make_engine(db_url)
    counts = exchange.import_document(engine, doc, actor="loader")
    assert counts["org_units"] == 3 and counts["accounts"] == 2
    exported = exchange.export_document(engine)
    assert exchange.dumps(exported) == exchange.dumps(exchange.canonical(doc))
    # Link lists, embedded objects, forward references and types came back as written.
    assert _find(exported, "accounts", "a-anne")["engagement_ids"] == ["e-anne"]
    assert _find(exported, "kles", "k-1")["aspect_ids"] == ["c-ans", "c-udf"]
    assert _find(exported, "classes", "c-flex")["owner_unit_id"] == "u-school"
    assert _find(exported, "persons", "p-anne")["seniority"] == "2010-08-01"
    assert _find(exported, "org_units", "u-root")["valid_to"] is None
    assert _find(exported, "job_roles", "jr-1")["system_roles"][0]["constraint_value_type"] \
        == "INHERITED"
    assert _find(exported, "postponed_constraints", "pc-1")["value"] == "u-school,u-pay"
    assert _find(exported, "system_roles", "sr-1")["weight"] == 1  # OS2rollekatalog's default
    assert _find(exported, "job_roles", "jr-2")["allow_postponing"] is True
    # Export -> import into a fresh store -> export is byte-identical.
    other = make_engine(f"sqlite:///{tmp_path / 'second.db'}")
    exchange.import_document(other, json.loads(exchange.dumps(exported)))
    assert exchange.dumps(exchange.export_document(other)) == exchange.dumps(exported)
    with engine.connect() as conn:
        log = conn.execute(select(Change.actor, Change.object_type, Change.operation)).all()
    assert [tuple(row) for row in log] == [("loader", "*", "import")]
    engine.dispose()
    other.dispose()


def test_datetimes_are_normalised_to_utc(sqlite_url: str) -> None:
    doc = small_doc()
    _find(doc, "org_units", "u-root")["valid_from"] = "2020-01-01T01:00:00+01:00"
    _find(doc, "org_units", "u-pay")["valid_from"] = "2020-01-01"
    engine = make_engine(sqlite_url)
    exchange.import_document(engine, doc)
    exported = exchange.export_document(engine)
    assert _find(exported, "org_units", "u-root")["valid_from"] == "2020-01-01T00:00:00Z"
    assert _find(exported, "org_units", "u-pay")["valid_from"] == "2020-01-01T00:00:00Z"
    # Omitted validity means "since the beginning".
    assert _find(exported, "persons", "p-bo")["valid_from"] == "1900-01-01T00:00:00Z"
    engine.dispose()


def test_demo_round_trip_across_engines(db_url: str, tmp_path: Path) -> None:
    doc = demo.generate("S", seed=3, reference=REF)
    engine = make_engine(db_url)
    exchange.import_document(engine, doc)
    first = exchange.dumps(exchange.export_document(engine))
    assert first == exchange.dumps(exchange.canonical(doc))
    other = make_engine(f"sqlite:///{tmp_path / 'copy.db'}")
    exchange.import_document(other, json.loads(first))
    assert exchange.dumps(exchange.export_document(other)) == first
    engine.dispose()
    other.dispose()


# --------------------------------------------------------------------------- non-empty stores


def test_non_empty_store_is_refused_without_replace(db_url: str) -> None:
    engine = make_engine(db_url)
    exchange.import_document(engine, small_doc())
    before = exchange.dumps(exchange.export_document(engine))
    replacement = demo.generate("S", seed=1, reference=REF)
    with pytest.raises(StoreNotEmptyError, match="--replace"):
        exchange.import_document(engine, replacement)
    assert exchange.dumps(exchange.export_document(engine)) == before
    counts = exchange.import_document(engine, replacement, actor="again", replace=True)
    assert counts["persons"] == 300
    assert exchange.dumps(exchange.export_document(engine)) == exchange.dumps(
        exchange.canonical(replacement))
    with engine.connect() as conn:
        log = conn.execute(select(Change.actor).where(Change.object_type == "*")
                           .order_by(Change.seq)).scalars().all()
    assert log == ["import", "again"]  # the change log survives a replace
    engine.dispose()


def test_failed_write_phase_rolls_back_everything(db_url: str) -> None:
    """Atomicity of the write itself: a row the database rejects (bypassing validation by
    corrupting the validated form) must leave no rows and no change-log entry behind."""
    engine = make_engine(db_url)
    loaded = exchange.validate(small_doc())
    loaded.rows["unit_role_assignments"][0]["org_unit_id"] = "u-ghost"  # last table inserted
    with pytest.raises(IntegrityError):
        exchange.import_document(engine, loaded)
    assert _count(engine, Person) == 0
    assert _count(engine, OrgUnit) == 0
    assert _count(engine, Change) == 0
    engine.dispose()


# --------------------------------------------------------------------------- validation

Mutation = Callable[[dict[str, Any]], None]


def _set(table: str, ident: str, field: str, value: Any) -> Mutation:
    return lambda doc: _find(doc, table, ident).__setitem__(field, value)


def _delete(table: str, ident: str, field: str) -> Mutation:
    return lambda doc: _find(doc, table, ident).pop(field)


def _append_copy(table: str, ident: str, **changes: Any) -> Mutation:
    return lambda doc: doc[table].append({**copy.deepcopy(_find(doc, table, ident)), **changes})


BAD_DOCUMENTS: list[tuple[str, Mutation, list[str]]] = [
    ("unknown field", _set("persons", "p-anne", "shoe_size", 42),
     ["persons[id=p-anne].shoe_size", "unknown field"]),
    ("missing required", _delete("org_units", "u-school", "name"),
     ["org_units[id=u-school].name", "missing"]),
    ("wrong type int", _set("engagements", "e-anne", "fraction", "full"),
     ["engagements[id=e-anne].fraction", "integer"]),
    ("bool is not int", _set("org_units", "u-root", "role_level", True),
     ["org_units[id=u-root].role_level", "integer"]),
    ("wrong type bool", _set("engagements", "e-anne", "is_primary", "yes"),
     ["engagements[id=e-anne].is_primary", "true or false"]),
    ("null in required", _set("persons", "p-bo", "surname", None),
     ["persons[id=p-bo].surname", "null"]),
    ("too long", _set("organisation", "org", "cvr", "123456789"),
     ["organisation[id=org].cvr", "longer than 8"]),
    ("impossible date", _set("persons", "p-anne", "seniority", "2021-02-30"),
     ["persons[id=p-anne].seniority", "not a valid date"]),
    ("date format", _set("persons", "p-anne", "seniority", "01-08-2010"),
     ["persons[id=p-anne].seniority", "YYYY-MM-DD"]),
    ("bad datetime", _set("engagements", "e-anne", "valid_from", "yesterday"),
     ["engagements[id=e-anne].valid_from", "ISO 8601"]),
    ("valid_to before valid_from", _set("engagements", "e-bo", "valid_to", T0),
     ["engagements[id=e-bo].valid_to", "after valid_from"]),
    ("dangling reference", _set("engagements", "e-anne", "org_unit_id", "u-nowhere"),
     ["engagements[id=e-anne].org_unit_id", "u-nowhere"]),
    ("dangling forward reference", _set("classes", "c-flex", "owner_unit_id", "u-nowhere"),
     ["classes[id=c-flex].owner_unit_id", "u-nowhere"]),
    ("dangling link", _set("accounts", "a-anne", "engagement_ids", ["e-nowhere"]),
     ["accounts[id=a-anne].engagement_ids", "e-nowhere"]),
    ("link listed twice", _set("kles", "k-1", "aspect_ids", ["c-udf", "c-udf"]),
     ["kles[id=k-1].aspect_ids", "more than once"]),
    ("dangling embedded", lambda d: _find(d, "job_roles", "jr-1")["system_roles"][0]
     .__setitem__("system_role_id", "sr-nowhere"),
     ["job_roles[id=jr-1].system_roles[id=jrs-1].system_role_id", "sr-nowhere"]),
    ("duplicate id", _append_copy("persons", "p-bo", cpr="0101801999"),
     ["persons[id=p-bo].id", "duplicate id"]),
    ("username case-insensitive", _append_copy("accounts", "a-bo", id="a-bo2",
                                               username="ANJE"),
     ["accounts[id=a-bo2].username", "'ANJE'", "a-anne", "case-insensitively"]),
    ("cpr not 10 digits", _set("persons", "p-anne", "cpr", "01018019"),
     ["persons[id=p-anne].cpr", "10 digits"]),
    ("cpr with letters", _set("persons", "p-anne", "cpr", "0101801x98"),
     ["persons[id=p-anne].cpr", "10 digits"]),
    ("cpr impossible date", _set("persons", "p-bo", "cpr", "2902011999"),  # 2001 not leap
     ["persons[id=p-bo].cpr", "impossible birth date"]),
    ("both role and group", _set("unit_role_assignments", "ura-1", "role_group_id", "rg-1"),
     ["unit_role_assignments[id=ura-1].job_role_id", "exactly one"]),
    ("bad title mode", _set("unit_role_assignments", "ura-1", "title_mode", "SOME"),
     ["unit_role_assignments[id=ura-1].title_mode", "POSITIVE"]),
    ("empty postponed value", _set("postponed_constraints", "pc-1", "value", ""),
     ["postponed_constraints[id=pc-1].value", "must not be empty"]),
    ("postponed value on a role group assignment",
     _set("postponed_constraints", "pc-1", "assignment_id", "ara-1"),
     ["postponed_constraints[id=pc-1].assignment_id", "role group"]),
    ("postponed value for a constraint the role does not postpone",
     _set("postponed_constraints", "pc-1", "system_role_id", "sr-1"),
     ["postponed_constraints[id=pc-1].constraint_type", "no POSTPONED constraint"]),
    ("postponed value given twice", _append_copy("postponed_constraints", "pc-1", id="pc-2"),
     ["postponed_constraints[id=pc-2].constraint_type", "already used"]),
    ("postponed value of no assignment",
     _set("postponed_constraints", "pc-1", "assignment_id", "ara-nowhere"),
     ["postponed_constraints[id=pc-1].assignment_id", "ara-nowhere"]),
    ("parent cycle", _set("org_units", "u-root", "parent_id", "u-school"),
     ["org_units[id=", ".parent_id", "cycle"]),
    ("duplicate facet key", _append_copy("facets", "f-vis", id="f-vis2"),
     ["facets[id=f-vis2].user_key", "already used"]),
    ("two organisations", _append_copy("organisation", "org", id="org2"),
     ["organisation", "one organisation"]),
    ("unknown table", lambda d: d.__setitem__("owners", []), ["document.owners", "unknown"]),
    ("wrong format", lambda d: d.__setitem__("format", "mo-flatfile"), ["document.format"]),
    ("wrong version", lambda d: d.__setitem__("version", 2), ["document.version"]),
    ("table not a list", lambda d: d.__setitem__("persons", {}), ["document.persons", "list"]),
    ("object not a dict", lambda d: d["persons"].append("Anne"), ["persons[#2]", "object"]),
]


@pytest.mark.parametrize(("mutate", "fragments"), [pytest.param(m, f, id=name)
                                                   for name, m, f in BAD_DOCUMENTS])
def test_invalid_documents_are_refused_and_the_store_is_untouched(
        sqlite_url: str, mutate: Mutation, fragments: list[str]) -> None:
    engine = make_engine(sqlite_url)
    baseline = demo.generate("S", seed=5, reference=REF)
    exchange.import_document(engine, baseline)
    before = exchange.dumps(exchange.export_document(engine))
    doc = small_doc()
    exchange.validate(doc)  # the unmutated document is valid: the mutation is the only fault
    mutate(doc)
    with pytest.raises(ExchangeError) as info:
        exchange.import_document(engine, doc, replace=True)
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message, message
    assert exchange.dumps(exchange.export_document(engine)) == before
    assert _count(engine, Change) == 1
    engine.dispose()


def test_invalid_import_on_postgresql_leaves_empty_store_empty(postgres_url: str) -> None:
    engine = make_engine(postgres_url)
    doc = small_doc()
    _set("engagements", "e-anne", "org_unit_id", "u-nowhere")(doc)
    with pytest.raises(ExchangeError, match=r"engagements\[id=e-anne\]\.org_unit_id"):
        exchange.import_document(engine, doc)
    assert _count(engine, Person) == 0 and _count(engine, Change) == 0
    engine.dispose()


def test_all_problems_are_reported_at_once() -> None:
    doc = small_doc()
    _set("persons", "p-anne", "cpr", "123")(doc)
    _set("engagements", "e-bo", "org_unit_id", "u-x")(doc)
    with pytest.raises(ExchangeError) as info:
        exchange.validate(doc)
    assert len(info.value.problems) == 2
    assert "persons[id=p-anne].cpr" in str(info.value)
    assert "engagements[id=e-bo].org_unit_id" in str(info.value)


def test_malformed_json_is_an_exchange_error(tmp_path: Path) -> None:
    path = tmp_path / "broken.json"
    path.write_text('{"format": "idm-facade-exchange", ', encoding="utf-8")
    with path.open(encoding="utf-8") as fp, pytest.raises(ExchangeError, match="not valid JSON"):
        exchange.read(fp)


# --------------------------------------------------------------------------- the CLI


def _cli(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    command = Path(sys.executable).parent / "idm-facade"
    env = {k: v for k, v in os.environ.items() if k != "IDM_FACADE_DB"}
    return subprocess.run([str(command), *args], capture_output=True, text=True, env=env,
                          input=stdin, timeout=120, encoding="utf-8")


def test_cli_demo_export_import(tmp_path: Path) -> None:
    first, second = f"sqlite:///{tmp_path / 'a.db'}", f"sqlite:///{tmp_path / 'b.db'}"
    dump = tmp_path / "a.json"
    result = _cli("demo-data", "--size", "S", "--seed", "7", "--reference-date", "2025-03-15",
                  "--db", first)
    assert result.returncode == 0, result.stderr
    assert "persons" in result.stdout and "300" in result.stdout
    result = _cli("export", "--db", first, str(dump))
    assert result.returncode == 0, result.stderr
    result = _cli("import", "--db", second, str(dump))
    assert result.returncode == 0, result.stderr
    result = _cli("export", "--db", second, "-")
    assert result.returncode == 0, result.stderr
    assert result.stdout == dump.read_text(encoding="utf-8")
    # Same seed and reference date as a library call: the CLI adds nothing of its own.
    expected = demo.generate("S", seed=7, reference=REF)
    assert result.stdout == exchange.dumps(exchange.canonical(expected))
    # A second import into the now non-empty store is refused; --replace is accepted.
    refused = _cli("import", "--db", second, str(dump))
    assert refused.returncode != 0 and "not empty" in refused.stderr
    assert _cli("import", "--replace", "--db", second, "-",
                stdin=dump.read_text(encoding="utf-8")).returncode == 0


def test_cli_reports_validation_errors(tmp_path: Path) -> None:
    doc = small_doc()
    _set("persons", "p-bo", "cpr", "3102991999")(doc)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(doc), encoding="utf-8")
    result = _cli("import", "--db", f"sqlite:///{tmp_path / 'x.db'}", str(path))
    assert result.returncode == 1
    assert "persons[id=p-bo].cpr" in result.stderr and "impossible" in result.stderr
