"""The one attribute map: every directory attribute, declared once.

Each :class:`Attribute` says what the directory holds (type, multi-valued, case rules, whether
it is indexed, how sensitive it is) and how it appears in SCIM (path, schema URN, ``returned``)
and in LDAP (attribute type). Filter translation, rendering, ``/Schemas``, ``/ResourceTypes``
and the LDAP subschema entry are all generated from this table, so a name is spelled in one
place only.

Entry kinds: ``account`` (SCIM User / LDAP person), ``unit``, ``role`` (job-function role),
``rolegroup``. Complex multi-valued SCIM attributes (emails, phoneNumbers, engagements, roles)
are held as element dicts in ``Entry.complex`` and also flattened into simple attributes named
``<complex>.<sub>`` so that filters on them can use the indexes.

Sensitivity:
- ``cpr``: only for clients with the CPR grant; invisible (also to filters) otherwise.
- ``visibility``: address values split by visibility class; the flattened attribute is stored
  once per visibility bucket (``emails.value@PUBLIC``, ``emails.value@INTERNAL``) and a policy
  reads the buckets it may see. SECRET addresses never enter the directory.
- ``title``: job titles; sensitive titles are masked for clients without the grant.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

ACCOUNT, UNIT, ROLE, ROLEGROUP = "account", "unit", "role", "rolegroup"
GROUP_KINDS = frozenset({UNIT, ROLE, ROLEGROUP})
ALL_KINDS = frozenset({ACCOUNT, UNIT, ROLE, ROLEGROUP})

#: Address visibility buckets a policy may be granted, lowest first. SECRET is never served.
VISIBILITIES = ("PUBLIC", "INTERNAL")

CORE_USER = "urn:ietf:params:scim:schemas:core:2.0:User"
CORE_GROUP = "urn:ietf:params:scim:schemas:core:2.0:Group"
ENTERPRISE_USER = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User"
MUNICIPAL_USER = "urn:idm-facade:params:scim:schemas:extension:municipal:1.0:User"
MUNICIPAL_GROUP = "urn:idm-facade:params:scim:schemas:extension:municipal:1.0:Group"

STRING, INTEGER, BOOLEAN = "string", "integer", "boolean"
DATETIME, REFERENCE = "dateTime", "reference"


@dataclass(frozen=True)
class Attribute:
    """One directory attribute and how each front end names it."""

    name: str
    kinds: frozenset[str]
    type: str = STRING
    multi: bool = False
    case_exact: bool = False
    #: Equality hash index.
    indexed: bool = False
    #: Ordered index: prefix substrings and ranges use bisection instead of a scan.
    ordered: bool = False
    sensitivity: str | None = None
    description: str = ""
    #: SCIM attribute path (``name.givenName``, ``emails.value``) and its schema URN.
    scim: str | None = None
    scim_schema: str | None = None
    #: SCIM ``returned``: always / default / request / never.
    returned: str = "default"
    #: LDAP attribute type name(s); the first is canonical.
    ldap: tuple[str, ...] = ()
    #: Part of a complex SCIM attribute (``emails``): the element key this attribute flattens.
    complex_of: str | None = None
    #: OID of a standard LDAP type the first ``ldap`` name is (else it is in schemas.ldap's
    #: table, or an own idm* type with a private OID).
    ldap_oid: str | None = None
    #: Where the directory takes the values from, for attributes without code of their own
    #: (see :func:`idm_facade.directory.sources.values_of`): ``engagement.<column>`` of the
    #: primary engagement, ``person.<column>``, ``account.<column>``, ``unit.<column>``
    #: (a ``*_id`` column naming a class gives the class's name, or with ``.<field>`` that
    #: field of it), or ``address.<address type user_key>``.
    source: str | None = None

    def physical_names(self, visibilities: tuple[str, ...] = VISIBILITIES) -> tuple[str, ...]:
        """Names under which the directory stores the values: one per visibility bucket."""
        if self.sensitivity == "visibility":
            return tuple(f"{self.name}@{v}" for v in visibilities)
        return (self.name,)

    def normalise(self, value: Any) -> Any:
        """The comparison key of a value under this attribute's matching rules."""
        return normalise(self.type, self.case_exact, value)


