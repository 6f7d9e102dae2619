"""SCIM 2.0 read endpoint, tested over loopback against ``idm-facade serve``.

One demo municipality (size S) is imported once; the real ``idm-facade serve`` command runs it
in a subprocess on an OS-chosen port. Requests go through scim2-client and httpx; responses are
validated with scim2-models using the models the client discovered from ``/Schemas``.
Expected answers are computed from the directory's entries in plain Python, not through the
planner the server uses.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

import httpx
import pytest

httpx2 = pytest.importorskip("httpx2")

from scim2_client.engines.httpx2 import SyncSCIMClient  # noqa: E402
from scim2_models import Context, Error, ListResponse, SearchRequest  # noqa: E402
from scim2_tester import Status, check_server  # noqa: E402

from idm_facade.access import audit as audit_module  # noqa: E402
from idm_facade.access.clients import ClientRegistry  # noqa: E402
from idm_facade.config import Config  # noqa: E402
from idm_facade.directory import Directory  # noqa: E402
from schemas.attributes import ACCOUNT, MUNICIPAL_USER  # noqa: E402
from store import demo, exchange  # noqa: E402
from store.engine import make_engine  # noqa: E402
from tests.picks import sole_account  # noqa: E402

MUNI_USER = "urn:idm-facade:params:scim:schemas:extension:municipal:1.0:User"
MUNI_GROUP = "urn:idm-facade:params:scim:schemas:extension:municipal:1.0:Group"
#: Role provenance: the municipal extension's ``roles`` (``returned: "request"``).
PROVENANCE = f"{MUNI_USER}:roles"
SCIM_JSON = "application/scim+json"


@dataclass
class Server:
    base: str
    tokens: dict[str, str]
    entries: list
    top_unit: str
    db_url: str
    config: Config
    models: tuple = ()
    _http: dict = field(default_factory=dict)

    def http(self, who: str = "all") -> httpx.Client:
        if who not in self._http:
            headers = {"Authorization": f"Bearer {self.tokens[who]}"} if who else {}
            self._http[who] = httpx.Client(base_url=self.base, headers=headers, timeout=30)
        return self._http[who]

    def get(self, path: str, who: str = "all", **params) -> httpx.Response:
        response = self.http(who).get(path, params=params)
        if response.status_code != 304:
            assert response.headers["content-type"].startswith(SCIM_JSON)
        return response

    @property
    def accounts(self) -> list:
        return [e for e in self.entries if e.kind == ACCOUNT]


@pytest.fixture(scope="session")
def scim(tmp_path_factory) -> Iterator[Server]:
    path = tmp_path_factory.mktemp("scim") / "idm.db"
    url = f"sqlite:///{path}"
    engine = make_engine(url)
    exchange.import_document(engine, demo.generate("S", 1), actor="test")
    snap = Directory(engine).snapshot
    data = snap.data
    top = next(u for u in sorted(data.units.values(), key=lambda u: u.id)
               if u.parent_id and data.units[u.parent_id].parent_id is None
               and any(top_id == u.id for e in snap.entries if e.kind == ACCOUNT
                       for top_id in e.attrs.get("ancestor", ())))
    config_file = path.parent / "idm.toml"
    config_file.write_text(f'[policies.one-directorate]\nsubtrees = ["{top.id}"]\n')
    config = Config({"policies": {"one-directorate": {"subtrees": [top.id]}}})
    clients = ClientRegistry(engine, config)
    tokens = {"all": clients.add("scim-all", "scim", "default"),
              "cpr": clients.add("scim-cpr", "scim", "demo-cpr"),
              "sub": clients.add("scim-sub", "scim", "one-directorate"),
              "": ""}
    engine.dispose()
    proc = subprocess.Popen(
        [sys.executable, "-c", "from idm_facade.cli import main; main()", "serve", "--db", url,
         "--host", "127.0.0.1", "--scim-port", "0", "--config", str(config_file)],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    base = None
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and base is None:
        line = proc.stdout.readline()
        if not line:
            break
        found = re.search(r"SCIM\s+(http://\S+/scim/v2)", line)
        if found:
            base = found.group(1)
    if base is None:
        proc.kill()
        pytest.fail("idm-facade serve did not start")
    server = Server(base, tokens, snap.entries, top.id, url, config)
    client = SyncSCIMClient(httpx2.Client(base_url=base, headers={
        "Authorization": f"Bearer {tokens['all']}"}))
    client.discover()
    server.models = (client, *client.resource_models)
    try:
        yield server
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def validate_list(server: Server, response: httpx.Response) -> ListResponse:
    assert response.status_code == 200, response.text
    _, user, group = server.models
    model = ListResponse[user | group]
    return model.model_validate(response.json(), scim_ctx=Context.RESOURCE_QUERY_RESPONSE)


def validate_error(response: httpx.Response, status: int, scim_type: str | None = None) -> Error:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(SCIM_JSON)
    error = Error.model_validate(response.json())
    assert error.status == status
    if scim_type:
        assert error.scim_type == scim_type
    assert error.detail
    return error


def ids(response: httpx.Response) -> list[str]:
    return [r["id"] for r in response.json().get("Resources", [])]


def users(server: Server, flt: str, who: str = "all", **params) -> httpx.Response:
    return server.get("/Users", who, filter=flt, count=1000, **params)


# --------------------------------------------------------------------------- conformance


def test_scim2_tester_discovery_and_misc(scim):
    client = scim.models[0]
    results = check_server(client, include_tags={"discovery", "misc"})
    ran = [r for r in results if r.status != Status.SKIPPED]
    assert len(ran) >= 25
    assert all(r.status == Status.SUCCESS for r in ran), [
        (r.title, r.status, r.reason) for r in ran if r.status != Status.SUCCESS]


def test_scim2_client_queries_validate(scim):
    client, user_model, group_model = scim.models
    name = scim.accounts[5].first("userName")
    found = client.query(user_model, query_parameters=SearchRequest(
        filter=f'userName eq "{name.upper()}"'))
    assert found.total_results == 1 and found.resources[0].user_name == name
    page = client.query(user_model, query_parameters=SearchRequest(
        start_index=3, count=7, sort_by="userName"))
    assert page.total_results == len(scim.accounts) and len(page.resources) == 7
    wanted = sorted(scim.accounts, key=lambda e: e.first("userName").casefold())[2:9]
    assert [r.user_name for r in page.resources] == [e.first("userName") for e in wanted]
    one = client.query(user_model, scim.accounts[0].id)
    assert one.id == scim.accounts[0].id
    groups = client.query(group_model, query_parameters=SearchRequest(
        filter=f'{MUNI_GROUP}:kind eq "role"', excluded_attributes=["members"]))
    assert groups.total_results == sum(1 for e in scim.entries if e.kind == "role")
    assert all(g.members is None for g in groups.resources)


# --------------------------------------------------------------------------- filters


def test_filter_each_operator(scim):
    accounts = scim.accounts
    total = len(accounts)
    target = accounts[10]
    name = target.first("userName")
    folded = sorted(e.first("userName").casefold() for e in accounts)
    pivot = folded[total // 2]
    cases = {
        f'userName eq "{name.upper()}"': {target.id},
        f'userName ne "{name}"': {e.id for e in accounts} - {target.id},
        f'userName co "{name[1:-1].upper()}"': {
            e.id for e in accounts if name[1:-1].casefold() in e.first("userName").casefold()},
        f'userName sw "{name[:2]}"': {
            e.id for e in accounts if e.first("userName").casefold().startswith(name[:2])},
        f'userName ew "{name[-2:]}"': {
            e.id for e in accounts if e.first("userName").casefold().endswith(name[-2:])},
        f'userName gt "{pivot}"': {e.id for e in accounts
                                   if e.first("userName").casefold() > pivot},
        f'userName ge "{pivot}"': {e.id for e in accounts
                                   if e.first("userName").casefold() >= pivot},
        f'userName lt "{pivot}"': {e.id for e in accounts
                                   if e.first("userName").casefold() < pivot},
        f'userName le "{pivot}"': {e.id for e in accounts
                                   if e.first("userName").casefold() <= pivot},
        "nickName pr": {e.id for e in accounts if e.attrs.get("nickName")},
        "nickName eq null": {e.id for e in accounts if not e.attrs.get("nickName")},
        "not (nickName pr)": {e.id for e in accounts if not e.attrs.get("nickName")},
        "active eq false": {e.id for e in accounts if e.first("active") is False},
        f'USERNAME Eq "{name}" OR userName eq "{accounts[11].first("userName")}"':
            {target.id, accounts[11].id},
        f'name.givenName eq "{target.first("givenName")}" and '
        f'name.familyName eq "{target.first("familyName")}"': {
            e.id for e in accounts if e.first("givenName") == target.first("givenName")
            and e.first("familyName") == target.first("familyName")},
        f'urn:ietf:params:scim:schemas:core:2.0:User:userName eq "{name}"': {target.id},
    }
    for flt, expected in cases.items():
        response = users(scim, flt)
        listed = validate_list(scim, response)
        assert listed.total_results == len(expected), flt
        assert set(ids(response)) == expected, flt


def test_value_paths_and_entra_form(scim):
    target = next(e for e in scim.accounts if e.complex.get("emails")
                  and e.complex["emails"][0]["visibility"] == "PUBLIC")
    mail = target.complex["emails"][0]["value"]
    domain = mail.split("@", 1)[1]
    with_domain = {e.id for e in scim.accounts if any(
        el["visibility"] == "PUBLIC" and el["type"] == "work" and domain in el["value"].casefold()
        for el in e.complex.get("emails", ()))}
    response = users(scim, f'emails[type eq "work" and value co "@{domain.upper()}"]')
    assert set(ids(response)) == with_domain and target.id in with_domain
    for flt in (f'emails[type eq "work"].value eq "{mail.upper()}"',
                f'emails.value eq "{mail}"',
                f'emails[value eq "{mail}"]'):
        response = users(scim, flt)
        validate_list(scim, response)
        assert target.id in ids(response), flt
    assert ids(users(scim, f'emails[type eq "home"].value eq "{mail}"')) == []
    ent = f"urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:employeeNumber " \
          f'eq "{target.first("employeeNumber")}"'
    assert target.id in ids(users(scim, ent))


def test_case_rules(scim):
    target = next(e for e in scim.accounts if re.search("[a-z]", e.first("externalId", "")))
    ext = target.first("externalId")
    assert ids(users(scim, f'externalId eq "{ext}"')) == [target.id]
    assert ids(users(scim, f'externalId eq "{ext.upper()}"')) == []  # caseExact
    assert ids(users(scim, f'id eq "{target.id}"')) == [target.id]
    assert ids(users(scim, f'id eq "{target.id.upper()}"')) == []  # caseExact
    name = target.first("userName")
    assert ids(users(scim, f'userName eq "{name.swapcase()}"')) == [target.id]


def test_bad_filters_are_400_invalid_filter(scim):
    for flt in ('nosuch eq "x"', 'userName eq "x" and nosuch eq "y"', "garbage ((",
                'userName xx "a"', "userName eq", 'active gt true', 'emails[nosub eq "a"]',
                'meta.created gt "not a date"', 'members.value eq "x"'):
        validate_error(users(scim, flt), 400, "invalidFilter")
    validate_error(scim.get("/Groups", filter='userName eq "x"'), 400, "invalidFilter")
    assert scim.get("/Users", count=1).status_code == 200  # still serving


# --------------------------------------------------------------------------- paging, sort


def test_index_paging_totals_and_stability(scim):
    seen: list[str] = []
    start = 1
    while True:
        response = scim.get("/Users", startIndex=start, count=37, attributes="userName")
        listed = validate_list(scim, response)
        assert listed.total_results == len(scim.accounts)
        assert listed.start_index == start
        page = ids(response)
        seen += page
        if len(page) < 37:
            break
        start += 37
    assert len(seen) == len(set(seen)) == len(scim.accounts)
    assert seen == sorted(e.id for e in scim.accounts)  # same order on every page
    empty = scim.get("/Users", count=0)
    assert empty.json()["totalResults"] == len(scim.accounts) and ids(empty) == []
    none = users(scim, 'userName eq "no-such-user"')
    assert none.json()["totalResults"] == 0 and ids(none) == []


def test_cursor_paging(scim):
    seen: list[str] = []
    cursor = ""
    pages = 0
    while cursor is not None:
        response = scim.get("/Users", cursor=cursor, count=50, sortBy="userName")
        body = response.json()
        assert response.status_code == 200 and "startIndex" not in body
        seen += ids(response)
        if pages:
            assert body["previousCursor"]
        cursor = body.get("nextCursor")
        if cursor:
            assert re.fullmatch(r"[A-Za-z0-9._~-]+", cursor)
        pages += 1
    expected = sorted(scim.accounts, key=lambda e: (e.first("userName").casefold(), e.id))
    assert seen == [e.id for e in expected]
    first = scim.get("/Users", cursor="", count=10).json()["nextCursor"]
    validate_error(scim.get("/Users", cursor="garbage", count=10), 400, "invalidCursor")
    validate_error(scim.get("/Users", cursor=first[:-2] + "AA", count=10), 400, "invalidCursor")
    validate_error(scim.get("/Groups", cursor=first, count=10), 400, "invalidCursor")
    validate_error(scim.get("/Users", cursor="", count=-1), 400, "invalidCount")
    validate_error(scim.get("/Users", cursor="", count="x"), 400, "invalidCount")


def test_sort(scim):
    response = scim.get("/Users", sortBy="name.familyName", sortOrder="descending", count=1000,
                        attributes="name")
    got = [r.get("name", {}).get("familyName") for r in response.json()["Resources"]]
    present = [g for g in got if g is not None]
    assert present == sorted(present, key=str.casefold, reverse=True)
    validate_error(scim.get("/Users", sortBy="nosuch"), 400, "invalidValue")
    validate_error(scim.get("/Users", sortOrder="sideways"), 400, "invalidValue")


# --------------------------------------------------------------------------- projection, etags


def test_projection(scim):
    body = scim.get("/Users", count=3, attributes="userName").json()
    for resource in body["Resources"]:
        assert set(resource) == {"schemas", "id", "userName"}
    body = scim.get("/Users", count=3, excludedAttributes="emails,id,meta").json()
    for resource in body["Resources"]:
        assert "emails" not in resource and "meta" not in resource and resource["id"]
    body = scim.get("/Users", count=3, attributes="name.givenName").json()
    for resource in body["Resources"]:
        assert set(resource.get("name", {})) <= {"givenName"}
    big = max((e for e in scim.entries if e.kind != ACCOUNT), key=lambda e: len(
        e.attrs.get("member", ())))
    full = scim.get(f"/Groups/{big.id}").json()
    assert len(full["members"]) == len(big.attrs["member"])
    lean = scim.get(f"/Groups/{big.id}", excludedAttributes="members").json()
    assert "members" not in lean and lean["displayName"] == full["displayName"]
    validate_error(scim.get("/Users", attributes="userName", excludedAttributes="emails"),
                   400, "invalidValue")


def test_etag_and_304(scim):
    entry = scim.accounts[3]
    response = scim.get(f"/Users/{entry.id}")
    assert response.status_code == 200
    tag = response.headers["ETag"]
    assert tag.startswith('W/"') and response.json()["meta"]["version"] == tag
    assert response.json()["meta"]["location"].endswith(f"/Users/{entry.id}")
    again = scim.http().get(f"/Users/{entry.id}", headers={"If-None-Match": tag})
    assert again.status_code == 304 and not again.content
    other = scim.http().get(f"/Users/{entry.id}", headers={"If-None-Match": 'W/"other"'})
    assert other.status_code == 200


# --------------------------------------------------------------------------- errors


def test_errors(scim):
    response = scim.get("/Users", who="")
    validate_error(response, 401)
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    bad = httpx.get(f"{scim.base}/Users", headers={"Authorization": "Bearer idmf_x_nope"})
    validate_error(bad, 401)
    validate_error(scim.get("/Users/00000000-0000-0000-0000-000000000000"), 404)
    group = next(e for e in scim.entries if e.kind == "unit")
    validate_error(scim.get(f"/Users/{group.id}"), 404)  # a group is not a User
    validate_error(scim.get("/NoSuchThing"), 404)
    for method in ("POST", "PUT", "PATCH", "DELETE"):
        response = scim.http().request(method, f"/Users/{scim.accounts[0].id}"
                                       if method != "POST" else "/Users", json={})
        validate_error(response, 405)
    spc = scim.get("/ServiceProviderConfig").json()
    assert spc["patch"]["supported"] is False and spc["bulk"]["supported"] is False
    assert spc["changePassword"]["supported"] is False
    assert spc["pagination"]["maxPageSize"] >= 100


def test_search_endpoints_and_root(scim):
    target = scim.accounts[7]
    name = target.first("userName")
    body = {"schemas": ["urn:ietf:params:scim:api:messages:2.0:SearchRequest"],
            "filter": f'userName eq "{name}"', "attributes": ["userName"]}
    response = scim.http().post("/Users/.search", json=body)
    assert validate_list(scim, response).total_results == 1
    assert ids(response) == [target.id]
    mixed = scim.get("/", filter='displayName sw "a"', count=1000)
    types = Counter(r["meta"]["resourceType"] for r in mixed.json()["Resources"])
    assert types["User"] > 0 and types["Group"] > 0
    expected = sum(1 for e in scim.entries if e.first("displayName", "").casefold()
                   .startswith("a"))
    assert mixed.json()["totalResults"] == expected
    root = scim.http().post("/.search", json={"filter": 'meta.resourceType eq "Group"',
                                              "count": 0})
    assert root.json()["totalResults"] == sum(1 for e in scim.entries if e.kind != ACCOUNT)


# --------------------------------------------------------------------------- policy, audit


def test_cpr_only_with_grant_and_filter_behaves_as_absent(scim):
    target = sole_account(scim.accounts, needs="cpr")
    cpr = target.first("cpr")
    flt = f'{MUNI_USER}:cprNumber eq "{cpr}"'
    plain = users(scim, flt)
    assert plain.status_code == 200 and plain.json()["totalResults"] == 0
    seen = scim.get(f"/Users/{target.id}", attributes=f"{MUNI_USER}:cprNumber").json()
    assert MUNI_USER not in seen or "cprNumber" not in seen[MUNI_USER]
    assert cpr not in scim.get(f"/Users/{target.id}").text
    granted = users(scim, flt, who="cpr", attributes=f"{MUNI_USER}:cprNumber")
    assert ids(granted) == [target.id]
    assert granted.json()["Resources"][0][MUNI_USER]["cprNumber"] == cpr
    # cprNumber is returned only on request, even with the grant
    assert cpr not in scim.get(f"/Users/{target.id}", who="cpr").text
    engine = make_engine(scim.db_url)
    log = audit_module.AuditLog(engine, scim.config)
    records = audit_module.records_for(log, [target.first("personId")])
    assert any(r.client == "scim-cpr" and "cpr" in r.sensitive for r in records)
    assert any(r.client == "scim-all" and not r.sensitive for r in records)
    engine.dispose()


def test_subtree_client_totals_ignore_hidden_entries(scim):
    inside = [e for e in scim.accounts if scim.top_unit in e.attrs.get("ancestor", ())]
    outside = [e for e in scim.accounts if scim.top_unit not in e.attrs.get("ancestor", ())]
    assert inside and outside
    response = scim.get("/Users", who="sub", count=0)
    assert response.json()["totalResults"] == len(inside)
    validate_error(scim.get(f"/Users/{outside[0].id}", who="sub"), 404)
    name = outside[0].first("userName")
    assert users(scim, f'userName eq "{name}"', who="sub").json()["totalResults"] == 0
    everyone = scim.get("/Users", who="sub", count=1000, attributes="userName")
    assert set(ids(everyone)) == {e.id for e in inside}


def test_repeated_list_query_cached_body_but_one_record_each(scim):
    """A repeated list query is served from the snapshot's body cache: same bytes, still
    bound to the client's policy, and still one access record per request."""
    outside = next(e for e in scim.accounts
                   if scim.top_unit not in e.attrs.get("ancestor", ()))
    flt = f'userName eq "{outside.first("userName")}"'
    first = users(scim, flt, sortBy="displayName")
    second = users(scim, flt, sortBy="displayName")
    assert first.status_code == second.status_code == 200
    assert first.content == second.content and ids(first) == [outside.id]
    # the same query string from a client whose policy hides the entry: not the cached body
    hidden = users(scim, flt, who="sub", sortBy="displayName")
    assert hidden.json()["totalResults"] == 0
    engine = make_engine(scim.db_url)
    log = audit_module.AuditLog(engine, scim.config)
    mine = [r for r in audit_module.records_for(log, [outside.first("personId")])
            if r.client == "scim-all" and "sortBy=displayName" in r.query]
    assert len(mine) == 2
    engine.dispose()


