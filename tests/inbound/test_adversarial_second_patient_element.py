"""Adversarial review of POST /fhir: a Patient reference in a resource beside the one
naming the patient it is about (``subject``, ``patient``, ``for``, ``beneficiary``):
``Condition.asserter`` or ``recorder`` (the patient who said so), an evidence
``detail``, a contained resource's ``subject``. The identity checks looked at those
four elements only, so 陈美玲's MRN 0011111 written beside ``asserter`` =
``Patient/p-1`` (许嘉玮's id, his MRN 0098765 beside the ``subject``) was kept with the
record; nor was it written beside the record (``inbound_beside``), so a later record, or
a Patient created under that id, was never compared with it; and an ``asserter``
naming another patient altogether went by the one-patient check. Every Patient
reference of a resource, at any depth, is checked as the subject is: its identifier
must be the Patient's (stored, or the Bundle's entry), agree with the others beside
that id, and name the Bundle's one patient; else 422 naming the element, the whole
Bundle refused, nothing stored, no patient data in the answer or the log."""

from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Any

import pytest

from gateway import Settings
from tests.api.test_app import Client

from .conftest import LOCAL_AUTH, counts
from .test_adversarial_identity import PATIENT, _post, _refused
from .test_adversarial_referral_subject import _referral_for
from .test_adversarial_unstored_patient import (
    A_MRN,
    CONDITION,
    OTHER_MRN,
    UNSTORED,
    _patient_bundle,
)

GOLDEN_CONDITION = CONDITION + 1  # with the referral's Patient entry


@pytest.fixture
def logs(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.INFO, logger="gateway")
    return caplog


def _diagnosis(
    referral: dict[str, Any], reference: str, ident: dict[str, str] | None, n: int
) -> dict[str, Any]:
    """Bundle ``n``: the referral's organisations and practitioners and diagnosis ``n``
    (a new one each: a matched conditional create writes and checks nothing) of the
    patient ``reference`` names, ``ident`` beside its subject."""
    bundle = _referral_for(referral, reference, None, n)
    del bundle["entry"][CONDITION + 1 :]
    entry = bundle["entry"][CONDITION]
    system = entry["resource"]["identifier"][0]["system"]
    entry["resource"]["identifier"][0]["value"] = f"visit-{n}:I25.1"
    entry["request"]["ifNoneExist"] = f"identifier={system}|visit-{n}:I25.1"
    if ident is not None:
        entry["resource"]["subject"]["identifier"] = copy.deepcopy(ident)
    return bundle


def _place(resource: dict[str, Any], where: str, ref: dict[str, Any]) -> str:
    """``ref`` written at ``where`` of a Condition; the element's FHIRPath."""
    if where == "asserter" or where == "recorder":
        resource[where] = ref
        return where
    if where == "evidence":
        resource["evidence"] = [{"detail": [ref]}]
        return "evidence[0].detail[0]"
    resource["contained"] = [{
        "resourceType": "Observation", "id": "said", "status": "final",
        "code": {"text": "patient statement"}, "subject": ref,
    }]  # fmt: skip
    resource["evidence"] = [{"detail": [{"reference": "#said"}]}]
    return "contained[0].subject"


PLACES = ["asserter", "recorder", "evidence", "contained"]


@pytest.mark.parametrize("kind", ["transaction", "batch"])
@pytest.mark.parametrize("place", PLACES)
def test_another_mrn_beside_a_second_reference_to_an_unstored_id_is_refused(
    client: Client, hk_settings: Settings, referral: dict[str, Any], pki: Path,
    logs: pytest.LogCaptureFixture, place: str, kind: str,
) -> None:  # fmt: skip
    bundle = _diagnosis(referral, UNSTORED, A_MRN, 1)
    bundle["type"] = kind  # a batch too: refused whole
    resource = bundle["entry"][CONDITION]["resource"]
    path = _place(resource, place, {"reference": UNSTORED, "identifier": OTHER_MRN})
    resp = _post(client, bundle, pki)
    _refused(resp, "inbound.identity-mismatch",
             f"Bundle.entry[{CONDITION}].resource.{path}.identifier", logs)  # fmt: skip
    assert counts(hk_settings)["inbound_resources"] == 0


