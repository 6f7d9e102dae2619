"""The policies the configuration names: ``[policies.<name>]`` tables and the built-ins.

What a policy means is the directory's business (:class:`~idm_facade.directory.policy.
Policy`); this module reads them from the configuration, checking every key, so a typo in a
policy stops the server instead of silently granting more or less than meant.
"""

from __future__ import annotations

from typing import Any

from idm_facade.config import Config
from idm_facade.directory.policy import Policy
from schemas.attributes import ALL_KINDS, ATTRIBUTES, COMPLEX, VISIBILITIES


class PolicyError(ValueError):
    """A policy in the configuration is malformed (message names the policy and the key)."""



#: Built-in policies; a ``[policies.<name>]`` table with the same name replaces one.
BUILTIN_POLICIES: dict[str, Policy] = {
    # Everything an external system may read: all kinds, PUBLIC addresses, no CPR, sensitive
    # titles masked.
    "default": Policy(name="default"),
    # An internal system (the demo): INTERNAL addresses too; still no CPR.
    "demo-internal": Policy(name="demo-internal", max_visibility="INTERNAL", internal=True),
    # The demo's example of an explicit CPR grant.
    "demo-cpr": Policy(name="demo-cpr", max_visibility="INTERNAL", internal=True, cpr=True),
    # A person bound over LDAP (docs/ldap.md, "Person binds"): the PUBLIC view, which
    # includes their own entry; no CPR, sensitive titles masked.
    "person": Policy(name="person"),
}

_POLICY_KEYS = {"kinds", "subtrees", "attributes", "cpr", "max_visibility",
                "sensitive_titles", "internal", "description"}


def _bool(name: str, key: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise PolicyError(f"policy {name!r}: {key} must be true or false, not {value!r}")
    return value


def _str_list(name: str, key: str, value: Any) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise PolicyError(f"policy {name!r}: {key} must be a list of non-empty strings")
    return value


def parse_policy(name: str, table: Any) -> Policy:
    """One ``[policies.<name>]`` table as a :class:`Policy`; :class:`PolicyError` when bad.

    Subtrees are kept as written (unit ids or unit user_keys); :class:`ClientRegistry`
    resolves user_keys to ids against the store.
    """
    if not isinstance(table, dict):
        raise PolicyError(f"policy {name!r} must be a table")
    unknown = sorted(set(table) - _POLICY_KEYS)
    if unknown:
        raise PolicyError(f"policy {name!r}: unknown key(s) {', '.join(unknown)}; "
                          f"allowed: {', '.join(sorted(_POLICY_KEYS))}")
    kinds = ALL_KINDS
    if "kinds" in table:
        listed = _str_list(name, "kinds", table["kinds"])
        bad = sorted(set(listed) - ALL_KINDS)
        if bad:
            raise PolicyError(f"policy {name!r}: unknown kind(s) {', '.join(bad)}; "
                              f"kinds are {', '.join(sorted(ALL_KINDS))}")
        kinds = frozenset(listed)
    subtrees = None
    if "subtrees" in table:
        subtrees = tuple(_str_list(name, "subtrees", table["subtrees"]))
    attributes = None
    if "attributes" in table:
        listed = _str_list(name, "attributes", table["attributes"])
        bad = sorted(a for a in listed if a not in ATTRIBUTES and a not in COMPLEX)
        if bad:
            raise PolicyError(f"policy {name!r}: unknown attribute(s) {', '.join(bad)}")
        attributes = frozenset(listed)
    visibility = table.get("max_visibility", "PUBLIC")
    if visibility == "SECRET":
        raise PolicyError(f"policy {name!r}: SECRET addresses are never served; "
                          f"max_visibility must be PUBLIC or INTERNAL")
    if visibility not in VISIBILITIES:
        raise PolicyError(f"policy {name!r}: max_visibility must be PUBLIC or INTERNAL, "
                          f"not {visibility!r}")
    internal = _bool(name, "internal", table.get("internal", False))
    if visibility == "INTERNAL" and not internal:
        raise PolicyError(f"policy {name!r}: max_visibility INTERNAL needs internal = true "
                          f"(only internal clients may read INTERNAL addresses)")
    return Policy(
        name=name,
        kinds=kinds,
        subtrees=subtrees,
        attributes=attributes,
        cpr=_bool(name, "cpr", table.get("cpr", False)),
        max_visibility=visibility,
        sensitive_titles=_bool(name, "sensitive_titles", table.get("sensitive_titles", False)),
        internal=internal,
    )


def load_policies(config: Config) -> dict[str, Policy]:
    """The built-in policies overlaid with every ``[policies.<name>]`` table of ``config``."""
    policies = dict(BUILTIN_POLICIES)
    for name, table in config.section("policies").items():
        policies[name] = parse_policy(name, table)
    return policies


# --------------------------------------------------------------------------- base DN