def test_core_roles_list_each_role_once_with_provenance_in_extension(scim):
    """User.roles names each effective role once; the municipal extension keeps one element
    per grant, so a role held for two reasons shows both reasons there (provenance is
    returned on request only, so it is asked for)."""
    body = scim.get("/Users", count=300, attributes=f"userName,roles,{PROVENANCE}").json()
    twice = 0
    for user in body["Resources"]:
        core = [r["value"] for r in user.get("roles", [])]
        assert len(core) == len(set(core)), user["userName"]
        grants = user.get(MUNICIPAL_USER, {}).get("roles", [])
        assert {g["value"] for g in grants} == set(core)
        twice += len(grants) > len(core)
    assert twice  # the demo has roles held for more than one reason


# --------------------------------------------------------------------------- role provenance


def _grants(entry) -> list[tuple]:
    """(role, via, viaUnit, viaRoleGroup) of every grant the directory keeps, in order."""
    return [(g["value"], g["via"], g.get("viaUnit"), g.get("viaRoleGroup"))
            for g in entry.complex.get("roles", ())]


def _shown_grants(user: dict) -> list[tuple]:
    return [(g["value"], g["via"], g.get("viaUnit"), g.get("viaRoleGroup"))
            for g in user.get(MUNI_USER, {}).get("roles", [])]


