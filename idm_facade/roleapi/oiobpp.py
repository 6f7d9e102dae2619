"""OIOBPP (OIO Basic Privilege Profile) privilege lists, as OS2rollekatalog emits them.

Identity providers (ADFS with the OS2rollekatalog attribute store, KOMBIT's context handler)
put the base64 of this XML in the ``dk:gov:saml:attribute:Privileges_intermediate`` claim::

    <?xml version="1.0" encoding="UTF-8"?>
    <bpp:PrivilegeList xmlns:bpp="http://itst.dk/oiosaml/basic_privilege_profile"
                       xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">
      <PrivilegeGroup Scope="urn:dk:gov:saml:cvrNumberIdentifier:12345678">
        <Privilege>http://kommune.dk/roles/jobrole/sag-sagsbehandler/1</Privilege>
        <Constraint Name="...">value,value</Constraint>
      </PrivilegeGroup>
    </bpp:PrivilegeList>

For KOMBIT systems the privilege is the job role's entity id
(``<kombit domain>roles/jobrole/<identifier>/1``) and constraint names are the parametric ids
the job role was registered with; for other systems there is one privilege per system role
(its identifier) and constraint names are the constraint-type entity ids. As in
OS2rollekatalog's ``UserService.generateOIOBPP``: one privilege per group, a constraint with
an empty value is left out, KLE codes shorter than a full code end in ``.*``, the root
declares ``xmlns:xsi`` and the XML declaration is double-quoted. Child elements are
unqualified, as in the OIOBPP schema.
"""

from __future__ import annotations

import base64
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from typing import Any

from idm_facade.directory import constraints as cons

NAMESPACE = "http://itst.dk/oiosaml/basic_privilege_profile"
SCOPE_PREFIX = "urn:dk:gov:saml:cvrNumberIdentifier:"
KOMBIT = "KOMBIT"

ET.register_namespace("bpp", NAMESPACE)


@dataclass
class PrivilegeGroup:
    """One privilege (a list, for the schema's sake) with its scope and constraints."""

    scope: str
    privileges: list[str] = field(default_factory=list)
    constraints: tuple[tuple[str, str], ...] = ()


def kombit_base(organisation: Any) -> str:
    """The municipality's KOMBIT domain as a URL prefix ending in ``/``."""
    domain = (getattr(organisation, "kombit_domain", None) or "").strip()
    if not domain:
        domain = f"{getattr(organisation, 'user_key', None) or 'kommune'}.dk"
    if "://" not in domain:
        domain = "http://" + domain
    return domain if domain.endswith("/") else domain + "/"


def job_role_entity_id(base: str, identifier: str) -> str:
    """KOMBIT entity id of a job role; identifiers that already are URLs pass through."""
    if "://" in identifier:
        return identifier
    return f"{base}roles/jobrole/{identifier}/1"


def _type_key(constraint_type: str) -> str:
    """A short key for a constraint type entity id (``.../constraints/orgenhed/1`` ->
    ``orgenhed``)."""
    parts = [p for p in constraint_type.rstrip("/").split("/") if p]
    if len(parts) >= 2 and parts[-1].isdigit():
        return parts[-2]
    return parts[-1] if parts else "constraint"


def parametric_name(base: str, system_role_id: str, link_id: str, constraint_type: str) -> str:
    """Name of a KOMBIT job role's parametric data constraint."""
    return f"{base}id-{system_role_id}-{link_id}-{_type_key(constraint_type)}/1/parametric"


def scope(cvr: str | None) -> str:
    """The PrivilegeGroup scope of the municipality."""
    return SCOPE_PREFIX + (cvr or "")


def privilege_groups(data: Any, account_id: str, job_role_ids: list[str],
                     visible_units: frozenset[str] | None = None) -> list[PrivilegeGroup]:
    """The privilege groups of the account for these job roles (already filtered by
    system), with constraint values computed from ``data`` as if only ``visible_units``
    existed (None: every unit)."""
    organisation = data.organisation
    base = kombit_base(organisation)
    the_scope = scope(getattr(organisation, "cvr", None))
    groups: dict[tuple, PrivilegeGroup] = {}

    def add(privilege: str, constraints: list[tuple[str, str]]) -> None:
        kept = tuple(sorted((name, value) for name, value in constraints if value))
        key = (privilege, kept)
        if key not in groups:
            groups[key] = PrivilegeGroup(the_scope, [privilege], kept)

    for role_id in dict.fromkeys(job_role_ids):
        role = data.job_roles.get(role_id)
        if role is None:
            continue
        system = data.it_systems.get(role.it_system_id)
        kombit = system is not None and (system.system_type or "").upper() == KOMBIT
        links = cons.system_role_constraints(data, account_id, role_id, visible_units)
        if kombit:
            named = [(parametric_name(base, link.system_role_id, link.id, ctype), value)
                     for link, pairs in links for ctype, value in pairs]
            add(job_role_entity_id(base, role.identifier), named)
        else:
            for link, pairs in links:
                add(data.system_roles[link.system_role_id].identifier, pairs)
    return list(groups.values())


XSI = "http://www.w3.org/2001/XMLSchema-instance"


def to_xml(groups: list[PrivilegeGroup]) -> bytes:
    """The PrivilegeList document, UTF-8 with a double-quoted XML declaration."""
    root = ET.Element(f"{{{NAMESPACE}}}PrivilegeList", {"xmlns:xsi": XSI})
    for group in groups:
        element = ET.SubElement(root, "PrivilegeGroup", {"Scope": group.scope})
        for privilege in group.privileges:
            ET.SubElement(element, "Privilege").text = privilege
        for name, value in group.constraints:
            ET.SubElement(element, "Constraint", {"Name": name}).text = value
    body = ET.tostring(root, encoding="unicode")
    return ('<?xml version="1.0" encoding="UTF-8"?>' + body).encode("utf-8")


def encode(document: bytes) -> str:
    """Base64 of the document, as the SAML claim carries it."""
    return base64.b64encode(document).decode("ascii")


def name_id(cvr: str | None, name: str, serial: str) -> str:
    """The X509SubjectName NameID OS2rollekatalog sends alongside the privileges."""
    return f"C=DK,O={cvr or ''},CN={name},Serial={serial}"
