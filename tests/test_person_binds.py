"""Person binds (docs/ldap.md, "Person binds"): a person binds to the facade with the
password they typed; the facade finds their account, refuses leavers, and has the
municipality's directory check the password. Here that directory is a real OpenLDAP slapd
(tests/upstream_ldap.py) whose passwords differ from anything in our store.

The three bind-name forms are those Active Directory accepts for a simple bind: a DN, the
userPrincipalName (``user@suffix``) and the down-level logon name (``DOMAIN\\user``)
([MS-ADTS] 5.1.1.1.1 "Simple Authentication"); empty passwords are unauthenticated binds,
RFC 4513 §5.1.2.
"""

from __future__ import annotations

import re
import socket
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import ldap
import pytest
from sqlalchemy import update
from sqlalchemy.orm import Session

from idm_facade.access.audit import AuditLog
from idm_facade.directory import Directory
from idm_facade.directory.entries import ACCOUNT
from store.engine import make_engine
from store.models import Engagement
from tests.netfaults import FakeAD, Silent, SlowProxy, ldap_messages
from tests.serving import (
    StoreCopy,
    access_records,
    copy_store,
    ending_engagements,
    ldap_bind,
    served_copy,
)
from tests.upstream_ldap import BASE, UpstreamDirectory

UPN = "kommune.test"
DOMAIN = "KOMMUNE"


@dataclass
class People:
    """Accounts of the store copy: active ones (username -> upstream password) and a leaver
    whose upstream password still works."""

    db: str
    active: list[str]
    leaver: str
    passwords: dict[str, str]


@pytest.fixture(scope="module")
def people(demo_db: str, tmp_path_factory: pytest.TempPathFactory) -> People:
    """A store copy where one active account has become a leaver (its engagements ended)."""
    folder = tmp_path_factory.mktemp("persons-store")
    db = copy_store(demo_db, folder / "idm.db")
    engine = make_engine(db)
    accounts = [e for e in Directory(engine).snapshot.entries
                if e.kind == ACCOUNT and e.first("active") is True]
    assert len(accounts) >= 5
    chosen = sorted(accounts, key=lambda e: e.first("userName"))[:5]
    leaver = chosen[-1]
    with Session(engine) as session:
        session.execute(update(Engagement).where(
            Engagement.person_id == leaver.first("personId")).values(
            valid_from=datetime(2000, 1, 1), valid_to=datetime(2000, 1, 2)))
        session.commit()
    engine.dispose()
    names = [str(e.first("userName")) for e in chosen]
    return People(db, names[:-1], names[-1], {n: f"upstream:{n}:Pw!{i}" for i, n in
                                               enumerate(names)})


@pytest.fixture(scope="module")
def upstream(people: People, tmp_path_factory: pytest.TempPathFactory
             ) -> Iterator[UpstreamDirectory]:
    directory = UpstreamDirectory(tmp_path_factory.mktemp("upstream"), people.passwords)
    directory.start()
    try:
        yield directory
    finally:
        directory.stop()


def _config(urls: list[str], *, extra_upstream: str = "", persons: str = "",
            more: str = "", require_tls: bool = False) -> str:
    """Person binds against ``urls``; over plain LDAP unless ``require_tls`` (these tests
    talk over loopback; the default, TLS required, has a test of its own), and to the
    upstream in clear where ``urls`` say so (TLS to it has a test of its own too)."""
    quoted = ", ".join(f'"{u}"' for u in urls)
    return (f'[ldap.upstream]\nurls = [{quoted}]\n'
            f'dn_template = "uid={{username}},ou=people,{BASE}"\ntimeout = 2\n'
            f'require_tls = false\n'
            f'{extra_upstream}\n'
            f'[ldap.persons]\nupn_suffixes = ["{UPN}"]\ndomains = ["{DOMAIN}"]\n{persons}\n'
            f'require_tls = {str(require_tls).lower()}\n{more}')


def _serve(people: People, folder: Path, config: str,
           clients: tuple[tuple[str, str, str], ...] = (), **start_kw: Any
           ) -> Iterator[StoreCopy]:
    folder.mkdir(parents=True, exist_ok=True)
    return served_copy(people.db, folder, config, clients,  # type: ignore[return-value]
                       **start_kw)


def _code(url: str, name: str, password: str, *, starttls: bool = False) -> int:
    """The result code of a bind (0 on success)."""
    try:
        ldap_bind(url, name, password, timeout=20, network_timeout=20,
                  starttls=starttls).unbind_s()
        return 0
    except ldap.LDAPError as exc:
        return int(exc.args[0].get("result", -1))


