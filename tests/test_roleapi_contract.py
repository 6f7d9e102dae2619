"""OS2rollekatalog's API contract, replayed against a real ``idm-facade serve`` over HTTP.

Each test makes the requests a consumer written against OS2rollekatalog makes (an identity
provider asking for a login's roles, an IT system reading its assignments, an
organisation reader) and checks status codes, field names and JSON shapes as the Java source
defines them. Paths cited are in the OS2rollekatalog repository under
``ui/src/main/java/dk/digitalidentity/rc/``. The store is the S demo, pinned to its reference
day; consumers use the ``ApiKey`` header, as OS2rollekatalog's clients do.
"""

from __future__ import annotations

import base64
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from idm_facade.access.clients import ClientRegistry
from idm_facade.config import Config
from idm_facade.directory import Directory
from idm_facade.roleapi.api import number
from schemas.attributes import ACCOUNT, UNIT
from store.engine import make_engine
from tests.serving import Serving, copy_store, start_serve

audit_module = pytest.importorskip("idm_facade.access.audit")
NS = "{http://itst.dk/oiosaml/basic_privilege_profile}"
JOBROLE = "/roles/jobrole/"


@dataclass
class Contract:
    serving: Serving
    keys: dict[str, str]
    data: Any  # the catalogue of the snapshot the test process built
    snapshot: Any
    engine: Any
    audit: Any

    def get(self, path: str, key: str | None = "internal", **kw: Any) -> httpx.Response:
        headers = {"ApiKey": self.keys[key]} if key else {}
        headers.update(kw.pop("headers", {}))
        return httpx.request("GET", f"{self.serving.scim_base}/api{path}", headers=headers,
                             timeout=60, **kw)

    def accounts(self) -> list:
        return [e for e in self.snapshot.entries if e.kind == ACCOUNT]

    def system(self, **where: Any) -> Any:
        return next(s for s in sorted(self.data.it_systems.values(), key=lambda s: s.user_key)
                    if all(getattr(s, k) == v for k, v in where.items()))

    def holder(self, system: Any, *, direct: bool = False) -> Any:
        """An account holding a role of the system (directly assigned, if asked)."""
        for entry in self.accounts():
            for grant in entry.complex.get("roles", ()):
                role = self.data.job_roles.get(grant["value"])
                if role is None or role.it_system_id != system.id:
                    continue
                if not direct or not (grant.get("viaUnit") or grant.get("viaRoleGroup")):
                    return entry
        raise AssertionError(f"no holder in {system.user_key}")


@pytest.fixture(scope="module")
def contract(demo_db: str, tmp_path_factory) -> Iterator[Contract]:
    tmp = tmp_path_factory.mktemp("contract")
    db = copy_store(demo_db, tmp / "idm.db")
    engine = make_engine(db)
    snapshot = Directory(engine).snapshot
    # a unit just below a root, the one with most accounts below it (a directorate)
    below: dict[str, int] = {}
    for entry in snapshot.entries:
        if entry.kind == ACCOUNT:
            for unit in entry.attrs.get("ancestor", ()):
                below[str(unit)] = below.get(str(unit), 0) + 1
    top = max((e for e in snapshot.entries if e.kind == UNIT
               and e.first("parent") and snapshot.get(str(e.first("parent")))
               and not snapshot.get(str(e.first("parent"))).first("parent")),
              key=lambda e: (below.get(e.id, 0), e.id))
    settings = {"directory": {"state_dir": str(tmp)},
                "policies": {"rk-sub": {"subtrees": [top.id]},
                             "rk-people": {"kinds": ["account", "unit"]}}}
    config_path = tmp / "idm.toml"
    config_path.write_text(f'[directory]\nstate_dir = "{tmp}"\n'
                           f'[policies.rk-sub]\nsubtrees = ["{top.id}"]\n'
                           f'[policies.rk-people]\nkinds = ["account", "unit"]\n')
    config = Config(settings)
    clients = ClientRegistry(engine, config)
    creds = clients.ensure_demo_clients()
    keys = {"internal": creds["demo-scim"]["token"], "cpr": creds["demo-cpr"]["token"],
            "sub": clients.add("rk-sub", "scim", "rk-sub"),
            "people": clients.add("rk-people", "scim", "rk-people")}
    serving = start_serve(db, config_path, ldap=False)
    audit = audit_module.AuditLog(engine, config)
    try:
        yield Contract(serving, keys, snapshot.data, snapshot, engine, audit)
    finally:
        serving.stop()
        engine.dispose()


