"""Constraint values (org unit INHERITED / EXTENDED_INHERITED / LEVEL_N, KLE incl. 99.99.99,
VALUE) on a hand-built organisation, and the OIOBPP privilege list's structure."""

from __future__ import annotations

import base64

import pytest
from sqlalchemy import Engine

from idm_facade.directory import constraints as cons
from idm_facade.directory.load import load
from idm_facade.roleapi import oiobpp
from store import models as m
from store.engine import make_engine, write_session
from store.validity import utcnow
from tests.orgbuilder import OrgBuilder

try:  # a hardened parser when available; the structure checks are the same
    from defusedxml import ElementTree as ET  # type: ignore[import-not-found]
except ImportError:  # pragma: no cover - depends on the environment
    import xml.etree.ElementTree as ET

ORG = "http://sts.kombit.dk/constraints/orgenhed/1"
KLE = "http://sts.kombit.dk/constraints/KLE/1"
NS = "{http://itst.dk/oiosaml/basic_privilege_profile}"


def add_kle(org: OrgBuilder, unit: str, number: str, *aspects: str) -> None:
    number_id = org.klass("kle_number", number, f"{number} (syntetisk)")
    aspect_ids = [org.klass("kle_aspect", a, a) for a in aspects]
    with write_session(org.engine, actor="test") as session:
        row = m.Kle(org_unit_id=unit, kle_number_id=number_id)
        row.aspects = [session.get(m.Klasse, a) for a in aspect_ids]
        session.add(row)


class Org:
    """Root(level 1) > A(level 2, inherit_kle) > A1 > A1x ; Root > B ; Z > Z1 (no levels)."""

    def __init__(self, engine: Engine) -> None:
        org = self.b = OrgBuilder(engine)
        self.root = org.unit("Root", role_level=1)
        self.a = org.unit("A", self.root, role_level=2, inherit_kle=True)
        self.a1 = org.unit("A1", self.a)
        self.a1x = org.unit("A1x", self.a1)
        self.b_ = org.unit("B", self.root)
        self.z = org.unit("Z")
        self.z1 = org.unit("Z1", self.z)
        add_kle(org, self.a1, "01.02.03", "UDFOERENDE")
        add_kle(org, self.a1, "04.05.06", "INDSIGT")
        add_kle(org, self.a1, "04.05", "UDFOERENDE", "INDSIGT")
        add_kle(org, self.a, "07.08.09", "UDFOERENDE")
        add_kle(org, self.root, "10.11.12", "UDFOERENDE")  # root does not pass KLE down
        self.anna = self.member("Anna", self.a1)
        self.zack = self.member("Zack", self.z1)
        self.dina = self.member("Dina", self.a1, do_not_inherit=True)

    def member(self, name: str, unit: str, **kw) -> str:
        person = self.b.person(name, "Testsen")
        engagement = self.b.engagement(person, unit, **kw)
        return self.b.account(person, name.lower(), engagements=(engagement,))


@pytest.fixture
def built(sqlite_url: str) -> Org:
    return Org(make_engine(sqlite_url))


def value(built: Org, account: str, ctype: str, vtype: str, literal: str | None = None) -> str:
    data = load(built.b.engine, utcnow())
    return cons.constraint_value(data, account, ctype, vtype, literal)


def test_org_unit_constraint_values(built):
    o = built
    assert value(o, o.anna, ORG, "INHERITED") == o.a1
    assert value(o, o.anna, ORG, "EXTENDED_INHERITED").split(",") == [o.a1, o.a1x]
    assert set(value(o, o.anna, ORG, "LEVEL_2").split(",")) == {o.a, o.a1, o.a1x}
    assert set(value(o, o.anna, ORG, "LEVEL_1").split(",")) == {o.root, o.a, o.a1, o.a1x, o.b_}
    assert set(value(o, o.anna, ORG, "LEVEL_6").split(",")) == {o.a, o.a1, o.a1x}
    # No unit on Z1's path has a level: the position unit alone.
    assert value(o, o.zack, ORG, "LEVEL_3") == o.z1
    assert value(o, o.zack, ORG, "VALUE", "literal-1") == "literal-1"


def test_kle_constraint_values(built):
    o = built
    # Performing: A1's own plus A's (inherit_kle), not Root's.
    # KLE codes shorter than a full code end in .* for every value type, as OS2rollekatalog's
    # ui/src/main/java/dk/digitalidentity/rc/service/KleService.java does
    assert value(o, o.anna, KLE, "INHERITED") == "01.02.03,04.05.*,07.08.09"
    assert value(o, o.anna, KLE, "EXTENDED_INHERITED") == "04.05.*,04.05.06"
    assert value(o, o.anna, KLE, "READ_AND_WRITE") == "01.02.03,04.05.*,07.08.09"
    # Nothing on Z1 and above: the placeholder, so login still works without data.
    assert value(o, o.zack, KLE, "INHERITED") == cons.EMPTY_KLE == "99.99.99"
    assert value(o, o.zack, KLE, "EXTENDED_INHERITED") == "99.99.99"
    # A do-not-inherit position blocks unit KLE entirely.
    assert value(o, o.dina, KLE, "INHERITED") == "99.99.99"
    assert value(o, o.zack, KLE, "VALUE", "01.01.01") == "01.01.01"
    assert cons.constraint_value(load(o.b.engine, utcnow()), o.anna, None, None, None) is None


def parse(document: bytes):
    root = ET.fromstring(document)
    assert root.tag == f"{NS}PrivilegeList"
    return root