def _starttls_then_bind(port: int, name: str, password: str) -> list[tuple[str, int]]:
    """Send a StartTLS request and a bind in one write, as a client that does not wait for
    the StartTLS response would; the (operation, result code) of the two answers, read by
    ldaptor."""
    from ldaptor.protocols import pureldap

    requests = (pureldap.LDAPMessage(pureldap.LDAPStartTLSRequest(), id=1).toWire()
                + pureldap.LDAPMessage(pureldap.LDAPBindRequest(
                    dn=name.encode(), auth=password.encode()), id=2).toWire())
    answers: list[tuple[str, int]] = []
    buffer = b""
    with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
        sock.sendall(requests)
        while len(answers) < 2:
            data = sock.recv(65536)
            if not data:
                break
            messages, buffer = ldap_messages(buffer + data)
            answers += [(type(m.value).__name__, m.value.resultCode) for m in messages]
    return answers


def _person_dn(copy: StoreCopy, username: str) -> str:
    return f"uid={username},ou=people,{copy.base}"


def test_person_binds_in_every_form_and_refusals(people: People, upstream: UpstreamDirectory,
                                                 tmp_path: Path) -> None:
    with _serve(people, tmp_path, _config([upstream.url])) as copy:
        url = copy.serving.ldap_url
        user, other = people.active[0], people.active[1]
        secret = people.passwords[user]
        for name in (_person_dn(copy, user), f"{user}@{UPN}", f"{DOMAIN.lower()}\\{user}"):
            conn = ldap_bind(url, name, secret, timeout=20)
            assert conn.whoami_s() == f"dn:{_person_dn(copy, user)}", name
            conn.unbind_s()
        # Refusals are all 49 with one message: wrong password, another person's password,
        # a leaver whose upstream password still works, an unknown name, a foreign suffix.
        refusals = {
            "wrong password": (f"{user}@{UPN}", secret + "x"),
            "other's password": (f"{user}@{UPN}", people.passwords[other]),
            "leaver": (f"{people.leaver}@{UPN}", people.passwords[people.leaver]),
            "unknown": (f"nobody-here@{UPN}", secret),
            "foreign suffix": (f"{user}@elsewhere.test", secret),
            "foreign domain": (f"OTHER\\{user}", secret),
        }
        messages = set()
        for why, (name, password) in refusals.items():
            try:
                ldap_bind(url, name, password, timeout=20)
                raise AssertionError(f"{why}: bound")
            except ldap.INVALID_CREDENTIALS as exc:
                messages.add(exc.args[0].get("info", ""))
        assert messages == {"invalid credentials"}
        # The upstream does accept the leaver's password: the facade refused it.
        direct = ldap_bind(upstream.url, f"uid={people.leaver},ou=people,{BASE}",
                           people.passwords[people.leaver])
        direct.unbind_s()
        # An empty password is an unauthenticated bind (RFC 4513 §5.1.2): 53, never success.
        assert _code(url, _person_dn(copy, user), "") == ldap.UNWILLING_TO_PERFORM.errnum
        # Every attempt is recorded, with why; the password is nowhere.
        records = [r for r in access_records(
            copy.db, lambda rs: bool(rs) and rs[-1].status == "53 unauthenticated bind")
            if r.operation == "bind"]
        mine = [r for r in records if r.client == f"person:{user}"]
        assert [r.status for r in mine[:3]] == ["success"] * 3
        statuses = {r.status for r in records}
        assert {"49 wrong password", "49 no current engagement", "49 unknown account",
                "53 unauthenticated bind"} <= statuses
        leaver_records = [r for r in records if r.client == f"person:{people.leaver}"]
        assert [r.status for r in leaver_records] == ["49 no current engagement"]
        dump = Path(copy.db.removeprefix("sqlite:///")).read_bytes()
        log_text = copy.serving.output()
        for password in people.passwords.values():
            assert password.encode() not in dump and password not in log_text


