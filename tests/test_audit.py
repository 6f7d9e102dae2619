"""The access log: chain verification, tampering, purge, group commit, failure, erasure."""

from __future__ import annotations

import sqlite3
import threading
from datetime import datetime, timedelta

import pytest
from click.testing import CliRunner
from sqlalchemy import select, text

from idm_facade.audit import (
    GENESIS,
    AccessRecord,
    AuditLog,
    AuditUnavailable,
    cutoff_for,
    parse_age,
)
from idm_facade.cli import main
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
    """Run SQL behind the log's back, in the log's own database file."""
    with sqlite3.connect(audit.engine.url.database) as db:
        db.execute(statement)


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
    audit = AuditLog(make_engine(postgres_url))
    assert _hammer(audit, 8, 25) == []
    now = datetime.now()
    audit.record(_rec(1, ("p",), ("cpr",), time=now - timedelta(days=365)))
    result = audit.verify()
    assert result.ok and result.checked == 201
    assert audit.query(subject="p")[0].sensitive == ["cpr"]
    with audit.engine.begin() as conn:
        conn.execute(text("UPDATE access_log SET status = 'error' WHERE seq = 50"))
    result = audit.verify()
    assert not result.ok and result.bad_seq == 50
    with audit.engine.begin() as conn:
        conn.execute(text("UPDATE access_log SET status = 'ok' WHERE seq = 50"))
    assert audit.verify().ok
    assert audit.purge(now - timedelta(days=1)) == 201  # the old record is the tail
    audit.record(_rec(2))
    assert audit.verify().ok and audit.verify().anchor_seq == 201
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
    from idm_facade.audit import _Row, record_hash

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


def test_sync_full_is_the_default(log: AuditLog) -> None:
    log.record(_rec(1))
    assert log.sync == "full" and not log.fast_commit
    assert _pragma(log, "synchronous") == 2  # FULL: the WAL is synced at every commit


def test_sync_normal_commits_then_syncs_within_the_interval(sqlite_url: str) -> None:
    audit = AuditLog(make_engine(sqlite_url),
                     _config({"audit": {"sync": "normal", "sync_interval": 0.05}}))
    assert audit.fast_commit
    audit.record(_rec(0, subjects=("p0",)))
    assert _pragma(audit, "synchronous") == 1  # NORMAL: commits are not synced one by one
    assert _hammer(audit, 8, 25) == []
    audit.record_many([_rec(i, subjects=(f"p{i % 3}",)) for i in range(1, 51)])
    assert audit.count() == 251 and audit.written_seq == 251
    deadline = datetime.now() + timedelta(seconds=10)
    while audit.synced_seq < audit.written_seq and datetime.now() < deadline:
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
