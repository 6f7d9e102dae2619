"""A real OpenLDAP slapd playing the municipality's Active Directory: the upstream directory
that verifies people's passwords in person binds (docs/ldap.md, "Person binds").

It listens on loopback for plain LDAP (StartTLS offered) and LDAPS, with a server certificate
issued by a throwaway test CA; users are ``uid=<username>,ou=people,<base>`` with plain-text
``userPassword`` values, readable by nobody (``auth`` only). ``stop()`` and ``start()`` again
keep the ports, so a test can take the upstream away and bring it back.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

from tests.ports import free_port, wait_listening

SLAPD_CONF = """include /etc/ldap/schema/core.schema
include /etc/ldap/schema/cosine.schema
include /etc/ldap/schema/inetorgperson.schema
modulepath /usr/lib/ldap
moduleload back_mdb
pidfile {dir}/slapd.pid
argsfile {dir}/slapd.args
loglevel none
TLSCACertificateFile {dir}/ca.pem
TLSCertificateFile {dir}/server.pem
TLSCertificateKeyFile {dir}/server.key
database mdb
suffix "{base}"
rootdn "{admin}"
rootpw {admin_password}
directory {dir}/db
maxsize 104857600
access to attrs=userPassword by anonymous auth by * none
access to * by * read
"""

BASE = "dc=ad,dc=test"
ADMIN = f"cn=admin,{BASE}"
ADMIN_PASSWORD = "upstream-admin-secret"


def make_ca(folder: Path, name: str = "idm-facade test CA") -> tuple[Path, object, object]:
    """A self-signed CA: (its PEM file, certificate, key)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=3650))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True,
                                         crl_sign=True, content_commitment=False,
                                         key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, encipher_only=False,
                                         decipher_only=False), critical=True)
            .sign(key, hashes.SHA256()))
    path = folder / "ca.pem"
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path, cert, key


def make_server_cert(folder: Path, ca_cert: object, ca_key: object) -> None:
    """server.pem / server.key for localhost and 127.0.0.1, issued by the CA."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
            .issuer_name(ca_cert.subject)  # type: ignore[attr-defined]
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=3650))
            .add_extension(x509.SubjectAlternativeName([
                x509.DNSName("localhost"),
                x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))  # type: ignore[arg-type]
    (folder / "server.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (folder / "server.key").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))


class UpstreamDirectory:
    """A slapd with ``users`` ({username: password}) under ``ou=people,dc=ad,dc=test``."""

    def __init__(self, folder: Path, users: dict[str, str]) -> None:
        if shutil.which("slapd") is None and not Path("/usr/sbin/slapd").exists():
            raise RuntimeError("slapd is not installed (make os-packages installs it)")
        self.dir = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.ca_file, ca_cert, ca_key = make_ca(folder)
        make_server_cert(folder, ca_cert, ca_key)
        (folder / "db").mkdir(exist_ok=True)
        conf = folder / "slapd.conf"
        conf.write_text(SLAPD_CONF.format(dir=folder, base=BASE, admin=ADMIN,
                                          admin_password=ADMIN_PASSWORD))
        self.conf = conf
        entries = [f"dn: {BASE}\nobjectClass: dcObject\nobjectClass: organization\n"
                   f"dc: ad\no: Upstream test directory\n",
                   f"dn: ou=people,{BASE}\nobjectClass: organizationalUnit\nou: people\n"]
        for username, password in users.items():
            entries.append(f"dn: uid={username},ou=people,{BASE}\nobjectClass: inetOrgPerson\n"
                           f"uid: {username}\ncn: {username}\nsn: {username}\n"
                           f"userPassword: {password}\n")
        ldif = folder / "users.ldif"
        ldif.write_text("\n".join(entries))
        subprocess.run(["slapadd", "-q", "-f", str(conf), "-l", str(ldif)], check=True,
                       capture_output=True)
        self.port = free_port()
        self.ldaps_port = free_port()
        self.pid: int | None = None

    @property
    def url(self) -> str:
        return f"ldap://127.0.0.1:{self.port}"

    @property
    def ldaps_url(self) -> str:
        return f"ldaps://localhost:{self.ldaps_port}"

    def start(self) -> None:
        """Start slapd and wait until it accepts connections."""
        urls = f"ldap://127.0.0.1:{self.port}/ ldaps://127.0.0.1:{self.ldaps_port}/"
        subprocess.run(["slapd", "-h", urls, "-f", str(self.conf)], check=True,
                       capture_output=True)
        if not wait_listening(self.port):
            raise RuntimeError("slapd did not start listening")
        self.pid = int((self.dir / "slapd.pid").read_text())

    def stop(self) -> None:
        """Stop slapd (by its own PID) and wait until it has exited."""
        if self.pid is None:
            return
        try:
            os.kill(self.pid, signal.SIGTERM)
        except ProcessLookupError:
            self.pid = None
            return
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                os.kill(self.pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.05)
        self.pid = None