def test_person_binds_need_tls_by_default(people: People, upstream: UpstreamDirectory,
                                          tmp_path: Path) -> None:
    """A person's password is their AD password: by default the facade takes it only over
    LDAPS or after StartTLS, and answers a bind in clear with confidentialityRequired (13),
    which is slapd's answer under ``security simple_bind=`` (slapd.conf(5)) and RFC 4513's
    advice for simple binds without confidentiality (§5.1.3, §6.3.1). Nothing is checked or
    counted for such a bind; the record names whose password crossed the network in clear.
    Service accounts bind in clear as before. Both hops as by default: the facade checks
    the password over LDAPS (TLS to the upstream is required by default too)."""
    config = _config([upstream.ldaps_url], extra_upstream=f'ca_file = "{upstream.ca_file}"\n'
                     ).replace("require_tls = false\n", "")
    assert "require_tls" not in config
    with _serve(people, tmp_path, config, (("app", "ldap", "default"),), ldaps=True) as copy:
        url = copy.serving.ldap_url
        ldaps = f"ldaps://127.0.0.1:{copy.serving.ldap_ports[1]}"
        user = people.active[0]
        secret = people.passwords[user]
        for name in (_person_dn(copy, user), f"{user}@{UPN}", f"{DOMAIN}\\{user}"):
            with pytest.raises(ldap.CONFIDENTIALITY_REQUIRED) as refused:
                ldap_bind(url, name, secret, timeout=20)
            assert "TLS" in refused.value.args[0]["info"], name
        # The same for a wrong password and an unknown name: the answer tells nothing.
        assert _code(url, f"{user}@{UPN}", "wrong") == ldap.CONFIDENTIALITY_REQUIRED.errnum
        assert _code(url, f"nobody@{UPN}", "x") == ldap.CONFIDENTIALITY_REQUIRED.errnum
        # Nothing was counted: more binds in clear than the account lockout (10) allows, and
        # the right password over TLS still binds.
        for _ in range(12):
            assert _code(url, f"{user}@{UPN}", "guess") == ldap.CONFIDENTIALITY_REQUIRED.errnum
        conn = ldap_bind(url, f"{user}@{UPN}", secret, timeout=20, starttls=True)
        assert conn.whoami_s() == f"dn:{_person_dn(copy, user)}"
        conn.unbind_s()
        conn = ldap_bind(ldaps, f"{DOMAIN}\\{user}", secret, timeout=20)
        assert conn.whoami_s() == f"dn:{_person_dn(copy, user)}"
        conn.unbind_s()
        assert _code(url, f"{user}@{UPN}", "wrong", starttls=True) == \
            ldap.INVALID_CREDENTIALS.errnum
        # A bind sent behind StartTLS before TLS is up was sent in clear: StartTLS is refused
        # (operationsError) and the bind answered as one in clear, 13 (the STARTTLS command
        # injection of CVE-2011-0411; RFC 4511 §4.14.1).
        assert _starttls_then_bind(copy.serving.ldap_ports[0], f"{user}@{UPN}", secret) == \
            [("LDAPExtendedResponse", 1), ("LDAPBindResponse", 13)]
        # Service accounts are not person binds: unchanged.
        ldap_bind(url, copy.bind_dn("app"), copy.secrets["app"]).unbind_s()
        statuses = [r.status for r in access_records(
            copy.db, lambda rs: len(rs) >= 3 + 1 + 12 + 1 + 3, client=f"person:{user}")
                    if r.operation == "bind"]
        assert statuses.count("13 no TLS") == 3 + 1 + 12 + 1
        assert statuses[-4:] == ["success", "success", "49 wrong password", "13 no TLS"]


def test_a_right_password_that_must_be_changed_is_told_so(people: People,
                                                          tmp_path: Path) -> None:
    """Active Directory refuses a right password that has expired (sub-code 532) or must be
    changed after a reset (773), and says so in the diagnostic message only to whoever typed
    it (a wrong one gets 52e). The facade passes that on as "data 532"/"data 773", which
    AD-aware clients read with Spring Security's pattern (``SUB_ERROR_CODE`` in
    ldap/.../ad/ActiveDirectoryLdapAuthenticationProvider.java, which raises
    CredentialsExpiredException for 532), and does not count it as a guess. Other sub-codes
    (533 disabled) stay a plain "invalid credentials"."""
    expired, reset, disabled, fine = people.active[:4]
    dn = f"uid={{}},ou=people,{BASE}".format
    fake = FakeAD({dn(expired): ("old-pw", "532"), dn(reset): ("temp-pw", "773"),
                   dn(disabled): ("pw", "533"), dn(fine): ("pw", None)})
    persons = "account_delay_after = 100\naccount_lockout_after = 3\n"
    try:
        with _serve(people, tmp_path, _config([f"ldap://127.0.0.1:{fake.port}"],
                                              persons=persons)) as copy:
            url = copy.serving.ldap_url

            def info(user: str, password: str) -> str:
                with pytest.raises(ldap.INVALID_CREDENTIALS) as refused:
                    ldap_bind(url, f"{user}@{UPN}", password, timeout=20)
                return str(refused.value.args[0].get("info", ""))

            ldap_bind(url, f"{fine}@{UPN}", "pw", timeout=20).unbind_s()
            spring = re.compile(r".*data\s([0-9a-f]{3,4}).*")
            for _ in range(4):  # more than the lockout allows: never counted
                said = info(expired, "old-pw")
                assert "expired" in said and spring.match(said).group(1) == "532", said
            said = info(reset, "temp-pw")
            assert "changed" in said and spring.match(said).group(1) == "773", said
            assert info(disabled, "pw") == "invalid credentials"
            assert info(expired, "wrong") == "invalid credentials"
            # Guesses are counted as before: locked after 3, and then even the right
            # (expired) password gets the lockout's plain answer.
            assert info(expired, "wrong") == "invalid credentials"
            assert info(expired, "wrong") == "invalid credentials"
            assert info(expired, "old-pw") == "invalid credentials"
            statuses = [r.status for r in access_records(
                copy.db, lambda rs: len(rs) >= 8, client=f"person:{expired}")]
            assert statuses == ["49 password expired upstream"] * 4 + \
                ["49 wrong password"] * 3 + ["49 locked out"]
            assert [r.status for r in access_records(copy.db, bool,
                                                     client=f"person:{reset}")] == \
                ["49 password must be changed upstream"]
    finally:
        fake.close()


