"""The role API over real HTTP on loopback, against the S demo municipality.

The blueprint is served the way production serves it when the SCIM application exists
(``idm_facade.runtime.http.create_app``), else in a minimal Flask app, by werkzeug's threaded
server on an OS-chosen port; requests go through httpx.
"""

from __future__ import annotations

import base64
import threading
import xml.etree.ElementTree as ET
from collections.abc import Iterator

import httpx
import pytest
from flask import Flask
from werkzeug.serving import make_server

from idm_facade.access.clients import ClientRegistry
from idm_facade.access.facade import Facade
from idm_facade.config import Config
from idm_facade.directory import Directory
from idm_facade.directory.filters import Eq
from idm_facade.directory.policy import ACCOUNTS_ONLY, TRUSTED
from idm_facade.roleapi.api import blueprint
from schemas.attributes import ACCOUNT
from store import demo, exchange
from store.engine import make_engine
from tests.test_directory import populated_directorate

audit_module = pytest.importorskip("idm_facade.access.audit")

NS = "{http://itst.dk/oiosaml/basic_privilege_profile}"


def make_app(facade: Facade) -> Flask:
    """The production app when it exists, else the blueprint alone."""
    try:
        from idm_facade.runtime.http import create_app
    except ImportError:
        app = Flask("roleapi-test")
        app.register_blueprint(blueprint(facade), url_prefix="/api")
        return app
    return create_app(facade)


class Served:
    """A running server and what the tests need to check its answers."""

    def __init__(self, facade: Facade, base: str, tokens: dict[str, str]) -> None:
        self.facade = facade
        self.base = base
        self.tokens = tokens

    def get(self, path: str, client: str | None = "all", **params) -> httpx.Response:
        headers = {"Authorization": f"Bearer {self.tokens[client]}"} if client else {}
        return httpx.get(self.base + path, headers=headers, params=params, timeout=30)

    @property
    def snapshot(self):
        return self.facade.directory.snapshot


