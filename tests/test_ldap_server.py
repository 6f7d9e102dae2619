"""The LDAP front end with real clients (ldapsearch, python-ldap, ldap3) over loopback.

The server is ``idm-facade serve`` in a subprocess (LDAP and LDAPS on OS-chosen ports) on the
S demo municipality; the test process reads the same SQLite file for expectations (its own
directory snapshot) and for the access log.
"""

from __future__ import annotations

import base64
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import ldap
import ldap3
import pytest
from ldap.controls import SimplePagedResultsControl

from idm_facade.access.audit import AuditLog
from idm_facade.access.clients import ClientRegistry
from idm_facade.config import Config
from idm_facade.directory import Directory
from schemas.attributes import ACCOUNT, GROUP_KINDS
from store import demo, exchange
from store.engine import make_engine
from tests.picks import sole_account
from tests.serving import access_records, ldap_source

pytestmark = pytest.mark.skipif(shutil.which("ldapsearch") is None,
                                reason="ldap-utils (ldapsearch) is not installed")

CONFIG = """
[directory]
state_dir = "{state}"
[ldap]
posix = true
"""


class Server:
    """A running ``idm-facade serve`` and what tests need around it."""

    def __init__(self, proc: subprocess.Popen, ldap_port: int, ldaps_port: int, base: str,
                 secrets: dict[str, str], directory: Directory, audit: AuditLog) -> None:
        self.proc = proc
        self.port = ldap_port
        self.ldaps_port = ldaps_port
        self.base = base
        self.secrets = secrets
        self.directory = directory
        self.audit = audit

    @property
    def url(self) -> str:
        return f"ldap://127.0.0.1:{self.port}"

    def dn(self, client: str) -> str:
        return f"cn={client},ou=clients,{self.base}"

    def ldapsearch(self, *args: str, client: str | None = "app", env: dict | None = None
                   ) -> subprocess.CompletedProcess:
        cmd = ["ldapsearch", "-x", "-LLL", "-o", "ldif-wrap=no", "-H", self.url]
        if client:
            cmd += ["-D", self.dn(client), "-w", self.secrets[client]]
        full_env = dict(os.environ, LDAPTLS_REQCERT="never", **(env or {}))
        return subprocess.run(cmd + list(args), capture_output=True, text=True, timeout=60,
                              env=full_env)

    def python_ldap(self, client: str | None = "app", url: str | None = None):
        conn = ldap.initialize(url or self.url)
        conn.protocol_version = 3
        conn.set_option(ldap.OPT_REFERRALS, 0)
        if client:
            conn.simple_bind_s(self.dn(client), self.secrets[client])
        return conn

    @property
    def accounts(self) -> list:
        return [e for e in self.directory.snapshot.entries if e.kind == ACCOUNT]


