"""Adversarial review of POST /fhir: one patient per reference. NSCH's referral for
许嘉玮 (MRN 0098765) names its patient by a literal reference (the Patient entry); a
Reference may also carry a logical ``identifier``. One naming 陈美玲's MRN (0011111)
beside the reference to 许嘉玮's entry -- in ServiceRequest.subject or in a Task's
``for`` -- was stored, and the referral Task made from it carried both patients
(its ``for`` is the ServiceRequest's subject). Likewise a Patient entry whose
condition matched a stored Patient with another number of the same system (another
patient's HKID) joined the referral to that stored patient. Each is refused whole
now: 422 ``inbound.identity-mismatch`` naming the entry's element, nothing stored,
no patient data in the answer or the log (gateway/inbound/_content.py, _apply.py)."""

from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Any

import orjson
import pytest

from gateway import Settings
from gateway.signing import sign_bundle
from tests.api.test_app import Client

from .conftest import NSCH_TOKEN, counts, partner, signer

NSCH_MRN = "https://fhir.nsch.example.cn/sid/mrn"
HKID = "https://fhir-gateway.example.org/sid/hkid"
PATIENT = 2  # entry of the referral's Patient (许嘉玮, MRN 0098765, HKID K583726A)
SERVICE_REQUEST = 9
OTHER = "urn:uuid:11111111-2222-4333-8444-555555555555"
SECRETS = ("0011111", "0098765", "K583726A", "R123456A", "许嘉玮", "許嘉瑋", "陈美玲")


def _post(client: Client, bundle: dict[str, Any], pki: Path) -> Any:
    body = orjson.dumps(sign_bundle(bundle, signer(pki, "nsch"), "author"))
    return client.post("/fhir", content=body, headers=partner(NSCH_TOKEN))


def _refused(resp: Any, code: str, where: str, caplog: pytest.LogCaptureFixture) -> None:
    """Refused whole, naming ``where``, without patient data in the answer or the log."""
    assert resp.status_code == 422, resp.text
    issue = resp.json()["issue"][0]
    assert issue["details"]["coding"][0]["code"] == code
    assert issue["expression"] == [where]
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert code in logged
    for secret in SECRETS:
        assert secret not in resp.text
        assert secret not in logged


def _patient_url(bundle: dict[str, Any]) -> str:
    return str(bundle["entry"][PATIENT]["fullUrl"])


def _task(bundle: dict[str, Any], for_: dict[str, Any]) -> None:
    """A Task about the referral (the partner's own), for ``for_``: entry 10."""
    bundle["entry"].append({
        "fullUrl": OTHER,
        "resource": {
            "resourceType": "Task", "status": "requested", "intent": "order",
            "identifier": [{"system": "https://fhir.nsch.example.cn/sid/task",
                            "value": "T-20260618-1"}],
            "focus": {"reference": str(bundle["entry"][SERVICE_REQUEST]["fullUrl"])},
            "for": for_,
        },
        "request": {"method": "POST", "url": "Task",
                    "ifNoneExist": "identifier=https://fhir.nsch.example.cn/sid/task|T-20260618-1"},
    })  # fmt: skip


@pytest.fixture
def logs(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.INFO, logger="gateway")
    return caplog


