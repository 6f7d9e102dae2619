"""The settings of person binds, ``[ldap.upstream]`` and ``[ldap.persons]``, apart from the code
that uses them: ``serve`` reads them before it forks its workers, and importing the binding
code would start Twisted's reactor in the parent, whose epoll the workers would then share.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from idm_facade.access.addresses import Network, contains, networks
from idm_facade.access.throttle import ThrottleConfigError, ThrottleSettings


class UpstreamConfigError(ValueError):
    """``[ldap.upstream]`` is malformed (the message names the key)."""


@dataclass(frozen=True)
class UpstreamSettings:
    """The ``[ldap.upstream]`` table."""

    urls: tuple[str, ...]
    dn_template: str | None = None
    search_base: str | None = None
    search_filter: str = "(uid={username})"
    bind_dn: str | None = None
    bind_password: str | None = None
    ca_file: str | None = None
    starttls: bool = False
    timeout: float = 5.0
    pool_size: int = 8
    #: Refuse, at start, an upstream reached in clear (an ``ldap://`` URL without StartTLS):
    #: every person's password, and the search account's, would cross the network as typed.
    #: False only where nobody can listen on the path, such as loopback.
    require_tls: bool = True

    @classmethod
    def from_config(cls, config: Any) -> UpstreamSettings | None:
        """The settings, None when no upstream is configured (person binds are then off).
        Keys and types are checked by the configuration's schema (:mod:`idm_facade.config`);
        what is checked here is what only this table knows."""
        ldap = config.section("ldap") if config is not None else {}
        table = ldap.get("upstream")
        if table is None:
            return None
        if not isinstance(table, dict):
            raise UpstreamConfigError("[ldap.upstream] must be a table")
        urls = table.get("urls")
        if not isinstance(urls, list) or not urls or not all(isinstance(u, str) for u in urls):
            raise UpstreamConfigError("[ldap.upstream] urls must be a non-empty list of "
                                      "ldap:// or ldaps:// URLs")
        for url in urls:
            if urlsplit(url).scheme not in ("ldap", "ldaps") or not urlsplit(url).hostname:
                raise UpstreamConfigError(f"[ldap.upstream] urls: {url!r} is not an ldap:// "
                                          f"or ldaps:// URL")
        template = table.get("dn_template")
        base = table.get("search_base")
        if (template is None) == (base is None):
            raise UpstreamConfigError("[ldap.upstream] needs either dn_template or "
                                      "search_base (search-then-bind), not both")
        if template is not None and "{username}" not in str(template):
            raise UpstreamConfigError("[ldap.upstream] dn_template must contain {username}")
        search_filter = str(table.get("search_filter", cls.search_filter))
        if "{username}" not in search_filter:
            raise UpstreamConfigError("[ldap.upstream] search_filter must contain {username}")
        ca_file = table.get("ca_file")
        if ca_file is not None and not Path(str(ca_file)).is_file():
            raise UpstreamConfigError(f"[ldap.upstream] ca_file {ca_file!r} does not exist")
        starttls = bool(table.get("starttls", False))
        clear = [u for u in urls if urlsplit(u).scheme == "ldap"] if not starttls else []
        if clear and table.get("require_tls", cls.require_tls):
            # Windows Server 2025 domain controllers refuse such binds by default anyway
            # (strongerAuthRequired): LDAP signing is required on new forests.
            raise UpstreamConfigError(
                f"[ldap.upstream] urls: {clear[0]!r} would send persons' passwords to the "
                f"upstream in clear: use ldaps:// or starttls = true (require_tls = false "
                f"allows it where nobody can listen on the path, such as loopback)")
        try:
            timeout = float(table.get("timeout", cls.timeout))
            pool_size = int(table.get("pool_size", cls.pool_size))
        except (TypeError, ValueError) as exc:
            raise UpstreamConfigError(f"[ldap.upstream] timeout/pool_size: {exc}") from None
        if timeout <= 0 or pool_size < 1:
            raise UpstreamConfigError("[ldap.upstream] timeout must be > 0 and pool_size >= 1")
        return cls(urls=tuple(urls), dn_template=str(template) if template else None,
                   search_base=str(base) if base else None, search_filter=search_filter,
                   bind_dn=table.get("bind_dn"), bind_password=table.get("bind_password"),
                   ca_file=str(ca_file) if ca_file else None,
                   starttls=starttls, timeout=timeout, pool_size=pool_size,
                   require_tls=bool(table.get("require_tls", cls.require_tls)))


class PersonsConfigError(ValueError):
    """``[ldap.persons]`` is malformed (the message names the key)."""


@dataclass(frozen=True)
class PersonSettings:
    """``[ldap.persons]``."""

    policy: str = "person"
    upn_suffixes: tuple[str, ...] | None = None
    domains: tuple[str, ...] | None = None
    #: Refuse person binds on connections without TLS (the password is the person's AD
    #: password); false only where the path cannot be listened to, such as loopback.
    require_tls: bool = True
    account: ThrottleSettings = ThrottleSettings()
    address: ThrottleSettings = ThrottleSettings(delay_after=10, lockout_after=50)
    #: Addresses whose failures count per account only: systems that log people in on their
    #: behalf through a login form (Nextcloud, GitLab). Counted per address, every typo of
    #: everyone logging in through one would slow, then lock, all their logins.
    address_exempt: tuple[Network, ...] = ()

    def exempt(self, host: str) -> bool:
        """Are failures from ``host`` (a peer address as the transport gives it) left
        uncounted per address?"""
        return contains(self.address_exempt, host)

    @classmethod
    def from_config(cls, config: Any) -> PersonSettings:
        ldap = config.section("ldap") if config is not None else {}
        table = ldap.get("persons", {})
        if not isinstance(table, dict):
            raise PersonsConfigError("[ldap.persons] must be a table")
        lists: dict[str, tuple[str, ...] | None] = {}
        for key in ("upn_suffixes", "domains"):
            value = table.get(key)
            if value is not None and (not isinstance(value, list) or not all(
                    isinstance(v, str) and v for v in value)):
                raise PersonsConfigError(f"[ldap.persons] {key} must be a list of names")
            lists[key] = tuple(v.casefold() for v in value) if value is not None else None
        try:
            account = ThrottleSettings.from_table(table, "account_")
            address = ThrottleSettings.from_table(
                {"address_delay_after": 10, "address_lockout_after": 50, **table}, "address_")
        except ThrottleConfigError as exc:
            raise PersonsConfigError(f"[ldap.persons] {exc}") from None
        require_tls = table.get("require_tls", cls.require_tls)
        if not isinstance(require_tls, bool):
            raise PersonsConfigError("[ldap.persons] require_tls must be true or false")
        try:
            exempt = networks(table.get("address_exempt"), "address_exempt")
        except ValueError as exc:
            raise PersonsConfigError(f"[ldap.persons] {exc}") from None
        return cls(policy=str(table.get("policy", cls.policy)),
                   upn_suffixes=lists["upn_suffixes"], domains=lists["domains"],
                   require_tls=require_tls, account=account, address=address,
                   address_exempt=exempt)
