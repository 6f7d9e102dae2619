"""Export the directory as LDIF (and an OpenLDAP schema file) through the LDAP front end's DIT.

Used by bench/ldap_bench.py so slapd serves exactly the entries the facade serves: same DNs,
same attribute values (as the ``default`` policy sees them). Attributes slapd cannot load
without extra overlays are left out: ``memberOf`` and the operational attributes (slapd makes
its own entryUUID and timestamps). groupOfNames requires a member, so an empty group gets
the base DN as a placeholder member.
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

from idm_facade.directory.policy import Policy
from idm_facade.directory.view import ClientView
from idm_facade.ldap import dit, subschema
from schemas.attributes import ACCOUNT, ATTRIBUTES, GROUP_KINDS, UNIT

_SKIP = {"memberof", *(n.lower() for n in dit.OPERATIONAL)}


def _line(name: str, value: str) -> str:
    safe = value.isascii() and value[:1] not in (" ", ":", "<") and not value.endswith(" ") \
        and "\n" not in value
    if safe:
        return f"{name}: {value}\n"
    return f"{name}:: {base64.b64encode(value.encode()).decode()}\n"


def _entry(dn: str, attrs: list[tuple[str, list[str]]]) -> str:
    out = _line("dn", dn)
    for name, values in attrs:
        if name.lower() in _SKIP:
            continue
        for value in values:
            out += _line(name, value)
    return out + "\n"


def schema_text() -> str:
    """slapd.conf-style attributetype / objectclass lines for the idm* schema."""
    lines = []
    idm = {}
    for definition in subschema.attribute_type_definitions():
        name = definition.split("NAME '", 1)[1].split("'", 1)[0]
        if name.startswith("idm"):
            idm[name] = definition
            lines.append(f"attributetype {definition}")

    def may(kinds: frozenset[str], extra: list[str]) -> str:
        names = [n for n in idm if ATTRIBUTES[subschema._ldap_to_dir(n)].kinds & kinds]
        return " $ ".join(names + extra)

    lines.append(f"objectclass ( {subschema.private_oid('oc', 'idmPerson')} NAME 'idmPerson' "
                 f"SUP top AUXILIARY MAY ( {may(frozenset({ACCOUNT}), [])} ) )")
    lines.append(f"objectclass ( {subschema.private_oid('oc', 'idmGroup')} NAME 'idmGroup' "
                 f"SUP top AUXILIARY MAY ( {may(GROUP_KINDS, ['displayName', 'uniqueMember', 'memberUid', 'mail', 'telephoneNumber'])} ) )")  # noqa: E501
    lines.append(f"objectclass ( {subschema.private_oid('oc', 'idmOrgUnit')} NAME 'idmOrgUnit' "
                 f"SUP top AUXILIARY MAY ( {may(frozenset({UNIT}), ['displayName', 'mail', 'telephoneNumber'])} ) )")  # noqa: E501
    return "\n".join(lines) + "\n"


def export_ldif(snapshot: Any, config: Any, ldif_path: Path, schema_path: Path,
                policy: Policy | None = None) -> int:
    """Write the LDIF and schema; returns the number of entries written."""
    policy = policy or Policy(name="default")
    options = dit.options_from(config, snapshot)
    layout = dit.layout_for(snapshot, options)
    seen = ClientView.of(snapshot, policy)
    schema_path.write_text(schema_text())
    count = 0
    with ldif_path.open("w") as out:
        dn, attrs = dit.static_entry(layout, "base")
        out.write(_entry(dn, [(n, v) for n, v, _ in attrs]))
        count += 1
        for which in (dit.PEOPLE, dit.UNITS, dit.GROUPS, dit.CLIENTS):
            dn, attrs = dit.static_entry(layout, which)
            out.write(_entry(dn, [(n, v) for n, v, _ in attrs]))
            count += 1
        units = sorted(layout.unit_dn.items(), key=lambda kv: kv[1].count(","))
        for view, ids in ((dit.PEOPLE, list(layout.account_dn)),
                          (dit.UNITS, [i for i, _ in units]),
                          (dit.GROUPS, list(layout.group_dn))):
            for entry_id in ids:
                entry = snapshot.get(entry_id)
                rendered = dit.render_attributes(layout, view, entry, seen)
                attrs = [(n, v) for n, v, _ in rendered]
                if view == dit.GROUPS and not any(n == "member" for n, _ in attrs):
                    attrs.append(("member", [layout.base]))
                out.write(_entry(layout.dn_of(view, entry_id) or "", attrs))
                count += 1
    return count
