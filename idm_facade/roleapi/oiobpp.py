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

Whether roles are sent as KOMBIT job roles or expanded to their system roles is decided once
per request from the IT systems asked about (:func:`expands_to_system_roles`). As in
OS2rollekatalog's ``UserService.generateOIOBPPPrivileges`` and ``generateOIOBPP``: one
privilege per group, a constraint with an empty value is left out, KLE codes shorter than a
full code end in ``.*``, the root declares ``xmlns:xsi`` and the XML declaration is
double-quoted. Child elements are unqualified, as in the OIOBPP schema.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from xml.sax.saxutils import escape, quoteattr

from idm_facade.directory import constraints as cons

NAMESPACE = "http://itst.dk/oiosaml/basic_privilege_profile"
SCOPE_PREFIX = "urn:dk:gov:saml:cvrNumberIdentifier:"
KOMBIT = "KOMBIT"



@dataclass
class PrivilegeGroup:
    """One privilege (a list, for the schema's sake) with its scope and constraints."""

    scope: str
    privileges: list[str] = field(default_factory=list)
    constraints: tuple[tuple[str, str], ...] = ()  # (Name, value)
    #: The privilege's display name and each constraint's type entity id: not in the XML,
    #: but in OS2rollekatalog's ``roleAssignmentsWithContraints`` read of the same groups.
    name: str = ""
    constraint_types: tuple[str, ...] = ()


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
    """A made-up name for a parametric data constraint that has no ``constraint_identifier``.

    OS2rollekatalog builds its names once from its internal database ids
    (``IdentifierGenerator.buildKombitConstraintIdentifier``) and registers them with KOMBIT,
    so a made-up name has the same shape but is not one KOMBIT knows: import the registered
    identifiers for a KOMBIT login to see the constraint."""
    return f"{base}id-{system_role_id}-{link_id}-{_type_key(constraint_type)}/1/parametric"


def scope(cvr: str | None) -> str:
    """The PrivilegeGroup scope of the municipality."""
    return SCOPE_PREFIX + (cvr or "")


def expands_to_system_roles(systems: list[Any]) -> bool:
    """OS2rollekatalog's ``shouldExpandToBsr``, decided once per request: when any selected
    IT system (every system, when none is selected) is not a KOMBIT system, every role (the
    KOMBIT ones too) is sent as one privilege per system role."""
    return any((s.system_type or "").upper() != KOMBIT for s in systems)


@dataclass
class Privileges:
    """What one request's OIOBPP generation gives: the groups and the ``roleMap`` filled on
    the way (its keys depend on the expansion, as in OS2rollekatalog)."""

    groups: list[PrivilegeGroup]
    role_map: dict[str, str]


def _held(grant: str | Mapping[str, Any]) -> tuple[str, str | None, str | None]:
    """(role id, assignment key, the direct assignment's id) of a grant element of the
    account's ``roles`` (``value``, ``assignment``, ``via``, ``viaRoleGroup``); a bare role
    id is a grant of its own with no assignment. Only a direct assignment of the role itself
    (not through a role group) carries postponed constraint values, as in OS2rollekatalog's
    ``CurrentAssignmentMapper``."""
    if isinstance(grant, str):
        return grant, None, None
    assignment = grant.get("assignment")
    group = grant.get("viaRoleGroup")
    direct = grant.get("via") == "direct" and not group
    return (str(grant.get("value")), f"{assignment}/{group or ''}",
            str(assignment) if direct and assignment else None)


