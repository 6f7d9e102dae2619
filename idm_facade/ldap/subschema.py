"""The rootDSE (RFC 4512 §5.1) and the subschema subentry (RFC 4512 §4.2), generated from the
attribute map: what a client (Apache Directory Studio, ldapsearch ``-b '' -s base +``) reads
to learn what this server supports and which attribute types and object classes it serves.
"""

from __future__ import annotations

import uuid

from idm_facade.ldap.dit import SUBSCHEMA_DN, VENDOR, Layout
from schemas.attributes import ACCOUNT, ATTRIBUTES, GROUP_KINDS, UNIT, Attribute

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

#: Standard attribute types used here: (OID, syntax OID, equality, ordering, single, operational)
_STANDARD: dict[str, tuple[str, str, str, str | None, bool]] = {
    "objectClass": ("2.5.4.0", "1.3.6.1.4.1.1466.115.121.1.38", "objectIdentifierMatch", None,
                    False),
    "cn": ("2.5.4.3", "1.3.6.1.4.1.1466.115.121.1.15", "caseIgnoreMatch", None, False),
    "sn": ("2.5.4.4", "1.3.6.1.4.1.1466.115.121.1.15", "caseIgnoreMatch", None, False),
    "o": ("2.5.4.10", "1.3.6.1.4.1.1466.115.121.1.15", "caseIgnoreMatch", None, False),
    "ou": ("2.5.4.11", "1.3.6.1.4.1.1466.115.121.1.15", "caseIgnoreMatch", None, False),
    "title": ("2.5.4.12", "1.3.6.1.4.1.1466.115.121.1.15", "caseIgnoreMatch", None, False),
    "businessCategory": ("2.5.4.15", "1.3.6.1.4.1.1466.115.121.1.15", "caseIgnoreMatch", None,
                         False),
    "telephoneNumber": ("2.5.4.20", "1.3.6.1.4.1.1466.115.121.1.50",
                        "telephoneNumberMatch", None, False),
    "member": ("2.5.4.31", "1.3.6.1.4.1.1466.115.121.1.12", "distinguishedNameMatch", None,
               False),
    "givenName": ("2.5.4.42", "1.3.6.1.4.1.1466.115.121.1.15", "caseIgnoreMatch", None,
                  False),
    "uniqueMember": ("2.5.4.50", "1.3.6.1.4.1.1466.115.121.1.34", "uniqueMemberMatch", None,
                     False),
    "uid": ("0.9.2342.19200300.100.1.1", "1.3.6.1.4.1.1466.115.121.1.15", "caseIgnoreMatch",
            None, False),
    "mail": ("0.9.2342.19200300.100.1.3", "1.3.6.1.4.1.1466.115.121.1.26",
             "caseIgnoreIA5Match", None, False),
    "manager": ("0.9.2342.19200300.100.1.10", "1.3.6.1.4.1.1466.115.121.1.12",
                "distinguishedNameMatch", None, False),
    "displayName": ("2.16.840.1.113730.3.1.241", "1.3.6.1.4.1.1466.115.121.1.15",
                    "caseIgnoreMatch", None, True),
    "employeeNumber": ("2.16.840.1.113730.3.1.3", "1.3.6.1.4.1.1466.115.121.1.15",
                       "caseIgnoreMatch", None, True),
    "departmentNumber": ("2.16.840.1.113730.3.1.2", "1.3.6.1.4.1.1466.115.121.1.15",
                         "caseIgnoreMatch", None, False),
    "memberUid": ("1.3.6.1.1.1.1.12", "1.3.6.1.4.1.1466.115.121.1.26", "caseExactIA5Match",
                  None, False),
    "memberOf": ("1.2.840.113556.1.2.102", "1.3.6.1.4.1.1466.115.121.1.12",
                 "distinguishedNameMatch", None, False),
    "entryUUID": ("1.3.6.1.1.16.4", "1.3.6.1.1.16.1", "UUIDMatch", "UUIDOrderingMatch", True),
    "createTimestamp": ("2.5.18.1", "1.3.6.1.4.1.1466.115.121.1.24", "generalizedTimeMatch",
                        "generalizedTimeOrderingMatch", True),
    "modifyTimestamp": ("2.5.18.2", "1.3.6.1.4.1.1466.115.121.1.24", "generalizedTimeMatch",
                        "generalizedTimeOrderingMatch", True),
    "entryDN": ("1.3.6.1.1.20", "1.3.6.1.4.1.1466.115.121.1.12", "distinguishedNameMatch",
                None, True),
    "hasSubordinates": ("2.5.18.9", "1.3.6.1.4.1.1466.115.121.1.7", "booleanMatch", None,
                        True),
    "subschemaSubentry": ("2.5.18.10", "1.3.6.1.4.1.1466.115.121.1.12",
                          "distinguishedNameMatch", None, True),
    "structuralObjectClass": ("2.5.21.9", "1.3.6.1.4.1.1466.115.121.1.38",
                              "objectIdentifierMatch", None, True),
    "dc": ("0.9.2342.19200300.100.1.25", "1.3.6.1.4.1.1466.115.121.1.26",
           "caseIgnoreIA5Match", None, True),
    "description": ("2.5.4.13", "1.3.6.1.4.1.1466.115.121.1.15", "caseIgnoreMatch", None,
                    False),
    "attributeTypes": ("2.5.21.5", "1.3.6.1.4.1.1466.115.121.1.3",
                       "objectIdentifierFirstComponentMatch", None, False),
    "objectClasses": ("2.5.21.6", "1.3.6.1.4.1.1466.115.121.1.37",
                      "objectIdentifierFirstComponentMatch", None, False),
    "matchingRules": ("2.5.21.4", "1.3.6.1.4.1.1466.115.121.1.30",
                      "objectIdentifierFirstComponentMatch", None, False),
    "matchingRuleUse": ("2.5.21.8", "1.3.6.1.4.1.1466.115.121.1.31",
                        "objectIdentifierFirstComponentMatch", None, False),
    "ldapSyntaxes": ("1.3.6.1.4.1.1466.101.120.16", "1.3.6.1.4.1.1466.115.121.1.54",
                     "objectIdentifierFirstComponentMatch", None, False),
    "dITContentRules": ("2.5.21.2", "1.3.6.1.4.1.1466.115.121.1.16",
                        "objectIdentifierFirstComponentMatch", None, False),
    "dITStructureRules": ("2.5.21.1", "1.3.6.1.4.1.1466.115.121.1.17",
                          "integerFirstComponentMatch", None, False),
    "nameForms": ("2.5.21.7", "1.3.6.1.4.1.1466.115.121.1.35",
                  "objectIdentifierFirstComponentMatch", None, False),
    "uidNumber": ("1.3.6.1.1.1.1.0", "1.3.6.1.4.1.1466.115.121.1.27", "integerMatch",
                  "integerOrderingMatch", True),
    "gidNumber": ("1.3.6.1.1.1.1.1", "1.3.6.1.4.1.1466.115.121.1.27", "integerMatch",
                  "integerOrderingMatch", True),
    "homeDirectory": ("1.3.6.1.1.1.1.3", "1.3.6.1.4.1.1466.115.121.1.26", "caseExactIA5Match",
                      None, True),
    "loginShell": ("1.3.6.1.1.1.1.4", "1.3.6.1.4.1.1466.115.121.1.26", "caseExactIA5Match",
                   None, True),
}

