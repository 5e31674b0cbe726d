"""Adversarial review of POST /fhir: one patient per Bundle, conditional references of
other forms. ``mixed_patients`` compared a conditional patient reference only in its one
form ``Patient?identifier=system|value``: ``Patient?_id=<id>``, ``identifier=…&_id=…``
(the store matches on both) and the same under this gateway's own base named no patient
there, and were resolved to the stored Patient they match -- 许嘉玮's referral Bundle
stored a Condition of 陈美玲 (stored by an earlier Bundle), its policy decision, consent
and audit events 许嘉玮's alone. Refused whole now (422 ``inbound.mixed-patients``,
nothing stored); one naming the Bundle's own patient so is stored."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from gateway import Settings
from tests.api.test_app import Client

from .conftest import LOCAL_AUTH, PUBLIC_URL, counts
from .test_adversarial_identity import NSCH_MRN, PATIENT, _post

CONDITION = 7  # the referral's first Condition (of its Patient entry)
FORMS = {
    "by-id": "Patient?_id={id}",
    "by-identifier-and-id": "Patient?identifier={mrn}|{value}&_id={id}",
    "by-id-under-own-base": PUBLIC_URL + "/fhir/Patient?_id={id}",
    "by-identifier-under-own-base": PUBLIC_URL + "/fhir/Patient?identifier={mrn}|{value}",
}


def _store(client: Client, referral: dict[str, Any], pki: Path, value: str, name: str) -> str:
    """A Bundle of the referral's first entries, its Patient ``name`` with MRN
    ``value``: the stored Patient's id."""
    bundle = copy.deepcopy(referral)
    bundle["identifier"]["value"] = f"NSCH-PATIENT-{value}"
    bundle["entry"] = bundle["entry"][: PATIENT + 1]
    patient = bundle["entry"][PATIENT]
    patient["resource"]["identifier"] = [{"system": NSCH_MRN, "value": value}]
    patient["resource"]["name"] = [{"text": name}]
    patient["request"]["ifNoneExist"] = f"identifier={NSCH_MRN}|{value}"
    resp = _post(client, bundle, pki)
    assert resp.status_code == 200, resp.text
    return str(resp.json()["entry"][PATIENT]["response"]["location"].split("/")[1])


def _referral_naming(referral: dict[str, Any], form: str, patient: str, value: str) -> Any:
    bundle = copy.deepcopy(referral)
    reference = FORMS[form].format(id=patient, mrn=NSCH_MRN, value=value)
    bundle["entry"][CONDITION]["resource"]["subject"] = {"reference": reference}
    return bundle


@pytest.mark.parametrize("form", list(FORMS))
def test_a_conditional_reference_to_another_stored_patient_is_refused(
    client: Client, hk_settings: Settings, referral: dict[str, Any], pki: Path, form: str
) -> None:
    other = _store(client, referral, pki, "0011111", "陈美玲")
    before = counts(hk_settings)
    resp = _post(client, _referral_naming(referral, form, other, "0011111"), pki)
    assert resp.status_code == 422, resp.text
    issue = resp.json()["issue"][0]
    assert issue["details"]["coding"][0]["code"] == "inbound.mixed-patients"
    assert issue["expression"] == [f"Bundle.entry[{CONDITION}].resource.subject"]
    assert counts(hk_settings)["inbound_resources"] == before["inbound_resources"]
    found = client.get(f"/fhir/Condition?patient=Patient/{other}", headers=LOCAL_AUTH).json()
    assert not found.get("entry")  # nothing of 许嘉玮's Bundle is 陈美玲's


@pytest.mark.parametrize("form", ["by-identifier-and-id", "by-identifier-under-own-base"])
def test_a_conditional_reference_to_the_bundles_own_patient_is_stored(
    client: Client, referral: dict[str, Any], pki: Path, form: str
) -> None:
    own = _store(client, referral, pki, "0098765", "许嘉玮")
    resp = _post(client, _referral_naming(referral, form, own, "0098765"), pki)
    assert resp.status_code == 200, resp.text
    found = client.get(f"/fhir/Condition?patient=Patient/{own}", headers=LOCAL_AUTH).json()
    assert len(found["entry"]) == 2  # both of the referral's diagnoses, 许嘉玮's