@pytest.mark.parametrize("place", PLACES)
def test_an_mrn_kept_beside_a_second_reference_is_held_against_later_records(
    client: Client, hk_settings: Settings, referral: dict[str, Any], pki: Path,
    logs: pytest.LogCaptureFixture, place: str,
) -> None:  # fmt: skip
    # 许嘉玮's MRN beside the asserter alone (none beside the subject), then 陈美玲's
    # beside the subject of another record, or as the Patient created under that id
    first = _diagnosis(referral, UNSTORED, None, 1)
    _place(first["entry"][CONDITION]["resource"], place,
           {"reference": UNSTORED, "identifier": A_MRN})  # fmt: skip
    assert _post(client, first, pki).status_code == 200
    before = counts(hk_settings)
    resp = _post(client, _diagnosis(referral, UNSTORED, OTHER_MRN, 2), pki)
    _refused(resp, "inbound.identity-mismatch",
             f"Bundle.entry[{CONDITION}].resource.subject.identifier", logs)  # fmt: skip
    resp = _post(client, _patient_bundle([OTHER_MRN], "陈美玲", 3), pki)
    _refused(resp, "inbound.identity-mismatch", "Bundle.entry[0].resource.identifier", logs)
    assert counts(hk_settings)["inbound_resources"] == before["inbound_resources"]
    agreeing = _diagnosis(referral, UNSTORED, A_MRN, 4)
    assert _post(client, agreeing, pki).status_code == 200


@pytest.mark.parametrize("place", PLACES)
def test_another_mrn_beside_a_second_reference_to_the_bundles_patient_is_refused(
    client: Client, hk_settings: Settings, referral: dict[str, Any], pki: Path,
    logs: pytest.LogCaptureFixture, place: str,
) -> None:  # fmt: skip
    bundle = copy.deepcopy(referral)
    url = bundle["entry"][PATIENT]["fullUrl"]
    resource = bundle["entry"][GOLDEN_CONDITION]["resource"]
    path = _place(resource, place, {"reference": url, "identifier": OTHER_MRN})
    resp = _post(client, bundle, pki)
    _refused(resp, "inbound.identity-mismatch",
             f"Bundle.entry[{GOLDEN_CONDITION}].resource.{path}.identifier", logs)  # fmt: skip
    assert counts(hk_settings)["inbound_resources"] == 0


@pytest.mark.parametrize("place", PLACES)
def test_another_mrn_beside_a_second_reference_to_a_stored_patient_is_refused(
    client: Client, hk_settings: Settings, referral: dict[str, Any], pki: Path,
    logs: pytest.LogCaptureFixture, place: str,
) -> None:  # fmt: skip
    assert _post(client, referral, pki).status_code == 200  # 许嘉玮 stored
    [found] = client.get("/fhir/Patient", headers=LOCAL_AUTH).json()["entry"]
    stored = f"Patient/{found['resource']['id']}"
    before = counts(hk_settings)
    bundle = _diagnosis(referral, stored, A_MRN, 2)
    resource = bundle["entry"][CONDITION]["resource"]
    path = _place(resource, place, {"reference": stored, "identifier": OTHER_MRN})
    resp = _post(client, bundle, pki)
    _refused(resp, "inbound.identity-mismatch",
             f"Bundle.entry[{CONDITION}].resource.{path}.identifier", logs)  # fmt: skip
    assert counts(hk_settings)["inbound_resources"] == before["inbound_resources"]
    agreeing = _diagnosis(referral, stored, A_MRN, 3)
    _place(agreeing["entry"][CONDITION]["resource"], place,
           {"reference": stored, "identifier": A_MRN})  # fmt: skip
    assert _post(client, agreeing, pki).status_code == 200


@pytest.mark.parametrize("place", PLACES)
@pytest.mark.parametrize(
    "ref",
    [{"reference": "Patient/p-2"}, {"type": "Patient", "identifier": OTHER_MRN}],
    ids=["literal", "logical"],
)
def test_a_second_reference_to_another_patient_is_refused(
    client: Client, hk_settings: Settings, referral: dict[str, Any], pki: Path,
    logs: pytest.LogCaptureFixture, place: str, ref: dict[str, Any],
) -> None:  # fmt: skip
    # 许嘉玮's diagnosis, asserted by another patient: the record names two patients
    bundle = copy.deepcopy(referral)
    resource = bundle["entry"][GOLDEN_CONDITION]["resource"]
    path = _place(resource, place, copy.deepcopy(ref))
    resp = _post(client, bundle, pki)
    _refused(resp, "inbound.mixed-patients",
             f"Bundle.entry[{GOLDEN_CONDITION}].resource.{path}", logs)  # fmt: skip
    assert counts(hk_settings)["inbound_resources"] == 0


