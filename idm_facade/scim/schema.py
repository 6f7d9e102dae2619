"""The SCIM view of the attribute map: which attribute lives in which schema of which resource.

Built once at import from ``schemas.attributes``: every directory attribute with a SCIM path
becomes a top-level attribute (``userName``) or a sub-attribute of a complex one
(``name.givenName``, ``emails.value``) of the resource types whose entry kinds carry it.
Complex attributes whose elements the directory keeps whole (``emails``, ``engagements``,
``roles`` ...) take their sub-attributes from ``COMPLEX``. Filter translation, rendering,
projection and ``/Schemas`` all read these tables, so a SCIM name is resolved in one place.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from schemas.attributes import (
    ACCOUNT,
    ATTRIBUTES,
    BOOLEAN,
    COMPLEX,
    COMPLEX_RETURNED,
    CORE_GROUP,
    CORE_USER,
    DATETIME,
    ENTERPRISE_USER,
    GROUP_KINDS,
    MUNICIPAL_GROUP,
    MUNICIPAL_USER,
    REFERENCE,
    STRING,
    on_declare,
)

USER, GROUP = "User", "Group"
KINDS = {USER: frozenset({ACCOUNT}), GROUP: GROUP_KINDS}
ENDPOINTS = {USER: "Users", GROUP: "Groups"}
CORE = {USER: CORE_USER, GROUP: CORE_GROUP}
EXTENSIONS = {USER: (ENTERPRISE_USER, MUNICIPAL_USER), GROUP: (MUNICIPAL_GROUP,)}
COMPLEX_TYPE = "complex"

#: Attributes of the core Group schema (RFC 7643 §4.2); the rest of a group's attributes go
#: to the municipal Group extension.
_CORE_GROUP_NAMES = {"id", "externalId", "displayName", "members"}
#: Attributes that are common to every resource (RFC 7643 §3.1), not part of a schema.
COMMON = {"id", "externalId", "meta", "schemas"}


@dataclass
class Sub:
    """A sub-attribute of a complex SCIM attribute."""

    name: str
    type: str = STRING
    case_exact: bool = False
    #: Flattened directory attribute holding this sub-attribute's values (for filters).
    directory: str | None = None
    description: str = ""


@dataclass
class ScimAttr:
    """A top-level SCIM attribute of one resource type."""

    urn: str
    name: str
    type: str = STRING
    multi: bool = False
    case_exact: bool = False
    returned: str = "default"
    #: Directory attribute of a simple attribute.
    directory: str | None = None
    #: Entry.complex key holding whole elements (value paths are matched on these).
    complex: str | None = None
    subs: dict[str, Sub] = field(default_factory=dict)
    description: str = ""

    @property
    def key(self) -> str:
        """Lower-case name used for case-insensitive look-ups."""
        return self.name.lower()


def _sub_type(name: str) -> str:
    if name == "primary" or name == "titleSensitive":
        return BOOLEAN
    if name in ("validFrom", "validTo"):
        return DATETIME
    if name in ("unit", "viaUnit", "viaRoleGroup", "$ref"):
        return REFERENCE
    return STRING


#: Complex attributes not spelled by a flattened directory attribute, per resource.
_EXTRA_COMPLEX: dict[str, list[tuple[str, str, str, tuple[str, ...], str]]] = {
    # (urn, scim name, Entry.complex key or "", sub-attributes, description)
    USER: [
        (CORE_USER, "emails", "emails", COMPLEX["emails"], "E-mail addresses."),
        (CORE_USER, "phoneNumbers", "phoneNumbers", COMPLEX["phoneNumbers"], "Phone numbers."),
        (CORE_USER, "addresses", "addresses", COMPLEX["addresses"], "Postal addresses."),
        (CORE_USER, "roles", "roles", ("value", "display", "type", "primary"),
         "Effective job-function roles."),
        (CORE_USER, "groups", "", ("value", "$ref", "display", "type"),
         "Units, roles and role groups the user is a member of."),
        (ENTERPRISE_USER, "manager", "", ("value", "$ref", "displayName"),
         "The manager of the user's primary unit."),
        (CORE_USER, "name", "", ("formatted", "familyName", "givenName"), "The user's name."),
        (MUNICIPAL_USER, "engagements", "engagements", COMPLEX["engagements"],
         "Engagements (positions) in effect: job function, unit and validity."),
        (MUNICIPAL_USER, "roles", "roles",
         ("value", "display", "identifier", "itSystem", "via", "viaUnit", "viaRoleGroup",
          "validFrom", "validTo"),
         "Effective roles with provenance: direct, via a unit (viaUnit) or as a manager, "
         "possibly through a role group (viaRoleGroup). Returned only when requested."),
    ],
    GROUP: [
        (CORE_GROUP, "members", "", ("value", "$ref", "display", "type"),
         "Member accounts."),
        (MUNICIPAL_GROUP, "emails", "emails", COMPLEX["emails"], "Unit e-mail addresses."),
        (MUNICIPAL_GROUP, "phoneNumbers", "phoneNumbers", COMPLEX["phoneNumbers"],
         "Unit phone numbers."),
        (MUNICIPAL_GROUP, "addresses", "addresses", COMPLEX["addresses"], "Unit addresses."),
    ],
}

_MULTI_COMPLEX = {"emails", "phoneNumbers", "addresses", "roles", "groups", "engagements",
                  "members"}


def _urn_for(resource: str, spec_schema: str | None, top: str) -> str | None:
    if resource == USER:
        if spec_schema == MUNICIPAL_GROUP:
            return None if top == "kind" else MUNICIPAL_USER
        return spec_schema or CORE_USER
    if spec_schema == ENTERPRISE_USER:
        return None
    if top in _CORE_GROUP_NAMES:
        return CORE_GROUP
    return MUNICIPAL_GROUP


def _build(resource: str) -> dict[str, dict[str, ScimAttr]]:
    """{urn: {lower name: ScimAttr}} for one resource type."""
    table: dict[str, dict[str, ScimAttr]] = {u: {} for u in (CORE[resource],
                                                             *EXTENSIONS[resource])}
    for urn, name, complex_key, subs, description in _EXTRA_COMPLEX[resource]:
        attr = ScimAttr(urn, name, COMPLEX_TYPE, multi=name in _MULTI_COMPLEX,
                        returned=COMPLEX_RETURNED.get((urn, name), "default"),
                        complex=complex_key or None, description=description,
                        subs={s.lower(): Sub(s, _sub_type(s)) for s in subs})
        table[urn][attr.key] = attr
    kinds = KINDS[resource]
    for spec in ATTRIBUTES.values():
        if not spec.scim or spec.scim.startswith("meta.") or not (spec.kinds & kinds):
            continue
        top, _, sub = spec.scim.partition(".")
        found_urn = _urn_for(resource, spec.scim_schema, top)
        if found_urn is None:
            continue
        urn = found_urn
        if sub:
            known = table[urn].get(top.lower())
            if known is None:  # a complex attribute only the map spells (members of groups)
                known = ScimAttr(urn, top, COMPLEX_TYPE, multi=top in _MULTI_COMPLEX)
                table[urn][known.key] = known
            attr = known
            found = attr.subs.get(sub.lower())
            if found is None:
                found = attr.subs[sub.lower()] = Sub(sub, _sub_type(sub))
            found.directory = spec.name
            found.type = spec.type if spec.type != REFERENCE or sub != "value" else STRING
            found.case_exact = spec.case_exact
            found.description = spec.description
            if spec.returned != "default":
                attr.returned = spec.returned
            continue
        table[urn][top.lower()] = ScimAttr(
            urn, top, spec.type if spec.type != REFERENCE else STRING, multi=spec.multi,
            case_exact=spec.case_exact, returned=spec.returned, directory=spec.name,
            description=spec.description)
    # "groups" on users and the municipal roles never carry flattened filters of their own
    # beyond what the map declares; drop extensions' empty tables for resources without any.
    return table


SCHEMAS: dict[str, dict[str, dict[str, ScimAttr]]] = {r: _build(r) for r in (USER, GROUP)}


def _rebuild() -> None:
    """Attributes were declared (``[attributes]``): build the tables again, in place."""
    SCHEMAS.update({r: _build(r) for r in (USER, GROUP)})


on_declare(_rebuild)

#: Meta sub-attributes that can be filtered and sorted on.
META = {"created": "created", "lastmodified": "modified"}


def lookup(resource: str, name: str, urn: str | None = None) -> ScimAttr | None:
    """A top-level attribute by (case-insensitive) name, in ``urn`` or else core first."""
    tables = SCHEMAS[resource]
    key = name.lower()
    if urn is not None:
        for schema_urn, table in tables.items():
            if schema_urn.lower() == urn.lower():
                return table.get(key)
        return None
    core = tables[CORE[resource]].get(key)
    if core is not None or key == "id":
        return core
    for ext in EXTENSIONS[resource]:
        found = tables[ext].get(key)
        if found is not None:
            return found
    return None


def all_urns() -> set[str]:
    """Every schema URN served (lower case)."""
    return {u.lower() for r in SCHEMAS.values() for u in r}