# --------------------------------------------------------------------------- security


def test_api_key_header(contract: Contract) -> None:
    """security/ApiSecurityFilter.java: the ``ApiKey`` header; missing or wrong is 401.
    A key whose client may not read roles is 403 (method security,
    security/RequireApiReadAccessRole.java)."""
    user = contract.accounts()[0].first("userName")
    assert contract.get(f"/user/{user}/nameid", key=None).status_code == 401
    wrong = httpx.get(f"{contract.serving.scim_base}/api/user/{user}/nameid",
                      headers={"ApiKey": "idmf_nope_nope"}, timeout=30)
    assert wrong.status_code == 401
    assert contract.get(f"/user/{user}/nameid").status_code == 200
    assert contract.get(f"/user/{user}/nameid", key="people").status_code == 403


# --------------------------------------------------------------------------- UserApi


def test_login_roles_kombit_only_and_mixed(contract: Contract) -> None:
    """controller/api/UserApi.java getUserRoles and service/UserService.java
    generateOIOBPPPrivileges: ``{nameID, oioBPP, roleMap}``; a request naming a KOMBIT system
    is not expanded (privileges are job-role entity ids, roleMap keyed by them), one without
    ``system`` covers every system and so is expanded to system roles (roleMap keyed by role
    identifiers); an unknown system or domain is 404; ``domain`` absent, empty or the
    directory's own is the primary domain."""
    kombit = next(s for s in sorted(contract.data.it_systems.values(), key=lambda s: s.user_key)
                  if s.system_type == "KOMBIT" and any(
                      r.it_system_id == s.id and not r.delegated_from_cvr
                      for r in contract.data.job_roles.values())
                  and _has_holder(contract, s))
    entry = contract.holder(kombit)
    user = entry.first("userName")
    body = contract.get(f"/user/{user}/roles", params={"system": kombit.user_key}).json()
    assert set(body) == {"nameID", "oioBPP", "roleMap"}
    root = ET.fromstring(base64.b64decode(body["oioBPP"]))
    privileges = [p.text for p in root.iter("Privilege")]
    assert privileges and all(JOBROLE in p or "://" not in p for p in privileges)
    assert set(body["roleMap"]) == set(privileges)
    mixed = contract.get(f"/user/{user}/roles").json()
    mixed_privileges = [p.text for p in ET.fromstring(base64.b64decode(mixed["oioBPP"])
                                                      ).iter("Privilege")]
    assert mixed_privileges and not any(JOBROLE in p for p in mixed_privileges)
    assert all(k in {r.identifier for r in contract.data.job_roles.values()}
               for k in mixed["roleMap"])
    assert contract.get(f"/user/{user}/roles", params={"system": "no-such"}).status_code == 404
    for domain, status in (("", 200), ("AD", 200), ("Active Directory", 200),
                           ("other.example", 404)):
        got = contract.get(f"/user/{user}/roles", params={"domain": domain})
        assert got.status_code == status, domain


def _has_holder(contract: Contract, system: Any) -> bool:
    try:
        contract.holder(system)
    except AssertionError:
        return False
    return True


def test_roles_as_list_leaves_out_blocked_systems(contract: Contract) -> None:
    """UserApi.getUserRolesAsList: ``system`` is a required parameter (400 without it),
    empty means every system, access-blocked systems are filtered out (``filter(its ->
    its.isAccessBlocked() == false)``); the body is ``UserResponseWithRolesDTO``."""
    blocked = contract.system(access_blocked=True)
    entry = contract.holder(blocked)
    user = entry.first("userName")
    assert contract.get(f"/user/{user}/rolesAsList").status_code == 400
    body = contract.get(f"/user/{user}/rolesAsList", params={"system": ""}).json()
    assert set(body) == {"nameID", "userRoles", "systemRoles", "dataRoles", "functionRoles",
                         "roleMap", "disabled"}
    blocked_roles = {r.identifier for r in contract.data.job_roles.values()
                     if r.it_system_id == blocked.id}
    assert not blocked_roles & set(body["userRoles"])
    only = contract.get(f"/user/{user}/rolesAsList", params={"system": blocked.user_key})
    assert only.status_code == 200 and only.json()["userRoles"] == []


