"""Facade configuration: an optional TOML file and ``IDM_FACADE_<SECTION>__<KEY>`` environment
variables, checked against one schema, with defaults that make the demo work.

Each part of the facade reads its own table: ``[directory]``, ``[ldap]`` (and
``[ldap.upstream]``, ``[ldap.persons]``), ``[scim]``, ``[audit]``, ``[limits]``,
``[policies.<name>]``, ``[attributes.<name>]``. The file is ``--config PATH`` or
``IDM_FACADE_CONFIG``; without one every default applies. A municipality adapts local terms
by configuration, not code.

Why a schema here and not only in each reader: a mistyped key (``posx = true``, ``[ladp]``)
would otherwise be ignored in silence and the facade would run with a default the operator
thinks they changed. So an unknown section or key, or a value of the wrong type, is a
:class:`ConfigError` naming the file, the line and the key (with the nearest known key as a
hint) before anything starts. The tables whose keys are names of the municipality's own
(policies, attributes) are checked by their readers, which name the table.

Environment: ``IDM_FACADE_LDAP__BASE_DN=dc=kommune,dc=dk`` sets ``[ldap] base_dn``;
``IDM_FACADE_LDAP__UPSTREAM__URLS='["ldaps://dc1"]'`` a key of ``[ldap.upstream]``. A value
is read as TOML when it parses as a TOML value (``true``, ``5``, ``["a"]``), else as a
string. The environment overrides the file.
"""

from __future__ import annotations

import difflib
import os
import re
import tomllib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ENV_PREFIX = "IDM_FACADE_"

_NUMBER = (int, float)
_STRINGS = "list of strings"

#: Every known section and key with its type. A nested dict is a sub-table; ``None`` is a
#: table of named tables checked by its reader (policies, attributes).
SCHEMA: dict[str, Any] = {
    "directory": {"it_system": str, "state_dir": str, "posix_uid_base": int,
                  "posix_gid_base": int, "posix_range_size": int},
    "ldap": {
        "base_dn": str, "anonymous": bool, "anonymous_policy": str, "posix": bool,
        "tls_cert": str, "tls_key": str, "tls_hostname": str, "member_attributes": _STRINGS,
        "units_root": str, "max_pdu": int, "idle_timeout": _NUMBER, "size_limit": int,
        "render_cache_mb": _NUMBER, "answer_cache_mb": _NUMBER, "require_tls": bool,
        "time_limit": _NUMBER, "page_ttl": _NUMBER, "max_paged_searches": int,
        "max_connections": int, "threads": int, "proxy_protocol_from": _STRINGS,
        "upstream": {"urls": _STRINGS, "dn_template": str, "search_base": str,
                     "search_filter": str, "bind_dn": str, "bind_password": str,
                     "ca_file": str, "starttls": bool, "timeout": _NUMBER, "pool_size": int,
                     "require_tls": bool},
        "persons": {"policy": str, "upn_suffixes": _STRINGS, "domains": _STRINGS,
                    "require_tls": bool, "address_exempt": _STRINGS,
                    **{f"{who}_{name}": kind for who in ("account", "address")
                       for name, kind in (("delay_after", int), ("first_delay", _NUMBER),
                                          ("max_delay", _NUMBER), ("lockout_after", int),
                                          ("lockout_seconds", _NUMBER))}},
    },
    "scim": {"cursor_secret": str, "default_page_size": int, "max_page_size": int,
             "cursor_timeout": int, "response_cache_mb": _NUMBER, "render_cache_mb": _NUMBER},
    "audit": {"db": str, "sync": str, "sync_interval": _NUMBER, "timeout": _NUMBER,
              "retention": str, "index_interval": _NUMBER, "index_records": int,
              "write_timeout": _NUMBER, "replica": str, "anchor_key": str,
              "bind_record_delay": _NUMBER},
    "logging": {"requests": bool, "format": str},
    "admin": {"secret_key": str, "idle_minutes": _NUMBER},
    "limits": {"filter_terms": int, "filter_depth": int, "search_seconds": _NUMBER},
    "provisioning": {
        # [[provisioning.target]]: an array of tables, each checked against this one
        "target": [{"name": str, "url": str, "token": str, "ca_file": str, "policy": str,
                    "filter": str, "groups": _STRINGS, "leaver": str, "timeout": _NUMBER,
                    "batch": int, "token_url": str, "client_id": str,
                    "client_secret": str, "scope": str}],
        # [[provisioning.feed]]: a change feed that one client polls
        "feed": [{"name": str, "client": str, "filter": str, "groups": _STRINGS,
                  "retention": str}],
        "interval": _NUMBER,
    },
    "policies": None,
    "attributes": None,
}