@pytest.fixture(scope="module")
def served(tmp_path_factory) -> Iterator[Served]:
    path = tmp_path_factory.mktemp("roleapi") / "idm.db"
    engine = make_engine(f"sqlite:///{path}")
    doc = demo.generate("S", 1)
    for system in doc["it_systems"]:  # blocked systems: tests/test_roleapi_contract.py
        system["access_blocked"] = False
    exchange.import_document(engine, doc, actor="test")
    directory = Directory(engine)
    top = populated_directorate(directory.snapshot)
    config = Config({"policies": {"one-directorate": {"subtrees": [top.id]},
                                  "mail-only": {"attributes": ["emails"]},
                                  "contact": {"attributes": ["displayName", "emails",
                                                             "phoneNumbers", "department"]},
                                  "people-only": {"kinds": ["account"]}}})
    clients = ClientRegistry(engine, config)
    tokens = {"all": clients.add("roles-all", "scim", "default"),
              "sub": clients.add("roles-sub", "scim", "one-directorate"),
              "mail": clients.add("roles-mail", "scim", "mail-only"),
              "contact": clients.add("roles-contact", "scim", "contact"),
              "people": clients.add("roles-people", "scim", "people-only")}
    audit = audit_module.AuditLog(engine, config)
    facade = Facade(directory=directory, clients=clients, audit=audit, config=config)
    server = make_server("127.0.0.1", 0, make_app(facade), threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        result = Served(facade, f"http://127.0.0.1:{server.server_port}/api", tokens)
        result.top_unit = top.id  # type: ignore[attr-defined]
        yield result
    finally:
        server.shutdown()
        thread.join(timeout=5)
        engine.dispose()


def accounts(served: Served):
    return [e for e in served.snapshot.entries if e.kind == ACCOUNT]


def with_roles(served: Served):
    return [e for e in accounts(served) if e.attrs.get("role")]


def test_requires_a_valid_token(served):
    name = accounts(served)[0].first("userName")
    for response in (served.get(f"/roles/{name}", client=None),
                     httpx.get(f"{served.base}/roles/{name}",
                               headers={"Authorization": "Bearer idmf_nope_nope"})):
        assert response.status_code == 401
        assert "token" in response.json()["error"]


def test_roles_json_shape_and_provenance(served):
    entry = max(with_roles(served), key=lambda e: len(e.complex["roles"]))
    response = served.get(f"/roles/{entry.first('userName').upper()}")
    assert response.status_code == 200
    body = response.json()
    assert body["account"]["id"] == entry.id
    assert body["account"]["userName"] == entry.first("userName")
    assert body["account"]["personId"] == entry.first("personId")
    data = served.snapshot.data
    seen = set()
    for system in body["itSystems"]:
        assert set(system) == {"identifier", "name", "jobRoles", "systemRoles"}
        for role in system["jobRoles"]:
            seen.add(role["id"])
            row = data.job_roles[role["id"]]
            assert data.it_systems[row.it_system_id].user_key == system["identifier"]
            assert role["identifier"] == row.identifier and role["provenance"]
            for p in role["provenance"]:
                assert p["via"] in ("direct", "unit", "manager", "substitute")
                assert (p["unit"] is None) == (p["via"] == "direct")
    assert seen == set(entry.attrs["role"])


def test_system_filter(served):
    entry = with_roles(served)[0]
    name = entry.first("userName")
    # An unknown system is 404, as in OS2rollekatalog (UserApi.java: "could not find
    # itSystem" -> HttpStatus.NOT_FOUND), never an empty 200.
    unknown = served.get(f"/roles/{name}", system="no-such-system")
    assert unknown.status_code == 404 and "no-such-system" in unknown.json()["error"]
    first = served.get(f"/roles/{name}").json()["itSystems"][0]["identifier"]
    only = served.get(f"/roles/{name}", system=first.lower()).json()["itSystems"]
    assert [s["identifier"] for s in only] == [first]
    listed = served.get(f"/user/{name}/rolesAsList", system="no-such-system")
    assert listed.status_code == 404


def test_unknown_user_is_404(served):
    for path in ("/roles/nobody-here", "/user/nobody-here/roles",
                 "/user/nobody-here/rolesAsList", "/user/nobody-here/nameid",
                 "/user/nobody-here/hasUserRole/x"):
        # rolesAsList's ``system`` is required (UserApi.java); empty means every system
        response = served.get(path, system="")
        assert response.status_code == 404, path
        assert response.json()["error"] == "unknown user: nobody-here"


def test_name_id_shows_only_what_the_client_may_read(served):
    """The NameID carries names and the external id; a client whose policy allows neither
    (here: e-mail addresses only) gets the account's user name and id instead (#19: the
    role API once built it from the raw entry and the store row)."""
    entry = next(e for e in accounts(served) if e.attrs.get("externalId")
                 and e.attrs.get("formattedName"))
    name, external = entry.first("formattedName"), entry.first("externalId")
    for path in (f"/user/{entry.first('userName')}/roles",
                 f"/user/{entry.first('userName')}/rolesAsList"):
        full = served.get(path, system="").json()["nameID"]
        assert f"CN={name}," in full and full.endswith(f"Serial={external}")
        narrow = served.get(path, client="mail", system="").json()["nameID"]
        assert f"CN={entry.first('userName')}," in narrow
        assert narrow.endswith(f"Serial={entry.id}")
        assert external not in narrow and name not in narrow


def test_oiobpp_endpoint(served):
    """With only KOMBIT systems asked for, OS2rollekatalog's
    UserService.generateOIOBPPPrivileges (ui/src/main/java/dk/digitalidentity/rc/service/
    UserService.java) sends each role as one privilege: its KOMBIT entity id (an identifier
    that is a URL already is used as it is), scoped to the municipality's CVR; a delegated
    role is its plain identifier, scoped to the delegating municipality's CVR."""
    data = served.snapshot.data

    def kombit_roles(entry):
        return [data.job_roles[r] for r in entry.attrs["role"]
                if data.it_systems[data.job_roles[r].it_system_id].system_type == "KOMBIT"]

    holders = [e for e in with_roles(served) if kombit_roles(e)]
    # A holder of a delegated role too (the demo has a few), so both paths are pinned.
    entry = max(holders, key=lambda e: any(r.delegated_from_cvr for r in kombit_roles(e)))
    assert any(r.delegated_from_cvr for r in kombit_roles(entry))
    body = served.get(f"/user/{entry.first('userName')}/roles", system="KOMBIT").json()
    assert body["nameID"].startswith(f"C=DK,O={data.organisation.cvr},CN=")
    root = ET.fromstring(base64.b64decode(body["oioBPP"]))
    assert root.tag == f"{NS}PrivilegeList"
    got = {p.text: group.get("Scope") for group in root.findall("PrivilegeGroup")
           for p in group.findall("Privilege")}
    expected = {}
    for role in kombit_roles(entry):
        plain = role.delegated_from_cvr or "://" in role.identifier
        privilege = role.identifier if plain else \
            f"http://{data.organisation.kombit_domain}/roles/jobrole/{role.identifier}/1"
        cvr = role.delegated_from_cvr or data.organisation.cvr
        expected[privilege] = f"urn:dk:gov:saml:cvrNumberIdentifier:{cvr}"
    assert got == expected
    for group in root.findall("PrivilegeGroup"):
        for constraint in group.findall("Constraint"):
            assert constraint.get("Name") and constraint.text


def test_roles_as_list_and_has_user_role(served):
    data = served.snapshot.data
    entry = with_roles(served)[0]
    name = entry.first("userName")
    body = served.get(f"/user/{name}/rolesAsList", system="").json()
    assert set(body) == {"userRoles", "systemRoles", "dataRoles", "functionRoles", "roleMap",
                         "nameID", "disabled"}
    assert set(body["userRoles"]) == {data.job_roles[r].identifier for r in entry.attrs["role"]}
    # UserApi.getUserRolesAsList (OS2rollekatalog, ui/src/main/java/dk/digitalidentity/rc/
    # controller/api/UserApi.java): a system role of type BOTH is in systemRoles and in
    # neither dataRoles nor functionRoles; roleMap values are "name (IT system name)".
    types = {sr.identifier: sr.role_type for sr in data.system_roles.values()}
    assert set(body["dataRoles"]) == {r for r in body["systemRoles"] if types[r] == "DATA_ROLE"}
    assert set(body["functionRoles"]) == {r for r in body["systemRoles"]
                                          if types[r] == "FUNCTION_ROLE"}
    for role_id in entry.attrs["role"]:
        role = data.job_roles[role_id]
        system = data.it_systems[role.it_system_id]
        assert body["roleMap"][role.identifier] == f"{role.name} ({system.name})"
    oiobpp = served.get(f"/user/{name}/roles").json()
    assert set(oiobpp) == {"nameID", "oioBPP", "roleMap"}
    # With every system asked for (some not KOMBIT), /roles expands roles to system roles and
    # leaves delegated roles out of the privileges and so of its roleMap ("delegated roles
    # cannot be constrained dynamically, nor can it be expanded": UserService.
    # generateOIOBPPPrivileges); rolesAsList lists every role held.
    delegated = {data.job_roles[r].identifier for r in entry.attrs["role"]
                 if data.job_roles[r].delegated_from_cvr}
    assert oiobpp["roleMap"] == {k: v for k, v in body["roleMap"].items()
                                 if k not in delegated}
    held = entry.attrs["role"][0]
    not_held = next(r for r in data.job_roles if r not in entry.attrs["role"])
    # OS2rollekatalog's UserApi.userHasUserRole (ui/src/main/java/dk/digitalidentity/rc/
    # controller/api/UserApi.java): 200 "Found role", 404 "Did not find role". A consumer
    # checks the status code, so "not held" must never be a 200.
    for role in (held, data.job_roles[held].identifier):
        found = served.get(f"/user/{name}/hasUserRole/{role}")
        assert (found.status_code, found.text) == (200, "Found role")
    missing = served.get(f"/user/{name}/hasUserRole/{not_held}")
    assert (missing.status_code, missing.text) == (404, "Did not find role")
    system = data.it_systems[data.job_roles[held].it_system_id].user_key
    other = next(s.user_key for s in data.it_systems.values() if s.user_key != system)
    assert served.get(f"/user/{name}/hasUserRole/{held}", system=system).status_code == 200
    assert served.get(f"/user/{name}/hasUserRole/{held}", system=other).status_code == 404


def test_itsystem_holders_paged(served):
    data = served.snapshot.data
    held = {data.job_roles[r].it_system_id for e in with_roles(served) for r in e.attrs["role"]}
    system = data.it_systems[sorted(held)[0]]
    roles = {r.id for r in data.job_roles.values() if r.it_system_id == system.id}
    expected = sorted(e.id for e in with_roles(served) if roles & set(e.attrs["role"]))
    assert expected
    got, start = [], 1
    while True:
        page = served.get(f"/itsystem/{system.user_key}/holders", startIndex=start,
                          count=7).json()
        assert page["totalResults"] == len(expected)
        got += [u["id"] for u in page["users"]]
        if not page["users"]:
            break
        assert all(u["roles"] for u in page["users"])
        start += page["itemsPerPage"]
    assert got == expected
    assert served.get("/itsystem/no-such-system/holders").status_code == 404
    bad = served.get(f"/itsystem/{system.user_key}/holders", count="many")
    assert bad.status_code == 400 and "count" in bad.json()["error"]


def test_itsystem_users_and_all_as_os2rollekatalog(served):
    """ItSystemApi.java (OS2rollekatalog, ui/src/main/java/dk/digitalidentity/rc/controller/
    api/ItSystemApi.java): ``/api/itsystem/{id}/users`` is a bare array of the user ids of
    the (enabled) holders, the system found by id or identifier; ``/api/itsystem/all`` is
    ``[{id, name, identifier}]``."""
    data = served.snapshot.data
    listed = served.get("/itsystem/all").json()
    assert {s["identifier"] for s in listed} == {s.user_key for s in data.it_systems.values()}
    assert set(listed[0]) == {"id", "name", "identifier"}
    held = {data.job_roles[r].it_system_id for e in with_roles(served) for r in e.attrs["role"]}
    system = data.it_systems[sorted(held)[0]]
    roles = {r.id for r in data.job_roles.values() if r.it_system_id == system.id}
    expected = {e.first("userName") for e in with_roles(served)
                if roles & set(e.attrs["role"]) and e.first("active") is not False}
    for key in (system.user_key, system.id):
        users = served.get(f"/itsystem/{key}/users").json()
        assert isinstance(users, list) and set(users) == expected
    assert served.get("/itsystem/no-such-system/users").status_code == 404


def test_policy_hides_accounts_outside_subtree(served):
    snap = served.snapshot
    under = {e.id for e in snap.search(Eq("ancestor", served.top_unit), kinds=ACCOUNTS_ONLY,
                                       policy=TRUSTED)}
    outside = next(e for e in accounts(served) if e.id not in under)
    inside_entry = next(e for e in accounts(served) if e.id in under)
    assert served.get(f"/roles/{outside.first('userName')}", client="sub").status_code == 404
    assert served.get(f"/roles/{outside.first('userName')}", client="all").status_code == 200
    assert served.get(f"/roles/{inside_entry.first('userName')}", client="sub").status_code == 200


def test_json_agrees_with_directory_for_every_account(served):
    """Every account of the S demo: the role ids served equal the directory's, less the
    roles of the access-blocked system (never handed out by a role lookup)."""
    checked = 0
    data = served.snapshot.data
    blocked = {r.id for r in data.job_roles.values()
               if data.it_systems[r.it_system_id].access_blocked}
    with httpx.Client(base_url=served.base,
                      headers={"Authorization": f"Bearer {served.tokens['all']}"}) as http:
        for entry in accounts(served):
            body = http.get(f"/roles/{entry.first('userName')}").json()
            served_ids = {r["id"] for s in body["itSystems"] for r in s["jobRoles"]}
            assert served_ids == set(entry.attrs.get("role", ())) - blocked, \
                entry.first("userName")
            checked += 1
    assert checked == len(accounts(served)) > 100


def test_one_access_record_per_request(served):
    audit = served.facade.audit
    entry = with_roles(served)[0]
    person = entry.first("personId")
    before = audit.count()
    assert served.get(f"/roles/{entry.first('userName')}").status_code == 200
    assert audit.count() == before + 1
    last = audit.query(client="roles-all")[-1]
    assert (last.operation, last.status, last.subjects) == ("roles.lookup", "200", [person])
    assert last.query.startswith(f"/api/roles/{entry.first('userName')}")
    served.get("/roles/nobody-here")
    assert audit.count() == before + 2
    assert audit.query(client="roles-all")[-1].subjects == []
    served.get(f"/roles/{entry.first('userName')}", client=None)
    assert audit.count() == before + 3
    assert audit.query(client="-")[-1].status == "401"
    assert served.get(f"/user/{entry.first('userName')}/roles").status_code == 200
    assert audit.query(subject=person)[-1].operation == "roles.oiobpp"


def test_no_access_record_no_answer(served):
    """With the access log closed (unwritable), requests fail with 500 and disclose nothing."""
    engine = served.facade.directory.engine
    closed = audit_module.AuditLog(engine, served.facade.config)
    closed.close()
    facade = Facade(directory=served.facade.directory, clients=served.facade.clients,
                    audit=closed, config=served.facade.config)
    server = make_server("127.0.0.1", 0, make_app(facade), threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        entry = with_roles(served)[0]
        response = httpx.get(
            f"http://127.0.0.1:{server.server_port}/api/roles/{entry.first('userName')}",
            headers={"Authorization": f"Bearer {served.tokens['all']}"})
        assert response.status_code == 500
        assert "access log" in response.json()["error"]
        assert entry.attrs["role"][0] not in response.text
    finally:
        server.shutdown()
        thread.join(timeout=5)


def test_attribute_restrictions_hold_in_the_role_api(served):
    """A client allowed only contact attributes (#19): no external id in the NameID, no
    ``disabled`` (it may not read ``active``), and no role holders where ``roles pr`` finds
    none, since it may not read roles either."""
    data = served.snapshot.data
    entry = next(e for e in with_roles(served) if e.attrs.get("externalId"))
    name = entry.first("userName")
    body = served.get(f"/user/{name}/rolesAsList", client="contact", system="").json()
    assert "disabled" not in body and body["userRoles"] == []
    assert not body["nameID"].endswith(entry.first("externalId"))
    refused = served.get(f"/user/{name}/hasUserRole/{entry.attrs['role'][0]}",
                         client="contact")
    assert (refused.status_code, refused.text) == (404, "Did not find role")
    system = data.it_systems[data.job_roles[entry.attrs["role"][0]].it_system_id]
    holders = served.get(f"/itsystem/{system.user_key}/holders", client="contact").json()
    assert holders["totalResults"] == 0 and holders["users"] == []
    assert served.get(f"/itsystem/{system.user_key}/holders").json()["totalResults"] > 0
    assert served.get(f"/itsystem/{system.user_key}/users", client="contact").json() == []


def test_a_client_that_may_not_read_roles_is_refused(served):
    entry = with_roles(served)[0]
    response = served.get(f"/roles/{entry.first('userName')}", client="people")
    assert response.status_code == 403
    assert "may not read roles" in response.json()["error"]


def test_oiobpp_constraints_name_only_visible_units(served):
    """A subtree-limited client's OIOBPP constraints list no unit outside its subtree (#19:
    they once listed the account's hidden units)."""
    snap = served.snapshot
    under = {e.id for e in snap.search(Eq("ancestor", served.top_unit), kinds=frozenset({"unit"}),
                                       policy=TRUSTED)}
    all_units = {e.id for e in snap.entries if e.kind == "unit"}
    checked = 0
    for entry in with_roles(served):
        if not set(entry.attrs.get("ancestor", ())) & {served.top_unit}:
            continue
        for client in ("all", "sub"):
            body = served.get(f"/user/{entry.first('userName')}/roles", client=client).json()
            root = ET.fromstring(base64.b64decode(body["oioBPP"]))
            values = {v for c in root.iter("Constraint") for v in (c.text or "").split(",")}
            named = values & all_units
            if client == "sub":
                assert named <= under, entry.first("userName")
            checked += bool(named)
    assert checked, "no account in the directorate has an org-unit constraint"


def test_has_system_role_nameid_and_lookup_by_external_uuid(served):
    """UserApi.java (OS2rollekatalog): ``hasSystemRole?roleIdentifier=&system=`` answers 200
    "Found role" / 404 "Did not find role"; ``/nameid`` gives ``{nameID}``; ``getUser`` falls
    back to the external UUID when no user has the id as user name."""
    from idm_facade.directory.view import ClientView
    from idm_facade.roleapi.api import role_view

    view = ClientView.of(served.snapshot, TRUSTED)
    roles = role_view(view)
    entry = next(e for e in with_roles(served) if e.attrs.get("externalId")
                 and any(roles.system_roles_of.get(r) for r in e.attrs["role"]))
    name = entry.first("userName")
    carried = {sr.identifier for r in entry.attrs["role"] for sr in roles.system_roles_of[r]}
    every = {sr.identifier for rows in roles.system_roles_of.values() for sr in rows}
    found = served.get(f"/user/{name}/hasSystemRole", roleIdentifier=sorted(carried)[0])
    assert (found.status_code, found.text) == (200, "Found role")
    others = sorted(every - carried)
    if others:
        missing = served.get(f"/user/{name}/hasSystemRole", roleIdentifier=others[0])
        assert (missing.status_code, missing.text) == (404, "Did not find role")
    assert served.get(f"/user/{name}/hasSystemRole").status_code == 400
    named = served.get(f"/user/{name}/nameid").json()["nameID"]
    assert named == served.get(f"/user/{name}/roles").json()["nameID"]
    by_uuid = served.get(f"/user/{entry.first('externalId')}/rolesAsList", system="")
    assert by_uuid.status_code == 200
    assert by_uuid.json()["nameID"] == named
