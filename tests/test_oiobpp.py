"""Constraint values (org unit INHERITED / EXTENDED_INHERITED / LEVEL_N, KLE incl. 99.99.99,
VALUE) on a hand-built organisation, and the OIOBPP privilege list's structure."""

from __future__ import annotations

import base64

import pytest
from sqlalchemy import Engine

from idm_facade.directory import constraints as cons
from idm_facade.directory.directory import build_snapshot
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
        self.persons: dict[str, str] = {}
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
        person = self.persons[name] = self.b.person(name, "Testsen")
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


def test_manager_function_and_selected_values(built):
    """The value types OS2rollekatalog computes from other relations (ui/src/main/java/dk/
    digitalidentity/rc/service/UserService.java: getOrganisationConstraintFromManagerRole
    counts managed units and ``getSubstituteFor()``; getOrganisationConstraintFromFunctions;
    SELECTED_INHERITED through util/OrganisationConstraintUtil.java's ``+parent,-excluded``
    form), for both org-unit types; INHERITED/EXTENDED_INHERITED/LEVEL_N only for KOMBIT's."""
    o = built
    b = o.b
    b.manager(o.a, o.persons["Anna"])
    with write_session(b.engine, actor="test") as session:
        session.add(m.ManagerSubstitute(person_id=o.persons["Zack"], org_unit_id=o.a1))
        session.add(m.Association(person_id=o.persons["Zack"], org_unit_id=o.b_,
                                  association_type_id=b.klass("association_type", "tr", "TR")))
    for ctype in (ORG, INTERNAL_ORG):
        assert value(o, o.anna, ctype, "INHERITED_FROM_MANAGER_ROLE") == o.a
        assert value(o, o.anna, ctype, "EXTENDED_INHERITED_FROM_MANAGER_ROLE").split(",") == [
            o.a, o.a1, o.a1x]
        assert value(o, o.zack, ctype, "EXTENDED_INHERITED_FROM_MANAGER_ROLE").split(",") == [
            o.a1, o.a1x]  # the substitute
        assert value(o, o.zack, ctype, "INHERITED_FROM_FUNCTIONS") == o.b_
        assert value(o, o.dina, ctype, "INHERITED_FROM_MANAGER_ROLE") == ""
        assert value(o, o.anna, ctype, "SELECTED_INHERITED", f"{o.z1},{o.b_}") == \
            f"{o.z1},{o.b_}"
        assert set(value(o, o.anna, ctype, "SELECTED_INHERITED",
                         f"+{o.a},-{o.a1x},+{o.z}").split(",")) == {o.a, o.a1, o.z, o.z1}
    assert value(o, o.anna, INTERNAL_ORG, "INHERITED") == ""
    assert value(o, o.anna, INTERNAL_ORG, "LEVEL_2") == ""


def test_person_kle_counts_even_without_inheritance(built):
    """A person's own KLE numbers join the units' (KleService.getKleAssignments(User, ...):
    ``user.getKles()`` first, units only when no position is do-not-inherit)."""
    o = built
    b = o.b
    number = b.klass("kle_number", "20.21.22", "20.21.22 (syntetisk)")
    group = b.klass("kle_number", "30.31", "30.31 (syntetisk)")
    performing = b.klass("kle_aspect", "UDFOERENDE", "UDFOERENDE")
    insight = b.klass("kle_aspect", "INDSIGT", "INDSIGT")
    with write_session(b.engine, actor="test") as session:
        for person in ("Anna", "Dina"):
            session.add(m.PersonKle(person_id=o.persons[person], kle_number_id=number,
                                    aspect_id=performing))
        session.add(m.PersonKle(person_id=o.persons["Dina"], kle_number_id=group,
                                aspect_id=insight))
    assert value(o, o.anna, KLE, "INHERITED") == "01.02.03,04.05.*,07.08.09,20.21.22"
    assert value(o, o.dina, KLE, "INHERITED") == "20.21.22"  # do-not-inherit: own only
    assert value(o, o.dina, KLE, "EXTENDED_INHERITED") == "30.31.*"
    assert value(o, o.dina, KLE, "READ_AND_WRITE") == "20.21.22,30.31.*"


def parse(document: bytes):
    root = ET.fromstring(document)
    assert root.tag == f"{NS}PrivilegeList"
    return root


