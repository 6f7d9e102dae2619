"""LDAP side tables of the attribute map: standard attribute types and object classes.

The directory's own attributes say their LDAP names in :mod:`schemas.attributes`; an
attribute whose LDAP name is a standard type gives its OID there (``ldap_oid``), or the type
is listed here with the others the protocol needs (objectClass, the operational types, the
subschema's own). Names that are neither get a private OID under 2.25 and an ``idm*``
auxiliary class, both generated (:mod:`idm_facade.ldap.subschema`).
"""

from __future__ import annotations

import re

#: Standard attribute types used here: (OID, syntax OID, equality, ordering, single, operational)
STANDARD_TYPES: dict[str, tuple[str, str, str, str | None, bool]] = {
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
STANDARD_CLASSES = (
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
OPERATIONAL_USAGE = {"entryUUID", "createTimestamp", "modifyTimestamp", "entryDN",
                      "hasSubordinates", "subschemaSubentry", "structuralObjectClass",
                      "attributeTypes", "objectClasses", "matchingRules", "matchingRuleUse",
                      "ldapSyntaxes", "dITContentRules", "dITStructureRules", "nameForms"}

SYNTAX = {"string": ("1.3.6.1.4.1.1466.115.121.1.15", "caseIgnoreMatch",
                      "caseIgnoreOrderingMatch"),
           "integer": ("1.3.6.1.4.1.1466.115.121.1.27", "integerMatch", "integerOrderingMatch"),
           "boolean": ("1.3.6.1.4.1.1466.115.121.1.7", "booleanMatch", None),
           "dateTime": ("1.3.6.1.4.1.1466.115.121.1.24", "generalizedTimeMatch",
                        "generalizedTimeOrderingMatch"),
           "reference": ("1.3.6.1.4.1.1466.115.121.1.15", "caseIgnoreMatch", None)}


#: Object classes of each LDAP view of the DIT (idm_facade.ldap.dit), structural first.
PERSON_CLASSES = ("person", "organizationalPerson", "inetOrgPerson", "posixAccount")
GROUP_CLASSES = ("groupOfNames", "groupOfUniqueNames", "posixGroup")
UNIT_CLASSES = ("organizationalUnit",)


def class_attributes(names: tuple[str, ...]) -> frozenset[str]:
    """Lower-case names of every attribute the MUST and MAY lists of the standard classes
    ``names`` (and their superiors) allow."""
    found: set[str] = set()
    wanted = {n.lower() for n in names}
    for definition in STANDARD_CLASSES:
        name = re.search(r"NAME '([^']+)'", definition)
        if name is None or name.group(1).lower() not in wanted:
            continue
        superior = re.search(r"SUP (\w+)", definition)
        if superior and superior.group(1) != "top":
            found |= class_attributes((superior.group(1),))
        for part in re.findall(r"(?:MUST|MAY) (\( [^)]* \)|\w+)", definition):
            found.update(n.strip().lower() for n in part.strip("() ").split("$"))
    return frozenset(found)
