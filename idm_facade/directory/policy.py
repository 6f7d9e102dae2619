"""What one client may see, in the directory's own terms.

A :class:`Policy` is applied *inside* the query (policy before paging): the planner's universe
is the set of entries the policy admits, and every attribute the client may not read is
rewritten to "absent" before the filter runs. So totals, result sets and page boundaries never
depend on hidden data, and a filter cannot probe a hidden attribute.

Policies are loaded and attached to clients by ``idm_facade.access.clients``; this module
only says what one means.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field

from schemas.attributes import ACCOUNT, ALL_KINDS, ATTRIBUTES, VISIBILITIES

#: Physical suffix for values of sensitive job titles (masked unless granted).
SENSITIVE_TITLE = "title@SENSITIVE"


@dataclass(frozen=True)
class Policy:
    """Read permissions of one client.

    ``subtrees``: unit ids; when set, only those units (and descendants) and the accounts with
    an engagement in them are visible; roles and role groups stay visible but list only visible
    members. ``attributes``: when set, the only directory attributes the client may read (id,
    kind and userName are always readable). ``cpr``: CPR numbers readable. ``max_visibility``:
    PUBLIC or INTERNAL; SECRET addresses are never in the directory. ``sensitive_titles``: see
    sensitive job titles instead of a mask.
    """

    name: str = "anonymous"
    kinds: frozenset[str] = ALL_KINDS
    subtrees: tuple[str, ...] | None = None
    attributes: frozenset[str] | None = None
    cpr: bool = False
    max_visibility: str = "PUBLIC"
    sensitive_titles: bool = False
    #: Internal clients may be granted INTERNAL visibility; external ones never.
    internal: bool = False
    extra: dict = field(default_factory=dict, compare=False, hash=False)

    def __hash__(self) -> int:
        return hash((self.name, self.kinds, self.subtrees, self.attributes, self.cpr,
                     self.max_visibility, self.sensitive_titles))

    @property
    def fingerprint(self) -> str:
        """A digest of what this policy lets a client see, equal in every process.

        ``hash()`` would not do: string hashing is salted per process and ``hash(None)``
        follows an address, so two replicas behind a load balancer would disagree about the
        same policy (and refuse each other's SCIM cursors). Every field that changes what the
        client sees is in it, so a cursor issued under another policy is refused.
        """
        parts = [self.name, sorted(self.kinds),
                 list(self.subtrees) if self.subtrees is not None else None,
                 sorted(self.attributes) if self.attributes is not None else None,
                 self.cpr, self.max_visibility, self.sensitive_titles, self.internal]
        text = json.dumps(parts, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    @property
    def visibilities(self) -> tuple[str, ...]:
        """Address visibility buckets this client may read."""
        if self.max_visibility == "INTERNAL" and self.internal:
            return VISIBILITIES
        return VISIBILITIES[:1]

    def may_read(self, attr: str) -> bool:
        """May this client read (and so filter on) directory attribute ``attr``?"""
        base = attr.split("@", 1)[0]
        if base in ("id", "kind", "userName"):
            return True
        spec = ATTRIBUTES.get(base)
        if spec is not None and spec.sensitivity == "cpr" and not self.cpr:
            return False
        if self.attributes is not None and base not in self.attributes:
            complex_of = spec.complex_of if spec else None
            return complex_of is not None and complex_of in self.attributes
        return True

    def physical(self, attr: str) -> tuple[str, ...]:
        """Physical directory names that hold what this client sees of ``attr`` (may be ())."""
        if not self.may_read(attr):
            return ()
        spec = ATTRIBUTES.get(attr)
        if spec is None:
            return (attr,)
        if spec.sensitivity == "visibility":
            return spec.physical_names(self.visibilities)
        if spec.sensitivity == "title" and self.sensitive_titles:
            return (attr, SENSITIVE_TITLE)
        return (attr,)

    def may_read_complex(self, name: str) -> bool:
        """May the client read complex attribute ``name`` (emails, engagements, ...)?"""
        if self.attributes is None:
            return True
        return name in self.attributes or any(
            a.complex_of == name and a.name in self.attributes for a in ATTRIBUTES.values()
        )


#: Full read access short of CPR: what the directory's own tools (CLI) use.
TRUSTED = Policy(name="trusted", max_visibility="INTERNAL", internal=True,
                 sensitive_titles=True)
#: Everything including CPR; for administrators' tooling only.
ALL = Policy(name="all", max_visibility="INTERNAL", internal=True, sensitive_titles=True,
             cpr=True)
ACCOUNTS_ONLY = frozenset({ACCOUNT})
