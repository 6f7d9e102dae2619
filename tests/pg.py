"""A throwaway PostgreSQL server for tests and benchmarks, started from the binaries on PATH.

``initdb`` refuses to run as root, so when we are root the cluster is created and run as the
``postgres`` system user. The server listens on loopback only, on a free port, and is stopped
(and its directory removed) when the context exits.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.ports import wait_listening


class PostgresUnavailable(RuntimeError):
    """The PostgreSQL binaries are missing or the server would not start."""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _binary(name: str) -> str | None:
    """Find a PostgreSQL binary on PATH or in Debian's versioned directory."""
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"))
    return str(candidates[-1]) if candidates else None


def _as_user(cmd: list[str]) -> list[str]:
    if os.geteuid() == 0:
        return ["runuser", "-u", "postgres", "--", *cmd]
    return cmd


class Cluster:
    """A running throwaway PostgreSQL cluster that a test may stop and start again (same
    port, same data)."""

    def __init__(self, root: Path, port: int, env: dict[str, str]) -> None:
        self.root, self.port, self.env = root, port, env
        self.data = root / "data"
        self.url = f"postgresql+psycopg://idm@127.0.0.1:{port}/postgres"

    def start(self) -> None:
        pg_ctl = _binary("pg_ctl")
        assert pg_ctl is not None
        options = f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.root} -c fsync=off"
        subprocess.run(
            _as_user([pg_ctl, "-D", str(self.data), "-l", str(self.root / "log"), "-o",
                      options, "-w", "start"]),
            check=True, capture_output=True, env=self.env,
        )
        _wait_ready(self.port)

    def stop(self, mode: str = "fast") -> None:
        pg_ctl = _binary("pg_ctl")
        assert pg_ctl is not None
        subprocess.run(_as_user([pg_ctl, "-D", str(self.data), "-m", mode, "-w", "stop"]),
                       capture_output=True)


@contextmanager
def postgres_cluster() -> Iterator[Cluster]:
    """Start a PostgreSQL cluster (database ``postgres``, user ``idm``, trust auth)."""
    initdb = _binary("initdb")
    pg_ctl = _binary("pg_ctl")
    if not initdb or not pg_ctl:
        raise PostgresUnavailable("initdb/pg_ctl not found on PATH (install postgresql)")
    root = Path(tempfile.mkdtemp(prefix="idm-pg-"))
    if os.geteuid() == 0:
        shutil.chown(root, "postgres")
    env = {**os.environ, "LC_ALL": "C.UTF-8"}
    cluster = Cluster(root, _free_port(), env)
    try:
        subprocess.run(
            _as_user([initdb, "-D", str(cluster.data), "-U", "idm", "--auth=trust", "-E",
                      "UTF8"]),
            check=True, capture_output=True, env=env,
        )
        cluster.start()
    except (subprocess.CalledProcessError, PostgresUnavailable) as exc:
        log = (root / "log").read_text() if (root / "log").exists() else ""
        shutil.rmtree(root, ignore_errors=True)
        raise PostgresUnavailable(f"PostgreSQL did not start: {exc} {log}") from exc
    try:
        yield cluster
    finally:
        cluster.stop("immediate")
        shutil.rmtree(root, ignore_errors=True)


@contextmanager
def temporary_postgres() -> Iterator[str]:
    """Start a PostgreSQL cluster; yield a ``postgresql+psycopg://`` URL to an empty database."""
    with postgres_cluster() as cluster:
        yield cluster.url


def _wait_ready(port: int, timeout: float = 30.0) -> None:
    if not wait_listening(port, timeout):
        raise PostgresUnavailable(f"PostgreSQL did not listen on port {port}")


def create_database(admin_url: str, name: str) -> str:
    """Create database ``name`` on the server of ``admin_url``; return its URL."""
    import psycopg

    dsn = admin_url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return admin_url.rsplit("/", 1)[0] + f"/{name}"