class ConfigError(ValueError):
    """The configuration is wrong; the message names where (file:line or variable) and
    what."""


#: A name in an array of named tables (``[[provisioning.target]]``, ``[[provisioning.feed]]``).
_TABLE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,47}$")


def megabytes(section: Mapping[str, Any], key: str, default: int) -> int:
    """The bytes a ``..._mb`` setting of ``section`` names (``default``, in bytes, when it is
    not set); the schema has checked it is a number."""
    return int(float(section.get(key, default / (1 << 20))) * (1 << 20))


def named_tables(config: Any, section: str, key: str) -> Iterator[tuple[str, str, dict]]:
    """``(where, name, table)`` of each table of ``[[section.key]]``, in file order, once the
    name is known good and not used twice; ``where`` names the table in error messages."""
    names: set[str] = set()
    tables = config.section(section).get(key, []) if config is not None else []
    for number, table in enumerate(tables, 1):
        name = table.get("name")
        if not isinstance(name, str) or not _TABLE_NAME.match(name):
            raise ConfigError(f"[[{section}.{key}]] #{number}: name must be letters, digits, "
                              f"'.', '_', '-'")
        where = f"[[{section}.{key}]] {name}"
        if name in names:
            raise ConfigError(f"{where}: the name is used twice")
        names.add(name)
        yield where, name, table


@dataclass
class Config:
    """Parsed configuration; ``section(name)`` gives one table (empty dict when absent)."""

    raw: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None

    def section(self, name: str) -> dict[str, Any]:
        """One top-level table of the file."""
        value = self.raw.get(name, {})
        return value if isinstance(value, dict) else {}

    def get(self, section: str, key: str, default: Any = None) -> Any:
        """One setting, or its default."""
        return self.section(section).get(key, default)

    @property
    def directory_system(self) -> str:
        """user_key of the IT system whose accounts are the directory's people."""
        return str(self.get("directory", "it_system", "AD"))

    @property
    def state_dir(self) -> Path:
        """Where generated state (TLS certificate, ...) lives: beside the database."""
        return Path(self.get("directory", "state_dir", "var"))


def _type_name(kind: Any) -> str:
    if kind is _NUMBER:
        return "a number"
    if kind == _STRINGS:
        return "a list of strings"
    return {str: "a string", int: "an integer", bool: "true or false"}[kind]


def _fits(value: Any, kind: Any) -> bool:
    if kind == _STRINGS:
        return isinstance(value, list) and all(isinstance(v, str) for v in value)
    if kind is bool:
        return isinstance(value, bool)
    if isinstance(value, bool):
        return False
    if kind is _NUMBER:
        return isinstance(value, _NUMBER)
    return isinstance(value, kind)


class _Lines:
    """Where a table or key is written in the TOML text (tomllib keeps no positions)."""

    _HEADER = re.compile(r"^\s*\[\s*([^\]]+?)\s*\]\s*(#.*)?$")
    _KEY = re.compile(r"^\s*([A-Za-z0-9_\-\"']+)\s*=")

    def __init__(self, text: str) -> None:
        self.keys: dict[tuple[str, str], int] = {}
        self.tables: dict[str, int] = {}
        table = ""
        for number, line in enumerate(text.splitlines(), 1):
            header = self._HEADER.match(line)
            if header:
                table = header.group(1).replace('"', "").replace(" ", "")
                self.tables.setdefault(table, number)
                continue
            key = self._KEY.match(line)
            if key:
                self.keys.setdefault((table, key.group(1).strip("\"'")), number)

    def of(self, table: str, key: str | None = None) -> int | None:
        if key is None:
            return self.tables.get(table)
        return self.keys.get((table, key)) or self.tables.get(f"{table}.{key}") or \
            self.tables.get(table)