def test_has_user_role_by_numeric_id(contract: Contract) -> None:
    """UserApi.userHasUserRole: ``roleId`` is OS2rollekatalog's numeric id; 200 "Found role",
    404 "Did not find role", 400 for a role in an access-blocked system, 404 for an
    unknown role. Numeric ids come from the read API (/api/read/userroles)."""
    listed = {r["name"]: r["id"] for r in contract.get("/read/userroles").json()}

    def open_roles(entry: Any) -> list[Any]:
        return [contract.data.job_roles[r] for r in entry.attrs.get("role", ())
                if not contract.data.it_systems[
                    contract.data.job_roles[r].it_system_id].access_blocked]

    # an account holding a role in a system that is not access-blocked (which one that is
    # depends on the demo's seed)
    entry = next(e for e in contract.accounts() if open_roles(e))
    user = entry.first("userName")
    held = open_roles(entry)[0]
    assert listed[held.name] == number(held.id)
    found = contract.get(f"/user/{user}/hasUserRole/{number(held.id)}")
    assert (found.status_code, found.text) == (200, "Found role")
    other = next(r for r in contract.data.job_roles.values()
                 if r.id not in entry.attrs["role"]
                 and not contract.data.it_systems[r.it_system_id].access_blocked)
    missing = contract.get(f"/user/{user}/hasUserRole/{number(other.id)}")
    assert (missing.status_code, missing.text) == (404, "Did not find role")
    blocked = contract.system(access_blocked=True)
    blocked_role = next(r for r in contract.data.job_roles.values()
                        if r.it_system_id == blocked.id)
    assert contract.get(f"/user/{user}/hasUserRole/{number(blocked_role.id)}"
                        ).status_code == 400
    assert contract.get(f"/user/{user}/hasUserRole/123").status_code == 404


def test_has_system_role_and_name_id(contract: Contract) -> None:
    """UserApi.userHasSystemRole (``roleIdentifier`` required: 400 without) and getUserNameId
    (``{nameID}``, ``C=DK,O=<cvr>,CN=<name>,Serial=<extUuid>``, UserService.getUserNameId)."""
    def open_roles(entry: Any) -> list[str]:
        return [r for r in entry.attrs.get("role", ())
                if not contract.data.it_systems[contract.data.job_roles[r].it_system_id
                                                ].access_blocked
                and contract.data.job_role_system_roles.get(r)]

    entry = next(e for e in contract.accounts() if open_roles(e))
    user = entry.first("userName")
    link = contract.data.job_role_system_roles[open_roles(entry)[0]][0]
    identifier = contract.data.system_roles[link.system_role_id].identifier
    assert contract.get(f"/user/{user}/hasSystemRole").status_code == 400
    found = contract.get(f"/user/{user}/hasSystemRole", params={"roleIdentifier": identifier})
    assert (found.status_code, found.text) == (200, "Found role")
    assert contract.get(f"/user/{user}/hasSystemRole",
                        params={"roleIdentifier": "no-such-role"}).status_code == 404
    name_id = contract.get(f"/user/{user}/nameid").json()
    assert set(name_id) == {"nameID"}
    assert name_id["nameID"].startswith(f"C=DK,O={contract.data.organisation.cvr},CN=")
    assert name_id["nameID"].endswith(f",Serial={entry.first('externalId')}")


# --------------------------------------------------------------------------- ItSystemApi


def test_itsystems_with_numeric_ids(contract: Contract) -> None:
    """controller/api/ItSystemApi.java: ``/api/itsystem/all`` is ``[{id, name,
    identifier}]`` with numeric ids, and ``/api/itsystem/{id}/users`` takes that id."""
    systems = contract.get("/itsystem/all").json()
    assert all(set(s) == {"id", "name", "identifier"} and isinstance(s["id"], int)
               for s in systems)
    kombit = next(s for s in systems if s["identifier"].startswith("KOMBIT-"))
    by_number = contract.get(f"/itsystem/{kombit['id']}/users")
    by_identifier = contract.get(f"/itsystem/{kombit['identifier']}/users")
    assert by_number.status_code == 200 and by_number.json() == by_identifier.json()
    assert all(isinstance(u, str) for u in by_number.json())


# --------------------------------------------------------------------------- ReadOnlyApi


