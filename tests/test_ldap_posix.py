"""POSIX over LDAP (``[ldap] posix = true``): the lookups nslcd makes, against ``idm-facade
serve`` on a copy of the S demo store.

nslcd itself is not run: it reads only ``/etc/nslcd.conf`` and listens on a fixed socket, so
running it means changing the machine's configuration. Instead we send the filters it sends
(``getent passwd NAME|NUMBER``, ``getent group NAME|NUMBER``, group membership, enumeration)
with python-ldap and ldapsearch, and check the answers against the numbers read back.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import ldap
import pytest
from ldap.controls import SimplePagedResultsControl

from idm_facade.access.clients import ClientRegistry
from idm_facade.config import Config
from idm_facade.ldap import dit
from store.engine import make_engine, write_session
from tests.serving import Serving, copy_store, start_serve
from tests.test_incremental import _new_hire

pytestmark = pytest.mark.skipif(shutil.which("ldapsearch") is None,
                                reason="ldap-utils (ldapsearch) is not installed")

#: What nslcd asks for (its default attribute maps).
PASSWD_ATTRS = ["uid", "userPassword", "uidNumber", "gidNumber", "gecos", "cn",
                "homeDirectory", "loginShell"]
GROUP_ATTRS = ["cn", "userPassword", "gidNumber", "memberUid", "member"]


@dataclass
class Ctx:
    serving: Serving
    engine: object
    base: str
    bind_dn: str
    secret: str
    tmp: Path

    def conn(self) -> ldap.ldapobject.LDAPObject:
        conn = ldap.initialize(self.serving.ldap_url)
        conn.protocol_version = 3
        conn.set_option(ldap.OPT_REFERRALS, 0)
        conn.simple_bind_s(self.bind_dn, self.secret)
        return conn

    def search(self, container: str, flt: str, attrs: list[str] | None = None
               ) -> dict[str, dict[str, list[str]]]:
        """{dn: {attr: values}} of every entry under ``ou=<container>`` (paged, as nslcd
        with ``pagesize`` does)."""
        conn = self.conn()
        page = SimplePagedResultsControl(True, size=500, cookie="")
        found: dict[str, dict[str, list[str]]] = {}
        try:
            while True:
                msgid = conn.search_ext(f"ou={container},{self.base}", ldap.SCOPE_SUBTREE,
                                        flt, attrs, serverctrls=[page])
                _, data, _, ctrls = conn.result3(msgid)
                for dn, entry in data:
                    found[dn] = {k: [v.decode() for v in vals] for k, vals in entry.items()}
                cookie = next((c.cookie for c in ctrls
                               if c.controlType == SimplePagedResultsControl.controlType), b"")
                if not cookie:
                    return found
                page.cookie = cookie
        finally:
            conn.unbind_s()


@pytest.fixture(scope="module")
def ctx(demo_db: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Ctx]:
    tmp = tmp_path_factory.mktemp("ldapposix")
    db = copy_store(demo_db, tmp / "idm.db")  # this module adds an account
    config_path = tmp / "idm.toml"
    config_path.write_text(f'[directory]\nstate_dir = "{tmp}"\n[ldap]\nposix = true\n')
    engine = make_engine(db)
    clients = ClientRegistry(engine, Config({"directory": {"state_dir": str(tmp)}}))
    secret = clients.add("nss", "ldap", "default")
    serving = start_serve(db, config_path)
    try:
        yield Ctx(serving, engine, clients.base, clients.bind_dn_of("nss"), secret, tmp)
    finally:
        serving.stop()
        engine.dispose()


def _people(ctx: Ctx) -> dict[str, tuple[int, int]]:
    """uid -> (uidNumber, gidNumber) of every posixAccount (nslcd's enumeration)."""
    found = ctx.search("people", "(objectClass=posixAccount)", PASSWD_ATTRS)
    out = {}
    for entry in found.values():
        assert len(entry["uidNumber"]) == 1 and len(entry["gidNumber"]) == 1, entry
        assert entry["homeDirectory"] == [f"/home/{entry['uid'][0]}"]
        out[entry["uid"][0]] = (int(entry["uidNumber"][0]), int(entry["gidNumber"][0]))
    return out


def _groups(ctx: Ctx) -> dict[str, tuple[int, list[str]]]:
    """cn -> (gidNumber, memberUid) of every posixGroup."""
    found = ctx.search("groups", "(objectClass=posixGroup)", GROUP_ATTRS)
    return {dn: (int(e["gidNumber"][0]), e.get("memberUid", [])) for dn, e in found.items()}


def test_numbers_are_unique_and_primary_groups_exist(ctx: Ctx) -> None:
    people = _people(ctx)
    groups = _groups(ctx)
    assert len(people) > 100 and len(groups) > 20
    uids = [u for u, _ in people.values()]
    assert len(set(uids)) == len(uids)
    assert min(uids) >= 100000
    gids = [g for g, _ in groups.values()]
    assert len(set(gids)) == len(gids)
    by_gid = {g: members for g, members in groups.values()}
    for uid, (_, gid) in people.items():
        if gid == 100000:
            continue  # accounts without a unit share the reserved group number
        assert gid in by_gid, uid  # the primary group is a real group: its primary unit
        assert uid in by_gid[gid]
    assert sum(gid != 100000 for _, gid in people.values()) > len(people) // 2


def test_getent_passwd_and_group_by_number(ctx: Ctx) -> None:
    people = _people(ctx)
    groups = _groups(ctx)
    for uid in sorted(people)[::37]:
        number, gid = people[uid]
        # getent passwd <number>
        hits = ctx.search("people", f"(&(objectClass=posixAccount)(uidNumber={number}))",
                          PASSWD_ATTRS)
        assert [e["uid"] for e in hits.values()] == [[uid]]
        # getent passwd <name> gives the same number
        hits = ctx.search("people", f"(&(objectClass=posixAccount)(uid={uid}))", PASSWD_ATTRS)
        assert [e["uidNumber"] for e in hits.values()] == [[str(number)]]
        # getent group <primary gid>, and the group-of-member lookup nslcd makes for `id`
        if gid != 100000:
            hits = ctx.search("groups", f"(&(objectClass=posixGroup)(gidNumber={gid}))",
                              GROUP_ATTRS)
            assert len(hits) == 1 and uid in next(iter(hits.values()))["memberUid"]
            dn = f"uid={uid},ou=people,{ctx.base}"
            member_of = ctx.search(
                "groups", f"(&(objectClass=posixGroup)(|(memberUid={uid})(member={dn})))",
                ["gidNumber"])
            assert str(gid) in {e["gidNumber"][0] for e in member_of.values()}
    for dn, (gid, _) in list(groups.items())[::11]:
        hits = ctx.search("groups", f"(&(objectClass=posixGroup)(gidNumber={gid}))",
                          GROUP_ATTRS)
        assert list(hits) == [dn]
    # A number nobody has, and a value that is not an integer: no entries, no error.
    free = max(u for u, _ in people.values()) + 1
    assert ctx.search("people", f"(&(objectClass=posixAccount)(uidNumber={free}))") == {}
    assert ctx.search("people", "(uidNumber=abc)") == {}


def test_ordering_on_numbers_is_numeric(ctx: Ctx) -> None:
    people = _people(ctx)
    numbers = sorted(u for u, _ in people.values())
    # Numbers of different lengths make string order differ from numeric order.
    assert sorted(numbers, key=str) != numbers
    for cut in (numbers[len(numbers) // 2], numbers[0], numbers[-1], numbers[-1] + 1, 999):
        ge = ctx.search("people", f"(uidNumber>={cut})", ["uid"])
        assert {e["uid"][0] for e in ge.values()} == {u for u, (n, _) in people.items()
                                                       if n >= cut}, cut
        le = ctx.search("people", f"(uidNumber<={cut})", ["uid"])
        assert {e["uid"][0] for e in le.values()} == {u for u, (n, _) in people.items()
                                                       if n <= cut}, cut
    low, high = numbers[len(numbers) // 4], numbers[3 * len(numbers) // 4]
    both = ctx.search("people", f"(&(uidNumber>={low})(!(uidNumber>={high})))", ["uid"])
    assert {e["uid"][0] for e in both.values()} == {u for u, (n, _) in people.items()
                                                     if low <= n < high}
    # Server-side sort by uidNumber orders numerically.
    out = subprocess.run(
        ["ldapsearch", "-x", "-LLL", "-o", "ldif-wrap=no", "-H", ctx.serving.ldap_url,
         "-D", ctx.bind_dn, "-w", ctx.secret, "-b", f"ou=people,{ctx.base}",
         "-E", "pr=1000/noprompt", "-E", "sss=uidNumber", "(objectClass=posixAccount)",
         "uidNumber"], capture_output=True, text=True, timeout=60,
        env=dict(os.environ, LDAPTLS_REQCERT="never"))
    assert out.returncode == 0, out.stderr
    got = [int(line.split(": ")[1]) for line in out.stdout.splitlines()
           if line.startswith("uidNumber: ")]
    assert got == numbers


def test_numbers_stay_put_when_an_account_is_added(ctx: Ctx) -> None:
    before = _people(ctx)
    groups_before = _groups(ctx)
    with write_session(ctx.engine, actor="test") as session:
        _new_hire(session)
    deadline = time.monotonic() + 15
    after = before
    while time.monotonic() < deadline:
        after = _people(ctx)
        if "nyme" in after:
            break
        time.sleep(0.1)
    assert "nyme" in after, ctx.serving.output()
    assert {u: after[u] for u in before} == before
    assert {dn: g for dn, (g, _) in _groups(ctx).items()} == \
        {dn: g for dn, (g, _) in groups_before.items()}
    numbers = [u for u, _ in after.values()]
    assert len(set(numbers)) == len(numbers)
    hits = ctx.search("people", f"(&(objectClass=posixAccount)(uidNumber={after['nyme'][0]}))",
                      ["uid"])
    assert [e["uid"] for e in hits.values()] == [["nyme"]]


def test_without_posix_the_numbers_do_not_exist_in_ldap() -> None:
    """Off by default: no uidNumber/gidNumber to read or to filter on, in any view; and the
    organizationalUnit view never has them."""
    for view in (dit.PEOPLE, dit.GROUPS, dit.UNITS):
        for name in ("uidNumber", "gidNumber", "GIDNUMBER"):
            assert dit.directory_attrs(view, name) is None
    assert dit.directory_attrs(dit.PEOPLE, "uidnumber", posix=True) == \
        ("uidNumber", ("uidNumber",))
    assert dit.directory_attrs(dit.GROUPS, "gidNumber", posix=True) == \
        ("gidNumber", ("gidNumber",))
    assert dit.directory_attrs(dit.GROUPS, "uidNumber", posix=True) is None
    assert dit.directory_attrs(dit.UNITS, "gidNumber", posix=True) is None
