"""TLS for StartTLS and LDAPS: the configured certificate, or a self-signed one made once.

``[ldap] tls_cert`` / ``tls_key`` name PEM files. When neither is configured the server
generates a self-signed certificate on first start (RSA 2048, one year... renewed when
expired), keeps it in the state directory beside the database and logs where, so StartTLS and
LDAPS work out of the box; clients must then trust that file (``LDAPTLS_CACERT``) or skip
verification.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
from pathlib import Path
from typing import Any

from twisted.internet import ssl

log = logging.getLogger(__name__)


def _generate(cert_path: Path, key_path: Path, hostname: str) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import NameOID

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname),
                      x509.NameAttribute(NameOID.ORGANIZATION_NAME, "idm-facade (self-signed)")])
    now = dt.datetime.now(dt.UTC)
    import ipaddress

    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=825))
            .add_extension(x509.SubjectAlternativeName([
                x509.DNSName(hostname), x509.DNSName("localhost"),
                x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path.parent.mkdir(parents=True, exist_ok=True)
    key_bytes = key.private_bytes(serialization.Encoding.PEM,
                                  serialization.PrivateFormat.TraditionalOpenSSL,
                                  serialization.NoEncryption())
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(key_bytes)
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def _expired(cert_path: Path) -> bool:
    from cryptography import x509

    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    return cert.not_valid_after_utc <= dt.datetime.now(dt.UTC)


def certificate_paths(config: Any) -> tuple[Path, Path]:
    """(certificate, key) paths: configured, or the self-signed pair in the state directory
    (generated now if missing or expired)."""
    section = config.section("ldap") if config is not None else {}
    cert, key = section.get("tls_cert"), section.get("tls_key")
    if cert and key:
        return Path(cert), Path(key)
    if cert or key:
        raise ValueError("[ldap] tls_cert and tls_key must be configured together")
    state = Path(config.state_dir) if config is not None else Path("var")
    cert_path, key_path = state / "ldap-selfsigned.crt", state / "ldap-selfsigned.key"
    if not (cert_path.exists() and key_path.exists()) or _expired(cert_path):
        _generate(cert_path, key_path, str(section.get("tls_hostname", "localhost")))
        log.warning("LDAP TLS: no certificate configured; generated a self-signed one at %s "
                    "(key %s). Configure [ldap] tls_cert and tls_key for production.",
                    cert_path, key_path)
    return cert_path, key_path


def context_factory(config: Any) -> ssl.DefaultOpenSSLContextFactory:
    """The server TLS context for StartTLS and LDAPS."""
    cert, key = certificate_paths(config)
    return ssl.DefaultOpenSSLContextFactory(str(key), str(cert))


def reload_context(context: ssl.DefaultOpenSSLContextFactory, config: Any) -> None:
    """Load the configured certificate and key again into ``context`` (SIGHUP): handshakes
    from now on use the new pair; the listeners and open connections stay as they are."""
    fresh = context_factory(config)
    context.certificateFileName = fresh.certificateFileName
    context.privateKeyFileName = fresh.privateKeyFileName
    context._context = fresh.getContext()
