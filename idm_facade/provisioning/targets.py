"""``[[provisioning.target]]``: where to push, with what credentials, which entries, and what a
leaver becomes.

Credentials are either a fixed bearer ``token`` or OAuth 2.0 client credentials (RFC 6749
§4.4: ``token_url``, ``client_id``, ``client_secret``, optional ``scope``), never both and
never neither: a target taking anonymous writes is a misconfiguration, and two ways to
authenticate would leave the operator guessing which one is used. Secrets are kept out of
the dataclass's ``repr`` so no log line or error message can carry one."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from idm_facade.config import ConfigError, named_tables

#: Group kinds a target may take: roles, role groups, units.
GROUP_KINDS = ("role", "rolegroup", "unit")


@dataclass(frozen=True)
class OAuth:
    """OAuth 2.0 client credentials of a target (RFC 6749 §4.4)."""

    token_url: str
    client_id: str
    client_secret: str = field(repr=False)
    scope: str | None = None


@dataclass(frozen=True)
class Target:
    """One outbound SCIM target."""

    name: str
    url: str
    token: str | None = field(repr=False)
    ca_file: str | None = None
    #: Client credentials to get access tokens with, instead of a fixed ``token``.
    oauth: OAuth | None = None
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


def _secret(raw: Any, where: str, key: str = "token") -> str | None:
    """A secret as written, or from the environment with ``env:VAR``."""
    if raw is None:
        return None
    text = str(raw)
    if text.startswith("env:"):  # keep the secret out of the file
        value = os.environ.get(text[4:])
        if not value:
            raise ConfigError(f"{where}: {key} comes from ${text[4:]}, which is not set")
        return value
    return text


_OAUTH_KEYS = ("token_url", "client_id", "client_secret")


def _oauth(table: dict, where: str) -> OAuth | None:
    """The client credentials of a target, or None when it uses a fixed ``token``; exactly
    one of the two."""
    given = [k for k in (*_OAUTH_KEYS, "scope") if k in table]
    has_token = "token" in table
    if has_token and given:
        raise ConfigError(f"{where}: give either token or token_url/client_id/client_secret "
                          f"(OAuth client credentials), not both")
    if has_token:
        return None
    missing = [k for k in _OAUTH_KEYS if k not in table]
    if not given:
        raise ConfigError(f"{where}: give token (a bearer token) or token_url, client_id and "
                          f"client_secret (OAuth client credentials)")
    if missing:
        raise ConfigError(f"{where}: OAuth client credentials need {', '.join(missing)} too")
    url = str(table["token_url"])
    if urlsplit(url).scheme not in ("http", "https") or not urlsplit(url).hostname:
        raise ConfigError(f"{where}: token_url must be the authorization server's http(s) "
                          f"token endpoint")
    secret = _secret(table["client_secret"], where, "client_secret")
    assert secret is not None
    scope = table.get("scope")
    return OAuth(token_url=url, client_id=str(table["client_id"]), client_secret=secret,
                 scope=str(scope) if scope else None)


def targets(config: Any) -> list[Target]:
    """Every configured target (ConfigError naming the target and key when one is wrong)."""
    found: list[Target] = []
    for where, name, table in named_tables(config, "provisioning", "target"):
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
        oauth = _oauth(table, where)
        found.append(Target(name=name, url=url.rstrip("/"),
                            token=_secret(table.get("token"), where),
                            ca_file=table.get("ca_file"), oauth=oauth,
                            policy=str(table.get("policy", "default")),
                            filter=table.get("filter"), groups=groups, leaver=leaver,
                            timeout=float(table.get("timeout", 10.0)),
                            batch=int(table.get("batch", 200))))
    return found
