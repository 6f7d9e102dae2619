"""Pulls of a directory larger than ``searching.LARGE`` (M: 5,027 people): planned, and their
disclosures worked out, in a pool thread, and still recorded in full before anything is sent.

Smaller directories (the S demo of the other LDAP tests) take the event loop's path, so this
one builds the M demo once: the only way to reach the thread's path through a real server.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import ldap
import pytest

from idm_facade.access.audit import AuditLog
from idm_facade.config import Config
from idm_facade.directory import Directory
from idm_facade.ldap.searching import LARGE
from schemas.attributes import ACCOUNT
from store import demo, exchange
from store.engine import make_engine
from tests.serving import StoreCopy, served_copy

pytestmark = pytest.mark.skipif(shutil.which("ldapsearch") is None,
                                reason="ldap-utils (ldapsearch) is not installed")


@pytest.fixture(scope="module")
def served_m(tmp_path_factory) -> Iterator[StoreCopy]:
    folder: Path = tmp_path_factory.mktemp("pulls")
    db = f"sqlite:///{folder / 'm.db'}"
    engine = make_engine(db)
    exchange.import_document(engine, demo.generate("M", 1), actor="test")
    engine.dispose()
    with served_copy(db, folder, "", (("app", "ldap", "default"),)) as copy:
        yield copy


def test_a_pull_records_every_person_and_manager_it_names(served_m: StoreCopy) -> None:
    copy = served_m
    serving = copy.serving
    assert serving is not None
    engine = make_engine(copy.db, create=False)
    accounts = [e for e in Directory(engine).snapshot.entries if e.kind == ACCOUNT]
    assert len(accounts) > LARGE  # the thread's path
    conn = ldap.initialize(f"ldap://127.0.0.1:{serving.ldap_ports[0]}")
    conn.simple_bind_s(copy.bind_dn("app"), copy.secrets["app"])
    found = conn.search_s(f"ou=people,{copy.base}", ldap.SCOPE_ONELEVEL, "(objectClass=*)",
                          ["uid", "manager"])
    # the connection answers the next request once the pull is done
    again = conn.search_s(copy.base, ldap.SCOPE_SUBTREE,
                          f"(uid={accounts[0].first('userName')})", ["uid"])
    conn.unbind_s()
    assert len(found) == len(accounts) and len(again) == 1
    by_id = {a.id: a for a in accounts}
    expected = {str(a.first("personId")) for a in accounts}
    for account in accounts:
        for manager in account.attrs.get("manager", ()):
            if str(manager) in by_id:
                expected.add(str(by_id[str(manager)].first("personId")))
    audit = AuditLog(engine, Config({"directory": {"state_dir": str(Path(copy.config).parent)}}))
    try:
        searches = [r for r in audit.query(client="app") if r.operation == "search"]
    finally:
        audit.close()
        engine.dispose()
    assert len(searches) == 2 and searches[0].status == "success"
    assert set(searches[0].subjects) == expected
    assert searches[1].subjects == [accounts[0].first("personId")]