def _catalogue(o: Org) -> dict[str, str]:
    """A KOMBIT role with an org-unit and a KLE constraint (one with a registered constraint
    identifier), an unconstrained KOMBIT role, a SAML role whose internal org-unit constraint
    is INHERITED, a delegated KOMBIT role, and a role in an access-blocked SAML system."""
    b = o.b
    sr_org = b._add(m.SystemRole(it_system_id=b.kombit, name="Læs",
                                 identifier="http://testby.dk/roles/usersystemrole/laes/1"))
    sr_kle = b._add(m.SystemRole(it_system_id=b.kombit, name="Skriv",
                                 identifier="http://testby.dk/roles/usersystemrole/skriv/1"))
    ids = {"sagsbeh": b.job_role("Sagsbehandler", identifier="sag-sagsbehandler"),
           "plain": b.job_role("Opslag", identifier="sag-opslag"),
           "delegated": b.job_role("Delegeret", identifier="deleg-1",
                                   delegated_from_cvr="11223344")}
    b._add(m.JobRoleSystemRole(job_role_id=ids["sagsbeh"], system_role_id=sr_org,
                               constraint_type=ORG, constraint_value_type="EXTENDED_INHERITED",
                               constraint_identifier=REGISTERED))
    b._add(m.JobRoleSystemRole(job_role_id=ids["sagsbeh"], system_role_id=sr_kle,
                               constraint_type=KLE, constraint_value_type="INHERITED"))
    b._add(m.JobRoleSystemRole(job_role_id=ids["plain"], system_role_id=sr_org))
    saml = b._add(m.ItSystem(user_key="ESDH", name="ESDH", system_type="SAML"))
    sr_saml = b._add(m.SystemRole(it_system_id=saml, name="Admin", identifier="esdh-admin"))
    ids["saml"] = b.job_role("ESDH admin", system=saml, identifier="esdh-admin-job")
    b._add(m.JobRoleSystemRole(job_role_id=ids["saml"], system_role_id=sr_saml,
                               constraint_type=INTERNAL_ORG, constraint_value_type="INHERITED"))
    b._add(m.JobRoleSystemRole(job_role_id=ids["saml"], system_role_id=sr_saml,
                               constraint_type=INTERNAL_ORG,
                               constraint_value_type="INHERITED_FROM_FUNCTIONS"))
    blocked = b._add(m.ItSystem(user_key="Blocked", name="Blocked", system_type="SAML",
                                access_blocked=True))
    sr_blocked = b._add(m.SystemRole(it_system_id=blocked, name="X", identifier="blocked-x"))
    ids["blocked"] = b.job_role("Blocked role", system=blocked, identifier="blocked-job")
    b._add(m.JobRoleSystemRole(job_role_id=ids["blocked"], system_role_id=sr_blocked))
    return ids


REGISTERED = "http://testby.dk/id-17-4711-3/1/parametric"
INTERNAL_ORG = "http://digital-identity.dk/constraints/orgunit/1"


def _groups(root) -> dict[str, dict]:
    found = {}
    for group in root.findall("PrivilegeGroup"):
        privileges = [p.text for p in group.findall("Privilege")]
        assert len(privileges) == 1 and set(group.attrib) == {"Scope"}
        assert all(c.text for c in group.findall("Constraint"))
        # The schema's structure (digst/OIOSAML.Net src/dk.nita.saml20/dk.nita.saml20/Schema/
        # BasicPrivilegeProfile/PrivilegeListType.cs and PrivilegeGroupType.cs: unqualified
        # PrivilegeGroup children, Privilege elements before Constraint elements).
        tags = [child.tag for child in group]
        assert tags == sorted(tags, key=("Privilege", "Constraint").index)
        found[privileges[0]] = {"scope": group.get("Scope"), "constraints": {
            c.get("Name"): c.text for c in group.findall("Constraint")}}
    return found


