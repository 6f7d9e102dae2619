"""Revoke, rotate and policy changes reach connections that are already open.

An LDAP connection binds once and may stay open for hours (nslcd, SSSD, application pools).
Once, a client revoked with ``clients revoke`` still had its searches answered on such a
connection 60 s later. Now every operation re-checks the bound client (the store row at most
once a second), so the next operation after a change sees it: 50 with "bind again" after a
revoke or rotate, the new policy after ``clients policy``, and a paged search started under
the old policy is not continued under the new one. The changes are made from this process,
as the CLI would, against a server running in another.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import ldap
import pytest
from ldap.controls import SimplePagedResultsControl

from idm_facade.access.clients import ClientRegistry
from tests.serving import Serving, ldap_bind, served_copy

pytestmark = pytest.mark.skipif(shutil.which("ldapsearch") is None,
                                reason="ldap-utils (ldapsearch) is not installed")

#: How long a change may take to reach another process (RECHECK_SECONDS, with slack for a
#: loaded machine); the tests poll and stop as soon as it has.
SETTLE = 10.0


@dataclass
class Ctx:
    serving: Serving
    registry: ClientRegistry
    base: str

    def bind(self, name: str, secret: str):
        return ldap_bind(self.serving.ldap_url, self.registry.bind_dn_of(name), secret)

    @property
    def people(self) -> str:
        return f"ou=people,{self.base}"


@pytest.fixture(scope="module")
def ctx(demo_db, tmp_path_factory) -> Iterator[Ctx]:
    with served_copy(demo_db, tmp_path_factory.mktemp("revocation"),
                     '[policies.narrow]\nattributes = ["displayName"]\n') as copy:
        assert copy.serving is not None
        yield Ctx(copy.serving, copy.registry, copy.base)


def _until(check: Callable[[], bool]) -> bool:
    ends = time.monotonic() + SETTLE
    while time.monotonic() < ends:
        if check():
            return True
        time.sleep(0.1)
    return check()


def _mails(conn, people: str) -> int:
    found = conn.search_s(people, ldap.SCOPE_ONELEVEL, "(objectClass=inetOrgPerson)",
                          ["mail", "cn"])
    return sum(1 for _, attrs in found if attrs.get("mail"))


def _refused(conn, people: str) -> bool:
    try:
        conn.search_s(people, ldap.SCOPE_BASE, "(objectClass=*)")
    except ldap.INSUFFICIENT_ACCESS as exc:
        assert "bind again" in exc.args[0]["info"]
        return True
    return False


def test_a_policy_change_reaches_an_open_connection(ctx: Ctx) -> None:
    secret = ctx.registry.add("rev-policy", "ldap", "default")
    conn = ctx.bind("rev-policy", secret)
    assert _mails(conn, ctx.people) > 0
    ctx.registry.set_policy("rev-policy", "narrow")
    assert _until(lambda: _mails(conn, ctx.people) == 0)
    # still bound, now through the narrow policy
    (_, attrs), *_ = conn.search_s(ctx.people, ldap.SCOPE_ONELEVEL,
                                   "(objectClass=inetOrgPerson)", ["*"])
    assert "mail" not in attrs and "cn" in attrs
    conn.unbind_s()


def test_a_paged_search_is_not_continued_under_a_new_policy(ctx: Ctx) -> None:
    secret = ctx.registry.add("rev-paged", "ldap", "default")
    conn = ctx.bind("rev-paged", secret)
    page = SimplePagedResultsControl(True, size=5, cookie=b"")
    msgid = conn.search_ext(ctx.people, ldap.SCOPE_ONELEVEL, "(objectClass=inetOrgPerson)",
                            ["mail"], serverctrls=[page])
    _, first, _, ctrls = conn.result3(msgid)
    assert len(first) == 5
    cookie = next(c for c in ctrls if c.controlType == page.controlType).cookie
    ctx.registry.set_policy("rev-paged", "narrow")
    assert _until(lambda: _mails(conn, ctx.people) == 0)
    page.cookie = cookie
    with pytest.raises(ldap.UNWILLING_TO_PERFORM) as refused:
        msgid = conn.search_ext(ctx.people, ldap.SCOPE_ONELEVEL,
                                "(objectClass=inetOrgPerson)", ["mail"], serverctrls=[page])
        conn.result3(msgid)
    assert "policy changed" in refused.value.args[0]["info"]
    conn.unbind_s()


def test_rotate_unbinds_open_connections_and_the_new_secret_works(ctx: Ctx) -> None:
    old = ctx.registry.add("rev-rotate", "ldap", "default")
    conn = ctx.bind("rev-rotate", old)
    assert not _refused(conn, ctx.people)
    new = ctx.registry.rotate("rev-rotate")
    assert _until(lambda: _refused(conn, ctx.people))
    with pytest.raises(ldap.INVALID_CREDENTIALS):
        ctx.bind("rev-rotate", old)
    again = ctx.bind("rev-rotate", new)
    assert not _refused(again, ctx.people)
    # the refused connection binds again and is answered
    conn.simple_bind_s(ctx.registry.bind_dn_of("rev-rotate"), new)
    assert not _refused(conn, ctx.people)
    conn.unbind_s()
    again.unbind_s()


def test_revoke_unbinds_open_connections(ctx: Ctx) -> None:
    secret = ctx.registry.add("rev-revoke", "ldap", "default")
    conn = ctx.bind("rev-revoke", secret)
    whoami = conn.whoami_s()
    assert "rev-revoke" in whoami
    ctx.registry.revoke("rev-revoke")
    assert _until(lambda: _refused(conn, ctx.people))
    assert conn.whoami_s() == ""  # no longer bound as anyone
    with pytest.raises(ldap.INVALID_CREDENTIALS):
        ctx.bind("rev-revoke", secret)
    conn.unbind_s()