def _hint(key: str, known: Mapping[str, Any]) -> str:
    close = difflib.get_close_matches(key, list(known), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def check(raw: dict[str, Any], where: Any = None) -> None:
    """Raise :class:`ConfigError` for an unknown section or key or a value of the wrong type.

    ``where(table, key)`` names the place of a problem (``file:line``, or the environment
    variable)."""
    def place(table: str, key: str | None = None) -> str:
        found = where(table, key) if where is not None else None
        return f"{found}: " if found else ""

    def walk(values: dict[str, Any], schema: dict[str, Any], table: str) -> None:
        for key, value in values.items():
            name = f"{table}.{key}" if table else key
            if key not in schema:
                what = f"unknown key {key!r} in [{table}]" if table else \
                    f"unknown section [{key}]"
                raise ConfigError(f"{place(table, key) if table else place(key)}{what}"
                                  f"{_hint(key, schema)}; known: {', '.join(sorted(schema))}")
            kind = schema[key]
            if kind is None:
                if not isinstance(value, dict):
                    raise ConfigError(f"{place(name)}[{name}] must be a table of tables")
                continue
            if isinstance(kind, dict):
                if not isinstance(value, dict):
                    raise ConfigError(f"{place(table, key)}[{name}] must be a table")
                walk(value, kind, name)
                continue
            if isinstance(kind, list):  # an array of tables: [[name]]
                if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
                    raise ConfigError(f"{place(table, key)}[[{name}]] must be an array of "
                                      f"tables")
                for item in value:
                    walk(item, kind[0], name)
                continue
            if not _fits(value, kind):
                raise ConfigError(f"{place(table, key)}[{table}] {key} must be "
                                  f"{_type_name(kind)}, not {value!r}")

    walk(raw, SCHEMA, "")


def _env_value(text: str) -> Any:
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def environment(env: Mapping[str, str] | None = None
                ) -> tuple[dict[str, Any], dict[tuple[str, str | None], str]]:
    """Settings from ``IDM_FACADE_<SECTION>__<KEY>`` variables, and which variable set each
    (table, key)."""
    env = os.environ if env is None else env
    raw: dict[str, Any] = {}
    origin: dict[tuple[str, str | None], str] = {}
    for name, text in env.items():
        if not name.startswith(ENV_PREFIX) or "__" not in name[len(ENV_PREFIX):]:
            continue  # IDM_FACADE_DB, IDM_FACADE_CONFIG: options, not settings
        parts = [p.lower() for p in name[len(ENV_PREFIX):].split("__")]
        if any(not p for p in parts):
            raise ConfigError(f"{name}: empty part in the variable name")
        table = raw
        for part in parts[:-1]:
            table = table.setdefault(part, {})
            if not isinstance(table, dict):
                raise ConfigError(f"{name}: {part} is a setting, not a table")
        table[parts[-1]] = _env_value(text)
        origin[(".".join(parts[:-1]), parts[-1])] = name
        origin.setdefault((".".join(parts[:-1]), None), name)
        if len(parts) == 1:
            origin[(parts[0], None)] = name
    return raw, origin


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def load_config(path: str | os.PathLike | None = None,
                env: Mapping[str, str] | None = None) -> Config:
    """Read the TOML file at ``path`` (or ``IDM_FACADE_CONFIG``) and the environment's
    settings; :class:`ConfigError` (one line, naming file and line or variable) when
    anything is wrong."""
    env = os.environ if env is None else env
    path = path or env.get("IDM_FACADE_CONFIG")
    raw: dict[str, Any] = {}
    file: Path | None = None
    lines = _Lines("")
    if path:
        file = Path(path)
        try:
            text = file.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise ConfigError(f"{file}: no such configuration file") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{file}: cannot read: {exc}") from None
        try:
            raw = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{file}: not valid TOML: {exc}") from None
        lines = _Lines(text)
    from_env, origin = environment(env)

    def where(table: str, key: str | None) -> str | None:
        variable = origin.get((table, key))
        if variable is not None:
            return variable
        line = lines.of(table, key) if file is not None else None
        return f"{file}:{line}" if line else (str(file) if file else None)

    check(raw, where)
    check(from_env, where)
    return Config(_merge(raw, from_env), file)
