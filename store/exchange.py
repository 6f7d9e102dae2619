"""The JSON exchange format: export the whole store as one document, import one atomically.

Why a format of our own: the demo generator, tests, fixtures and migrations from other sources
all need one way to put a complete municipality into the store, and one way to get it out again
for diffing and backup. The format mirrors the tables (one list per table, keyed as in
:data:`store.models.FACT_MODELS`) so there is no mapping layer to drift; link tables are embedded
as id lists in the object that owns them. See ``docs/exchange-format.md`` for the specification.

Import validates the *whole* document before writing anything (types, dates, validity order,
references, uniqueness, CPR), because an error half-way through a bulk load on PostgreSQL
would otherwise surface as an opaque IntegrityError. Only then are rows written with bulk Core
inserts in dependency order, in one transaction, followed by a single bulk change-log entry.
Export is deterministic (rows sorted by id, fixed key order) so equal stores give byte-identical
files.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import IO, Any

from sqlalchemy import (
    Boolean,
    Date,
    DateTime,
    Engine,
    Integer,
    String,
    Table,
    delete,
    insert,
    select,
    update,
)
from sqlalchemy.orm import Session

from store import changelog
from store.cpr import cpr_problem
from store.engine import session_factory
from store.models import (
    FACT_MODELS,
    TITLE_MODES,
    JobRoleSystemRole,
    account_engagement,
    kle_aspect,
    manager_responsibility,
    role_group_member,
    unit_assignment_excepted_account,
    unit_assignment_excepted_unit,
    unit_assignment_title,
)
from store.validity import to_datetime

FORMAT = "idm-facade-exchange"
VERSION = 1

#: Problems collected before validation gives up; one bad column would otherwise list every row.
MAX_PROBLEMS = 50

#: Exchange key of each model's table, the reverse of FACT_MODELS.
TABLE_KEYS: dict[str, str] = {model.__tablename__: key for key, model in FACT_MODELS.items()}


@dataclass(frozen=True)
class Link:
    """A link table embedded in its owner as a list of ids (e.g. ``engagement_ids``)."""

    key: str
    table: Table
    owner_column: str
    target_column: str
    target: str  # exchange key of the referenced table


#: Embedded link lists per owning table, in the order they appear in an exported object.
LINKS: dict[str, tuple[Link, ...]] = {
    "managers": (
        Link("responsibility_ids", manager_responsibility, "manager_id", "class_id", "classes"),
    ),
    "accounts": (
        Link("engagement_ids", account_engagement, "account_id", "engagement_id", "engagements"),
    ),
    "kles": (Link("aspect_ids", kle_aspect, "kle_id", "class_id", "classes"),),
    "role_groups": (
        Link("job_role_ids", role_group_member, "role_group_id", "job_role_id", "job_roles"),
    ),
    "unit_role_assignments": (
        Link("title_ids", unit_assignment_title, "assignment_id", "class_id", "classes"),
        Link("excepted_account_ids", unit_assignment_excepted_account, "assignment_id",
             "account_id", "accounts"),
        Link("excepted_unit_ids", unit_assignment_excepted_unit, "assignment_id", "org_unit_id",
             "org_units"),
    ),
}

#: ``job_roles[].system_roles`` holds whole objects of this model, owned through this column.
EMBEDDED_KEY = "system_roles"
EMBEDDED_OWNER = "job_role_id"

#: Columns computed on import and therefore absent from the format, with the field they mirror.
DERIVED: dict[str, dict[str, str]] = {"accounts": {"username_key": "username"}}


def username_key(username: str) -> str:
    """The case-folded form unique per IT system (``Account.username_key``)."""
    return username.lower()


class ExchangeError(ValueError):
    """A document that cannot be imported; ``problems`` lists every reason found.

    Each problem names the table, the object (``id=...`` or ``#index`` when the id itself is
    unusable) and the field, so a person fixing a 100 MB file can find the line.
    """

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        shown = "\n  ".join(problems[:20])
        more = f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""
        noun = "problem" if len(problems) == 1 else "problems"
        super().__init__(f"invalid exchange document ({len(problems)} {noun}):\n  {shown}{more}")


class StoreNotEmptyError(ExchangeError):
    """Import into a store that already holds facts, without ``replace``."""

    def __init__(self) -> None:
        self.problems = ["store: not empty"]
        ValueError.__init__(self, "the store is not empty; import with --replace to delete "
                            "everything in it first (the change log is kept)")


class _TooMany(Exception):
    """Internal: stop validating once MAX_PROBLEMS are collected."""


# --------------------------------------------------------------------------- field specs


@dataclass(frozen=True)
class FieldSpec:
    """How one column appears in the format: JSON type, requiredness, reference target."""

    name: str
    kind: str  # "str", "int", "bool", "datetime", "date"
    required: bool
    nullable: bool
    default: Any
    max_length: int | None
    ref: str | None  # exchange key of the referenced table, None if not a reference


def _kind(column: Any) -> str:
    if isinstance(column.type, Boolean):
        return "bool"
    if isinstance(column.type, Integer):
        return "int"
    if isinstance(column.type, DateTime):
        return "datetime"
    if isinstance(column.type, Date):
        return "date"
    if isinstance(column.type, String):
        return "str"
    raise TypeError(f"no exchange type for column {column}")  # pragma: no cover


def _specs(table: Table, skip: Iterable[str] = ()) -> tuple[FieldSpec, ...]:
    specs = []
    for column in table.columns:
        if column.name in skip:
            continue
        default = column.default
        has_default = default is not None and not default.is_callable
        ref = None
        for fk in column.foreign_keys:
            ref = TABLE_KEYS.get(fk.column.table.name, fk.column.table.name)
        specs.append(FieldSpec(
            name=column.name,
            kind=_kind(column),
            required=not column.nullable and not has_default,
            nullable=bool(column.nullable),
            default=default.arg if has_default else None,
            max_length=getattr(column.type, "length", None),
            ref=ref,
        ))
    return tuple(specs)


SPECS: dict[str, tuple[FieldSpec, ...]] = {
    key: _specs(model.__table__, DERIVED.get(key, {})) for key, model in FACT_MODELS.items()
}
EMBEDDED_SPECS: tuple[FieldSpec, ...] = _specs(JobRoleSystemRole.__table__, (EMBEDDED_OWNER,))


def _order() -> tuple[list[str], dict[str, list[FieldSpec]]]:
    """Insert order (FACT_MODELS order) and the references that point forward in it.

    A forward reference (``classes.owner_unit_id`` -> ``org_units``, which itself refers to
    classes) cannot be satisfied by ordering tables, so it is inserted as NULL and set by an
    UPDATE once its target table is loaded. Self references are handled by sorting rows.
    """
    order = list(FACT_MODELS)
    deferred: dict[str, list[FieldSpec]] = {}
    for pos, key in enumerate(order):
        for spec in SPECS[key]:
            if spec.ref and spec.ref != key and order.index(spec.ref) > pos:
                deferred.setdefault(key, []).append(spec)
    return order, deferred


INSERT_ORDER, DEFERRED = _order()


# --------------------------------------------------------------------------- values


def _iso_datetime(value: datetime) -> str:
    return value.isoformat() + "Z"


def _to_json(value: Any) -> Any:
    if isinstance(value, datetime):
        return _iso_datetime(value)
    if isinstance(value, date):
        return value.isoformat()
    return value


_DATE_RE = re.compile(r"\d{4}-\d{2}-\d{2}")
_DATETIME_RE = re.compile(r"\d{4}-\d{2}-\d{2}([T ]\d{2}:\d{2}(:\d{2}(\.\d{1,6})?)?)?"
                          r"(Z|[+-]\d{2}:?\d{2})?")


def _convert(spec: FieldSpec, value: Any) -> Any:
    """The column value for JSON ``value``; raises ValueError with the reason."""
    if value is None:
        if not spec.nullable:
            raise ValueError("must not be null")
        return None
    kind = spec.kind
    if kind == "str":
        if not isinstance(value, str):
            raise ValueError(f"must be a string, got {type(value).__name__}")
        if spec.max_length is not None and len(value) > spec.max_length:
            raise ValueError(f"is longer than {spec.max_length} characters")
        return value
    if kind == "int":
        if not isinstance(value, int) or isinstance(value, bool):
            raise ValueError(f"must be an integer, got {type(value).__name__}")
        return value
    if kind == "bool":
        if not isinstance(value, bool):
            raise ValueError(f"must be true or false, got {type(value).__name__}")
        return value
    if not isinstance(value, str):
        raise ValueError(f"must be an ISO 8601 string, got {type(value).__name__}")
    if kind == "date":
        if not _DATE_RE.fullmatch(value):
            raise ValueError(f"must be a date YYYY-MM-DD, got {value!r}")
        try:
            return date.fromisoformat(value)
        except ValueError as exc:
            raise ValueError(f"is not a valid date: {value!r} ({exc})") from None
    if not _DATETIME_RE.fullmatch(value):
        raise ValueError(f"must be an ISO 8601 datetime, got {value!r}")
    try:
        return to_datetime(value)
    except ValueError as exc:
        raise ValueError(f"is not a valid datetime: {value!r} ({exc})") from None


# --------------------------------------------------------------------------- validation


@dataclass
class Loaded:
    """A validated document, converted to column values and ready to insert."""

    rows: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    links: dict[tuple[str, str], list[dict[str, str]]] = field(default_factory=dict)
    embedded: list[dict[str, Any]] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        """Rows per table key, in insert order."""
        return {key: len(self.rows.get(key, [])) for key in INSERT_ORDER}


class _Validator:
    """Collects problems while converting a document; raises ExchangeError at the end."""

    def __init__(self) -> None:
        self.problems: list[str] = []
        self.rows: dict[str, list[dict[str, Any]]] = {}
        self.ids: dict[str, set[str]] = {key: set() for key in INSERT_ORDER}
        self.ids[EMBEDDED_KEY + "@job_roles"] = set()

    def problem(self, where: str, field_name: str | None, message: str) -> None:
        self.problems.append(f"{where}.{field_name}: {message}" if field_name
                             else f"{where}: {message}")
        if len(self.problems) >= MAX_PROBLEMS:
            raise _TooMany

    # -- per object

    @staticmethod
    def where(table: str, index: int, obj: Any) -> str:
        ident = obj.get("id") if isinstance(obj, dict) else None
        if isinstance(ident, str) and ident:
            return f"{table}[id={ident}]"
        return f"{table}[#{index}]"

    def convert_object(self, table: str, index: int, obj: Any, specs: tuple[FieldSpec, ...],
                       extra_keys: Iterable[str], id_set: set[str]) -> dict[str, Any] | None:
        where = self.where(table, index, obj)
        if not isinstance(obj, dict):
            self.problem(where, None, f"must be a JSON object, got {type(obj).__name__}")
            return None
        known = {spec.name for spec in specs} | set(extra_keys)
        for key in obj:
            if key not in known:
                self.problem(where, key, "unknown field")
        row: dict[str, Any] = {}
        for spec in specs:
            if spec.name not in obj:
                if spec.required:
                    self.problem(where, spec.name, "required field is missing")
                row[spec.name] = spec.default
                continue
            try:
                row[spec.name] = _convert(spec, obj[spec.name])
            except ValueError as exc:
                self.problem(where, spec.name, str(exc))
                row[spec.name] = None
        ident = row.get("id")
        if isinstance(ident, str):
            if not ident.strip():
                self.problem(where, "id", "must not be empty")
            elif ident in id_set:
                self.problem(where, "id", "duplicate id")
            id_set.add(ident)
        valid_from, valid_to = row.get("valid_from"), row.get("valid_to")
        if isinstance(valid_from, datetime) and isinstance(valid_to, datetime):
            if valid_to <= valid_from:
                self.problem(where, "valid_to", f"must be after valid_from "
                             f"({_iso_datetime(valid_to)} <= {_iso_datetime(valid_from)})")
        return row

    def id_list(self, where: str, obj: dict, link: Link) -> list[str]:
        value = obj.get(link.key, [])
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            self.problem(where, link.key, "must be a list of id strings")
            return []
        if len(set(value)) != len(value):
            self.problem(where, link.key, "lists an id more than once")
            return list(dict.fromkeys(value))
        return value

    # -- whole document

    def run(self, doc: Any) -> Loaded:
        loaded = Loaded()
        self.rows = loaded.rows
        if not isinstance(doc, dict):
            self.problem("document", None, "must be a JSON object")
            return loaded
        if doc.get("format") != FORMAT:
            self.problem("document", "format", f"must be {FORMAT!r}, got {doc.get('format')!r}")
        if doc.get("version") != VERSION:
            self.problem("document", "version", f"must be {VERSION}, got {doc.get('version')!r}")
        for key in doc:
            if key not in ("format", "version") and key not in FACT_MODELS:
                self.problem("document", key, "unknown table")
        link_values: dict[tuple[str, str], list[tuple[str, str, str]]] = {}
        for table in INSERT_ORDER:
            objects = doc.get(table, [])
            if not isinstance(objects, list):
                self.problem("document", table, "must be a list of objects")
                continue
            links = LINKS.get(table, ())
            extra = [link.key for link in links]
            if table == "job_roles":
                extra.append(EMBEDDED_KEY)
            rows = []
            for index, obj in enumerate(objects):
                row = self.convert_object(table, index, obj, SPECS[table], extra,
                                          self.ids[table])
                if row is None:
                    continue
                rows.append(row)
                where = self.where(table, index, obj)
                for link in links:
                    for target in self.id_list(where, obj, link):
                        link_values.setdefault((table, link.key), []).append(
                            (where, row["id"], target))
                if table == "job_roles":
                    self.embedded(where, obj, row, loaded)
            for derived, source in DERIVED.get(table, {}).items():
                for row in rows:
                    value = row.get(source)
                    row[derived] = username_key(value) if isinstance(value, str) else None
            loaded.rows[table] = rows
        self.references(loaded)
        for (table, key), values in link_values.items():
            link = next(link for link in LINKS[table] if link.key == key)
            targets = self.ids[link.target]
            pairs = []
            for where, owner, target in values:
                if target not in targets:
                    self.problem(where, key, f"references {link.target} id {target!r}, "
                                 "which is not in the document")
                pairs.append({link.owner_column: owner, link.target_column: target})
            loaded.links[(table, key)] = pairs
        self.semantics(loaded)
        return loaded

    def embedded(self, where: str, obj: dict, owner: dict, loaded: Loaded) -> None:
        value = obj.get(EMBEDDED_KEY, [])
        if not isinstance(value, list):
            self.problem(where, EMBEDDED_KEY, "must be a list of objects")
            return
        id_set = self.ids[EMBEDDED_KEY + "@job_roles"]
        for index, item in enumerate(value):
            row = self.convert_object(f"{where}.{EMBEDDED_KEY}", index, item, EMBEDDED_SPECS, (),
                                      id_set)
            if row is not None:
                row[EMBEDDED_OWNER] = owner.get("id")
                loaded.embedded.append(row)

    def references(self, loaded: Loaded) -> None:
        """Every reference column must name an id present in its target table."""
        checks = [(table, SPECS[table], rows) for table, rows in loaded.rows.items()]
        checks.append(("job_roles.system_roles", EMBEDDED_SPECS, loaded.embedded))
        for table, specs, rows in checks:
            refs = [spec for spec in specs if spec.ref]
            for row in rows:
                for spec in refs:
                    value = row.get(spec.name)
                    if value is not None and value not in self.ids[spec.ref]:
                        owner = (f"job_roles[id={row[EMBEDDED_OWNER]}].system_roles[id="
                                 f"{row['id']}]" if table == "job_roles.system_roles"
                                 else f"{table}[id={row['id']}]")
                        self.problem(owner, spec.name, f"references {spec.ref} id {value!r}, "
                                     "which is not in the document")

    def semantics(self, loaded: Loaded) -> None:
        """Uniqueness, check constraints, CPR and hierarchy cycles: what the database would
        reject (or, for CPR and cycles, silently accept) with a less helpful message."""
        rows = loaded.rows
        if len(rows.get("organisation", [])) > 1:
            self.problem("organisation", None, "the store describes one organisation; "
                         f"got {len(rows['organisation'])}")
        self.unique("facets", ("user_key",))
        self.unique("classes", ("facet_id", "user_key"))
        self.unique("it_systems", ("user_key",))
        self.unique("job_roles", ("identifier",))
        self.unique("role_groups", ("identifier",))
        self.unique("accounts", ("it_system_id", "username_key"), shown="username",
                    note="(usernames are unique case-insensitively within an IT system)")
        for table in ("account_role_assignments", "unit_role_assignments"):
            for row in rows.get(table, []):
                if (row.get("job_role_id") is None) == (row.get("role_group_id") is None):
                    self.problem(f"{table}[id={row['id']}]", "job_role_id",
                                 "exactly one of job_role_id and role_group_id must be set")
        self.postponed(loaded)
        for row in rows.get("unit_role_assignments", []):
            if row.get("title_mode") not in TITLE_MODES:
                self.problem(f"unit_role_assignments[id={row['id']}]", "title_mode",
                             f"must be one of {', '.join(TITLE_MODES)}")
        for row in rows.get("persons", []):
            cpr = row.get("cpr")
            if isinstance(cpr, str):
                reason = cpr_problem(cpr)
                if reason:
                    self.problem(f"persons[id={row['id']}]", "cpr", f"not a valid CPR: {reason}")
        for table in ("org_units", "classes"):
            self.acyclic(table, rows.get(table, []))

    def postponed(self, loaded: Loaded) -> None:
        """A postponed value fills in a POSTPONED constraint of the role it is assigned with
        (``RoleAssignmentApiV2.assignUserRoleToUser`` refuses a constraint type the role does
        not postpone, and ``PostponedConstraintService.isValidConstraint`` an empty value);
        only direct assignments of a role carry them, once per system role and type."""
        assignments = {row["id"]: row for row in loaded.rows.get("account_role_assignments", [])}
        postponable = {(link.get(EMBEDDED_OWNER), link.get("system_role_id"),
                        link.get("constraint_type"))
                       for link in loaded.embedded
                       if link.get("constraint_value_type") == "POSTPONED"}
        for row in loaded.rows.get("postponed_constraints", []):
            where = f"postponed_constraints[id={row['id']}]"
            if not row.get("value"):
                self.problem(where, "value", "must not be empty")
            assignment = assignments.get(row.get("assignment_id"))
            if assignment is None:
                continue  # reported as a dangling reference
            role = assignment.get("job_role_id")
            if role is None:
                self.problem(where, "assignment_id", "a role group assignment carries no "
                             "postponed constraint values")
            elif (role, row.get("system_role_id"), row.get("constraint_type")) \
                    not in postponable:
                self.problem(where, "constraint_type", "the assigned role has no POSTPONED "
                             "constraint of this type on this system role")
        self.unique("postponed_constraints", ("assignment_id", "system_role_id",
                                              "constraint_type"))

    def unique(self, table: str, columns: tuple[str, ...], shown: str | None = None,
               note: str = "") -> None:
        seen: dict[tuple, str] = {}
        for row in self.rows.get(table, []):
            key = tuple(row.get(c) for c in columns)
            if any(part is None for part in key):
                continue
            if key in seen:
                name = shown or columns[-1]
                self.problem(f"{table}[id={row['id']}]", name,
                             f"{row.get(name)!r} is already used by {table} id {seen[key]!r} "
                             f"{note}".rstrip())
            else:
                seen[key] = row["id"]

    def acyclic(self, table: str, rows: list[dict[str, Any]]) -> None:
        parent = {row["id"]: row.get("parent_id") for row in rows}
        state: dict[str, int] = {}  # 1 = on the current path, 2 = known to reach a root
        for start in parent:
            path = []
            node: str | None = start
            while node is not None and node in parent and state.get(node) != 2:
                if state.get(node) == 1:
                    self.problem(f"{table}[id={node}]", "parent_id",
                                 "parent chain forms a cycle")
                    break
                state[node] = 1
                path.append(node)
                node = parent[node]
            for visited in path:
                state[visited] = 2


def validate(doc: Any) -> Loaded:
    """Check a whole exchange document and convert it to column values.

    Raises :class:`ExchangeError` listing every problem (up to MAX_PROBLEMS) found; nothing is
    written by this function, so it is also the ``--dry-run`` of an import.
    """
    validator = _Validator()
    loaded = Loaded()
    try:
        loaded = validator.run(doc)
    except _TooMany:
        validator.problems.append(f"stopped after {MAX_PROBLEMS} problems")
    if validator.problems:
        raise ExchangeError(validator.problems)
    return loaded


# --------------------------------------------------------------------------- import


def _parents_first(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows of a self-referencing table ordered so every parent precedes its children."""
    by_id = {row["id"]: row for row in rows}
    depth: dict[str, int] = {}

    def depth_of(ident: str) -> int:
        chain = []
        node: str | None = ident
        while node is not None and node not in depth:
            chain.append(node)
            node = by_id[node].get("parent_id") if node in by_id else None
        base = depth[node] if node is not None else -1
        for item in reversed(chain):
            base += 1
            depth[item] = base
        return depth[ident]

    return sorted(rows, key=lambda row: depth_of(row["id"]))


