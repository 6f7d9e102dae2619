"""OS2rollekatalog's read-only API (``/api/read/...``), answered from the snapshot.

The shapes follow ``ReadOnlyApi.java`` in OS2rollekatalog (``ui/src/main/java/dk/
digitalidentity/rc/controller/api/``) and its DTOs under ``controller/api/dto``: field names,
nesting, the ``"*** DYNAMIC ***"`` stand-in for computed constraint values, one assignment
element per grant with ``assignedThrough``. OS2rollekatalog's ids are numbers; here they are
:func:`~idm_facade.roleapi.api.number` of the facade's ids, and a path accepts the number, the
facade's id or the identifier. An OS2rollekatalog *user* is an account of the directory IT
system: ``uuid`` its id, ``userId`` its userName, ``extUuid`` its externalId.

What is not OS2rollekatalog's: error bodies are the facade's JSON (same status codes), lists
are in a stable order, and persons and units come from the client's view like everywhere else.
Postponed constraint values are shown as ``PostponedConstraintReadDTO`` fills them, including
its ``systemRoleId``, which is the *user role's* id there (``new PostponedConstraintReadDTO(p,
userRole.getId())``), and ``type``, the constraint type's name (its entity id for a type
without a known name).
"""

from __future__ import annotations

from typing import Any

from werkzeug.wrappers import Request

from idm_facade.directory import constraints as cons
from idm_facade.directory.entries import Entry
from idm_facade.directory.view import ClientView
from idm_facade.roleapi import oiobpp
from idm_facade.roleapi.api import (
    ApiError,
    Handler,
    RoleView,
    find_account,
    find_row,
    find_system,
    number,
)
from schemas.attributes import ACCOUNT, UNIT

DYNAMIC = "*** DYNAMIC ***"
_TRUE = {"true", "on", "yes", "1"}
_FALSE = {"false", "off", "no", "0", ""}
#: Display names of the constraint types OS2rollekatalog ships with (ConstraintType.name).
_TYPE_NAMES = {
    "http://sts.kombit.dk/constraints/orgenhed/1": "Organisation",
    "http://sts.kombit.dk/constraints/KLE/1": "KLE",
    "http://digital-identity.dk/constraints/orgunit/1": "Enhed",
}


def flag(req: Request, name: str) -> bool:
    """A boolean query parameter as Spring reads it (missing or empty: false)."""
    raw = req.args.get(name, "").strip().lower()
    if raw in _TRUE:
        return True
    if raw in _FALSE:
        return False
    raise ApiError(400, f"{name} must be true or false, got {raw!r}")


def role_short(roles: RoleView, role: Any) -> dict:
    """``UserRoleReadDTO``: ``{id, name, itSystemName}``."""
    system = roles.data.it_systems.get(role.it_system_id)
    return {"id": number(role.id), "name": role.name,
            "itSystemName": system.name if system else None}


def _system_roles(roles: RoleView, role_id: str) -> dict[str, list[Any]]:
    """The role's system-role links grouped per system role (OS2rollekatalog's
    ``SystemRoleAssignment`` and its constraint values), in link order."""
    grouped: dict[str, list[Any]] = {}
    for link in roles.data.job_role_system_roles.get(role_id, ()):
        if link.system_role_id in roles.data.system_roles:
            grouped.setdefault(link.system_role_id, []).append(link)
    return grouped


def _constraint_links(links: list[Any]) -> list[Any]:
    return [link for link in links if link.constraint_type]


def _account(view: ClientView, roles: RoleView, ref: str) -> Entry:
    """``UserService.getUserForReadOnlyApi``: by uuid (the account id), else by userId."""
    entry = view.get(ref)
    if entry is not None and entry.kind == ACCOUNT:
        return entry
    return find_account(view, ref)


def _user(view: ClientView, entry: Entry, through: str, postponed: list[dict]) -> dict:
    """``UserReadDTO`` for one grant of the account."""
    return {"uuid": entry.id, "extUuid": view.first(entry, "externalId"),
            "userId": view.first(entry, "userName"),
            "name": view.first(entry, "formattedName") or view.first(entry, "displayName"),
            "assignedThrough": [through], "postponedConstraints": postponed}


