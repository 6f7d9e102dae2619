"""Clients, their hashed credentials, and the policies that say what each may read.

A *client* is a system that reads the directory: over SCIM (and the role-lookup API) with a
bearer token, or over LDAP with a simple bind as ``cn=<name>,ou=clients,<base dn>``. Each
client has a named *policy* (:class:`~idm_facade.directory.policy.Policy`) from the facade
configuration (``[policies.<name>]``) or one of the built-ins below.

Clients are facade state, not organisation data: they live in their own table
(``facade_client``) with their own SQLAlchemy metadata, by default in the store's database,
created on first use. The store never imports this module.

Secrets are stored only as Argon2id hashes (memory-hard). A bearer token looks like
``idmf_<id>_<secret>``: the non-secret ``<id>`` finds the row without scanning, the hash is
verified once, and the successful verification is cached in memory under the SHA-256 of the
token, so repeated requests cost a dictionary look-up instead of an Argon2 run. The cache is
dropped on revoke/rotate in this process, and each cached entry re-checks the row's
generation counter at most every :data:`RECHECK_SECONDS`, so a revocation made by another
process (the ``idm-facade clients revoke`` command against a running server) takes effect
within about a second. LDAP binds use the same scheme keyed by DN and password.
"""

from __future__ import annotations

import hashlib
import logging
import re
import secrets
import threading
import time
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import DateTime, Engine, Integer, String, func, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from idm_facade.access.policies import load_policies
from idm_facade.config import Config
from idm_facade.directory.policy import Policy
from idm_facade.directory.snapshot import Snapshot
from store.validity import utcnow

log = logging.getLogger(__name__)

SCIM, LDAP = "scim", "ldap"
KINDS = (SCIM, LDAP)
#: The kind of a person bound over LDAP (verified upstream; not a registered client).
PERSON = "person"
TOKEN_PREFIX = "idmf"
#: How long a cached successful verification is trusted before the row is looked at again.
RECHECK_SECONDS = 1.0
#: An event loop hands a client's check to a thread this long before its re-check falls due,
#: so a check it makes in the same turn never waits on the store in the loop; in that thread
#: the re-check is due from then on (else the request would have hopped for nothing).
LOOP_MARGIN = 0.1
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_CACHE_LIMIT = 10_000

class ClientError(ValueError):
    """A client operation cannot be done (unknown name, duplicate, unknown policy, ...)."""


