"""A PostgreSQL that stops answering must not hang the facade.

Some store reads run where a hang stalls every request of a process (a client's credentials
are re-checked in the LDAP event loop every few minutes). A database that is away (refused
connections) is handled everywhere; one that accepts and never answers, or a partition, is
only bounded by libpq's own timeouts, which are off by default (libpq waits as long as TCP
does). ``store.engine`` sets them unless the URL does.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from store.engine import POSTGRES_TIMEOUTS, postgres_timeouts
from tests.netfaults import Silent

_CONNECT = """
import sys, time
from sqlalchemy.exc import OperationalError
from store.engine import make_engine
engine = make_engine(sys.argv[1], create=False)
started = time.monotonic()
try:
    engine.connect()
except OperationalError as exc:
    print("refused after %.1f s: %s" % (time.monotonic() - started, str(exc).splitlines()[0]))
"""


def test_a_database_that_never_answers_fails_the_connection() -> None:
    silent = Silent()
    try:
        # Without connect_timeout libpq waits for the server's first answer forever: the
        # child would still be waiting when the generous limit below runs out.
        done = subprocess.run(
            [sys.executable, "-c", _CONNECT,
             f"postgresql+psycopg://idm@127.0.0.1:{silent.port}/idm"],
            capture_output=True, text=True, timeout=20 * POSTGRES_TIMEOUTS["connect_timeout"],
            cwd=Path(__file__).resolve().parent.parent)
    finally:
        silent.close()
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("refused after"), done.stdout + done.stderr
    assert "timeout" in done.stdout.lower()


def test_the_url_sets_its_own_timeouts() -> None:
    url = "postgresql+psycopg://idm@db.example/idm"
    assert postgres_timeouts(url) == POSTGRES_TIMEOUTS
    assert postgres_timeouts(url + "?connect_timeout=30") == {
        "tcp_user_timeout": POSTGRES_TIMEOUTS["tcp_user_timeout"]}
    assert postgres_timeouts(url + "?connect_timeout=30&tcp_user_timeout=0") == {}