def _postponed(view: ClientView, roles: RoleView, role: Any, grant: dict) -> list[dict]:
    """``PostponedConstraintReadDTO`` of the grant's postponed values: only a direct
    assignment of the role carries them (``CurrentAssignmentMapper``); ``systemRoleId`` is
    the user role's number, as ``ReadOnlyApi.getUsersWithUserRole`` passes
    ``userRole.getId()``. Org-unit values name only the units the client may see."""
    if not _is_direct(grant):
        return []
    visible = view.unit_ids()
    return [{"type": _TYPE_NAMES.get(row.constraint_type, row.constraint_type),
             "systemRoleId": number(role.id),
             "value": cons.postponed_text(row.value, row.constraint_type, visible)}
            for row in roles.data.postponed_constraints.get(str(grant.get("assignment")), ())]


def assigned_through(grant: dict) -> str:
    """``AssignmentService.getAssignedThrough``: ROLEGROUP, else ORGUNIT (unit, manager and
    substitute grants), else DIRECT."""
    if grant.get("viaRoleGroup"):
        return "ROLEGROUP"
    if grant.get("viaUnit"):
        return "ORGUNIT"
    return "DIRECT"


def _is_direct(grant: dict) -> bool:
    return not grant.get("viaRoleGroup") and not grant.get("viaUnit")


def _wrapper(view: ClientView, roles: RoleView, role: Any, holders: list[Entry],
             indirect: bool, with_description: bool, with_value_set: bool,
             with_postponed: bool = False) -> dict:
    """``UserReadWrapperDTO``: the role, its system roles and one assignment per grant
    (with its postponed constraint values when ``with_postponed``)."""
    system_roles = []
    for system_role_id, links in _system_roles(roles, role.id).items():
        system_role = roles.data.system_roles[system_role_id]
        system_roles.append({
            "roleName": system_role.name, "roleIdentifier": system_role.identifier,
            "weight": system_role.weight,
            "roleConstraintValues": [{
                "constraintType": link.constraint_type,
                "constraintValue": (link.constraint_value
                                    if link.constraint_value_type == "VALUE" else DYNAMIC),
                "constraintTypeValueSet": [] if with_value_set else None}
                for link in _constraint_links(links)]})
    assignments = []
    for entry in holders:
        for grant in view.complex(entry, "roles"):
            if grant.get("value") != role.id or not (indirect or _is_direct(grant)):
                continue
            postponed = _postponed(view, roles, role, grant) if with_postponed else []
            assignments.append(_user(view, entry, assigned_through(grant), postponed))
    return {"roleId": number(role.id), "roleIdentifier": role.identifier,
            "roleName": role.name,
            "roleDescription": role.description if with_description else None,
            "systemRoles": system_roles, "assignments": assignments}


def _holders_of(view: ClientView, roles: RoleView, role: Any) -> list[Entry]:
    system = roles.data.it_systems.get(role.it_system_id)
    if system is None:
        return []
    return [e for e in roles.holders(view, system.user_key)
            if role.id in view.values(e, "role")]


# --------------------------------------------------------------------------- handlers


def user_roles(view: ClientView, roles: RoleView, req: Request) -> tuple[Any, list[str]]:
    """``GET /api/read/userroles``: every user role, ``{id, name, itSystemName}``."""
    rows = sorted(roles.data.job_roles.values(), key=lambda r: (r.name, r.id))
    return [role_short(roles, r) for r in rows], []


def user_roles_by_system(view: ClientView, roles: RoleView, req: Request) -> tuple[Any, list[str]]:
    """``GET /api/read/userroles/itsystems`` with an optional JSON body of IT system ids:
    ``{id, name, identifier, description, itSystemName}`` of their roles (all without a
    body). OS2rollekatalog fails with 500 on an empty list; here it is an empty answer."""
    wanted = req.get_json(silent=True) if req.content_length else None
    if wanted is not None and not (isinstance(wanted, list)
                                   and all(isinstance(w, int | str) for w in wanted)):
        raise ApiError(400, "the body must be a JSON list of IT system ids")
    rows = sorted(roles.data.job_roles.values(), key=lambda r: (r.name, r.id))
    if wanted is not None:
        systems = [find_row(roles.data.it_systems, roles, str(w), identifier=False)
                   for w in wanted]
        rows = [r for s in systems if s is not None for r in rows if r.it_system_id == s.id]
    return [{**role_short(roles, r), "identifier": r.identifier, "description": r.description}
            for r in rows], []


