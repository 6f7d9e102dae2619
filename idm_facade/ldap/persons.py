"""Person binds: a person logs in to a legacy system that binds to the facade as them.

Who verifies what (docs/ldap.md, "Person binds"):

- the **facade** resolves the name the person typed to an account of its snapshot, in any of
  the forms legacy systems send: ``uid=<username>,ou=people,<base>``, ``<username>@<UPN
  suffix>`` and ``<DOMAIN>\\<username>``; it refuses accounts that are not active (no current
  engagement; an ended account or one outside the directory IT system is not in the
  directory at all), and it throttles guessing (:mod:`idm_facade.access.throttle`);
- the **upstream directory** (the municipality's AD) verifies the password
  (:mod:`idm_facade.ldap.upstream`); the facade never stores or logs it.

Every refusal is answered 49 "invalid credentials", whatever the reason, so the answer tells
nobody whether the account exists, has left or is locked; the reason goes to the access log.
The upstream not answering is 51 (busy) or 52 (unavailable), never success.

A bound person reads through the ``person`` policy (``[ldap.persons] policy``; built in: the
directory's PUBLIC view, no CPR) and stays bound only while the account stays active.

``[ldap.persons]``: ``policy``, ``upn_suffixes`` (default: the base DN's ``dc`` labels joined
by dots), ``domains`` (NetBIOS names; default: the first ``dc`` label), and the throttle:
``account_delay_after``, ``account_lockout_after``, ``account_lockout_seconds``, ...,
``address_...`` (see :class:`~idm_facade.access.throttle.ThrottleSettings`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import lru_cache
from typing import Any

from idm_facade.access.clients import PERSON, Client, ClientRegistry
from idm_facade.access.throttle import Throttle, address_key
from idm_facade.directory.policy import TRUSTED
from idm_facade.directory.view import ClientView
from idm_facade.ldap import dit
from idm_facade.ldap.bind_settings import PersonSettings, UpstreamSettings
from idm_facade.ldap.search import (
    BUSY,
    CONFIDENTIALITY_REQUIRED,
    INVALID_CREDENTIALS,
    OTHER,
    SUCCESS,
    UNAVAILABLE,
)
from idm_facade.ldap.syntax import InvalidDN, parse_dn
from idm_facade.ldap.upstream import Outcome, UpstreamPool

log = logging.getLogger(__name__)

#: What every refused person bind is told, whatever the reason (the reason is logged).
REFUSED = "invalid credentials"

#: Refusals of a right password that must be changed first: (message, access-log status).
#: The messages carry AD's sub-code as "data NNN", which AD-aware clients read from a failed
#: bind's message (Spring Security's ActiveDirectoryLdapAuthenticationProvider raises
#: CredentialsExpiredException for 532).
_CHANGE_FIRST = {
    Outcome.EXPIRED: ("the password has expired: change it, then log in again (data 532)",
                      "49 password expired upstream"),
    Outcome.MUST_CHANGE: ("the password must be changed before it is used (data 773)",
                          "49 password must be changed upstream"),
}


@dataclass(frozen=True)
class Verdict:
    """The answer to one person bind: LDAP result code, the message the client sees, the
    bound client (on success), and the access record's client name and status."""

    code: int
    message: str
    client: Client | None
    who: str
    status: str


def _internal_error(who: str) -> Verdict:
    """The verdict of a person bind that failed in the facade (logged with its traceback;
    called from an ``except`` block): 80, and still an answer."""
    log.exception("LDAP: a person bind failed")
    return Verdict(OTHER, "internal error", None, who, f"{OTHER} internal error")


@lru_cache(maxsize=8)
def _dc_labels(base: str) -> tuple[str, ...]:
    """The base DN's ``dc`` values, outermost last (read once per base: every bind asks)."""
    try:
        rdns = parse_dn(base)
    except InvalidDN:
        return ()
    labels = [value for rdn in reversed(rdns) for type_, value in rdn if type_ == "dc"]
    return tuple(reversed(labels))


