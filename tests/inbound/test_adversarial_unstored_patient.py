"""Adversarial review of POST /fhir: a literal ``Patient/<id>`` that nothing here has
stored (docs/inbound.md, "one patient"). Nothing could confirm an identifier written
beside it, so any went by: NSCH's records for ``Patient/p-1`` with 许嘉玮's MRN
0098765 beside it, then with 陈美玲's 0011111 beside the same reference (in the same
Bundle, or a later one) were all kept under one id; and when NSCH then created
``Patient/p-1`` as 陈美玲, the earlier records of 许嘉玮 became hers. Likewise a
reference naming the Bundle's Patient entry by that entry's ``id`` while the entry was
created under a new one (``POST``) kept the record under an id no Patient held. Now
the identifiers beside one unstored id must agree (another value of the same system is
another patient), a Patient created under an id must hold every identifier written
beside the references kept under it, and a reference by an entry's id must be where
that entry is stored: else 422 ``inbound.identity-mismatch`` naming the element, the
whole Bundle refused, nothing stored, no patient data in the answer or the log."""

from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Any

import pytest

from gateway import Settings
from tests.api.test_app import Client

from .conftest import LOCAL_AUTH, counts, kept_by_njmu2
from .test_adversarial_identity import HKID, NSCH_MRN, PATIENT, _post, _refused
from .test_adversarial_referral_subject import _referral_for

A_MRN = {"system": NSCH_MRN, "value": "0098765"}  # 许嘉玮's
OTHER_MRN = {"system": NSCH_MRN, "value": "0011111"}  # 陈美玲's
CONDITION, SERVICE_REQUEST = 6, 8  # once the Patient entry is gone
UNSTORED = "Patient/p-1"


@pytest.fixture
def logs(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.INFO, logger="gateway")
    return caplog


def _new_condition(bundle: dict[str, Any], ident: dict[str, str] | None) -> None:
    """Entry CONDITION as a new diagnosis (a matched conditional create writes nothing
    and checks no reference), ``ident`` beside its subject."""
    entry = bundle["entry"][CONDITION]
    system = entry["resource"]["identifier"][0]["system"]
    entry["resource"]["identifier"][0]["value"] = "second-visit:I25.1"
    entry["request"]["ifNoneExist"] = f"identifier={system}|second-visit:I25.1"
    if ident is not None:
        entry["resource"]["subject"]["identifier"] = ident


def _patient_bundle(identifiers: list[dict[str, str]], name: str, n: int) -> dict[str, Any]:
    """NSCH creating ``Patient/p-1`` (PUT by id) with ``identifiers``."""
    return {
        "resourceType": "Bundle",
        "type": "transaction",
        "identifier": {"system": "https://fhir.nsch.example.cn/sid/hl7v2-message",
                       "value": f"NSCH-PATIENT-{n}"},
        "entry": [{
            "fullUrl": "urn:uuid:0b0f4f4e-9a4e-4c59-9a61-6f0f1f3c2a01",
            "resource": {"resourceType": "Patient", "identifier": identifiers,
                         "name": [{"text": name}]},
            "request": {"method": "PUT", "url": UNSTORED},
        }],
    }  # fmt: skip


@pytest.mark.parametrize("kind", ["transaction", "batch"])
def test_two_mrns_beside_one_unstored_reference_in_a_bundle_are_refused(
    client: Client, hk_settings: Settings, referral: dict[str, Any], pki: Path,
    logs: pytest.LogCaptureFixture, kind: str,
) -> None:  # fmt: skip
    bundle = _referral_for(referral, UNSTORED, OTHER_MRN, 1)  # the referral: 陈美玲's
    bundle["type"] = kind
    bundle["entry"][CONDITION]["resource"]["subject"]["identifier"] = A_MRN  # 许嘉玮's
    resp = _post(client, bundle, pki)
    where = f"Bundle.entry[{SERVICE_REQUEST}].resource.subject.identifier"
    _refused(resp, "inbound.identity-mismatch", where, logs)
    assert counts(hk_settings)["inbound_resources"] == 0


