"""How much work one request may ask of the directory.

A bound client can send a filter of any size: 20,000 substring terms cost the planner tens of
seconds, and a deeply nested one exhausts a recursive parser. Both protocols measure what
they received before translating it (LDAP the decoded filter, SCIM the filter text) and refuse
what is over the limits with their own error (LDAP adminLimitExceeded, SCIM 400 tooMany); a
search that is within them but still slow is stopped at the deadline by the planner
(:class:`Deadline`).

The limits come from ``[limits]`` in the configuration: ``filter_terms`` (comparisons in one
filter, default 500), ``filter_depth`` (nesting of and/or/not and value paths, default 32)
and ``search_seconds`` (planning and evaluation of one search, default 10).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

DEFAULT_TERMS = 500
DEFAULT_DEPTH = 32
DEFAULT_SECONDS = 10.0


class TooComplex(ValueError):
    """A filter over the configured limits; the message names the limit."""


class TooLong(RuntimeError):
    """A search that did not finish before its deadline."""


@dataclass(frozen=True)
class Limits:
    """The configured limits of one request."""

    terms: int = DEFAULT_TERMS
    depth: int = DEFAULT_DEPTH
    seconds: float = DEFAULT_SECONDS

    @classmethod
    def from_config(cls, config: Any) -> Limits:
        """``[limits]`` of the configuration (defaults where a key is absent)."""
        section = config.section("limits") if config is not None else {}
        return cls(int(section.get("filter_terms", DEFAULT_TERMS)),
                   int(section.get("filter_depth", DEFAULT_DEPTH)),
                   float(section.get("search_seconds", DEFAULT_SECONDS)))

    def check(self, terms: int, depth: int) -> None:
        """Raise :class:`TooComplex` when a filter of ``terms`` comparisons nested ``depth``
        deep is over the limits."""
        if depth > self.depth:
            raise TooComplex(f"filter nested {depth} deep; the limit is {self.depth}")
        if terms > self.terms:
            raise TooComplex(f"filter has {terms} terms; the limit is {self.terms}")

    def deadline(self) -> Deadline:
        """The deadline of a search starting now (``search_seconds`` from now)."""
        return Deadline(time.monotonic() + self.seconds if self.seconds > 0 else None)


@dataclass(frozen=True)
class Deadline:
    """When a search must have finished (monotonic clock; None: never)."""

    at: float | None = None

    def check(self) -> None:
        """Raise :class:`TooLong` when the deadline has passed."""
        if self.at is not None and time.monotonic() > self.at:
            raise TooLong("the search took longer than its time limit")


NO_DEADLINE = Deadline()


def text_shape(text: str) -> tuple[int, int]:
    """(terms, depth) of a filter written with parentheses and ``and``/``or``/``not``
    (SCIM), measured on the text alone so a parser never sees what is over the limits.

    Terms are counted as comparison operators; depth as the deepest nesting of parentheses
    and brackets. Quoted strings are skipped."""
    terms = depth = deepest = 0
    in_string = escaped = False
    word: list[str] = []
    for char in text:
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
            continue
        if char == '"':
            in_string = True
        elif char in "([":
            depth += 1
            deepest = max(deepest, depth)
        elif char in ")]":
            depth -= 1
        if char.isalpha():
            word.append(char.lower())
            continue
        if word:
            terms += "".join(word) in _SCIM_OPERATORS
            word = []
    if word:
        terms += "".join(word) in _SCIM_OPERATORS
    return terms, deepest


_SCIM_OPERATORS = frozenset({"eq", "ne", "co", "sw", "ew", "pr", "gt", "ge", "lt", "le"})
