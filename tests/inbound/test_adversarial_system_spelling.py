"""Adversarial review of POST /fhir: one identifier system, several spellings. NSCH's
MRN system written ``https://fhir.nsch.example.cn/sid/mrn/`` (a trailing slash), or
with the scheme and host in capitals, was another system to the identity checks:
a Patient entry matched to the stored 许嘉玮 (by his MRN) that carried 陈美玲's HKID
``R123456A`` under ``HTTPS://FHIR-GATEWAY.EXAMPLE.ORG/sid/hkid/`` passed as "different
systems, nothing to compare", and her records joined his. Systems are compared however
they are spelled now (scheme and host in any case, no default port, no trailing slash;
gateway/fhirsystems.py): 422 ``inbound.identity-mismatch``, nothing stored. Only
the comparison: what is stored keeps the system as the partner wrote it."""

from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Any

import pytest

from gateway import Settings
from gateway.fhirsystems import system_key
from tests.api.test_app import Client

from .conftest import LOCAL_AUTH, counts
from .test_adversarial_identity import HKID, NSCH_MRN, PATIENT, _post, _refused
from .test_adversarial_referral_subject import _referral_for
from .test_adversarial_systemless import CONDITION, _stored_patient, _without_patient_entry

SPELLINGS = {
    "trailing-slash": "https://fhir.nsch.example.cn/sid/mrn/",
    "capitals": "HTTPS://FHIR.NSCH.EXAMPLE.CN/sid/mrn",
    "default-port": "https://fhir.nsch.example.cn:443/sid/mrn/",
}


@pytest.fixture
def logs(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.INFO, logger="gateway")
    return caplog


@pytest.mark.parametrize(
    ("system", "value", "condition"),
    [
        ("HTTPS://FHIR-GATEWAY.EXAMPLE.ORG/sid/hkid/", "R123456A", f"{NSCH_MRN}|0098765"),
        (SPELLINGS["trailing-slash"], "0011111", f"{HKID}|K583726A"),
    ],
    ids=["another-hkid", "another-mrn"],
)
@pytest.mark.parametrize("kind", ["transaction", "batch"])
def test_a_patient_matching_a_stored_one_under_another_spelling_is_refused(
    client: Client, hk_settings: Settings, referral: dict[str, Any], pki: Path,
    logs: pytest.LogCaptureFixture, kind: str, system: str, value: str, condition: str,
) -> None:  # fmt: skip
    assert _post(client, copy.deepcopy(referral), pki).status_code == 200  # 许嘉玮
    before = counts(hk_settings)
    bundle = copy.deepcopy(referral)
    bundle["type"] = kind
    entry = bundle["entry"][PATIENT]
    entry["request"]["ifNoneExist"] = f"identifier={condition}"
    kept = [
        i for i in entry["resource"]["identifier"] if f"{i['system']}|{i['value']}" == condition
    ]
    entry["resource"]["identifier"] = [*kept, {"system": system, "value": value}]  # 陈美玲's
    entry["resource"]["name"] = [{"text": "陈美玲"}]
    resp = _post(client, bundle, pki)
    _refused(resp, "inbound.identity-mismatch", f"Bundle.entry[{PATIENT}].resource.identifier",
             logs)  # fmt: skip
    assert counts(hk_settings)["inbound_resources"] == before["inbound_resources"]


@pytest.mark.parametrize("spelling", list(SPELLINGS))
def test_the_patients_own_mrn_spelled_otherwise_beside_a_reference_is_stored_as_sent(
    client: Client, referral: dict[str, Any], pki: Path, spelling: str
) -> None:
    assert _post(client, copy.deepcopy(referral), pki).status_code == 200
    patient = _stored_patient(client, f"identifier={NSCH_MRN}|0098765")
    bundle = _without_patient_entry(referral, patient)
    ident = {"system": SPELLINGS[spelling], "value": "0098765"}
    bundle["entry"][CONDITION]["resource"]["subject"]["identifier"] = ident
    resp = _post(client, bundle, pki)
    assert resp.status_code == 200, resp.text  # 许嘉玮's MRN: it was refused as another's
    location = resp.json()["entry"][CONDITION]["response"]["location"].split("/_history")[0]
    stored = client.get(f"/fhir/{location}", headers=LOCAL_AUTH).json()
    assert stored["subject"]["identifier"] == ident  # kept as written


def test_another_mrn_spelled_otherwise_beside_an_unstored_reference_is_refused(
    client: Client, hk_settings: Settings, referral: dict[str, Any], pki: Path,
    logs: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    bundle = _referral_for(referral, "Patient/p-1", {"system": NSCH_MRN, "value": "0098765"}, 1)
    subject = bundle["entry"][6]["resource"]["subject"]
    subject["identifier"] = {"system": SPELLINGS["capitals"], "value": "0011111"}  # 陈美玲's
    resp = _post(client, bundle, pki)
    _refused(resp, "inbound.identity-mismatch", "Bundle.entry[8].resource.subject.identifier",
             logs)  # fmt: skip
    assert counts(hk_settings)["inbound_resources"] == 0


@pytest.mark.parametrize(
    ("one", "other", "same"),
    [
        ("https://fhir.nsch.example.cn/sid/mrn", "https://fhir.nsch.example.cn/sid/mrn/", True),
        ("https://fhir.nsch.example.cn/sid/mrn", "HTTPS://Fhir.Nsch.Example.CN/sid/mrn", True),
        ("http://h.example/sid/mrn", "http://h.example:80/sid/mrn", True),
        ("URN:OID:2.16.156.1", "urn:oid:2.16.156.1", True),
        ("https://fhir.nsch.example.cn/sid/mrn", "https://fhir.nsch.example.cn/sid/MRN", False),
        ("https://fhir.nsch.example.cn/sid/mrn", "http://fhir.nsch.example.cn/sid/mrn", False),
        ("https://fhir.nsch.example.cn/sid/mrn", "https://fhir.nsch.example.cn:8443/sid/mrn",
         False),
        ("urn:oid:2.16.156.1", "urn:oid:2.16.156.10", False),
        ("", "", True),
    ],
)  # fmt: skip
def test_systems_compare_by_scheme_host_and_trailing_slash_only(
    one: str, other: str, same: bool
) -> None:
    assert (system_key(one) == system_key(other)) is same
