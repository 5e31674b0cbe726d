"""Done when: each refusal (alg none, algorithm confusion, kid/x5c mismatch, unknown
crit, expired, revoked or untrusted certificates, wrong key usage) has a test with a
clear message naming the signature (index, signer) and the check."""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import shutil
from base64 import b64decode, b64encode, urlsafe_b64decode, urlsafe_b64encode
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID

from gateway.signing import (
    Signer,
    TrustStore,
    issue_certificate,
    make_crl,
    new_key,
    sign_bundle,
    signed_content,
    verify_bundle,
)

from .conftest import WHEN


def _b64(data: bytes) -> str:
    return urlsafe_b64encode(data).rstrip(b"=").decode()


def _with_header(bundle: dict[str, Any], change: Any, signature: bytes | None = None) -> Any:
    """The Bundle with its (only) signature's JWS header changed by ``change``."""
    token = b64decode(bundle["signature"]["data"]).decode()
    head, _, sig = token.split(".")
    header = json.loads(urlsafe_b64decode(head + "=" * (-len(head) % 4)))
    change(header)
    new_head = _b64(json.dumps(header).encode())
    new_sig = sig if signature is None else _b64(signature)
    new_token = f"{new_head}..{new_sig}"
    data = b64encode(new_token.encode()).decode()
    out = json.loads(json.dumps(bundle))
    out["signature"]["data"] = data
    out["entry"][-1]["resource"]["signature"][0]["data"] = data
    return out


def _failure(report: Any) -> Any:
    assert not report.ok
    failed = [c for s in report.signatures for c in s.checks if not c.ok]
    assert failed
    return failed[0]


@pytest.fixture(scope="module")
def signed(golden: dict[str, Any], lax2: Signer) -> dict[str, Any]:
    return sign_bundle(golden, lax2, "author", WHEN)


def test_the_untouched_signature_verifies(signed: dict[str, Any], trust: TrustStore) -> None:
    report = verify_bundle(signed, trust)
    assert report.ok, report.failures()
    sig = report.signatures[0]
    assert (sig.index, sig.role, sig.algorithm) == (1, "author", "ES256")
    assert sig.signer == "来安县第二人民医院"
    assert [c.name for c in sig.checks] == [
        "jws",
        "content",
        "metadata",
        "chain",
        "validity",
        "revocation",
        "key-usage",
    ]


def test_alg_none_is_refused(signed: dict[str, Any], trust: TrustStore) -> None:
    bad = _with_header(signed, lambda h: h.update(alg="none"), b"")
    check = _failure(verify_bundle(bad, trust))
    assert check.code == "signing.alg-none"
    assert check.message.startswith("signature 1 (来安县第二人民医院): jws: alg 'none'")


def test_hmac_with_the_public_key_is_refused(
    signed: dict[str, Any], trust: TrustStore, lax2: Signer
) -> None:
    # the classic confusion attack: HS256 keyed with the certificate's public key
    secret = (
        lax2.chain[0]
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )

    def to_hs256(header: dict[str, Any]) -> None:
        header["alg"] = "HS256"

    forged = _with_header(signed, to_hs256, b"")
    token = b64decode(forged["signature"]["data"]).decode()
    head = token.split(".")[0]
    payload = signed_content(forged, 1)
    mac = hmac.new(secret, head.encode() + b"." + payload, hashlib.sha256).digest()
    forged = _with_header(signed, to_hs256, mac)
    check = _failure(verify_bundle(forged, trust))
    assert check.code == "signing.alg-confusion"
    assert "HMAC" in check.message and check.message.startswith("signature 1 (")


def test_alg_not_fitting_the_key_is_refused(signed: dict[str, Any], trust: TrustStore) -> None:
    check = _failure(verify_bundle(_with_header(signed, lambda h: h.update(alg="PS256")), trust))
    assert check.code == "signing.alg-confusion"
    assert "does not fit the certificate's" in check.message


def test_kid_x5c_mismatch_is_refused(
    signed: dict[str, Any], trust: TrustStore, xu_jing: Signer
) -> None:
    check = _failure(
        verify_bundle(_with_header(signed, lambda h: h.update(kid=xu_jing.kid)), trust)
    )
    assert check.code == "signing.kid-mismatch"
    assert "not the SHA-256 thumbprint of the x5c certificate" in check.message
    assert check.message.startswith("signature 1 (来安县第二人民医院)")


def test_unknown_crit_is_refused(signed: dict[str, Any], trust: TrustStore) -> None:
    def add_crit(header: dict[str, Any]) -> None:
        header["crit"] = [*header["crit"], "exp-policy"]
        header["exp-policy"] = "x"

    check = _failure(verify_bundle(_with_header(signed, add_crit), trust))
    assert check.code == "signing.unknown-crit"
    assert "'exp-policy'" in check.message


def _ca(pki: Path) -> tuple[Any, x509.Certificate]:
    key = serialization.load_pem_private_key((pki / "ca" / "key.pem").read_bytes(), None)
    cert = x509.load_pem_x509_certificate((pki / "ca" / "cert.pem").read_bytes())
    return key, cert


def _signer(pki: Path, golden: dict[str, Any], **options: Any) -> tuple[Any, Signer]:
    ca_key, ca_cert = options.pop("ca", None) or _ca(pki)
    key = new_key()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "测试签署人 Test signer")])
    cert = issue_certificate(name, key.public_key(), ca_key, ca_cert.subject, **options)
    signer = Signer.from_key(key, [cert, ca_cert])
    return cert, signer


