"""MLLP over TLS: a client with a certificate from the configured CA is served and
named as the authenticated sender; one without a certificate is refused. (Which
institution a certificate may send for: test_mllp_sender.py.)"""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from gateway.errors import ConfigError
from gateway.listeners.mllp import tls_context
from gateway.store import Store
from tests._certs import certificate, make_ca, write_pem

from .mllp_client import Client, Listener, example, segments, settings_for


def _write(path: Path, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> None:
    write_pem(path.with_suffix(".crt"), path.with_suffix(".key"), cert, key)


def test_mllp_over_tls_with_client_certificates(store: Store, tmp_path: Path) -> None:
    issuer, ca = make_ca()
    localhost: list[x509.GeneralName] = [x509.DNSName("localhost")]
    server_key, server = certificate("localhost", issuer=issuer, ca=False, san=localhost)
    _write(tmp_path / "server", server, server_key)
    # NSCH's system: the referral's MSH-4 names NSCH
    client_key, nsch_his = certificate(
        "NSCH-HIS", issuer=issuer, ca=False, san=localhost, oid="2.16.156.10011.99.1.1"
    )
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
    key, cert = certificate("localhost", ca=False, san=[x509.DNSName("localhost")])
    _write(tmp_path / "server", cert, key)
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
