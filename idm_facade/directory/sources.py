"""Values of attributes that declare where they come from (``Attribute.source``).

Most directory attributes are assembled by code of their own (:mod:`entries`). An attribute
that only copies a field of a store row, or the addresses of one type, instead declares its
source in the attribute map, and this module fills it: so a standard attribute (SCIM
``userType``, LDAP ``employeeType``) or a municipality's own (``[attributes]`` in the
configuration) is one declaration, with no builder code.

Sources: ``engagement.<column>`` (the primary engagement), ``person.<column>``,
``account.<column>``, ``unit.<column>``; a ``*_id`` column naming a class gives the class's
name, or with a further ``.<field>`` that field of the class (``engagement.job_function_id.
user_key``); ``address.<address type user_key>`` gives the values of the owner's addresses
of that type, stored per visibility like e-mail addresses (SECRET ones are never held).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from schemas.attributes import ATTRIBUTES, Attribute

ROWS = ("engagement", "person", "account", "unit")


def check_source(source: str) -> str | None:
    """Why ``source`` is not a usable source, or None."""
    head, _, rest = source.partition(".")
    if head == "address":
        return None if rest else "address sources name an address type: address.<user_key>"
    if head not in ROWS or not rest:
        return f"a source is one of {', '.join(f'{r}.<column>' for r in ROWS)} or " \
               "address.<type>"
    # A column the store does not have would give an attribute that is silently always
    # empty: say so at start instead.
    from store import models

    table = {"engagement": models.Engagement, "person": models.Person,
             "account": models.Account, "unit": models.OrgUnit}[head].__table__
    column, _, field = rest.partition(".")
    if column not in table.columns:
        return (f"{head} has no column {column!r}; it has "
                f"{', '.join(sorted(c.name for c in table.columns))}")
    if field:
        if not column.endswith("_id"):
            return f"{head}.{column} is not a class reference, so it has no .{field}"
        classes = models.Klasse.__table__.columns
        if field not in classes:
            return (f"a class has no field {field!r}; it has "
                    f"{', '.join(sorted(c.name for c in classes))}")
    return None


def sourced(data: Any, kinds: frozenset[str], rows: dict[str, Any],
            addresses: Iterable[Any]) -> dict[str, tuple]:
    """{physical name: values} of every sourced attribute of an entry of ``kinds``, from
    its store ``rows`` (``{"engagement": primary engagement, "person": ..., ...}``; absent
    or None when the entry has none) and the addresses of its owners."""
    out: dict[str, tuple] = {}
    listed: list[Any] | None = None
    for spec in ATTRIBUTES.values():
        if spec.source is None or not spec.kinds & kinds:
            continue
        head, _, rest = spec.source.partition(".")
        if head == "address":
            if listed is None:
                listed = list(addresses)
            out.update(_addresses(data, spec, rest, listed))
            continue
        value = _field(data, rows.get(head), rest)
        if value is not None and value != "":
            out[spec.name] = (value,)
    return out


def _field(data: Any, row: Any, path: str) -> Any:
    if row is None:
        return None
    column, _, field = path.partition(".")
    value = getattr(row, column, None)
    if value is None or not column.endswith("_id"):
        return value
    cls = data.classes.get(value)
    if cls is None:
        return None
    return getattr(cls, field or "name", None)


def address_visibility(data: Any, addr: Any) -> str:
    """PUBLIC, INTERNAL or SECRET (never served): the address's visibility class's scope;
    an address without one is INTERNAL."""
    vis_cls = data.classes.get(addr.visibility_id) if addr.visibility_id else None
    return (vis_cls.scope if vis_cls else None) or "INTERNAL"


def _addresses(data: Any, spec: Attribute, type_key: str, rows: list[Any]
               ) -> dict[str, tuple]:
    buckets: dict[str, list] = {}
    for addr in rows:
        cls = data.classes.get(addr.address_type_id)
        if cls is None or cls.user_key != type_key:
            continue
        visibility = address_visibility(data, addr)
        if visibility == "SECRET":
            continue
        buckets.setdefault(f"{spec.name}@{visibility}", []).append(addr.value)
    return {name: tuple(values) for name, values in buckets.items()}


#: Keys of one ``[attributes.<name>]`` table.
_KEYS = {"source", "kind", "scim", "ldap", "sensitivity", "multi", "description"}


def configured(section: dict[str, Any]) -> list[Attribute]:
    """The attributes ``[attributes.<name>]`` tables declare, checked; ValueError naming the
    first problem (the configuration is refused at start, never half applied).

    ``source`` (required, see the module docstring); ``kind``: ``"account"`` (default; SCIM
    User, LDAP person) or ``"unit"`` (SCIM Group, LDAP unit and group); ``scim``: its name
    in the municipal extension (default: the table's name); ``ldap``: its LDAP name (default
    ``idm`` + the name); ``sensitivity``: ``"cpr"`` (shown only with the CPR grant) or left
    out (address sources always go by visibility); ``multi``; ``description``: the local
    term shown in /Schemas and the subschema.
    """
    from schemas.attributes import (
        ACCOUNT,
        MUNICIPAL_GROUP,
        MUNICIPAL_USER,
        UNIT,
        Attribute,
    )

    found: list[Attribute] = []
    for name, table in section.items():
        where = f"[attributes.{name}]"
        if not isinstance(table, dict):
            raise ValueError(f"{where} must be a table")
        if not name.isidentifier() or name.startswith("_"):
            raise ValueError(f"{where}: the name must be letters, digits and _")
        unknown = set(table) - _KEYS
        if unknown:
            raise ValueError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}; "
                             f"use {', '.join(sorted(_KEYS))}")
        source = table.get("source")
        problem = "source is required" if not isinstance(source, str) else check_source(source)
        if problem:
            raise ValueError(f"{where}: {problem}")
        kind = table.get("kind", ACCOUNT)
        if kind not in (ACCOUNT, UNIT):
            raise ValueError(f"{where}: kind is \"account\" or \"unit\"")
        kinds = frozenset({kind})
        address = str(source).startswith("address.")
        sensitivity = table.get("sensitivity")
        if sensitivity not in (None, "cpr"):
            raise ValueError(f"{where}: sensitivity is \"cpr\" or left out")
        ldap = table.get("ldap", "idm" + name[:1].upper() + name[1:])
        if not isinstance(ldap, str) or not ldap[:1].isalpha() or not ldap.replace("-", "")\
                .isalnum():
            raise ValueError(f"{where}: ldap must be an attribute type name (letters, digits, "
                             "hyphens)")
        found.append(Attribute(
            name, kinds, multi=bool(table.get("multi", address)), indexed=True,
            sensitivity="visibility" if address else sensitivity,
            scim=str(table.get("scim", name)),
            scim_schema=MUNICIPAL_USER if ACCOUNT in kinds else MUNICIPAL_GROUP,
            ldap=(ldap,), source=source, description=str(table.get("description", ""))))
    return found