def test_an_upstream_that_accepts_anything_lets_no_refused_name_in(people: People,
                                                                   tmp_path: Path) -> None:
    """The facade's own refusals (unknown name, leaver, lockout) stand whatever the upstream
    answers the check they cost: against a directory that takes any password, an active
    account binds (the upstream decides its password), the rest are still refused."""
    fake = FakeAD({}, accept_all=True)
    persons = "account_delay_after = 100\naccount_lockout_after = 2\n"
    try:
        with _serve(people, tmp_path, _config([f"ldap://127.0.0.1:{fake.port}"],
                                              persons=persons)) as copy:
            url = copy.serving.ldap_url
            user = people.active[0]
            assert _code(url, f"{user}@{UPN}", "anything") == 0
            assert _code(url, f"{people.leaver}@{UPN}", "anything") == \
                ldap.INVALID_CREDENTIALS.errnum
            assert _code(url, f"nobody-here@{UPN}", "anything") == \
                ldap.INVALID_CREDENTIALS.errnum
            for _ in range(2):  # a lockout, counted from the refused leaver's attempts
                _code(url, f"{people.leaver}@{UPN}", "anything")
            statuses = [r.status for r in access_records(
                copy.db, lambda rs: len(rs) >= 3, client=f"person:{people.leaver}")]
            assert statuses == ["49 no current engagement"] * 2 + ["49 locked out"]
    finally:
        fake.close()


def test_an_upstream_that_takes_binds_only_over_tls_is_named_in_the_log(
        people: People, tmp_path: Path) -> None:
    """Domain controllers that require LDAP signing, the default of new Windows Server 2025
    forests ("LDAP signing for Active Directory Domain Services" and "Domain controller:
    LDAP server signing requirements" on learn.microsoft.com: "If signing is required, then
    LDAP simple binds not using SSL are rejected"), answer a simple bind in clear with
    strongerAuthRequired (8) and "00002028 ... requires binds to turn on integrity
    checking". Persons then get 52, a known name as an unknown one, and the log tells the
    administrator what to change; the facade starts with such a URL only under
    ``require_tls = false``, so this is a deployment that said it knew better."""
    user = people.active[0]
    fake = FakeAD({f"uid={user},ou=people,{BASE}": ("pw", None)}, signing_required=True)
    try:
        with _serve(people, tmp_path, _config([f"ldap://127.0.0.1:{fake.port}"])) as copy:
            url = copy.serving.ldap_url
            assert _code(url, f"{user}@{UPN}", "pw") == ldap.UNAVAILABLE.errnum
            assert _code(url, f"nobody-here@{UPN}", "pw") == ldap.UNAVAILABLE.errnum
            deadline = time.monotonic() + 10
            while "starttls = true" not in copy.serving.output() and \
                    time.monotonic() < deadline:
                time.sleep(0.1)
            said = copy.serving.output()
            assert "result code 8: 00002028" in said, said
            assert "use an ldaps:// URL or starttls = true in [ldap.upstream]" in said, said
            records = access_records(copy.db, bool, client=f"person:{user}")
            assert records[-1].status == "52 upstream unavailable"
    finally:
        fake.close()


def test_person_reads_through_the_person_policy(people: People, upstream: UpstreamDirectory,
                                                tmp_path: Path) -> None:
    more = '[policies.person]\nattributes = ["displayName", "emails"]\n'
    with _serve(people, tmp_path, _config([upstream.url], more=more),
                clients=(("hr", "ldap", "demo-cpr"),)) as copy:
        url = copy.serving.ldap_url
        user = people.active[0]
        person = ldap_bind(url, f"{user}@{UPN}", people.passwords[user], timeout=20)
        hr = ldap_bind(url, copy.bind_dn("hr"), copy.secrets["hr"], timeout=20)
        base = f"ou=people,{copy.base}"
        own = f"(uid={user})"
        _, hr_attrs = hr.search_s(base, ldap.SCOPE_SUBTREE, own, ["*"])[0]
        _, mine = person.search_s(base, ldap.SCOPE_SUBTREE, own, ["*"])[0]
        assert "idmCpr" in {k for k in hr_attrs} or any("cpr" in k.lower() for k in hr_attrs)
        assert not any("cpr" in k.lower() for k in mine)
        assert "title" in hr_attrs and "title" not in mine and "displayName" in mine
        # The policy limits filters too: a title the person may not read matches nothing.
        title = hr_attrs["title"][0].decode()
        assert person.search_s(base, ldap.SCOPE_SUBTREE, f"(title={title})", ["uid"]) == []
        person.unbind_s()
        hr.unbind_s()


