"""Start ``idm-facade serve`` as a subprocess for tests, on ports chosen by the OS.

The serve command prints one line per listener (``SCIM http://...``, ``LDAP host:port``); we
read those to learn the ports. Afterwards a daemon thread keeps draining the process's output
so a chatty server can never block on a full pipe, and keeps the last lines for failure
messages.
"""

from __future__ import annotations

import collections
import os
import re
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class Serving:
    """A running ``idm-facade serve``."""

    proc: subprocess.Popen
    scim_base: str | None = None  # http://127.0.0.1:PORT (SCIM at /scim/v2, role API at /api)
    ldap_ports: list[int] = field(default_factory=list)
    tail: collections.deque = field(default_factory=lambda: collections.deque(maxlen=200))

    @property
    def ldap_url(self) -> str:
        return f"ldap://127.0.0.1:{self.ldap_ports[0]}"

    def output(self) -> str:
        """The server's last output lines (for assertion messages)."""
        return "".join(self.tail)

    def stop(self) -> None:
        """Terminate the process (by its own PID) and wait for it."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)


def copy_store(url: str, target: Path) -> str:
    """Copy a SQLite store with SQLite's backup API (consistent even with WAL files), so a
    test that writes never touches a shared fixture store."""
    source = sqlite3.connect(url.removeprefix("sqlite:///"))
    dest = sqlite3.connect(target)
    try:
        source.backup(dest)
    finally:
        dest.close()
        source.close()
    return f"sqlite:///{target}"


def start_serve(db: str, config_path: Path, *, ldap: bool = True, ldaps: bool = False,
                timeout: float = 120, workers: int = 1) -> Serving:
    """Run ``idm-facade serve`` over ``db`` and return once its listeners are announced
    (with ``workers`` > 1: once every worker serves)."""
    exe = Path(sys.executable).with_name("idm-facade")
    cmd = [str(exe), "serve", "--db", db, "--host", "127.0.0.1", "--scim-port", "0",
           "--config", str(config_path)]
    if workers != 1:
        cmd += ["--workers", str(workers)]
    wanted_ldap = 0
    if ldap:
        cmd += ["--ldap-port", "0"]
        wanted_ldap += 1
    if ldaps:
        cmd += ["--ldaps-port", "0"]
        wanted_ldap += 1
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    serving = Serving(proc)
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        serving.tail.append(line)
        scim = re.match(r"SCIM\s+(http://\S+)/scim/v2", line)
        if scim:
            serving.scim_base = scim.group(1)
        found = re.match(r"LDAP\s+127\.0\.0\.1:(\d+)", line)
        if found:
            serving.ldap_ports.append(int(found.group(1)))
        if serving.scim_base and len(serving.ldap_ports) >= wanted_ldap:
            break
    if not serving.scim_base or len(serving.ldap_ports) < wanted_ldap:
        serving.stop()
        raise RuntimeError("idm-facade serve did not announce its listeners:\n"
                           + serving.output())

    def drain() -> None:
        for rest in proc.stdout:  # type: ignore[union-attr]
            serving.tail.append(rest)

    threading.Thread(target=drain, name="serve-output", daemon=True).start()
    return serving


@dataclass
class StoreCopy:
    """A private copy of the demo store, its configuration file, the clients registered in
    it (name -> secret) and, once started, its server."""

    db: str
    config: Path
    registry: Any  # ClientRegistry of the copy, configured from ``config``
    secrets: dict[str, str]
    serving: Serving | None = None

    @property
    def base(self) -> str:
        return str(self.registry.base)

    def bind_dn(self, name: str) -> str:
        return str(self.registry.bind_dn_of(name))

    def write(self, change: Callable[[Any], None]) -> None:
        """Change the copy's store in one transaction (with the change log, as every write)."""
        from store.engine import make_engine, write_session

        engine = make_engine(self.db)
        try:
            with write_session(engine, actor="test") as session:
                change(session)
        finally:
            engine.dispose()


