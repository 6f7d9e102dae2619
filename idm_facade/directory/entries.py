"""Build directory entries (accounts, units, roles, role groups) from loaded store rows.

An :class:`Entry` holds simple attributes under their *physical* directory names (address
values once per visibility bucket, sensitive titles apart) and complex attributes as element
dicts. Front ends never look at the store: they read entries through the attribute map and the
client's policy.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from idm_facade.directory import roles as role_calc
from idm_facade.directory.load import OrgData
from idm_facade.directory.policy import SENSITIVE_TITLE
from idm_facade.directory.posix import PosixNumbers
from idm_facade.directory.sources import address_visibility, sourced
from schemas.attributes import ACCOUNT, ROLE, ROLEGROUP, UNIT

A, U = frozenset({ACCOUNT}), frozenset({UNIT})

#: Derived look-ups cached on ``OrgData.derived``, with the OrgData tables each depends on;
#: an incremental refresh keeps those whose tables did not change, and drops any look-up not
#: listed here.
DERIVED_DEPENDS: dict[str, frozenset[str]] = {
    "chains": frozenset({"units"}),
    "paths": frozenset({"units"}),
    "roles": frozenset({"units", "unit_assignments", "account_assignments", "managers",
                        "manager_substitutes", "engagements"}),
    "directory_accounts": frozenset({"accounts"}),
    "accounts_by_person": frozenset({"accounts"}),
    "addresses_by": frozenset({"addresses"}),
    "kle_by_unit": frozenset({"kles"}),
    "managers_by_unit": frozenset({"managers"}),
    "associations_by_person": frozenset({"associations"}),
    "constraints": frozenset({"units", "kles", "kle_aspects", "person_kles"}),
}

#: The IT system whose accounts are the directory's people (SCIM Users / LDAP persons).
DEFAULT_DIRECTORY_SYSTEM = "AD"

_EMAIL, _PHONE = "EMAIL", "PHONE"


@dataclass(slots=True)
class Entry:
    """One directory entry. Immutable by convention: a refresh replaces, never edits."""

    id: str
    kind: str
    attrs: dict[str, tuple]
    complex: dict[str, tuple[dict, ...]] = field(default_factory=dict)
    version: str = ""

    def first(self, name: str, default: Any = None) -> Any:
        """The first value of a simple attribute, or ``default``."""
        values = self.attrs.get(name)
        return values[0] if values else default


def _version(entry: Entry) -> str:
    digest = hashlib.blake2b(digest_size=8)
    digest.update(repr(sorted(entry.attrs.items())).encode())
    digest.update(repr(sorted(entry.complex.items())).encode())
    return digest.hexdigest()


def _t(*values: Any) -> tuple:
    return tuple(v for v in values if v is not None and v != "")


class EntryBuilder:
    """Builds entries from one :class:`OrgData`; look-ups are derived once and shared."""

    def __init__(self, data: OrgData, directory_system: str = DEFAULT_DIRECTORY_SYSTEM,
                 numbers: PosixNumbers | None = None) -> None:
        self.data = data
        #: uidNumber/gidNumber handed out so far (a refresh passes the previous ones on).
        self.numbers = numbers if numbers is not None else PosixNumbers()
        self.role_index = role_calc.build_index(data)
        self.chains = data.derived["chains"]
        system = next((s for s in data.it_systems.values() if s.user_key == directory_system),
                      None)
        self.system_id = system.id if system else None
        self.system_key = directory_system
        self.org_name = data.organisation.name if data.organisation else ""
        derived = data.derived
        if "directory_accounts" not in derived:
            derived["directory_accounts"] = [a for a in data.accounts.values()
                                             if a.it_system_id == self.system_id]
            by_person: dict[str, list[str]] = defaultdict(list)
            for acc in sorted(derived["directory_accounts"],
                              key=lambda a: (not a.is_primary, a.id)):
                if acc.person_id:
                    by_person[acc.person_id].append(acc.id)
            derived["accounts_by_person"] = by_person
        self.directory_accounts = derived["directory_accounts"]
        self.accounts_by_person: dict[str, list[str]] = derived["accounts_by_person"]
        if "addresses_by" not in derived:
            addresses_by: dict[tuple[str, str], list[Any]] = defaultdict(list)
            for addr in data.addresses.values():
                for key in ("person_id", "org_unit_id", "engagement_id", "account_id"):
                    owner = getattr(addr, key)
                    if owner:
                        addresses_by[(key, owner)].append(addr)
            derived["addresses_by"] = addresses_by
        self.addresses_by: dict[tuple[str, str], list[Any]] = derived["addresses_by"]
        if "kle_by_unit" not in derived:
            kle_by_unit: dict[str, list[str]] = defaultdict(list)
            for kle in data.kles.values():
                cls = data.classes.get(kle.kle_number_id)
                kle_by_unit[kle.org_unit_id].append(cls.user_key if cls else kle.kle_number_id)
            derived["kle_by_unit"] = kle_by_unit
        self.kle_by_unit: dict[str, list[str]] = derived["kle_by_unit"]
        if "managers_by_unit" not in derived:
            managers_by_unit: dict[str, list[Any]] = defaultdict(list)
            for mgr in data.managers.values():
                managers_by_unit[mgr.org_unit_id].append(mgr)
            derived["managers_by_unit"] = managers_by_unit
        self.managers_by_unit: dict[str, list[Any]] = derived["managers_by_unit"]
        if "paths" not in derived:
            derived["paths"] = {u: "\\".join(data.units[x].name for x in reversed(chain))
                                for u, chain in self.chains.items()}
        self.paths: dict[str, str] = derived["paths"]
        self.grants: dict[str, list[role_calc.Grant]] = {}
        self.unit_members: dict[str, set[str]] = defaultdict(set)
        self.role_members: dict[str, set[str]] = defaultdict(set)
        self.group_members: dict[str, set[str]] = defaultdict(set)

    # ------------------------------------------------------------------ helpers

    def unit_manager_account(self, unit_id: str, exclude_person: str | None = None) -> str | None:
        """Account of the unit's manager, walking up while the post is vacant (or is the
        person asking: one's manager is never oneself)."""
        for unit in self.chains.get(unit_id, ()):
            for mgr in self.managers_by_unit.get(unit, ()):
                if mgr.person_id and mgr.person_id != exclude_person:
                    accounts = self.accounts_by_person.get(mgr.person_id)
                    if accounts:
                        return accounts[0]
        return None

    def _addresses(self, owners: list[tuple[str, str]]
                   ) -> tuple[dict, list[dict], list[dict], list[dict]]:
        """Addresses of the owners: flattened attributes per visibility bucket, and the
        e-mail, phone and postal elements."""
        attrs: dict[str, list] = defaultdict(list)
        emails: list[dict] = []
        phones: list[dict] = []
        other: list[dict] = []
        for addr in self._owner_addresses(owners):
            cls = self.data.classes.get(addr.address_type_id)
            scope = cls.scope if cls else None
            visibility = address_visibility(self.data, addr)
            if visibility == "SECRET":
                continue  # never served, so never held
            kind = "work"  # OS2mo's employee and unit addresses are all work addresses
            element = {"value": addr.value, "type": kind, "primary": False,
                       "display": cls.name if cls else None, "visibility": visibility}
            if scope == _EMAIL:
                emails.append(element)
                attrs[f"emails.value@{visibility}"].append(addr.value)
                attrs[f"emails.type@{visibility}"].append(kind)
            elif scope == _PHONE:
                phones.append(element)
                attrs[f"phoneNumbers.value@{visibility}"].append(addr.value)
                attrs[f"phoneNumbers.type@{visibility}"].append(kind)
            elif scope in ("DAR", "TEXT"):
                other.append({"type": "work", "formatted": addr.value, "primary": False,
                              "visibility": visibility})
        for elements in (emails, phones):
            if elements:
                elements[0]["primary"] = True
        return attrs, emails, phones, other

    def _owner_addresses(self, owners: list[tuple[str, str]]) -> list[Any]:
        """The addresses of the owners, each once, in owner order."""
        found: list[Any] = []
        seen: set[str] = set()
        for owner in owners:
            for addr in self.addresses_by.get(owner, ()):
                if addr.id not in seen:
                    seen.add(addr.id)
                    found.append(addr)
        return found

    # ------------------------------------------------------------------ accounts

    def account(self, account: Any) -> Entry:
        """The entry of one directory account.

        Longer than most on purpose: the account's attributes are assembled in one place so
        the whole entry reads top to bottom; each look-up it needs is a helper."""
        data = self.data
        person = data.persons.get(account.person_id) if account.person_id else None
        engagements = self._engagements(account)
        primary = engagements[0] if engagements else None
        grants = role_calc.effective_roles(data, account.id)
        self.grants[account.id] = grants
        given = person.given_name if person else ""
        family = person.surname if person else ""
        nick = " ".join(_t(person.nickname_given_name, person.nickname_surname)) if person else ""
        formatted = f"{given} {family}".strip()
        units = list(dict.fromkeys(eng.org_unit_id for eng in engagements))
        ancestors = list(dict.fromkeys(anc for unit in units
                                       for anc in self.chains.get(unit, ())))
        kle = sorted({k for u in units for k in self.kle_by_unit.get(u, ())})
        title_attr, title = self._title(primary)
        primary_unit = primary.org_unit_id if primary else None
        division = self._division(primary_unit)
        unit_row = data.units.get(primary_unit) if primary_unit else None
        manager = self.unit_manager_account(primary_unit, account.person_id) \
            if primary_unit else None
        owners = [("account_id", account.id)]
        owners += [("engagement_id", e.id) for e in engagements]
        if account.person_id:
            owners.append(("person_id", account.person_id))
        addr_attrs, emails, phones, others = self._addresses(owners)
        # Primary group: the primary unit's group; accounts without a unit share a fixed gid.
        gid = self.numbers.gid(primary_unit) if primary_unit in data.units \
            else self.numbers.range.no_unit_gid
        # Canonical order (docs/scim.md, "Order of values"): roles and role groups by id.
        role_ids = list(dict.fromkeys(g.role_id for g in grants))
        rolegroup_ids = sorted({g.role_group_id for g in grants if g.role_group_id})
        member_units = list(units)
        if account.person_id:
            for assoc in self._associations_by_person().get(account.person_id, ()):
                if assoc not in member_units:
                    member_units.append(assoc)
        for unit in member_units:
            self.unit_members[unit].add(account.id)
        for role in role_ids:
            self.role_members[role].add(account.id)
        for group in rolegroup_ids:
            self.group_members[group].add(account.id)
        attrs: dict[str, tuple] = {
            "id": (account.id,),
            "kind": (ACCOUNT,),
            "externalId": _t(account.external_id),
            "userName": (account.username,),
            "displayName": _t(nick or formatted),
            "givenName": _t(given),
            "familyName": _t(family),
            "formattedName": _t(formatted),
            "nickName": _t(nick),
            title_attr: _t(title),
            "active": (bool(engagements),),
            "cpr": _t(person.cpr if person else None),
            "personId": _t(account.person_id),
            "employeeNumber": _t(primary.user_key if primary else None),
            "organization": _t(self.org_name),
            "division": _t(division),
            "department": _t(unit_row.name if unit_row else None),
            "costCenter": _t(unit_row.user_key if unit_row else None),
            "manager": _t(manager),
            "unit": tuple(units),
            "ancestor": tuple(ancestors),
            "orgUnitPath": tuple(self.paths[u] for u in units if u in self.paths),
            "kle": tuple(kle),
            "itSystem": (self.system_key,),
            "memberOf": tuple(member_units + role_ids + rolegroup_ids),
            "role": tuple(role_ids),
            "created": (account.valid_from,),
            "modified": (max([account.valid_from, *(e.valid_from for e in engagements)]),),
            "uidNumber": (self.numbers.uid(account.id),),
            "gidNumber": (gid,),
        }
        for key, values in addr_attrs.items():
            attrs[key] = tuple(values)
        attrs.update(sourced(data, A, {"engagement": primary, "person": person,
                                       "account": account}, self._owner_addresses(owners)))
        complex_: dict[str, tuple[dict, ...]] = {
            "emails": tuple(emails),
            "phoneNumbers": tuple(phones),
            "addresses": tuple(others),
            "engagements": tuple(self._engagement_element(e) for e in engagements),
            "roles": tuple(self._grant_element(g) for g in grants),
        }
        entry = Entry(account.id, ACCOUNT, {k: v for k, v in attrs.items() if v}, complex_)
        entry.version = _version(entry)
        return entry

    def _engagements(self, account: Any) -> list[Any]:
        """The account's engagements in effect, the primary one first."""
        return role_calc.account_engagements(self.data, self.role_index, account)

    def _title(self, primary: Any) -> tuple[str, str | None]:
        """(physical attribute, title) of the primary engagement's job function: a
        sensitive title is kept apart (masked unless the client is granted it)."""
        if primary is None:
            return "title", None
        cls = self.data.classes.get(primary.job_function_id)
        attr = SENSITIVE_TITLE if cls is not None and cls.sensitive else "title"
        return attr, self.data.class_name(primary.job_function_id)

    def _division(self, unit_id: str | None) -> str | None:
        """The name of ``unit_id``'s directorate (see :meth:`_directorate`)."""
        directorate = self._directorate(unit_id)
        return self.data.units[directorate].name if directorate else None

    def _directorate(self, unit_id: str | None,
                     chains: dict[str, tuple[str, ...]] | None = None) -> str | None:
        """The directorate: the unit on ``unit_id``'s path right below the root of its
        hierarchy (the root itself when ``unit_id`` is the root)."""
        chain = (chains or self.chains).get(unit_id, ()) if unit_id else ()
        if len(chain) >= 2:
            return chain[-2]
        return chain[-1] if chain else None

    def _hierarchy(self, unit_id: str) -> str | None:
        """The name of the hierarchy ``unit_id`` belongs to: its root unit's name."""
        chain = self.chains.get(unit_id, (unit_id,))
        return self.data.units[chain[-1]].name

    def _associations_by_person(self) -> dict[str, list[str]]:
        """Units where each person holds an association (MED, TR, ...)."""
        return role_calc.associations_by_person(self.data)

    def _engagement_element(self, eng: Any) -> dict:
        unit = self.data.units.get(eng.org_unit_id)
        cls = self.data.classes.get(eng.job_function_id)
        return {"unit": eng.org_unit_id, "unitName": unit.name if unit else None,
                "title": cls.name if cls else None,
                "titleSensitive": bool(cls and cls.sensitive),
                "employeeNumber": eng.user_key, "primary": bool(eng.is_primary),
                "validFrom": eng.valid_from, "validTo": eng.valid_to}

    def _grant_element(self, grant: role_calc.Grant) -> dict:
        role = self.data.job_roles[grant.role_id]
        system = self.data.it_systems.get(role.it_system_id)
        return {"value": grant.role_id, "display": role.name, "type": "jobRole",
                "identifier": role.identifier,
                "itSystem": system.user_key if system else None, "via": grant.via,
                "viaUnit": grant.unit_id, "viaRoleGroup": grant.role_group_id,
                "assignment": grant.assignment_id,
                "validFrom": grant.valid_from, "validTo": grant.valid_to}

    # ------------------------------------------------------------------ groups

    def unit(self, unit: Any) -> Entry:
        """The entry of one org unit (call after all accounts, for members)."""
        data = self.data
        chain = self.chains.get(unit.id, (unit.id,))
        addr_attrs, emails, phones, others = self._addresses([("org_unit_id", unit.id)])
        attrs: dict[str, tuple] = {
            "id": (unit.id,),
            "kind": (UNIT,),
            "displayName": (unit.name,),
            "userKey": _t(unit.user_key),
            "parent": _t(unit.parent_id if unit.parent_id in data.units else None),
            "ancestor": chain,
            "orgUnitPath": _t(self.paths.get(unit.id)),
            "unitType": _t(data.class_name(unit.unit_type_id)),
            "hierarchy": _t(self._hierarchy(unit.id)),
            "managerId": _t(self.unit_manager_account(unit.id)),
            "kle": tuple(sorted(self.kle_by_unit.get(unit.id, ()))),
            "member": tuple(sorted(self.unit_members.get(unit.id, ()))),
            "gidNumber": (self.numbers.gid(unit.id),),
            "created": (unit.valid_from,),
            "modified": (unit.valid_from,),
        }
        for key, values in addr_attrs.items():
            attrs[key] = tuple(values)
        attrs.update(sourced(data, U, {"unit": unit},
                             self._owner_addresses([("org_unit_id", unit.id)])))
        entry = Entry(unit.id, UNIT, {k: v for k, v in attrs.items() if v},
                      {"emails": tuple(emails), "phoneNumbers": tuple(phones),
                       "addresses": tuple(others)})
        entry.version = _version(entry)
        return entry

    def role(self, role: Any) -> Entry:
        """The entry of one job-function role."""
        system = self.data.it_systems.get(role.it_system_id)
        attrs = {
            "id": (role.id,),
            "kind": (ROLE,),
            "displayName": (role.name,),
            "userKey": (role.identifier,),
            "roleId": (role.identifier,),
            "itSystem": _t(system.user_key if system else None),
            "member": tuple(sorted(self.role_members.get(role.id, ()))),
            "gidNumber": (self.numbers.gid(role.id),),
            "created": (role.valid_from,),
            "modified": (role.valid_from,),
        }
        entry = Entry(role.id, ROLE, {k: v for k, v in attrs.items() if v}, {})
        entry.version = _version(entry)
        return entry

    def role_group(self, group: Any) -> Entry:
        """The entry of one role group."""
        attrs = {
            "id": (group.id,),
            "kind": (ROLEGROUP,),
            "displayName": (group.name,),
            "userKey": (group.identifier,),
            "roleId": (group.identifier,),
            "member": tuple(sorted(self.group_members.get(group.id, ()))),
            "gidNumber": (self.numbers.gid(group.id),),
            "created": (group.valid_from,),
            "modified": (group.valid_from,),
        }
        entry = Entry(group.id, ROLEGROUP, {k: v for k, v in attrs.items() if v}, {})
        entry.version = _version(entry)
        return entry

    def build_all(self) -> list[Entry]:
        """Every entry: accounts first (they fill the member lists), then groups."""
        self.numbers.allocate(
            (a.id for a in self.directory_accounts),
            [*self.data.units, *self.data.job_roles, *self.data.role_groups])
        entries = [self.account(a) for a in self.directory_accounts]
        entries += [self.unit(u) for u in self.data.units.values()]
        entries += [self.role(r) for r in self.data.job_roles.values()]
        entries += [self.role_group(g) for g in self.data.role_groups.values()]
        return entries


def build_entries(data: OrgData, directory_system: str = DEFAULT_DIRECTORY_SYSTEM,
                  numbers: PosixNumbers | None = None) -> tuple[list[Entry], EntryBuilder]:
    """All entries for ``data``; also returns the builder (grants, members, posix numbers)
    for reuse. ``numbers``: those handed out before (kept), None to start afresh."""
    builder = EntryBuilder(data, directory_system, numbers)
    return builder.build_all(), builder