def bearer_token(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header value (the scheme is
    case-insensitive, RFC 9110 §11.1), or None. One parser for SCIM and the role API."""
    scheme, _, value = (authorization or "").partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return None


def base_dn(config: Config, snapshot: Snapshot | None = None) -> str:
    """The LDAP base DN: ``[ldap] base_dn``, else ``dc=<municipality user_key>,dc=dk``.

    ``snapshot`` is a directory snapshot (its ``data.organisation`` names the
    municipality); without one or without an organisation the default is ``dc=kommune,dc=dk``.
    """
    configured = config.get("ldap", "base_dn")
    if configured:
        return str(configured)
    org = None
    if snapshot is not None:
        org = getattr(snapshot.data, "organisation", None)
    return _dn_from_org_key(org.user_key if org is not None else None)


def _dn_from_org_key(user_key: str | None) -> str:
    key = re.sub(r"[^a-z0-9-]", "", (user_key or "").lower()) or "kommune"
    return f"dc={key},dc=dk"


def normalise_dn(dn: str) -> str:
    """A DN in comparison form: attribute names and values case-folded, spaces around ``=``
    and ``,`` removed, escapes kept. ``CN = X , ou=Clients,DC=a`` == ``cn=x,ou=clients,dc=a``.
    Memoised for DNs of ordinary length: a service account binds with the same DN again and
    again, and reading it character by character was about 4 % of a cached bind's time in
    the event loop (long ones are not kept, so nobody can fill memory with them)."""
    return _normalised(dn) if len(dn) <= 256 else _normalise(dn)


@lru_cache(maxsize=4096)
def _normalised(dn: str) -> str:
    return _normalise(dn)


def _normalise(dn: str) -> str:
    parts: list[str] = []
    current: list[str] = []
    escaped = False
    for char in dn:
        if escaped:
            current.append(char)
            escaped = False
        elif char == "\\":
            current.append(char)
            escaped = True
        elif char in ",;":
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    parts.append("".join(current))
    out = []
    for rdn in parts:
        attr, sep, value = rdn.partition("=")
        if not sep:
            return dn.strip().casefold()
        out.append(f"{attr.strip().casefold()}={value.strip().casefold()}")
    return ",".join(out)


# --------------------------------------------------------------------------- storage


class AuthBase(DeclarativeBase):
    """Metadata of the facade's own client table (not organisation data)."""


class ClientRow(AuthBase):
    """One registered client. ``generation`` increases on every rotate and revoke, so cached
    verifications can tell they are stale."""

    __tablename__ = "facade_client"
    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    kind: Mapped[str] = mapped_column(String(8))
    policy: Mapped[str] = mapped_column(String(100))
    token_id: Mapped[str | None] = mapped_column(String(32), unique=True, index=True)
    secret_hash: Mapped[str] = mapped_column(String(200))
    created: Mapped[datetime] = mapped_column(DateTime)
    rotated: Mapped[datetime | None] = mapped_column(DateTime)
    revoked: Mapped[datetime | None] = mapped_column(DateTime)
    generation: Mapped[int] = mapped_column(Integer, default=1)


@dataclass(frozen=True)
class Client:
    """An authenticated client and the policy its reads go through."""

    name: str
    kind: str
    policy: Policy
    bind_dn: str | None = None
    #: The credentials' generation (rotate and revoke increase it): a session bound with
    #: older credentials is no longer valid (:meth:`ClientRegistry.current`).
    generation: int = 0


@dataclass(frozen=True)
class ClientInfo:
    """What ``clients list`` shows (never a secret)."""

    name: str
    kind: str
    policy: str
    bind_dn: str | None
    created: datetime
    rotated: datetime | None
    revoked: datetime | None


@dataclass
class _Cached:
    name: str
    generation: int
    checked: float


#: Credentials of the demo clients (``idm-facade demo`` only; never made otherwise).
DEMO_SCIM_TOKEN = "idmf_demoscim_demo-scim-token-change-me"
DEMO_CPR_TOKEN = "idmf_democpr_demo-cpr-token-change-me"
DEMO_LDAP_PASSWORD = "demo-ldap-password"


def _token_key(token: str) -> bytes | None:
    """The verification cache's key of a bearer token; None for what is not one of ours."""
    if not isinstance(token, str) or not token.startswith(TOKEN_PREFIX + "_"):
        return None
    return hashlib.sha256(b"T\0" + token.encode()).digest()


def _bind_key(norm: str, password: str) -> bytes:
    """The verification cache's key of a bind (normalised DN and password)."""
    return hashlib.sha256(b"B\0" + norm.encode() + b"\0" + password.encode()).digest()


class ClientRegistry:
    """Registered clients: add, revoke, rotate, list; authenticate tokens and binds."""

    def __init__(self, engine: Engine, config: Config | None = None, *,
                 hasher: PasswordHasher | None = None) -> None:
        self.engine = engine
        self.config = config or Config()
        self.policies = load_policies(self.config)
        self.hasher = hasher or PasswordHasher()
        self._cache: dict[bytes, _Cached] = {}
        self._lock = threading.Lock()
        self._resolved: dict[str, Policy] = {}
        self._base: str | None = None
        #: name -> (kind, policy name) of clients with cached verifications.
        self._meta: dict[str, tuple[str, str, int]] = {}
        #: name -> the Client built from ``_meta`` and its policy, reused by every request;
        #: dropped whenever either changes (``_epoch`` counts those changes).
        self._clients: dict[str, Client] = {}
        self._epoch = 0
        #: name -> when its row was last looked at for :meth:`current`.
        self._live: dict[str, float] = {}
        #: Names whose row is being looked at now: nobody else waits on the store for them
        #: meanwhile (a hung store holds up one request per client, not every one).
        self._rechecking: set[str] = set()
        #: Threads running an event loop (:meth:`mark_event_loop`).
        self._loops: set[int] = set()
        self._away_logged = -1e9
        AuthBase.metadata.create_all(engine)

    def reload(self, config: Config) -> None:
        """Take the policies of ``config`` (SIGHUP; PolicyError when one is malformed, and
        nothing changes): every client's next request reads through its policy as it is now,
        and its store row is looked at again."""
        policies = load_policies(config)
        with self._lock:
            self.config = config
            self.policies = policies
            self._resolved.clear()
            self._clients.clear()
            self._meta.clear()
            self._live.clear()
            for hit in self._cache.values():
                hit.checked = float("-inf")  # look at the row again before trusting it
            self._epoch += 1

    # ------------------------------------------------------------------ policies

    def policy(self, name: str) -> Policy:
        """The named policy with subtree user_keys resolved to unit ids (ClientError if
        unknown)."""
        with self._lock:
            found = self._resolved.get(name)
        if found is not None:
            return found
        raw = self.policies.get(name)
        if raw is None:
            raise ClientError(f"unknown policy {name!r}; known: "
                              f"{', '.join(sorted(self.policies))}")
        resolved = self._resolve_subtrees(raw)
        with self._lock:
            self._resolved[name] = resolved
        return resolved

    def _resolve_subtrees(self, policy: Policy) -> Policy:
        if not policy.subtrees:
            return policy
        from dataclasses import replace

        from store.models import OrgUnit

        ids: list[str] = []
        with Session(self.engine) as session:
            for ref in policy.subtrees:
                rows = session.scalars(select(OrgUnit.id).where(
                    (OrgUnit.id == ref) | (OrgUnit.user_key == ref))).all()
                if not rows:
                    # Fail closed: an unknown unit admits nothing.
                    log.warning("policy %s: subtree %r is no known unit", policy.name, ref)
                    ids.append(ref)
                ids.extend(r for r in rows if r not in ids)
        return replace(policy, subtrees=tuple(ids))

    def anonymous_policy(self) -> Policy | None:
        """The policy of anonymous LDAP binds, or None (the default: anonymous is off)."""
        if self.config.get("ldap", "anonymous", False) is not True:
            return None
        return self.policy(str(self.config.get("ldap", "anonymous_policy", "default")))

    # ------------------------------------------------------------------ base DN

    @property
    def base(self) -> str:
        """The LDAP base DN client bind DNs hang under (config, else the organisation)."""
        if self._base is None:
            configured = self.config.get("ldap", "base_dn")
            if configured:
                self._base = str(configured)
            else:
                from store.models import Organisation

                try:
                    with Session(self.engine) as session:
                        key = session.scalar(select(Organisation.user_key).limit(1))
                except Exception:  # noqa: BLE001 - no store tables yet
                    key = None
                if key is None:
                    return _dn_from_org_key(None)  # not cached: the store may fill later
                self._base = _dn_from_org_key(key)
        return self._base

    def bind_dn_of(self, name: str) -> str:
        """The bind DN of LDAP client ``name``."""
        return f"cn={name},ou=clients,{self.base}"

    # ------------------------------------------------------------------ management

    def _new_secret(self, kind: str) -> tuple[str | None, str, str]:
        """(token id, secret as given to the client, what is hashed)."""
        if kind == SCIM:
            token_id = secrets.token_hex(6)
            token = f"{TOKEN_PREFIX}_{token_id}_{secrets.token_urlsafe(32)}"
            return token_id, token, token
        password = secrets.token_urlsafe(24)
        return None, password, password

    def add(self, name: str, kind: str, policy_name: str = "default") -> str:
        """Register a client; returns its secret (token or password), shown only once."""
        if not _NAME.match(name or ""):
            raise ClientError(f"invalid client name {name!r}: use letters, digits, '.', '_' "
                              f"and '-' (at most 64, starting with a letter or digit)")
        if kind not in KINDS:
            raise ClientError(f"client kind must be scim or ldap, not {kind!r}")
        self.policy(policy_name)
        token_id, secret, hashed = self._new_secret(kind)
        return self._store(name, kind, policy_name, token_id, secret, hashed, create=True)

    def _store(self, name: str, kind: str, policy_name: str, token_id: str | None,
               secret: str, hashed: str, *, create: bool) -> str:
        digest = self.hasher.hash(hashed)
        with Session(self.engine) as session, session.begin():
            row = session.get(ClientRow, name)
            if create and row is not None:
                state = " (revoked)" if row.revoked else ""
                raise ClientError(f"client {name!r} already exists{state}")
            if row is None:
                row = ClientRow(name=name, kind=kind, policy=policy_name, created=utcnow(),
                                generation=1)
                session.add(row)
            else:
                row.kind, row.policy = kind, policy_name
                row.revoked = None
                row.rotated = utcnow()
                row.generation = (row.generation or 0) + 1
            row.token_id = token_id
            row.secret_hash = digest
        self._forget(name)
        return secret

    def revoke(self, name: str) -> None:
        """Revoke a client: its credentials stop working (in this process at once, in other
        processes within :data:`RECHECK_SECONDS`)."""
        with Session(self.engine) as session, session.begin():
            row = session.get(ClientRow, name)
            if row is None:
                raise ClientError(f"no client named {name!r}")
            if row.revoked is None:
                row.revoked = utcnow()
            row.generation = (row.generation or 0) + 1
            row.token_id = None
        self._forget(name)

    def set_policy(self, name: str, policy_name: str) -> None:
        """Give client NAME another policy (which must exist); sessions and cursors it holds
        follow at their next operation (other processes: within :data:`RECHECK_SECONDS`)."""
        self.policy(policy_name)  # ClientError when unknown
        with Session(self.engine) as session, session.begin():
            row = session.get(ClientRow, name)
            if row is None:
                raise ClientError(f"no client named {name!r}")
            row.policy = policy_name
        self._forget(name)

    def rotate(self, name: str) -> str:
        """Give a client a new secret; the old one stops working. Returns the new secret."""
        with Session(self.engine) as session:
            row = session.get(ClientRow, name)
            if row is None:
                raise ClientError(f"no client named {name!r}")
            if row.revoked is not None:
                raise ClientError(f"client {name!r} is revoked; add a new client instead")
            kind, policy_name = row.kind, row.policy
        token_id, secret, hashed = self._new_secret(kind)
        return self._store(name, kind, policy_name, token_id, secret, hashed, create=False)

    def list(self) -> list[ClientInfo]:
        """Every client, revoked ones included, by name."""
        with Session(self.engine) as session:
            rows = session.scalars(select(ClientRow).order_by(ClientRow.name)).all()
            return [ClientInfo(r.name, r.kind, r.policy,
                               self.bind_dn_of(r.name) if r.kind == LDAP else None,
                               r.created, r.rotated, r.revoked) for r in rows]

    def ensure_demo_clients(self) -> dict[str, dict[str, str]]:
        """Create (or reset) the demo clients with their known credentials; returns them.

        Only ``idm-facade demo`` calls this: outside the demo there are no default
        credentials. ``demo-scim`` and ``demo-ldap`` use policy ``demo-internal``;
        ``demo-cpr`` (SCIM) shows the explicit CPR grant.
        """
        wanted = [("demo-scim", SCIM, "demo-internal", DEMO_SCIM_TOKEN),
                  ("demo-ldap", LDAP, "demo-internal", DEMO_LDAP_PASSWORD),
                  ("demo-cpr", SCIM, "demo-cpr", DEMO_CPR_TOKEN)]
        out: dict[str, dict[str, str]] = {}
        for name, kind, policy_name, secret in wanted:
            self.policy(policy_name)
            token_id = secret.split("_", 2)[1] if kind == SCIM else None
            with Session(self.engine) as session:
                row = session.get(ClientRow, name)
                current = (row is not None and row.revoked is None and row.kind == kind
                           and row.policy == policy_name and row.token_id == token_id
                           and self._verify(row.secret_hash, secret))
            if not current:
                self._store(name, kind, policy_name, token_id, secret, secret, create=False)
            info = {"kind": kind, "policy": policy_name}
            if kind == SCIM:
                info["token"] = secret
            else:
                info["bind_dn"] = self.bind_dn_of(name)
                info["password"] = secret
            out[name] = info
        return out

    # ------------------------------------------------------------------ authentication

    def _verify(self, digest: str | None, secret: str) -> bool:
        if not digest:
            return False
        try:
            return self.hasher.verify(digest, secret)
        except (VerificationError, InvalidHashError):
            return False

    def _forget(self, name: str) -> None:
        with self._lock:
            for key in [k for k, v in self._cache.items() if v.name == name]:
                del self._cache[key]
            self._live.pop(name, None)
            self._meta.pop(name, None)
            self._resolved.clear()
            self._clients.clear()
            self._epoch += 1

    def _cached(self, key: bytes) -> Client | None:
        """A cached verification still valid (re-checking the row's generation when due)."""
        with self._lock:
            hit = self._cache.get(key)
        if hit is None:
            return None
        now = time.monotonic()
        if self._due(now - hit.checked):
            if not self._start_recheck(hit.name):
                return self._client(hit.name)  # being looked at: as verified before
            try:
                with Session(self.engine) as session:
                    row = session.get(ClientRow, hit.name)
                    fresh = row is not None and row.revoked is None and \
                        row.generation == hit.generation
                    meta = (row.kind, row.policy, row.generation) if row is not None else None
            except SQLAlchemyError as exc:
                # The store is away: nobody can revoke or rotate meanwhile (that is a write
                # to the same store), so a verification made before stays good; looked at
                # again a second later, not on every request.
                self._store_away(exc)
                hit.checked = now
                return self._client(hit.name)
            finally:
                self._end_recheck(hit.name)
            with self._lock:
                if not fresh or meta is None:
                    self._cache.pop(key, None)
                    return None
                hit.checked = now
                if self._meta.get(hit.name) != meta:
                    self._meta[hit.name] = meta
                    self._clients.pop(hit.name, None)
                    self._epoch += 1
        return self._client(hit.name)

    def _start_recheck(self, name: str) -> bool:
        """Claim the look at ``name``'s row; False when another caller is at it."""
        with self._lock:
            if name in self._rechecking:
                return False
            self._rechecking.add(name)
            return True

    def _end_recheck(self, name: str) -> None:
        with self._lock:
            self._rechecking.discard(name)

    def mark_event_loop(self) -> None:
        """Say that the calling thread runs an event loop, which may use what is known of
        a client until :data:`RECHECK_SECONDS` (having asked :meth:`needs_recheck`,
        :meth:`verified_recently` or :meth:`bind_from_cache` first); other threads look
        at the store :data:`LOOP_MARGIN` earlier."""
        self._loops.add(threading.get_ident())

    def _due(self, age: float) -> bool:
        if threading.get_ident() in self._loops:
            return age > RECHECK_SECONDS
        return age > RECHECK_SECONDS - LOOP_MARGIN

    def _fresh(self, checked: float | None, name: str) -> bool:
        """May an event loop use what it knows of ``name`` without the store: checked
        lately enough that no re-check falls due this turn, or being re-checked now."""
        return (checked is not None and
                time.monotonic() - checked <= RECHECK_SECONDS - LOOP_MARGIN) \
            or name in self._rechecking

    def needs_recheck(self, client: Client) -> bool:
        """Would :meth:`current` look at the store for ``client`` now? An event loop then
        calls it in a thread (a store that hangs must not hang the loop)."""
        with self._lock:
            return client.name not in self._meta or \
                not self._fresh(self._live.get(client.name), client.name)

    def _store_away(self, exc: Exception) -> None:
        now = time.monotonic()
        if now - self._away_logged > 60:
            self._away_logged = now
            log.warning("clients: the store does not answer; credentials verified before "
                        "stay valid until it does: %s", " ".join(str(exc).split())[:200])

    def _client(self, name: str) -> Client | None:
        found = self._clients.get(name)  # a plain dict read: atomic, no lock needed
        if found is not None:
            return found
        with self._lock:
            meta = self._meta.get(name)
            epoch = self._epoch
        if meta is None:
            return None
        kind, policy_name, generation = meta
        try:
            policy = self.policy(policy_name)
        except ClientError:
            log.error("client %s has unknown policy %r: refused", name, policy_name)
            return None
        client = Client(name, kind, policy, self.bind_dn_of(name) if kind == LDAP else None,
                        generation)
        with self._lock:
            if self._epoch == epoch:  # nothing changed while it was built
                self._clients[name] = client
        return client

    def _remember(self, key: bytes, row: ClientRow) -> Client | None:
        with self._lock:
            if len(self._cache) >= _CACHE_LIMIT:
                self._cache.clear()
            self._cache[key] = _Cached(row.name, row.generation, time.monotonic())
            if self._meta.get(row.name) != (row.kind, row.policy, row.generation):
                self._meta[row.name] = (row.kind, row.policy, row.generation)
                self._clients.pop(row.name, None)
                self._epoch += 1
        return self._client(row.name)

    def current(self, client: Client) -> Client | None:
        """``client`` as it stands now: None when it was revoked or its credentials were
        rotated since it authenticated, a new Client when its policy changed, else the same.

        For sessions that outlive one request (an LDAP connection's bind): the row is looked
        at again at most every :data:`RECHECK_SECONDS`, so a revoke, rotate or policy change
        made by another process takes effect within that time, and at once in this one."""
        now = time.monotonic()
        with self._lock:
            seen = self._live.get(client.name)
            meta = self._meta.get(client.name)
        if seen is None or self._due(now - seen) or meta is None:
            if not self._start_recheck(client.name):
                return client  # being looked at: as it stood
            try:
                with Session(self.engine) as session:
                    row = session.get(ClientRow, client.name)
                    meta = (row.kind, row.policy, row.generation) \
                        if row is not None and row.revoked is None else None
            except SQLAlchemyError as exc:
                self._store_away(exc)  # see _cached: the bound session stays as it was
                with self._lock:
                    self._live[client.name] = now
                return client
            finally:
                self._end_recheck(client.name)
            with self._lock:
                if meta is None:
                    self._live.pop(client.name, None)
                    return None
                self._live[client.name] = now
                if self._meta.get(client.name) != meta:
                    self._meta[client.name] = meta
                    self._clients.pop(client.name, None)
                    self._epoch += 1
        if meta[2] != client.generation:
            return None
        fresh = self._client(client.name)
        return client if fresh is client or fresh == client else fresh

    def authenticate_token(self, token: str) -> Client | None:
        """The SCIM client holding bearer ``token``, or None (unknown, wrong, revoked)."""
        key = _token_key(token)
        if key is None:
            return None
        cached = self._cached(key)
        if cached is not None:
            return cached
        parts = token.split("_", 2)
        if len(parts) != 3 or not parts[1]:
            return None
        with Session(self.engine) as session:
            row = session.scalar(select(ClientRow).where(ClientRow.token_id == parts[1]))
            if row is None or row.revoked is not None or row.kind != SCIM:
                return None
            session.expunge(row)
        if not self._verify(row.secret_hash, token):
            return None
        return self._remember(key, row)

    def verified_recently(self, token: str) -> bool:
        """Whether bearer ``token`` was verified lately (its check is in the cache, and its
        row needs no look now): then :meth:`authenticate_token` costs no slow hash and does
        not wait on the store, so an event loop may call it."""
        key = _token_key(token)
        if key is None:
            return False
        with self._lock:
            hit = self._cache.get(key)
            return hit is not None and self._fresh(hit.checked, hit.name)

    def bind_from_cache(self, dn: str, password: str) -> Client | None:
        """The client of a bind whose check is cached, with no slow hash and no wait on the
        store, so an event loop may call it; None when only :meth:`authenticate_bind` can
        tell (not cached: a wrong password never is; its row is due to be looked at again;
        or no longer valid, which it then says)."""
        if not dn or not password:
            return None
        key = _bind_key(normalise_dn(dn), password)
        with self._lock:
            hit = self._cache.get(key)
            if hit is None or not self._fresh(hit.checked, hit.name):
                return None  # not cached, or its re-check falls due: a thread looks
        return self._cached(key)

    def authenticate_bind(self, dn: str, password: str) -> Client | None:
        """The LDAP client binding as ``dn`` with ``password``, or None."""
        if not dn or not password:
            return None
        norm = normalise_dn(dn)
        key = _bind_key(norm, password)
        cached = self._cached(key)
        if cached is not None:
            return cached
        suffix = "," + normalise_dn(f"ou=clients,{self.base}")
        if not norm.startswith("cn=") or not norm.endswith(suffix):
            return None
        name = norm[3:-len(suffix)]
        with Session(self.engine) as session:
            row = session.scalar(select(ClientRow).where(
                ClientRow.kind == LDAP, func.lower(ClientRow.name) == name))
            if row is None or row.revoked is not None:
                return None
            session.expunge(row)
        if not self._verify(row.secret_hash, password):
            return None
        return self._remember(key, row)