def test_default_user_has_core_roles_and_groups_but_no_provenance(scim):
    by_id = {e.id: e for e in scim.accounts}
    response = scim.get("/Users", count=1000)
    validate_list(scim, response)
    resources = response.json()["Resources"]
    assert len(resources) == len(by_id)
    holders = 0
    for user in resources:
        entry = by_id[user["id"]]
        assert "roles" not in user.get(MUNI_USER, {}), user["userName"]
        assert {r["value"] for r in user.get("roles", [])} == set(entry.attrs.get("role", ()))
        assert {g["value"] for g in user.get("groups", [])} == \
            set(entry.attrs.get("memberOf", ()))
        assert user[MUNI_USER]["personId"] == entry.first("personId")  # the rest stays
        holders += bool(entry.complex.get("roles"))
    assert holders > len(by_id) // 4
    for key in ('"viaUnit"', '"viaRoleGroup"', '"via"'):
        assert key not in response.text
    # unqualified "roles" is core User.roles (RFC 7644 §3.10): no provenance with it
    core_only = scim.get("/Users", count=1000, attributes="roles").json()["Resources"]
    assert any(u.get("roles") for u in core_only)
    assert all(MUNI_USER not in u for u in core_only)


def test_provenance_returned_when_requested(scim):
    by_id = {e.id: e for e in scim.accounts}
    asked = scim.get("/Users", count=1000, attributes=PROVENANCE)
    validate_list(scim, asked)
    held = 0
    for user in asked.json()["Resources"]:
        entry = by_id[user["id"]]
        assert _shown_grants(user) == _grants(entry), user["userName"]
        assert set(user) <= {"schemas", "id", "userName", MUNI_USER}
        assert set(user.get(MUNI_USER, {})) <= {"roles"}
        held += bool(_grants(entry))
    assert held
    # a sub-attribute of it
    vias = scim.get("/Users", count=1000, attributes=f"{PROVENANCE}.via").json()
    for user in vias["Resources"]:
        grants = user.get(MUNI_USER, {}).get("roles", [])
        assert [set(g) for g in grants] == [{"via"}] * len(grants)
        assert [g["via"] for g in grants] == [g[1] for g in _grants(by_id[user["id"]])]
    # the whole extension URN names all of its attributes, request-only ones included
    # (as for cprNumber)
    whole = scim.get("/Users", count=1000, attributes=MUNI_USER).json()
    for user in whole["Resources"]:
        entry = by_id[user["id"]]
        assert _shown_grants(user) == _grants(entry)
        assert user[MUNI_USER]["personId"] == entry.first("personId")
        assert "roles" not in user and "emails" not in user
    # a SearchRequest asks the same way
    search = scim.http().post("/Users/.search", json={
        "schemas": ["urn:ietf:params:scim:api:messages:2.0:SearchRequest"],
        "attributes": ["userName", PROVENANCE], "count": 1000})
    assert search.json()["Resources"] == asked.json()["Resources"]


