"""The directory: an in-memory, indexed read model of the store as of now."""

from idm_facade.directory.directory import Directory, build_snapshot
from idm_facade.directory.entries import Entry
from idm_facade.directory.policy import Policy
from idm_facade.directory.snapshot import Snapshot

__all__ = ["Directory", "Entry", "Policy", "Snapshot", "build_snapshot"]