def test_privilege_list_kombit_only_request(built):
    """A request naming only KOMBIT systems is not expanded: one group per job role with its
    KOMBIT entity id, constraints named by the identifiers registered with KOMBIT
    (``constraint.getConstraintIdentifier()``), a delegated role as its plain identifier
    scoped to the delegating CVR (OS2rollekatalog ui/src/main/java/dk/digitalidentity/rc/
    service/UserService.java, generateOIOBPPPrivileges and generateOIOBPP)."""
    o = built
    ids = _catalogue(o)
    data = load(o.b.engine, utcnow())
    kombit = [data.it_systems[o.b.kombit]]
    result = oiobpp.privilege_groups(data, o.zack, [ids["sagsbeh"], ids["plain"],
                                                    ids["delegated"]], systems=kombit)
    document = oiobpp.to_xml(result.groups)
    assert document.startswith(b'<?xml version="1.0" encoding="UTF-8"?><bpp:PrivilegeList')
    assert b'xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"' in document
    encoded = oiobpp.encode(document)
    assert base64.b64decode(encoded) == document
    root = parse(base64.b64decode(encoded))
    assert root.attrib == {} and not root.findall(f"{NS}PrivilegeGroup")  # unqualified
    found = _groups(root)
    own = "urn:dk:gov:saml:cvrNumberIdentifier:99999999"
    sagsbeh = found["http://testby.dk/roles/jobrole/sag-sagsbehandler/1"]
    assert sagsbeh["scope"] == own
    assert sagsbeh["constraints"][REGISTERED] == o.z1
    (made_up,) = [n for n in sagsbeh["constraints"] if n != REGISTERED]
    assert made_up.startswith("http://testby.dk/id-") and made_up.endswith("/1/parametric")
    assert sagsbeh["constraints"][made_up] == "99.99.99"
    assert found["http://testby.dk/roles/jobrole/sag-opslag/1"]["constraints"] == {}
    assert found["deleg-1"] == {"scope": "urn:dk:gov:saml:cvrNumberIdentifier:11223344",
                                "constraints": {}}
    assert len(found) == 3
    # roleMap: KOMBIT entity ids, and the delegated role's plain identifier
    assert result.role_map == {
        "http://testby.dk/roles/jobrole/sag-sagsbehandler/1": "Sagsbehandler (Sagssystem)",
        "http://testby.dk/roles/jobrole/sag-opslag/1": "Opslag (Sagssystem)",
        "deleg-1": "Delegeret (Sagssystem)"}
    again = parse(ET.tostring(root) if hasattr(ET, "tostring") else document)
    assert len(again.findall("PrivilegeGroup")) == 3
    assert oiobpp.to_xml([]).endswith(b"/>") and not parse(oiobpp.to_xml([])).findall("*")


def test_privilege_list_mixed_request_expands_every_role(built):
    """Any selected system that is not KOMBIT (no selection: every system) expands every
    role, the KOMBIT ones too, to one group per system role, constraints named by their
    type's entity id; delegated roles are left out; the access-blocked system is not among
    the systems (``shouldExpandToBsr``, UserService.java). INHERITED on the internal
    org-unit type is computed only for KOMBIT's type, so it is empty and left out."""
    o = built
    ids = _catalogue(o)
    member = o.b.person("Fie", "Funktion")
    engagement = o.b.engagement(member, o.z1)
    fie = o.b.account(member, "fie", engagements=(engagement,))
    with write_session(o.b.engine, actor="test") as session:
        session.add(m.Association(person_id=member, org_unit_id=o.a1, association_type_id=
                                  o.b.klass("association_type", "tr", "TR")))
    data = load(o.b.engine, utcnow())
    assert oiobpp.expands_to_system_roles(
        [s for s in data.it_systems.values() if not s.access_blocked])
    result = oiobpp.privilege_groups(data, fie, [ids["sagsbeh"], ids["plain"], ids["saml"],
                                                 ids["delegated"]])
    found = _groups(parse(oiobpp.to_xml(result.groups)))
    assert set(found) == {"http://testby.dk/roles/usersystemrole/laes/1",
                          "http://testby.dk/roles/usersystemrole/skriv/1", "esdh-admin"}
    assert len(result.groups) == 4  # laes twice: once per role, as OS2rollekatalog sends it
    laes = [g for g in result.groups
            if g.privileges == ["http://testby.dk/roles/usersystemrole/laes/1"]]
    assert sorted(g.constraints for g in laes) == [(), ((ORG, o.z1),)]
    assert found["esdh-admin"]["constraints"] == {INTERNAL_ORG: o.a1}
    assert result.role_map == {"sag-sagsbehandler": "Sagsbehandler (Sagssystem)",
                               "sag-opslag": "Opslag (Sagssystem)",
                               "esdh-admin-job": "ESDH admin (ESDH)"}


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
    (group,) = oiobpp.privilege_groups(data, loner, [role]).groups
    assert group.privileges == ["esdh-admin"] and group.constraints == ()
    assert not parse(oiobpp.to_xml([group])).findall(".//Constraint")


