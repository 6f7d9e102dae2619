"""Clients and credentials: hashing at rest, token and bind checks, revoke/rotate, policies."""

from __future__ import annotations

import sqlite3
import time

import pytest
from argon2 import PasswordHasher
from click.testing import CliRunner

from idm_facade.access import clients as auth
from idm_facade.access.clients import (
    DEMO_CPR_TOKEN,
    DEMO_LDAP_PASSWORD,
    DEMO_SCIM_TOKEN,
    ClientError,
    ClientRegistry,
    base_dn,
    normalise_dn,
)
from idm_facade.access.policies import PolicyError, load_policies, parse_policy
from idm_facade.cli import main
from idm_facade.config import Config, load_config
from idm_facade.directory import Directory
from idm_facade.directory.view import ClientView
from store.engine import make_engine
from tests.orgbuilder import OrgBuilder

#: Argon2id with a small work factor: the same code path, fast enough for many tests.
FAST = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)


def _raw_rows(url: str) -> list[tuple]:
    with sqlite3.connect(url.removeprefix("sqlite:///")) as db:
        return db.execute("SELECT * FROM facade_client").fetchall()


@pytest.fixture
def registry(sqlite_url: str) -> ClientRegistry:
    return ClientRegistry(make_engine(sqlite_url), Config(), hasher=FAST)


def test_no_plaintext_at_rest_with_default_argon2(sqlite_url: str) -> None:
    registry = ClientRegistry(make_engine(sqlite_url), Config())  # the production hasher
    token = registry.add("crm", "scim")
    password = registry.add("legacy", "ldap")
    rows = _raw_rows(sqlite_url)
    dump = repr(rows)
    assert token not in dump and token.split("_", 2)[2] not in dump
    assert password not in dump
    hashes = [r for row in rows for r in row if isinstance(r, str) and r.startswith("$argon2")]
    assert len(hashes) == 2 and all(h.startswith("$argon2id$") for h in hashes)
    assert all("m=65536" in h for h in hashes)  # memory-hard: 64 MiB
    assert registry.authenticate_token(token).name == "crm"


def test_token_authentication(registry: ClientRegistry) -> None:
    token = registry.add("crm", "scim")
    assert token.startswith("idmf_")
    client = registry.authenticate_token(token)
    assert client is not None and client.name == "crm" and client.kind == "scim"
    assert client.policy.name == "default" and not client.policy.cpr
    assert registry.authenticate_token(token) == client  # cached path gives the same
    prefix = token.rsplit("_", 1)[0]
    for bad in (token + "x", prefix + "_wrong", "idmf_nope_x", "idmf_", "", "Bearer " + token,
                token.replace("idmf_", "idmx_")):
        assert registry.authenticate_token(bad) is None, bad


def test_ldap_bind(registry: ClientRegistry) -> None:
    password = registry.add("legacy", "ldap", "demo-internal")
    dn = registry.bind_dn_of("legacy")
    assert dn == "cn=legacy,ou=clients,dc=kommune,dc=dk"
    client = registry.authenticate_bind("CN=Legacy , OU=Clients,DC=kommune, dc=DK", password)
    assert client is not None and client.kind == "ldap" and client.bind_dn == dn
    assert client.policy.max_visibility == "INTERNAL"
    assert registry.authenticate_bind(dn, password + "x") is None
    assert registry.authenticate_bind(dn, "") is None
    assert registry.authenticate_bind("cn=legacy,ou=people,dc=kommune,dc=dk", password) is None
    # a SCIM client cannot bind, an LDAP password is no token
    token = registry.add("crm", "scim")
    assert registry.authenticate_bind(registry.bind_dn_of("crm"), token) is None
    assert registry.authenticate_token(password) is None


def test_revoke_takes_effect_here_and_in_other_processes(sqlite_url: str) -> None:
    engine = make_engine(sqlite_url)
    here = ClientRegistry(engine, Config(), hasher=FAST)
    there = ClientRegistry(make_engine(sqlite_url), Config(), hasher=FAST)  # another server
    token = here.add("crm", "scim")
    password = here.add("legacy", "ldap")
    dn = here.bind_dn_of("legacy")
    assert there.authenticate_token(token) is not None
    assert there.authenticate_bind(dn, password) is not None
    here.revoke("crm")
    here.revoke("legacy")
    assert here.authenticate_token(token) is None
    assert here.authenticate_bind(dn, password) is None
    time.sleep(auth.RECHECK_SECONDS + 0.2)
    assert there.authenticate_token(token) is None
    assert there.authenticate_bind(dn, password) is None
    assert [c.revoked is not None for c in here.list()] == [True, True]
    with pytest.raises(ClientError, match="revoked"):
        here.rotate("crm")
    with pytest.raises(ClientError, match="already exists"):
        here.add("crm", "scim")