#: The standard object classes the views use (RFC 4519, 2798, 2307, 4512).
_STANDARD_CLASSES = (
    "( 2.5.6.0 NAME 'top' ABSTRACT MUST objectClass )",
    "( 1.3.6.1.4.1.1466.101.120.111 NAME 'extensibleObject' SUP top AUXILIARY )",
    "( 2.5.20.1 NAME 'subschema' AUXILIARY MAY ( attributeTypes $ objectClasses ) )",
    "( 2.5.17.0 NAME 'subentry' SUP top STRUCTURAL MUST cn )",
    "( 2.5.6.4 NAME 'organization' SUP top STRUCTURAL MUST o MAY description )",
    "( 1.3.6.1.4.1.1466.344 NAME 'dcObject' SUP top AUXILIARY MUST dc )",
    "( 2.5.6.5 NAME 'organizationalUnit' SUP top STRUCTURAL MUST ou MAY description )",
    "( 2.5.6.6 NAME 'person' SUP top STRUCTURAL MUST ( sn $ cn ) MAY ( telephoneNumber $ "
    "description ) )",
    "( 2.5.6.7 NAME 'organizationalPerson' SUP person STRUCTURAL MAY ( title $ ou $ "
    "telephoneNumber ) )",
    "( 2.16.840.1.113730.3.2.2 NAME 'inetOrgPerson' SUP organizationalPerson STRUCTURAL "
    "MAY ( departmentNumber $ displayName $ employeeNumber $ givenName $ mail $ manager $ "
    "o $ uid ) )",
    "( 2.5.6.9 NAME 'groupOfNames' SUP top STRUCTURAL MUST cn MAY ( member $ "
    "businessCategory $ o $ ou $ description ) )",
    "( 2.5.6.17 NAME 'groupOfUniqueNames' SUP top STRUCTURAL MUST cn MAY ( uniqueMember $ "
    "businessCategory $ o $ ou $ description ) )",
    "( 2.5.6.11 NAME 'applicationProcess' SUP top STRUCTURAL MUST cn MAY description )",
    "( 1.3.6.1.1.1.2.0 NAME 'posixAccount' SUP top AUXILIARY MUST ( cn $ uid $ uidNumber $ "
    "gidNumber $ homeDirectory ) MAY ( loginShell $ description ) )",
    "( 1.3.6.1.1.1.2.2 NAME 'posixGroup' SUP top AUXILIARY MUST ( cn $ gidNumber ) "
    "MAY ( memberUid $ description ) )",
)
_OPERATIONAL_USAGE = {"entryUUID", "createTimestamp", "modifyTimestamp", "entryDN",
                      "hasSubordinates", "subschemaSubentry", "structuralObjectClass",
                      "attributeTypes", "objectClasses", "matchingRules", "matchingRuleUse",
                      "ldapSyntaxes", "dITContentRules", "dITStructureRules", "nameForms"}

