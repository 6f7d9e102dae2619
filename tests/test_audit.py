"""The access log: chain verification, tampering, purge, group commit, failure, erasure."""

from __future__ import annotations

import sqlite3
import threading
import time
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import select, text

from idm_facade.access.audit import (
    GENESIS,
    AccessRecord,
    AuditLog,
    AuditUnavailable,
    cutoff_for,
    parse_age,
)
from idm_facade.access.audit.record import anchor_signature
from idm_facade.access.audit.settings import anchor_key
from idm_facade.cli import main
from idm_facade.config import Config
from idm_facade.directory import Directory
from idm_facade.directory.policy import ALL
from store import models as m
from store.engine import make_engine
from tests.orgbuilder import OrgBuilder


def _rec(i: int, subjects: tuple[str, ...] = (), sensitive: tuple[str, ...] = (),
         client: str = "crm", time: datetime | None = None) -> AccessRecord:
    return AccessRecord(client, "127.0.0.1:5000", "search", f"q-{i}", "ok", list(subjects),
                        list(sensitive), time)


def _sql(audit: AuditLog, statement: str) -> None:
    """Run SQL behind the log's back: in the index's file for the index's tables, else in the
    log's own database file."""
    engine = audit.index_engine if "access_log_postings" in statement \
        or "access_log_indexed" in statement else audit.engine
    with sqlite3.connect(engine.url.database) as db:
        db.execute(statement)


def _pairs(audit: AuditLog) -> set[tuple[str, int]]:
    """Every (subject, seq) pair the postings hold, read behind the log's back."""
    from idm_facade.access.audit import decode_seqs

    with audit.index_engine.connect() as conn:
        rows = conn.execute(text("SELECT subject, first_seq, seqs FROM access_log_postings"))
        return {(subject, seq) for subject, first, seqs in rows
                for seq in decode_seqs(first, seqs)}


def _mark(audit: AuditLog) -> int:
    with audit.index_engine.connect() as conn:
        return conn.scalar(text("SELECT seq FROM access_log_indexed WHERE id = 1")) or 0


def _wait_for(condition, seconds: float = 10) -> bool:  # noqa: ANN001 - a callable
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            return False
        threading.Event().wait(0.02)
    return True


@pytest.fixture
def log(sqlite_url: str):
    audit = AuditLog(make_engine(sqlite_url))
    yield audit
    audit.close()


def test_records_and_verify(log: AuditLog) -> None:
    for i in range(5):
        log.record(_rec(i, subjects=(f"p{i}", "shared"), sensitive=("cpr",) if i == 2 else ()))
    result = log.verify()
    assert result.ok and result.checked == 5 and result.last_seq == 5
    records = log.query(client="crm")
    assert [r.seq for r in records] == [1, 2, 3, 4, 5]
    assert records[0].prev_hash == GENESIS
    assert all(b.prev_hash == a.hash for a, b in zip(records, records[1:], strict=False))
    assert records[2].sensitive == ["cpr"] and records[2].subjects == ["p2", "shared"]


@pytest.mark.parametrize(("statement", "seq", "message"), [
    ("UPDATE access_log SET client = 'someone-else' WHERE seq = 7", 7, "modified"),
    ("UPDATE access_log SET subjects = '[]' WHERE seq = 4", 4, "modified"),
    ("UPDATE access_log SET time = '2000-01-01 00:00:00.000000' WHERE seq = 9", 9, "modified"),
    ("DELETE FROM access_log WHERE seq = 6", 7, "missing"),
    ("DELETE FROM access_log_postings WHERE subject = 'p2'", 3, "subject index"),
    ("UPDATE access_log SET hash = 'x', prev_hash = 'y' WHERE seq = 8", 8, "prev_hash"),
])
def test_tampering_is_detected(log: AuditLog, sqlite_url: str, statement: str, seq: int,
                               message: str) -> None:
    for i in range(10):
        log.record(_rec(i, subjects=(f"p{i}",)))
    assert log.verify().ok
    _sql(log, statement)
    result = log.verify()
    assert not result.ok
    assert result.bad_seq == seq and message in result.message
    out = CliRunner().invoke(main, ["audit", "verify", "--db", sqlite_url])
    assert out.exit_code == 1 and f"BROKEN at seq {seq}" in out.output


def test_purge_keeps_chain_verifiable(log: AuditLog, sqlite_url: str) -> None:
    now = datetime.now()
    for i in range(10):
        log.record(_rec(i, subjects=(f"p{i}",), time=now - timedelta(days=400 - i)))
    for i in range(10, 15):
        log.record(_rec(i, subjects=(f"p{i}",), time=now - timedelta(days=1)))
    assert log.purge("6months") == 10
    result = log.verify()
    assert result.ok and result.anchor_seq == 10 and result.first_seq == 11
    assert result.checked == 5
    assert log.query(subject="p3") == [] and len(log.query(subject="p12")) == 1
    log.record(_rec(99))  # the chain continues from the remaining tail
    assert log.verify().ok and log.verify().last_seq == 16
    assert log.purge("6months") == 0
    # purge everything: new records chain to the anchor
    assert log.purge(now + timedelta(days=1)) == 6
    assert log.count() == 0 and log.verify().ok
    log.record(_rec(100))
    result = log.verify()
    assert result.ok and result.first_seq == 17 and result.anchor_seq == 16
    # tampering after a purge is still detected
    _sql(log, "UPDATE access_log SET query = 'x' WHERE seq = 17")
    assert log.verify().bad_seq == 17


def test_purge_cli_and_age_parsing(sqlite_url: str) -> None:
    audit = AuditLog(make_engine(sqlite_url))
    now = datetime.now()
    audit.record(_rec(1, time=now - timedelta(days=200)))
    audit.record(_rec(2, time=now - timedelta(days=10)))
    audit.close()
    runner = CliRunner()
    out = runner.invoke(main, ["audit", "purge", "--older-than", "180d", "--db", sqlite_url])
    assert out.exit_code == 0 and "purged 1 record" in out.output
    out = runner.invoke(main, ["audit", "purge", "--older-than", "soon", "--db", sqlite_url])
    assert out.exit_code != 0 and "cannot read age 'soon'" in out.output
    out = runner.invoke(main, ["audit", "verify", "--db", sqlite_url])
    assert out.exit_code == 0 and "from purge anchor at seq 1" in out.output
    assert parse_age("6months") == (6, "months") and parse_age("180d") == (180, "days")
    assert parse_age("1y") == (1, "years") and parse_age("2 weeks") == (2, "weeks")
    assert cutoff_for("6months", datetime(2024, 8, 31, 12)) == datetime(2024, 2, 29, 12)
    assert cutoff_for("1y", datetime(2024, 1, 15)) == datetime(2023, 1, 15)
    assert cutoff_for("180d", datetime(2024, 7, 1)) == datetime(2024, 1, 3)
    with pytest.raises(ValueError, match="6months"):
        AuditLog(make_engine(sqlite_url), _config({"audit": {"retention": "half a year"}}))