def user_role(view: ClientView, roles: RoleView, req: Request, role_ref: str
              ) -> tuple[Any, list[str]]:
    """``GET /api/read/userroles/{id}``: ``UserRoleDTO`` with its system roles and their
    constraint values (the stored value; NULL for computed ones)."""
    role = find_row(roles.data.job_roles, roles, role_ref)
    if role is None:
        raise ApiError(404, f"unknown role: {role_ref}")
    assignments = []
    for system_role_id, links in _system_roles(roles, role.id).items():
        system_role = roles.data.system_roles[system_role_id]
        assignments.append({
            "systemRole": {"description": system_role.description, "name": system_role.name,
                           "identifier": system_role.identifier},
            "constraintValues": [{
                "constraintType": {"uuid": None, "entityId": link.constraint_type,
                                   "name": _TYPE_NAMES.get(link.constraint_type),
                                   "description": None, "uiType": None, "regex": None},
                "constraintValue": link.constraint_value} for link in _constraint_links(links)]})
    return {"id": number(role.id), "name": role.name, "identifier": role.identifier,
            "systemRoleAssignments": assignments}, []


def role_groups(view: ClientView, roles: RoleView, req: Request) -> tuple[Any, list[str]]:
    """``GET /api/read/rolegroups``: ``[{id, name}]``."""
    rows = sorted(roles.data.role_groups.values(), key=lambda g: (g.name, g.id))
    return [{"id": number(g.id), "name": g.name} for g in rows], []


def role_group(view: ClientView, roles: RoleView, req: Request, group_ref: str
               ) -> tuple[Any, list[str]]:
    """``GET /api/read/rolegroups/{id}``: ``{id, name, roles: [UserRoleReadDTO]}``."""
    group = find_row(roles.data.role_groups, roles, group_ref)
    if group is None:
        raise ApiError(404, f"unknown role group: {group_ref}")
    members = [roles.data.job_roles[r] for r in roles.data.role_group_members.get(group.id, ())
               if r in roles.data.job_roles]
    return {"id": number(group.id), "name": group.name,
            "roles": [role_short(roles, r) for r in members]}, []


def account_roles(view: ClientView, roles: RoleView, req: Request, user: str
                  ) -> tuple[Any, list[str]]:
    """``GET /api/read/user/{uuid}/roles``: the roles assigned to the account directly."""
    entry = _account(view, roles, user)
    seen: dict[str, None] = {}
    for grant in view.complex(entry, "roles"):
        if _is_direct(grant) and grant.get("value") in roles.data.job_roles:
            seen[grant["value"]] = None
    return [role_short(roles, roles.data.job_roles[r]) for r in seen], view.subjects([entry])


def account_role_groups(view: ClientView, roles: RoleView, req: Request, user: str
                        ) -> tuple[Any, list[str]]:
    """``GET /api/read/user/{uuid}/rolegroups``: role groups assigned to it directly."""
    entry = _account(view, roles, user)
    seen: dict[str, None] = {}
    for grant in view.complex(entry, "roles"):
        group_id = grant.get("viaRoleGroup")
        if group_id and not grant.get("viaUnit") and group_id in roles.data.role_groups:
            seen[group_id] = None
    groups = [roles.data.role_groups[g] for g in seen]
    return [{"id": number(g.id), "name": g.name} for g in groups], view.subjects([entry])


def _unit_assignments(view: ClientView, roles: RoleView, unit_ref: str) -> list[Any]:
    unit = view.get(unit_ref)
    if unit is None or unit.kind != UNIT:
        raise ApiError(404, f"unknown unit: {unit_ref}")
    rows = [a for a in roles.data.unit_assignments.values() if a.org_unit_id == unit.id]
    return sorted(rows, key=lambda a: a.id)


def unit_roles(view: ClientView, roles: RoleView, req: Request, unit: str) -> tuple[Any, list[str]]:
    """``GET /api/read/ous/{uuid}/roles``: roles assigned to the unit (one per assignment)."""
    rows = [a for a in _unit_assignments(view, roles, unit)
            if a.job_role_id in roles.data.job_roles]
    return [role_short(roles, roles.data.job_roles[a.job_role_id]) for a in rows], []


def unit_role_groups(view: ClientView, roles: RoleView, req: Request, unit: str
                     ) -> tuple[Any, list[str]]:
    """``GET /api/read/ous/{uuid}/rolegroups``: role groups assigned to the unit."""
    rows = [a for a in _unit_assignments(view, roles, unit)
            if a.role_group_id in roles.data.role_groups]
    return [{"id": number(a.role_group_id), "name": roles.data.role_groups[a.role_group_id].name}
            for a in rows], []


