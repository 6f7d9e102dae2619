"""Read the store as of one instant into plain in-memory rows.

This is the only place on the read side that queries the store, and it runs at build and
refresh time, never per request. Rows come back as lightweight attribute bags (SQLAlchemy
``Row`` objects) keyed by id, together with the next validity boundary after the instant, so
the directory knows when to rebuild even when nobody writes.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Engine, func, select, union_all
from sqlalchemy.orm import Session

from store import models as m
from store.changelog import last_seq

#: Every model with a validity (``valid_from``/``valid_to``): what a boundary can come from.
VALIDITY_MODELS: tuple[Any, ...] = (
    m.Klasse, m.OrgUnit, m.RelatedUnit, m.Person, m.Engagement, m.Association, m.Manager,
    m.Leave, m.ItSystem, m.Account, m.Address, m.Kle, m.SystemRole, m.JobRole, m.RoleGroup,
    m.PersonKle, m.ManagerSubstitute,
    m.AccountRoleAssignment, m.UnitRoleAssignment,
)


@dataclass
class OrgData:
    """Everything in effect at ``at``, plus lookup maps the builders need."""

    at: datetime
    seq: int
    next_boundary: datetime | None
    organisation: Any
    classes: dict[str, Any]
    facets: dict[str, str]
    units: dict[str, Any]
    persons: dict[str, Any]
    engagements: dict[str, Any]
    associations: dict[str, Any]
    managers: dict[str, Any]
    manager_responsibilities: dict[str, list[str]]
    leaves: dict[str, Any]
    it_systems: dict[str, Any]
    accounts: dict[str, Any]
    account_engagements: dict[str, list[str]]
    addresses: dict[str, Any]
    kles: dict[str, Any]
    kle_aspects: dict[str, list[str]]
    system_roles: dict[str, Any]
    job_roles: dict[str, Any]
    job_role_system_roles: dict[str, list[Any]]
    role_groups: dict[str, Any]
    role_group_members: dict[str, list[str]]
    account_assignments: dict[str, Any]
    unit_assignments: dict[str, Any]
    unit_assignment_titles: dict[str, set[str]]
    unit_assignment_excepted_accounts: dict[str, set[str]]
    unit_assignment_excepted_units: dict[str, set[str]]
    person_kles: dict[str, Any]
    manager_substitutes: dict[str, Any]
    #: Direct role assignment -> the values of its POSTPONED constraints, in id order.
    postponed_constraints: dict[str, list[Any]] = field(default_factory=dict)
    derived: dict[str, Any] = field(default_factory=dict)

    def class_name(self, class_id: str | None) -> str | None:
        """Name of a class, or None."""
        row = self.classes.get(class_id) if class_id else None
        return row.name if row else None


def _rows(session: Session, model: Any, at: datetime) -> dict[str, Any]:
    """Rows in effect at ``at``, keyed by id *in id order*.

    Every look-up derived from these maps iterates them, so their order becomes the order of
    multi-valued attributes (addresses, managers, assignments). Ordering by id, rather than
    trusting the database's scan order, makes that order a function of the data alone:
    PostgreSQL returns heap order, which moves with updates, and an incremental refresh
    re-inserts rows (``incremental._replaced`` keeps them in the same order).

    The database sorts (with a Python sort afterwards the entry build was slower in three of
    three alternations at XL: rows are then visited out of the order they were allocated in).
    """
    table = model.__table__
    return _by_id(session, select(table).where(model.valid_at(at)), table)


def _by_id(session: Session, query: Any, table: Any) -> dict[str, Any]:
    """The rows of ``query`` keyed by id, in id order as Python's ``sorted`` gives it (code
    point order: PostgreSQL's ``C`` collation, SQLite's default ``BINARY``), so a table
    patched and re-sorted in Python keeps the same order as one loaded afresh."""
    key = table.c.id
    if session.get_bind().dialect.name == "postgresql":
        key = key.collate("C")
    return {r.id: r for r in session.execute(query.order_by(key))}


def _links(session: Session, table, key: str, value: str) -> dict[str, list[str]]:
    found: dict[str, list[str]] = defaultdict(list)
    for row in session.execute(select(table.c[key], table.c[value])):
        found[row[0]].append(row[1])
    for values in found.values():
        values.sort()  # a deterministic order, whatever order the database returns rows in
    return found


def next_boundary(session: Session, at: datetime) -> datetime | None:
    """The earliest ``valid_from`` or ``valid_to`` after ``at`` in any table."""
    parts: list[Any] = []
    for model in VALIDITY_MODELS:
        parts.append(select(func.min(model.valid_from).label("t")).where(model.valid_from > at))
        parts.append(select(func.min(model.valid_to).label("t")).where(model.valid_to > at))
    sub = union_all(*parts).subquery()
    return session.scalar(select(func.min(sub.c.t)))


def load(engine: Engine, at: datetime) -> OrgData:
    """Load the store as of ``at``. Uses one read transaction so the picture is consistent."""
    with Session(engine) as session, session.begin():
        seq = last_seq(session)
        data = OrgData(
            at=at,
            seq=seq,
            next_boundary=next_boundary(session, at),
            organisation=session.execute(select(m.Organisation.__table__)).first(),
            classes=_rows(session, m.Klasse, at),
            facets={f.id: f.user_key for f in session.execute(select(m.Facet.__table__))},
            units=_rows(session, m.OrgUnit, at),
            persons=_rows(session, m.Person, at),
            engagements=_rows(session, m.Engagement, at),
            associations=_rows(session, m.Association, at),
            managers=_rows(session, m.Manager, at),
            manager_responsibilities=_links(session, m.manager_responsibility, "manager_id",
                                            "class_id"),
            leaves=_rows(session, m.Leave, at),
            it_systems=_rows(session, m.ItSystem, at),
            accounts=_rows(session, m.Account, at),
            account_engagements=_links(session, m.account_engagement, "account_id",
                                       "engagement_id"),
            addresses=_rows(session, m.Address, at),
            kles=_rows(session, m.Kle, at),
            kle_aspects=_links(session, m.kle_aspect, "kle_id", "class_id"),
            system_roles=_rows(session, m.SystemRole, at),
            job_roles=_rows(session, m.JobRole, at),
            job_role_system_roles=defaultdict(list),
            role_groups=_rows(session, m.RoleGroup, at),
            role_group_members=_links(session, m.role_group_member, "role_group_id",
                                      "job_role_id"),
            account_assignments=_rows(session, m.AccountRoleAssignment, at),
            unit_assignments=_rows(session, m.UnitRoleAssignment, at),
            unit_assignment_titles=_set_links(session, m.unit_assignment_title, "class_id"),
            unit_assignment_excepted_accounts=_set_links(
                session, m.unit_assignment_excepted_account, "account_id"),
            unit_assignment_excepted_units=_set_links(
                session, m.unit_assignment_excepted_unit, "org_unit_id"),
            person_kles=_rows(session, m.PersonKle, at),
            manager_substitutes=_rows(session, m.ManagerSubstitute, at),
        )
        data.job_role_system_roles = system_role_links(session)
        data.postponed_constraints = postponed_values(session)
    return data


def system_role_links(session: Session) -> dict[str, list[Any]]:
    """Job role -> its system-role links, in link id order."""
    table = m.JobRoleSystemRole.__table__
    bundled: dict[str, list[Any]] = defaultdict(list)
    for link in _by_id(session, select(table), table).values():
        bundled[link.job_role_id].append(link)
    return bundled


def postponed_values(session: Session) -> dict[str, list[Any]]:
    """Role assignment -> its postponed constraint values, in id order. All rows: a value
    is in effect while its assignment is, and only assignments in effect are looked up."""
    table = m.PostponedConstraint.__table__
    by_assignment: dict[str, list[Any]] = defaultdict(list)
    for row in _by_id(session, select(table), table).values():
        by_assignment[row.assignment_id].append(row)
    return dict(by_assignment)


def _set_links(session: Session, table, value: str) -> dict[str, set[str]]:
    return {k: set(v) for k, v in _links(session, table, "assignment_id", value).items()}