def _config(raw: dict):  # noqa: ANN202
    from idm_facade.config import Config

    return Config(raw)


def _hammer(audit: AuditLog, threads: int, per_thread: int, tag: str = "") -> list[Exception]:
    errors: list[Exception] = []

    def work(t: int) -> None:
        try:
            for i in range(per_thread):
                audit.record(AccessRecord("crm", f"10.0.0.{t}", "search", f"{tag}t{t}-{i}",
                                          "ok", [f"person-{i % 7}"], []))
        except Exception as exc:  # noqa: BLE001 - reported to the test
            errors.append(exc)

    workers = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return errors


def test_group_commit_many_threads(log: AuditLog) -> None:
    assert _hammer(log, 16, 40) == []
    assert log.count() == 640 and log.written == 640
    assert log.batches < 640  # records shared commits
    result = log.verify()
    assert result.ok and result.checked == 640
    queries = {r.query for r in log.query(client="crm")}
    assert queries == {f"t{t}-{i}" for t in range(16) for i in range(40)}
    assert len(log.query(subject="person-3")) == 16 * len(range(3, 40, 7))


def test_two_writers_share_one_chain(sqlite_url: str) -> None:
    """Two facade processes (two logs, two engines) append to the same chain safely."""
    first, second = AuditLog(make_engine(sqlite_url)), AuditLog(make_engine(sqlite_url))
    threads = [threading.Thread(target=_hammer, args=(first, 4, 30, "a")),
               threading.Thread(target=_hammer, args=(second, 4, 30, "b"))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    result = first.verify()
    assert result.ok and result.checked == 240
    first.close()
    second.close()


def test_two_logs_taking_turns_keep_one_chain(sqlite_url: str) -> None:
    """A log appends after the tail it wrote last without reading it; when another process
    appended meanwhile, the primary key refuses the insert and it appends after the real
    tail: alternating writers still make one gapless chain."""
    first, second = AuditLog(make_engine(sqlite_url)), AuditLog(make_engine(sqlite_url))
    for i in range(8):
        writer = first if i % 3 else second
        writer.record_many([writer.prepare(_rec(i)), _rec(100 + i)])
    result = first.verify()
    assert result.ok and result.checked == 16
    with first.engine.connect() as conn:
        seqs = [row[0] for row in conn.execute(text("SELECT seq FROM access_log ORDER BY seq"))]
    assert seqs == list(range(1, 17))
    first.close()
    second.close()


def test_stale_tail_after_purge_emptied_the_log(sqlite_url: str) -> None:
    """A process whose last known tail was purged (with everything after it) must not
    append after it: the chain continues after the anchor."""
    first, second = AuditLog(make_engine(sqlite_url)), AuditLog(make_engine(sqlite_url))
    first.record_many([_rec(1), _rec(2), _rec(3)])
    second.record_many([_rec(4)])  # first's known tail (3) is stale now
    assert first.purge(datetime.now() + timedelta(days=1)) == 4
    first.record_many([_rec(5)])
    second.record_many([_rec(6)])
    result = first.verify()
    assert result.ok and result.anchor_seq == 4 and result.checked == 2
    with first.engine.connect() as conn:
        seqs = [row[0] for row in conn.execute(text("SELECT seq FROM access_log ORDER BY seq"))]
    assert seqs == [5, 6]
    first.close()
    second.close()


def test_unwritable_log_fails_the_record(sqlite_url: str) -> None:
    audit = AuditLog(make_engine(sqlite_url), timeout=10)
    audit.record(_rec(1))
    _sql(audit, "DROP TABLE access_log")
    with pytest.raises(AuditUnavailable, match="failed"):
        audit.record(_rec(2))
    errors = _hammer(audit, 4, 3)
    assert len(errors) == 4 and all(isinstance(e, AuditUnavailable) for e in errors)
    audit.close()
    with pytest.raises(AuditUnavailable, match="closed"):
        audit.record(_rec(3))


def _submit_all(audit: AuditLog, records: list[AccessRecord], timeout: float = 30
                ) -> list[AuditUnavailable | None]:
    """submit() every record from this thread without waiting; the callbacks' outcomes."""
    outcomes: list[AuditUnavailable | None] = []
    all_in = threading.Event()

    def done(error: AuditUnavailable | None) -> None:
        outcomes.append(error)
        if len(outcomes) == len(records):
            all_in.set()

    for rec in records:
        audit.submit(rec, done)
    assert all_in.wait(timeout), f"only {len(outcomes)} of {len(records)} callbacks ran"
    return outcomes


def test_submit_does_not_block_and_joins_the_chain(log: AuditLog) -> None:
    """submit() records arrive in the same chain as record() ones, in shared commits, and
    each callback runs once with None after its record is durable."""
    durable: list[int] = []
    first = threading.Event()

    def after(error: AuditUnavailable | None) -> None:
        durable.append(log.count())  # the record is committed when the callback runs
        first.set()

    log.submit(_rec(0, subjects=("p0",)), after)
    assert first.wait(10) and durable == [1]
    mixed = threading.Thread(target=_hammer, args=(log, 4, 25, "sync"))
    mixed.start()
    outcomes = _submit_all(log, [_rec(i, subjects=(f"p{i % 5}",)) for i in range(1, 301)])
    mixed.join()
    assert outcomes == [None] * 300
    assert log.count() == 401 and log.written == 401
    assert log.batches < 401
    result = log.verify()
    assert result.ok and result.checked == 401
    assert len(log.query(subject="p3")) == 60


def test_submit_reports_an_unwritable_log(sqlite_url: str) -> None:
    audit = AuditLog(make_engine(sqlite_url), timeout=10)
    assert _submit_all(audit, [_rec(1)]) == [None]
    _sql(audit, "DROP TABLE access_log")
    outcomes = _submit_all(audit, [_rec(i) for i in range(2, 12)])
    assert len(outcomes) == 10
    assert all(isinstance(e, AuditUnavailable) and "failed" in str(e) for e in outcomes)
    audit.close()
    closed = _submit_all(audit, [_rec(20)])
    assert isinstance(closed[0], AuditUnavailable) and "closed" in str(closed[0])


def test_locked_database_times_out(sqlite_url: str) -> None:
    audit = AuditLog(make_engine(sqlite_url), timeout=1)
    audit.record(_rec(1))
    holder = sqlite3.connect(audit.engine.url.database, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")  # another writer holds the database
    try:
        with pytest.raises(AuditUnavailable):
            audit.record(_rec(2))
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    audit.close()


def test_query_filters(log: AuditLog) -> None:
    base = datetime(2024, 1, 1)
    log.record(_rec(1, ("anna",), ("cpr",), "hr", base))
    log.record(_rec(2, ("anna", "bo"), (), "crm", base + timedelta(days=1)))
    log.record(_rec(3, ("bo",), (), "crm", base + timedelta(days=2)))
    assert [r.seq for r in log.query(subject="anna")] == [1, 2]
    assert [r.seq for r in log.query(subject="anna", client="crm")] == [2]
    assert [r.seq for r in log.query(since=base + timedelta(days=1))] == [2, 3]
    assert [r.seq for r in log.query(until=base + timedelta(days=1))] == [1]
    assert log.query(subject="nobody") == []
    out = CliRunner().invoke(main, ["audit", "query", "--subject", "anna", "--db",
                                    log.engine.url.render_as_string()])
    lines = [line for line in out.output.splitlines()
             if line.strip()[:1].isdigit() and "record(s)" not in line]
    assert out.exit_code == 0 and len(lines) == 2
    assert " hr " in lines[0] and "CPR" in lines[0] and "CPR" not in lines[1]


def test_chain_on_postgresql(postgres_url: str) -> None:
    audit = AuditLog(make_engine(postgres_url), index_interval=600)
    assert _hammer(audit, 8, 25) == []
    now = datetime.now()
    audit.record(_rec(1, ("p",), ("cpr",), time=now - timedelta(days=365)))
    assert _mark(audit) == 0  # nothing indexed yet: the query catches up
    assert audit.query(subject="p")[0].sensitive == ["cpr"]
    assert _mark(audit) == 201 and len(_pairs(audit)) == 201
    assert len(audit.query(subject="person-3")) == 8 * len(range(3, 25, 7))
    result = audit.verify()
    assert result.ok and result.checked == 201
    with audit.engine.begin() as conn:  # a forged posting is caught
        conn.execute(text("INSERT INTO access_log_postings VALUES ('intruder', 7, 7, '')"))
    result = audit.verify()
    assert not result.ok and result.bad_seq == 7 and "subject index" in result.message
    with audit.engine.begin() as conn:
        conn.execute(text("DELETE FROM access_log_postings WHERE subject = 'intruder'"))
    with audit.engine.begin() as conn:
        conn.execute(text("UPDATE access_log SET status = 'error' WHERE seq = 50"))
    result = audit.verify()
    assert not result.ok and result.bad_seq == 50
    with audit.engine.begin() as conn:
        conn.execute(text("UPDATE access_log SET status = 'ok' WHERE seq = 50"))
    assert audit.verify().ok
    # the old record is the tail: it waits until the records before it are old too
    assert audit.purge(now - timedelta(days=1)) == 0
    assert audit.purge(now + timedelta(days=1)) == 201
    assert _pairs(audit) == set()
    audit.record(_rec(2, ("q",)))
    assert audit.verify().ok and audit.verify().anchor_seq == 201
    assert _pairs(audit) == {("q", 202)}
    audit.close()


def test_erase_person(sqlite_url: str) -> None:
    engine = make_engine(sqlite_url)
    b = OrgBuilder(engine)
    unit = b.unit("Social")
    person = b.person("Anna", "Hansen", cpr="0101901234", nickname_given_name="Annie")
    eng = b.engagement(person, unit)
    account = b.account(person, "anna", engagements=(eng,))
    b.address("anna@kommune.dk", "EMAIL", "PUBLIC", person_id=person)
    b.address("12345678", "PHONE", "PUBLIC", engagement_id=eng)
    other = b.person("Bo", "Berg", cpr="0202901234")
    b.address("bo@kommune.dk", "EMAIL", "PUBLIC", person_id=other)
    directory = Directory(engine)
    assert directory.snapshot.get(account).first("cpr") == "0101901234"
    with engine.connect() as conn:
        before = conn.scalar(select(m.Change.seq).order_by(m.Change.seq.desc()).limit(1))

    out = CliRunner().invoke(main, ["erase-person", person, "--yes", "--db", sqlite_url])
    assert out.exit_code == 0, out.output
    assert "2 address(es) deleted" in out.output

    with engine.connect() as conn:
        row = conn.execute(select(m.Person).where(m.Person.id == person)).one()
        assert (row.given_name, row.surname, row.cpr, row.nickname_given_name) == (
            "Slettet", "person", None, None)
        assert conn.scalar(select(m.Person.cpr).where(m.Person.id == other)) == "0202901234"
        values = set(conn.scalars(select(m.Address.value)))
        assert values == {"bo@kommune.dk"}
        changes = conn.execute(select(m.Change).where(m.Change.seq > before)).all()
    assert {(c.object_type, c.operation) for c in changes} == {("person", "update"),
                                                               ("address", "delete")}
    assert all(c.actor == "erase-person" for c in changes)
    directory.refresh()
    entry = directory.snapshot.get(account)
    assert "cpr" not in entry.attrs and entry.first("givenName") == "Slettet"
    assert "Anna" not in repr(entry.attrs) and "anna@kommune.dk" not in repr(entry.complex)
    assert entry.first("userName") == "anna"  # the account itself stays
    assert ALL.cpr  # even the CPR-granted view has nothing left to show
    audit = AuditLog(engine)
    (record,) = audit.query(subject=person)
    assert record.operation == "erase" and record.status == "ok"
    assert audit.verify().ok
    audit.close()
    out = CliRunner().invoke(main, ["erase-person", "no-such-person", "--yes",
                                    "--db", sqlite_url])
    assert out.exit_code != 0 and "no person with id no-such-person" in out.output


@pytest.mark.parametrize("text", ['plain', 'quote " and \\ backslash', "æøå \u2028 \x00 \x1f tab\t",
                                  "emoji \U0001F600", ""])
def test_prepared_hash_is_the_canonical_hash(text: str) -> None:
    """The writer's precomputed payload hashes exactly what ``verify`` recomputes."""
    from idm_facade.access.audit.log import _Row, record_hash

    when = datetime(2024, 5, 6, 7, 8, 9)  # microsecond 0 still prints six digits
    rec = AccessRecord(text, text + "src", text + "op", text + "q", text + "st",
                       [text + "b", text + "a", text + "a"], ["cpr", text])
    rec.time = when
    row = _Row(rec)
    expected = record_hash(42, when, text, text + "src", text + "op", text + "q", text + "st",
                           sorted({text + "a", text + "b"}), sorted({"cpr", text}),
                           "ab" * 32)
    assert row.hash(42, "ab" * 32) == expected


def test_log_file_beside_the_store_unless_configured(tmp_path) -> None:
    store = f"sqlite:///{tmp_path / 'idm.db'}"
    audit = AuditLog(make_engine(store))
    audit.record(_rec(1, ("p",)))
    audit.close()
    assert audit.engine.url.database == str(tmp_path / "idm-audit.db")
    with sqlite3.connect(tmp_path / "idm.db") as db:  # the store holds no log
        assert db.execute("SELECT count(*) FROM sqlite_master WHERE name = 'access_log'"
                          ).fetchone() == (0,)
    out = CliRunner().invoke(main, ["audit", "verify", "--db", store])
    assert out.exit_code == 0 and "1 record(s)" in out.output
    configured = AuditLog(make_engine(store), _config(
        {"audit": {"db": f"sqlite:///{tmp_path / 'elsewhere.db'}"}}))
    assert configured.engine.url.database == str(tmp_path / "elsewhere.db")
    assert configured.count() == 0
    configured.close()


def test_existing_log_in_the_store_is_kept(tmp_path) -> None:
    """A store whose database already holds the log keeps it there: the chain never splits."""
    store = f"sqlite:///{tmp_path / 'old.db'}"
    legacy = AuditLog(make_engine(store), _config({"audit": {"db": store}}))
    legacy.record(_rec(1, ("p",)))
    legacy.close()
    audit = AuditLog(make_engine(store))
    assert audit.engine.url.database == str(tmp_path / "old.db")
    audit.record(_rec(2))
    result = audit.verify()
    assert result.ok and result.checked == 2
    audit.close()
    assert not (tmp_path / "old-audit.db").exists()


# ------------------------------------------------------------------ sync modes


def _pragma(audit: AuditLog, name: str) -> int:
    cursor = audit._connection().cursor()
    cursor.execute(f"PRAGMA {name}")
    value = cursor.fetchone()[0]
    cursor.close()
    return value


def test_sync_normal_is_the_default_and_full_syncs_every_commit(log: AuditLog,
                                                                sqlite_url: str) -> None:
    log.record(_rec(1))
    assert log.sync == "normal" and log.fast_commit
    assert _pragma(log, "synchronous") == 1  # NORMAL: commits are not synced one by one
    full = AuditLog(make_engine(sqlite_url), _config({"audit": {"sync": "full"}}))
    full.record(_rec(2))
    assert not full.fast_commit and full.synced_seq == 0  # no syncer: every commit is synced
    assert _pragma(full, "synchronous") == 2  # FULL: the WAL is synced at every commit
    full.close()


def test_sync_normal_commits_then_syncs_within_the_interval(sqlite_url: str) -> None:
    audit = AuditLog(make_engine(sqlite_url),
                     _config({"audit": {"sync": "normal", "sync_interval": 0.05}}))
    assert audit.fast_commit
    audit.record(_rec(0, subjects=("p0",)))
    assert _pragma(audit, "synchronous") == 1  # NORMAL: commits are not synced one by one
    assert _hammer(audit, 8, 25) == []
    audit.record_many([_rec(i, subjects=(f"p{i % 3}",)) for i in range(1, 51)])
    assert audit.count() == 251 and audit.written_seq == 251
    deadline = time.monotonic() + 10
    while audit.synced_seq < audit.written_seq and time.monotonic() < deadline:
        threading.Event().wait(0.02)
    assert audit.synced_seq == 251  # the syncer flushed every committed record
    result = audit.verify()
    assert result.ok and result.checked == 251
    assert [r.query for r in audit.query(client="crm")[-50:]] == [f"q-{i}" for i in
                                                                  range(1, 51)]
    assert len(audit.query(subject="p0")) == 1 + len(range(3, 51, 3))
    audit.close()


def test_record_many_reports_an_unwritable_log(sqlite_url: str) -> None:
    audit = AuditLog(make_engine(sqlite_url), _config({"audit": {"sync": "normal"}}),
                     timeout=5)
    audit.record_many([_rec(1)])
    _sql(audit, "DROP TABLE access_log")
    with pytest.raises(AuditUnavailable, match="failed"):
        audit.record_many([_rec(2), _rec(3)])
    audit.close()


@pytest.mark.parametrize(("setting", "message"), [
    ({"sync": "fast"}, "sync = 'fast'"), ({"sync_interval": 0}, "sync_interval"),
    ({"sync_interval": "soon"}, "soon")])
def test_bad_sync_settings_are_refused(sqlite_url: str, setting: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        AuditLog(make_engine(sqlite_url), _config({"audit": setting}))


def test_sync_normal_on_postgresql(postgres_url: str) -> None:
    audit = AuditLog(make_engine(postgres_url), _config({"audit": {"sync": "normal"}}))
    assert not audit.fast_commit  # a PostgreSQL commit is a round trip: keep it off loops
    audit.record(_rec(1))
    cursor = audit._connection().cursor()
    cursor.execute("SHOW synchronous_commit")
    assert cursor.fetchone()[0] == "off"
    cursor.close()
    assert audit.verify().ok
    audit.close()


# ------------------------------------------------------------------ the derived subject index


def test_query_right_after_writing_is_complete(sqlite_url: str) -> None:
    """Nothing indexed yet (no background run): a query by subject catches the index up."""
    audit = AuditLog(make_engine(sqlite_url), index_interval=600)
    for i in range(30):
        audit.record(_rec(i, subjects=(f"p{i % 4}", "everyone")))
    assert _mark(audit) == 0 and _pairs(audit) == set()
    assert [r.seq for r in audit.query(subject="p1")] == list(range(2, 31, 4))
    assert _mark(audit) == 30 and len(_pairs(audit)) == 60
    assert len(audit.query(subject="everyone")) == 30
    audit.record(_rec(30, subjects=("p1",)))  # after the mark: still found
    assert [r.seq for r in audit.query(subject="p1", limit=3)] == [2, 6, 10]
    assert audit.query(subject="p1")[-1].seq == 31
    assert audit.verify().ok
    audit.close()


def test_many_subjects_per_record(log: AuditLog) -> None:
    """A SCIM page of 150 users: one record row, one posting row per subject per run."""
    people = [f"person-{i:04d}" for i in range(600)]
    log.record_many([_rec(i, subjects=tuple(people[i * 150:(i + 1) * 150] + people[:2]))
                     for i in range(4)])
    assert log.index_subjects() == 4
    pairs = _pairs(log)
    assert len(pairs) == 600 + 2 * 3  # people 0 and 1 are in every record (once in the first)
    with log.index_engine.connect() as conn:
        assert conn.scalar(text("SELECT count(*) FROM access_log_postings")) == 600
        assert conn.scalar(text("SELECT seqs FROM access_log_postings "
                                "WHERE subject = 'person-0001'")) == "1,1,1"
    assert [r.seq for r in log.query(subject="person-0001")] == [1, 2, 3, 4]
    assert [r.seq for r in log.query(subject="person-0599")] == [4]
    assert log.verify().ok


def test_two_logs_indexing_concurrently_never_duplicate(sqlite_url: str) -> None:
    first = AuditLog(make_engine(sqlite_url), index_interval=600)
    second = AuditLog(make_engine(sqlite_url), index_interval=600)
    for audit in (first, second):
        audit.RUN_RECORDS = 7  # many short runs, so the two interleave
    first.record_many([_rec(i, subjects=(f"p{i % 9}", f"q{i % 5}")) for i in range(300)])
    start = threading.Barrier(4)
    counts: list[int] = []

    def index(audit: AuditLog) -> None:
        start.wait()
        counts.append(audit.index_subjects())

    threads = [threading.Thread(target=index, args=(a,)) for a in (first, second) * 2]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(counts) == 300  # every record indexed exactly once, by one of them
    assert first.indexed_pairs + second.indexed_pairs == 600
    assert len(_pairs(first)) == 600 and _mark(first) == 300
    with first.index_engine.connect() as conn:
        rows = conn.execute(text("SELECT subject, first_seq, seqs FROM access_log_postings"))
        total = sum(1 + (seqs.count(",") + 1 if seqs else 0) for _, _, seqs in rows)
    assert total == 600  # no pair twice
    assert first.verify().ok and second.verify().ok
    first.close()
    second.close()


def test_purge_trims_a_posting_that_straddles_the_cutoff(log: AuditLog) -> None:
    now = datetime.now()
    for i in range(10):
        log.record(_rec(i, subjects=("anna", f"p{i}"), time=now - timedelta(days=300 - i)))
    for i in range(10, 14):
        log.record(_rec(i, subjects=("anna",), time=now - timedelta(days=1)))
    log.index_subjects()  # one run: anna's row spans seqs 1..14
    with log.index_engine.connect() as conn:
        assert conn.execute(text("SELECT first_seq, last_seq FROM access_log_postings "
                                 "WHERE subject = 'anna'")).all() == [(1, 14)]
    assert log.purge("6months") == 10
    with log.index_engine.connect() as conn:
        assert conn.execute(text("SELECT first_seq, last_seq, seqs FROM access_log_postings"
                                 )).all() == [(11, 14, "1,1,1")]
    assert _pairs(log) == {("anna", seq) for seq in range(11, 15)}
    result = log.verify()
    assert result.ok and result.anchor_seq == 10 and result.checked == 4
    assert [r.seq for r in log.query(subject="anna")] == [11, 12, 13, 14]
    assert log.query(subject="p3") == []


def test_purge_of_records_never_indexed_moves_the_mark(sqlite_url: str) -> None:
    audit = AuditLog(make_engine(sqlite_url), index_interval=600)
    old = datetime.now() - timedelta(days=400)
    for i in range(5):
        audit.record(_rec(i, subjects=(f"p{i}",), time=old))
    audit.record(_rec(5, subjects=("p5",)))
    assert audit.purge("6months") == 5
    assert _mark(audit) == 5 and _pairs(audit) == set()
    assert [r.seq for r in audit.query(subject="p5")] == [6]
    assert audit.verify().ok
    audit.close()


@pytest.mark.parametrize(("statement", "seq", "message"), [
    ("DELETE FROM access_log_postings WHERE subject = 'p4'", 5, "differs"),
    ("UPDATE access_log_postings SET seqs = '1,2,1,1,1,1,1,1' WHERE subject = 'shared'", 3,
     "differs"),
    ("INSERT INTO access_log_postings VALUES ('intruder', 6, 6, '')", 6, "differs"),
    ("INSERT INTO access_log_postings VALUES ('intruder', 99, 99, '')", 99, "does not exist"),
    ("INSERT INTO access_log_postings VALUES ('p1', 7, 7, '')", 7, "differs"),
    ("UPDATE access_log_postings SET seqs = '1,x' WHERE subject = 'shared'", 1, "malformed"),
    ("UPDATE access_log_postings SET last_seq = 11 WHERE subject = 'shared'", 1, "last_seq"),
])
def test_tampered_postings_are_detected(log: AuditLog, statement: str, seq: int,
                                        message: str) -> None:
    for i in range(10):
        log.record(_rec(i, subjects=(f"p{i}", "shared")))
    assert log.verify().ok
    _sql(log, statement)
    result = log.verify()
    assert not result.ok and result.bad_seq == seq and message in result.message
    assert "subject index" in result.message


def test_background_indexer_runs_without_any_query(sqlite_url: str) -> None:
    audit = AuditLog(make_engine(sqlite_url), index_interval=0.05)
    for i in range(20):
        audit.record(_rec(i, subjects=(f"p{i % 3}",)))
    assert _wait_for(lambda: _mark(audit) == 20), _mark(audit)
    assert audit.index_runs >= 1 and len(_pairs(audit)) == 20
    audit.close()
    assert not audit._indexer.is_alive()  # close() stops the thread


def test_background_indexer_runs_when_enough_records_wait(sqlite_url: str) -> None:
    audit = AuditLog(make_engine(sqlite_url), index_interval=600, index_records=50)
    audit.record_many([_rec(i, subjects=("p",)) for i in range(49)])
    threading.Event().wait(0.2)
    assert _mark(audit) == 0  # below the threshold, long before the interval
    audit.record(_rec(49, subjects=("p",)))
    assert _wait_for(lambda: _mark(audit) == 50), _mark(audit)
    audit.close()


def _old_format(sqlite_url: str, times: list[datetime | None]) -> str:
    """A log file as earlier versions left it: records, and inside the log file the one-row-
    per-pair ``access_log_subject`` table and the previous version's postings and mark (all
    claiming to cover every record); no index file. Returns the log file's path."""
    audit = AuditLog(make_engine(sqlite_url))
    for i, when in enumerate(times):
        audit.record(_rec(i, subjects=(f"p{i % 2}",), time=when))
    audit.close()
    path, index = audit.engine.url.database, audit.index_engine.url.database
    for suffix in ("", "-wal", "-shm"):
        Path(index + suffix).unlink(missing_ok=True)
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE access_log_subject (subject VARCHAR(64) NOT NULL, "
                   "seq INTEGER NOT NULL, PRIMARY KEY (subject, seq))")
        db.executemany("INSERT INTO access_log_subject VALUES (?, ?)",
                       [(f"p{i % 2}", i + 1) for i in range(len(times))])
        db.execute("CREATE TABLE access_log_postings (subject TEXT NOT NULL, first_seq INTEGER "
                   "NOT NULL, last_seq INTEGER NOT NULL, seqs TEXT NOT NULL, "
                   "PRIMARY KEY (subject, first_seq))")
        # wrong on purpose: were they read, queries and verify would show it
        db.execute("INSERT INTO access_log_postings VALUES ('p0', 1, 2, '1')")
        db.execute("INSERT INTO access_log_postings VALUES ('p1', 2, 6, '4')")
        db.execute("CREATE TABLE access_log_indexed (id INTEGER PRIMARY KEY, seq INTEGER)")
        db.execute(f"INSERT INTO access_log_indexed VALUES (1, {len(times)})")
    return path


def test_log_with_the_old_index_tables(sqlite_url: str) -> None:
    """A log written by earlier versions (``access_log_subject``; postings and mark inside the
    log file): the new index file is built from seq 0 on first use; the old tables are never
    read, and purge still trims them."""
    old = datetime.now() - timedelta(days=400)
    path = _old_format(sqlite_url, [old] * 3 + [None] * 3)
    upgraded = AuditLog(make_engine(sqlite_url), index_interval=600)
    assert upgraded.index_engine.url.database != path
    assert [r.seq for r in upgraded.query(subject="p0")] == [1, 3, 5]
    assert [r.seq for r in upgraded.query(subject="p1")] == [2, 4, 6]
    assert _mark(upgraded) == 6 and upgraded.verify().ok
    assert upgraded.purge("6months") == 3
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT min(seq) FROM access_log_subject").fetchone() == (4,)
        assert db.execute("SELECT subject FROM access_log_postings").fetchall() == []
        assert db.execute("SELECT seq FROM access_log_indexed").fetchall() == [(6,)]
    assert [r.seq for r in upgraded.query(subject="p0")] == [5] and upgraded.verify().ok
    assert _pairs(upgraded) == {("p0", 5), ("p1", 4), ("p1", 6)}
    upgraded.close()


def test_failed_fsync_fails_closed(sqlite_url: str) -> None:
    """After an fsync of the log fails (here: a real EINVAL from the kernel, by pointing the
    syncer at /dev/null), records since the last good sync may be lost, and a retry could
    succeed without them: the log refuses every further record until a restart."""
    from pathlib import Path

    audit = AuditLog(make_engine(sqlite_url), _config({"audit": {"sync": "normal"}}))
    audit.record(_rec(1))
    audit.sync_now()
    assert audit.synced_seq == 1
    audit._wal = Path("/dev/null")  # fsync(2) of a character device fails with EINVAL
    audit.record(_rec(2))
    audit.sync_now()
    assert audit.synced_seq == 1
    with pytest.raises(AuditUnavailable, match="could not be flushed to disk"):
        audit.record(_rec(3))
    with pytest.raises(AuditUnavailable, match="could not be flushed"):
        audit.record_many([_rec(4)])
    assert isinstance(_submit_all(audit, [_rec(5)])[0], AuditUnavailable)
    assert audit.count() == 2
    audit.close()


# ------------------------------------------------------------------ the index's own file


def _hold_write_lock(path: str) -> sqlite3.Connection:
    """Another connection holding a database file's write lock (as a long writer would)."""
    holder = sqlite3.connect(path, isolation_level=None, timeout=0)
    holder.execute("BEGIN IMMEDIATE")
    return holder


def test_index_lives_in_its_own_file(tmp_path) -> None:
    store = f"sqlite:///{tmp_path / 'idm.db'}"
    audit = AuditLog(make_engine(store), index_interval=600)
    audit.record(_rec(1, ("p",)))
    audit.index_subjects()
    assert audit.index_engine.url.database == str(tmp_path / "idm-audit-index.db")
    with sqlite3.connect(tmp_path / "idm-audit.db") as db:
        names = {n for (n,) in db.execute("SELECT name FROM sqlite_master")}
    assert "access_log" in names and "access_log_postings" not in names
    assert _pairs(audit) == {("p", 1)} and _mark(audit) == 1
    audit.close()
    memory = AuditLog(make_engine("sqlite://"))  # in-memory: one database for both
    assert memory.index_engine is memory.engine
    memory.close()


def test_record_writers_never_wait_for_the_index(sqlite_url: str) -> None:
    """Another connection holds the index file's write lock (an indexing run that takes
    long): records still commit (a 1 s timeout would fail them), and queries stay complete
    while the index cannot be caught up. Indexing never takes the log's write lock."""
    audit = AuditLog(make_engine(sqlite_url), index_interval=600, timeout=1)
    audit.record_many([_rec(i, subjects=("anna",)) for i in range(10)])
    holder = _hold_write_lock(audit.index_engine.url.database)
    try:
        for i in range(10, 60):
            audit.record(_rec(i, subjects=("anna",)))
        audit.record_many([_rec(i, subjects=("bo",)) for i in range(60, 64)])
        assert audit.count() == 64
        with pytest.raises(Exception, match="locked"):
            audit.index_subjects()
        assert _mark(audit) == 0
        assert [r.seq for r in audit.query(subject="bo")] == [61, 62, 63, 64]
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    log_holder = _hold_write_lock(audit.engine.url.database)  # now the log is held instead
    try:
        assert audit.index_subjects() == 64  # reads the log, writes only the index file
        assert _mark(audit) == 64 and audit.log_lock_max == 0
    finally:
        log_holder.execute("ROLLBACK")
        log_holder.close()
    assert len(audit.query(subject="anna")) == 60 and audit.verify().ok
    audit.close()


def _purge_log_step_only(audit: AuditLog, upto: int) -> None:
    """What purge does in the log before it trims the index, then a crash: records up to
    ``upto`` deleted and the anchor moved, in one transaction of the log file."""
    key = anchor_key(audit.settings, create=True)
    assert key is not None
    when = datetime(2025, 1, 1)
    with sqlite3.connect(audit.engine.url.database) as db:
        (digest,) = db.execute("SELECT hash FROM access_log WHERE seq = ?", (upto,)).fetchone()
        db.execute("DELETE FROM access_log WHERE seq <= ?", (upto,))
        db.execute("DELETE FROM access_log_anchor")
        db.execute("INSERT INTO access_log_anchor VALUES (1, ?, ?, ?, ?, ?)",
                   (upto, digest, "2025-01-01 00:00:00", "2025-01-01 00:00:00",
                    anchor_signature(key, upto, digest, when, when)))


def test_purge_interrupted_before_the_index_trim(sqlite_url: str) -> None:
    """Crash between purge's two steps: the index still names purged records. Readers ignore
    entries at or below the anchor; the next catch-up (or purge) finishes the trim."""
    audit = AuditLog(make_engine(sqlite_url), index_interval=600, timeout=1)
    audit.record_many([_rec(i, subjects=("anna", f"p{i}")) for i in range(12)])
    audit.index_subjects()
    _purge_log_step_only(audit, 8)
    assert ("anna", 3) in _pairs(audit)  # the stale part of the index
    holder = _hold_write_lock(audit.index_engine.url.database)  # and no repair possible yet
    try:
        assert [r.seq for r in audit.query(subject="anna")] == [9, 10, 11, 12]
        assert audit.query(subject="p3") == []
        result = audit.verify()
        assert result.ok and result.anchor_seq == 8 and result.checked == 4
        assert ("anna", 3) in _pairs(audit)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    audit.record(_rec(12, ("anna",)))
    assert [r.seq for r in audit.query(subject="anna")] == [9, 10, 11, 12, 13]
    assert min(seq for _, seq in _pairs(audit)) == 9  # the catch-up finished the trim
    assert audit.verify().ok
    audit.close()
    again = AuditLog(make_engine(sqlite_url), index_interval=600)
    again.record_many([_rec(i, subjects=("bo",)) for i in range(3)])
    _purge_log_step_only(again, 11)
    assert again.purge("6months") == 0  # nothing old to delete; still trims the index
    assert min(seq for _, seq in _pairs(again)) == 12
    assert again.verify().ok and again.verify().anchor_seq == 11
    again.close()


def test_a_replaced_log_fails_closed_until_the_loss_is_acknowledged(tmp_path) -> None:
    """The log file was deleted and started afresh beside an old index file (#19: the index
    once rebuilt itself silently and ``verify`` said "OK, 0 records"). The fresh log refuses
    every record, ``verify`` names the loss, and only ``reset_index`` (the CLI's ``audit
    reset-index``) lets a fresh log start."""
    from idm_facade.access.audit import AuditUnavailable

    url = f"sqlite:///{tmp_path / 'a.db'}"
    audit = AuditLog(make_engine(url), _config({"audit": {"db": url}}))
    audit.record_many([_rec(i, subjects=("anna",)) for i in range(5)])
    assert len(audit.query(subject="anna")) == 5
    audit.close()
    for suffix in ("", "-wal", "-shm"):
        (tmp_path / f"a.db{suffix}").unlink(missing_ok=True)
    fresh = AuditLog(make_engine(url), _config({"audit": {"db": url}}))
    with pytest.raises(AuditUnavailable, match="records are missing"):
        fresh.record(_rec(9, subjects=("bo",)))
    assert fresh.problem and "records are missing" in fresh.problem
    result = fresh.verify()
    assert not result.ok and "index covers records up to 5" in result.message
    fresh.reset_index()
    fresh.close()
    after = AuditLog(make_engine(url), _config({"audit": {"db": url}}))
    after.record_many([_rec(i, subjects=("bo",)) for i in range(2)])
    assert after.query(subject="anna") == [] and len(after.query(subject="bo")) == 2
    assert after.verify().ok and _pairs(after) == {("bo", 1), ("bo", 2)}
    after.close()


def test_a_log_file_deleted_while_serving_stops_the_records(tmp_path) -> None:
    """Records must not go into an unlinked file: the writer notices the file's inode is
    gone and refuses from then on (the server answers 500 / 80)."""
    from idm_facade.access.audit import AuditUnavailable

    url = f"sqlite:///{tmp_path / 'a.db'}"
    audit = AuditLog(make_engine(url), _config({"audit": {"db": url}}))
    audit.record(_rec(1))
    for suffix in ("", "-wal", "-shm"):
        (tmp_path / f"a.db{suffix}").unlink(missing_ok=True)
    time.sleep(0.3)  # the file is looked at at most every 0.2 s
    with pytest.raises(AuditUnavailable, match="deleted or replaced"):
        audit.record(_rec(2))
    with pytest.raises(AuditUnavailable, match="deleted or replaced"):
        audit.record(_rec(3))
    assert "deleted or replaced" in (audit.problem or "")
    audit.close()


def test_a_lock_held_elsewhere_fails_the_record_after_a_bounded_wait(tmp_path) -> None:
    """Another process holding the log's write lock makes records fail after
    ``write_timeout`` (not after ``timeout``), and writing resumes when it lets go."""
    import sqlite3

    from idm_facade.access.audit import AuditUnavailable

    url = f"sqlite:///{tmp_path / 'a.db'}"
    audit = AuditLog(make_engine(url), _config({"audit": {"db": url, "write_timeout": 0.2,
                                                          "timeout": 30}}))
    audit.record(_rec(1))
    other = sqlite3.connect(tmp_path / "a.db", isolation_level=None)
    other.execute("BEGIN EXCLUSIVE")
    with pytest.raises((AuditUnavailable, sqlite3.OperationalError)):
        audit.record(_rec(2))
    other.execute("ROLLBACK")
    other.close()
    audit.record(_rec(3))
    assert audit.verify().ok and audit.count() == 2
    audit.close()


def test_verify_reports_a_corrupt_database_without_a_traceback(tmp_path) -> None:
    url = f"sqlite:///{tmp_path / 'a.db'}"
    audit = AuditLog(make_engine(url), _config({"audit": {"db": url}}))
    audit.record_many([_rec(i, subjects=("anna",)) for i in range(2000)])
    audit.close()
    path = tmp_path / "a.db"
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    for offset in range(middle, middle + 4096 * 4):
        data[offset] = 0xA5
    path.write_bytes(bytes(data))
    store = make_engine(f"sqlite:///{tmp_path / 'store.db'}")
    damaged = AuditLog(store, _config({"audit": {"db": url}}))
    result = damaged.verify()
    assert not result.ok and result.message
    damaged.close()


# ------------------------------------------------------------------ by client and by time


def test_query_by_client_and_time_before_any_run(sqlite_url: str) -> None:
    """Nothing indexed (no background run): queries by client and by time range are
    complete; after the catch-up the index serves them, and records after the mark too."""
    audit = AuditLog(make_engine(sqlite_url), index_interval=600)
    base = datetime(2024, 1, 1)
    audit.record_many([_rec(i, client="hr" if i % 3 == 0 else "crm",
                            time=base + timedelta(hours=i)) for i in range(30)])
    assert _mark(audit) == 0
    assert [r.seq for r in audit.query(client="hr")] == list(range(1, 31, 3))
    assert _mark(audit) == 30
    hours = audit.query(since=base + timedelta(hours=5), until=base + timedelta(hours=9))
    assert [r.seq for r in hours] == [6, 7, 8, 9]
    audit.record(_rec(30, client="hr", time=base + timedelta(hours=6, minutes=30)))
    assert [r.seq for r in audit.query(client="hr", since=base + timedelta(hours=6),
                                       until=base + timedelta(hours=7))] == [7, 31]
    assert [r.seq for r in audit.query(client="hr", limit=2)] == [1, 4]
    with audit.index_engine.connect() as conn:
        assert conn.execute(text("SELECT first_seq, last_seq FROM access_log_runs "
                                 "ORDER BY first_seq")).all() == [(1, 30), (31, 31)]
        assert conn.scalar(text("SELECT seqs FROM access_log_client_postings "
                                "WHERE client = 'hr' AND first_seq = 1")) == ",".join(["3"] * 9)
    with sqlite3.connect(audit.engine.url.database) as db:  # the log has no secondary index
        assert db.execute("SELECT name FROM sqlite_master WHERE type = 'index' "
                          "AND tbl_name = 'access_log' AND sql IS NOT NULL").fetchall() == []
    assert audit.verify().ok
    audit.close()


def test_purge_by_age_with_times_out_of_seq_order(sqlite_url: str) -> None:
    """Times are set before seqs are assigned, so they are only nearly ascending. Purge
    deletes the longest prefix of records older than the cut-off: never a newer record."""
    audit = AuditLog(make_engine(sqlite_url), index_interval=600)
    cut = datetime(2024, 6, 1)
    ms = timedelta(milliseconds=1)
    times = [cut - 5 * ms, cut - 3 * ms, cut - 4 * ms, cut + ms, cut - 2 * ms, cut - ms,
             cut + 2 * ms]
    for i, when in enumerate(times):
        audit.record(_rec(i, subjects=("anna",), time=when))
    audit.index_subjects()
    assert audit.purge(cut) == 3  # records 5 and 6 are old too, but record 4 is not
    assert [r.seq for r in audit.query(subject="anna")] == [4, 5, 6, 7]
    assert [r.seq for r in audit.query(until=cut)] == [5, 6]
    assert audit.verify().ok and audit.verify().anchor_seq == 3
    assert audit.purge(cut) == 0
    assert audit.purge(cut + 2 * ms) == 3  # now record 4 is old: 4, 5, 6 go, 7 stays
    assert [r.seq for r in audit.query(since=cut - timedelta(days=1))] == [7]
    assert audit.verify().ok
    audit.close()


@pytest.mark.parametrize(("statement", "seq", "message"), [
    ("UPDATE access_log_client_postings SET client = 'hr' WHERE client = 'crm'", 2,
     "client index"),
    ("DELETE FROM access_log_runs", 1, "time index"),
    ("UPDATE access_log_runs SET max_time = '2000-01-01 00:00:00.000000'", 1, "time index"),
])
def test_tampered_client_and_time_index_is_detected(log: AuditLog, statement: str, seq: int,
                                                    message: str) -> None:
    log.record_many([_rec(i, client="hr" if i == 0 else "crm") for i in range(5)])
    assert log.verify().ok
    with sqlite3.connect(log.index_engine.url.database) as db:
        db.execute(statement)
    result = log.verify()
    assert not result.ok and result.bad_seq == seq and message in result.message


def test_client_and_time_index_on_postgresql(postgres_url: str) -> None:
    audit = AuditLog(make_engine(postgres_url), index_interval=600)
    before = audit.count()
    base = datetime(2030, 1, 1)
    audit.record_many([_rec(i, client="pg-hr", time=base + timedelta(minutes=i))
                       for i in range(5)])
    assert [r.query for r in audit.query(client="pg-hr")] == [f"q-{i}" for i in range(5)]
    window = audit.query(since=base + timedelta(minutes=1), until=base + timedelta(minutes=3))
    assert [r.query for r in window] == ["q-1", "q-2"]
    assert audit.count() == before + 5 and audit.verify().ok
    audit.close()


def _anchor_config(tmp_path) -> Config:
    return Config({"directory": {"state_dir": str(tmp_path / "state")},
                   "audit": {"db": f"sqlite:///{tmp_path / 'audit.db'}"}})


def test_a_forged_purge_anchor_is_refused(tmp_path, sqlite_url: str) -> None:
    """Someone who can write the log's database deletes the last records and moves the purge
    anchor onto the record before them, with that record's real hash: the chain that remains
    is intact. Only the anchor's signature (a key outside the database) gives it away."""
    config = _anchor_config(tmp_path)
    audit = AuditLog(make_engine(sqlite_url), config, index_interval=600)
    now = datetime.now()
    audit.record_many([_rec(i, ("anna",), time=now - timedelta(days=400 - i))
                       for i in range(5)])
    audit.record_many([_rec(i, ("anna",)) for i in range(5, 12)])
    assert audit.purge("6months") == 5
    result = audit.verify()
    assert result.ok and result.anchor_seq == 5  # a real purge's anchor is signed
    assert (tmp_path / "state" / "audit-anchor.key").stat().st_mode & 0o777 == 0o600
    with sqlite3.connect(tmp_path / "audit.db") as db:  # hide records 6..9, recent ones
        (digest,) = db.execute("SELECT hash FROM access_log WHERE seq = 9").fetchone()
        db.execute("DELETE FROM access_log WHERE seq <= 9")
        db.execute("UPDATE access_log_anchor SET seq = 9, hash = ?", (digest,))
    broken = audit.verify()
    assert not broken.ok and "is forged" in broken.message
    with sqlite3.connect(tmp_path / "audit.db") as db:  # a forger without the key
        db.execute("UPDATE access_log_anchor SET signature = NULL")
    broken = audit.verify()
    assert not broken.ok and "is not signed" in broken.message
    toml = tmp_path / "idm.toml"
    toml.write_text(f'[directory]\nstate_dir = "{tmp_path / "state"}"\n'
                    f'[audit]\ndb = "sqlite:///{tmp_path / "audit.db"}"\n')
    out = CliRunner().invoke(main, ["audit", "verify", "--db", sqlite_url, "--config",
                                    str(toml)])
    assert out.exit_code != 0 and "is not signed" in out.output
    assert "Traceback" not in out.output
    audit.close()
    # Verifying elsewhere without the key cannot vouch for the anchor either.
    keyless = Config({"directory": {"state_dir": str(tmp_path / "elsewhere")},
                      "audit": config.raw["audit"]})
    other = AuditLog(make_engine(sqlite_url), keyless, index_interval=600)
    assert "cannot be checked: no anchor key" in other.verify().message
    other.close()


def test_an_unsigned_anchor_of_an_earlier_version_is_signed_once_checked(
        tmp_path, sqlite_url: str) -> None:
    """A log made before anchors were signed: its anchor table lacks the column (added at
    start), its anchor is refused until ``audit sign-anchor``."""
    path = tmp_path / "audit.db"
    config = _anchor_config(tmp_path)
    audit = AuditLog(make_engine(sqlite_url), config, index_interval=600)
    now = datetime.now()
    audit.record_many([_rec(i, time=now - timedelta(days=400 - i)) for i in range(3)])
    audit.record_many([_rec(i) for i in range(3, 6)])
    audit.purge("6months")
    audit.close()
    with sqlite3.connect(path) as db:  # back to the earlier table: no signature column
        db.execute("CREATE TABLE old_anchor AS SELECT id, seq, hash, purged_at, cutoff "
                   "FROM access_log_anchor")
        db.execute("DROP TABLE access_log_anchor")
        db.execute("ALTER TABLE old_anchor RENAME TO access_log_anchor")
    audit = AuditLog(make_engine(sqlite_url), config, index_interval=600)
    result = audit.verify()
    assert not result.ok and "is not signed" in result.message
    audit.close()
    toml = tmp_path / "idm.toml"
    toml.write_text(f'[directory]\nstate_dir = "{tmp_path / "state"}"\n'
                    f'[audit]\ndb = "sqlite:///{path}"\n')
    out = CliRunner().invoke(main, ["audit", "sign-anchor", "--yes", "--db", sqlite_url,
                                    "--config", str(toml)])
    assert out.exit_code == 0 and "anchor signed; verify: OK" in out.output, out.output
    audit = AuditLog(make_engine(sqlite_url), config, index_interval=600)
    assert audit.verify().ok and audit.verify().anchor_seq == 3
    audit.close()
