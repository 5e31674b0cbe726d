"""Adversarial review of the export an auditor gets: bytes changed where the existing
tests (test_export.py: an event altered, removed, added, moved; the head changed) do
not look, and a head signed under a certificate that an end-entity certificate of the
pinned CA issued (no CA may issue through a partner's signing certificate)."""

from __future__ import annotations

import copy
import datetime as dt
from base64 import b64decode, b64encode
from pathlib import Path
from typing import Any

import orjson
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from gateway.audit import AuditLog, ExportFilter, cert_checker, export_bundle, verify_export
from gateway.audit._log import SignedHead
from gateway.signing import Signer, issue_certificate, new_key
from gateway.signing._pki import load_certificates

from .conftest import PATIENTS, transfer_events

WANG = PATIENTS[0]


@pytest.fixture
def exported(log: AuditLog, signer: Signer) -> dict[str, Any]:
    log.record_many(transfer_events(30))
    head = log.sign_head(signer)
    return export_bundle(log, ExportFilter(patient=WANG), head)


def _cert(path: Path) -> list[x509.Certificate]:
    return load_certificates(path.read_bytes())[:1]


def _lines(bundle: dict[str, Any], pki: Path) -> list[str]:
    verdict = verify_export(bundle, "export.json", cert_checker(_cert(pki / "nsch" / "cert.pem")))
    assert not verdict.ok
    return [p.line() for p in verdict.problems]


def _document(bundle: dict[str, Any]) -> dict[str, Any]:
    value: dict[str, Any] = orjson.loads(b64decode(bundle["entry"][0]["resource"]["data"]))
    return value


def _set_document(bundle: dict[str, Any], document: dict[str, Any]) -> None:
    bundle["entry"][0]["resource"]["data"] = b64encode(orjson.dumps(document)).decode()


def test_an_entry_that_is_no_logged_event_is_named(exported: dict[str, Any], pki: Path) -> None:
    """A Patient slipped into the export (or a second proof Binary) was ignored: the
    auditor would read it as part of a verified export."""
    bundle = copy.deepcopy(exported)
    bundle["entry"].insert(
        2,
        {
            "fullUrl": "urn:uuid:5b1f0c55-0000-4000-8000-000000000001",
            "resource": {"resourceType": "Patient", "name": [{"text": "王伟"}]},
        },
    )
    lines = _lines(bundle, pki)
    assert lines == [
        "log: the Bundle's entry 3 (a Patient) is neither the proof nor a logged AuditEvent: "
        "not from the log [audit.inserted]"
    ]
    assert "王伟" not in lines[0]


def test_a_changed_leaf_hash_in_the_proofs_is_named(exported: dict[str, Any], pki: Path) -> None:
    bundle = copy.deepcopy(exported)
    document = _document(bundle)
    proof = document["proofs"][1]
    proof["leaf_hash"] = b64encode(b"\1" * 32).decode()
    _set_document(bundle, document)
    assert _lines(bundle, pki) == [
        f"entry {proof['index']} (event {proof['event']}): the proof's leaf_hash is not the "
        "event's: the event or its proof was changed [audit.altered]"
    ]


def test_a_changed_full_url_is_named(exported: dict[str, Any], pki: Path) -> None:
    bundle = copy.deepcopy(exported)
    event = bundle["entry"][2]["resource"]
    bundle["entry"][2]["fullUrl"] = "urn:uuid:00000000-0000-4000-8000-000000000000"
    assert _lines(bundle, pki) == [
        f"event {event['id']}: its fullUrl is not urn:uuid:<its id> [audit.altered]"
    ]


def test_one_changed_byte_anywhere_in_an_event_or_proof_breaks_it(
    exported: dict[str, Any], pki: Path
) -> None:
    """Every byte of the file's events and proof document, flipped one at a time (a
    sample: every 97th), is either not JSON any more or named."""
    data = orjson.dumps(exported)
    start = data.index(b'"resourceType":"AuditEvent"')
    checked = 0
    for at in range(start, len(data), 97):
        changed = bytearray(data)
        changed[at] ^= 0x02
        try:
            bundle = orjson.loads(bytes(changed))
        except orjson.JSONDecodeError:
            continue
        if bundle == exported:
            continue  # the flip hit nothing JSON reads (cannot happen outside whitespace)
        verdict = verify_export(bundle, "x", cert_checker(_cert(pki / "nsch" / "cert.pem")))
        assert not verdict.ok, f"byte {at} changed, export still verifies"
        checked += 1
    assert checked > 50