def system_assignments(view: ClientView, roles: RoleView, req: Request, system: str
                       ) -> tuple[Any, list[str]]:
    """``GET /api/read/itsystem/{system}``: per role of the system that someone holds (only
    directly, unless ``indirectRoles``), a ``UserReadWrapperDTO``."""
    found = find_system(roles, system)
    indirect, with_description = flag(req, "indirectRoles"), flag(req, "withDescription")
    with_value_set = flag(req, "withConstraintTypeValueSet")
    with_postponed = flag(req, "includePostponedConstraints")
    holders = roles.holders(view, found.user_key)
    wrappers = []
    disclosed: list[Entry] = []
    for role in sorted((r for r in roles.data.job_roles.values()
                        if r.it_system_id == found.id), key=lambda r: (r.name, r.id)):
        mine = [e for e in holders if role.id in view.values(e, "role")]
        wrapper = _wrapper(view, roles, role, mine, indirect, with_description, with_value_set,
                           with_postponed)
        if wrapper["assignments"]:
            wrappers.append(wrapper)
            shown = {a["uuid"] for a in wrapper["assignments"]}
            disclosed.extend(e for e in mine if e.id in shown)
    return wrappers, view.subjects(disclosed)


def role_assigned(view: ClientView, roles: RoleView, req: Request, role_ref: str
                  ) -> tuple[Any, list[str]]:
    """``GET /api/read/assigned/{id}``: one ``UserReadWrapperDTO`` (assignments possibly
    empty)."""
    role = find_row(roles.data.job_roles, roles, role_ref)
    if role is None:
        raise ApiError(404, f"unknown role: {role_ref}")
    holders = _holders_of(view, roles, role)
    wrapper = _wrapper(view, roles, role, holders, flag(req, "indirectRoles"),
                       flag(req, "withDescription"), False)
    shown = {a["uuid"] for a in wrapper["assignments"]}
    return wrapper, view.subjects(e for e in holders if e.id in shown)


def system_constraints(view: ClientView, roles: RoleView, req: Request, system: str
                       ) -> tuple[Any, list[str]]:
    """``GET /api/read/itsystem/roleAssignmentsWithContraints/{system}``: per holder of a
    role in the system, the privilege groups the OIOBPP of a login to that system alone
    would carry (an access-blocked system: every holder with no assignments)."""
    found = find_system(roles, system)
    holders = roles.holders(view, found.user_key)
    keys = {found.user_key}
    systems = roles.open_systems(keys)
    units = view.unit_ids()
    out = []
    for entry in holders:
        held = [g for g in view.complex(entry, "roles")
                if g.get("value") in roles.data.job_roles
                and roles.data.job_roles[g["value"]].it_system_id == found.id]
        groups = oiobpp.privilege_groups(roles.data, entry.id, held, units, systems).groups \
            if systems else []
        out.append({"extUuid": view.first(entry, "externalId"),
                    "userId": view.first(entry, "userName"),
                    "assignments": [{
                        "roleIdentifier": group.privileges[0], "roleName": group.name,
                        "roleConstraintValues": [
                            {"constraintType": ctype, "constraintValues": value.split(",")}
                            for ctype, (_name, value) in zip(group.constraint_types,
                                                             group.constraints, strict=True)]}
                        for group in groups]})
    return out, view.subjects(holders)


#: (rule under /api, operation recorded, handler), in the order Flask should try them
#: (``userroles/itsystems`` before ``userroles/<id>``).
ROUTES: tuple[tuple[str, str, Handler], ...] = (
    ("/read/itsystem/roleAssignmentsWithContraints/<system>", "read.itsystem.constraints",
     system_constraints),
    ("/read/itsystem/<system>", "read.itsystem", system_assignments),
    ("/read/assigned/<role_ref>", "read.assigned", role_assigned),
    ("/read/user/<user>/roles", "read.user.roles", account_roles),
    ("/read/user/<user>/rolegroups", "read.user.rolegroups", account_role_groups),
    ("/read/ous/<unit>/roles", "read.ou.roles", unit_roles),
    ("/read/ous/<unit>/rolegroups", "read.ou.rolegroups", unit_role_groups),
    ("/read/rolegroups", "read.rolegroups", role_groups),
    ("/read/rolegroups/<group_ref>", "read.rolegroup", role_group),
    ("/read/userroles", "read.userroles", user_roles),
    ("/read/userroles/itsystems", "read.userroles.itsystems", user_roles_by_system),
    ("/read/userroles/<role_ref>", "read.userrole", user_role),
)