@pytest.mark.parametrize("place", PLACES)
def test_a_second_reference_to_the_same_patient_is_stored(
    client: Client, referral: dict[str, Any], pki: Path, place: str
) -> None:
    bundle = copy.deepcopy(referral)
    url = bundle["entry"][PATIENT]["fullUrl"]
    resource = bundle["entry"][GOLDEN_CONDITION]["resource"]
    _place(resource, place, {"reference": url, "identifier": A_MRN})
    resp = _post(client, bundle, pki)
    assert resp.status_code == 200, resp.text


@pytest.mark.parametrize("place", ["subject", "asserter"])
def test_another_mrn_beside_a_reference_to_a_contained_patient_is_refused(
    client: Client, hk_settings: Settings, referral: dict[str, Any], pki: Path,
    logs: pytest.LogCaptureFixture, place: str,
) -> None:  # fmt: skip
    # the diagnosis holds 许嘉玮 (the Bundle's patient) as a contained Patient, and
    # names it "#pat" with 陈美玲's MRN beside: the reference named no entry, so the
    # identifier was compared with nothing and kept with his record
    bundle = copy.deepcopy(referral)
    resource = bundle["entry"][GOLDEN_CONDITION]["resource"]
    resource["contained"] = [{"resourceType": "Patient", "id": "pat", "identifier": [A_MRN]}]
    resource[place] = {"reference": "#pat", "identifier": OTHER_MRN}
    resp = _post(client, bundle, pki)
    _refused(resp, "inbound.identity-mismatch",
             f"Bundle.entry[{GOLDEN_CONDITION}].resource.{place}.identifier", logs)  # fmt: skip
    assert counts(hk_settings)["inbound_resources"] == 0
    resource[place]["identifier"] = A_MRN
    assert _post(client, bundle, pki).status_code == 200


def test_a_reference_to_another_patients_stored_record_is_refused(
    client: Client, hk_settings: Settings, referral: dict[str, Any], pki: Path,
    logs: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    # 许嘉玮's referral stored; then 陈美玲's diagnosis (under Patient/p-1) naming his
    # stored diagnosis as its evidence: whoever follows the link reads his data in hers
    assert _post(client, referral, pki).status_code == 200
    [found, *_] = client.get("/fhir/Condition", headers=LOCAL_AUTH).json()["entry"]
    his = f"Condition/{found['resource']['id']}"
    before = counts(hk_settings)
    bundle = _diagnosis(referral, UNSTORED, OTHER_MRN, 2)
    bundle["entry"][CONDITION]["resource"]["evidence"] = [{"detail": [{"reference": his}]}]
    resp = _post(client, bundle, pki)
    _refused(resp, "inbound.identity-mismatch",
             f"Bundle.entry[{CONDITION}].resource.evidence[0].detail[0]", logs)  # fmt: skip
    assert counts(hk_settings)["inbound_resources"] == before["inbound_resources"]
    # his own next diagnosis may name it
    [patient] = client.get("/fhir/Patient", headers=LOCAL_AUTH).json()["entry"]
    own = _diagnosis(referral, f"Patient/{patient['resource']['id']}", A_MRN, 3)
    own["entry"][CONDITION]["resource"]["evidence"] = [{"detail": [{"reference": his}]}]
    assert _post(client, own, pki).status_code == 200


def test_a_condition_matching_another_patients_stored_record_is_refused(
    client: Client, hk_settings: Settings, referral: dict[str, Any], pki: Path,
    logs: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    # 许嘉玮's diagnosis stored (identifier visit-1); 陈美玲's (Patient/p-1) sent with
    # the same identifier: the condition matched his, nothing was written, and a
    # reference to the entry became a reference to his record
    his = _diagnosis(referral, "Patient/p-9", A_MRN, 1)
    assert _post(client, his, pki).status_code == 200
    before = counts(hk_settings)
    bundle = _diagnosis(referral, UNSTORED, OTHER_MRN, 1)
    bundle["identifier"]["value"] += "-again"
    resp = _post(client, bundle, pki)
    _refused(resp, "inbound.identity-mismatch",
             f"Bundle.entry[{CONDITION}].request.ifNoneExist", logs)  # fmt: skip
    assert counts(hk_settings)["inbound_resources"] == before["inbound_resources"]
    again = _diagnosis(referral, "Patient/p-9", A_MRN, 1)  # his, resent: nothing new
    again["identifier"]["value"] += "-resent"
    assert _post(client, again, pki).status_code == 200
