"""The attribute map is the one place, and a municipality extends it by configuration.

- ``userType`` (SCIM core) / ``employeeType`` (LDAP, RFC 2798) was added to SCIM and LDAP
  as one entry in ``schemas/attributes.py``: its source (the primary engagement's type),
  names and OID; rendering, filters, ``/Schemas`` and the subschema follow from it.
- ``[attributes.<name>]`` in the configuration declares more: here a job code (a field of
  the primary engagement's job-function class) for people, and the EAN number (an address
  type) for units, each with a local term as its description.

Served by ``idm-facade serve``, read with httpx and python-ldap.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import ldap
import pytest

from tests.serving import Serving, ldap_bind, served_copy

pytestmark = pytest.mark.skipif(shutil.which("ldapsearch") is None,
                                reason="ldap-utils (ldapsearch) is not installed")

MUNICIPAL_USER = "urn:idm-facade:params:scim:schemas:extension:municipal:1.0:User"
MUNICIPAL_GROUP = "urn:idm-facade:params:scim:schemas:extension:municipal:1.0:Group"
CONFIG = """
[attributes.jobCode]
source = "engagement.job_function_id.user_key"
ldap = "idmJobCode"
description = "Stillingskode"

[attributes.ean]
kind = "unit"
source = "address.EAN"
description = "EAN-nummer til elektronisk fakturering"
"""


@dataclass
class Ctx:
    serving: Serving
    token: str
    bind_dn: str
    secret: str
    base: str

    def scim(self, path: str, **params) -> httpx.Response:
        return httpx.get(f"{self.serving.scim_base}/scim/v2{path}", params=params, timeout=30,
                         headers={"Authorization": f"Bearer {self.token}"})

    def ldap(self):
        return ldap_bind(self.serving.ldap_url, self.bind_dn, self.secret)


@pytest.fixture(scope="module")
def ctx(demo_db, tmp_path_factory) -> Iterator[Ctx]:
    clients = (("attrs-scim", "scim", "default"), ("attrs-ldap", "ldap", "default"))
    with served_copy(demo_db, tmp_path_factory.mktemp("attributes"), CONFIG, clients) as copy:
        assert copy.serving is not None
        yield Ctx(copy.serving, copy.secrets["attrs-scim"], copy.bind_dn("attrs-ldap"),
                  copy.secrets["attrs-ldap"], copy.base)


def _schema(ctx: Ctx, urn: str) -> dict:
    response = ctx.scim(f"/Schemas/{urn}")
    assert response.status_code == 200, response.text
    return {a["name"]: a for a in response.json()["attributes"]}


def test_user_type_is_one_entry_in_the_map(ctx: Ctx) -> None:
    core = _schema(ctx, "urn:ietf:params:scim:schemas:core:2.0:User")
    assert "userType" in core
    users = ctx.scim("/Users", filter='userType eq "Timelønnet"', count=5).json()
    assert users["totalResults"] > 0
    assert all(u["userType"] == "Timelønnet" for u in users["Resources"])
    conn = ctx.ldap()
    found = conn.search_s(f"ou=people,{ctx.base}", ldap.SCOPE_ONELEVEL,
                          "(employeeType=Timelønnet)", ["employeeType"])
    assert len(found) == users["totalResults"]
    assert all(attrs["employeeType"] == ["Timelønnet".encode()] for _, attrs in found)
    (_, schema), = conn.search_s("cn=Subschema", ldap.SCOPE_BASE, "(objectClass=*)",
                                 ["attributeTypes"])
    types = [t.decode() for t in schema["attributeTypes"]]
    assert any(t.startswith("( 2.16.840.1.113730.3.1.4 NAME 'employeeType'") for t in types)
    conn.unbind_s()


def test_configured_attributes_are_served_and_filterable(ctx: Ctx) -> None:
    municipal = _schema(ctx, MUNICIPAL_USER)
    assert municipal["jobCode"]["description"] == "Stillingskode"
    assert _schema(ctx, MUNICIPAL_GROUP)["ean"]["multiValued"] is True
    users = ctx.scim("/Users", filter=f'{MUNICIPAL_USER}:jobCode eq "oekonom"', count=50)
    body = users.json()
    assert body["totalResults"] > 0
    assert all(u[MUNICIPAL_USER]["jobCode"] == "oekonom" for u in body["Resources"])
    groups = ctx.scim("/Groups", filter=f"{MUNICIPAL_GROUP}:ean pr", count=50).json()
    assert groups["totalResults"] > 0
    assert all(g[MUNICIPAL_GROUP]["ean"] for g in groups["Resources"])
    conn = ctx.ldap()
    found = conn.search_s(f"ou=people,{ctx.base}", ldap.SCOPE_ONELEVEL,
                          "(idmJobCode=oekonom)", ["idmJobCode"])
    assert len(found) == body["totalResults"]
    (_, schema), = conn.search_s("cn=Subschema", ldap.SCOPE_BASE, "(objectClass=*)",
                                 ["attributeTypes", "objectClasses"])
    types = [t.decode() for t in schema["attributeTypes"]]
    assert any("NAME 'idmJobCode' DESC 'Stillingskode'" in t and t.startswith("( 2.25.")
               for t in types)
    person = next(c.decode() for c in schema["objectClasses"] if "NAME 'idmPerson'" in c.decode())
    assert "idmJobCode" in person and "employeeType" in person
    conn.unbind_s()


def test_a_wrong_declaration_stops_the_server_with_its_reason(tmp_path: Path, demo_db) -> None:
    config = tmp_path / "idm.toml"
    config.write_text('[attributes.x]\nsource = "engagement.job_function_id"\nldpa = "x"\n')
    exe = str(Path(sys.executable).with_name("idm-facade"))
    done = subprocess.run([exe, "serve", "--db", demo_db, "--config", str(config),
                           "--scim-port", "0", "--ldap-port", "0"], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode != 0
    assert "[attributes.x]: unknown key(s) ldpa" in done.stderr
    assert "Traceback" not in done.stderr
