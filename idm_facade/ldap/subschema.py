"""The rootDSE (RFC 4512 §5.1) and the subschema subentry (RFC 4512 §4.2), generated from the
attribute map: what a client (Apache Directory Studio, ldapsearch ``-b '' -s base +``) reads
to learn what this server supports and which attribute types and object classes it serves.
"""

from __future__ import annotations

import uuid

from idm_facade.ldap.dit import SUBSCHEMA_DN, VENDOR, Layout
from schemas.attributes import ACCOUNT, ATTRIBUTES, GROUP_KINDS, UNIT, Attribute
from schemas.ldap import (
    GROUP_CLASSES,
    OPERATIONAL_USAGE,
    PERSON_CLASSES,
    STANDARD_CLASSES,
    STANDARD_TYPES,
    SYNTAX,
    UNIT_CLASSES,
    class_attributes,
)

PAGED_OID = b"1.2.840.113556.1.4.319"
SORT_OID = b"1.2.840.113556.1.4.473"
SORT_RESPONSE_OID = b"1.2.840.113556.1.4.474"
STARTTLS_OID = b"1.3.6.1.4.1.1466.20037"
WHOAMI_OID = b"1.3.6.1.4.1.4203.1.11.3"


def root_dse(layout: Layout) -> list[tuple[str, list[str], bool]]:
    """The rootDSE attributes (RFC 4512 §5.1). All but objectClass are operational, so
    ``+`` returns them; a request for no attributes (or ``*``) gets them as well."""
    return [
        ("objectClass", ["top", "extensibleObject"], False),
        ("namingContexts", [layout.base], True),
        ("subschemaSubentry", [SUBSCHEMA_DN], True),
        ("supportedLDAPVersion", ["3"], True),
        ("supportedControl", [PAGED_OID.decode(), SORT_OID.decode()], True),
        ("supportedExtension", [STARTTLS_OID.decode(), WHOAMI_OID.decode()], True),
        ("supportedFeatures", ["1.3.6.1.4.1.4203.1.5.1", "1.3.6.1.4.1.4203.1.5.3"], True),
        ("supportedSASLMechanisms", [], True),
        ("vendorName", [VENDOR], True),
        ("vendorVersion", [_version()], True),
        ("entryDN", [""], True),
    ]


def _version() -> str:
    try:
        from importlib.metadata import version

        return f"{VENDOR} {version('idm-facade')}"
    except Exception:  # not installed as a distribution
        return VENDOR


# ------------------------------------------------------------------ subschema

def private_oid(kind: str, name: str) -> str:
    """A stable OID for an own schema element, under the UUID arc 2.25 (X.667): no
    registration needed and no clash with anyone's."""
    return "2.25." + str(uuid.uuid5(uuid.NAMESPACE_URL, f"urn:idm-facade:{kind}:{name}").int)


def _idm_attribute_types() -> list[tuple[str, Attribute]]:
    """The directory's LDAP names that are not standard types: served with private OIDs."""
    seen: dict[str, Attribute] = {}
    for spec in ATTRIBUTES.values():
        for name in spec.ldap:
            if name not in STANDARD_TYPES and not spec.ldap_oid and name not in seen:
                seen[name] = spec
    return sorted(seen.items())


def _declared_standard_types() -> list[tuple[str, Attribute]]:
    """Standard types a directory attribute brings with its OID (``ldap_oid``)."""
    return sorted({spec.ldap[0]: spec for spec in ATTRIBUTES.values()
                   if spec.ldap_oid and spec.ldap and spec.ldap[0] not in STANDARD_TYPES}
                  .items())


def attribute_type_names() -> frozenset[str]:
    """Names (lower case) of every attribute type the server recognises: the standard ones it
    serves and its own idm* ones."""
    return frozenset(n.lower() for n in (*STANDARD_TYPES,
                                         *(n for n, _ in _declared_standard_types()),
                                         *(n for n, _ in _idm_attribute_types())))


