"""Ordinary proxies in front of an LDAP server, as floors for anything that sits between a
client and the directory that checks its password (bench/person_bind_bench.py).

- :func:`slapd_remoteauth`: OpenLDAP's answer to the same job as the facade's person bind
  (slapd with the ``remoteauth`` overlay, slapo-remoteauth(5): "Delegate authentication
  requests to remote directories, e.g. Active Directory"). A bind names a local entry; slapd
  binds to the remote directory as the DN that entry holds and answers as it answered. It is
  written in C and is what an LDAP administrator would set up without us. It opens a new
  connection to the remote directory for every bind (``remoteauth_bind`` in
  servers/slapd/overlays/remoteauth.c calls ``ldap_initialize`` and ``ldap_connect`` each
  time), where the facade keeps a pool.
- :func:`haproxy_tcp` (from tests/balancer.py): HAProxy in TCP mode, copying bytes without
  reading them: the cost of one more hop on the path and nothing else, an upper bound for any
  proxy.
- :func:`twisted_relay`: the same written on the facade's own stack (bench/relay.py, Python
  and Twisted, bytes sent at once as the facade sends them): an upper bound for any hop
  written in it, before it decodes, decides or records anything.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.balancer import haproxy_tcp
from tests.ports import free_port, wait_listening

__all__ = ["REMOTEAUTH_BASE", "haproxy_tcp", "slapd_remoteauth", "twisted_relay"]

REMOTEAUTH_CONF = """include /etc/ldap/schema/core.schema
include /etc/ldap/schema/cosine.schema
include /etc/ldap/schema/inetorgperson.schema
modulepath /usr/lib/ldap
moduleload back_mdb
moduleload remoteauth
pidfile {dir}/slapd.pid
argsfile {dir}/slapd.args
loglevel none
database mdb
suffix "{base}"
directory {dir}/db
maxsize 104857600
access to * by * read
overlay remoteauth
remoteauth_dn_attribute seeAlso
remoteauth_domain_attribute associatedDomain
remoteauth_default_domain upstream
remoteauth_default_realm {remote}
remoteauth_retry_count 1
"""

#: The local entries of :func:`slapd_remoteauth`: ``uid=<username>,ou=people,<REMOTEAUTH_BASE>``.
REMOTEAUTH_BASE = "dc=remoteauth,dc=test"


def _wait_listening(port: int) -> None:
    if not wait_listening(port):
        raise RuntimeError(f"nothing listens on 127.0.0.1:{port}")


@contextmanager
def slapd_remoteauth(folder: Path, remote_url: str, remote_dns: dict[str, str]
                     ) -> Iterator[str]:
    """A slapd with one local entry per username of ``remote_dns`` ({username: DN in the
    remote directory}) whose binds are checked by ``remote_url``; yields its ldap:// URL."""
    (folder / "db").mkdir(parents=True, exist_ok=True)
    conf = folder / "slapd.conf"
    conf.write_text(REMOTEAUTH_CONF.format(dir=folder, base=REMOTEAUTH_BASE,
                                           remote=remote_url))
    entries = [f"dn: {REMOTEAUTH_BASE}\nobjectClass: dcObject\nobjectClass: organization\n"
               f"dc: remoteauth\no: remoteauth\n",
               f"dn: ou=people,{REMOTEAUTH_BASE}\nobjectClass: organizationalUnit\n"
               f"ou: people\n"]
    entries += [f"dn: uid={user},ou=people,{REMOTEAUTH_BASE}\nobjectClass: inetOrgPerson\n"
                f"uid: {user}\ncn: {user}\nsn: {user}\nseeAlso: {dn}\n"
                for user, dn in remote_dns.items()]
    ldif = folder / "entries.ldif"
    ldif.write_text("\n".join(entries))
    subprocess.run(["slapadd", "-q", "-f", str(conf), "-l", str(ldif)], check=True,
                   capture_output=True)
    port = free_port()
    subprocess.run(["slapd", "-h", f"ldap://127.0.0.1:{port}/", "-f", str(conf)],
                   check=True, capture_output=True)
    _wait_listening(port)
    pid = int((folder / "slapd.pid").read_text())
    try:
        yield f"ldap://127.0.0.1:{port}"
    finally:
        os.kill(pid, signal.SIGTERM)


@contextmanager
def twisted_relay(remote_host: str, remote_port: int) -> Iterator[tuple[str, int]]:
    """bench/relay.py copying to ``remote_host:remote_port``; yields (its ldap:// URL, its
    process id)."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "bench.relay", remote_host,
                             str(remote_port), str(port)],
                            cwd=Path(__file__).resolve().parent.parent)
    try:
        _wait_listening(port)
        yield f"ldap://127.0.0.1:{port}", proc.pid
    finally:
        proc.terminate()
        proc.wait(timeout=20)