def test_read_catalogue(contract: Contract) -> None:
    """controller/api/ReadOnlyApi.java listUserRoles, getUserRole, getUserRolesByItSystems,
    list and getRolegroupsRoles, with dto/read/UserRoleReadDTO, dto/UserRoleDTO,
    dto/SystemRoleAssignmentDTO, dto/read/RoleGroupWithUserRolesReadDTO."""
    roles = contract.get("/read/userroles").json()
    assert roles and all(set(r) == {"id", "name", "itSystemName"} for r in roles)
    constrained = next(r for r in contract.data.job_roles.values()
                       if any(link.constraint_type
                              for link in contract.data.job_role_system_roles.get(r.id, ())))
    detail = contract.get(f"/read/userroles/{number(constrained.id)}").json()
    assert set(detail) == {"id", "name", "identifier", "systemRoleAssignments"}
    assert detail["identifier"] == constrained.identifier
    assignment = detail["systemRoleAssignments"][0]
    assert set(assignment) == {"systemRole", "constraintValues"}
    assert set(assignment["systemRole"]) == {"description", "name", "identifier"}
    value = next(v for a in detail["systemRoleAssignments"] for v in a["constraintValues"])
    assert set(value) == {"constraintType", "constraintValue"}
    assert set(value["constraintType"]) == {"uuid", "entityId", "name", "description",
                                            "uiType", "regex"}
    assert contract.get("/read/userroles/999").status_code == 404
    kombit = contract.system(user_key=next(
        s.user_key for s in contract.data.it_systems.values() if s.user_key.startswith("KOMBIT-")))
    by_system = contract.get("/read/userroles/itsystems", content=f"[{number(kombit.id)}]",
                             headers={"Content-Type": "application/json"}).json()
    assert by_system and all(set(r) == {"id", "name", "identifier", "description",
                                        "itSystemName"} for r in by_system)
    assert {r["itSystemName"] for r in by_system} == {kombit.name}
    groups = contract.get("/read/rolegroups").json()
    assert groups and all(set(g) == {"id", "name"} for g in groups)
    group = contract.get(f"/read/rolegroups/{groups[0]['id']}").json()
    assert set(group) == {"id", "name", "roles"} and group["roles"]
    assert contract.get("/read/rolegroups/1").status_code == 404


def test_read_user_and_unit_assignments(contract: Contract) -> None:
    """ReadOnlyApi getUserRoles/getUserRoleGroups (direct assignments only; an unknown
    domain is 400 there, an unknown user 404) and getOuRoles/getOuRolegroups (404 for an
    unknown unit)."""
    direct = next(e for e in contract.accounts() if any(
        not g.get("viaUnit") and not g.get("viaRoleGroup") for g in e.complex.get("roles", ())))
    expected = {number(g["value"]) for g in direct.complex["roles"]
                if not g.get("viaUnit") and not g.get("viaRoleGroup")}
    for ref in (direct.id, direct.first("userName")):
        got = contract.get(f"/read/user/{ref}/roles").json()
        assert {r["id"] for r in got} == expected
    assert contract.get(f"/read/user/{direct.id}/roles",
                        params={"domain": "nope"}).status_code == 400
    assert contract.get("/read/user/nobody-here/roles").status_code == 404
    in_group = next(e for e in contract.accounts() if any(
        g.get("viaRoleGroup") and not g.get("viaUnit") for g in e.complex.get("roles", ())))
    groups = contract.get(f"/read/user/{in_group.id}/rolegroups").json()
    assert groups and all(set(g) == {"id", "name"} for g in groups)
    assignment = next(iter(sorted(contract.data.unit_assignments.values(), key=lambda a: a.id)))
    unit = assignment.org_unit_id
    roles = contract.get(f"/read/ous/{unit}/roles").json()
    groups = contract.get(f"/read/ous/{unit}/rolegroups").json()
    assert len(roles) + len(groups) >= 1
    assert contract.get("/read/ous/no-such-unit/roles").status_code == 404


