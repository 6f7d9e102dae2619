"""Bind records (docs/access-control.md, "Bind records"): an LDAP bind discloses nothing, so
its access record may be committed up to ``[audit] bind_record_delay`` after its answer; but
never after anything the bound client reads, never lost on a stop, and with
``bind_record_delay = 0`` committed before the answer like every other record. Real
``idm-facade serve``, python-ldap as the client, the access log read from its SQLite file."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import ldap
import pytest

from idm_facade.access.audit import AuditLog
from store.engine import make_engine
from tests.serving import StoreCopy, ldap_bind, served_copy

#: The longest delay allowed: long enough that a record read just after a bind's answer
#: cannot have been committed by the timer.
LATE = 1.0


def _records(copy: StoreCopy) -> list:
    audit = AuditLog(make_engine(copy.db))
    try:
        return list(audit.query())
    finally:
        audit.close()


@pytest.fixture
def late(demo_db: str, tmp_path: Path) -> Iterator[StoreCopy]:
    with served_copy(demo_db, tmp_path, f"[audit]\nbind_record_delay = {LATE}\n",
                     (("app", "ldap", "default"),)) as copy:
        yield copy


def test_a_bind_record_is_committed_before_anything_the_client_reads(late: StoreCopy) -> None:
    assert late.serving is not None
    # Until the process's first commit has succeeded, a bind's record holds its answer (a
    # log that cannot be written must stop binds): this one is committed at once.
    ldap_bind(late.serving.ldap_url, late.bind_dn("app"), late.secrets["app"],
              timeout=20).unbind_s()
    assert len(_records(late)) == 1
    conn = ldap_bind(late.serving.ldap_url, late.bind_dn("app"), late.secrets["app"],
                     timeout=20)
    answered = time.monotonic()
    # The bind was answered; its record waits for the timer or the next record.
    waiting = _records(late)[1:]
    read_at = time.monotonic()
    conn.search_s(f"ou=people,{late.base}", ldap.SCOPE_ONELEVEL, "(uid=nobody)", ["uid"])
    # The search's record is committed before its answer, and the bind's with it, first.
    records = _records(late)[1:]
    conn.unbind_s()
    assert read_at - answered < LATE, "the machine was too slow for this test to show it"
    assert waiting == []
    assert [r.operation for r in records] == ["bind", "search"]
    assert records[0].status == "success" and records[0].seq < records[1].seq


def test_a_stop_commits_the_bind_records_still_waiting(late: StoreCopy) -> None:
    assert late.serving is not None
    conn = ldap_bind(late.serving.ldap_url, late.bind_dn("app"), late.secrets["app"],
                     timeout=20)
    with pytest.raises(ldap.INVALID_CREDENTIALS):
        ldap_bind(late.serving.ldap_url, late.bind_dn("app"), "wrong", timeout=20)
    started = time.monotonic()
    late.serving.stop()  # SIGTERM, well within LATE of the answers
    stopped = time.monotonic()
    del conn
    statuses = [r.status for r in _records(late) if r.operation == "bind"]
    assert statuses == ["success", "49 invalid credentials"]
    assert late.serving.proc.returncode == 0, late.serving.tail
    assert stopped - started < 15


def test_no_delay_commits_each_bind_record_before_its_answer(demo_db: str,
                                                             tmp_path: Path) -> None:
    with served_copy(demo_db, tmp_path, "[audit]\nbind_record_delay = 0\n",
                     (("app", "ldap", "default"),)) as copy:
        assert copy.serving is not None
        for _ in range(3):
            conn = ldap_bind(copy.serving.ldap_url, copy.bind_dn("app"), copy.secrets["app"],
                             timeout=20)
            conn.unbind_s()
        with pytest.raises(ldap.INVALID_CREDENTIALS):
            ldap_bind(copy.serving.ldap_url, copy.bind_dn("app"), "wrong", timeout=20)
        # Read right after the last answer: no timer to wait for.
        assert [r.status for r in _records(copy)] == ["success"] * 3 + [
            "49 invalid credentials"]


def test_a_log_that_cannot_be_written_stops_binds(demo_db: str, tmp_path: Path) -> None:
    """The log file deleted while serving (tests/test_audit_e2e.py): the first bind after it
    may be answered before its commit fails, but from that failure on every bind waits for
    its record and gets 80, within ``bind_record_delay`` of the first failed commit."""
    log = tmp_path / "audit.db"
    config = f'[audit]\ndb = "sqlite:///{log}"\nbind_record_delay = {LATE}\n'
    with served_copy(demo_db, tmp_path, config, (("app", "ldap", "default"),)) as copy:
        assert copy.serving is not None
        url, dn, secret = copy.serving.ldap_url, copy.bind_dn("app"), copy.secrets["app"]
        ldap_bind(url, dn, secret, timeout=20).unbind_s()  # the first commit succeeds
        for suffix in ("", "-wal", "-shm"):
            Path(f"{log}{suffix}").unlink(missing_ok=True)
        time.sleep(0.3)  # the file is looked at at most every 0.2 s
        codes = []
        deadline = time.monotonic() + 3 * LATE + 5
        while time.monotonic() < deadline:
            try:
                ldap_bind(url, dn, secret, timeout=20).unbind_s()
                codes.append(0)
            except ldap.OTHER:
                codes.append(80)
                break
            time.sleep(0.1)
        assert codes[-1] == 80, codes
        assert codes.count(0) <= 2 + LATE / 0.1, codes  # answered only until a commit failed
        with pytest.raises(ldap.OTHER):  # and it stays so
            ldap_bind(url, dn, secret, timeout=20)
        assert "access log" in copy.serving.output()
