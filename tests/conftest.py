"""Shared fixtures: real SQLite files and a real PostgreSQL the suite starts itself."""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator

import pytest

from store.demo import default_reference
from tests.pg import PostgresUnavailable, create_database, temporary_postgres

_db_counter = itertools.count()

#: The demo's reference day, fixed once per run: the demo's validity dates are relative to
#: it, so tests that move a clock move it from here, never from the day they run.
DEMO_REFERENCE = default_reference()


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str]:
    """One PostgreSQL server for the whole run; fails loudly in CI if it cannot start."""
    try:
        with temporary_postgres() as url:
            yield url
    except PostgresUnavailable as exc:
        if os.environ.get("CI") == "true":
            pytest.fail(f"PostgreSQL is required in CI: {exc}")
        pytest.skip(f"PostgreSQL unavailable: {exc}")


@pytest.fixture
def sqlite_url(tmp_path) -> str:
    """A fresh SQLite database file."""
    return f"sqlite:///{tmp_path / 'idm.db'}"


@pytest.fixture
def postgres_url(postgres_server: str) -> str:
    """A fresh, empty PostgreSQL database on the shared test server."""
    return create_database(postgres_server, f"t{os.getpid()}_{next(_db_counter)}")


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request) -> str:
    """Each store test runs once on SQLite and once on PostgreSQL."""
    if request.param == "sqlite":
        return request.getfixturevalue("sqlite_url")
    return request.getfixturevalue("postgres_url")


@pytest.fixture(scope="session")
def demo_db(tmp_path_factory) -> str:
    """A SQLite store holding the S demo municipality (seed 1), built once per run.

    Tests must not write to it; copy it (or build your own) for tests that write.
    """
    from store.demo import generate
    from store.engine import make_engine
    from store.exchange import import_document

    url = f"sqlite:///{tmp_path_factory.mktemp('demo') / 'idm.db'}"
    engine = make_engine(url)
    import_document(engine, generate("S", seed=1, reference=DEMO_REFERENCE), actor="demo")
    engine.dispose()
    return url


@pytest.fixture
def target():  # noqa: ANN201 - a tests.scim_target.Target
    """A real SCIM server we don't control (scim2-server, behind a fault proxy) on loopback,
    the provisioning target of a test; killed afterwards."""
    from tests.scim_target import Target

    found = Target()
    found.start()
    try:
        yield found
    finally:
        found.kill()