def _link_tables() -> list[Table]:
    return [link.table for links in LINKS.values() for link in links]


def store_is_empty(session: Session) -> bool:
    """True when no fact table holds a row (the change log does not count)."""
    for model in FACT_MODELS.values():
        if session.execute(select(model.__table__).limit(1)).first() is not None:
            return False
    return True


def clear_store(session: Session) -> None:
    """Delete every fact and link row (not the change log), children before parents."""
    for key, specs in DEFERRED.items():
        table = FACT_MODELS[key].__table__
        session.execute(update(table).values({spec.name: None for spec in specs}))
    for table in _link_tables():
        session.execute(delete(table))
    session.execute(delete(JobRoleSystemRole.__table__))
    for key in reversed(INSERT_ORDER):
        table = FACT_MODELS[key].__table__
        for spec in SPECS[key]:
            if spec.ref == key:  # detach self references so one DELETE works on any engine
                session.execute(update(table).values({spec.name: None}))
        session.execute(delete(table))


ProgressFn = Callable[[str, int], None]


def load_into_session(session: Session, loaded: Loaded, *, actor: str, replace: bool = False,
                      progress: ProgressFn | None = None) -> dict[str, int]:
    """Write a validated document in the caller's transaction; returns rows per table key.

    Refuses a non-empty store unless ``replace`` is true, in which case every fact is deleted
    first; the change log is kept and gains one bulk entry.
    """
    if not store_is_empty(session):
        if not replace:
            raise StoreNotEmptyError
        clear_store(session)
    deferred_updates: dict[str, list[dict[str, Any]]] = {}
    for key in INSERT_ORDER:
        rows = loaded.rows.get(key, [])
        model = FACT_MODELS[key]
        if any(spec.ref == key for spec in SPECS[key]):
            rows = _parents_first(rows)
        if key in DEFERRED:
            names = [spec.name for spec in DEFERRED[key]]
            updates = [{"id": row["id"], **{n: row[n] for n in names}} for row in rows
                       if any(row[n] is not None for n in names)]
            deferred_updates[key] = updates
            rows = [{**row, **dict.fromkeys(names)} for row in rows] if updates else rows
        if rows:
            # Core insert on the Table: an executemany straight to the driver. The ORM-enabled
            # insert(Model) does the same work with per-row bookkeeping, ~4x slower on psycopg.
            session.execute(insert(model.__table__), rows)
        if key == "job_roles" and loaded.embedded:
            session.execute(insert(JobRoleSystemRole.__table__), loaded.embedded)
        for link in LINKS.get(key, ()):
            pairs = loaded.links.get((key, link.key), [])
            if pairs:
                session.execute(insert(link.table), pairs)
        if progress:
            progress(key, len(rows))
    for key, updates in deferred_updates.items():
        if updates:
            session.execute(update(FACT_MODELS[key]), updates)
    changelog.record_bulk(session, actor, "import")
    session.flush()
    return loaded.counts()


