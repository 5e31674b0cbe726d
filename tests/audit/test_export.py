"""Read-back: one patient's events exported with the signed head and inclusion proofs,
verified offline with nothing but the file and the gateway's certificate (in a fresh
process with no store and an empty GATEWAY_HOME), and refused after each kind of
tampering with the file, naming the entry."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest
from cryptography import x509

from gateway.audit import (
    AuditLog,
    ExportFilter,
    Subject,
    cert_checker,
    events,
    export_bundle,
    verify_export,
)
from gateway.audit._export import PROOF_TYPE
from gateway.signing import Signer
from gateway.signing._pki import load_certificates

from .conftest import PATIENTS, transfer_events

WANG = PATIENTS[0]


@pytest.fixture
def exported(log: AuditLog, signer: Signer) -> dict[str, Any]:
    log.record_many(transfer_events(30))
    head = log.sign_head(signer)
    log.record_many(transfer_events(5))  # after the head: not in this export
    return export_bundle(log, ExportFilter(patient=WANG), head)


def _certs(pki: Path, who: str = "nsch") -> list[x509.Certificate]:
    return load_certificates((pki / who / "cert.pem").read_bytes())[:1]


def _events(bundle: dict[str, Any]) -> list[dict[str, Any]]:
    return [e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "AuditEvent"]


def _proofs(bundle: dict[str, Any]) -> dict[str, Any]:
    from base64 import b64decode

    binary = bundle["entry"][0]["resource"]
    assert binary["contentType"] == PROOF_TYPE
    document: dict[str, Any] = orjson.loads(b64decode(binary["data"]))
    return document


def test_export_holds_the_patients_events_with_proofs(exported: dict[str, Any], pki: Path) -> None:
    found = _events(exported)
    assert len(found) == 10  # every third of the 30 events before the head
    assert all(e["entity"][0]["what"]["reference"] == WANG for e in found)
    document = _proofs(exported)
    assert document["tree_head"]["tree_size"] == 30
    assert [p["event"] for p in document["proofs"]] == [e["id"] for e in found]
    verdict = verify_export(exported, "export.json", cert_checker(_certs(pki)))
    assert verdict.ok, [p.line() for p in verdict.problems]
    assert verdict.entries == 10


def test_a_stranger_certificate_is_refused(exported: dict[str, Any], pki: Path) -> None:
    verdict = verify_export(exported, "export.json", cert_checker(_certs(pki, "hkpmc")))
    assert [p.code for p in verdict.problems] == ["audit.untrusted-head"]


def test_the_ca_certificate_is_enough(exported: dict[str, Any], pki: Path) -> None:
    ca = load_certificates((pki / "ca" / "cert.pem").read_bytes())
    assert verify_export(exported, "export.json", cert_checker(ca)).ok


def _lines(bundle: dict[str, Any], pki: Path) -> list[str]:
    verdict = verify_export(bundle, "export.json", cert_checker(_certs(pki)))
    assert not verdict.ok
    return [p.line() for p in verdict.problems]


def test_altered_event_in_the_file_is_named(exported: dict[str, Any], pki: Path) -> None:
    bundle = copy.deepcopy(exported)
    event = bundle["entry"][3]["resource"]
    event["outcome"] = "8"
    index = _proofs(bundle)["proofs"][2]["index"]
    assert _lines(bundle, pki) == [
        f"entry {index} (event {event['id']}): not included at this index in the signed tree "
        "of 30: the event or its proof was changed [audit.altered]"
    ]


def test_deleted_event_in_the_file_is_named(exported: dict[str, Any], pki: Path) -> None:
    bundle = copy.deepcopy(exported)
    removed = bundle["entry"].pop(4)["resource"]
    index = _proofs(bundle)["proofs"][3]["index"]
    assert _lines(bundle, pki) == [
        f"entry {index} (event {removed['id']}): listed in the proofs, missing from the Bundle "
        "(removed) [audit.missing]"
    ]


def test_inserted_event_in_the_file_is_named(exported: dict[str, Any], pki: Path) -> None:
    bundle = copy.deepcopy(exported)
    forged = events.delivery(
        "HKPMC",
        Subject(WANG),
        url=None,
        outcome="success",
        basis="gba-standard-contract",
        agreement="伪造的协议",
    )
    bundle["entry"].insert(2, {"fullUrl": f"urn:uuid:{forged['id']}", "resource": forged})
    assert _lines(bundle, pki) == [
        f"event {forged['id']}: the Bundle's event 2 has no inclusion proof: not from the log "
        "[audit.inserted]"
    ]


def test_reordered_events_in_the_file_are_named(exported: dict[str, Any], pki: Path) -> None:
    bundle = copy.deepcopy(exported)
    entry = bundle["entry"]
    entry[2], entry[3] = entry[3], entry[2]
    moved = entry[3]["resource"]
    index = _proofs(bundle)["proofs"][1]["index"]
    assert _lines(bundle, pki) == [
        f"entry {index} (event {moved['id']}): out of log order in the Bundle [audit.reordered]"
    ]


def test_a_changed_tree_head_is_refused(exported: dict[str, Any], pki: Path) -> None:
    from base64 import b64encode

    bundle = copy.deepcopy(exported)
    document = _proofs(bundle)
    document["tree_head"]["tree_size"] = 29
    bundle["entry"][0]["resource"]["data"] = b64encode(orjson.dumps(document)).decode()
    lines = _lines(bundle, pki)
    assert lines[0].startswith("log: signed head (size 29): signature refused")


def test_not_an_export_is_refused(pki: Path) -> None:
    lines = _lines({"resourceType": "Bundle", "type": "collection", "entry": []}, pki)
    assert lines == [f"log: no proof Binary ({PROOF_TYPE}): not an audit export [audit.bad-export]"]


def _fresh(args: list[str], cwd: Path, home: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    env["GATEWAY_HOME"] = str(home)
    return subprocess.run(
        [sys.executable, "-m", "gateway", "audit", "verify", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_one_patients_export_verifies_in_a_fresh_process_with_no_store(
    exported: dict[str, Any], pki: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "auditor"
    home = folder / "home"
    home.mkdir(parents=True)
    (folder / "export.json").write_bytes(orjson.dumps(exported))
    (folder / "gateway.pem").write_bytes((pki / "nsch" / "cert.pem").read_bytes())
    done = _fresh(["export.json", "--cert", "gateway.pem"], folder, home)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "audit log intact: 10 entries, 1 signed heads, 0 problems" in done.stderr
    assert list(home.iterdir()) == []  # no store was made

    tampered = copy.deepcopy(exported)
    event = tampered["entry"][5]["resource"]
    event["recorded"] = "2026-06-09T00:00:00.000Z"
    (folder / "tampered.json").write_bytes(orjson.dumps(tampered))
    done = _fresh(["tampered.json", "--cert", "gateway.pem"], folder, home)
    assert done.returncode == 1
    assert f"(event {event['id']}): not included at this index" in done.stdout
    assert list(home.iterdir()) == []


def test_the_patient_filter_takes_its_value_literally(log: AuditLog, signer: Signer) -> None:
    log.record_many(transfer_events(6))
    head = log.sign_head(signer)
    assert len(export_bundle(log, ExportFilter(patient="%"), head)["entry"]) == 1  # proof only
    bare = PATIENTS[1].split("/", 1)[1]
    assert len(export_bundle(log, ExportFilter(patient=bare), head)["entry"]) == 3