def test_values_are_escaped() -> None:
    """A VALUE constraint is free text: ``&``, ``<``, quotes in names and values survive a
    parse (OS2rollekatalog's generateOIOBPP escapes constraint values the same way)."""
    group = oiobpp.PrivilegeGroup("urn:x", ['p&"1'], (('n"<&', 'a&b<c"d\'e'),))
    root = parse(oiobpp.to_xml([group]))
    (element,) = root.findall("PrivilegeGroup")
    assert element.findtext("Privilege") == 'p&"1'
    constraint = element.find("Constraint")
    assert constraint is not None
    assert (constraint.get("Name"), constraint.text) == ('n"<&', 'a&b<c"d\'e')


# --------------------------------------------------------------------------- POSTPONED


def _postponing_catalogue(o: Org) -> dict[str, str]:
    """A KOMBIT role that allows postponing (OS2rollekatalog's ``UserRole.allowPostponing``)
    with three system roles, each with a POSTPONED org-unit constraint of the same type and
    its own registered identifier (as OS2rollekatalog's UserServicePostponedBppTest builds
    it), the third also with a computed EXTENDED_INHERITED one; and a role that does not
    allow postponing, with one POSTPONED constraint. Zack (in Z1) holds the first role
    through two direct assignments with different values, through a unit assignment on Z1
    and through a role group; the second role through two direct assignments."""
    b = o.b
    ids: dict[str, str] = {}
    ids["postponing"] = b.job_role("Udskudt", identifier="sag-udskudt", allow_postponing=True)
    ids["fixed"] = b.job_role("Fast", identifier="sag-fast")
    for n in (1, 2, 3):
        ids[f"sr{n}"] = b._add(m.SystemRole(
            it_system_id=b.kombit, name=f"SR {n}",
            identifier=f"http://testby.dk/roles/usersystemrole/sr-{n}/1"))
        b._add(m.JobRoleSystemRole(job_role_id=ids["postponing"], system_role_id=ids[f"sr{n}"],
                                   constraint_type=ORG, constraint_value_type="POSTPONED",
                                   constraint_identifier=f"http://testby.dk/id-{n}-x-7/1/"
                                                         "parametric"))
    b._add(m.JobRoleSystemRole(job_role_id=ids["postponing"], system_role_id=ids["sr3"],
                               constraint_type=ORG, constraint_value_type="EXTENDED_INHERITED",
                               constraint_identifier=REGISTERED))
    b._add(m.JobRoleSystemRole(job_role_id=ids["fixed"], system_role_id=ids["sr1"],
                               constraint_type=ORG, constraint_value_type="POSTPONED",
                               constraint_identifier="http://testby.dk/id-9-x-7/1/parametric"))

    def assign(role: str, values: dict[str, str]) -> str:
        assignment = b.assign_account(o.zack, ids[role])
        for system_role, value in values.items():
            b._add(m.PostponedConstraint(assignment_id=assignment, system_role_id=ids[system_role],
                                         constraint_type=ORG, value=value))
        return assignment

    ids["first"] = assign("postponing", {"sr1": "v-1", "sr2": "v-2", "sr3": "v-3,w-3,"})
    ids["second"] = assign("postponing", {"sr1": "other-1"})
    b.assign_unit(o.z1, ids["postponing"])
    group = b.role_group("Buket", (ids["postponing"],))
    b.assign_account(o.zack, group=group)
    ids["fixed-p"] = assign("fixed", {"sr1": "p"})
    ids["fixed-q"] = assign("fixed", {"sr1": "q"})
    return ids


def _zack_grants(o: Org) -> tuple[object, list[dict]]:
    snapshot = build_snapshot(o.b.engine, utcnow())
    entry = snapshot.get(o.zack)
    assert entry is not None
    return snapshot.data, list(entry.complex["roles"])