def import_document(engine: Engine, doc: Any, *, actor: str = "import", replace: bool = False,
                    progress: ProgressFn | None = None) -> dict[str, int]:
    """Validate ``doc`` and load it in one transaction: all of it or none of it.

    Raises :class:`ExchangeError` (and leaves the store untouched) if the document is invalid
    or the store is not empty and ``replace`` is false. ``doc`` may also be the result of
    :func:`validate`, to validate once and load several stores.
    """
    loaded = doc if isinstance(doc, Loaded) else validate(doc)
    session = session_factory(engine)()
    session.info["actor"] = actor
    try:
        counts = load_into_session(session, loaded, actor=actor, replace=replace,
                                   progress=progress)
        session.commit()
        return counts
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


# --------------------------------------------------------------------------- export


def export_document(engine: Engine) -> dict[str, Any]:
    """The whole store as an exchange document: tables in insert order, rows sorted by id."""
    doc: dict[str, Any] = {"format": FORMAT, "version": VERSION}
    with engine.connect() as conn:
        links: dict[tuple[str, str], dict[str, list[str]]] = {}
        for table_key, table_links in LINKS.items():
            for link in table_links:
                grouped: dict[str, list[str]] = {}
                owner, target = link.table.c[link.owner_column], link.table.c[link.target_column]
                for owner_id, target_id in conn.execute(
                        select(owner, target).order_by(owner, target)):
                    grouped.setdefault(owner_id, []).append(target_id)
                links[(table_key, link.key)] = grouped
        embedded: dict[str, list[dict[str, Any]]] = {}
        emb_table = JobRoleSystemRole.__table__
        emb_names = [spec.name for spec in EMBEDDED_SPECS]
        for row in conn.execute(select(emb_table).order_by(emb_table.c.id)).mappings():
            embedded.setdefault(row[EMBEDDED_OWNER], []).append(
                {name: _to_json(row[name]) for name in emb_names})
        for key in INSERT_ORDER:
            table = FACT_MODELS[key].__table__
            names = [spec.name for spec in SPECS[key]]
            objects = []
            for row in conn.execute(select(table).order_by(table.c.id)).mappings():
                obj = {name: _to_json(row[name]) for name in names}
                for link in LINKS.get(key, ()):
                    obj[link.key] = links[(key, link.key)].get(row["id"], [])
                if key == "job_roles":
                    obj[EMBEDDED_KEY] = embedded.get(row["id"], [])
                objects.append(obj)
            doc[key] = objects
    return doc


