"""``[[provisioning.feed]]``: a change feed, which client reads it, which entries it carries
and how long its events are kept.

Here, with the HTTP front end that serves feeds, rather than with the planner that fills
them, because the front end sits below provisioning in the layers and both need it.

A feed belongs to one existing client (``idm-facade clients add NAME --scim``): the feed
carries what that client may read under its policy, and only that client's token reads it.
Why a client and not a policy of its own: the consumer of a feed is the same system that
reads ``/scim/v2`` to resync when its cursor is too old, and the two must agree on what it
sees.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from idm_facade.access.audit.settings import cutoff_for, parse_age
from idm_facade.config import ConfigError, named_tables

#: Group kinds a feed may carry.
GROUP_KINDS = ("role", "rolegroup", "unit")
DEFAULT_RETENTION = "30d"
_SECONDS = re.compile(r"^\s*(\d+)\s*(s|sec|secs|seconds?)\s*$", re.IGNORECASE)


@dataclass(frozen=True)
class Feed:
    """One configured change feed."""

    name: str
    client: str
    #: A SCIM filter narrowing the users carried (the facade's own filter language).
    filter: str | None = None
    groups: tuple[str, ...] = GROUP_KINDS
    #: How long events are kept: an age as ``[audit] retention`` takes (``30d``, ``6months``),
    #: or seconds (``90s``).
    retention: str = DEFAULT_RETENTION

    def cutoff(self, now: datetime) -> datetime:
        """Events recorded before this instant are pruned."""
        seconds = _SECONDS.match(self.retention)
        if seconds:
            return now - timedelta(seconds=int(seconds.group(1)))
        return cutoff_for(self.retention, now)

    @property
    def lease_name(self) -> str:
        """The name of the feed's planner lease (shared table with the targets')."""
        return f"feed:{self.name}"


def feeds(config: Any) -> list[Feed]:
    """Every configured feed (ConfigError naming the feed and key when one is wrong)."""
    found: list[Feed] = []
    for where, name, table in named_tables(config, "provisioning", "feed"):
        client = table.get("client")
        if not isinstance(client, str) or not client:
            raise ConfigError(f"{where}: client must name the client that reads the feed "
                              f"(idm-facade clients add NAME --scim)")
        groups = tuple(table.get("groups", list(GROUP_KINDS)))
        bad = sorted(set(groups) - set(GROUP_KINDS))
        if bad:
            raise ConfigError(f"{where}: groups {bad} unknown; use {', '.join(GROUP_KINDS)}")
        retention = str(table.get("retention", DEFAULT_RETENTION))
        if not _SECONDS.match(retention):
            try:
                parse_age(retention)
            except ValueError as exc:
                raise ConfigError(f"{where}: retention: {exc}, or seconds like 90s") from None
        found.append(Feed(name=name, client=client, filter=table.get("filter"),
                          groups=groups, retention=retention))
    return found