def normalise(type_: str, case_exact: bool, value: Any) -> Any:
    """Comparison key: integers and timestamps compare as such, strings fold case unless exact."""
    if value is None:
        return None
    if type_ == INTEGER:
        return int(value)
    if type_ == BOOLEAN:
        if isinstance(value, str):
            return value.strip().lower() in ("true", "1", "yes")
        return bool(value)
    if type_ == DATETIME:
        if isinstance(value, datetime):
            return value
        from store.validity import to_datetime

        return to_datetime(str(value))
    if type_ == REFERENCE:
        return str(value).lower()
    text = str(value)
    return text if case_exact else text.casefold()


A, U, R, G = frozenset({ACCOUNT}), frozenset({UNIT}), frozenset({ROLE}), frozenset({ROLEGROUP})
GROUPS = GROUP_KINDS


def _attrs(*items: Attribute) -> dict[str, Attribute]:
    return {a.name: a for a in items}


#: The directory's attributes, by name.
ATTRIBUTES: dict[str, Attribute] = _attrs(
    # --- every entry
    Attribute("id", ALL_KINDS, REFERENCE, case_exact=True, indexed=True, ordered=True,
              scim="id", returned="always", ldap=("entryUUID",),
              description="Stable identifier (UUID) of the entry."),
    Attribute("kind", ALL_KINDS, indexed=True,
              scim="kind", scim_schema=MUNICIPAL_GROUP, ldap=("idmKind",),
              description="account, unit, role or rolegroup."),
    Attribute("created", ALL_KINDS, DATETIME, ordered=True, scim="meta.created",
              ldap=("createTimestamp",), description="When the entry came into effect."),
    Attribute("modified", ALL_KINDS, DATETIME, ordered=True, scim="meta.lastModified",
              ldap=("modifyTimestamp",), description="Last change of the entry's source data."),
    Attribute("externalId", ALL_KINDS, case_exact=True, indexed=True, scim="externalId",
              ldap=("idmExternalId",), description="Id in the source IT system (objectGUID, ...)."),
    # --- accounts (SCIM User, LDAP inetOrgPerson)
    Attribute("userName", A, indexed=True, ordered=True, scim="userName", returned="always",
              ldap=("uid",), description="Account username, unique case-insensitively."),
    Attribute("displayName", ALL_KINDS, indexed=True, ordered=True, scim="displayName",
              ldap=("displayName", "cn"), description="Full name (or unit / role name)."),
    Attribute("givenName", A, indexed=True, ordered=True, scim="name.givenName",
              ldap=("givenName",), description="Given name of the account's person."),
    Attribute("familyName", A, indexed=True, ordered=True, scim="name.familyName",
              ldap=("sn",), description="Surname of the account's person."),
    Attribute("formattedName", A, scim="name.formatted", description="Given name and surname."),
    Attribute("nickName", A, indexed=True, scim="nickName", ldap=("idmNickName",),
              description="Preferred name (kaldenavn), when registered."),
    Attribute("title", A, indexed=True, sensitivity="title", scim="title", ldap=("title",),
              description="Job function of the primary engagement."),
    Attribute("userType", A, indexed=True, scim="userType", ldap=("employeeType",),
              ldap_oid="2.16.840.1.113730.3.1.4", source="engagement.engagement_type_id",
              description="Kind of employment of the primary engagement (its engagement "
                          "type: monthly salaried, hourly, external consultant)."),
    Attribute("active", A, BOOLEAN, indexed=True, scim="active", ldap=("idmActive",),
              description="True while the account has an engagement in effect."),
    Attribute("cpr", A, case_exact=True, indexed=True, sensitivity="cpr",
              scim="cprNumber", scim_schema=MUNICIPAL_USER, returned="request",
              ldap=("idmCprNumber",), description="CPR number: only with an explicit grant."),
    Attribute("personId", A, REFERENCE, case_exact=True, indexed=True,
              scim="personId", scim_schema=MUNICIPAL_USER, ldap=("idmPersonId",),
              description="UUID of the person holding the account."),
    Attribute("employeeNumber", A, indexed=True, scim="employeeNumber",
              scim_schema=ENTERPRISE_USER, ldap=("employeeNumber",),
              description="Payroll employment number of the primary engagement."),
    Attribute("organization", A, scim="organization", scim_schema=ENTERPRISE_USER,
              ldap=("o",), description="Name of the municipality."),
    Attribute("division", A, indexed=True, scim="division", scim_schema=ENTERPRISE_USER,
              ldap=("idmDivision",), description="Top unit (directorate) of the primary unit."),
    Attribute("department", A, indexed=True, scim="department", scim_schema=ENTERPRISE_USER,
              ldap=("departmentNumber", "ou"), description="Name of the primary unit."),
    Attribute("costCenter", A, indexed=True, scim="costCenter", scim_schema=ENTERPRISE_USER,
              ldap=("idmCostCenter",), description="user_key of the primary unit."),
    Attribute("manager", A, REFERENCE, indexed=True, scim="manager.value",
              scim_schema=ENTERPRISE_USER, ldap=("manager",),
              description="Account id of the primary unit's (inherited) manager."),
    Attribute("unit", A, REFERENCE, multi=True, indexed=True, scim="units",
              scim_schema=MUNICIPAL_USER, ldap=("idmUnit",),
              description="Units of the account's engagements in effect."),
    Attribute("ancestor", A | U, REFERENCE, multi=True, indexed=True,
              description="The units and all their ancestors: subtree queries and policies."),
    Attribute("orgUnitPath", A | U, multi=True, scim="orgUnitPath",
              scim_schema=MUNICIPAL_USER, ldap=("idmOrgUnitPath",),
              description="Path of unit names from the root, joined with a backslash."),
    Attribute("kle", A | U, multi=True, indexed=True, case_exact=True, scim="kle",
              scim_schema=MUNICIPAL_USER, ldap=("idmKle",),
              description="KLE numbers of the account's units (or of the unit)."),
    Attribute("itSystem", ALL_KINDS, indexed=True, scim="itSystem",
              scim_schema=MUNICIPAL_GROUP, ldap=("idmItSystem",),
              description="IT system user_key of the account or role."),
    Attribute("memberOf", A, REFERENCE, multi=True, indexed=True, scim="groups.value",
              ldap=("memberOf",), description="Groups (units, roles, role groups) of the account."),
    Attribute("role", A, REFERENCE, multi=True, indexed=True, scim="roles.value",
              ldap=("idmRole",), description="Effective job-function roles (ids)."),
    Attribute("emails.value", A | U, multi=True, indexed=True, ordered=True,
              sensitivity="visibility", complex_of="emails", scim="emails.value",
              ldap=("mail",), description="E-mail addresses, per visibility."),
    Attribute("emails.type", A | U, multi=True, indexed=True, sensitivity="visibility",
              complex_of="emails", scim="emails.type", description="work / other."),
    Attribute("phoneNumbers.value", A | U, multi=True, indexed=True, ordered=True,
              sensitivity="visibility", complex_of="phoneNumbers",
              scim="phoneNumbers.value", ldap=("telephoneNumber",),
              description="Phone numbers, per visibility."),
    Attribute("phoneNumbers.type", A | U, multi=True, indexed=True,
              sensitivity="visibility", complex_of="phoneNumbers", scim="phoneNumbers.type",
              description="work / mobile / other."),
    # --- units, roles, role groups (SCIM Group, LDAP groupOfNames)
    Attribute("userKey", GROUPS, indexed=True, scim="userKey", scim_schema=MUNICIPAL_GROUP,
              ldap=("idmUserKey",), description="Unit code, role identifier or group key."),
    Attribute("parent", U, REFERENCE, indexed=True, scim="parent",
              scim_schema=MUNICIPAL_GROUP, ldap=("idmParent",), description="Parent unit id."),
    Attribute("unitType", U, indexed=True, scim="unitType", scim_schema=MUNICIPAL_GROUP,
              ldap=("businessCategory",), description="Unit type name."),
    Attribute("hierarchy", U, indexed=True, scim="hierarchy", scim_schema=MUNICIPAL_GROUP,
              ldap=("idmHierarchy",), description="Root unit name of the unit's hierarchy."),
    Attribute("managerId", U, REFERENCE, indexed=True, scim="managerId",
              scim_schema=MUNICIPAL_GROUP, ldap=("idmManager",),
              description="Account id of the unit's manager (inherited when vacant)."),
    Attribute("member", GROUPS, REFERENCE, multi=True, indexed=True, scim="members.value",
              ldap=("member",), description="Accounts that are members of the group."),
    Attribute("roleId", R | G, indexed=True, case_exact=True, scim="identifier",
              scim_schema=MUNICIPAL_GROUP, ldap=("idmRoleIdentifier",),
              description="Role or role-group identifier (KOMBIT job-role id)."),
    # --- POSIX numbers (RFC 2307), allocated by the directory (idm_facade/directory/posix.py);
    # LDAP shows them with [ldap] posix = true.
    Attribute("uidNumber", A, INTEGER, indexed=True, ordered=True, ldap=("uidNumber",),
              description="POSIX user number of the account: unique and stable."),
    Attribute("gidNumber", A | GROUPS, INTEGER, indexed=True, ordered=True,
              ldap=("gidNumber",),
              description="POSIX group number of a group, or an account's primary group "
                          "(its primary unit)."),
)

