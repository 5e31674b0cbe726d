"""Test certificates, made one way for every test that needs one: self-signed or issued
by a test CA, an institution's (organizationIdentifier ``OID:<oid>``, as ``gateway keys
init`` issues them), a server's (subject alternative names), written as PEM files."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes
from cryptography.x509.oid import NameOID

# Who signs a certificate: its subject name and key (a CA's, or the subject's own).
Signer = tuple[x509.Name, CertificateIssuerPrivateKeyTypes]
Attributes = list[tuple[x509.ObjectIdentifier, str]]


def certificate(
    subject: str | Attributes,
    key: ec.EllipticCurvePrivateKey | None = None,
    *,
    issuer: Signer | None = None,
    ca: bool | None = None,
    oid: str | None = None,
    san: list[x509.GeneralName] | None = None,
    not_before: dt.datetime | None = None,
    not_after: dt.datetime | None = None,
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A P-256 key (``key``, else a new one) and its certificate for ``subject`` (a common
    name, or the subject's attributes as given). Signed by ``issuer``, else self-signed;
    ``ca`` adds BasicConstraints (critical) saying whether it is a CA; ``oid`` the
    organizationIdentifier of an institution certificate; ``san`` subject alternative
    names. Valid from five minutes ago (``not_before``) for a day (``not_after``)."""
    key = key or ec.generate_private_key(ec.SECP256R1())
    if isinstance(subject, str):
        subject = [(NameOID.COMMON_NAME, subject)]
    if oid is not None:
        subject = [*subject, (NameOID.ORGANIZATION_IDENTIFIER, f"OID:{oid}")]
    name = x509.Name([x509.NameAttribute(attr, value) for attr, value in subject])
    issuer_name, signer = issuer or (name, key)
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before or now - dt.timedelta(minutes=5))
        .not_valid_after(not_after or now + dt.timedelta(days=1))
    )
    if ca is not None:
        builder = builder.add_extension(x509.BasicConstraints(ca=ca, path_length=None), True)
    if san:
        builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
    return key, builder.sign(signer, hashes.SHA256())


def self_signed(
    common_name: str, not_after: dt.datetime | None = None, days: int = 365
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A P-256 key and its certificate, valid ``days`` up to ``not_after`` (default: a
    year from yesterday)."""
    end = not_after or dt.datetime.now(dt.UTC) + dt.timedelta(days=days - 1)
    start = end - dt.timedelta(days=days)
    return certificate(common_name, not_before=start, not_after=end)


def make_ca(common_name: str = "Gateway test CA") -> tuple[Signer, x509.Certificate]:
    """A self-signed CA: what signs with it (``issuer=``) and its certificate."""
    key, cert = certificate(common_name, ca=True)
    return (cert.subject, key), cert


def write_pem(
    cert_file: Path, key_file: Path, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey
) -> None:
    """The certificate and its key as PEM files; the key owner-only (0600), as the
    gateway requires of every key it reads."""
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    key_file.chmod(0o600)