def test_rotate_replaces_the_secret(sqlite_url: str) -> None:
    here = ClientRegistry(make_engine(sqlite_url), Config(), hasher=FAST)
    there = ClientRegistry(make_engine(sqlite_url), Config(), hasher=FAST)
    old = here.add("crm", "scim")
    assert there.authenticate_token(old) is not None
    new = here.rotate("crm")
    assert new != old
    assert here.authenticate_token(old) is None
    assert here.authenticate_token(new).name == "crm"
    time.sleep(auth.RECHECK_SECONDS + 0.2)
    assert there.authenticate_token(old) is None
    assert there.authenticate_token(new) is not None
    old_pw = here.add("legacy", "ldap")
    new_pw = here.rotate("legacy")
    dn = here.bind_dn_of("legacy")
    assert here.authenticate_bind(dn, old_pw) is None
    assert here.authenticate_bind(dn, new_pw) is not None
    with pytest.raises(ClientError, match="no client"):
        here.rotate("ghost")
    with pytest.raises(ClientError, match="no client"):
        here.revoke("ghost")


def test_bad_names_kinds_and_policies(registry: ClientRegistry) -> None:
    with pytest.raises(ClientError, match="unknown policy 'nope'"):
        registry.add("crm", "scim", "nope")
    with pytest.raises(ClientError, match="invalid client name"):
        registry.add("bad name,cn=x", "ldap")
    with pytest.raises(ClientError, match="scim or ldap"):
        registry.add("crm", "http")
    assert registry.list() == []


def test_demo_clients(registry: ClientRegistry) -> None:
    creds = registry.ensure_demo_clients()
    assert creds["demo-scim"]["token"] == DEMO_SCIM_TOKEN
    assert creds["demo-cpr"]["token"] == DEMO_CPR_TOKEN
    assert creds["demo-ldap"]["password"] == DEMO_LDAP_PASSWORD
    assert registry.authenticate_token(DEMO_SCIM_TOKEN).policy.name == "demo-internal"
    assert registry.authenticate_token(DEMO_CPR_TOKEN).policy.cpr is True
    ldap = registry.authenticate_bind(creds["demo-ldap"]["bind_dn"], DEMO_LDAP_PASSWORD)
    assert ldap is not None and ldap.name == "demo-ldap"
    # idempotent, and resets a rotated demo secret to the known one
    registry.rotate("demo-scim")
    assert registry.ensure_demo_clients() == creds
    assert registry.authenticate_token(DEMO_SCIM_TOKEN) is not None
    assert len(registry.list()) == 3


def test_no_default_credentials_and_anonymous_off(registry: ClientRegistry) -> None:
    assert registry.list() == []
    assert registry.authenticate_token(DEMO_SCIM_TOKEN) is None
    assert registry.anonymous_policy() is None
    on = ClientRegistry(registry.engine, Config({"ldap": {"anonymous": True,
                                                          "anonymous_policy": "demo-internal"}}))
    assert on.anonymous_policy().name == "demo-internal"
    default = ClientRegistry(registry.engine, Config({"ldap": {"anonymous": True}}))
    assert default.anonymous_policy().name == "default"


POLICIES_TOML = """
[ldap]
base_dn = "dc=testby,dc=dk"

[policies.social]
kinds = ["account", "unit"]
subtrees = ["SOC"]
attributes = ["userName", "displayName", "emails"]
max_visibility = "INTERNAL"
internal = true

[policies.hr]
cpr = true
sensitive_titles = true
"""


def test_policies_from_toml(tmp_path, sqlite_url: str) -> None:
    path = tmp_path / "facade.toml"
    path.write_text(POLICIES_TOML, encoding="utf-8")
    config = load_config(path)
    policies = load_policies(config)
    assert {"default", "demo-internal", "demo-cpr", "social", "hr"} <= set(policies)
    social = policies["social"]
    assert social.kinds == frozenset({"account", "unit"})
    assert social.attributes == frozenset({"userName", "displayName", "emails"})
    assert social.visibilities == ("PUBLIC", "INTERNAL") and not social.cpr
    hr = policies["hr"]
    assert hr.cpr and hr.sensitive_titles and hr.visibilities == ("PUBLIC",)
    # subtrees by user_key resolve to unit ids against the store
    engine = make_engine(sqlite_url)
    b = OrgBuilder(engine)
    soc = b.unit("Social", b.unit("Kommunen"), user_key="SOC")
    registry = ClientRegistry(engine, config, hasher=FAST)
    assert registry.policy("social").subtrees == (soc,)
    token = registry.add("socialsys", "scim", "social")
    assert registry.authenticate_token(token).policy.subtrees == (soc,)
    assert registry.bind_dn_of("x") == "cn=x,ou=clients,dc=testby,dc=dk"
    assert base_dn(config) == "dc=testby,dc=dk"


