"""Adversarial review of POST /fhir: what a Bundle is about. A partner's Bundle is one
patient's record, addressed to this institution: a Bundle that slips a second
patient's data in beside the first (whose policy decision and audit events would
name only the first), or a referral addressed to another institution (this gateway
would open a Task for a patient it was not asked to see) is refused, nothing stored.
Both were stored before the fix (gateway/inbound/_content.py)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import orjson
import pytest

from gateway import Settings
from gateway.signing import sign_bundle
from tests.api.test_app import Client

from .conftest import NSCH_TOKEN, counts, partner, signer

OTHER = "urn:uuid:11111111-2222-4333-8444-555555555555"
NSCH_MRN = "https://fhir.nsch.example.cn/sid/mrn"
PATIENT = 2  # entry of the referral's Patient
HKPMC_ORG = 1  # entry of the receiver's Organization
SERVICE_REQUEST = 9


def _post(client: Client, bundle: dict[str, Any], pki: Path) -> Any:
    body = orjson.dumps(sign_bundle(bundle, signer(pki, "nsch"), "author"))
    return client.post("/fhir", content=body, headers=partner(NSCH_TOKEN))


def _issue(resp: Any) -> tuple[str, list[str]]:
    issue = resp.json()["issue"][0]
    return issue["details"]["coding"][0]["code"], issue.get("expression")


def _second_patient(bundle: dict[str, Any]) -> None:
    bundle["entry"].insert(PATIENT + 1, {
        "fullUrl": OTHER,
        "resource": {"resourceType": "Patient", "name": [{"text": "王伟"}],
                     "identifier": [{"system": NSCH_MRN, "value": "0011111"}]},
        "request": {"method": "POST", "url": "Patient",
                    "ifNoneExist": f"identifier={NSCH_MRN}|0011111"},
    })  # fmt: skip
    bundle["entry"][PATIENT + 1 + 7]["resource"]["subject"] = {"reference": OTHER}


def _subject(reference: dict[str, Any]) -> Any:
    def change(bundle: dict[str, Any]) -> None:
        bundle["entry"][SERVICE_REQUEST]["resource"]["subject"] = reference

    return change


@pytest.mark.parametrize(
    ("change", "where"),
    [
        (_second_patient, f"Bundle.entry[{PATIENT + 1}].resource"),
        (_subject({"reference": "Patient/6d5e3a2b-0000-4000-8000-000000000001"}),
         f"Bundle.entry[{SERVICE_REQUEST}].resource.subject"),
        (_subject({"reference": f"Patient?identifier={NSCH_MRN}|0011111"}),
         f"Bundle.entry[{SERVICE_REQUEST}].resource.subject"),
        (_subject({"identifier": {"system": NSCH_MRN, "value": "0011111"}}),
         f"Bundle.entry[{SERVICE_REQUEST}].resource.subject"),
    ],
    ids=["second-patient-entry", "literal-outside", "conditional-other", "logical-other"],
)  # fmt: skip
def test_a_bundle_about_two_patients_is_refused(
    client: Client, hk_settings: Settings, referral: dict[str, Any], pki: Path,
    change: Any, where: str,
) -> None:  # fmt: skip
    bundle = copy.deepcopy(referral)
    change(bundle)
    resp = _post(client, bundle, pki)
    assert resp.status_code == 422, resp.text
    assert _issue(resp) == ("inbound.mixed-patients", [where])
    assert "王伟" not in resp.text and "0011111" not in resp.text
    assert counts(hk_settings)["inbound_resources"] == 0


@pytest.mark.parametrize(
    "subject",
    [
        {"reference": f"Patient?identifier={NSCH_MRN}|0098765"},  # its own identifier
        {"identifier": {"system": NSCH_MRN, "value": "0098765"}},
    ],
    ids=["conditional-same", "logical-same"],
)
def test_the_same_patient_named_another_way_is_one_patient(
    client: Client, referral: dict[str, Any], pki: Path, subject: dict[str, Any]
) -> None:
    bundle = copy.deepcopy(referral)
    _subject(subject)(bundle)
    resp = _post(client, bundle, pki)
    assert resp.status_code == 200, resp.text


def _addressed_to(identifiers: list[dict[str, str]]) -> Any:
    def change(bundle: dict[str, Any]) -> None:
        org = bundle["entry"][HKPMC_ORG]
        org["resource"]["identifier"] = identifiers
        first = identifiers[0]
        org["request"]["ifNoneExist"] = f"identifier={first['system']}|{first['value']}"

    return change


@pytest.mark.parametrize(
    "identifiers",
    [
        [{"system": "urn:ietf:rfc:3986", "value": "urn:oid:2.16.156.10011.99.1.3"},
         {"system": "https://fhir-gateway.example.org/sid/hl7-facility", "value": "NJMU2"}],
        [{"system": "https://example.org/sid/hospital", "value": "UNKNOWN-1"}],
    ],
    ids=["another-institution", "unknown-organisation"],
)  # fmt: skip
def test_a_referral_addressed_elsewhere_is_refused(
    client: Client, hk_settings: Settings, referral: dict[str, Any], pki: Path,
    identifiers: list[dict[str, str]],
) -> None:  # fmt: skip
    bundle = copy.deepcopy(referral)
    _addressed_to(identifiers)(bundle)
    resp = _post(client, bundle, pki)
    assert resp.status_code == 422, resp.text
    where = f"Bundle.entry[{SERVICE_REQUEST}].resource.performer"
    assert _issue(resp) == ("inbound.wrong-recipient", [where])
    assert counts(hk_settings)["inbound_resources"] == 0


def test_a_referral_naming_no_organisation_is_taken_as_ours(
    client: Client, referral: dict[str, Any], pki: Path
) -> None:
    bundle = copy.deepcopy(referral)
    bundle["entry"][SERVICE_REQUEST]["resource"].pop("performer")
    assert _post(client, bundle, pki).status_code == 200


def test_a_patient_contained_in_a_resource_counts_as_a_patient(
    client: Client, hk_settings: Settings, referral: dict[str, Any], pki: Path
) -> None:
    # the second patient hidden in the ServiceRequest's contained, its subject "#p"
    bundle = copy.deepcopy(referral)
    request = bundle["entry"][SERVICE_REQUEST]["resource"]
    request["contained"] = [{"resourceType": "Patient", "id": "p", "name": [{"text": "王伟"}],
                             "identifier": [{"system": NSCH_MRN, "value": "0011111"}]}]  # fmt: skip
    request["subject"] = {"reference": "#p"}
    resp = _post(client, bundle, pki)
    assert resp.status_code == 422, resp.text
    where = f"Bundle.entry[{SERVICE_REQUEST}].resource.contained[0]"
    assert _issue(resp) == ("inbound.mixed-patients", [where])
    assert counts(hk_settings)["inbound_resources"] == 0


def test_a_bundle_inside_the_bundle_is_refused(
    client: Client, hk_settings: Settings, referral: dict[str, Any], pki: Path
) -> None:
    # a whole Bundle as one entry's resource: its entries (another patient, another
    # institution's Provenance, a prohibited category) were stored past every check
    bundle = copy.deepcopy(referral)
    inner = copy.deepcopy(referral)
    _second_patient(inner)
    bundle["entry"].append({"fullUrl": OTHER.replace("5555", "6666"), "resource": inner,
                            "request": {"method": "POST", "url": "Bundle"}})  # fmt: skip
    resp = _post(client, bundle, pki)
    assert resp.status_code == 400, resp.text
    assert _issue(resp) == ("inbound.bad-entry", ["Bundle.entry[10].resource"])
    assert counts(hk_settings)["inbound_resources"] == 0
