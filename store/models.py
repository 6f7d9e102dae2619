"""The authoritative organisation store: SQLAlchemy 2 models of the OS2mo domain.

The tables are normalised and know nothing about SCIM or LDAP. Objects are keyed by UUID
strings (portable across SQLite and PostgreSQL, and the keys OS2mo and FK Organisation use).
Every fact carries a half-open validity ``[valid_from, valid_to)`` through :class:`Validity`, so a
change dated next week is stored today and takes effect then.

Naming follows OS2mo where it has a term (user_key, engagement, association, ...) and
OS2rollekatalog for the role catalogue (system role, job-function role, role group).
"""

from __future__ import annotations

import uuid
from datetime import date, datetime

from sqlalchemy import (
    Boolean,
    CheckConstraint,
    Column,
    Date,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    String,
    Table,
    Text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from store.validity import Validity

UUID_LEN = 36


def new_id() -> str:
    """A fresh random UUID string for a new object."""
    return str(uuid.uuid4())


class Base(DeclarativeBase):
    """Declarative base of every store table."""


def _id() -> Mapped[str]:
    return mapped_column(String(UUID_LEN), primary_key=True, default=new_id)


def _fk(target: str, nullable: bool = False, ondelete: str | None = None) -> Mapped:
    return mapped_column(
        String(UUID_LEN), ForeignKey(target, ondelete=ondelete), nullable=nullable, index=True
    )


# --------------------------------------------------------------------------- organisation


class Organisation(Base):
    """The one municipality this store describes (OS2mo keeps a single root organisation)."""

    __tablename__ = "organisation"
    id: Mapped[str] = _id()
    user_key: Mapped[str] = mapped_column(String(100))
    name: Mapped[str] = mapped_column(String(200))
    municipality_code: Mapped[int | None] = mapped_column(Integer)
    cvr: Mapped[str | None] = mapped_column(String(8))
    #: Domain used for KOMBIT job-role entity ids, e.g. ``kommune.dk``.
    kombit_domain: Mapped[str | None] = mapped_column(String(200))


# --------------------------------------------------------------------------- classification


class Facet(Base):
    """A Klassifikation facet: a named list of classes (e.g. ``engagement_job_function``)."""

    __tablename__ = "facet"
    id: Mapped[str] = _id()
    user_key: Mapped[str] = mapped_column(String(100), unique=True)
    description: Mapped[str | None] = mapped_column(String(200))
    classes: Mapped[list[Klasse]] = relationship(back_populates="facet")


class Klasse(Validity, Base):
    """A Klassifikation class (value of a facet). ``scope`` carries the format or priority.

    Named ``Klasse`` because ``class`` is a keyword; the table is ``klasse`` as in LoRa.
    """

    __tablename__ = "klasse"
    id: Mapped[str] = _id()
    facet_id: Mapped[str] = _fk("facet.id")
    user_key: Mapped[str] = mapped_column(String(100))
    name: Mapped[str] = mapped_column(String(200))
    scope: Mapped[str | None] = mapped_column(String(50))
    parent_id: Mapped[str | None] = _fk("klasse.id", nullable=True)
    owner_unit_id: Mapped[str | None] = _fk("org_unit.id", nullable=True)
    #: Titles marked sensitive (e.g. flexjob) are masked for clients without the grant.
    sensitive: Mapped[bool] = mapped_column(Boolean, default=False)
    facet: Mapped[Facet] = relationship(back_populates="classes")

    __table_args__ = (Index("ix_klasse_facet_user_key", "facet_id", "user_key", unique=True),)


# --------------------------------------------------------------------------- org units


class OrgUnit(Validity, Base):
    """An organisation unit. Units with no parent are roots of parallel hierarchies."""

    __tablename__ = "org_unit"
    id: Mapped[str] = _id()
    user_key: Mapped[str] = mapped_column(String(100))
    name: Mapped[str] = mapped_column(String(200))
    parent_id: Mapped[str | None] = _fk("org_unit.id", nullable=True)
    unit_type_id: Mapped[str | None] = _fk("klasse.id", nullable=True)
    unit_level_id: Mapped[str | None] = _fk("klasse.id", nullable=True)
    #: The "opmaerkning" label (linjeorg / selvejet / hide / NA), a class of org_unit_hierarchy.
    hierarchy_id: Mapped[str | None] = _fk("klasse.id", nullable=True)
    #: OS2rollekatalog's LEVEL_1..6 used by LEVEL_N org-unit constraints; NULL = NONE.
    role_level: Mapped[int | None] = mapped_column(Integer)
    #: OS2rollekatalog's ``inheritKle``: descendants' members inherit this unit's KLE.
    inherit_kle: Mapped[bool] = mapped_column(Boolean, default=False)


class RelatedUnit(Validity, Base):
    """Organisationssammenkobling: links a payroll unit to its administrative twin."""

    __tablename__ = "related_unit"
    id: Mapped[str] = _id()
    unit_a_id: Mapped[str] = _fk("org_unit.id")
    unit_b_id: Mapped[str] = _fk("org_unit.id")


# --------------------------------------------------------------------------- people


class Person(Validity, Base):
    """A natural person. ``cpr`` is personal data disclosed only under an explicit grant."""

    __tablename__ = "person"
    id: Mapped[str] = _id()
    user_key: Mapped[str | None] = mapped_column(String(100))
    given_name: Mapped[str] = mapped_column(String(200))
    surname: Mapped[str] = mapped_column(String(200))
    nickname_given_name: Mapped[str | None] = mapped_column(String(200))
    nickname_surname: Mapped[str | None] = mapped_column(String(200))
    cpr: Mapped[str | None] = mapped_column(String(10), index=True)
    seniority: Mapped[date | None] = mapped_column(Date)

    __table_args__ = (CheckConstraint("cpr IS NULL OR length(cpr) = 10", name="ck_person_cpr"),)


class Engagement(Validity, Base):
    """An employment of a person in a unit; ``user_key`` is the payroll employment number."""

    __tablename__ = "engagement"
    id: Mapped[str] = _id()
    user_key: Mapped[str | None] = mapped_column(String(100))
    person_id: Mapped[str] = _fk("person.id")
    org_unit_id: Mapped[str] = _fk("org_unit.id")
    job_function_id: Mapped[str] = _fk("klasse.id")
    engagement_type_id: Mapped[str | None] = _fk("klasse.id", nullable=True)
    is_primary: Mapped[bool] = mapped_column(Boolean, default=False)
    fraction: Mapped[int | None] = mapped_column(Integer)
    #: OS2rollekatalog's position ``doNotInherit``: no role inheritance through this position.
    do_not_inherit: Mapped[bool] = mapped_column(Boolean, default=False)


class Association(Validity, Base):
    """A tilknytning: MED/AMR/TR roles, projects; ``person_id`` NULL means vacant."""

    __tablename__ = "association"
    id: Mapped[str] = _id()
    user_key: Mapped[str | None] = mapped_column(String(100))
    person_id: Mapped[str | None] = _fk("person.id", nullable=True)
    org_unit_id: Mapped[str] = _fk("org_unit.id")
    association_type_id: Mapped[str] = _fk("klasse.id")
    trade_union_id: Mapped[str | None] = _fk("klasse.id", nullable=True)
    job_function_id: Mapped[str | None] = _fk("klasse.id", nullable=True)


manager_responsibility = Table(
    "manager_responsibility",
    Base.metadata,
    Column("manager_id", ForeignKey("manager.id", ondelete="CASCADE"), primary_key=True),
    Column("class_id", ForeignKey("klasse.id"), primary_key=True),
)


class Manager(Validity, Base):
    """A manager function for a unit; ``person_id`` NULL means the post is vacant."""

    __tablename__ = "manager"
    id: Mapped[str] = _id()
    user_key: Mapped[str | None] = mapped_column(String(100))
    person_id: Mapped[str | None] = _fk("person.id", nullable=True)
    org_unit_id: Mapped[str] = _fk("org_unit.id")
    manager_type_id: Mapped[str | None] = _fk("klasse.id", nullable=True)
    manager_level_id: Mapped[str | None] = _fk("klasse.id", nullable=True)
    responsibilities: Mapped[list[Klasse]] = relationship(secondary=manager_responsibility)


class ManagerSubstitute(Validity, Base):
    """A stand-in for a unit's manager (OS2rollekatalog's ``ManagerSubstitute``): gets the
    unit's manager-only roles and its manager-role constraint values, as the manager does."""

    __tablename__ = "manager_substitute"
    id: Mapped[str] = _id()
    person_id: Mapped[str] = _fk("person.id")
    org_unit_id: Mapped[str] = _fk("org_unit.id")
    #: The manager post stood in for, when known.
    manager_id: Mapped[str | None] = _fk("manager.id", nullable=True)


class Leave(Validity, Base):
    """Orlov: a leave of absence on one engagement."""

    __tablename__ = "leave"
    id: Mapped[str] = _id()
    person_id: Mapped[str] = _fk("person.id")
    engagement_id: Mapped[str] = _fk("engagement.id")
    leave_type_id: Mapped[str] = _fk("klasse.id")


# --------------------------------------------------------------------------- IT


class ItSystem(Validity, Base):
    """An IT system: the directory system (AD), FK Organisation, KOMBIT systems, ..."""

    __tablename__ = "it_system"
    id: Mapped[str] = _id()
    user_key: Mapped[str] = mapped_column(String(100), unique=True)
    name: Mapped[str] = mapped_column(String(200))
    #: OS2rollekatalog system type: AD, SAML, KOMBIT, MANUAL, ...
    system_type: Mapped[str | None] = mapped_column(String(30))
    #: OS2rollekatalog's ``accessBlocked``: the system's roles are catalogued and assigned but
    #: never handed out at login (role lookups leave the whole system out).
    access_blocked: Mapped[bool] = mapped_column(Boolean, default=False)


account_engagement = Table(
    "account_engagement",
    Base.metadata,
    Column("account_id", ForeignKey("account.id", ondelete="CASCADE"), primary_key=True),
    Column("engagement_id", ForeignKey("engagement.id", ondelete="CASCADE"), primary_key=True),
)


class Account(Validity, Base):
    """An IT user (OS2mo ITUser): a person's account in one IT system, scoped to engagements."""

    __tablename__ = "account"
    id: Mapped[str] = _id()
    username: Mapped[str] = mapped_column(String(200))
    #: Lower-cased username; unique per IT system so usernames are unique case-insensitively.
    username_key: Mapped[str] = mapped_column(String(200))
    external_id: Mapped[str | None] = mapped_column(String(200))
    it_system_id: Mapped[str] = _fk("it_system.id")
    person_id: Mapped[str | None] = _fk("person.id", nullable=True)
    is_primary: Mapped[bool] = mapped_column(Boolean, default=False)
    engagements: Mapped[list[Engagement]] = relationship(secondary=account_engagement)

    __table_args__ = (
        Index("ix_account_system_username", "it_system_id", "username_key", unique=True),
    )


class Address(Validity, Base):
    """An address (e-mail, phone, DAR, EAN, ...) of a person, unit, engagement or account.

    ``address_type`` is a class whose scope is the format; ``visibility`` a class whose scope is
    PUBLIC, INTERNAL or SECRET (NULL = unclassified, treated as INTERNAL by policies).
    """

    __tablename__ = "address"
    id: Mapped[str] = _id()
    address_type_id: Mapped[str] = _fk("klasse.id")
    visibility_id: Mapped[str | None] = _fk("klasse.id", nullable=True)
    value: Mapped[str] = mapped_column(String(500))
    person_id: Mapped[str | None] = _fk("person.id", nullable=True)
    org_unit_id: Mapped[str | None] = _fk("org_unit.id", nullable=True)
    engagement_id: Mapped[str | None] = _fk("engagement.id", nullable=True)
    account_id: Mapped[str | None] = _fk("account.id", nullable=True)


kle_aspect = Table(
    "kle_aspect",
    Base.metadata,
    Column("kle_id", ForeignKey("kle.id", ondelete="CASCADE"), primary_key=True),
    Column("class_id", ForeignKey("klasse.id"), primary_key=True),
)


class Kle(Validity, Base):
    """A KLE annotation on a unit: one number with its aspects (Udfoerende/Ansvarlig/Indsigt)."""

    __tablename__ = "kle"
    id: Mapped[str] = _id()
    org_unit_id: Mapped[str] = _fk("org_unit.id")
    kle_number_id: Mapped[str] = _fk("klasse.id")
    aspects: Mapped[list[Klasse]] = relationship(secondary=kle_aspect)


class PersonKle(Validity, Base):
    """A KLE number on a person (OS2rollekatalog's user KLE): tasks the person performs or
    has insight into wherever they work. ``aspect_id`` is a KLE aspect class (Udfoerende or
    Indsigt). Counted in KLE constraints even when an engagement is do-not-inherit."""

    __tablename__ = "person_kle"
    id: Mapped[str] = _id()
    person_id: Mapped[str] = _fk("person.id")
    kle_number_id: Mapped[str] = _fk("klasse.id")
    aspect_id: Mapped[str] = _fk("klasse.id")


# --------------------------------------------------------------------------- role catalogue


class SystemRole(Validity, Base):
    """A system role (KOMBIT brugersystemrolle) defined by an IT system."""

    __tablename__ = "system_role"
    id: Mapped[str] = _id()
    it_system_id: Mapped[str] = _fk("it_system.id")
    identifier: Mapped[str] = mapped_column(String(300))
    name: Mapped[str] = mapped_column(String(200))
    description: Mapped[str | None] = mapped_column(Text)
    #: BOTH, DATA_ROLE or FUNCTION_ROLE.
    role_type: Mapped[str] = mapped_column(String(20), default="BOTH")
    #: OS2rollekatalog's ``weight`` (at least 1, default 1): among the system roles one
    #: account holds in one IT system, only those of the highest weight are effective
    #: (``SystemRoleService.filterByWeight``), so a system can rank "read" below "write".
    weight: Mapped[int] = mapped_column(Integer, default=1)


class JobRoleSystemRole(Base):
    """A system role bundled in a job-function role, with an optional data constraint."""

    __tablename__ = "job_role_system_role"
    id: Mapped[str] = _id()
    job_role_id: Mapped[str] = _fk("job_role.id", ondelete="CASCADE")
    system_role_id: Mapped[str] = _fk("system_role.id")
    #: Constraint type entity id, e.g. ``http://sts.kombit.dk/constraints/orgenhed/1``.
    constraint_type: Mapped[str | None] = mapped_column(String(300))
    #: INHERITED, EXTENDED_INHERITED, LEVEL_1..6, READ_AND_WRITE, VALUE, ...
    constraint_value_type: Mapped[str | None] = mapped_column(String(40))
    constraint_value: Mapped[str | None] = mapped_column(String(4096))
    #: The parametric constraint's name as registered with KOMBIT (OS2rollekatalog's
    #: ``constraintIdentifier``, generated once from its internal ids and uploaded): it cannot
    #: be recomputed elsewhere, so it is imported and kept. NULL: the facade makes one up.
    constraint_identifier: Mapped[str | None] = mapped_column(String(500))


class JobRole(Validity, Base):
    """A job-function role (KOMBIT jobfunktionsrolle, OS2rollekatalog UserRole)."""

    __tablename__ = "job_role"
    id: Mapped[str] = _id()
    it_system_id: Mapped[str] = _fk("it_system.id")
    identifier: Mapped[str] = mapped_column(String(300), unique=True)
    name: Mapped[str] = mapped_column(String(200))
    description: Mapped[str | None] = mapped_column(Text)
    sensitive: Mapped[bool] = mapped_column(Boolean, default=False)
    #: A role delegated by another municipality (OS2rollekatalog's ``delegatedFromCvr``): its
    #: privilege is scoped to that CVR and carries no computed constraints.
    delegated_from_cvr: Mapped[str | None] = mapped_column(String(8))
    #: OS2rollekatalog's ``allowPostponing``: the role's POSTPONED constraints take their
    #: value per assignment (:class:`PostponedConstraint`), so each assignment of it is its
    #: own OIOBPP privilege group instead of one per role.
    allow_postponing: Mapped[bool] = mapped_column(Boolean, default=False)
    system_roles: Mapped[list[JobRoleSystemRole]] = relationship(cascade="all, delete-orphan")


role_group_member = Table(
    "role_group_member",
    Base.metadata,
    Column("role_group_id", ForeignKey("role_group.id", ondelete="CASCADE"), primary_key=True),
    Column("job_role_id", ForeignKey("job_role.id", ondelete="CASCADE"), primary_key=True),
)


class RoleGroup(Validity, Base):
    """A role group (rollebuket): a bundle of job-function roles, possibly across systems."""

    __tablename__ = "role_group"
    id: Mapped[str] = _id()
    identifier: Mapped[str] = mapped_column(String(300), unique=True)
    name: Mapped[str] = mapped_column(String(200))
    description: Mapped[str | None] = mapped_column(Text)
    job_roles: Mapped[list[JobRole]] = relationship(secondary=role_group_member)


class AccountRoleAssignment(Validity, Base):
    """A direct assignment of a job-function role or a role group to an account."""

    __tablename__ = "account_role_assignment"
    id: Mapped[str] = _id()
    account_id: Mapped[str] = _fk("account.id", ondelete="CASCADE")
    job_role_id: Mapped[str | None] = _fk("job_role.id", nullable=True)
    role_group_id: Mapped[str | None] = _fk("role_group.id", nullable=True)

    __table_args__ = (
        CheckConstraint(
            "(job_role_id IS NULL) <> (role_group_id IS NULL)", name="ck_account_assignment_one"
        ),
    )


class PostponedConstraint(Base):
    """The value of a POSTPONED constraint for one direct role assignment.

    A system-role link whose ``constraint_value_type`` is ``POSTPONED`` has no value of its
    own: the value is given when the role is assigned to an account (OS2rollekatalog's
    ``PostponedConstraint`` on a ``UserUserRoleAssignment``; assignments through units and
    role groups carry none there either). ``value`` is comma-separated, as there. Owned by
    the assignment, so it has no validity of its own: it is in effect while the assignment is.
    """

    __tablename__ = "postponed_constraint"
    id: Mapped[str] = _id()
    assignment_id: Mapped[str] = _fk("account_role_assignment.id", ondelete="CASCADE")
    system_role_id: Mapped[str] = _fk("system_role.id")
    #: Constraint type entity id, as on the system-role link it fills in.
    constraint_type: Mapped[str] = mapped_column(String(300))
    value: Mapped[str] = mapped_column(Text)

    __table_args__ = (
        Index("ix_postponed_constraint_one", "assignment_id", "system_role_id",
              "constraint_type", unique=True),
    )


unit_assignment_title = Table(
    "unit_assignment_title",
    Base.metadata,
    Column(
        "assignment_id", ForeignKey("unit_role_assignment.id", ondelete="CASCADE"), primary_key=True
    ),
    Column("class_id", ForeignKey("klasse.id"), primary_key=True),
)
unit_assignment_excepted_account = Table(
    "unit_assignment_excepted_account",
    Base.metadata,
    Column(
        "assignment_id", ForeignKey("unit_role_assignment.id", ondelete="CASCADE"), primary_key=True
    ),
    Column("account_id", ForeignKey("account.id", ondelete="CASCADE"), primary_key=True),
)
unit_assignment_excepted_unit = Table(
    "unit_assignment_excepted_unit",
    Base.metadata,
    Column(
        "assignment_id", ForeignKey("unit_role_assignment.id", ondelete="CASCADE"), primary_key=True
    ),
    Column("org_unit_id", ForeignKey("org_unit.id"), primary_key=True),
)

#: Title list modes of a unit assignment, as OS2rollekatalog's ``containsTitles``.
TITLE_MODES = ("NONE", "POSITIVE", "NEGATIVE")


class UnitRoleAssignment(Validity, Base):
    """A role or role group assigned to an org unit, reaching the accounts placed there.

    ``inherit`` extends it to descendant units; ``title_mode`` POSITIVE keeps only the listed
    titles, NEGATIVE all but them; excepted accounts and units are left out; ``manager_only``
    reaches only the unit's managers.
    """

    __tablename__ = "unit_role_assignment"
    id: Mapped[str] = _id()
    org_unit_id: Mapped[str] = _fk("org_unit.id")
    job_role_id: Mapped[str | None] = _fk("job_role.id", nullable=True)
    role_group_id: Mapped[str | None] = _fk("role_group.id", nullable=True)
    inherit: Mapped[bool] = mapped_column(Boolean, default=False)
    manager_only: Mapped[bool] = mapped_column(Boolean, default=False)
    title_mode: Mapped[str] = mapped_column(String(10), default="NONE")
    titles: Mapped[list[Klasse]] = relationship(secondary=unit_assignment_title)
    excepted_accounts: Mapped[list[Account]] = relationship(
        secondary=unit_assignment_excepted_account
    )
    excepted_units: Mapped[list[OrgUnit]] = relationship(secondary=unit_assignment_excepted_unit)

    __table_args__ = (
        CheckConstraint(
            "(job_role_id IS NULL) <> (role_group_id IS NULL)", name="ck_unit_assignment_one"
        ),
        CheckConstraint(
            "title_mode IN ('NONE', 'POSITIVE', 'NEGATIVE')", name="ck_unit_assignment_mode"
        ),
    )


# --------------------------------------------------------------------------- change log


class Change(Base):
    """One entry of the change log: every write to the store appends one per object touched.

    ``seq`` is monotonic; readers (the directory) poll for ``seq > last_seen``. An
    ``object_type`` of ``*`` marks a bulk write (import, demo generation) after which readers
    rebuild everything.
    """

    __tablename__ = "change_log"
    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(DateTime, nullable=False)
    actor: Mapped[str] = mapped_column(String(200))
    object_type: Mapped[str] = mapped_column(String(50))
    object_id: Mapped[str | None] = mapped_column(String(UUID_LEN))
    operation: Mapped[str] = mapped_column(String(20))


#: Tables holding facts with validity, by the name used in the JSON exchange format.
FACT_MODELS: dict[str, type[Base]] = {
    "organisation": Organisation,
    "facets": Facet,
    "classes": Klasse,
    "org_units": OrgUnit,
    "related_units": RelatedUnit,
    "persons": Person,
    "engagements": Engagement,
    "associations": Association,
    "managers": Manager,
    "manager_substitutes": ManagerSubstitute,
    "leaves": Leave,
    "it_systems": ItSystem,
    "accounts": Account,
    "addresses": Address,
    "kles": Kle,
    "person_kles": PersonKle,
    "system_roles": SystemRole,
    "job_roles": JobRole,
    "role_groups": RoleGroup,
    "account_role_assignments": AccountRoleAssignment,
    "unit_role_assignments": UnitRoleAssignment,
    "postponed_constraints": PostponedConstraint,
}