def _start(db: str, config_path: Path) -> tuple[subprocess.Popen, list[int]]:
    exe = Path(sys.executable).with_name("idm-facade")
    proc = subprocess.Popen(
        [str(exe), "serve", "--db", db, "--host", "127.0.0.1", "--scim-port", "0",
         "--ldap-port", "0", "--ldaps-port", "0", "--config", str(config_path)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    ports: list[int] = []
    deadline = time.monotonic() + 120
    assert proc.stdout is not None
    while len(ports) < 2 and time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        found = re.match(r"LDAP\s+127\.0\.0\.1:(\d+)", line)
        if found:
            ports.append(int(found.group(1)))
    if len(ports) < 2:
        proc.kill()
        raise RuntimeError("idm-facade serve did not start its LDAP listeners")
    return proc, ports


def _stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("ldap")
    db = f"sqlite:///{tmp / 'idm.db'}"
    engine = make_engine(db)
    exchange.import_document(engine, demo.generate("S", 1), actor="test")
    config_path = tmp / "idm.toml"
    config_path.write_text(CONFIG.format(state=tmp))
    config = Config({"directory": {"state_dir": str(tmp)}, "ldap": {"posix": True}})
    clients = ClientRegistry(engine, config)
    secrets = {"app": clients.add("app", "ldap", "default"),
               "cprapp": clients.add("cprapp", "ldap", "demo-cpr")}
    proc, ports = _start(db, config_path)
    directory = Directory(engine)
    audit = AuditLog(engine, config)
    try:
        yield Server(proc, ports[0], ports[1], clients.base, secrets, directory, audit)
    finally:
        _stop(proc)
        audit.close()
        engine.dispose()


def _values(output: str, attr: str) -> list[str]:
    """Values of ``attr`` in LDIF output (base64 ``attr::`` values decoded)."""
    out = []
    for sep, value in re.findall(rf"^{attr}(::?) ?(.*)$", output, re.M | re.I):
        out.append(base64.b64decode(value).decode() if sep == "::" else value)
    return out


def _dns(output: str) -> list[str]:
    return _values(output, "dn")


# ------------------------------------------------------------------ rootDSE and schema


def test_root_dse_for_any_case_of_objectclass(server):
    for flt in ("(objectclass=*)", "(objectClass=*)", "(OBJECTCLASS=*)"):
        out = server.ldapsearch("-b", "", "-s", "base", flt, client=None)
        assert out.returncode == 0, out.stderr
        assert _values(out.stdout, "namingContexts") == [server.base]
        assert "1.2.840.113556.1.4.319" in _values(out.stdout, "supportedControl")
        assert "1.3.6.1.4.1.1466.20037" in _values(out.stdout, "supportedExtension")
        assert _values(out.stdout, "subschemaSubentry") == ["cn=Subschema"]


def test_root_dse_operational_attributes_with_plus(server):
    """RFC 4512 makes the rootDSE's attributes operational: ``+`` must return them."""
    out = server.ldapsearch("-b", "", "-s", "base", "(objectClass=*)", "+", client=None)
    assert out.returncode == 0, out.stderr
    assert _values(out.stdout, "namingContexts") == [server.base]
    assert "1.2.840.113556.1.4.319" in _values(out.stdout, "supportedControl")
    assert _values(out.stdout, "objectClass") == []  # a user attribute: not asked for


def test_subschema_generated_from_the_attribute_map(server):
    out = server.ldapsearch("-b", "cn=Subschema", "-s", "base", "(objectClass=subschema)",
                            "+", client=None)
    assert out.returncode == 0, out.stderr
    types = _values(out.stdout, "attributeTypes")
    assert any("NAME 'idmCprNumber'" in t for t in types)
    assert any("NAME 'uid'" in t for t in types)
    assert any("NAME 'idmPerson'" in c for c in _values(out.stdout, "objectClasses"))


def test_ldap3_reads_root_dse_and_schema(server):
    srv = ldap3.Server("127.0.0.1", port=server.port, get_info=ldap3.ALL)
    conn = ldap3.Connection(srv, server.dn("app"), server.secrets["app"], auto_bind=True)
    assert "1.2.840.113556.1.4.319" in [c[0] for c in srv.info.supported_controls]
    assert srv.schema is not None and "idmCprNumber" in srv.schema.attribute_types
    conn.unbind()


# ------------------------------------------------------------------ binds and access


def test_binds_good_bad_sasl_anonymous(server):
    conn = server.python_ldap("app")
    assert conn.whoami_s() == f"dn:{server.dn('app')}"
    conn.unbind_s()
    bad = ldap.initialize(server.url)
    with pytest.raises(ldap.INVALID_CREDENTIALS):
        bad.simple_bind_s(server.dn("app"), "wrong")
    with pytest.raises(ldap.INVALID_CREDENTIALS):
        bad.simple_bind_s(f"cn=nobody,ou=clients,{server.base}", "x")
    with pytest.raises(ldap.UNWILLING_TO_PERFORM):
        bad.simple_bind_s(server.dn("app"), "")
    # ldap3: failed bind reports 49; SASL gets 7.
    c3 = ldap3.Connection(ldap3.Server("127.0.0.1", port=server.port), server.dn("app"), "no")
    assert c3.bind() is False and c3.result["result"] == 49
    sasl = ldap3.Connection(ldap3.Server("127.0.0.1", port=server.port),
                            authentication=ldap3.SASL, sasl_mechanism=ldap3.EXTERNAL)
    assert sasl.bind() is False and sasl.result["result"] == 7
    # Anonymous: the bind succeeds, searching the tree does not (anonymous is off).
    anon = ldap.initialize(server.url)
    anon.simple_bind_s("", "")
    with pytest.raises(ldap.INSUFFICIENT_ACCESS):
        anon.search_s(f"ou=people,{server.base}", ldap.SCOPE_SUBTREE, "(uid=*)")


def test_ldapv2_refused(server):
    conn = ldap.initialize(server.url)
    conn.protocol_version = 2
    with pytest.raises(ldap.PROTOCOL_ERROR):
        conn.simple_bind_s(server.dn("app"), server.secrets["app"])


def test_writes_are_refused(server):
    conn = server.python_ldap()
    with pytest.raises(ldap.UNWILLING_TO_PERFORM):
        conn.add_s(f"uid=x,ou=people,{server.base}", [("objectClass", [b"top"])])
    uid = server.accounts[0].first("userName")
    with pytest.raises(ldap.UNWILLING_TO_PERFORM):
        conn.modify_s(f"uid={uid},ou=people,{server.base}", [(ldap.MOD_REPLACE, "sn", [b"x"])])
    with pytest.raises(ldap.UNWILLING_TO_PERFORM):
        conn.delete_s(f"uid={uid},ou=people,{server.base}")


# ------------------------------------------------------------------ scopes and limits


def test_every_scope(server):
    snap = server.directory.snapshot
    people = f"ou=people,{server.base}"
    one = server.ldapsearch("-b", people, "-s", "one", "1.1")
    assert len(_dns(one.stdout)) == len(server.accounts)
    sub = server.ldapsearch("-b", people, "-s", "sub", "1.1")
    assert len(_dns(sub.stdout)) == len(server.accounts) + 1  # plus ou=people itself
    uid = server.accounts[0].first("userName")
    base = server.ldapsearch("-b", f"UID={uid.upper()}, OU=People,{server.base.upper()}",
                             "-s", "base", "uid")
    assert base.returncode == 0 and _values(base.stdout, "uid") == [uid]
    # Group view: every unit, role and role group once.
    groups = server.ldapsearch("-b", f"ou=groups,{server.base}", "-s", "one", "1.1")
    assert len(_dns(groups.stdout)) == sum(1 for e in snap.entries if e.kind in GROUP_KINDS)
    # The unit tree: one level under the root holds exactly the root's children.
    units = server.ldapsearch("-b", f"ou=units,{server.base}", "-s", "one", "entryUUID")
    (root_id,) = _values(units.stdout, "entryUUID")
    (root_dn,) = _dns(units.stdout)
    children = server.ldapsearch("-b", root_dn, "-s", "one", "entryUUID")
    expected = {e.id for e in snap.entries if e.first("parent") == root_id}
    assert set(_values(children.stdout, "entryUUID")) == expected and expected
    missing = server.ldapsearch("-b", f"uid=nobody-here,{people}", "-s", "base")
    assert missing.returncode == 32
    bad = server.ldapsearch("-b", "not a dn", "-s", "base")
    assert bad.returncode == 34


def test_size_limit_returns_entries_up_to_it(server):
    out = server.ldapsearch("-b", f"ou=people,{server.base}", "-s", "one", "-z", "5", "uid")
    assert out.returncode == 4
    assert len(_dns(out.stdout)) == 5
    conn = server.python_ldap()
    msgid = conn.search_ext(f"ou=people,{server.base}", ldap.SCOPE_ONELEVEL, "(uid=*)",
                            ["uid"], sizelimit=3)
    with pytest.raises(ldap.SIZELIMIT_EXCEEDED):
        conn.result3(msgid)


def test_attribute_selection_and_types_only(server):
    uid = server.accounts[0].first("userName")
    flt = f"(uid={uid})"
    plain = server.ldapsearch("-b", server.base, flt)
    assert "entryUUID:" not in plain.stdout and "memberOf:" in plain.stdout
    ops = server.ldapsearch("-b", server.base, flt, "+")
    assert "entryUUID:" in ops.stdout and "uid:" not in ops.stdout
    assert "hasSubordinates: FALSE" in ops.stdout
    none = server.ldapsearch("-b", server.base, flt, "1.1")
    assert none.stdout.strip() == f"dn: uid={uid},ou=people,{server.base}"
    named = server.ldapsearch("-b", server.base, flt, "MAIL", "Uid")
    assert re.findall(r"^(\w+):", named.stdout, re.M) == ["dn", "uid", "mail"] or \
        re.findall(r"^(\w+):", named.stdout, re.M) == ["dn", "uid"]
    types = server.ldapsearch("-A", "-b", server.base, flt, "uid", "sn")
    assert re.search(r"^uid:\s*$", types.stdout, re.M) and uid not in types.stdout.split(
        "\n", 1)[1]


# ------------------------------------------------------------------ controls


def test_paged_results_ldapsearch_and_critical(server):
    people = f"ou=people,{server.base}"
    for control in ("pr=10/noprompt", "!pr=10/noprompt"):
        out = server.ldapsearch("-b", people, "-s", "one", "-E", control, "1.1")
        assert out.returncode == 0, out.stderr
        assert len(_dns(out.stdout)) == len(server.accounts)
        assert len(set(_dns(out.stdout))) == len(server.accounts)


def test_paged_results_python_ldap_loop(server):
    conn = server.python_ldap()
    page = SimplePagedResultsControl(True, size=7, cookie="")
    seen, sizes = [], []
    while True:
        msgid = conn.search_ext(f"ou=people,{server.base}", ldap.SCOPE_ONELEVEL, "(uid=*)",
                                ["uid"], serverctrls=[page])
        _, data, _, ctrls = conn.result3(msgid)
        sizes.append(len(data))
        seen += [dn for dn, _ in data]
        (resp,) = [c for c in ctrls if c.controlType == SimplePagedResultsControl.controlType]
        assert resp.size == len(server.accounts)
        if not resp.cookie:
            break
        page.cookie = resp.cookie
    assert len(seen) == len(set(seen)) == len(server.accounts)
    assert set(sizes[:-1]) == {7}
    # A forged cookie is refused.
    page.cookie = b"forged"
    with pytest.raises(ldap.PROTOCOL_ERROR):
        conn.result3(conn.search_ext(f"ou=people,{server.base}", ldap.SCOPE_ONELEVEL,
                                     "(uid=*)", ["uid"], serverctrls=[page]))


def test_paged_results_ldap3_generator(server):
    conn = ldap3.Connection(ldap3.Server("127.0.0.1", port=server.port), server.dn("app"),
                            server.secrets["app"], auto_bind=True)
    entries = list(conn.extend.standard.paged_search(
        f"ou=groups,{server.base}", "(objectClass=groupOfNames)", attributes=["cn"],
        paged_size=5, generator=True))
    groups = [e for e in server.directory.snapshot.entries if e.kind in GROUP_KINDS]
    assert len([e for e in entries if e["type"] == "searchResEntry"]) == len(groups)


def test_server_side_sort(server):
    out = server.ldapsearch("-b", f"ou=people,{server.base}", "-s", "one", "-E", "!sss=uid",
                            "uid")
    uids = _values(out.stdout, "uid")
    assert uids == sorted(uids, key=str.casefold) and len(uids) == len(server.accounts)
    rev = server.ldapsearch("-b", f"ou=people,{server.base}", "-s", "one", "-E", "sss=-sn",
                            "sn")
    sns = [s.casefold() for s in _values(rev.stdout, "sn")]
    assert sns == sorted(sns, reverse=True)
    unknown = server.ldapsearch("-b", f"ou=people,{server.base}", "-E", "!sss=noSuchAttr")
    assert unknown.returncode == 12


def test_unknown_critical_control(server):
    out = server.ldapsearch("-b", server.base, "-E", "!1.2.3.4.5", "(uid=x)")
    assert out.returncode == 12


# ------------------------------------------------------------------ TLS and extended ops


def test_starttls_ldaps_and_whoami(server):
    out = server.ldapsearch("-ZZ", "-b", f"ou=people,{server.base}", "-s", "one", "-z", "1",
                            "1.1")
    assert out.returncode in (0, 4) and len(_dns(out.stdout)) == 1, out.stderr
    ldaps = subprocess.run(
        ["ldapwhoami", "-x", "-H", f"ldaps://127.0.0.1:{server.ldaps_port}", "-D",
         server.dn("app"), "-w", server.secrets["app"]], capture_output=True, text=True,
        env=dict(os.environ, LDAPTLS_REQCERT="never"), timeout=30)
    assert ldaps.stdout.strip() == f"dn:{server.dn('app')}"
    conn = ldap.initialize(server.url)
    conn.set_option(ldap.OPT_X_TLS_REQUIRE_CERT, ldap.OPT_X_TLS_NEVER)
    conn.set_option(ldap.OPT_X_TLS_NEWCTX, 0)
    conn.start_tls_s()
    conn.simple_bind_s(server.dn("app"), server.secrets["app"])
    assert conn.whoami_s() == f"dn:{server.dn('app')}"
    c3 = ldap3.Connection(ldap3.Server("127.0.0.1", port=server.port, tls=ldap3.Tls(
        validate=0)), server.dn("app"), server.secrets["app"])
    assert c3.start_tls() and c3.bind()


def test_require_tls_refuses_service_account_binds_in_clear(demo_db, tmp_path):
    """``[ldap] require_tls``: a service account's secret only over LDAPS or after StartTLS
    (for a client whose policy shows CPR numbers, say); in clear its bind gets 13
    confidentialityRequired, as slapd's ``security simple_bind=`` answers, before the secret
    is checked. Off by default."""
    from tests.serving import ldap_bind, served_copy

    with served_copy(demo_db, tmp_path, "[ldap]\nrequire_tls = true\n",
                     (("app", "ldap", "default"),), ldaps=True) as copy:
        assert copy.serving is not None
        url, dn, secret = copy.serving.ldap_url, copy.bind_dn("app"), copy.secrets["app"]
        with pytest.raises(ldap.CONFIDENTIALITY_REQUIRED):
            ldap_bind(url, dn, secret, timeout=20)
        with pytest.raises(ldap.CONFIDENTIALITY_REQUIRED):
            ldap_bind(url, dn, "wrong", timeout=20)  # the same answer: nothing checked
        conn = ldap_bind(url, dn, secret, timeout=20, starttls=True)
        assert conn.whoami_s() == f"dn:{dn}"
        conn.unbind_s()
        conn = ldap_bind(f"ldaps://127.0.0.1:{copy.serving.ldap_ports[1]}", dn, secret,
                         timeout=20)
        assert conn.whoami_s() == f"dn:{dn}"
        conn.unbind_s()
        statuses = [r.status for r in access_records(copy.db, lambda rs: len(rs) >= 4)
                    if r.operation == "bind"]
        assert statuses == ["13 no TLS", "13 no TLS", "success", "success"], statuses


def test_garbage_and_tls_hello_close_the_connection(server):
    for junk in (b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03" + b"x" * 64,
                 b"GET / HTTP/1.0\r\n\r\n", b"\x30\x84\x7f\xff\xff\xff" + b"\x00" * 32):
        sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
        sock.sendall(junk)
        data = b""
        while True:
            chunk = sock.recv(4096)
            if not chunk:
                break
            data += chunk
        sock.close()
        assert b"1.3.6.1.4.1.1466.20036" in data  # notice of disconnection, then closed
    conn = server.python_ldap()
    assert conn.whoami_s()


# ------------------------------------------------------------------ filters clients send


def _member_account(server):
    return next(e for e in server.accounts if e.attrs.get("memberOf")
                and e.attrs.get("emails.value@PUBLIC"))


def test_client_default_filters(server):
    acc = _member_account(server)
    uid = acc.first("userName")
    people = f"ou=people,{server.base}"
    groups = f"ou=groups,{server.base}"
    user_dn = f"uid={uid},{people}"
    # Nextcloud login / user filters.
    nc = server.ldapsearch("-b", server.base,
                           f"(&(|(objectclass=inetOrgPerson))(|(uid={uid})(mail={uid})))",
                           "entryuuid")
    assert _dns(nc.stdout) == [user_dn]
    # Grafana: user search, then posixGroup membership by memberUid.
    gf = server.ldapsearch("-b", server.base, f"(|(cn={uid})(uid={uid}))", "dn")
    assert _dns(gf.stdout) == [user_dn]
    gg = server.ldapsearch("-b", groups, f"(&(objectClass=posixGroup)(memberUid={uid}))",
                           "entryUUID")
    snap_groups = {str(g) for g in acc.attrs["memberOf"]}
    assert set(_values(gg.stdout, "entryUUID")) == snap_groups
    # GitLab: uid plus a memberOf user filter.
    group_dn = server.ldapsearch("-b", groups, f"(entryUUID={sorted(snap_groups)[0]})",
                                 "1.1").stdout.split(": ", 1)[1].strip()
    gl = server.ldapsearch("-b", server.base, f"(&(uid={uid})(memberof={group_dn}))", "1.1")
    assert _dns(gl.stdout) == [user_dn]
    # Jenkins: group search and membership.
    cn = group_dn.split(",")[0].split("=", 1)[1]
    jg = server.ldapsearch("-b", server.base, f"(& (cn={cn}) (| (objectclass=groupOfNames) "
                           "(objectclass=groupOfUniqueNames) (objectclass=posixGroup)))", "1.1")
    assert _dns(jg.stdout) == [group_dn]
    jm = server.ldapsearch("-b", groups, f"(| (member={user_dn}) (uniqueMember={user_dn}) "
                           f"(memberUid={uid}))", "entryUUID")
    assert set(_values(jm.stdout, "entryUUID")) == snap_groups


def test_dn_normalised_membership_and_in_chain_rule(server):
    acc = _member_account(server)
    uid = acc.first("userName")
    groups = f"ou=groups,{server.base}"
    gid = sorted(str(g) for g in acc.attrs["memberOf"])[0]
    group_dn = server.ldapsearch("-b", groups, f"(entryUUID={gid})", "1.1").stdout.split(
        ": ", 1)[1].strip()
    messy = ", ".join(p.upper() for p in group_dn.split(","))
    exact = server.ldapsearch("-b", server.base, f"(memberOf={group_dn})", "1.1")
    spaced = server.ldapsearch("-b", server.base, f"(memberOf={messy})", "1.1")
    chain = server.ldapsearch("-b", server.base,
                              f"(memberOf:1.2.840.113556.1.4.1941:={group_dn})", "1.1")
    assert _dns(exact.stdout) == _dns(spaced.stdout) == _dns(chain.stdout)
    assert f"uid={uid},ou=people,{server.base}" in _dns(exact.stdout)
    members = server.ldapsearch("-b", groups, f"(member=UID={uid.upper()},OU=PEOPLE,"
                                f"{server.base})", "entryUUID")
    assert gid in _values(members.stdout, "entryUUID")


def test_ordering_and_substring_and_unknown_attribute(server):
    snap = server.directory.snapshot
    people = f"ou=people,{server.base}"
    stamps = sorted(e.first("created") for e in server.accounts)
    mid = stamps[len(stamps) // 2]
    text = mid.strftime("%Y%m%d%H%M%SZ")
    ge = server.ldapsearch("-b", people, "-s", "one", f"(createTimestamp>={text})", "1.1")
    assert len(_dns(ge.stdout)) == sum(1 for s in stamps if s >= mid)
    acc = server.accounts[3]
    sn = acc.first("familyName")
    sub = server.ldapsearch("-b", people, "-s", "one", f"(sn=*{sn[1:-1]}*)", "sn")
    assert all(sn[1:-1].casefold() in v.casefold() for v in _values(sub.stdout, "sn"))
    assert acc.first("familyName") in _values(sub.stdout, "sn")
    unknown = server.ldapsearch("-b", people, "-s", "one", "(noSuchAttribute=1)", "1.1")
    assert unknown.returncode == 0 and not _dns(unknown.stdout)
    neg = server.ldapsearch("-b", people, "-s", "one", "(!(noSuchAttribute=1))", "1.1")
    assert not _dns(neg.stdout)  # NOT of Undefined stays Undefined
    assert snap is not None


# ------------------------------------------------------------------ policy and audit


def test_cpr_only_with_the_grant(server):
    acc = sole_account(server.accounts, needs="cpr")
    uid, cpr = acc.first("userName"), acc.first("cpr")
    plain = server.ldapsearch("-b", server.base, f"(uid={uid})", "*", "idmCprNumber")
    assert "idmCprNumber" not in plain.stdout and _dns(plain.stdout)
    probe = server.ldapsearch("-b", server.base, f"(idmCprNumber={cpr})", "1.1")
    assert not _dns(probe.stdout)
    granted = server.ldapsearch("-b", server.base, f"(idmCprNumber={cpr})", "idmCprNumber",
                                client="cprapp")
    assert _values(granted.stdout, "idmCprNumber") == [cpr]
    records = [r for r in server.audit.query(client="cprapp") if r.operation == "search"]
    assert records[-1].sensitive == ["cpr"]
    assert records[-1].subjects == [acc.first("personId")]


def test_one_audit_record_per_search_and_bind(server):
    acc = server.accounts[5]
    conn = server.python_ldap()  # one bind
    source = ldap_source(conn)
    conn.search_s(server.base, ldap.SCOPE_SUBTREE, f"(uid={acc.first('userName')})", ["uid"])
    conn.search_s(f"ou=people,{server.base}", ldap.SCOPE_ONELEVEL, "(uid=nobody)", ["uid"])
    conn.unbind_s()
    records = [r for r in server.audit.query(client="app") if r.source.startswith(source)]
    assert [r.operation for r in records] == ["bind", "search", "search"]
    assert records[1].subjects == [acc.first("personId")]
    assert records[2].subjects == [] and "(uid=nobody)" in records[2].query


@pytest.mark.parametrize("sync", ["full", "normal"])
def test_audit_unavailable_fails_the_search(server, tmp_path, sync):
    db = f"sqlite:///{tmp_path / 'idm.db'}"
    engine = make_engine(db)
    exchange.import_document(engine, demo.generate("S", 1), actor="test")
    secret = ClientRegistry(engine, Config()).add("app", "ldap", "default")
    cfg = tmp_path / "idm.toml"
    cfg.write_text(f'[directory]\nstate_dir = "{tmp_path}"\n'
                   f'[audit]\ndb = "sqlite:///{tmp_path}/missing/dir/audit.db"\n'
                   f'sync = "{sync}"\n')
    proc, ports = _start(db, cfg)
    try:
        conn = ldap.initialize(f"ldap://127.0.0.1:{ports[0]}")
        with pytest.raises(ldap.OTHER):
            conn.simple_bind_s(f"cn=app,ou=clients,{server.base}", secret)
        with pytest.raises(ldap.OTHER):
            conn.simple_bind_s("", "")
        fresh = ldap.initialize(f"ldap://127.0.0.1:{ports[0]}")  # no bind at all
        with pytest.raises(ldap.OTHER):
            fresh.search_s("", ldap.SCOPE_BASE, "(objectClass=*)")
    finally:
        _stop(proc)
        engine.dispose()


@pytest.mark.parametrize("sync", ["normal", "full"])
def test_sigkill_during_load_keeps_every_answered_search(server, tmp_path, sync):
    """With ``[audit] sync = "normal"`` the reactor commits its records itself (no fsync per
    answer), with ``"full"`` a writer thread does (an fsync per batch): either way a facade
    killed with SIGKILL under concurrent load still has a record of every search it
    answered, in a chain that verifies, and one record per bind and search."""
    import signal
    import threading
    import uuid

    db = f"sqlite:///{tmp_path / 'idm.db'}"
    engine = make_engine(db)
    exchange.import_document(engine, demo.generate("S", 1), actor="test")
    secret = ClientRegistry(engine, Config()).add("app", "ldap", "default")
    cfg = tmp_path / "idm.toml"
    cfg.write_text(f'[directory]\nstate_dir = "{tmp_path}"\n[audit]\nsync = "{sync}"\n')
    proc, ports = _start(db, cfg)
    uids = [a.first("userName") for a in server.accounts[:40]]
    answered: list[str] = []
    lock = threading.Lock()
    stop = threading.Event()

    def load(n: int) -> None:
        try:
            conn = ldap.initialize(f"ldap://127.0.0.1:{ports[0]}")
            conn.simple_bind_s(f"cn=app,ou=clients,{server.base}", secret)
            i = 0
            while not stop.is_set():
                marker = f"w{n}r{i}x{uuid.uuid4().hex}"
                i += 1
                found = conn.search_s(f"ou=people,{server.base}", ldap.SCOPE_ONELEVEL,
                                      f"(|(uid={uids[i % len(uids)]})(uid={marker}))", ["uid"])
                if len(found) == 1:
                    with lock:
                        answered.append(marker)
        except ldap.LDAPError:
            return  # the server is gone

    workers = [threading.Thread(target=load, args=(n,)) for n in range(6)]
    for w in workers:
        w.start()
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and len(answered) < 300:
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        stop.set()
        for w in workers:
            w.join(timeout=15)
        _stop(proc)
    assert len(answered) >= 100, "the load did not get going"
    audit = AuditLog(engine, Config())
    try:
        result = audit.verify()
        assert result.ok, result.message
        records = audit.query(client="app")
        assert [r.operation for r in records].count("bind") == 6
        recorded = {m.group(0) for r in records
                    for m in [re.search(r"w\d+r\d+x[0-9a-f]{32}", r.query)] if m}
        missing = [m for m in answered if m not in recorded]
        assert missing == [], f"{len(missing)} answered search(es) without a record"
        assert all(len(r.subjects) == 1 for r in records if r.operation == "search")
    finally:
        audit.close()
        engine.dispose()


def test_large_search_does_not_stall_point_searches(server):
    """While a full pull streams, a point search on another connection is answered."""
    big = server.python_ldap()
    msgid = big.search_ext(server.base, ldap.SCOPE_SUBTREE, "(objectClass=*)", ["*", "+"])
    small = server.python_ldap()
    uid = server.accounts[-1].first("userName")
    res = small.search_s(f"ou=people,{server.base}", ldap.SCOPE_ONELEVEL, f"(uid={uid})",
                         ["uid"])
    assert res and res[0][1]["uid"] == [uid.encode()]
    _, data, _, _ = big.result3(msgid)
    assert len(data) > len(server.accounts)
