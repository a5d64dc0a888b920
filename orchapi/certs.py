"""Self-signed certificates and their SHA-256 fingerprints.

Agents and clients each own one long-lived self-signed ECDSA P-384 certificate, as in LXD. Trust is not
derived from a CA but from the certificate's fingerprint (SHA-256 of its DER form): the client pins the
agent's, the agent keeps the clients' in its trust store.
"""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
import os
import socket
import ssl
from pathlib import Path
from typing import TYPE_CHECKING

from orchapi.errors import BadRequest

if TYPE_CHECKING:
    from cryptography import x509

# cryptography is imported inside the functions that parse or make certificates: it costs ~50 ms, and
# the CLI's hot path (pinning a stored certificate) needs only hashlib.


def fingerprint_der(der: bytes) -> str:
    """Lowercase hex SHA-256 of a DER certificate."""
    return hashlib.sha256(der).hexdigest()


def fingerprint_pem(pem: str | bytes) -> str:
    """Fingerprint of a PEM certificate, parsed and checked; :class:`BadRequest` if it is not one."""
    from cryptography.hazmat.primitives import serialization

    return fingerprint_der(load_pem(pem).public_bytes(serialization.Encoding.DER))


def fingerprint_own_pem(pem: str | bytes) -> str:
    """Fingerprint of a PEM certificate this program wrote itself (a pinned or our own certificate).

    No X.509 parsing, only base64: fast, but not a validation, so never use it on input from others.
    """
    text = pem.decode() if isinstance(pem, bytes) else pem
    try:
        return fingerprint_der(ssl.PEM_cert_to_DER_cert(text.strip()))
    except ValueError as exc:
        raise BadRequest(f"not a PEM certificate: {exc}") from None


def load_pem(pem: str | bytes) -> x509.Certificate:
    """Parse one PEM certificate, turning parser errors into a clear :class:`BadRequest`."""
    from cryptography import x509

    data = pem.encode() if isinstance(pem, str) else pem
    try:
        return x509.load_pem_x509_certificate(data)
    except (ValueError, TypeError) as exc:
        raise BadRequest(f"not a valid PEM certificate: {exc}") from None


def der_to_pem(der: bytes) -> str:
    """Convert a DER certificate (as TLS hands it over) to PEM text."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    cert = x509.load_der_x509_certificate(der)
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def generate(cert_path: Path, key_path: Path, common_name: str, days: int = 3650) -> None:
    """Write a new self-signed certificate and its private key (key mode 0600, written atomically)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP384R1())
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "orch"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )
    now = datetime.datetime.now(datetime.UTC)
    hostname = socket.gethostname()
    san = x509.SubjectAlternativeName(
        [
            x509.DNSName(hostname),
            x509.DNSName("localhost"),
            x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
            x509.IPAddress(ipaddress.ip_address("::1")),
        ]
    )
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(san, critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(key, hashes.SHA384())
    )
    key_bytes = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    _write_private(key_path, key_bytes)
    _write_private(cert_path, cert.public_bytes(serialization.Encoding.PEM), mode=0o644)


def ensure(cert_path: Path, key_path: Path, common_name: str) -> str:
    """Create the certificate pair on first use; return the certificate's fingerprint."""
    if not (cert_path.exists() and key_path.exists()):
        cert_path.parent.mkdir(parents=True, exist_ok=True)
        generate(cert_path, key_path, common_name)
    return fingerprint_own_pem(cert_path.read_bytes())


def _write_private(path: Path, data: bytes, mode: int = 0o600) -> None:
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    os.replace(tmp, path)
