"""Who a credential names is read exactly: a partner token file line binds a token to the
institution key written there, never to a folded spelling of it (``ＮＳＣＨ``, the
facility code ``NSCH``), and a certificate's organizationIdentifier names the
institution whose OID it is as written."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from gateway import Settings
from gateway.inbound import InboundError, certificate_institution, load_partner_tokens
from gateway.network import Network

from .conftest import NSCH_TOKEN

NSCH_OID = "2.16.156.10011.99.1.1"


def _token_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "partner-tokens"
    path.write_text(text, encoding="utf-8")
    path.chmod(0o600)
    return path


@pytest.fixture(scope="module")
def network() -> Network:
    return Network.load(Settings.load(env={}).network)


def test_a_token_line_naming_the_key_exactly_binds_it(tmp_path: Path, network: Network) -> None:
    path = _token_file(tmp_path, f"# 南沙医院\nnsch {NSCH_TOKEN}\n")
    assert load_partner_tokens(path, network) == {NSCH_TOKEN: "nsch"}


@pytest.mark.parametrize("written", ["ｎｓｃｈ", "NSCH", "Nsch", "ＮＳＣＨ"])
def test_a_token_line_naming_a_spelling_of_a_key_is_refused(
    tmp_path: Path, network: Network, written: str
) -> None:
    # the look-up folds (full-width, case) and takes facility codes: each of these found
    # nsch, and the token let its bearer in as nsch
    path = _token_file(tmp_path, f"# partners\n{written} {NSCH_TOKEN}\n")
    with pytest.raises(InboundError) as refused:
        load_partner_tokens(path, network)
    assert refused.value.code == "inbound.config"
    assert refused.value.issue.message == (
        f"{path} line 2: {written!r} is not exactly an institution key: it folds to 'nsch', "
        "the key to write"
    )
    assert NSCH_TOKEN not in refused.value.issue.message


def test_a_token_line_naming_no_institution_is_refused(tmp_path: Path, network: Network) -> None:
    path = _token_file(tmp_path, f"sysu {NSCH_TOKEN}\n")
    with pytest.raises(InboundError) as refused:
        load_partner_tokens(path, network)
    assert "line 1: expected '<institution key> <token>'" in refused.value.issue.message


def _certificate(attrs: list[tuple[x509.ObjectIdentifier, str]]) -> x509.Certificate:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(oid, value) for oid, value in attrs])
    now = dt.datetime.now(dt.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )


def test_certificate_institution_reads_the_keys_init_certificates(
    pki: Path, network: Network
) -> None:
    for key in ("nsch", "hkpmc", "lax2"):
        cert = x509.load_pem_x509_certificates((pki / key / "cert.pem").read_bytes())[0]
        found = certificate_institution(cert, network)
        assert found is not None and found.key == key
    # a practitioner's certificate carries its institution's OID too: a person, not it
    person = x509.load_pem_x509_certificates((pki / "njmu2" / "liu-mei" / "cert.pem").read_bytes())
    assert certificate_institution(person[0], network) is None


@pytest.mark.parametrize(
    "value",
    [
        f"OID:{NSCH_OID.replace('2', '２', 1)}",  # a full-width digit: folded, it is nsch's
        f"oid:{NSCH_OID}",
        f"OID:urn:oid:{NSCH_OID}",
        f"OID: {NSCH_OID}",
        f"OID:{NSCH_OID}.1",
        "NSCH",
        "nsch",
    ],
)
def test_certificate_institution_is_exact(network: Network, value: str) -> None:
    name = (NameOID.COMMON_NAME, "广州市第一人民医院南沙医院")
    cert = _certificate([name, (NameOID.ORGANIZATION_IDENTIFIER, value)])
    assert certificate_institution(cert, network) is None
    exact = _certificate([(NameOID.ORGANIZATION_IDENTIFIER, f"OID:{NSCH_OID}")])
    found = certificate_institution(exact, network)
    assert found is not None and found.key == "nsch"
