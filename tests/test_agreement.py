"""The role API (JSON), SCIM and LDAP agree on every account's roles in the S demo.

One ``idm-facade serve`` (SCIM, role API and LDAP in one process) runs over a copy of the S
demo store. A SCIM client and an LDAP client are registered with the same policy (the demo
clients, policy ``demo-internal``). Then, for every account:

- the role ids of ``GET /api/roles/{userName}``,
- the values of SCIM ``User.roles`` (one paged list with ``attributes=userName,roles`` and
  the municipal extension's role provenance, which is returned only on request),
- the ``idmRole`` values and the role groups among ``memberOf`` in LDAP (one paged search)

are the same set, and the provenance (via, unit, role group of each grant) of SCIM and the
role API is the same; and for every role, the members of its SCIM Group equal the accounts its
LDAP groupOfNames lists in ``member``, and equal the accounts holding the role.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import ldap
import pytest
from ldap.controls import SimplePagedResultsControl

from idm_facade.access.clients import ClientRegistry
from idm_facade.config import Config
from idm_facade.directory import Directory
from idm_facade.ldap.syntax import parse_dn
from schemas.attributes import ACCOUNT, ROLE
from store.engine import make_engine
from tests.serving import Serving, copy_store, start_serve

MUNI_GROUP = "urn:idm-facade:params:scim:schemas:extension:municipal:1.0:Group"
MUNI_USER = "urn:idm-facade:params:scim:schemas:extension:municipal:1.0:User"


@dataclass
class Views:
    serving: Serving
    base_dn: str
    creds: dict
    accounts: list  # the test process's own directory entries, for counts only
    roles: list
    data: Any  # the catalogue rows of that snapshot (access-blocked, delegated roles)


@pytest.fixture(scope="module")
def views(demo_db, tmp_path_factory) -> Iterator[Views]:
    tmp = tmp_path_factory.mktemp("agreement")
    db = copy_store(demo_db, tmp / "idm.db")
    config_path = tmp / "idm.toml"
    config_path.write_text(f'[directory]\nstate_dir = "{tmp}"\n')
    engine = make_engine(db)
    config = Config({"directory": {"state_dir": str(tmp)}})
    clients = ClientRegistry(engine, config)
    creds = clients.ensure_demo_clients()
    assert creds["demo-scim"]["policy"] == creds["demo-ldap"]["policy"]
    snap = Directory(engine).snapshot
    accounts = [e for e in snap.entries if e.kind == ACCOUNT]
    roles = [e for e in snap.entries if e.kind == ROLE]
    serving = start_serve(db, config_path)
    try:
        yield Views(serving, clients.base, creds, accounts, roles, snap.data)
    finally:
        serving.stop()
        engine.dispose()


def _scim_get(http: httpx.Client, path: str, **params) -> list[dict]:
    """Every resource of a SCIM list, fetched in index pages of 1000."""
    out: list[dict] = []
    start = 1
    while True:
        response = http.get(path, params={**params, "startIndex": start, "count": 1000})
        assert response.status_code == 200, response.text
        body = response.json()
        out += body.get("Resources", [])
        if not body.get("Resources") or len(out) >= body["totalResults"]:
            assert len(out) == body["totalResults"]
            return out
        start += len(body["Resources"])


def _ldap_paged(conn, base: str, flt: str, attrs: list[str]) -> list[tuple[str, dict]]:
    """One paged one-level search (RFC 2696 loop), every entry."""
    page = SimplePagedResultsControl(True, size=500, cookie="")
    out = []
    while True:
        msgid = conn.search_ext(base, ldap.SCOPE_ONELEVEL, flt, attrs, serverctrls=[page])
        _, data, _, ctrls = conn.result3(msgid)
        out += [(dn, entry) for dn, entry in data if dn]
        cookie = next(c.cookie for c in ctrls if c.controlType == page.controlType)
        if not cookie:
            return out
        page.cookie = cookie


def _grants(items: Iterable[tuple]) -> list[tuple]:
    """(role, via, unit, role group) of each grant, in one order (values may be None)."""
    return sorted(items, key=str)


def _norm(dn: str) -> tuple:
    return parse_dn(dn)


def test_json_scim_and_ldap_agree_for_every_account(views):
    scim_token = views.creds["demo-scim"]["token"]
    headers = {"Authorization": f"Bearer {scim_token}"}
    base = views.serving.scim_base

    # SCIM: every User, only userName, roles and (asked for) role provenance.
    with httpx.Client(base_url=f"{base}/scim/v2", headers=headers, timeout=30) as http:
        users = _scim_get(http, "/Users", attributes=f"userName,roles,{MUNI_USER}:roles")
        role_groups = _scim_get(http, "/Groups", filter=f'{MUNI_GROUP}:kind eq "role"',
                                attributes="members")
    scim_roles = {u["userName"].casefold(): {r["value"] for r in u.get("roles", [])}
                  for u in users}
    scim_ids = {u["id"]: u["userName"].casefold() for u in users}
    scim_grants = {u["userName"].casefold(): _grants(
        (g["value"], g["via"], g.get("viaUnit"), g.get("viaRoleGroup"))
        for g in u.get(MUNI_USER, {}).get("roles", [])) for u in users}
    scim_members = {g["id"]: {m["value"] for m in g.get("members", [])} for g in role_groups}

    # LDAP: every person and every role group, one paged search each.
    conn = ldap.initialize(views.serving.ldap_url)
    conn.protocol_version = 3
    conn.set_option(ldap.OPT_REFERRALS, 0)
    ldap_creds = views.creds["demo-ldap"]
    conn.simple_bind_s(ldap_creds["bind_dn"], ldap_creds["password"])
    people = _ldap_paged(conn, f"ou=people,{views.base_dn}", "(objectClass=inetOrgPerson)",
                         ["uid", "entryUUID", "memberOf", "idmRole"])
    groups = _ldap_paged(conn, f"ou=groups,{views.base_dn}", "(idmKind=role)",
                         ["entryUUID", "member"])
    conn.unbind_s()
    role_of_dn = {_norm(dn): e["entryUUID"][0].decode() for dn, e in groups}
    uid_of_dn = {_norm(dn): e["uid"][0].decode().casefold() for dn, e in people}
    ldap_idm_role = {e["uid"][0].decode().casefold(): {v.decode() for v in e.get("idmRole", [])}
                     for _, e in people}
    ldap_member_of = {
        e["uid"][0].decode().casefold(): {role_of_dn[_norm(v.decode())]
                                          for v in e.get("memberOf", [])
                                          if _norm(v.decode()) in role_of_dn}
        for _, e in people}
    ldap_members = {e["entryUUID"][0].decode(): {uid_of_dn[_norm(v.decode())]
                                                 for v in e.get("member", [])}
                    for _, e in groups}

    # The same accounts everywhere, and the whole demo.
    assert len(views.accounts) > 100
    assert set(scim_roles) == set(ldap_idm_role) == {
        e.first("userName").casefold() for e in views.accounts}

    # The role API, per account: /roles (ours), and OS2rollekatalog's rolesAsList and the
    # OIOBPP roleMap. SCIM and LDAP show every role held; role lookups leave out the roles of
    # access-blocked systems (UserApi.java, UserService.generateOIOBPPPrivileges), and the
    # OIOBPP of a request over every system (so expanded to system roles) also leaves out
    # delegated roles ("nor can it be expanded to BSRs", UserService.java).
    data = views.data
    blocked = {r.id for r in data.job_roles.values()
               if data.it_systems[r.it_system_id].access_blocked}
    delegated = {r.id for r in data.job_roles.values() if r.delegated_from_cvr}
    identifier = {r.id: r.identifier for r in data.job_roles.values()}
    assert any(roles & blocked for roles in scim_roles.values()), "no blocked role held"
    assert any(roles & delegated for roles in scim_roles.values()), "no delegated role held"
    mismatches = []
    with httpx.Client(base_url=f"{base}/api", headers=headers, timeout=30) as http:
        for name in sorted(scim_roles):
            response = http.get(f"/roles/{name}")
            assert response.status_code == 200, (name, response.text)
            body = response.json()
            json_roles = {r["id"] for s in body["itSystems"] for r in s["jobRoles"]}
            views_of_name = (scim_roles[name], ldap_idm_role[name], ldap_member_of[name])
            if any(v != scim_roles[name] for v in views_of_name) \
                    or json_roles != scim_roles[name] - blocked:
                mismatches.append((name, json_roles, *views_of_name))
            json_grants = _grants(
                (r["id"], p["via"], (p["unit"] or {}).get("id"), (p["roleGroup"] or {}).get("id"))
                for s in body["itSystems"] for r in s["jobRoles"] for p in r["provenance"])
            if json_grants != _grants(g for g in scim_grants[name] if g[0] not in blocked):
                mismatches.append((name, json_grants, scim_grants[name]))
            open_roles = {identifier[r] for r in scim_roles[name] - blocked}
            as_list = http.get(f"/user/{name}/rolesAsList", params={"system": ""}).json()
            if set(as_list["userRoles"]) != open_roles:
                mismatches.append((name, "rolesAsList", as_list["userRoles"], open_roles))
            role_map = http.get(f"/user/{name}/roles").json()["roleMap"]
            expanded = {identifier[r] for r in scim_roles[name] - blocked - delegated}
            if set(role_map) != expanded:
                mismatches.append((name, "oiobpp", sorted(role_map), expanded))
    assert not mismatches, mismatches[:5]
    holders = sum(1 for roles in scim_roles.values() if roles)
    assert holders > len(scim_roles) // 4, "too few accounts hold roles to prove anything"
    assert any(via == "unit" and unit for grants in scim_grants.values()
               for _, via, unit, _ in grants)

    # Role groups: SCIM members == LDAP member == holders of the role, for every role.
    assert set(scim_members) == set(ldap_members) == {r.id for r in views.roles}
    for role_id, members in scim_members.items():
        scim_names = {scim_ids[m] for m in members}
        held_by = {name for name, roles in scim_roles.items() if role_id in roles}
        assert scim_names == ldap_members[role_id] == held_by, role_id
    assert any(scim_members.values())
