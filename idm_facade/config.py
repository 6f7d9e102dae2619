"""Facade configuration: an optional TOML file, with defaults that make the demo work.

Each part of the facade reads its own table: ``[directory]``, ``[ldap]``, ``[scim]``,
``[audit]``, ``[policies.<name>]``. The file is ``--config PATH`` or ``IDM_FACADE_CONFIG``;
without one every default below applies. A municipality adapts local terms by configuration,
not code.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


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
        """Where generated state lives (TLS certificate, ...): beside the database."""
        return Path(self.get("directory", "state_dir", "var"))


def load_config(path: str | os.PathLike | None = None) -> Config:
    """Read the TOML file at ``path`` (or ``IDM_FACADE_CONFIG``); defaults when neither."""
    path = path or os.environ.get("IDM_FACADE_CONFIG")
    if not path:
        return Config()
    file = Path(path)
    with file.open("rb") as handle:
        return Config(tomllib.load(handle), file)