def _ee_issued_head(pki: Path, head: SignedHead) -> SignedHead:
    """HKPMC's signing certificate (an end entity of the network CA) used as a CA: it
    issues a certificate naming the gateway's institution and signs a head with it."""
    from gateway.signing import sign_detached

    partner_key = serialization.load_pem_private_key((pki / "hkpmc" / "key.pem").read_bytes(), None)
    partner = _cert(pki / "hkpmc" / "cert.pem")[0]
    nsch = _cert(pki / "nsch" / "cert.pem")[0]
    key = new_key()
    forged = issue_certificate(nsch.subject, key.public_key(), partner_key, partner.subject)
    ca = _cert(pki / "ca" / "cert.pem")[0]
    signer = Signer.from_key(key, [forged, partner, ca])
    forged_root = b"\7" * 32
    when = dt.datetime.now(dt.UTC)
    payload = SignedHead(None, head.tree_size, forged_root, head.timestamp, "").payload()
    jws = sign_detached(payload, signer, "verification", when)
    return SignedHead(None, head.tree_size, forged_root, head.timestamp, jws)


def test_a_head_signed_through_a_partners_end_entity_certificate_is_refused(
    log: AuditLog, signer: Signer, pki: Path
) -> None:
    log.record_many(transfer_events(4))
    head = _ee_issued_head(pki, log.sign_head(signer))
    bundle = export_bundle(log, ExportFilter(), log.sign_head(signer))
    document = _document(bundle)
    document["tree_head"] = head.to_json()
    _set_document(bundle, document)
    ca_pinned = cert_checker(_cert(pki / "ca" / "cert.pem"))
    verdict = verify_export(bundle, "export.json", ca_pinned)
    lines = [p.line() for p in verdict.problems]
    assert any(
        "neither the given one nor issued by it" in line and "[audit.untrusted-head]" in line
        for line in lines
    ), lines


def _head_field(bundle: dict[str, Any], name: str, value: Any) -> dict[str, Any]:
    changed = copy.deepcopy(bundle)
    document = _document(changed)
    document["tree_head"][name] = value
    _set_document(changed, document)
    return changed


def test_a_head_number_written_otherwise_is_refused(exported: dict[str, Any], pki: Path) -> None:
    """`30` written `30.9`, `"30"` or `true`-like: int() made them the signed value and the
    changed file verified."""
    head = _document(exported)["tree_head"]
    for name, value in (
        ("tree_size", head["tree_size"] + 0.9),
        ("tree_size", str(head["tree_size"])),
        ("timestamp", head["timestamp"] + 0.5),
    ):
        lines = _lines(_head_field(exported, name, value), pki)
        assert lines == [
            "log: the tree head lacks size, root, time or signature [audit.bad-export]"
        ], (name, value)


def test_a_hash_in_another_base64_spelling_is_refused(exported: dict[str, Any], pki: Path) -> None:
    """The last base64 character of a 32-byte hash carries 2 unused bits: another
    spelling decoded to the same hash, so a changed byte went unnoticed."""
    from base64 import b64decode as decode

    document = _document(exported)
    root = document["tree_head"]["root_hash"]
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    last = alphabet.index(root[-2])
    twin = root[:-2] + alphabet[last ^ 1] + root[-1]
    assert twin != root and decode(twin) == decode(root)
    lines = _lines(_head_field(exported, "root_hash", twin), pki)
    assert lines == ["log: tree_head.root_hash is not base64 [audit.bad-export]"]
    proof = document["proofs"][0]
    path = proof["path"][0]
    proof["path"][0] = path[:-2] + alphabet[alphabet.index(path[-2]) ^ 1] + path[-1]
    changed = copy.deepcopy(exported)
    _set_document(changed, document)
    assert _lines(changed, pki) == [
        f"entry {proof['index']} (event {proof['event']}): the proof of entry {proof['index']} "
        "is not base64 [audit.bad-export]"
    ]
