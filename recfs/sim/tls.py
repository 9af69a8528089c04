"""The simulator's certificate: self-signed, like a PBX's built-in one, and usable
as its own CA file so clients can verify it instead of turning verification off."""

from __future__ import annotations

import datetime
import ipaddress
import os
import ssl
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CERT_FILE = "sim-cert.pem"
KEY_FILE = "sim-key.pem"
DEFAULT_NAMES = ("localhost", "127.0.0.1", "::1")


@dataclass(frozen=True)
class CertFiles:
    cert: Path
    key: Path


def _san_entries(names: Iterable[str]) -> list[x509.GeneralName]:
    entries: list[x509.GeneralName] = []
    seen: set[str] = set()
    for name in names:
        name = name.strip().strip("[]")
        if not name or name in seen:
            continue
        seen.add(name)
        try:
            entries.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            entries.append(x509.DNSName(name))
    return entries


def _wanted_names(extra: Iterable[str]) -> list[str]:
    return list(DEFAULT_NAMES) + [n for n in extra if n]


def _existing_cert_covers(cert_path: Path, key_path: Path, names: list[str]) -> bool:
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        key_path.stat()
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (OSError, ValueError, x509.ExtensionNotFound):
        return False
    have = set(san)
    if not all(entry in have for entry in _san_entries(names)):
        return False
    now = datetime.datetime.now(datetime.timezone.utc)
    return cert.not_valid_after_utc > now + datetime.timedelta(days=30)


def ensure_certificate(cert_dir: str | os.PathLike[str], extra_names: Iterable[str] = ()) -> CertFiles:
    """Reuse the certificate in *cert_dir* if it covers every name, else make a new one.

    Reuse matters: users point their tools at the CA file once, and a restarted
    simulator should not invalidate that.
    """
    directory = Path(cert_dir)
    directory.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = directory / CERT_FILE, directory / KEY_FILE
    names = _wanted_names(extra_names)
    if _existing_cert_covers(cert_path, key_path, names):
        return CertFiles(cert_path, key_path)

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "recfs PBX simulator"),
            x509.NameAttribute(NameOID.COMMON_NAME, "recfs-sim"),
        ]
    )
    now = datetime.datetime.now(datetime.timezone.utc)
    public = key.public_key()
    # CA:TRUE plus keyCertSign lets the one file act as trust anchor; serverAuth and
    # the key identifiers keep strict verifiers (X509_STRICT) content.
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName(_san_entries(names)), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(public), critical=False)
        .sign(key, hashes.SHA256())
    )
    key_bytes = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    # Write-then-rename so a concurrently starting simulator never reads half a file.
    tmp_key = key_path.with_suffix(".tmp")
    fd = os.open(tmp_key, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(key_bytes)
    tmp_cert = cert_path.with_suffix(".tmp")
    tmp_cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    os.replace(tmp_key, key_path)
    os.replace(tmp_cert, cert_path)
    return CertFiles(cert_path, key_path)


def restrict_to_tls12(context: ssl.SSLContext) -> ssl.SSLContext:
    """The PBX's default security level speaks TLS 1.2 and nothing else."""
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    return context


def client_context(ca_file: str | os.PathLike[str]) -> ssl.SSLContext:
    """What a client of the simulator uses to verify it (tests, demo)."""
    return ssl.create_default_context(cafile=str(ca_file))