@pytest.mark.parametrize("lookup", ["dn_template", "search-then-bind"])
def test_refusals_decided_by_the_facade_take_as_long_as_a_check(
        people: People, upstream: UpstreamDirectory, tmp_path: Path, lookup: str) -> None:
    """An unknown name, a leaver and a locked account are refused by the facade without
    asking the upstream whether the password is right; answered at once, their speed would
    tell an attacker what the common message hides. Each costs an upstream check instead
    (of a name no account has). With the upstream 0.3 s away (a proxy holding every answer),
    every refusal takes at least as many round trips as a check: one with a DN template,
    three with search-then-bind (the search account's bind, the search, the bind, also when
    the search finds nobody). A lower bound, which a slow machine cannot break."""
    from tests.upstream_ldap import ADMIN, ADMIN_PASSWORD

    slow = SlowProxy("127.0.0.1", int(upstream.url.rsplit(":", 1)[1]), 0.3)
    persons = "account_delay_after = 100\naccount_lockout_after = 1\n"
    config = _config([f"ldap://127.0.0.1:{slow.port}"], persons=persons)
    round_trips = 1
    if lookup == "search-then-bind":
        config = config.replace(
            f'dn_template = "uid={{username}},ou=people,{BASE}"\n',
            f'search_base = "{BASE}"\nsearch_filter = "(uid={{username}})"\n'
            f'bind_dn = "{ADMIN}"\nbind_password = "{ADMIN_PASSWORD}"\n')
        round_trips = 3
    try:
        with _serve(people, tmp_path, config) as copy:
            url = copy.serving.ldap_url
            user, locked = people.active[0], people.active[1]
            took = {}
            for why, name, password in (
                    ("right password", user, people.passwords[user]),
                    ("wrong password", locked, "wrong"),  # and now it is locked
                    ("locked", locked, people.passwords[locked]),
                    ("leaver", people.leaver, people.passwords[people.leaver]),
                    ("unknown", "nobody-here", "whatever")):
                started = time.monotonic()
                code = _code(url, f"{name}@{UPN}", password)
                took[why] = time.monotonic() - started
                assert code == (0 if why == "right password" else 49), why
            assert min(took.values()) >= 0.3 * round_trips, took
            wanted = {"49 locked out", "49 no current engagement", "49 unknown account"}
            statuses = [r.status for r in access_records(
                copy.db, lambda rs: wanted <= {r.status for r in rs}) if r.operation == "bind"]
            assert wanted <= set(statuses)
    finally:
        slow.close()


def test_lockout_answers_like_a_wrong_password_and_expires(
        people: People, upstream: UpstreamDirectory, tmp_path: Path) -> None:
    persons = ("account_delay_after = 100\naccount_lockout_after = 3\n"
               "account_lockout_seconds = 2\n")
    with _serve(people, tmp_path, _config([upstream.url], persons=persons)) as copy:
        url = copy.serving.ldap_url
        user = people.active[2]
        name = f"{user}@{UPN}"

        def forms(username: str) -> list[str]:
            return [f"{DOMAIN}\\{username}", f"{username}@{UPN}", _person_dn(copy, username)]

        # Failures count per account whichever form names it ...
        for typed in forms(user):
            assert _code(url, typed, "guess") == ldap.INVALID_CREDENTIALS.errnum
        # Locked: the right password is refused exactly like a wrong one.
        assert _code(url, name, people.passwords[user]) == ldap.INVALID_CREDENTIALS.errnum
        # ... and so do they for a name no account has: counted apart, an unknown name would
        # never be locked, and the delays and lockouts would tell it from a real one.
        for typed in forms("no-such-person"):
            assert _code(url, typed, "guess") == ldap.INVALID_CREDENTIALS.errnum
        assert _code(url, f"no-such-person@{UPN}", "guess") == ldap.INVALID_CREDENTIALS.errnum
        # Another account is not locked by it.
        other = people.active[1]
        assert _code(url, f"{other}@{UPN}", people.passwords[other]) == 0
        time.sleep(2.2)
        assert _code(url, name, people.passwords[user]) == 0
        statuses = [r.status for r in access_records(
            copy.db, lambda rs: len(rs) >= 5, client=f"person:{user}")]
        assert statuses == ["49 wrong password"] * 3 + ["49 locked out", "success"]
        assert access_records(copy.db, bool, client=f"person:no-such-person@{UPN}")[-1] \
            .status == "49 locked out"
        # /metrics answers anyone: it counts person binds by the code the client saw, never
        # by the facade's reason (which would tell who is employed).
        with urllib.request.urlopen(f"{copy.serving.scim_base}/metrics", timeout=20) as reply:
            scrape = reply.read().decode()
        failures = [line for line in scrape.splitlines()
                    if line.startswith("idm_facade_auth_failures_total{")]
        assert any('reason="person 49"' in line for line in failures), failures
        for why in ("wrong password", "unknown account", "locked out", "engagement"):
            assert not any(why in line for line in failures), failures


