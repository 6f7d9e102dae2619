"""Strict configuration and friendly start-up errors: an unknown key or section, a wrong type,
a TOML error, a missing or empty store, a bad database URL, a port in use. Each is one or two
lines naming the cause (file and line, variable, URL or port) and a documented exit code,
never a traceback, and the server does not start."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from idm_facade.config import Config, ConfigError, load_config
from tests.serving import copy_store

EXE = str(Path(sys.executable).with_name("idm-facade"))


def _serve(*args: str, env: dict[str, str] | None = None, timeout: float = 60
           ) -> subprocess.CompletedProcess:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("IDM_FACADE_")}
    full_env.update(env or {})
    return subprocess.run([EXE, "serve", "--host", "127.0.0.1", "--scim-port", "0", *args],
                          capture_output=True, text=True, timeout=timeout, env=full_env,
                          check=False)


def _short(result: subprocess.CompletedProcess) -> str:
    """The error output, checked to be one or two lines without a traceback."""
    text = (result.stdout + result.stderr).strip()
    assert "Traceback" not in text, text
    lines = [line for line in text.splitlines() if "INFO" not in line]
    assert 1 <= len(lines) <= 2, text
    return text


@pytest.mark.parametrize(("toml", "expected"), [
    ("[ldap]\nposx = true\n", ":2: unknown key 'posx' in [ldap] (did you mean 'posix'?)"),
    ("[directory]\nit_system = \"AD\"\n\n[ladp]\nposix = true\n",
     ":4: unknown section [ladp] (did you mean 'ldap'?)"),
    ("[ldap]\nmax_connections = \"many\"\n",
     ":2: [ldap] max_connections must be an integer, not 'many'"),
    ("[ldap.upstream]\nurl = [\"ldap://x\"]\n", ":2: unknown key 'url' in [ldap.upstream]"),
    ("[ldap]\nposix = 1\n", ":2: [ldap] posix must be true or false"),
    ("[ldap.persons]\nrequire_tls = \"no\"\n",
     ":2: [ldap.persons] require_tls must be true or false"),
    ("[ldap\nposix = true\n", ": not valid TOML: "),
])
def test_configuration_errors_name_file_line_and_key(tmp_path: Path, demo_db: str, toml: str,
                                                     expected: str) -> None:
    path = tmp_path / "idm.toml"
    path.write_text(toml)
    result = _serve("--db", demo_db, "--config", str(path))
    assert result.returncode == 2
    text = _short(result)
    assert f"configuration: {path}{expected}" in text, text


def test_settings_from_the_environment(tmp_path: Path) -> None:
    path = tmp_path / "idm.toml"
    path.write_text("[ldap]\nposix = false\nbase_dn = \"dc=file,dc=dk\"\n")
    config = load_config(path, env={"IDM_FACADE_LDAP__POSIX": "true",
                                    "IDM_FACADE_LDAP__UPSTREAM__URLS": '["ldaps://dc1"]',
                                    "IDM_FACADE_AUDIT__RETENTION": "3months",
                                    "IDM_FACADE_DB": "sqlite:///ignored.db"})
    assert config.get("ldap", "posix") is True  # the environment overrides the file
    assert config.get("ldap", "base_dn") == "dc=file,dc=dk"
    assert config.section("ldap")["upstream"] == {"urls": ["ldaps://dc1"]}
    assert config.get("audit", "retention") == "3months"
    with pytest.raises(ConfigError, match="IDM_FACADE_LDAP__POSX: unknown key 'posx'"):
        load_config(None, env={"IDM_FACADE_LDAP__POSX": "true"})
    with pytest.raises(ConfigError, match=r"IDM_FACADE_LIMITS__FILTER_TERMS: \[limits\] "
                                          r"filter_terms must be an integer"):
        load_config(None, env={"IDM_FACADE_LIMITS__FILTER_TERMS": "lots"})


def test_serve_refuses_a_missing_or_empty_store(tmp_path: Path) -> None:
    missing = tmp_path / "typo.db"
    result = _serve("--db", f"sqlite:///{missing}")
    assert result.returncode == 3
    assert "does not exist" in _short(result) and str(missing) in result.stderr
    assert not missing.exists()  # nothing was created
    empty = tmp_path / "empty.db"
    subprocess.run([EXE, "init-db", "--db", f"sqlite:///{empty}"], check=True,
                   capture_output=True)
    result = _serve("--db", f"sqlite:///{empty}")
    assert result.returncode == 3 and "holds no organisation" in _short(result)


def test_serve_refuses_a_store_from_an_earlier_version(tmp_path: Path) -> None:
    """A store lacking a column this version reads (here ``it_system.access_blocked``) is
    refused before serving, with the column named, instead of failing on its first query;
    the store is left as it was."""
    import sqlite3

    old = tmp_path / "old.db"
    subprocess.run([EXE, "init-db", "--db", f"sqlite:///{old}"], check=True,
                   capture_output=True)
    with sqlite3.connect(old) as db:
        db.execute("ALTER TABLE it_system DROP COLUMN access_blocked")
    schema = "SELECT name, sql FROM sqlite_master ORDER BY name"
    with sqlite3.connect(old) as db:
        before = db.execute(schema).fetchall()
    result = _serve("--db", f"sqlite:///{old}")
    assert result.returncode == 1  # a store problem, like an unreachable database
    assert "earlier idm-facade" in _short(result)
    assert "it_system: access_blocked" in result.stderr
    with sqlite3.connect(old) as db:
        assert db.execute(schema).fetchall() == before  # nothing was altered or created


def test_bad_database_urls(tmp_path: Path) -> None:
    result = _serve("--db", "postgres://user:hunter2@127.0.0.1/idm")
    assert result.returncode == 1
    text = _short(result)
    assert "use postgresql+psycopg://" in text and "hunter2" not in text
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    result = _serve("--db", f"postgresql+psycopg://user:hunter2@127.0.0.1:{closed}/idm")
    assert result.returncode == 1
    text = _short(result)
    assert f"cannot reach the store postgresql+psycopg://user:***@127.0.0.1:{closed}/idm" \
        in text and "hunter2" not in text


@pytest.mark.parametrize("which", ["--scim-port", "--ldap-port"])
def test_a_port_in_use_is_one_line(tmp_path: Path, demo_db: str, which: str) -> None:
    db = copy_store(demo_db, tmp_path / "idm.db")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        args = ["--db", db, "--config", str(_state(tmp_path))]
        if which == "--ldap-port":
            args += ["--ldap-port", str(port)]
            result = _serve(*args)
        else:
            result = subprocess.run([EXE, "serve", "--host", "127.0.0.1", "--scim-port",
                                     str(port), *args], capture_output=True, text=True,
                                    timeout=120, check=False)
    assert result.returncode == 1
    text = _short(result)
    assert "cannot listen" in text and str(port) in text


def _state(folder: Path) -> Path:
    path = folder / "idm.toml"
    path.write_text(f'[directory]\nstate_dir = "{folder}"\n')
    return path


def test_an_attribute_source_the_store_lacks_is_an_error(tmp_path: Path, demo_db: str) -> None:
    """A configured attribute reading a column that does not exist would be silently empty
    for ever: it stops the start, in one line, also with --workers."""
    path = tmp_path / "idm.toml"
    path.write_text('[attributes.jobCode]\nsource = "person.no_such_column"\n')
    for extra in ((), ("--workers", "2")):
        result = _serve("--db", demo_db, "--config", str(path), *extra)
        assert result.returncode == 2
        assert "person has no column 'no_such_column'" in _short(result)


def test_named_tables_need_good_unique_names() -> None:
    """``[[provisioning.target]]`` and ``[[provisioning.feed]]`` are read by one reader of
    named tables: a bad name names the table by its number, a name used twice by its name."""
    from idm_facade.feed.settings import feeds
    from idm_facade.provisioning.targets import targets

    for key, read, extra in (("target", targets, {"url": "https://t.example/scim", "token": "t"}),
                             ("feed", feeds, {"client": "reader"})):
        bad = Config({"provisioning": {key: [{"name": "no spaces", **extra}]}})
        with pytest.raises(ConfigError, match=rf"\[\[provisioning\.{key}\]\] #1: name must"):
            read(bad)
        twice = Config({"provisioning": {key: [{"name": "x", **extra}, {"name": "x", **extra}]}})
        with pytest.raises(ConfigError,
                           match=rf"\[\[provisioning\.{key}\]\] x: the name is used twice"):
            read(twice)
        assert [t.name for t in read(Config({"provisioning": {key: [
            {"name": "a", **extra}, {"name": "b.c", **extra}]}}))] == ["a", "b.c"]


_DC = '[ldap.upstream]\ndn_template = "uid={username},ou=people,dc=kommune,dc=test"\n'


def test_an_upstream_in_clear_is_refused_at_start(tmp_path: Path, demo_db: str) -> None:
    """Every person's password goes to the upstream as typed: an ``ldap://`` URL without
    StartTLS is refused at start, naming the URL and the ways out (one of them, for a path
    nobody can listen on, ``require_tls = false``); TLS either way is taken."""
    from idm_facade.ldap.bind_settings import UpstreamSettings

    path = tmp_path / "idm.toml"
    path.write_text(_DC + 'urls = ["ldaps://dc1.kommune.test", "ldap://dc2.kommune.test"]\n')
    result = _serve("--db", copy_store(demo_db, tmp_path / "s.db"), "--config", str(path))
    assert result.returncode == 2
    text = _short(result)
    assert "[ldap.upstream] urls: 'ldap://dc2.kommune.test' would send persons' passwords " \
           "to the upstream in clear: use ldaps:// or starttls = true" in text, text
    for table in ('urls = ["ldaps://dc1", "ldaps://dc2"]\n',
                  'urls = ["ldap://dc1"]\nstarttls = true\n',
                  'urls = ["ldap://127.0.0.1:3890"]\nrequire_tls = false\n'):
        path.write_text(_DC + table)
        settings = UpstreamSettings.from_config(load_config(path, env={}))
        assert settings is not None and settings.urls[0].startswith("ldap")


@pytest.mark.parametrize(("toml", "expected"), [
    ('[ldap.persons]\naddress_exempt = ["10.0.5.0/24", "nextcloud"]\n',
     "[ldap.persons] address_exempt: 'nextcloud' is not an IP address or network"),
    ('[ldap]\nproxy_protocol_from = ["haproxy.kommune.test"]\n',
     "[ldap] proxy_protocol_from: 'haproxy.kommune.test' is not an IP address or network"),
])
def test_an_address_that_is_not_one_is_named(tmp_path: Path, demo_db: str, toml: str,
                                             expected: str) -> None:
    path = tmp_path / "idm.toml"
    path.write_text(toml)
    result = _serve("--db", copy_store(demo_db, tmp_path / "s.db"), "--config", str(path))
    assert result.returncode == 2
    text = _short(result)
    assert expected in text, text