def test_read_itsystem_assignments(contract: Contract) -> None:
    """ReadOnlyApi getUsersWithGivenUserRoles (``/api/read/itsystem/{system}``) and
    getUsersWithGivenUserRole (``/api/read/assigned/{id}``) with dto/read/UserReadWrapperDTO,
    UserReadRoleSystemRole, UserReadDTO: direct assignments unless ``indirectRoles=true``;
    ``assignedThrough`` DIRECT/ROLEGROUP/ORGUNIT; computed constraint values shown as
    ``*** DYNAMIC ***``; a bad boolean is 400, an unknown system 404."""
    # the system whose roles are held both directly and through units (the demo's seed
    # decides which)
    kinds: dict[str, set[str]] = {}
    for entry in contract.accounts():
        for grant in entry.complex.get("roles", ()):
            role = contract.data.job_roles.get(grant["value"])
            if role is not None:
                kinds.setdefault(role.it_system_id, set()).add(
                    "group" if grant.get("viaRoleGroup") else "unit" if grant.get("viaUnit")
                    else "direct")
    ad = next(s for s in sorted(contract.data.it_systems.values(), key=lambda s: s.user_key)
              if {"unit", "direct"} <= kinds.get(s.id, set()))
    direct = contract.get(f"/read/itsystem/{ad.user_key}").json()
    indirect = contract.get(f"/read/itsystem/{ad.user_key}",
                            params={"indirectRoles": "true", "withDescription": "true"}).json()
    assert sum(len(w["assignments"]) for w in indirect) > sum(
        len(w["assignments"]) for w in direct) > 0
    wrapper = indirect[0]
    assert set(wrapper) == {"roleId", "roleIdentifier", "roleName", "roleDescription",
                            "systemRoles", "assignments"}
    assert set(wrapper["assignments"][0]) == {"uuid", "extUuid", "userId", "name",
                                              "assignedThrough", "postponedConstraints"}
    through = {a["assignedThrough"][0] for w in indirect for a in w["assignments"]}
    assert through <= {"DIRECT", "ROLEGROUP", "ORGUNIT"} and "ORGUNIT" in through
    assert {a["assignedThrough"][0] for w in direct for a in w["assignments"]} == {"DIRECT"}
    kombit_dynamic = [v for s in sorted(contract.data.it_systems.values(), key=lambda s: s.id)
                      if s.system_type == "KOMBIT"
                      for w in contract.get(f"/read/itsystem/{s.user_key}",
                                            params={"indirectRoles": "1"}).json()
                      for sr in w["systemRoles"] for v in sr["roleConstraintValues"]]
    assert any(v["constraintValue"] == "*** DYNAMIC ***" for v in kombit_dynamic)
    assert contract.get(f"/read/itsystem/{ad.user_key}",
                        params={"indirectRoles": "maybe"}).status_code == 400
    assert contract.get("/read/itsystem/no-such").status_code == 404
    one = contract.get(f"/read/assigned/{wrapper['roleId']}",
                       params={"indirectRoles": "true"}).json()
    assert one["roleId"] == wrapper["roleId"] and one["assignments"]


def test_read_role_assignments_with_constraints(contract: Contract) -> None:
    """ReadOnlyApi getRoleAssignmentsWithContraints with dto/RoleAssignmentsWithContraints:
    per holder ``{extUuid, userId, assignments: [{roleIdentifier, roleName,
    roleConstraintValues: [{constraintType, constraintValues}]}]}``, from the privilege
    generation for that system alone, so an access-blocked system lists its holders with no
    assignments."""
    blocked = contract.system(access_blocked=True)
    listed = contract.get(f"/read/itsystem/roleAssignmentsWithContraints/{blocked.user_key}")
    assert listed.status_code == 200 and listed.json()
    assert all(h["assignments"] == [] for h in listed.json())
    constrained = [s for s in contract.data.it_systems.values() if s.system_type == "KOMBIT"]
    found = [a for s in constrained for h in contract.get(
        f"/read/itsystem/roleAssignmentsWithContraints/{s.user_key}").json()
        for a in h["assignments"]]
    assert found and all(JOBROLE in a["roleIdentifier"] or "://" not in a["roleIdentifier"]
                         for a in found)
    values = [v for a in found for v in a["roleConstraintValues"]]
    assert values and all(set(v) == {"constraintType", "constraintValues"} for v in values)


# --------------------------------------------------------------------------- postponed, weight


@dataclass
class Postponing:
    """The demo's role that allows postponing, its IT system and its direct assignments
    with their postponed constraint values."""

    role: Any
    system: Any
    assignments: dict[str, list[Any]]  # account id -> its assignments' ids

    def values(self, contract: Contract, assignment: str) -> list[Any]:
        return list(contract.data.postponed_constraints.get(assignment, ()))