def test_upstream_away_fails_closed_and_recovers(people: People, upstream: UpstreamDirectory,
                                                 tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]  # nothing listens here
    # URLs are tried in order: the dead one first.
    persons = "account_delay_after = 100\naccount_lockout_after = 2\n"
    with _serve(people, tmp_path, _config([f"ldap://127.0.0.1:{dead}", upstream.url],
                                          persons=persons)) as copy:
        url = copy.serving.ldap_url
        user, locked = people.active[0], people.active[1]
        name = f"{user}@{UPN}"
        assert _code(url, name, people.passwords[user]) == 0
        for _ in range(2):
            assert _code(url, f"{locked}@{UPN}", "guess") == ldap.INVALID_CREDENTIALS.errnum
        upstream.stop()
        try:
            assert _code(url, name, people.passwords[user]) == ldap.UNAVAILABLE.errnum
            assert _code(url, name, "wrong") == ldap.UNAVAILABLE.errnum
            # Names the facade refuses itself get the same answer meanwhile: an outage
            # does not tell an active account from a leaver or an unknown name.
            assert _code(url, f"{people.leaver}@{UPN}", "x") == ldap.UNAVAILABLE.errnum
            assert _code(url, f"nobody-here@{UPN}", "x") == ldap.UNAVAILABLE.errnum
            assert _code(url, f"{locked}@{UPN}", "x") == ldap.UNAVAILABLE.errnum
        finally:
            upstream.start()
        assert _code(url, name, people.passwords[user]) == 0
        assert _code(url, name, "wrong") == ldap.INVALID_CREDENTIALS.errnum
        assert _code(url, f"nobody-here@{UPN}", "x") == ldap.INVALID_CREDENTIALS.errnum
        statuses = [r.status for r in access_records(copy.db, lambda rs: len(rs) >= 5,
                                                      client=f"person:{user}")]
        assert statuses == ["success", "52 upstream unavailable", "52 upstream unavailable",
                            "success", "49 wrong password"]
        # The record keeps why the facade refused.
        assert [r.status for r in access_records(
            copy.db, lambda rs: len(rs) >= 2, client="person:nobody-here@kommune.test")] == \
            ["52 upstream unavailable (unknown account)", "49 unknown account"]
    silent = Silent()
    try:
        with _serve(people, tmp_path / "hung",
                    _config([f"ldap://127.0.0.1:{silent.port}"])) as copy:
            user = people.active[0]
            assert _code(copy.serving.ldap_url, f"{user}@{UPN}",
                         people.passwords[user]) == ldap.BUSY.errnum
    finally:
        silent.close()


@pytest.mark.parametrize("mode", ["ldaps", "starttls"])
def test_tls_to_the_upstream_with_a_test_ca(people: People, upstream: UpstreamDirectory,
                                            tmp_path: Path, mode: str) -> None:
    from tests.upstream_ldap import make_ca

    (tmp_path / "other").mkdir()
    wrong_ca, _, _ = make_ca(tmp_path / "other", "another CA")
    url = upstream.ldaps_url if mode == "ldaps" else upstream.url.replace("127.0.0.1",
                                                                          "localhost")
    tls = f'ca_file = "{upstream.ca_file}"\n' + ("starttls = true\n" if mode == "starttls"
                                                  else "")
    user = people.active[0]
    with _serve(people, tmp_path / "good", _config([url], extra_upstream=tls)) as copy:
        assert _code(copy.serving.ldap_url, f"{user}@{UPN}", people.passwords[user]) == 0
        assert _code(copy.serving.ldap_url, f"{user}@{UPN}", "no") == \
            ldap.INVALID_CREDENTIALS.errnum
    # A certificate the configured CA did not issue: no password is sent, 52.
    bad = tls.replace(str(upstream.ca_file), str(wrong_ca))
    with _serve(people, tmp_path / "bad", _config([url], extra_upstream=bad)) as copy:
        assert _code(copy.serving.ldap_url, f"{user}@{UPN}", people.passwords[user]) == \
            ldap.UNAVAILABLE.errnum