def attribute_type_definitions() -> list[str]:
    """RFC 4512 AttributeTypeDescriptions: standard types we serve plus our own idm* types."""
    out = []
    for name, (oid, syntax, eq, order, single) in STANDARD_TYPES.items():
        parts = [f"( {oid} NAME '{name}'", f"EQUALITY {eq}"]
        if order:
            parts.append(f"ORDERING {order}")
        parts.append(f"SYNTAX {syntax}")
        if single:
            parts.append("SINGLE-VALUE")
        if name in OPERATIONAL_USAGE:
            parts.append("NO-USER-MODIFICATION USAGE directoryOperation")
        out.append(" ".join(parts) + " )")
    for name, spec in _declared_standard_types():
        out.append(_definition(spec.ldap_oid or "", name, spec, standard=True))
    for name, spec in _idm_attribute_types():
        out.append(_definition(private_oid("at", name), name, spec))
    return out


def _definition(oid: str, name: str, spec: Attribute, standard: bool = False) -> str:
    """An AttributeTypeDescription from the map; for a standard type (``standard``) no
    ordering or single-value the standard does not give it."""
    syntax, eq, order = SYNTAX.get(spec.type, SYNTAX["string"])
    if standard:
        order = None
    if spec.case_exact and spec.type == "string":
        eq, order = "caseExactMatch", "caseExactOrderingMatch"
    desc = spec.description.replace("'", "")
    parts = [f"( {oid} NAME '{name}'", f"DESC '{desc}'", f"EQUALITY {eq}"]
    if order:
        parts.append(f"ORDERING {order}")
    parts.append(f"SYNTAX {syntax}")
    if not spec.multi and not standard:
        parts.append("SINGLE-VALUE")
    return " ".join(parts) + " )"


def _uncovered(kinds: frozenset[str], standard: tuple[str, ...],
               extra: tuple[str, ...] = ()) -> str:
    """The MAY list of an idm* auxiliary class: every LDAP name of attributes of ``kinds``
    that the view's standard classes do not allow already (so every name served has a
    class), and ``extra``."""
    covered = class_attributes(standard)
    names: dict[str, None] = {}
    for spec in ATTRIBUTES.values():
        if spec.kinds & kinds:
            for name in spec.ldap:
                if name.lower() not in covered and name not in OPERATIONAL_USAGE:
                    names[name] = None
    names.update(dict.fromkeys(n for n in extra if n.lower() not in covered))
    return " $ ".join(sorted(names))


def object_class_definitions() -> list[str]:
    """The standard classes the views use, and our auxiliary ones, generated so that every
    attribute a view serves is allowed by one of its classes."""
    person = _uncovered(frozenset({ACCOUNT}), PERSON_CLASSES, ("memberOf",))
    group = _uncovered(GROUP_KINDS, GROUP_CLASSES,
                       ("displayName", "memberUid", "uniqueMember", "mail", "telephoneNumber"))
    unit = _uncovered(frozenset({UNIT}), UNIT_CLASSES,
                      ("displayName", "mail", "telephoneNumber", "businessCategory", "member"))
    return [*STANDARD_CLASSES,
        f"( {private_oid('oc', 'idmPerson')} NAME 'idmPerson' SUP top AUXILIARY "
        f"MAY ( {person} ) )",
        f"( {private_oid('oc', 'idmGroup')} NAME 'idmGroup' SUP top AUXILIARY "
        f"MAY ( {group} ) )",
        f"( {private_oid('oc', 'idmOrgUnit')} NAME 'idmOrgUnit' SUP top AUXILIARY "
        f"MAY ( {unit} ) )",
        f"( {private_oid('oc', 'idmClient')} NAME 'idmClient' SUP top AUXILIARY )",
    ]


def _ldap_to_dir(ldap_name: str) -> str:
    from schemas.attributes import by_ldap_name

    spec = by_ldap_name(ldap_name)
    assert spec is not None
    return spec.name


def subschema(layout: Layout) -> tuple[str, list[tuple[str, list[str], bool]]]:
    """The subschema subentry (RFC 4512 §4.2)."""
    return SUBSCHEMA_DN, [
        ("objectClass", ["top", "subentry", "subschema", "extensibleObject"], False),
        ("cn", ["Subschema"], False),
        ("attributeTypes", attribute_type_definitions(), True),
        ("objectClasses", object_class_definitions(), True),
        ("entryDN", [SUBSCHEMA_DN], True),
        ("subschemaSubentry", [SUBSCHEMA_DN], True),
    ]
