"""The attribute map is the one place: every LDAP name it gives is a defined attribute type
with the right kind of OID, and an object class of the entry that carries it allows it.

Forgetting to list a standard name (``mail``, ``telephoneNumber``) among the standard types
once silently gave it a private OID under our arc, which schema-aware clients (Apache
Directory Studio, JXplorer) then show as an unknown attribute.
"""

from __future__ import annotations

import re

from idm_facade.ldap import dit, subschema
from schemas.attributes import ATTRIBUTES

_NAME = re.compile(r"NAME '([^']+)'")
_OID = re.compile(r"^\( ([0-9.]+) ")
_LIST = re.compile(r"(MUST|MAY) (\( [^)]* \)|\S+)")


def _types() -> dict[str, str]:
    """{attribute type name: OID} from the subschema entry."""
    out = {}
    for definition in subschema.attribute_type_definitions():
        out[_NAME.search(definition).group(1)] = _OID.match(definition).group(1)
    return out


def _classes() -> dict[str, set[str]]:
    """{object class name (lower case): attribute names it allows (MUST and MAY)}."""
    out = {}
    for definition in subschema.object_class_definitions():
        allowed: set[str] = set()
        for _, names in _LIST.findall(definition):
            allowed.update(n.strip() for n in names.strip("() ").split("$"))
        out[_NAME.search(definition).group(1).lower()] = allowed
    return out


def test_every_ldap_name_in_the_map_is_a_defined_type() -> None:
    types = _types()
    names = {n for spec in ATTRIBUTES.values() for n in spec.ldap}
    assert names and not names - set(types)


def test_only_our_own_names_get_a_private_oid() -> None:
    """Standard names keep their registered OIDs; only ``idm*`` names are under our arc."""
    for name, oid in _types().items():
        private = oid.startswith("2.25.")  # the UUID arc (X.667) of subschema.private_oid
        assert private == name.startswith("idm"), (name, oid)


def test_every_rendered_attribute_is_allowed_by_an_object_class_of_its_view() -> None:
    classes = _classes()
    for posix in (False, True):
        options = dit.LdapOptions(base_dn="dc=example,dc=dk", posix=posix)
        for view, object_classes in dit._objectclasses(options).items():
            allowed = set().union(*(classes.get(c.lower(), set()) for c in object_classes))
            allowed |= {"objectClass"}
            rendered = {name for name, spec in dit._RENDERED.get(view, ())
                        # POSIX numbers: only with posix on, never on ou=units entries
                        if spec.name not in dit.POSIX_ATTRS or (posix and view != dit.UNITS)}
            assert not rendered - allowed, (view, posix, sorted(rendered - allowed))