#: Complex multi-valued attributes and the sub-keys of their elements.
COMPLEX: dict[str, tuple[str, ...]] = {
    "emails": ("value", "type", "primary", "display"),
    "phoneNumbers": ("value", "type", "primary", "display"),
    "engagements": ("unit", "unitName", "title", "employeeNumber", "primary", "validFrom",
                    "validTo"),
    "roles": ("value", "display", "type", "itSystem", "via", "viaUnit", "viaRoleGroup",
              "validFrom", "validTo"),
    "addresses": ("type", "formatted", "primary"),
}

#: SCIM ``returned`` of complex attributes kept whole in ``Entry.complex`` (no flattened
#: attribute above spells them), by (schema URN, SCIM name); unlisted ones are "default".
#: Role provenance (one element per grant: via, viaUnit, viaRoleGroup, validity) is about a
#: third of a User's JSON and few provisioning clients need to know *why* a role is held, so
#: it is sent only when ``attributes`` asks for it (RFC 7643 §7). Core ``User.roles`` (what
#: the account holds) stays in the default representation; filters ignore ``returned``.
COMPLEX_RETURNED: dict[tuple[str, str], str] = {
    (MUNICIPAL_USER, "roles"): "request",
}

#: Complex attributes whose elements carry a ``visibility`` key filtered by policy.
VISIBILITY_COMPLEX = frozenset({"emails", "phoneNumbers", "addresses"})