_SYNTAX = {"string": ("1.3.6.1.4.1.1466.115.121.1.15", "caseIgnoreMatch",
                      "caseIgnoreOrderingMatch"),
           "integer": ("1.3.6.1.4.1.1466.115.121.1.27", "integerMatch", "integerOrderingMatch"),
           "boolean": ("1.3.6.1.4.1.1466.115.121.1.7", "booleanMatch", None),
           "dateTime": ("1.3.6.1.4.1.1466.115.121.1.24", "generalizedTimeMatch",
                        "generalizedTimeOrderingMatch"),
           "reference": ("1.3.6.1.4.1.1466.115.121.1.15", "caseIgnoreMatch", None)}


def private_oid(kind: str, name: str) -> str:
    """A stable OID for an own schema element, under the UUID arc 2.25 (X.667): no
    registration needed and no clash with anyone's."""
    return "2.25." + str(uuid.uuid5(uuid.NAMESPACE_URL, f"urn:idm-facade:{kind}:{name}").int)


def _idm_attribute_types() -> list[tuple[str, Attribute]]:
    seen: dict[str, Attribute] = {}
    for spec in ATTRIBUTES.values():
        for name in spec.ldap:
            if name not in _STANDARD and name not in seen:
                seen[name] = spec
    return sorted(seen.items())


def attribute_type_names() -> frozenset[str]:
    """Names (lower case) of every attribute type the server recognises: the standard ones it
    serves and its own idm* ones."""
    return frozenset(n.lower() for n in (*_STANDARD, *(n for n, _ in _idm_attribute_types())))


def attribute_type_definitions() -> list[str]:
    """RFC 4512 AttributeTypeDescriptions: standard types we serve plus our own idm* types."""
    out = []
    for name, (oid, syntax, eq, order, single) in _STANDARD.items():
        parts = [f"( {oid} NAME '{name}'", f"EQUALITY {eq}"]
        if order:
            parts.append(f"ORDERING {order}")
        parts.append(f"SYNTAX {syntax}")
        if single:
            parts.append("SINGLE-VALUE")
        if name in _OPERATIONAL_USAGE:
            parts.append("NO-USER-MODIFICATION USAGE directoryOperation")
        out.append(" ".join(parts) + " )")
    for name, spec in _idm_attribute_types():
        syntax, eq, order = _SYNTAX.get(spec.type, _SYNTAX["string"])
        if spec.case_exact and spec.type == "string":
            eq, order = "caseExactMatch", "caseExactOrderingMatch"
        desc = spec.description.replace("'", "")
        parts = [f"( {private_oid('at', name)} NAME '{name}'", f"DESC '{desc}'",
                 f"EQUALITY {eq}"]
        if order:
            parts.append(f"ORDERING {order}")
        parts.append(f"SYNTAX {syntax}")
        if not spec.multi:
            parts.append("SINGLE-VALUE")
        out.append(" ".join(parts) + " )")
    return out


def object_class_definitions() -> list[str]:
    """Our auxiliary classes (the standard structural ones are the usual RFC 4519/2798)."""
    idm = [n for n, _ in _idm_attribute_types()]
    person = " $ ".join(n for n in idm if ATTRIBUTES[_ldap_to_dir(n)].kinds & {ACCOUNT})
    group = " $ ".join([n for n in idm if ATTRIBUTES[_ldap_to_dir(n)].kinds & GROUP_KINDS]
                       + ["displayName", "memberUid", "uniqueMember", "mail",
                          "telephoneNumber"])
    unit = " $ ".join([n for n in idm if ATTRIBUTES[_ldap_to_dir(n)].kinds & {UNIT}]
                      + ["displayName", "mail", "telephoneNumber", "businessCategory",
                         "member"])
    return [*_STANDARD_CLASSES,
        f"( {private_oid('oc', 'idmPerson')} NAME 'idmPerson' SUP top AUXILIARY "
        f"MAY ( {person} $ memberOf ) )",
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
