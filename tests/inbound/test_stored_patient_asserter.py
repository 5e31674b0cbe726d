"""A record about a stored ``Patient/<id>`` cited by id alone (no identifier beside
it), asserted by a logical ``asserter`` typed ``Patient`` carrying that patient's MRN
(R4 Condition.asserter may be the patient), was refused as a second patient (422
inbound.mixed-patients): the one-patient check keys a literal reference by its id and
a logical one by its identifier, and read nothing stored to tell they are one. It reads
the stored Patient now (the sender's own); another patient's MRN is still refused."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from tests.api.test_app import Client

from .conftest import LOCAL_AUTH, MRN, OTHER_MRN, PUBLIC_URL
from .test_adversarial_identity import _post
from .test_adversarial_references import NSCH_FHIR
from .test_review10_logical_asserter import CONDITION, _stored_patient


def _cited_by_id(
    referral: dict[str, Any], patient: str, asserter: tuple[str, str]
) -> dict[str, Any]:
    """NSCH's next Bundle: a diagnosis of the stored ``patient`` (its id alone), asserted
    by the Patient of identifier ``asserter``."""
    bundle = copy.deepcopy(referral)
    bundle["identifier"]["value"] = "NSCH-FOLLOW-UP-2"
    entry = copy.deepcopy(bundle["entry"][CONDITION])
    entry["fullUrl"] = "urn:uuid:0f0f0f0f-0000-4000-8000-000000000002"
    entry["request"] = {"method": "POST", "url": "Condition"}
    entry["resource"]["identifier"][0]["value"] = "follow-up-2"
    entry["resource"]["subject"] = {"reference": patient}
    entry["resource"]["asserter"] = {
        "type": "Patient", "identifier": {"system": asserter[0], "value": asserter[1]},
    }  # fmt: skip
    bundle["entry"] = [entry]
    return bundle


def test_the_stored_patients_own_asserter_beside_a_subject_by_id_is_kept(
    client: Client, referral: dict[str, Any], pki: Path
) -> None:
    patient = _stored_patient(client, referral, pki)
    resp = _post(client, _cited_by_id(referral, patient, MRN), pki)
    assert resp.status_code == 200, resp.text
    found = client.get("/fhir/Condition?identifier=follow-up-2", headers=LOCAL_AUTH).json()
    [kept] = [e["resource"] for e in found["entry"]]
    assert kept["subject"] == {"reference": patient}
    assert kept["asserter"]["identifier"]["value"] == MRN[1]


def test_another_patients_asserter_beside_a_subject_by_id_is_still_refused(
    client: Client, referral: dict[str, Any], pki: Path
) -> None:
    patient = _stored_patient(client, referral, pki)
    resp = _post(client, _cited_by_id(referral, patient, OTHER_MRN), pki)
    assert resp.status_code == 422, resp.text
    issue = resp.json()["issue"][0]
    assert issue["details"]["coding"][0]["code"] == "inbound.mixed-patients"
    assert issue["expression"] == ["Bundle.entry[0].resource.asserter"]
    found = client.get("/fhir/Condition?identifier=follow-up-2", headers=LOCAL_AUTH).json()
    assert found["entry"] == []


def test_an_unstored_id_beside_the_asserter_is_still_refused(
    client: Client, referral: dict[str, Any], pki: Path
) -> None:
    """No Patient stored under the id: nothing says the MRN is its."""
    _stored_patient(client, referral, pki)
    resp = _post(client, _cited_by_id(referral, "Patient/no-such-patient", MRN), pki)
    assert resp.status_code == 422, resp.text
    assert resp.json()["issue"][0]["details"]["coding"][0]["code"] == "inbound.mixed-patients"


@pytest.mark.parametrize("base", [f"{PUBLIC_URL}/fhir", "http://GW:80/fhir/"])
def test_the_stored_patient_cited_under_this_gateways_base_is_looked_up_too(
    client: Client, referral: dict[str, Any], pki: Path, base: str
) -> None:
    """An absolute reference under this gateway's FHIR base (however spelled) is a
    stored Patient, as the Bundle is applied (made relative): it was not looked up, so
    a partner writing absolute references was refused as sending two patients. One
    under the partner's own base names its server's Patient, never one stored here."""
    patient = _stored_patient(client, referral, pki)
    absolute = f"{base.rstrip('/')}/{patient}"
    resp = _post(client, _cited_by_id(referral, absolute, MRN), pki)
    assert resp.status_code == 200, resp.text
    found = client.get("/fhir/Condition?identifier=follow-up-2", headers=LOCAL_AUTH).json()
    [kept] = [e["resource"] for e in found["entry"]]
    assert kept["subject"] == {"reference": patient}  # made relative, as our own
    assert kept["asserter"]["identifier"]["value"] == MRN[1]
    # the same id under the partner's base: not this gateway's Patient, not looked up
    theirs = _cited_by_id(referral, f"{NSCH_FHIR}/{patient}", MRN)
    theirs["identifier"]["value"] = "NSCH-FOLLOW-UP-3"
    theirs["entry"][0]["resource"]["identifier"][0]["value"] = "follow-up-3"
    resp = _post(client, theirs, pki)
    assert resp.status_code == 422, resp.text
    issue = resp.json()["issue"][0]
    assert issue["details"]["coding"][0]["code"] == "inbound.mixed-patients"
    assert issue["expression"] == ["Bundle.entry[0].resource.asserter"]