def ending_engagements(person_id: str) -> Callable[[Any], None]:
    """A store change ending, now, every engagement of the person in effect: a leaver."""
    def change(session: Any) -> None:
        from sqlalchemy import select

        from store.models import Engagement
        from store.validity import utcnow

        now = utcnow()
        for row in session.scalars(select(Engagement).where(Engagement.person_id == person_id)):
            if row.valid_from <= now and (row.valid_to is None or row.valid_to > now):
                row.valid_to = now
    return change


@contextmanager
def served_copy(demo_db: str, folder: Path, config: str = "",
                clients: tuple[tuple[str, str, str], ...] = (), *, start: bool = True,
                **start_kw: Any) -> Iterator[StoreCopy]:
    """Copy the demo store into ``folder`` with a configuration of ``config`` (after the
    ``[directory]`` table), register ``clients`` ((name, "scim"/"ldap", policy), ...) and,
    with ``start``, serve it (``start_serve`` keywords); stopped and closed afterwards."""
    from idm_facade.access.clients import ClientRegistry
    from idm_facade.config import load_config
    from store.engine import make_engine

    db = copy_store(demo_db, folder / "idm.db")
    path = folder / "idm.toml"
    path.write_text(f'[directory]\nstate_dir = "{folder}"\n' + config)
    engine = make_engine(db)
    registry = ClientRegistry(engine, load_config(path))
    secrets = {name: registry.add(name, kind, policy) for name, kind, policy in clients}
    copy = StoreCopy(db, path, registry, secrets)
    try:
        if start:
            copy.serving = start_serve(db, path, **start_kw)
        yield copy
    finally:
        if copy.serving is not None:
            copy.serving.stop()
        engine.dispose()


def ldap_bind(url: str, dn: str, secret: str, *, timeout: float | None = None,
              network_timeout: float | None = None, starttls: bool = False) -> Any:
    """A python-ldap connection (LDAPv3, no referrals) bound as ``dn``; ``timeout`` bounds
    each operation, ``network_timeout`` the connect (bind included). With ``starttls`` (or
    an ldaps:// URL) the bind goes over TLS; the facade's certificate is not checked (its
    self-signed one, made at start)."""
    import ldap

    conn = ldap.initialize(url)
    conn.protocol_version = 3
    conn.set_option(ldap.OPT_REFERRALS, 0)
    if network_timeout is not None:
        conn.set_option(ldap.OPT_NETWORK_TIMEOUT, network_timeout)
    if timeout is not None:
        conn.set_option(ldap.OPT_TIMEOUT, timeout)
    if starttls or url.startswith("ldaps://"):
        conn.set_option(ldap.OPT_X_TLS_REQUIRE_CERT, ldap.OPT_X_TLS_NEVER)
        conn.set_option(ldap.OPT_X_TLS_NEWCTX, 0)
    if starttls:
        conn.start_tls_s()
    conn.simple_bind_s(dn, secret)
    return conn


def rss_mb(pid: int) -> float:
    """Resident memory of process ``pid`` in MB (from /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for process {pid}")


def access_records(db: str, until: Callable[[list], bool], *, timeout: float = 10.0,
                   **query: Any) -> list:
    """The access log's records (``AuditLog.query(**query)``) once ``until(records)`` holds,
    or as they are after ``timeout`` seconds. A bind's record may be committed up to
    ``[audit] bind_record_delay`` (10 ms by default) after its answer (docs/access-control.md,
    "Bind records"), so a test that reads the log right after a bind waits for what it
    expects instead of reading once."""
    from idm_facade.access.audit import AuditLog
    from store.engine import make_engine

    deadline = time.monotonic() + timeout
    while True:
        audit = AuditLog(make_engine(db))
        try:
            records = audit.query(**query)
        finally:
            audit.close()
        if until(records) or time.monotonic() > deadline:
            return list(records)
        time.sleep(0.02)


def ldap_source(conn: Any) -> str:
    """How access records name a python-ldap connection's end (``ldap:127.0.0.1:<port> ``):
    a test on a shared server picks its own connection's records by it, whatever other
    tests' records (a bind's may land just after its answer) come before or between."""
    import socket

    import ldap

    with socket.socket(fileno=os.dup(conn.get_option(ldap.OPT_DESC))) as sock:
        host, port = sock.getsockname()[:2]
    return f"ldap:{host}:{port} "
