"""Hand-built small organisations for tests that need exact, readable cases.

Writes through the ORM (so the change log records every write), with short defaults for
everything a case does not care about.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Engine

from store import models as m
from store.engine import write_session
from store.validity import BEGINNING


class OrgBuilder:
    """Builds objects into one store; each method commits and returns the new id."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._classes: dict[tuple[str, str], str] = {}
        self._facets: dict[str, str] = {}
        self._counter = 0
        self.org = self._add(m.Organisation(user_key="test", name="Testby Kommune",
                                            municipality_code=999, cvr="99999999",
                                            kombit_domain="testby.dk"))
        self.ad = self._add(m.ItSystem(user_key="AD", name="Active Directory",
                                       system_type="AD"))
        self.kombit = self._add(m.ItSystem(user_key="KOMBIT-SAG", name="Sagssystem",
                                           system_type="KOMBIT"))

    def _add(self, obj: Any) -> str:
        with write_session(self.engine, actor="test") as session:
            session.add(obj)
            session.flush()
            return obj.id

    def _n(self) -> int:
        self._counter += 1
        return self._counter

    def klass(self, facet: str, user_key: str, name: str | None = None,
              scope: str | None = None, sensitive: bool = False) -> str:
        """A class in a facet (created on first use, then reused)."""
        if facet not in self._facets:
            self._facets[facet] = self._add(m.Facet(user_key=facet))
        key = (facet, user_key)
        if key not in self._classes:
            self._classes[key] = self._add(m.Klasse(
                facet_id=self._facets[facet], user_key=user_key, name=name or user_key,
                scope=scope, sensitive=sensitive))
        return self._classes[key]

    def title(self, name: str, sensitive: bool = False) -> str:
        """A job function class."""
        return self.klass("engagement_job_function", name, name, sensitive=sensitive)

    def unit(self, name: str, parent: str | None = None, **kw: Any) -> str:
        """An org unit."""
        return self._add(m.OrgUnit(user_key=kw.pop("user_key", f"U{self._n()}"), name=name,
                                   parent_id=parent, **kw))

    def person(self, given: str, surname: str, cpr: str | None = None, **kw: Any) -> str:
        """A person."""
        return self._add(m.Person(given_name=given, surname=surname, cpr=cpr, **kw))

    def engagement(self, person: str, unit: str, title: str | None = None,
                   primary: bool = True, **kw: Any) -> str:
        """An engagement (default title "Konsulent")."""
        return self._add(m.Engagement(
            user_key=kw.pop("user_key", f"E{self._n():05d}"), person_id=person,
            org_unit_id=unit, job_function_id=title or self.title("Konsulent"),
            is_primary=primary, **kw))

    def account(self, person: str | None, username: str, system: str | None = None,
                engagements: tuple[str, ...] = (), **kw: Any) -> str:
        """An account (default in AD), optionally scoped to engagements."""
        with write_session(self.engine, actor="test") as session:
            acc = m.Account(username=username, username_key=username.lower(),
                            it_system_id=system or self.ad, person_id=person, **kw)
            acc.engagements = [session.get(m.Engagement, e) for e in engagements]
            session.add(acc)
            session.flush()
            return acc.id

    def address(self, value: str, scope: str = "EMAIL", visibility: str = "PUBLIC",
                **owner: Any) -> str:
        """An address of a person/unit/engagement/account (pass e.g. ``person_id=``)."""
        type_id = self.klass("address_type", f"{scope}-type", scope.title(), scope)
        vis_id = self.klass("visibility", visibility, visibility, visibility)
        return self._add(m.Address(address_type_id=type_id, visibility_id=vis_id, value=value,
                                   **owner))

    def manager(self, unit: str, person: str | None, **kw: Any) -> str:
        """A manager of a unit (person None = vacant)."""
        return self._add(m.Manager(org_unit_id=unit, person_id=person, **kw))

    def job_role(self, name: str, system: str | None = None, **kw: Any) -> str:
        """A job-function role."""
        return self._add(m.JobRole(it_system_id=system or self.kombit,
                                   identifier=kw.pop("identifier", f"id-{name}"), name=name,
                                   **kw))

    def role_group(self, name: str, roles: tuple[str, ...]) -> str:
        """A role group bundling job roles."""
        with write_session(self.engine, actor="test") as session:
            group = m.RoleGroup(identifier=f"rg-{name}", name=name)
            group.job_roles = [session.get(m.JobRole, r) for r in roles]
            session.add(group)
            session.flush()
            return group.id

    def assign_account(self, account: str, role: str | None = None,
                       group: str | None = None, **kw: Any) -> str:
        """A direct assignment."""
        return self._add(m.AccountRoleAssignment(account_id=account, job_role_id=role,
                                                 role_group_id=group, **kw))

    def assign_unit(self, unit: str, role: str | None = None, group: str | None = None, *,
                    titles: tuple[str, ...] = (), excepted_accounts: tuple[str, ...] = (),
                    excepted_units: tuple[str, ...] = (), **kw: Any) -> str:
        """A unit assignment with its narrowing lists."""
        with write_session(self.engine, actor="test") as session:
            a = m.UnitRoleAssignment(org_unit_id=unit, job_role_id=role, role_group_id=group,
                                     **kw)
            a.titles = [session.get(m.Klasse, t) for t in titles]
            a.excepted_accounts = [session.get(m.Account, x) for x in excepted_accounts]
            a.excepted_units = [session.get(m.OrgUnit, x) for x in excepted_units]
            session.add(a)
            session.flush()
            return a.id


def days(n: int, base: datetime | None = None) -> datetime:
    """``base`` (default: the validity epoch) shifted by ``n`` days."""
    return (base or BEGINNING) + timedelta(days=n)