def attribute(name: str) -> Attribute:
    """Look up an attribute by its exact directory name (KeyError when unknown)."""
    return ATTRIBUTES[name]


@dataclass
class _Lookups:
    scim: dict[str, str] = field(default_factory=dict)
    ldap: dict[str, str] = field(default_factory=dict)


def _build_lookups() -> _Lookups:
    found = _Lookups()
    for attr in ATTRIBUTES.values():
        if attr.scim:
            found.scim[attr.scim.lower()] = attr.name
        for name in attr.ldap:
            found.ldap.setdefault(name.lower(), attr.name)
    return found


_LOOKUPS = _build_lookups()
_DECLARED: list[Callable[[], None]] = []


def on_declare(rebuild: Callable[[], None]) -> None:
    """Have ``rebuild`` called after :func:`declare` added attributes: for tables derived
    from the map at import time (SCIM's schema tables, LDAP's rendered attributes)."""
    _DECLARED.append(rebuild)


def declare(extra: Iterable[Attribute]) -> list[str]:
    """Add attributes to the map (``[attributes]`` in the configuration), once, before
    anything is served; returns their names. ValueError names a clash with the map."""
    added = list(extra)
    taken_scim = {a.scim.lower() for a in ATTRIBUTES.values() if a.scim}
    taken_ldap = {n.lower() for a in ATTRIBUTES.values() for n in a.ldap}
    for attr in added:
        if attr.name in ATTRIBUTES:
            raise ValueError(f"[attributes.{attr.name}]: the directory already has {attr.name}")
        if attr.scim and attr.scim.lower() in taken_scim:
            raise ValueError(f"[attributes.{attr.name}]: SCIM name {attr.scim} is taken")
        for name in attr.ldap:
            if name.lower() in taken_ldap:
                raise ValueError(f"[attributes.{attr.name}]: LDAP name {name} is taken")
        ATTRIBUTES[attr.name] = attr
        taken_scim.add((attr.scim or "").lower())
        taken_ldap.update(n.lower() for n in attr.ldap)
    global _LOOKUPS
    _LOOKUPS = _build_lookups()
    for rebuild in _DECLARED:
        rebuild()
    return [a.name for a in added]


def by_scim_path(path: str) -> Attribute | None:
    """The attribute a SCIM path names (case-insensitive, URN prefix already stripped)."""
    name = _LOOKUPS.scim.get(path.lower())
    return ATTRIBUTES[name] if name else None


def by_ldap_name(name: str) -> Attribute | None:
    """The attribute an LDAP attribute type names (case-insensitive)."""
    found = _LOOKUPS.ldap.get(name.lower())
    return ATTRIBUTES[found] if found else None