def test_search_then_bind_and_address_lockout(people: People, upstream: UpstreamDirectory,
                                              tmp_path: Path) -> None:
    from tests.upstream_ldap import ADMIN, ADMIN_PASSWORD

    # The search account's password and the persons' go to the upstream over StartTLS.
    url = upstream.url.replace("127.0.0.1", "localhost")
    search = (f'[ldap.upstream]\nurls = ["{url}"]\nsearch_base = "{BASE}"\n'
              f'starttls = true\nca_file = "{upstream.ca_file}"\n'
              f'search_filter = "(&(objectClass=inetOrgPerson)(uid={{username}}))"\n'
              f'bind_dn = "{ADMIN}"\nbind_password = "{ADMIN_PASSWORD}"\n'
              f'[ldap.persons]\nupn_suffixes = ["{UPN}"]\ndomains = ["{DOMAIN}"]\n'
              f'address_delay_after = 100\naddress_lockout_after = 4\n'
              f'account_delay_after = 100\n')  # TLS required, as by default: StartTLS
    with _serve(people, tmp_path, search) as copy:
        url = copy.serving.ldap_url
        first, second = people.active[0], people.active[1]
        assert _code(url, f"{first}@{UPN}", people.passwords[first], starttls=True) == 0
        assert _code(url, f"{DOMAIN}\\{second}", people.passwords[second], starttls=True) == 0
        # Guessing across accounts from one address: after 4 failures the address is locked,
        # and even a right password from it is refused like a wrong one.
        for user in people.active:
            assert _code(url, f"{user}@{UPN}", "spray-1", starttls=True) == \
                ldap.INVALID_CREDENTIALS.errnum
        assert _code(url, f"{first}@{UPN}", people.passwords[first], starttls=True) == \
            ldap.INVALID_CREDENTIALS.errnum
        assert access_records(copy.db, lambda rs: bool(rs) and rs[-1].status == "49 locked out",
                              client=f"person:{first}")[-1].status == "49 locked out"


@pytest.mark.parametrize("exempt", [False, True])
def test_a_system_that_logs_people_in_is_not_locked_for_their_typos(
        people: People, upstream: UpstreamDirectory, tmp_path: Path, exempt: bool) -> None:
    """Nextcloud, GitLab or a terminal server's nslcd bind as everyone who logs in through
    them, all from one address. Counted per address, everyone's typos together slow down
    and then lock every login through such a system. Listed in ``address_exempt``, its
    failures count per account only: one typo each from four people leaves the next login
    through it working, and an account is still locked by its own failures. Unlisted (the
    control), the same four typos lock the address."""
    persons = ("address_delay_after = 100\naddress_lockout_after = 3\n"
               "account_delay_after = 100\naccount_lockout_after = 3\n"
               + ('address_exempt = ["10.9.8.0/24", "127.0.0.0/8"]\n' if exempt else ""))
    with _serve(people, tmp_path, _config([upstream.url], persons=persons)) as copy:
        url = copy.serving.ldap_url
        first, second = people.active[0], people.active[1]
        for user in people.active:
            assert _code(url, f"{user}@{UPN}", "typo") == ldap.INVALID_CREDENTIALS.errnum
        assert _code(url, f"{first}@{UPN}", people.passwords[first]) == \
            (0 if exempt else ldap.INVALID_CREDENTIALS.errnum)
        if exempt:
            for _ in range(2):  # the second person's own third failure locks their account
                assert _code(url, f"{DOMAIN}\\{second}", "typo") == \
                    ldap.INVALID_CREDENTIALS.errnum
            assert _code(url, f"{second}@{UPN}", people.passwords[second]) == \
                ldap.INVALID_CREDENTIALS.errnum
            assert access_records(copy.db, lambda rs: bool(rs) and rs[-1].status == "49 locked out",
                                  client=f"person:{second}")[-1].status == "49 locked out"