def test_filter_on_provenance_works_when_not_returned(scim):
    accounts = scim.accounts
    via_unit = {e.id for e in accounts if any(g[1] == "unit" for g in _grants(e))}
    as_manager = {e.id for e in accounts if any(g[1] == "manager" for g in _grants(e))}
    assert via_unit and as_manager and len(via_unit) < len(accounts)
    response = users(scim, f'{PROVENANCE}.via eq "unit"')
    validate_list(scim, response)
    assert set(ids(response)) == via_unit
    assert all("roles" not in r.get(MUNI_USER, {}) for r in response.json()["Resources"])
    assert set(ids(users(scim, f'{PROVENANCE}.via eq "MANAGER"'))) == as_manager
    group = next(g[3] for e in accounts for g in _grants(e) if g[3])
    through = {e.id for e in accounts if any(g[3] == group for g in _grants(e))}
    response = users(scim, f'{PROVENANCE}.viaRoleGroup eq "{group}"',
                     attributes=PROVENANCE)
    assert set(ids(response)) == through
    assert all(_shown_grants(r) == _grants(next(e for e in accounts if e.id == r["id"]))
               for r in response.json()["Resources"])
    # unqualified, "roles" is core User.roles, which has no "via"
    validate_error(users(scim, 'roles.via eq "unit"'), 400, "invalidFilter")


