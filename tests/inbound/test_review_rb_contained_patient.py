"""A contained Patient is compared as the patient whose identifier it holds (the
Bundle's Patient entry's, or since the stored-Patient look-up the sender's stored
Patient a record cites by id alone). It was taken for that patient by its first such
identifier, whatever else it held: a contained Patient holding the patient's MRN and
another patient's (another value of the same system) went by -- the record stored with
a second patient's number and name. Since the look-up, one beside a subject
``Patient/<id>`` alone went by too (refused before as a second patient). Another value
of a system the patient holds is another patient (as ``_apply.py`` reads one written
beside a reference): 422 ``inbound.mixed-patients`` naming the contained Patient."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from tests.api.test_app import Client

from .conftest import LOCAL_AUTH, MRN, OTHER_MRN
from .test_adversarial_identity import _post
from .test_review10_logical_asserter import CONDITION, _stored_patient
from .test_stored_patient_asserter import _cited_by_id

HKID = ("urn:oid:2.16.840.1.113883.4.330.344", "K583726A")  # another system: no conflict


def _contained(resource: dict[str, Any], *identifiers: tuple[str, str]) -> None:
    """``resource`` asserted by a Patient it contains, holding ``identifiers``."""
    resource["contained"] = [{
        "resourceType": "Patient", "id": "cp", "name": [{"text": "另一人"}],
        "identifier": [{"system": s, "value": v} for s, v in identifiers],
    }]  # fmt: skip
    resource["asserter"] = {"reference": "#cp"}


def _refused(resp: Any, where: str) -> None:
    assert resp.status_code == 422, resp.text
    issue = resp.json()["issue"][0]
    assert issue["details"]["coding"][0]["code"] == "inbound.mixed-patients"
    assert issue["expression"] == [where]


def test_a_contained_patient_with_another_patients_mrn_beside_a_stored_subject_is_refused(
    client: Client, referral: dict[str, Any], pki: Path
) -> None:
    patient = _stored_patient(client, referral, pki)
    bundle = _cited_by_id(referral, patient, MRN)
    _contained(bundle["entry"][0]["resource"], MRN, OTHER_MRN)
    _refused(_post(client, bundle, pki), "Bundle.entry[0].resource.contained[0]")
    found = client.get("/fhir/Condition?identifier=follow-up-2", headers=LOCAL_AUTH).json()
    assert found["entry"] == []
    # the patient's own MRN (and an identifier of another system) is the patient: kept
    bundle = _cited_by_id(referral, patient, MRN)
    _contained(bundle["entry"][0]["resource"], HKID, MRN)
    assert _post(client, bundle, pki).status_code == 200


def test_a_contained_patient_with_another_patients_mrn_beside_the_bundles_patient_is_refused(
    client: Client, referral: dict[str, Any], pki: Path
) -> None:
    bundle = copy.deepcopy(referral)
    _contained(bundle["entry"][CONDITION]["resource"], OTHER_MRN, MRN)
    _refused(_post(client, bundle, pki), f"Bundle.entry[{CONDITION}].resource.contained[0]")
    bundle = copy.deepcopy(referral)
    _contained(bundle["entry"][CONDITION]["resource"], MRN)
    assert _post(client, bundle, pki).status_code == 200
