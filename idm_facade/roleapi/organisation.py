"""OS2rollekatalog's organisation read (``GET /api/organisation/v3``), from the snapshot.

The shape is ``OrganisationDTO`` as OS2rollekatalog exports it (``OrganisationApi.java``,
``OrganisationExporter.java`` and the DTOs ``OrgUnitDTO``, ``UserDTO``, ``PositionDTO``,
``UserOUFunctionDTO``, ``ManagerDTO`` under ``ui/src/main/java/dk/digitalidentity/rc/
controller/api/model``): the units with their level, KLE and manager, and the users that have
a position, with positions, functions and KLE. A *user* is an account of the directory IT
system.

It is a bulk disclosure, so it goes through the client's view like everything else: only the
units and accounts the client may see, the CPR number only with the CPR grant (``cpr`` is
``null`` otherwise; OS2rollekatalog always sends it), a position's title only when the
client may read it, and one access record naming every person in the answer. The write side
(``POST /api/organisation/v3``) is not served: the facade reads from its own store.
"""

from __future__ import annotations

from typing import Any

from werkzeug.wrappers import Request

from idm_facade.directory import constraints as cons
from idm_facade.directory import filters as f
from idm_facade.directory import roles as role_calc
from idm_facade.directory.entries import Entry
from idm_facade.directory.policy import ACCOUNTS_ONLY
from idm_facade.directory.view import ClientView
from idm_facade.roleapi.api import Handler, RoleView


def _level(unit: Any) -> str:
    level = getattr(unit, "role_level", None)
    return f"LEVEL_{level}" if level else "NONE"


def _unit_json(view: ClientView, data: Any, index: cons.ConstraintIndex, unit: Any) -> dict:
    """``OrgUnitDTO``; the manager only when the client may see the manager's account."""
    kle = index.kle.get(unit.id, {})
    entry = view.get(unit.id)
    manager_id = view.first(entry, "managerId") if entry is not None else None
    manager = view.get(str(manager_id)) if manager_id else None
    return {"uuid": unit.id, "name": unit.name, "parentOrgUnitUuid": unit.parent_id,
            "inheritKle": bool(unit.inherit_kle), "level": _level(unit),
            "klePerforming": list(kle.get(cons.PERFORMING, ())),
            "kleInterest": list(kle.get(cons.INTEREST, ())),
            "manager": {"uuid": manager.id, "userId": view.first(manager, "userName")}
            if manager is not None else None,
            "titleIdentifiers": [], "_parentRef": None}


def _user_json(view: ClientView, data: Any, index: cons.ConstraintIndex, entry: Entry,
               units: frozenset[str] | None) -> dict | None:
    """``UserDTO``, or None for an account without a position the client may see."""
    account = data.accounts.get(entry.id)
    if account is None:
        return None
    shown = {e.get("unit"): e for e in view.complex(entry, "engagements")}
    positions = []
    engagements = role_calc.account_engagements(data, role_calc.build_index(data), account)
    for engagement in engagements:
        element = shown.get(engagement.org_unit_id)
        if element is None or (units is not None and engagement.org_unit_id not in units):
            continue
        title = element.get("title")
        positions.append({"name": title, "orgUnitUuid": engagement.org_unit_id,
                          "titleUuid": engagement.job_function_id if title else None,
                          "doNotInherit": bool(engagement.do_not_inherit)})
    if not positions:
        return None
    person = account.person_id
    functions = [{"ouUuid": a.org_unit_id, "functionUuid": a.association_type_id}
                 for a in data.associations.values()
                 if person and a.person_id == person
                 and (units is None or a.org_unit_id in units)]
    own_kle = index.person_kle.get(person, {}) if person else {}
    emails = view.values(entry, "emails.value")
    phones = view.values(entry, "phoneNumbers.value")
    active = view.values(entry, "active")
    return {"extUuid": view.first(entry, "externalId"), "uuid": entry.id,
            "userId": view.first(entry, "userName"),
            "name": view.first(entry, "formattedName") or view.first(entry, "displayName"),
            "email": emails[0] if emails else None, "phone": phones[0] if phones else None,
            "cpr": view.first(entry, "cpr"), "nemloginUuid": None,
            "doNotInherit": any(p["doNotInherit"] for p in positions),
            "disabled": bool(active) and active[0] is False,
            "positions": positions, "functions": functions,
            "klePerforming": list(own_kle.get(cons.PERFORMING, ())),
            "kleInterest": list(own_kle.get(cons.INTEREST, ()))}


def organisation(view: ClientView, roles: RoleView, req: Request
                 ) -> tuple[Any, list[str], list[str]]:
    """``GET /api/organisation/v3``: ``{users, orgUnits}`` as the client may see them."""
    data = roles.data
    index = cons.build_index(data)
    units = view.unit_ids()
    org_units = [_unit_json(view, data, index, u)
                 for u in sorted(data.units.values(), key=lambda u: u.id)
                 if units is None or u.id in units]
    users = []
    disclosed = []
    for entry in view.search(f.Present("userName"), kinds=ACCOUNTS_ONLY):
        user = _user_json(view, data, index, entry, units)
        if user is not None:
            users.append(user)
            disclosed.append(entry)
    managers = [m for m in (view.get(u["manager"]["uuid"]) for u in org_units if u["manager"])
                if m is not None]
    sensitive = view.sensitive(disclosed, ["cpr", "engagements"])
    return ({"users": users, "orgUnits": org_units}, view.subjects(disclosed + managers),
            sensitive)


ROUTES: tuple[tuple[str, str, Handler], ...] = (
    ("/organisation/v3", "organisation.read", organisation),
)