def _postponing(contract: Contract) -> Postponing:
    (role,) = [r for r in contract.data.job_roles.values() if r.allow_postponing]
    assignments: dict[str, list[str]] = {}
    for row in sorted(contract.data.account_assignments.values(), key=lambda a: a.id):
        if row.job_role_id == role.id and contract.snapshot.get(row.account_id) is not None:
            assignments.setdefault(row.account_id, []).append(row.id)
    assert assignments
    return Postponing(role, contract.data.it_systems[role.it_system_id], assignments)


def test_login_with_postponed_constraints(contract: Contract) -> None:
    """service/UserService.java generateOIOBPPPrivileges, ``case POSTPONED``: each POSTPONED
    constraint takes the value of the direct assignment (dao/model/PostponedConstraint.java,
    matched by constraint type and system role), and a role that allows postponing
    (dao/model/UserRole.java ``allowPostponing``) is one privilege group per assignment, so
    an account holding it twice logs in with both value sets; a constraint the assignment
    gives no value is left out."""
    found = _postponing(contract)
    account, assigned = max(found.assignments.items(), key=lambda item: len(item[1]))
    assert len(assigned) == 2
    user = contract.snapshot.get(account).first("userName")
    body = contract.get(f"/user/{user}/roles", params={"system": found.system.user_key}).json()
    root = ET.fromstring(base64.b64decode(body["oioBPP"]))
    entity = f"{JOBROLE}{found.role.identifier}/1"
    groups = [{c.get("Name"): c.text for c in g.findall("Constraint")}
              for g in root.findall("PrivilegeGroup")
              if (g.findtext("Privilege") or "").endswith(entity)]
    names = {(link.system_role_id, link.constraint_type): link.constraint_identifier
             for link in contract.data.job_role_system_roles[found.role.id]}
    expected = [{names[(v.system_role_id, v.constraint_type)]: v.value
                 for v in found.values(contract, a)} for a in assigned]
    assert sorted(groups, key=sorted) == sorted(expected, key=sorted)
    assert groups[0] != groups[1]
    # an assignment without a KLE value: its KLE constraint is left out
    shorter = [a for accounts in found.assignments.values() for a in accounts
               if len(found.values(contract, a)) == 1]
    assert len(shorter) == 1


def test_read_itsystem_postponed_constraints(contract: Contract) -> None:
    """ReadOnlyApi getUsersWithGivenUserRoles with ``includePostponedConstraints=true``:
    each assignment's ``postponedConstraints`` are dto/read/PostponedConstraintReadDTO
    ``{type, systemRoleId, value}``, built ``new PostponedConstraintReadDTO(p,
    userRole.getId())``, so ``systemRoleId`` is the user role's id; ``type`` is the
    constraint type's name. Without the flag (and always on ``/api/read/assigned/{id}``,
    which passes ``false``) the list is empty. ``weight`` is the system role's
    (UserReadRoleSystemRole, ``assignment.getSystemRole().getWeight()``)."""
    found = _postponing(contract)
    listed = contract.get(f"/read/itsystem/{found.system.user_key}",
                          params={"includePostponedConstraints": "true"}).json()
    (wrapper,) = [w for w in listed if w["roleIdentifier"] == found.role.identifier]
    assert wrapper["roleId"] == number(found.role.id)
    shown = sorted(sorted((p["type"], p["value"]) for p in a["postponedConstraints"])
                   for a in wrapper["assignments"])
    names = {"http://sts.kombit.dk/constraints/orgenhed/1": "Organisation",
             "http://sts.kombit.dk/constraints/KLE/1": "KLE"}
    expected = sorted(sorted((names[v.constraint_type], v.value)
                             for v in found.values(contract, a))
                      for accounts in found.assignments.values() for a in accounts)
    assert shown == expected
    assert {p["systemRoleId"] for a in wrapper["assignments"]
            for p in a["postponedConstraints"]} == {number(found.role.id)}
    assert all(set(p) == {"type", "systemRoleId", "value"} for a in wrapper["assignments"]
               for p in a["postponedConstraints"])
    weights = {sr["roleIdentifier"]: sr["weight"] for sr in wrapper["systemRoles"]}
    assert sorted(weights.values()) == [1, 2]
    plain = contract.get(f"/read/itsystem/{found.system.user_key}").json()
    assert all(a["postponedConstraints"] == [] for w in plain for a in w["assignments"])
    one = contract.get(f"/read/assigned/{number(found.role.id)}").json()
    assert one["assignments"] and all(a["postponedConstraints"] == []
                                      for a in one["assignments"])