def test_schemas_say_provenance_is_returned_on_request(scim):
    muni = {a["name"]: a for a in scim.get(f"/Schemas/{MUNI_USER}").json()["attributes"]}
    assert muni["roles"]["returned"] == "request"
    assert muni["cprNumber"]["returned"] == "request"
    assert {"via", "viaUnit", "viaRoleGroup"} <= {
        s["name"] for s in muni["roles"]["subAttributes"]}
    assert all(a["returned"] == "default" for name, a in muni.items()
               if name not in ("roles", "cprNumber"))
    core = scim.get("/Schemas/urn:ietf:params:scim:schemas:core:2.0:User").json()
    core_attrs = {a["name"]: a for a in core["attributes"]}
    assert core_attrs["roles"]["returned"] == core_attrs["groups"]["returned"] == "default"


def test_provenance_single_get_and_list_agree_without_mixing(scim):
    """Default and requested representations are cached apart (per resource and per list
    body) and carry the same weak ETag: it is the resource's state, not the representation."""
    entry = max(scim.accounts, key=lambda e: len(_grants(e)))
    flt = f'id eq "{entry.id}"'
    asked = f"meta,userName,roles,{PROVENANCE}"
    # asked first, so a default answered afterwards would show a mixed-up cache
    single_asked = scim.get(f"/Users/{entry.id}", attributes=asked)
    single = scim.get(f"/Users/{entry.id}")
    listed_asked = users(scim, flt, attributes=asked)
    listed = users(scim, flt)
    listed_again = users(scim, flt)  # from the list-body cache
    assert single.json() == listed.json()["Resources"][0] == listed_again.json()["Resources"][0]
    assert single_asked.json() == listed_asked.json()["Resources"][0]
    assert _shown_grants(single_asked.json()) == _grants(entry) and len(_grants(entry)) > 1
    assert "roles" not in single.json()[MUNI_USER]
    assert single.json()["roles"] == single_asked.json()["roles"]
    assert single.headers["ETag"] == single_asked.headers["ETag"] == \
        single.json()["meta"]["version"] == single_asked.json()["meta"]["version"]
    again = scim.http().get(f"/Users/{entry.id}", params={"attributes": asked},
                            headers={"If-None-Match": single.headers["ETag"]})
    assert again.status_code == 304