class _Card:
    """What one bind name stands for in one snapshot: worked out on its first bind and kept
    for the snapshot's life (:meth:`PersonBinds._card`), since people log in again and
    again and resolving a name is a good part of a bind's own work."""

    __slots__ = ("dn", "username", "who", "active", "account_key", "success")

    def __init__(self, name: str, key: str | None, dn: str | None, username: str | None,
                 active: bool) -> None:
        #: The account's DN and userName (None: no account).
        self.dn, self.username = dn, username
        #: The access record's client name.
        self.who = f"person:{(username or name)[:56]}"
        self.active = active
        #: What failures count under: the username whichever form names it (``key``, the
        #: ``account_by_uid`` key), for unknown names too (see :meth:`PersonBinds.bind`); a
        #: name in none of our forms as typed.
        self.account_key = key if key is not None else name.casefold()
        #: The success verdict, made once per policy (:meth:`PersonBinds._success`).
        self.success: Verdict | None = None


class PersonBinds:
    """Resolves, throttles and verifies person binds for the LDAP listeners of one process
    (both listeners share it, so the plain and the LDAPS port count failures together)."""

    def __init__(self, upstream: UpstreamSettings, settings: PersonSettings,
                 clients: ClientRegistry, reactor: Any) -> None:
        self.settings = settings
        self.clients = clients
        self.reactor = reactor
        self.pool = UpstreamPool(upstream, reactor)
        self.accounts = Throttle(settings.account)
        self.addresses = Throttle(settings.address)
        #: {peer address: the key its failures count under, None when exempt}: worked out
        #: once per address, not per bind.
        self._sources: dict[str, str | None] = {}
        #: {bind name: its :class:`_Card`} for the (snapshot, layout) pair in ``_cards_for``.
        self._cards: dict[str, _Card] = {}
        self._cards_for: tuple[Any, Any] = (None, None)
        clients.policy(settings.policy)  # an unknown policy is an error at start

    @classmethod
    def from_config(cls, config: Any, clients: ClientRegistry, reactor: Any
                    ) -> PersonBinds | None:
        """None when no ``[ldap.upstream]`` is configured (person binds are then refused)."""
        upstream = UpstreamSettings.from_config(config)
        if upstream is None:
            return None
        return cls(upstream, PersonSettings.from_config(config), clients, reactor)

    # ------------------------------------------------------------------ names

    def _uid_key(self, name: str, layout: dit.Layout) -> str | None:
        """The ``account_by_uid`` key the typed bind name stands for (``DOMAIN\\user``,
        ``user@suffix`` or ``uid=user,ou=people,<base>``), None when it is in no form of
        ours."""
        if "=" not in name:
            labels = _dc_labels(layout.base)
            if "\\" in name:
                domain, _, user = name.partition("\\")
                allowed = self.settings.domains if self.settings.domains is not None else \
                    labels[:1]
                ok = domain.casefold() in allowed
            elif "@" in name:
                user, _, suffix = name.rpartition("@")
                allowed = self.settings.upn_suffixes if self.settings.upn_suffixes \
                    is not None else ((".".join(labels),) if labels else ())
                ok = suffix.casefold() in allowed
            else:
                return None
            # The same folding as a DN's uid value (ldap.syntax.parse_dn).
            return " ".join(user.split()).casefold() if ok and user.strip() else None
        try:
            dn = parse_dn(name)
        except InvalidDN:
            return None
        n = len(layout.base_norm)
        if len(dn) != n + 2 or dn[2:] != layout.base_norm or \
                dn[1] != (("ou", dit.PEOPLE),) or len(dn[0]) != 1 or dn[0][0][0] != "uid":
            return None
        return dn[0][0][1]

    @staticmethod
    def _lookup(key: str | None, snapshot: Any, layout: dit.Layout) -> tuple[str | None, Any]:
        found = layout.account_by_uid.get(key) if key is not None else None
        entry = ClientView.of(snapshot, TRUSTED).get(found) if found is not None else None
        if entry is None:
            return None, None
        return layout.dn_of(dit.PEOPLE, entry.id), entry

    def is_person_dn(self, name: str, layout: dit.Layout) -> bool:
        """Does the bind name take the person path (anything but a client DN)?"""
        try:
            norm = parse_dn(name) if "=" in name else None
        except InvalidDN:
            return True
        if norm is None:
            return True
        return not (len(norm) >= 2 and norm[-len(layout.base_norm) - 1:] ==
                    ((("ou", dit.CLIENTS),),) + layout.base_norm)

    # ------------------------------------------------------------------ binds

    def bind(self, name: str, password: str, address: str, snapshot: Any,
             layout: dit.Layout, tls: bool, answer: Callable[[Verdict], None]) -> None:
        """Call ``answer`` once with the :class:`Verdict` of one person bind (``tls``: did
        it come over LDAPS or after StartTLS?), at once or when the upstream has answered.
        Plain callbacks, no Deferreds: this is the path of every login."""
        card = self._card(name, snapshot, layout)
        who = card.who
        if self.settings.require_tls and not tls:
            # Refused before anything is checked: the same answer for every name, nothing
            # counted, and the password goes no further. It has crossed the network in
            # clear already; the record names whose password that was.
            answer(Verdict(
                CONFIDENTIALITY_REQUIRED, "person binds need TLS: use LDAPS or StartTLS",
                None, who, f"{CONFIDENTIALITY_REQUIRED} no TLS"))
            return
        # Failures count per username, whichever form names it, for unknown names too: were
        # "DOMAIN\\bob" and "bob@suffix" counted apart only when bob does not exist, the
        # delays would tell which names do. (A name in none of our forms counts as typed.)
        account_key = card.account_key
        username = card.username
        source = self._source(address)
        locked, wait = self.accounts.standing(account_key)
        if source is not None:
            address_locked, address_wait = self.addresses.standing(source)
            locked = locked or address_locked
            wait = 0.0 if locked else max(wait, address_wait)

        def check() -> None:
            try:
                if locked:
                    decided: str | None = "locked out"
                elif username is None:
                    decided = "unknown account"
                elif not card.active:
                    decided = "no current engagement"
                else:
                    self.pool.check(username, password,
                                    lambda outcome: conclude(outcome, None))
                    return
                self._as_if_checked(lambda outcome: conclude(outcome, decided))
            except Exception:  # answered all the same: the connection waits for it
                answer(_internal_error(who))

        def conclude(outcome: Outcome, decided: str | None) -> None:
            try:
                verdict = decide(outcome, decided)
            except Exception:
                verdict = _internal_error(who)
            answer(verdict)

        def decide(outcome: Outcome, decided: str | None) -> Verdict:
            # decided: why the facade refused, None for a password check
            if outcome is Outcome.OK and decided is None:
                self.accounts.succeeded(account_key)
                return self._success(card)
            if decided is None and outcome in _CHANGE_FIRST:
                # The right password, which AD will not take until it is changed: said so
                # (only whoever typed it learns it), in words AD-aware clients read, and
                # not counted as a guess.
                message, status = _CHANGE_FIRST[outcome]
                return Verdict(INVALID_CREDENTIALS, message, None, who, status)
            aside = f" ({decided})" if decided else ""
            if outcome is Outcome.BUSY:
                return Verdict(BUSY, "the password could not be checked in time; try again",
                               None, who, f"51 upstream timeout{aside}")
            if outcome is Outcome.UNAVAILABLE:
                return Verdict(UNAVAILABLE, "the password cannot be checked now: the "
                               "upstream directory is unavailable", None, who,
                               f"52 upstream unavailable{aside}")
            if decided != "locked out":  # a lockout is not prolonged by more attempts
                self.accounts.failed(account_key)
                if source is not None:
                    self.addresses.failed(source)
            return Verdict(INVALID_CREDENTIALS, REFUSED, None, who,
                           f"49 {decided or 'wrong password'}")

        if wait:
            self.reactor.callLater(wait, check)
        else:
            check()

    def _card(self, name: str, snapshot: Any, layout: dit.Layout) -> _Card:
        """The :class:`_Card` of bind name ``name`` in this snapshot. The cards of an older
        snapshot are dropped at the first bind after a refresh, so a leaver's card is never
        read again; at most :attr:`MAX_CARDS` are kept (names nobody has count too)."""
        cards = self._cards
        held = self._cards_for
        if held[0] is not snapshot or held[1] is not layout:
            cards = self._cards = {}
            self._cards_for = (snapshot, layout)
        card = cards.get(name)
        if card is None:
            if len(cards) >= self.MAX_CARDS:
                cards.clear()
            key = self._uid_key(name, layout)
            dn, entry = self._lookup(key, snapshot, layout)
            view = ClientView.of(snapshot, TRUSTED)
            username = str(view.first(entry, "userName")) if entry is not None else None
            active = entry is not None and view.first(entry, "active") is True
            card = cards[name] = _Card(name, key, dn, username, active)
        return card

    #: Bind names whose :class:`_Card` is kept at most (about 1 KiB each).
    MAX_CARDS = 8192

    def _success(self, card: _Card) -> Verdict:
        """The verdict of a right password for ``card``'s account: made once, and again
        only when the ``person`` policy is not the one it holds (a configuration reload)."""
        policy = self.clients.policy(self.settings.policy)
        found = card.success
        if found is None or found.client is None or found.client.policy is not policy:
            client = Client(card.who, PERSON, policy, card.dn, 0)
            found = card.success = Verdict(SUCCESS, "", client, card.who, "success")
        return found

    def _source(self, address: str) -> str | None:
        """The key failures from ``address`` count under, None when they count per account
        only: a system that logs many people in (``address_exempt``) is not slowed or locked
        for their typos together."""
        sources = self._sources
        if address in sources:
            return sources[address]
        if len(sources) >= 4096:
            sources.clear()
        key = sources[address] = None if self.settings.exempt(address) else \
            address_key(address)
        return key

    def _as_if_checked(self, answer: Callable[[Outcome], None]) -> None:
        """Call ``answer`` with the outcome of a refusal decided here (unknown name, leaver,
        lockout), after a check upstream like a password check (of a name no account has,
        :meth:`UpstreamPool.round_trip`). Answered at once, such a refusal would tell by its
        speed what its message hides: that the name is not an active account of the
        municipality, or that it is locked. (A pause as long as recent checks took cannot
        match them: the reactor's timers are a millisecond coarse, and a nearby upstream
        answers faster than that.) The outcome is REFUSED, or 51's or 52's when the upstream
        could not answer, as a check would have got: an outage must not tell the names
        apart either."""
        def answered(outcome: Outcome) -> None:
            if outcome is Outcome.BUSY or outcome is Outcome.UNAVAILABLE:
                answer(outcome)
            else:
                answer(Outcome.REFUSED)  # never OK, whatever the upstream said

        self.pool.round_trip(answered)

    def current(self, client: Client, snapshot: Any, layout: dit.Layout) -> Client | None:
        """The bound person as they stand now: None once the account is no longer active
        (a leaver's open connection is unbound), a new Client when the policy changed."""
        if client.bind_dn is None:
            return None
        if not self._card(client.bind_dn, snapshot, layout).active:
            return None
        policy = self.clients.policy(self.settings.policy)
        return client if policy == client.policy else replace(client, policy=policy)

    def close(self) -> None:
        """Close the upstream connections (shutdown)."""
        self.pool.close()
