"""``[[provisioning.target]]``: where to push, with what credentials, which entries, and what a
leaver becomes."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from idm_facade.config import ConfigError

#: Group kinds a target may take: roles, role groups, units.
GROUP_KINDS = ("role", "rolegroup", "unit")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,47}$")


@dataclass(frozen=True)
class Target:
    """One outbound SCIM target."""

    name: str
    url: str
    token: str | None
    ca_file: str | None = None
    #: The facade policy the target reads through (which entries and attributes it gets).
    policy: str = "default"
    #: A SCIM filter (the facade's own filter language) narrowing the users pushed.
    filter: str | None = None
    groups: tuple[str, ...] = ("role",)
    #: What an account that is no longer pushed becomes there: ``disable`` (active=false)
    #: or ``delete``.
    leaver: str = "disable"
    timeout: float = 10.0
    #: Deliveries sent per round before the outbox is looked at again.
    batch: int = 200

    @property
    def client_name(self) -> str:
        """The name access records give this target's pushes."""
        return f"provisioning:{self.name}"


def _token(raw: Any, where: str) -> str | None:
    if raw is None:
        return None
    text = str(raw)
    if text.startswith("env:"):  # keep the secret out of the file
        value = os.environ.get(text[4:])
        if not value:
            raise ConfigError(f"{where}: token comes from ${text[4:]}, which is not set")
        return value
    return text


def targets(config: Any) -> list[Target]:
    """Every configured target (ConfigError naming the target and key when one is wrong)."""
    found: list[Target] = []
    tables = config.section("provisioning").get("target", []) if config is not None else []
    for number, table in enumerate(tables, 1):
        where = f"[[provisioning.target]] #{number}"
        name = table.get("name")
        if not isinstance(name, str) or not _NAME.match(name):
            raise ConfigError(f"{where}: name must be letters, digits, '.', '_', '-'")
        where = f"[[provisioning.target]] {name}"
        if any(t.name == name for t in found):
            raise ConfigError(f"{where}: the name is used twice")
        url = str(table.get("url", ""))
        if urlsplit(url).scheme not in ("http", "https") or not urlsplit(url).hostname:
            raise ConfigError(f"{where}: url must be the target's http(s) SCIM base URL")
        groups = tuple(table.get("groups", ["role"]))
        bad = sorted(set(groups) - set(GROUP_KINDS))
        if bad:
            raise ConfigError(f"{where}: groups {bad} unknown; use {', '.join(GROUP_KINDS)}")
        leaver = str(table.get("leaver", "disable"))
        if leaver not in ("disable", "delete"):
            raise ConfigError(f"{where}: leaver is \"disable\" or \"delete\"")
        found.append(Target(name=name, url=url.rstrip("/"),
                            token=_token(table.get("token"), where),
                            ca_file=table.get("ca_file"),
                            policy=str(table.get("policy", "default")),
                            filter=table.get("filter"), groups=groups, leaver=leaver,
                            timeout=float(table.get("timeout", 10.0)),
                            batch=int(table.get("batch", 200))))
    return found