@pytest.mark.parametrize("header", ["send-proxy-v2", "send-proxy"])
def test_behind_a_balancer_each_client_is_counted_and_recorded_by_its_own_address(
        people: People, upstream: UpstreamDirectory, tmp_path: Path, header: str) -> None:
    """Through HAProxy in TCP mode every connection comes from the balancer: its failures
    would be one address's, so a few typos anywhere would lock every login through it, and
    the access records would name the balancer. With ``send-proxy-v2`` (deploy/haproxy.cfg)
    and ``[ldap] proxy_protocol_from`` naming the balancer, the facade counts and records the
    client's address: here the balancer connects from 127.0.0.2, one client from 127.0.0.3
    (ldap3's ``source_address``) and one from 127.0.0.1. The header is believed only from
    the balancer: another client that sends one claims nothing, and a connection from the
    balancer without one is closed."""
    from ldap3 import Connection, Server, Tls

    from tests.balancer import haproxy_tcp

    persons = "address_delay_after = 100\naddress_lockout_after = 3\n"
    config = _config([upstream.url], persons=persons, require_tls=True) + \
        '[ldap]\nproxy_protocol_from = ["127.0.0.2"]\n'
    with _serve(people, tmp_path / "facade", config, ldaps=True) as copy:
        port, ldaps_port = copy.serving.ldap_ports
        with haproxy_tcp(tmp_path / "lb", "127.0.0.1", port,
                         f"source 127.0.0.2 {header}") as balanced, \
                haproxy_tcp(tmp_path / "lbs", "127.0.0.1", ldaps_port,
                            f"source 127.0.0.2 {header}") as stack_balancer:
            ldaps = stack_balancer.replace("ldap://", "ldaps://")
            first, second = people.active[0], people.active[1]

            def from_3(password: str) -> bool:
                """A person bind from 127.0.0.3 through the balancer, after StartTLS."""
                host, lb_port = balanced.removeprefix("ldap://").split(":")
                conn = Connection(Server(host, int(lb_port), tls=Tls(validate=0)),
                                  f"{first}@{UPN}", password, source_address="127.0.0.3",
                                  receive_timeout=20)
                conn.open()
                conn.start_tls()
                ok = bool(conn.bind())
                conn.unbind()
                return ok

            for _ in range(3):  # 127.0.0.3's address is locked after 3 failures
                assert not from_3("typo")
            assert not from_3(people.passwords[first])
            # 127.0.0.1 through the same balancer is another address: not locked.
            assert _code(balanced, f"{second}@{UPN}", people.passwords[second],
                         starttls=True) == 0
            assert _code(ldaps, f"{second}@{UPN}", people.passwords[second]) == 0
            later = access_records(copy.db, lambda rs: len(rs) >= 2,
                                   client=f"person:{second}")
            records = access_records(copy.db, bool, client=f"person:{first}") + later
            hosts = sorted({r.source.split("@")[0].rsplit(":", 1)[0] for r in records})
            assert hosts == ["ldap:127.0.0.1", "ldap:127.0.0.3"], hosts
            assert [r.status for r in records[:4]] == ["49 wrong password"] * 3 + \
                ["49 locked out"]
        # Anyone else's header claims nothing: not LDAP, the connection is closed.
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(b"PROXY TCP4 6.6.6.6 127.0.0.1 4242 389\r\n")
            sock.settimeout(10)
            try:
                while sock.recv(4096):
                    pass
            except ConnectionResetError:
                pass
        # From the balancer's address without a header: closed before any answer.
        with socket.socket() as sock:
            sock.bind(("127.0.0.2", 0))
            sock.settimeout(10)
            sock.connect(("127.0.0.1", port))
            sock.sendall(bytes.fromhex("300c020101600702010304008000"))  # anonymous bind
            try:
                assert sock.recv(4096) == b""
            except ConnectionResetError:
                pass
        assert _code(copy.serving.ldap_url, f"{second}@{UPN}", people.passwords[second],
                     starttls=True) == 0  # the server goes on
        audit = AuditLog(make_engine(copy.db))
        assert not [r for r in audit.query() if "6.6.6.6" in r.source or
                    r.source.startswith("ldap:127.0.0.2:")]
        audit.close()


def test_a_leaver_is_unbound_on_an_open_connection(people: People,
                                                   upstream: UpstreamDirectory,
                                                   tmp_path: Path) -> None:
    with _serve(people, tmp_path, _config([upstream.url])) as copy:
        url = copy.serving.ldap_url
        user = people.active[3]
        conn = ldap_bind(url, f"{user}@{UPN}", people.passwords[user], timeout=20)
        base = f"ou=people,{copy.base}"
        assert len(conn.search_s(base, ldap.SCOPE_SUBTREE, f"(uid={user})", ["uid"])) == 1
        engine = make_engine(copy.db)
        entry = next(e for e in Directory(engine).snapshot.entries
                     if e.kind == ACCOUNT and e.first("userName") == user)
        engine.dispose()
        copy.write(ending_engagements(str(entry.first("personId"))))
        deadline = time.monotonic() + 30
        while True:
            try:
                conn.search_s(base, ldap.SCOPE_SUBTREE, f"(uid={user})", ["uid"])
            except ldap.INSUFFICIENT_ACCESS as exc:
                assert "bind again" in exc.args[0]["info"]
                break
            assert time.monotonic() < deadline, "the leaver stayed bound"
            time.sleep(0.2)
        assert _code(url, f"{user}@{UPN}", people.passwords[user]) == \
            ldap.INVALID_CREDENTIALS.errnum
