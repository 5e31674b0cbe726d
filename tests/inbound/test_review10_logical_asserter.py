"""Review of safe13 (false refusal): a record about ``Patient/<id>`` with the patient's
MRN written beside that reference, and a logical ``asserter`` typed ``Patient`` with
the same MRN (the patient said so: R4 Condition.asserter may be a Patient), was
refused as a second patient (422 inbound.mixed-patients): the one-patient check keys a
reference by its literal part, a logical one by its identifier, and did not take the
identifier written beside ``Patient/<id>`` for that patient's. It does now; that
identifier is checked against the Patient as before (another MRN beside it: 422)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from tests.api.test_app import Client

from .conftest import LOCAL_AUTH, MRN, OTHER_MRN
from .test_adversarial_identity import _post

PATIENT, CONDITION = 2, 7  # entries of the golden referral


def _follow_up(referral: dict[str, Any], patient: str, beside: tuple[str, str],
               asserter: tuple[str, str]) -> dict[str, Any]:  # fmt: skip
    """NSCH's next Bundle: a new diagnosis of ``patient`` (stored), ``beside`` written
    beside its subject, asserted by the Patient of identifier ``asserter``."""
    bundle = copy.deepcopy(referral)
    bundle["identifier"]["value"] = "NSCH-FOLLOW-UP-1"
    entry = copy.deepcopy(bundle["entry"][CONDITION])
    entry["fullUrl"] = "urn:uuid:0f0f0f0f-0000-4000-8000-000000000001"
    entry["request"] = {"method": "POST", "url": "Condition"}
    entry["resource"]["identifier"][0]["value"] = "follow-up-1"
    entry["resource"]["subject"] = {
        "reference": patient, "identifier": {"system": beside[0], "value": beside[1]},
    }  # fmt: skip
    entry["resource"]["asserter"] = {
        "type": "Patient", "identifier": {"system": asserter[0], "value": asserter[1]},
    }  # fmt: skip
    bundle["entry"] = [entry]
    return bundle


def _stored_patient(client: Client, referral: dict[str, Any], pki: Path) -> str:
    first = _post(client, referral, pki)
    assert first.status_code == 200, first.text
    return str(first.json()["entry"][PATIENT]["response"]["location"]).split("/_history")[0]


def test_the_patients_own_logical_asserter_beside_a_literal_subject_is_kept(
    client: Client, referral: dict[str, Any], pki: Path
) -> None:
    patient = _stored_patient(client, referral, pki)
    resp = _post(client, _follow_up(referral, patient, MRN, MRN), pki)
    assert resp.status_code == 200, resp.text
    found = client.get("/fhir/Condition?identifier=follow-up-1", headers=LOCAL_AUTH).json()
    [kept] = [e["resource"] for e in found["entry"]]
    assert kept["subject"]["reference"] == patient
    assert kept["asserter"]["identifier"]["value"] == MRN[1]


def test_another_patients_logical_asserter_is_still_refused(
    client: Client, referral: dict[str, Any], pki: Path
) -> None:
    patient = _stored_patient(client, referral, pki)
    resp = _post(client, _follow_up(referral, patient, MRN, OTHER_MRN), pki)
    assert resp.status_code == 422, resp.text
    issue = resp.json()["issue"][0]
    assert issue["details"]["coding"][0]["code"] == "inbound.mixed-patients"
    assert issue["expression"] == ["Bundle.entry[0].resource.asserter"]


def test_another_patients_mrn_beside_the_subject_is_still_refused(
    client: Client, referral: dict[str, Any], pki: Path
) -> None:
    patient = _stored_patient(client, referral, pki)
    resp = _post(client, _follow_up(referral, patient, OTHER_MRN, OTHER_MRN), pki)
    assert resp.status_code == 422, resp.text
    issue = resp.json()["issue"][0]
    assert issue["details"]["coding"][0]["code"] == "inbound.identity-mismatch"
    assert issue["expression"] == ["Bundle.entry[0].resource.subject.identifier"]
