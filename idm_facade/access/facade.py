"""The parts one facade process shares between its front ends (built by ``runtime``).

SCIM, LDAP and the role-lookup API each get the same :class:`Facade`: the directory to read,
the client registry to authenticate against, the access log to record in, and the
configuration. Front ends never touch the store; they read ``facade.directory.snapshot``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from idm_facade.config import Config
from idm_facade.directory import Directory

if TYPE_CHECKING:  # the modules below import the directory too
    from idm_facade.access.audit import AuditLog
    from idm_facade.access.clients import ClientRegistry


@dataclass
class Facade:
    """Everything a front end needs, built once per process by ``idm-facade serve``."""

    directory: Directory
    clients: ClientRegistry
    audit: AuditLog
    config: Config