def test_another_mrn_beside_an_unstored_reference_kept_before_is_refused(
    client: Client, hk_settings: Settings, referral: dict[str, Any], pki: Path,
    logs: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    assert _post(client, _referral_for(referral, UNSTORED, A_MRN, 1), pki).status_code == 200
    before = counts(hk_settings)
    bundle = _referral_for(referral, UNSTORED, None, 2)
    _new_condition(bundle, OTHER_MRN)  # 陈美玲's diagnosis, under 许嘉玮's id
    resp = _post(client, bundle, pki)
    where = f"Bundle.entry[{CONDITION}].resource.subject.identifier"
    _refused(resp, "inbound.identity-mismatch", where, logs)
    assert counts(hk_settings)["inbound_resources"] == before["inbound_resources"]


@pytest.mark.parametrize(
    "ident",
    [A_MRN, {"system": HKID, "value": "K583726A"}, None],
    ids=["the-same-mrn", "another-system", "none"],
)
def test_agreeing_identifiers_beside_an_unstored_reference_are_stored(
    client: Client, referral: dict[str, Any], pki: Path, ident: dict[str, str] | None
) -> None:
    assert _post(client, _referral_for(referral, UNSTORED, A_MRN, 1), pki).status_code == 200
    bundle = _referral_for(referral, UNSTORED, A_MRN, 2)
    _new_condition(bundle, copy.deepcopy(ident))
    resp = _post(client, bundle, pki)
    assert resp.status_code == 200, resp.text


def test_a_patient_created_under_an_id_whose_records_name_another_mrn_is_refused(
    client: Client, hk_settings: Settings, referral: dict[str, Any], pki: Path,
    logs: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    assert _post(client, _referral_for(referral, UNSTORED, A_MRN, 1), pki).status_code == 200
    before = counts(hk_settings)
    resp = _post(client, _patient_bundle([OTHER_MRN], "陈美玲", 2), pki)
    _refused(resp, "inbound.identity-mismatch", "Bundle.entry[0].resource.identifier", logs)
    assert counts(hk_settings)["inbound_resources"] == before["inbound_resources"]
    gone = client.get("/fhir/Patient/p-1", headers=LOCAL_AUTH)
    assert gone.status_code == 404  # the referral is not 陈美玲's


def test_a_patient_created_under_an_id_holding_its_records_identifiers_is_stored(
    client: Client, referral: dict[str, Any], pki: Path
) -> None:
    assert _post(client, _referral_for(referral, UNSTORED, A_MRN, 1), pki).status_code == 200
    hkid = {"system": HKID, "value": "K583726A"}
    resp = _post(client, _patient_bundle([A_MRN, hkid], "许嘉玮", 2), pki)
    assert resp.status_code == 200, resp.text
    assert client.get("/fhir/Patient/p-1", headers=LOCAL_AUTH).json()["identifier"] == [
        A_MRN, hkid,
    ]  # fmt: skip


@pytest.mark.parametrize("kind", ["transaction", "batch"])
def test_a_reference_by_a_created_entrys_id_is_refused(
    client: Client, hk_settings: Settings, referral: dict[str, Any], pki: Path,
    logs: pytest.LogCaptureFixture, kind: str,
) -> None:  # fmt: skip
    # the Patient entry (许嘉玮) is POSTed: stored under a new id, not its own "id"; a
    # Condition naming "Patient/<that id>" was kept under an id no Patient held
    bundle = copy.deepcopy(referral)
    bundle["type"] = kind
    entry_id = bundle["entry"][PATIENT]["resource"]["id"]
    bundle["entry"][7]["resource"]["subject"] = {"reference": f"Patient/{entry_id}"}
    resp = _post(client, bundle, pki)
    _refused(resp, "inbound.identity-mismatch", "Bundle.entry[7].resource.subject", logs)
    assert counts(hk_settings)["inbound_resources"] == 0


def test_a_reference_by_the_id_an_entry_is_put_under_is_stored(
    client: Client, referral: dict[str, Any], pki: Path
) -> None:
    bundle = copy.deepcopy(referral)
    entry = bundle["entry"][PATIENT]
    entry["request"] = {"method": "PUT", "url": f"Patient/{entry['resource']['id']}"}
    bundle["entry"][7]["resource"]["subject"] = {"reference": f"Patient/{entry['resource']['id']}"}
    resp = _post(client, bundle, pki)
    assert resp.status_code == 200, resp.text


def test_a_patient_created_under_an_id_another_institutions_records_name_is_refused(
    client: Client, hk_settings: Settings, pki: Path, logs: pytest.LogCaptureFixture
) -> None:
    # NJMU2's record about its own "Patient/p-1", then NSCH creating its Patient/p-1
    kept_by_njmu2(hk_settings)
    before = counts(hk_settings)
    resp = _post(client, _patient_bundle([A_MRN], "许嘉玮", 1), pki)
    _refused(resp, "inbound.identity-mismatch", "Bundle.entry[0].request.url", logs)
    assert counts(hk_settings)["inbound_resources"] == before["inbound_resources"]
