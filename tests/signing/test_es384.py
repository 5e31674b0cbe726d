"""Done when: ES384 (ECDSA P-384 with SHA-384, r||s 48 bytes each, RFC 7518 3.4) signs
and verifies a Bundle with a P-384 certificate chain made by ``gateway keys init --alg
ES384``; one changed byte breaks it; a P-256 signature labelled ES384 (and a P-384 one
labelled ES256) and a signature of the wrong length are refused."""

from __future__ import annotations

import json
from base64 import b64decode, b64encode, urlsafe_b64decode, urlsafe_b64encode
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509 import load_pem_x509_certificates

from gateway.cli import main
from gateway.signing import (
    ALGORITHMS,
    Signer,
    TrustStore,
    sign_bundle,
    signed_content,
    verify_bundle,
)

from .conftest import WHEN, load_signer


def _b64(data: bytes) -> str:
    return urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return urlsafe_b64decode(text + "=" * (-len(text) % 4))


@pytest.fixture(scope="module")
def p384(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A demo network PKI of P-384 keys, made by the command line."""
    out = tmp_path_factory.mktemp("p384")
    assert main(["keys", "init", "--out", str(out), "--alg", "ES384"]) == 0
    return out


@pytest.fixture(scope="module")
def signed(p384: Path, golden: dict[str, Any]) -> dict[str, Any]:
    return sign_bundle(golden, load_signer(p384, "lax2"), "author", WHEN)


def _token(bundle: dict[str, Any]) -> tuple[dict[str, Any], bytes]:
    head, _, sig = b64decode(bundle["signature"]["data"]).decode().split(".")
    return json.loads(_unb64(head)), _unb64(sig)


def _replace_jws(bundle: dict[str, Any], header: dict[str, Any], signature: bytes) -> Any:
    token = f"{_b64(json.dumps(header).encode())}..{_b64(signature)}"
    data = b64encode(token.encode()).decode()
    out = json.loads(json.dumps(bundle))
    out["signature"]["data"] = data
    out["entry"][-1]["resource"]["signature"][0]["data"] = data
    return out


def _relabelled(bundle: dict[str, Any], signer: Signer, alg: str) -> Any:
    """The Bundle's signature made again by ``signer`` over a header saying ``alg``:
    a genuine signature of the content, only its label is another algorithm's."""
    header, _ = _token(bundle)
    header["alg"] = alg
    head = _b64(json.dumps(header).encode())
    payload = signed_content(bundle, 1)
    signature = signer.algorithm.sign(signer.key, head.encode() + b"." + payload)
    return _replace_jws(bundle, header, signature)


def _failed(report: Any) -> Any:
    assert not report.ok
    return next(c for s in report.signatures for c in s.checks if not c.ok)


def test_keys_init_makes_p384_keys_and_a_p384_chain(p384: Path) -> None:
    chain = load_pem_x509_certificates((p384 / "njmu2" / "xu-jing" / "cert.pem").read_bytes())
    assert len(chain) == 2  # leaf, then the demo CA
    for cert in chain:
        key = cert.public_key()
        assert isinstance(key, ec.EllipticCurvePublicKey) and key.curve.name == "secp384r1"
        assert isinstance(cert.signature_hash_algorithm, hashes.SHA384)  # ecdsa-with-SHA384
    signer = load_signer(p384, "njmu2/xu-jing")
    assert signer.algorithm.name == "ES384"


def test_a_p384_signature_verifies_with_its_chain(signed: dict[str, Any], p384: Path) -> None:
    report = verify_bundle(signed, TrustStore.load(p384 / "ca"))
    assert report.ok, report.failures()
    [sig] = report.signatures
    assert (sig.index, sig.role, sig.algorithm) == (1, "author", "ES384")
    header, signature = _token(signed)
    assert header["alg"] == "ES384"
    assert len(signature) == 96  # r||s, 48 bytes each: not DER


def test_a_p384_cosignature_on_a_p256_signature_verifies(
    signed: dict[str, Any], p384: Path, pki: Path
) -> None:
    # the HK partner (P-384) co-signs what a P-256 signer signed: each checks on its own
    first = sign_bundle(signed, load_signer(pki, "lax2"), "author", WHEN)
    both = sign_bundle(first, load_signer(p384, "njmu2/xu-jing"), "verification", WHEN)
    trust = TrustStore(
        TrustStore.load(p384 / "ca").roots + TrustStore.load(pki / "ca").roots,
        TrustStore.load(p384 / "ca").crls + TrustStore.load(pki / "ca").crls,
    )
    report = verify_bundle(both, trust)
    assert report.ok, report.failures()
    assert [s.algorithm for s in report.signatures] == ["ES384", "ES256", "ES384"]


def test_one_changed_byte_breaks_it(signed: dict[str, Any], p384: Path) -> None:
    changed = json.loads(json.dumps(signed))
    diag = next(
        e["resource"]
        for e in changed["entry"]
        if e["resource"]["resourceType"] == "DiagnosticReport"
    )
    diag["status"] = diag["status"][:-1] + chr(ord(diag["status"][-1]) ^ 1)  # one byte
    check = _failed(verify_bundle(changed, TrustStore.load(p384 / "ca")))
    assert check.code == "signing.content-changed"
    assert check.message.startswith("signature 1 (来安县第二人民医院): content:")


def test_a_changed_signature_byte_breaks_it(signed: dict[str, Any], p384: Path) -> None:
    header, signature = _token(signed)
    damaged = bytes([signature[0] ^ 1]) + signature[1:]
    check = _failed(
        verify_bundle(_replace_jws(signed, header, damaged), TrustStore.load(p384 / "ca"))
    )
    assert check.code == "signing.content-changed"


def test_a_p256_signature_labelled_es384_is_refused(
    golden: dict[str, Any], lax2: Signer, trust: TrustStore
) -> None:
    p256 = sign_bundle(golden, lax2, "author", WHEN)  # the demo network's P-256 key
    check = _failed(verify_bundle(_relabelled(p256, lax2, "ES384"), trust))
    assert check.code == "signing.alg-confusion"
    assert "alg ES384 does not fit the certificate's" in check.message


def test_a_p384_signature_labelled_es256_is_refused(signed: dict[str, Any], p384: Path) -> None:
    forged = _relabelled(signed, load_signer(p384, "lax2"), "ES256")
    check = _failed(verify_bundle(forged, TrustStore.load(p384 / "ca")))
    assert check.code == "signing.alg-confusion"
    assert "alg ES256 does not fit the certificate's" in check.message


@pytest.mark.parametrize("length", [64, 95, 97, 132])
def test_a_signature_of_the_wrong_length_is_refused(
    signed: dict[str, Any], p384: Path, length: int
) -> None:
    header, signature = _token(signed)
    # 64: an ES256-sized r||s; 132: ES512's; 95/97: one byte short or over
    wrong = (signature * 2)[:length]
    check = _failed(
        verify_bundle(_replace_jws(signed, header, wrong), TrustStore.load(p384 / "ca"))
    )
    assert check.code == "signing.content-changed"


def test_the_algorithms_refuse_each_others_keys_and_lengths() -> None:
    es256, es384 = ALGORITHMS["ES256"], ALGORITHMS["ES384"]
    k256, k384 = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP384R1())
    assert es384.fits(k384) and es384.fits(k384.public_key()) and not es384.fits(k256)
    assert es256.fits(k256) and not es256.fits(k384)
    data = b"header.payload"
    sig384 = es384.sign(k384, data)
    assert len(sig384) == 96 and es384.verify(k384.public_key(), sig384, data)
    assert not es384.verify(k384.public_key(), sig384, data + b"!")
    assert not es384.verify(k384.public_key(), sig384[:64], data)
    sig256 = es256.sign(k256, data)
    assert es256.verify(k256.public_key(), sig256, data)
    # a P-256 r||s padded to ES384's 48-byte halves: SHA-384 of the data, refused
    padded = bytes(16) + sig256[:32] + bytes(16) + sig256[32:]
    assert not es384.verify(k256.public_key(), padded, data)
    assert not es256.verify(k256.public_key(), padded, data)  # 96 bytes: not ES256's 64