def canonical(doc: dict[str, Any]) -> dict[str, Any]:
    """``doc`` as export would write it: rows sorted by id, fields in format order, omitted
    optional fields filled with their defaults, id lists sorted.

    Lets a test compare a hand-made or generated document with an export of the store it was
    imported into: equal canonical forms mean the import lost nothing.
    """
    out: dict[str, Any] = {"format": doc.get("format"), "version": doc.get("version")}

    def normal(obj: dict[str, Any], specs: tuple[FieldSpec, ...]) -> dict[str, Any]:
        return {spec.name: obj.get(spec.name, _to_json(spec.default)) for spec in specs}

    for key in INSERT_ORDER:
        objects = []
        for obj in sorted(doc.get(key, []), key=lambda o: o["id"]):
            row = normal(obj, SPECS[key])
            for link in LINKS.get(key, ()):
                row[link.key] = sorted(obj.get(link.key, []))
            if key == "job_roles":
                row[EMBEDDED_KEY] = [normal(item, EMBEDDED_SPECS) for item in
                                     sorted(obj.get(EMBEDDED_KEY, []), key=lambda o: o["id"])]
            objects.append(row)
        out[key] = objects
    return out


def iter_json(doc: dict[str, Any]) -> Iterator[str]:
    """The canonical text of ``doc`` in chunks: one object per line, UTF-8 characters kept.

    One object per line keeps files diffable and lets ``grep`` find an id; the fixed layout is
    what makes exports of equal stores byte-identical.
    """
    yield "{\n"
    yield f'"format": {json.dumps(doc.get("format", FORMAT))},\n'
    yield f'"version": {json.dumps(doc.get("version", VERSION))}'
    for key in INSERT_ORDER:
        objects = doc.get(key, [])
        yield f',\n"{key}": ['
        for index, obj in enumerate(objects):
            yield ("\n  " if index == 0 else ",\n  ") + json.dumps(obj, ensure_ascii=False)
        yield "\n]" if objects else "]"
    yield "\n}\n"


def dumps(doc: dict[str, Any]) -> str:
    """The canonical text of ``doc`` (see :func:`iter_json`)."""
    return "".join(iter_json(doc))


def write(doc: dict[str, Any], fp: IO[str]) -> None:
    """Write the canonical text of ``doc`` to a text stream."""
    for chunk in iter_json(doc):
        fp.write(chunk)


def read(fp: IO[str]) -> Any:
    """Parse a document from a text stream; malformed JSON becomes an ExchangeError."""
    try:
        return json.load(fp)
    except json.JSONDecodeError as exc:
        raise ExchangeError([f"document: not valid JSON: {exc}"]) from None


__all__ = [
    "FORMAT", "VERSION", "ExchangeError", "StoreNotEmptyError", "Loaded", "validate",
    "import_document", "load_into_session", "export_document", "dumps", "write", "read",
    "store_is_empty", "clear_store", "username_key", "canonical",
]
