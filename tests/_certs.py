"""A self-signed EC certificate with its key, for tests that need a key folder's files."""

from __future__ import annotations

import datetime as dt

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


def self_signed(
    common_name: str, not_after: dt.datetime | None = None, days: int = 365
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A P-256 key and its certificate, valid ``days`` up to ``not_after`` (default: a
    year from yesterday)."""
    end = not_after or dt.datetime.now(dt.UTC) + dt.timedelta(days=days - 1)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(end - dt.timedelta(days=days))
        .not_valid_after(end)
        .sign(key, hashes.SHA256())
    )
    return key, cert