def test_a_subject_whose_identifier_is_another_patients_is_refused(
    client: Client, hk_settings: Settings, referral: dict[str, Any], pki: Path,
    logs: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    bundle = copy.deepcopy(referral)
    bundle["entry"][SERVICE_REQUEST]["resource"]["subject"] = {
        "reference": _patient_url(bundle),
        "identifier": {"system": NSCH_MRN, "value": "0011111"},  # 陈美玲's MRN
    }
    resp = _post(client, bundle, pki)
    where = f"Bundle.entry[{SERVICE_REQUEST}].resource.subject.identifier"
    _refused(resp, "inbound.identity-mismatch", where, logs)
    assert counts(hk_settings)["inbound_resources"] == 0


def test_a_task_for_whose_identifier_is_another_patients_is_refused(
    client: Client, hk_settings: Settings, referral: dict[str, Any], pki: Path,
    logs: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    bundle = copy.deepcopy(referral)
    _task(bundle, {"reference": _patient_url(bundle),
                   "identifier": {"system": NSCH_MRN, "value": "0011111"}})  # fmt: skip
    resp = _post(client, bundle, pki)
    _refused(resp, "inbound.identity-mismatch", "Bundle.entry[10].resource.for.identifier", logs)
    assert counts(hk_settings)["inbound_resources"] == 0


def test_a_task_for_another_patient_than_the_referrals_is_refused(
    client: Client, hk_settings: Settings, referral: dict[str, Any], pki: Path,
    logs: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    bundle = copy.deepcopy(referral)
    _task(bundle, {"type": "Patient", "identifier": {"system": NSCH_MRN, "value": "0011111"}})
    resp = _post(client, bundle, pki)
    _refused(resp, "inbound.mixed-patients", "Bundle.entry[10].resource.for", logs)
    assert counts(hk_settings)["inbound_resources"] == 0


def test_a_conditional_subject_whose_identifier_is_another_patients_is_refused(
    client: Client, hk_settings: Settings, referral: dict[str, Any], pki: Path,
    logs: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    # the conditional reference resolves to the Bundle's Patient (by its HKID); the
    # identifier beside it, of another system, is none of that Patient's
    bundle = copy.deepcopy(referral)
    bundle["entry"][SERVICE_REQUEST]["resource"]["subject"] = {
        "reference": f"Patient?identifier={HKID}|K583726A",
        "identifier": {"system": NSCH_MRN, "value": "0011111"},
    }
    resp = _post(client, bundle, pki)
    where = f"Bundle.entry[{SERVICE_REQUEST}].resource.subject.identifier"
    _refused(resp, "inbound.identity-mismatch", where, logs)
    assert counts(hk_settings)["inbound_resources"] == 0


@pytest.mark.parametrize("kind", ["transaction", "batch"])
def test_a_patient_matching_a_stored_patient_of_another_identity_is_refused(
    client: Client, hk_settings: Settings, referral: dict[str, Any], pki: Path,
    logs: pytest.LogCaptureFixture, kind: str,
) -> None:  # fmt: skip
    assert _post(client, copy.deepcopy(referral), pki).status_code == 200
    before = counts(hk_settings)
    # the same MRN (its condition), but another person's HKID: another patient
    bundle = copy.deepcopy(referral)
    bundle["type"] = kind
    patient = bundle["entry"][PATIENT]["resource"]
    patient["identifier"][1]["value"] = "R123456A"
    patient["name"] = [{"text": "陈美玲"}]
    resp = _post(client, bundle, pki)
    _refused(resp, "inbound.identity-mismatch", f"Bundle.entry[{PATIENT}].resource.identifier",
             logs)  # fmt: skip
    after = counts(hk_settings)
    assert after["inbound_resources"] == before["inbound_resources"]
    assert after["inbound_bundles"] == before["inbound_bundles"]


def test_two_patient_entries_with_conflicting_identifiers_are_refused(
    client: Client, hk_settings: Settings, referral: dict[str, Any], pki: Path,
    logs: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    # the same MRN on another Patient (陈美玲): a second Patient entry, refused whole
    bundle = copy.deepcopy(referral)
    bundle["entry"].insert(PATIENT + 1, {
        "fullUrl": OTHER,
        "resource": {"resourceType": "Patient", "name": [{"text": "陈美玲"}],
                     "identifier": [{"system": NSCH_MRN, "value": "0098765"}]},
        "request": {"method": "POST", "url": "Patient"},
    })  # fmt: skip
    resp = _post(client, bundle, pki)
    _refused(resp, "inbound.mixed-patients", f"Bundle.entry[{PATIENT + 1}].resource", logs)
    assert counts(hk_settings)["inbound_resources"] == 0


@pytest.mark.parametrize(
    "identifier",
    [{"system": NSCH_MRN, "value": "0098765"}, {"system": HKID, "value": "K583726A"}],
    ids=["mrn", "hkid"],
)
def test_a_reference_with_the_patients_own_identifier_is_stored(
    client: Client, referral: dict[str, Any], pki: Path, identifier: dict[str, str]
) -> None:
    bundle = copy.deepcopy(referral)
    bundle["entry"][SERVICE_REQUEST]["resource"]["subject"] = {
        "reference": _patient_url(bundle), "identifier": identifier,
    }  # fmt: skip
    _task(bundle, {"reference": f"Patient?identifier={HKID}|K583726A",
                   "identifier": identifier})  # fmt: skip
    assert _post(client, bundle, pki).status_code == 200, _post(client, bundle, pki).text