@pytest.mark.parametrize(("table", "message"), [
    ({"kinds": ["user"]}, "unknown kind"),
    ({"kinds": "account"}, "list of non-empty strings"),
    ({"attributes": ["cprnummer"]}, "unknown attribute"),
    ({"max_visibility": "SECRET"}, "never served"),
    ({"max_visibility": "internal", "internal": True}, "PUBLIC or INTERNAL"),
    ({"max_visibility": "INTERNAL"}, "internal = true"),
    ({"cpr": "yes"}, "cpr must be true or false"),
    ({"subtree": ["SOC"]}, "unknown key"),
])
def test_policy_errors(table: dict, message: str) -> None:
    with pytest.raises(PolicyError, match=message) as info:
        parse_policy("p", table)
    assert "'p'" in str(info.value)


def test_unknown_subtree_fails_closed(sqlite_url: str) -> None:
    engine = make_engine(sqlite_url)
    OrgBuilder(engine).unit("Kommunen")
    config = Config({"policies": {"x": {"subtrees": ["NOSUCH"]}}})
    registry = ClientRegistry(engine, config, hasher=FAST)
    policy = registry.policy("x")
    assert policy.subtrees == ("NOSUCH",)
    snap = Directory(engine).snapshot
    seen = ClientView.of(snap, policy)
    units = [e for e in snap.entries if e.kind == "unit"]
    assert units and not any(seen.get(e.id) for e in units)


def test_base_dn_from_organisation(sqlite_url: str) -> None:
    engine = make_engine(sqlite_url)
    OrgBuilder(engine)  # organisation user_key "test"
    snap = Directory(engine).snapshot
    assert base_dn(Config(), snap) == "dc=test,dc=dk"
    assert ClientRegistry(engine, Config(), hasher=FAST).base == "dc=test,dc=dk"
    assert normalise_dn(" CN = A\\,B , ou=X") == "cn=a\\,b,ou=x"


def test_cli_clients(sqlite_url: str, tmp_path) -> None:
    runner = CliRunner()
    out = runner.invoke(main, ["clients", "add", "crm", "--scim", "--db", sqlite_url])
    assert out.exit_code == 0, out.output
    token = next(line.split()[1] for line in out.output.splitlines()
                 if line.startswith("token:"))
    out = runner.invoke(main, ["clients", "add", "legacy", "--ldap", "--policy",
                               "demo-internal", "--db", sqlite_url])
    assert out.exit_code == 0 and "bind DN:  cn=legacy,ou=clients," in out.output
    out = runner.invoke(main, ["clients", "add", "x", "--scim", "--policy", "nope",
                               "--db", sqlite_url])
    assert out.exit_code != 0 and "unknown policy 'nope'" in out.output
    out = runner.invoke(main, ["clients", "add", "y", "--db", sqlite_url])
    assert out.exit_code != 0 and "--scim or --ldap" in out.output
    bad = tmp_path / "bad.toml"
    bad.write_text('[policies.p]\nmax_visibility = "SECRET"\n', encoding="utf-8")
    out = runner.invoke(main, ["clients", "list", "--db", sqlite_url, "--config", str(bad)])
    assert out.exit_code != 0 and "never served" in out.output
    out = runner.invoke(main, ["clients", "rotate", "crm", "--db", sqlite_url])
    assert out.exit_code == 0
    new_token = out.output.split("token: ")[1].strip()
    out = runner.invoke(main, ["clients", "revoke", "legacy", "--db", sqlite_url])
    assert out.exit_code == 0
    out = runner.invoke(main, ["clients", "list", "--db", sqlite_url])
    lines = out.output.splitlines()
    assert lines[0].split() == ["NAME", "KIND", "POLICY", "STATE", "BIND", "DN"]
    assert lines[1].startswith("crm") and "active" in lines[1]
    assert lines[2].startswith("legacy") and "revoked" in lines[2]
    assert token not in out.output and new_token not in out.output
    registry = ClientRegistry(make_engine(sqlite_url), Config())
    assert registry.authenticate_token(token) is None
    assert registry.authenticate_token(new_token).name == "crm"
