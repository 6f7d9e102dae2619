"""A person logs in through PAM, nslcd and the facade: ``pamtester`` with the right password
succeeds, with a wrong one fails (docs/ldap.md, "Person binds").

What runs, all on loopback:

- a slapd playing the municipality's AD, holding the person's password (tests/upstream_ldap.py);
- ``idm-facade serve`` over a copy of the S demo store with ``[ldap] posix = true`` and
  ``[ldap.upstream]`` pointing at that slapd over LDAPS (its test CA);
- nslcd (from libnss-ldapd/libpam-ldapd) configured against the facade, with a facade service
  account to look users up, over StartTLS (person binds need TLS); pam_ldap asks nslcd,
  nslcd binds to the facade as the person;
- ``pamtester idm-facade-check <user> authenticate``.

Needs root: it writes /etc/nslcd.conf and /etc/pam.d/idm-facade-check (the originals are put
back afterwards) and starts nslcd. Packages: ``apt-get install slapd nslcd libpam-ldapd
pamtester``.

usage: sudo .venv/bin/python scripts/pam_login_check.py
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.datasets import demo_store  # noqa: E402
from tests.serving import served_copy  # noqa: E402
from tests.upstream_ldap import BASE, UpstreamDirectory  # noqa: E402

NSLCD_CONF = Path("/etc/nslcd.conf")
PAM_SERVICE = Path("/etc/pam.d/idm-facade-check")


def pamtester(user: str, password: str) -> int:
    """pamtester's exit code for one authentication (the password on its stdin)."""
    result = subprocess.run(["pamtester", PAM_SERVICE.name, user, "authenticate"],
                            input=password + "\n", text=True, capture_output=True,
                            timeout=60, check=False)
    print(f"  pamtester {user}: exit {result.returncode}: "
          f"{(result.stdout + result.stderr).strip()}")
    return result.returncode


def main() -> int:
    if os.geteuid() != 0:
        print("run as root: it configures nslcd and PAM", file=sys.stderr)
        return 2
    for tool in ("slapd", "nslcd", "pamtester"):
        if shutil.which(tool) is None and not Path(f"/usr/sbin/{tool}").exists():
            print(f"missing {tool}: apt-get install slapd nslcd libpam-ldapd pamtester",
                  file=sys.stderr)
            return 2
    from idm_facade.directory import Directory
    from idm_facade.directory.entries import ACCOUNT
    from store.engine import make_engine

    db = demo_store("S")
    engine = make_engine(db)
    user = sorted(str(e.first("userName")) for e in Directory(engine).snapshot.entries
                  if e.kind == ACCOUNT and e.first("active") is True)[0]
    engine.dispose()
    password = "Upstream-only password 1!"
    saved = NSLCD_CONF.read_bytes() if NSLCD_CONF.exists() else None
    failures = 0
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        os.chmod(folder, 0o755)
        upstream = UpstreamDirectory(folder / "upstream", {user: password})
        upstream.start()
        (folder / "facade").mkdir()
        # The facade checks the password over LDAPS, trusting the upstream's test CA.
        config = (f'[ldap]\nposix = true\n[ldap.upstream]\nurls = ["{upstream.ldaps_url}"]\n'
                  f'ca_file = "{upstream.ca_file}"\n'
                  f'dn_template = "uid={{username}},ou=people,{BASE}"\n')
        try:
            with served_copy(db, folder / "facade", config,
                             (("nslcd", "ldap", "default"),)) as copy:
                assert copy.serving is not None
                # Person binds need TLS (the default): StartTLS, trusting the certificate
                # the facade made for itself at its first start.
                cert = folder / "facade" / "ldap-selfsigned.crt"
                NSLCD_CONF.write_text(
                    f"uid nslcd\ngid nslcd\nuri {copy.serving.ldap_url}/\nbase {copy.base}\n"
                    f"binddn {copy.bind_dn('nslcd')}\nbindpw {copy.secrets['nslcd']}\n"
                    f"base passwd ou=people,{copy.base}\n"
                    f"ssl start_tls\ntls_reqcert demand\ntls_cacertfile {cert}\n")
                os.chmod(NSLCD_CONF, 0o640)
                PAM_SERVICE.write_text("auth required pam_ldap.so minimum_uid=0\n"
                                       "account required pam_permit.so\n")
                nslcd = subprocess.Popen(["nslcd", "-n"], stdout=subprocess.DEVNULL,
                                         stderr=subprocess.DEVNULL)
                time.sleep(1.0)
                try:
                    getent = subprocess.run(["getent", "-s", "ldap", "passwd", user],
                                            capture_output=True, text=True, check=False)
                    print(f"  getent -s ldap passwd {user}: {getent.stdout.strip()!r}")
                    print(f"person {user}, right password (verified by the upstream slapd):")
                    failures += pamtester(user, password) != 0
                    print(f"person {user}, wrong password:")
                    failures += pamtester(user, password + "x") == 0
                finally:
                    nslcd.send_signal(signal.SIGTERM)
                    nslcd.wait(timeout=10)
        finally:
            upstream.stop()
            PAM_SERVICE.unlink(missing_ok=True)
            if saved is not None:
                NSLCD_CONF.write_bytes(saved)
    print("PAM login through the facade: " + ("FAILED" if failures else "ok"))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