def test_postponed_values_come_from_each_direct_assignment(built) -> None:
    """service/UserService.java generateOIOBPPPrivileges, ``case POSTPONED``: the value is the
    assignment's postponed constraint of that constraint type and system role (every system
    role its own value, not its sister roles'; UserServicePostponedBppTest), joined with
    commas after splitting (service/assignment/mapper/CurrentAssignmentMapper.java: Java's
    ``split(",")`` drops the trailing empty part). A role that allows postponing is one
    group per current assignment (``if (!userRole.isAllowPostponing())`` guards the
    duplicate check); a grant through a unit or role group has no postponed values
    (``setPostponedConstraints(Set.of())``), so its POSTPONED constraints are empty and left
    out. A role that does not allow postponing is sent once, whatever its assignments."""
    o = built
    ids = _postponing_catalogue(o)
    data, grants = _zack_grants(o)
    kombit = [data.it_systems[o.b.kombit]]
    result = oiobpp.privilege_groups(data, o.zack, grants, systems=kombit)
    found = [(g.privileges[0], dict(g.constraints)) for g in result.groups]
    postponing = "http://testby.dk/roles/jobrole/sag-udskudt/1"
    name = "http://testby.dk/id-{}-x-7/1/parametric".format
    assert sorted((c for p, c in found if p == postponing), key=len) == [
        {REGISTERED: o.z1},  # through the unit
        {REGISTERED: o.z1},  # through the role group
        {name(1): "other-1", REGISTERED: o.z1},
        {name(1): "v-1", name(2): "v-2", name(3): "v-3,w-3", REGISTERED: o.z1}]
    (fixed,) = [c for p, c in found if p == "http://testby.dk/roles/jobrole/sag-fast/1"]
    assert fixed in ({name(9): "p"}, {name(9): "q"})
    # the same grants read as bare role ids (no assignment): no postponed values, one group
    bare = oiobpp.privilege_groups(data, o.zack, [ids["postponing"]], systems=kombit)
    assert [dict(g.constraints) for g in bare.groups] == [{REGISTERED: o.z1}]


def test_postponed_values_expanded_per_system_role(built) -> None:
    """Expanded to system roles (a request covering a non-KOMBIT system, UserService.java
    ``shouldExpandToBsr``): each system role's group carries its own postponed value, named
    by the constraint type's entity id, once per assignment of the postponing role."""
    o = built
    _postponing_catalogue(o)
    data, grants = _zack_grants(o)
    result = oiobpp.privilege_groups(data, o.zack, grants)
    by_privilege: dict[str, list[tuple]] = {}
    for group in result.groups:
        # constraints in link order (link ids are random here): compare them as sets
        by_privilege.setdefault(group.privileges[0], []).append(tuple(sorted(group.constraints)))
    sr = "http://testby.dk/roles/usersystemrole/sr-{}/1".format
    assert sorted(by_privilege[sr(2)]) == [(), (), (), ((ORG, "v-2"),)]
    assert sorted(by_privilege[sr(3)]) == sorted([((ORG, o.z1),)] * 3 + [
        tuple(sorted([(ORG, "v-3,w-3"), (ORG, o.z1)]))])
    # sr-1 in the postponing role (four current assignments) and in the fixed role (once)
    fixed = [c for c in by_privilege[sr(1)] if c in (((ORG, "p"),), ((ORG, "q"),))]
    assert len(fixed) == 1
    assert sorted(c for c in by_privilege[sr(1)] if c not in fixed) == sorted(
        [(), (), ((ORG, "other-1"),), ((ORG, "v-1"),)])


def test_postponed_unit_values_name_only_visible_units(built) -> None:
    """A postponed org-unit value is unit ids (OS2rollekatalog's UI stores the chosen units'
    UUIDs); a client limited to part of the organisation is told only the units it may see,
    as with every computed org-unit value (#19). KLE values are not units: kept whole."""
    o = built
    b = o.b
    role = b.job_role("Udskudt enhed", identifier="sag-udskudt-enhed", allow_postponing=True)
    sr_org = b._add(m.SystemRole(it_system_id=b.kombit, name="Org", identifier="sr-org"))
    sr_kle = b._add(m.SystemRole(it_system_id=b.kombit, name="Kle", identifier="sr-kle"))
    for system_role, ctype in ((sr_org, ORG), (sr_kle, KLE)):
        b._add(m.JobRoleSystemRole(job_role_id=role, system_role_id=system_role,
                                   constraint_type=ctype, constraint_value_type="POSTPONED"))
    assignment = b.assign_account(o.zack, role)
    b._add(m.PostponedConstraint(assignment_id=assignment, system_role_id=sr_org,
                                 constraint_type=ORG, value=f"{o.a1},{o.z1}"))
    b._add(m.PostponedConstraint(assignment_id=assignment, system_role_id=sr_kle,
                                 constraint_type=KLE, value="01.02.03,04.05"))
    data, grants = _zack_grants(o)
    kombit = [data.it_systems[b.kombit]]
    every = oiobpp.privilege_groups(data, o.zack, grants, systems=kombit).groups
    part = oiobpp.privilege_groups(data, o.zack, grants, frozenset({o.z, o.z1}),
                                   systems=kombit).groups
    assert sorted(v for _, v in every[0].constraints) == ["01.02.03,04.05", f"{o.a1},{o.z1}"]
    assert sorted(v for _, v in part[0].constraints) == ["01.02.03,04.05", o.z1]
