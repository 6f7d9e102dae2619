"""HAProxy in TCP mode in front of one server: the hop alone as a benchmark floor
(bench/person_bind_bench.py), and a load balancer that sends the PROXY protocol header
(tests/test_person_binds.py)."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.ports import free_port, wait_listening

HAPROXY_CONF = """global
  maxconn 1000
defaults
  mode tcp
  timeout connect 5s
  timeout client 60s
  timeout server 60s
frontend ldap
  bind 127.0.0.1:{port}
  default_backend upstream
backend upstream
  server upstream {host}:{remote_port} {options}
"""


@contextmanager
def haproxy_tcp(folder: Path, remote_host: str, remote_port: int, options: str = ""
                ) -> Iterator[str]:
    """HAProxy copying TCP to ``remote_host:remote_port`` (``options``: more of its
    ``server`` line, such as ``source 127.0.0.2 send-proxy-v2``); yields its ldap:// URL."""
    haproxy = shutil.which("haproxy") or "/usr/sbin/haproxy"
    folder.mkdir(parents=True, exist_ok=True)
    port = free_port()
    conf = folder / "haproxy.cfg"
    conf.write_text(HAPROXY_CONF.format(port=port, host=remote_host, remote_port=remote_port,
                                        options=options))
    proc = subprocess.Popen([haproxy, "-db", "-f", str(conf)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        if not wait_listening(port):
            raise RuntimeError(f"HAProxy does not listen on 127.0.0.1:{port}")
        yield f"ldap://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=20)