def privilege_groups(data: Any, account_id: str, grants: Sequence[str | Mapping[str, Any]],
                     visible_units: frozenset[str] | None = None,
                     systems: list[Any] | None = None) -> Privileges:
    """The account's privilege groups for these grants of job roles (elements of the
    account's ``roles``, or bare role ids; already narrowed to the selected, not
    access-blocked ``systems``; None: every system not blocked), following
    ``UserService.generateOIOBPPPrivileges``:

    - one pass over the grants (OS2rollekatalog's current assignments): a role is emitted
      once, at its first grant, unless it allows postponing (``allow_postponing``), whose
      groups may differ per assignment: then once per assignment (a role-group assignment
      counts once per role);
    - expanded (:func:`expands_to_system_roles`): one group per system role of each role,
      privilege = the system role's identifier, constraint names = the constraint types'
      entity ids; delegated roles are left out;
    - not expanded: one group per role, privilege = the job role's KOMBIT entity id,
      constraint names = the identifiers registered with KOMBIT (``constraint_identifier``;
      the facade makes one up for a link without one); a delegated role is its plain
      identifier, scoped to the delegating CVR, with no constraints.

    A POSTPONED constraint takes the value the direct assignment behind the grant gives it
    (``data.postponed_constraints``); through a unit or role group it has none. A constraint
    whose value comes out empty is left out. Constraint values are computed as if only
    ``visible_units`` existed (None: every unit).
    """
    organisation = data.organisation
    base = kombit_base(organisation)
    own_scope = scope(getattr(organisation, "cvr", None))
    if systems is None:
        systems = [s for s in data.it_systems.values() if not s.access_blocked]
    expand = expands_to_system_roles(systems)
    groups: list[PrivilegeGroup] = []
    role_map: dict[str, str] = {}
    added: set[str] = set()
    for grant in grants:
        role_id, assignment, direct_assignment = _held(grant)
        role = data.job_roles.get(role_id)
        if role is None:
            continue
        # "if the userRole allows postponing, then the constraints might (likely) differ on
        # each assignment ... for those direct/inherited ... we can skip duplicates"
        seen = f"{role.identifier}@{assignment}" if role.allow_postponing else role.identifier
        if seen in added:
            continue
        added.add(seen)
        system = data.it_systems.get(role.it_system_id)
        shown = f"{role.name} ({system.name if system else ''})"
        if role.delegated_from_cvr:
            # "delegated roles cannot be constrained dynamically, nor can it be expanded"
            if not expand:
                role_map[role.identifier] = shown
                groups.append(PrivilegeGroup(scope(role.delegated_from_cvr), [role.identifier],
                                             name=role.name))
            continue
        postponed = data.postponed_constraints.get(direct_assignment, ()) \
            if direct_assignment else ()
        links = cons.system_role_constraints(data, account_id, role_id, visible_units,
                                             postponed)
        if expand:
            role_map[role.identifier] = shown
            # One group per system role of the role (OS2rollekatalog's SystemRoleAssignment,
            # whose constraint values are the links naming that system role here).
            per_system_role: dict[str, list[tuple[str, str]]] = {}
            for link, pairs in links:
                per_system_role.setdefault(link.system_role_id, []).extend(
                    (ctype, value) for ctype, value in pairs if value)
            for system_role_id, constraints in per_system_role.items():
                system_role = data.system_roles[system_role_id]
                groups.append(PrivilegeGroup(
                    own_scope, [system_role.identifier], tuple(constraints),
                    system_role.name, tuple(ctype for ctype, _ in constraints)))
            continue
        entity_id = job_role_entity_id(base, role.identifier)
        role_map[entity_id] = shown
        kept = [(link, ctype, value) for link, pairs in links for ctype, value in pairs
                if value]
        named = tuple((link.constraint_identifier
                       or parametric_name(base, link.system_role_id, link.id, ctype), value)
                      for link, ctype, value in kept)
        groups.append(PrivilegeGroup(own_scope, [entity_id], named, role.name,
                                     tuple(ctype for _, ctype, _ in kept)))
    return Privileges(groups, role_map)


XSI = "http://www.w3.org/2001/XMLSchema-instance"


def to_xml(groups: list[PrivilegeGroup]) -> bytes:
    """The PrivilegeList document, UTF-8 with a double-quoted XML declaration, written out
    directly (as OS2rollekatalog does) rather than through a tree: it is on the login path.
    Text and attribute values are escaped."""
    parts = ['<?xml version="1.0" encoding="UTF-8"?><bpp:PrivilegeList xmlns:bpp="',
             NAMESPACE, '" xmlns:xsi="', XSI, '"']
    if not groups:
        parts.append(" />")
        return "".join(parts).encode("utf-8")
    parts.append(">")
    for group in groups:
        parts += ["<PrivilegeGroup Scope=", quoteattr(group.scope), ">"]
        for privilege in group.privileges:
            parts += ["<Privilege>", escape(privilege), "</Privilege>"]
        for name, value in group.constraints:
            parts += ["<Constraint Name=", quoteattr(name), ">", escape(value), "</Constraint>"]
        parts.append("</PrivilegeGroup>")
    parts.append("</bpp:PrivilegeList>")
    return "".join(parts).encode("utf-8")


def encode(document: bytes) -> str:
    """Base64 of the document, as the SAML claim carries it."""
    return base64.b64encode(document).decode("ascii")


def name_id(cvr: str | None, name: str, serial: str) -> str:
    """The X509SubjectName NameID OS2rollekatalog sends alongside the privileges."""
    return f"C=DK,O={cvr or ''},CN={name},Serial={serial}"
