"""One key folder is one certificate: whoever signs with a folder of ``signing_keys``
(outbound records through signing_rules, the audit log's tree heads through
``audit_key``, referral status Tasks through the institution's own folder) loads it
the same way (``load_signer``): key.p12 (or key.pfx) first, else key.pem with
cert.pem, an encrypted one opened with GATEWAY_SIGNING_PASSWORD. The audit log and
status Tasks read key.pem only: a PKCS#12-only folder could not sign tree heads, and a
folder holding both signed tree heads with another certificate than the records (and
than the one the expiry watch shows)."""

from __future__ import annotations

import base64
import dataclasses
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import pkcs12

from gateway import Settings
from gateway.audit import audit_signer
from gateway.delivery._status import StatusReplies
from gateway.partners import Partner
from gateway.signing import Signer, load_signer, make_demo_pki, signer_for
from gateway.store import Store, open_store
from tests._certs import self_signed

PASSWORD = "folder-s3cret"


def _write_p12(folder: Path, common_name: str) -> x509.Certificate:
    key, cert = self_signed(common_name)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "key.p12"
    path.write_bytes(
        pkcs12.serialize_key_and_certificates(
            b"k", key, cert, None, serialization.BestAvailableEncryption(PASSWORD.encode())
        )
    )
    path.chmod(0o600)
    return cert


@pytest.fixture
def settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    monkeypatch.setenv("GATEWAY_SIGNING_PASSWORD", PASSWORD)
    settings = Settings.load(home=tmp_path / "home", env={})
    make_demo_pki(settings.network, tmp_path / "keys", "ES256")  # key.pem + cert.pem folders
    return dataclasses.replace(settings, signing_keys=tmp_path / "keys")


@pytest.fixture
def store(settings: Settings) -> Iterator[Store]:
    opened = open_store(settings)
    yield opened
    opened.close()


def _leaf(signer: Signer | None) -> x509.Certificate:
    assert signer is not None
    return signer.chain[0]


def test_a_pkcs12_only_folder_signs_the_audit_log(settings: Settings) -> None:
    assert settings.signing_keys is not None
    cert = _write_p12(settings.signing_keys / "audit-only", "audit tree heads")
    chosen = dataclasses.replace(settings, audit_key="audit-only")
    assert _leaf(audit_signer(chosen)) == cert
    assert _leaf(load_signer(chosen, "audit-only")) == cert


def test_a_folder_holding_both_signs_everything_with_its_pkcs12_certificate(
    settings: Settings, store: Store
) -> None:
    assert settings.signing_keys is not None
    folder = settings.signing_keys / "nsch"
    pem_leaf = x509.load_pem_x509_certificates((folder / "cert.pem").read_bytes())[0]
    cert = _write_p12(folder, "nsch renewed")  # beside the demo key.pem and cert.pem
    assert cert != pem_leaf
    chosen = dataclasses.replace(
        settings, audit_key="nsch", signing_rules="NSCH/ORU^R01=nsch", institution="nsch"
    )
    assert _leaf(signer_for(chosen, "NSCH", "ORU^R01")) == cert  # records (as before)
    assert _leaf(audit_signer(chosen)) == cert  # tree heads (read cert.pem's key before)
    status = _signed_status(chosen, store)  # status Tasks (read key.pem before)
    assert cert.public_bytes(serialization.Encoding.DER) in _x5c(status["signature"])


def test_an_encrypted_key_pem_signs_status_tasks(settings: Settings, store: Store) -> None:
    """The status Task fallback passed no password: an encrypted key.pem failed."""
    assert settings.signing_keys is not None
    folder = settings.signing_keys / "nsch"
    key = serialization.load_pem_private_key((folder / "key.pem").read_bytes(), None)
    (folder / "key.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(PASSWORD.encode()),
        )
    )
    chosen = dataclasses.replace(settings, institution="nsch")
    assert _signed_status(chosen, store)["signature"]["data"]


def _signed_status(settings: Settings, store: Store) -> dict[str, Any]:
    bundle: dict[str, Any] = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "fullUrl": "urn:uuid:3f1c2a9e-0b7d-4c55-9a51-1d2e3f4a5b6c",
                "resource": {"resourceType": "Task", "status": "accepted", "intent": "order"},
                "request": {"method": "POST", "url": "Task"},
            }
        ],
    }
    partner = Partner("hkpmc", "https://fhir.hkpmc.example.hk/fhir/R4")
    return StatusReplies(settings, store, partners=lambda: {"hkpmc": partner}).sign(bundle, partner)


def _x5c(signature: dict[str, Any]) -> bytes:
    """The DER certificates a signature's JWS header carries, joined."""
    jws = base64.b64decode(signature["data"]).decode()
    header = orjson.loads(base64.urlsafe_b64decode(jws.split(".")[0] + "=="))
    return b"".join(base64.b64decode(c) for c in header["x5c"])