def test_roles_as_list_filters_by_weight(contract: Contract) -> None:
    """UserApi.getUserRolesAsList takes service/SystemRoleService.java
    getEffectiveSystemRoles = ``filterByWeight``: per IT system only the system roles of the
    highest weight the user holds (dao/model/SystemRole.java ``weight``, default 1), in
    ``systemRoles``, ``dataRoles`` and ``functionRoles`` alike; ``hasSystemRole`` looks at
    every system role of the user's roles, weight or not (UserApi.userHasSystemRole)."""
    found = _postponing(contract)
    bundled = {contract.data.system_roles[link.system_role_id]
               for link in contract.data.job_role_system_roles[found.role.id]}
    heavy = max(bundled, key=lambda sr: sr.weight)
    light = min(bundled, key=lambda sr: sr.weight)
    assert heavy.weight == 2 and light.weight == 1
    user = contract.snapshot.get(next(iter(found.assignments))).first("userName")
    body = contract.get(f"/user/{user}/rolesAsList",
                        params={"system": found.system.user_key}).json()
    assert found.role.identifier in body["userRoles"]
    assert heavy.identifier in body["systemRoles"]
    assert light.identifier not in body["systemRoles"]
    in_system = {sr.identifier for sr in contract.data.system_roles.values()
                 if sr.it_system_id == found.system.id and sr.weight < heavy.weight}
    assert not in_system & set(body["systemRoles"] + body["dataRoles"] + body["functionRoles"])
    held = contract.get(f"/user/{user}/hasSystemRole",
                        params={"roleIdentifier": light.identifier})
    assert (held.status_code, held.text) == (200, "Found role")


# --------------------------------------------------------------------------- OrganisationApi


def test_organisation_read_and_its_record(contract: Contract) -> None:
    """controller/api/OrganisationApi.java getOrganisation (``/api/organisation/v3``) with
    model/OrganisationDTO, UserDTO, PositionDTO, UserOUFunctionDTO, OrgUnitDTO, ManagerDTO.
    The CPR number only with the CPR grant; a subtree client sees its subtree; the answer's
    access record names the persons and, with the grant, ``cpr``."""
    plain = contract.get("/organisation/v3").json()
    assert set(plain) == {"users", "orgUnits"}
    user = plain["users"][0]
    assert set(user) == {"extUuid", "uuid", "userId", "name", "email", "phone", "cpr",
                         "nemloginUuid", "doNotInherit", "disabled", "positions", "functions",
                         "klePerforming", "kleInterest"}
    assert set(user["positions"][0]) == {"name", "orgUnitUuid", "titleUuid", "doNotInherit"}
    assert all(u["cpr"] is None for u in plain["users"])
    unit = plain["orgUnits"][0]
    assert set(unit) == {"uuid", "name", "parentOrgUnitUuid", "inheritKle", "level",
                         "klePerforming", "kleInterest", "manager", "titleIdentifiers",
                         "_parentRef"}
    assert any(u["manager"] and set(u["manager"]) == {"uuid", "userId"}
               for u in plain["orgUnits"])
    assert any(u["functions"] for u in plain["users"])
    assert any(u["klePerforming"] or u["kleInterest"] for u in plain["users"])
    with_cpr = contract.get("/organisation/v3", key="cpr").json()
    assert all(u["cpr"] and len(u["cpr"]) == 10 for u in with_cpr["users"])
    record = contract.audit.query(client="demo-cpr")[-1]
    assert record.operation == "organisation.read" and "cpr" in record.sensitive
    persons = {str(p) for u in with_cpr["users"]
               for p in contract.snapshot.get(u["uuid"]).attrs["personId"]}
    assert persons <= set(record.subjects)  # and the units' managers
    narrow = contract.get("/organisation/v3", key="sub").json()
    assert 0 < len(narrow["orgUnits"]) < len(plain["orgUnits"])
    assert 0 < len(narrow["users"]) < len(plain["users"])
    shown_units = {u["uuid"] for u in narrow["orgUnits"]}
    assert all(p["orgUnitUuid"] in shown_units for u in narrow["users"]
               for p in u["positions"])
