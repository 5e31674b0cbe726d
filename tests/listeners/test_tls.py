"""MLLP over TLS: a client with a certificate from the configured CA is served and
named as the authenticated sender; one without a certificate is refused. (Which
institution a certificate may send for: test_mllp_sender.py.)"""

from __future__ import annotations

import datetime as dt
import ssl
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from gateway.errors import ConfigError
from gateway.listeners.mllp import tls_context
from gateway.store import Store

from .mllp_client import Client, Listener, example, segments, settings_for

Signer = tuple[x509.Name, ec.EllipticCurvePrivateKey]


def _cert(
    name: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: Signer | None,
    ca: bool = False,
    oid: str | None = None,
) -> x509.Certificate:
    """A certificate for ``name``; with ``oid``, an institution's (organizationIdentifier
    OID:<oid>, as gateway keys init issues them)."""
    attrs = [x509.NameAttribute(NameOID.COMMON_NAME, name)]
    if oid is not None:
        attrs.append(x509.NameAttribute(NameOID.ORGANIZATION_IDENTIFIER, f"OID:{oid}"))
    subject = x509.Name(attrs)
    issuer_name, signer = issuer or (subject, key)
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if not ca:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False
        )
    return builder.sign(signer, hashes.SHA256())


def _write(path: Path, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> None:
    path.with_suffix(".crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    path.with_suffix(".key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    path.with_suffix(".key").chmod(0o600)  # a key others may read is refused


def test_mllp_over_tls_with_client_certificates(store: Store, tmp_path: Path) -> None:
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _cert("Gateway test CA", ca_key, None, ca=True)
    issuer = (ca.subject, ca_key)
    server_key, client_key = (ec.generate_private_key(ec.SECP256R1()) for _ in range(2))
    _write(tmp_path / "server", _cert("localhost", server_key, issuer), server_key)
    # NSCH's system: the referral's MSH-4 names NSCH
    nsch_his = _cert("NSCH-HIS", client_key, issuer, oid="2.16.156.10011.99.1.1")
    _write(tmp_path / "client", nsch_his, client_key)
    (tmp_path / "ca.crt").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    settings = settings_for(
        tmp_path,
        mllp_tls_cert=tmp_path / "server.crt",
        mllp_tls_key=tmp_path / "server.key",
        mllp_tls_ca=tmp_path / "ca.crt",
    )
    with Listener(settings, store) as listener:
        context = ssl.create_default_context(cafile=tmp_path / "ca.crt")
        context.load_cert_chain(tmp_path / "client.crt", tmp_path / "client.key")
        client = Client(listener.port, context=context)
        assert segments(client.call(example("ref_i12_nsch_to_hkpmc.hl7")))["MSA"][1] == "AA"
        client.close()

        anonymous = ssl.create_default_context(cafile=tmp_path / "ca.crt")
        refused: Client | None = None
        with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
            refused = Client(listener.port, context=anonymous)
            refused.call(example("ref_i12_nsch_to_hkpmc.hl7"))
        if refused is not None:
            refused.close()
    items = store.find().items
    assert len(items) == 1 and items[0].auth_sender == "NSCH-HIS"


def test_an_mllp_tls_key_others_may_read_is_refused(store: Store, tmp_path: Path) -> None:
    """The listener's private key is a secret file as the others (config.not_private):
    one group or others may read is refused, named with the fix, never used."""
    key = ec.generate_private_key(ec.SECP256R1())
    _write(tmp_path / "server", _cert("localhost", key, None), key)
    (tmp_path / "server.key").chmod(0o644)
    settings = settings_for(
        tmp_path, mllp_tls_cert=tmp_path / "server.crt", mllp_tls_key=tmp_path / "server.key"
    )
    with pytest.raises(ConfigError) as refused:
        tls_context(settings)
    assert refused.value.code == "config.bad-setting"
    assert str(refused.value.issue.message) == (
        f"mllp_tls_key: {tmp_path / 'server.key'}: the MLLP TLS key file must be private "
        "(chmod 600)"
    )
    (tmp_path / "server.key").chmod(0o400)  # read-only for its owner: private
    assert tls_context(settings) is not None
