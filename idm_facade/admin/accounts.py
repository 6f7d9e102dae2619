"""Administrators of the browser console: their Argon2 password hashes, roles and lockout.

Administrators are facade state, like clients (``idm_facade.access.clients``): their own
table (``facade_admin``) with their own metadata, in the store's database by default, so
every ``--workers`` process and replica sees the same accounts, failure counts and lockouts.

Roles, each including the one before: ``viewer`` (organisation and roles), ``dpo`` (also the
access log: who looked at whom), ``admin`` (also clients and Klassifikation).

A login verifies the password with Argon2id. Failures are counted per administrator; after
:data:`MAX_FAILURES` in a row the account is locked for :data:`LOCK_MINUTES`, and a locked
account is refused with the same answer as a wrong password (so the lock tells a guesser
nothing). An unknown name costs an Argon2 run too, so timing does not tell names apart.
``generation`` is bumped by logout and by a password change: sessions carry the generation
they were made in and end when it moves.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import DateTime, Engine, Integer, String, select
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from store.validity import utcnow

ROLES = ("viewer", "dpo", "admin")
MAX_FAILURES = 5
LOCK_MINUTES = 15
MIN_PASSWORD = 12
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")
_HASHER = PasswordHasher()
#: Verified against when the name is unknown, so an unknown name costs what a known one does.
_DUMMY = _HASHER.hash("idm-facade: no such administrator")


class AdminError(ValueError):
    """An administrator operation that cannot be done (bad name, role, short password...)."""


class _Base(DeclarativeBase):
    pass


class AdminAccount(_Base):
    """One administrator of the console."""

    __tablename__ = "facade_admin"
    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    role: Mapped[str] = mapped_column(String(10))
    password_hash: Mapped[str] = mapped_column(String(200))
    failures: Mapped[int] = mapped_column(Integer, default=0)
    locked_until: Mapped[datetime | None] = mapped_column(DateTime)
    generation: Mapped[int] = mapped_column(Integer, default=0)
    created: Mapped[datetime] = mapped_column(DateTime)


@dataclass(frozen=True)
class Admin:
    """A verified administrator, as a session holds it."""

    name: str
    role: str
    generation: int

    def may(self, role: str) -> bool:
        """Whether this administrator's role includes ``role``."""
        return ROLES.index(self.role) >= ROLES.index(role)


class AdminRegistry:
    """The administrators in ``engine``'s database (table made on first use)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        _Base.metadata.create_all(engine)

    def add(self, name: str, role: str, password: str) -> None:
        """A new administrator."""
        if not _NAME.match(name or ""):
            raise AdminError(f"invalid administrator name {name!r}: letters, digits, '.', "
                             f"'_', '@' and '-', at most 64")
        if role not in ROLES:
            raise AdminError(f"role must be one of {', '.join(ROLES)}, not {role!r}")
        if len(password) < MIN_PASSWORD:
            raise AdminError(f"the password must have at least {MIN_PASSWORD} characters")
        with Session(self.engine) as session, session.begin():
            if session.get(AdminAccount, name) is not None:
                raise AdminError(f"administrator {name!r} exists")
            session.add(AdminAccount(name=name, role=role, password_hash=_HASHER.hash(password),
                                     failures=0, generation=0, created=utcnow()))

    def set_password(self, name: str, password: str) -> None:
        """Replace the password (ending every session of the administrator)."""
        if len(password) < MIN_PASSWORD:
            raise AdminError(f"the password must have at least {MIN_PASSWORD} characters")
        with Session(self.engine) as session, session.begin():
            row = self._row(session, name)
            row.password_hash = _HASHER.hash(password)
            row.failures, row.locked_until = 0, None
            row.generation += 1

    def remove(self, name: str) -> None:
        with Session(self.engine) as session, session.begin():
            session.delete(self._row(session, name))

    def list(self) -> list[AdminAccount]:
        with Session(self.engine) as session:
            return list(session.scalars(select(AdminAccount).order_by(AdminAccount.name)))

    def login(self, name: str, password: str, now: datetime | None = None) -> Admin | None:
        """The administrator when the password is right and the account not locked; else
        None (wrong password, unknown name and lockout alike), counting the failure."""
        now = now or utcnow()
        with Session(self.engine) as session, session.begin():
            row = session.get(AdminAccount, name) if name else None
            if row is None:
                _verify(_DUMMY, password)
                return None
            locked = row.locked_until is not None and row.locked_until > now
            if _verify(row.password_hash, password) and not locked:
                row.failures, row.locked_until = 0, None
                return Admin(row.name, row.role, row.generation)
            if not locked:
                row.failures += 1
                if row.failures >= MAX_FAILURES:
                    row.locked_until = now + timedelta(minutes=LOCK_MINUTES)
                    row.failures = 0
            return None

    def current(self, name: str, generation: int) -> Admin | None:
        """The administrator a session names, if that session is still valid."""
        with Session(self.engine) as session:
            row = session.get(AdminAccount, name)
            if row is None or row.generation != generation:
                return None
            return Admin(row.name, row.role, row.generation)

    def logout(self, name: str) -> None:
        """End every session of the administrator."""
        with Session(self.engine) as session, session.begin():
            row = session.get(AdminAccount, name)
            if row is not None:
                row.generation += 1

    @staticmethod
    def _row(session: Session, name: str) -> AdminAccount:
        row = session.get(AdminAccount, name)
        if row is None:
            raise AdminError(f"unknown administrator {name!r}")
        return row


def _verify(hashed: str, password: str) -> bool:
    try:
        return _HASHER.verify(hashed, password)
    except (VerificationError, InvalidHashError):
        return False