def test_privilege_list_structure_and_values(built):
    o = built
    b = o.b
    sr_org = b._add(m.SystemRole(it_system_id=b.kombit, name="Læs",
                                 identifier="http://testby.dk/roles/usersystemrole/laes/1"))
    sr_kle = b._add(m.SystemRole(it_system_id=b.kombit, name="Skriv",
                                 identifier="http://testby.dk/roles/usersystemrole/skriv/1"))
    sagsbeh = b.job_role("Sagsbehandler", identifier="sag-sagsbehandler")
    plain = b.job_role("Opslag", identifier="sag-opslag")
    b._add(m.JobRoleSystemRole(job_role_id=sagsbeh, system_role_id=sr_org,
                               constraint_type=ORG, constraint_value_type="EXTENDED_INHERITED"))
    b._add(m.JobRoleSystemRole(job_role_id=sagsbeh, system_role_id=sr_kle,
                               constraint_type=KLE, constraint_value_type="INHERITED"))
    b._add(m.JobRoleSystemRole(job_role_id=plain, system_role_id=sr_org))
    saml = b._add(m.ItSystem(user_key="ESDH", name="ESDH", system_type="SAML"))
    sr_saml = b._add(m.SystemRole(it_system_id=saml, name="Admin", identifier="esdh-admin"))
    saml_role = b.job_role("ESDH admin", system=saml, identifier="esdh-admin-job")
    b._add(m.JobRoleSystemRole(job_role_id=saml_role, system_role_id=sr_saml,
                               constraint_type="http://digital-identity.dk/constraints/orgunit/1",
                               constraint_value_type="INHERITED"))
    data = load(b.engine, utcnow())
    groups = oiobpp.privilege_groups(data, o.zack, [sagsbeh, plain, saml_role])
    document = oiobpp.to_xml(groups)
    # As OS2rollekatalog's UserService.generateOIOBPP (ui/src/main/java/dk/digitalidentity/rc/
    # service/UserService.java): double-quoted declaration, xmlns:xsi on the root, one
    # Privilege per PrivilegeGroup, constraints with an empty value left out.
    assert document.startswith(b'<?xml version="1.0" encoding="UTF-8"?><bpp:PrivilegeList')
    assert b'xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"' in document
    encoded = oiobpp.encode(document)
    assert base64.b64decode(encoded) == document
    root = parse(base64.b64decode(encoded))
    assert root.attrib == {}
    found = root.findall("PrivilegeGroup")
    assert len(found) == 3  # constrained KOMBIT role, unconstrained one, SAML system role
    assert not root.findall(f"{NS}PrivilegeGroup")  # children are unqualified
    by_privilege = {}
    for group in found:
        assert group.get("Scope") == "urn:dk:gov:saml:cvrNumberIdentifier:99999999"
        privileges = [p.text for p in group.findall("Privilege")]
        assert len(privileges) == 1 and set(group.attrib) == {"Scope"}
        assert all(c.text for c in group.findall("Constraint"))
        for child in group:
            assert child.tag in ("Privilege", "Constraint")
        for p in privileges:
            by_privilege[p] = {c.get("Name"): c.text for c in group.findall("Constraint")}
    kombit = by_privilege["http://testby.dk/roles/jobrole/sag-sagsbehandler/1"]
    assert sorted(kombit.values()) == sorted([o.z1, "99.99.99"])
    assert all(n.startswith("http://testby.dk/id-") and n.endswith("/1/parametric")
               for n in kombit)
    assert by_privilege["http://testby.dk/roles/jobrole/sag-opslag/1"] == {}
    assert by_privilege["esdh-admin"] == {
        "http://digital-identity.dk/constraints/orgunit/1": o.z1}
    # Round trip: serialise the parsed tree and parse it again, same content.
    again = parse(ET.tostring(root) if hasattr(ET, "tostring") else document)
    assert len(again.findall("PrivilegeGroup")) == 3
    assert oiobpp.to_xml([]).endswith(b"/>") and not parse(oiobpp.to_xml([])).findall("*")


def test_kombit_base_normalises_domain():
    class Plain:
        kombit_domain, user_key = "testby.dk", "t"

    class Url:
        kombit_domain, user_key = "https://kommune.example/", "p"

    assert oiobpp.kombit_base(Plain()) == "http://testby.dk/"
    assert oiobpp.kombit_base(Url()) == "https://kommune.example/"
    assert oiobpp.job_role_entity_id("http://x.dk/", "r1") == "http://x.dk/roles/jobrole/r1/1"


def test_a_constraint_with_an_empty_value_is_left_out(built) -> None:
    """UserService.generateOIOBPP skips an empty constraint value (with a warning) rather than
    sending ``<Constraint Name="...">`` with nothing in it: here an org-unit constraint of an
    account without engagements, so no unit to inherit."""
    b = built.b
    saml = b._add(m.ItSystem(user_key="ESDH", name="ESDH", system_type="SAML"))
    sr_saml = b._add(m.SystemRole(it_system_id=saml, name="Admin", identifier="esdh-admin"))
    role = b.job_role("ESDH admin", system=saml, identifier="esdh-admin-job")
    b._add(m.JobRoleSystemRole(job_role_id=role, system_role_id=sr_saml,
                               constraint_type="http://digital-identity.dk/constraints/orgunit/1",
                               constraint_value_type="INHERITED"))
    loner = b.account(b.person("Ida", "Uden"), "ida")
    data = load(b.engine, utcnow())
    (group,) = oiobpp.privilege_groups(data, loner, [role])
    assert group.privileges == ["esdh-admin"] and group.constraints == ()
    assert not parse(oiobpp.to_xml([group])).findall(".//Constraint")