def test_expired_certificate_is_refused(
    pki: Path, golden: dict[str, Any], trust: TrustStore
) -> None:
    past = dt.datetime.now(dt.UTC) - dt.timedelta(days=400)
    _, signer = _signer(pki, golden, not_before=past, days=30)
    report = verify_bundle(sign_bundle(golden, signer, "author"), trust)
    check = _failure(report)
    assert (check.name, check.code) == ("validity", "signing.expired")
    assert check.message.startswith("signature 1 (测试签署人 Test signer): validity: certificate")
    assert "not at the signing time" in check.message


def test_revoked_certificate_is_refused(pki: Path, golden: dict[str, Any], tmp_path: Path) -> None:
    cert, signer = _signer(pki, golden)
    ca_key, ca_cert = _ca(pki)
    shutil.copy(pki / "ca" / "cert.pem", tmp_path / "cert.pem")
    crl = make_crl(ca_cert, ca_key, [cert])
    (tmp_path / "crl.pem").write_bytes(crl.public_bytes(serialization.Encoding.PEM))
    report = verify_bundle(sign_bundle(golden, signer, "author"), TrustStore.load(tmp_path))
    check = _failure(report)
    assert (check.name, check.code) == ("revocation", "signing.revoked")
    assert "was revoked" in check.message and check.message.startswith("signature 1 (")


def test_missing_crl_is_refused(
    pki: Path, golden: dict[str, Any], lax2: Signer, tmp_path: Path
) -> None:
    shutil.copy(pki / "ca" / "cert.pem", tmp_path / "cert.pem")
    report = verify_bundle(sign_bundle(golden, lax2, "author"), TrustStore.load(tmp_path))
    check = _failure(report)
    assert check.code == "signing.no-crl" and "no CRL of" in check.message


def test_untrusted_certificate_is_refused(
    pki: Path, golden: dict[str, Any], trust: TrustStore
) -> None:
    other_key = new_key()
    other_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Other CA")])
    other = issue_certificate(other_name, other_key.public_key(), other_key, ca=True)
    _, signer = _signer(pki, golden, ca=(other_key, other))
    check = _failure(verify_bundle(sign_bundle(golden, signer, "author"), trust))
    assert (check.name, check.code) == ("chain", "signing.untrusted")
    assert "does not chain to a CA of the trust store" in check.message


def test_wrong_key_usage_is_refused(pki: Path, golden: dict[str, Any], trust: TrustStore) -> None:
    encipher_only = x509.KeyUsage(
        digital_signature=False,
        content_commitment=False,
        key_encipherment=True,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=False,
        crl_sign=False,
        encipher_only=False,
        decipher_only=False,
    )
    _, signer = _signer(pki, golden, key_usage=encipher_only)
    check = _failure(verify_bundle(sign_bundle(golden, signer, "author"), trust))
    assert (check.name, check.code) == ("key-usage", "signing.key-usage")
    assert "neither digitalSignature nor nonRepudiation" in check.message


def test_no_trust_store_is_not_trusted(signed: dict[str, Any]) -> None:
    check = _failure(verify_bundle(signed, None))
    assert check.code == "signing.untrusted" and "no trust store" in check.message


def test_an_unsigned_bundle_is_named(golden: dict[str, Any], trust: TrustStore) -> None:
    report = verify_bundle(golden, trust)
    assert not report.ok and report.problem is not None
    assert report.problem.code == "signing.unsigned"


def test_a_changed_signature_metadata_is_refused(signed: dict[str, Any], trust: TrustStore) -> None:
    bad = json.loads(json.dumps(signed))
    bad["signature"]["when"] = "2020-01-01T00:00:00Z"
    check = _failure(verify_bundle(bad, trust))
    assert (check.name, check.code) == ("Bundle.signature", "signing.mismatch")


def test_a_signing_key_others_can_read_is_refused(pki: Path, tmp_path: Path) -> None:
    """A key.pem of mode 0644 was used silently, while the pseudonym key of the same
    gateway refuses a file group or others can read."""
    from gateway.signing import SigningError

    key = tmp_path / "key.pem"
    shutil.copy(pki / "nsch" / "key.pem", key)
    key.chmod(0o644)
    with pytest.raises(SigningError) as caught:
        Signer.load(key, pki / "nsch" / "cert.pem")
    assert caught.value.issue.code == "signing.key"
    assert caught.value.issue.message == f"{key}: the private key file must be private (chmod 600)"
    key.chmod(0o600)
    assert Signer.load(key, pki / "nsch" / "cert.pem").institution


def test_a_hong_kong_institutions_certificate_names_it_in_traditional(pki: Path) -> None:
    """The demo certificate of the Hong Kong centre read 大湾区… (Simplified): a Hong
    Kong institution's name is its own, in Traditional (docs/partners.md)."""
    from cryptography.x509 import load_pem_x509_certificates

    from gateway.network import Network

    leaf = load_pem_x509_certificates((pki / "hkpmc" / "cert.pem").read_bytes())[0]
    for oid in (NameOID.ORGANIZATION_NAME, NameOID.COMMON_NAME):
        [attr] = leaf.subject.get_attributes_for_oid(oid)
        assert attr.value == "大灣區醫療集團香港合作醫療中心"
    nsch = load_pem_x509_certificates((pki / "nsch" / "cert.pem").read_bytes())[0]
    [org] = nsch.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)
    assert org.value == "广州市第一人民医院南沙医院"  # the mainland's in Simplified
    # a mainland sender spelling it in Simplified still names the same institution
    network = Network.load(Path(__file__).parents[2] / "seeds" / "network.yaml")
    found = network.find("大湾区医疗集团香港合作医疗中心")
    assert found is not None and found.key == "hkpmc"
