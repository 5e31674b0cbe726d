"""Adversarial review of POST /fhir: a stored Patient that holds no identifier. A
Reference's ``identifier`` beside a literal reference must be the target Patient's own
(docs/inbound.md): one to a stored Patient with no identifier at all was never compared
(nothing to compare it with), so another patient's number went through beside it, and
the record carried two patients -- the reference 陈美玲's (stored by a Bundle without
her numbers), the identifier 许嘉玮's (MRN 0098765, stored by another Bundle). A Patient
that holds no identifier cannot confirm one: refused whole, ``inbound.identity-mismatch``
(as a Patient entry of the same Bundle holding none is, ``_content.py``). Likewise a
conditional reference ``Patient?identifier=0098765`` (a value alone) that finds a stored
Patient."""

from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Any

import pytest

from gateway import Settings
from tests.api.test_app import Client

from .conftest import LOCAL_AUTH, counts
from .test_adversarial_identity import NSCH_MRN, _post, _refused

CONDITION = 7  # the referral's first Condition (of its Patient entry)
UNIDENTIFIED = "urn:uuid:0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d"


@pytest.fixture
def logs(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.INFO, logger="gateway")
    return caplog


def _bundle(value: str, entries: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "resourceType": "Bundle",
        "type": "transaction",
        "identifier": {"system": "https://fhir.nsch.example.cn/sid/hl7v2-message",
                       "value": value},
        "entry": entries,
    }  # fmt: skip


def _store_unidentified(client: Client, pki: Path) -> str:
    """陈美玲 stored with no identifier (a Bundle of her Patient alone): her id."""
    patient = {"resourceType": "Patient", "name": [{"text": "陈美玲"}], "gender": "female"}
    entry = {"fullUrl": UNIDENTIFIED, "resource": patient,
             "request": {"method": "POST", "url": "Patient"}}  # fmt: skip
    resp = _post(client, _bundle("NSCH-UNIDENTIFIED-1", [entry]), pki)
    assert resp.status_code == 200, resp.text
    return str(resp.json()["entry"][0]["response"]["location"].split("/")[1])


def _condition_for(referral: dict[str, Any], patient_id: str, ident: dict[str, str]) -> Any:
    """A Condition of Patient/``patient_id``, ``ident`` beside the reference."""
    entry = copy.deepcopy(referral["entry"][CONDITION])
    entry["resource"]["identifier"][0]["value"] = "unidentified:I25.1"
    system = entry["resource"]["identifier"][0]["system"]
    entry["request"]["ifNoneExist"] = f"identifier={system}|unidentified:I25.1"
    entry["resource"]["subject"] = {"reference": f"Patient/{patient_id}", "identifier": ident}
    return _bundle("NSCH-UNIDENTIFIED-2", [entry])


@pytest.mark.parametrize(
    "ident",
    [{"system": NSCH_MRN, "value": "0098765"}, {"system": NSCH_MRN, "value": "0011111"}],
    ids=["another-stored-patients-mrn", "a-number-nobody-holds"],
)
def test_an_identifier_beside_a_patient_holding_none_is_refused(
    client: Client, hk_settings: Settings, referral: dict[str, Any], pki: Path,
    logs: pytest.LogCaptureFixture, ident: dict[str, str],
) -> None:  # fmt: skip
    assert _post(client, copy.deepcopy(referral), pki).status_code == 200  # 许嘉玮
    patient = _store_unidentified(client, pki)
    before = counts(hk_settings)
    resp = _post(client, _condition_for(referral, patient, ident), pki)
    _refused(resp, "inbound.identity-mismatch", "Bundle.entry[0].resource.subject.identifier", logs)
    assert counts(hk_settings)["inbound_resources"] == before["inbound_resources"]
    found = client.get(f"/fhir/Condition?patient=Patient/{patient}", headers=LOCAL_AUTH)
    assert "entry" not in found.json() or not found.json()["entry"]


def test_a_reference_to_a_patient_holding_none_without_an_identifier_is_stored(
    client: Client, referral: dict[str, Any], pki: Path
) -> None:
    patient = _store_unidentified(client, pki)
    bundle = _condition_for(referral, patient, {"system": NSCH_MRN, "value": "0011111"})
    del bundle["entry"][0]["resource"]["subject"]["identifier"]
    resp = _post(client, bundle, pki)
    assert resp.status_code == 200, resp.text


@pytest.mark.parametrize("kind", ["transaction", "batch"])
@pytest.mark.parametrize("query", ["identifier=0098765", "identifier=%7C0098765"])
def test_a_conditional_reference_by_a_value_alone_is_refused(
    client: Client, hk_settings: Settings, referral: dict[str, Any], pki: Path,
    logs: pytest.LogCaptureFixture, kind: str, query: str,
) -> None:  # fmt: skip
    """``Patient?identifier=0098765`` (that value in any system) found 许嘉玮 (MRN
    0098765) and the Condition was stored as hers: a value alone proves no patient, as a
    Patient entry's condition by one does not (test_adversarial_systemless.py)."""
    first = copy.deepcopy(referral)  # 许嘉玮, also holding 0098765 without a system
    first["entry"][2]["resource"]["identifier"].append({"value": "0098765"})
    assert _post(client, first, pki).status_code == 200
    before = counts(hk_settings)
    bundle = _condition_for(referral, "-", {"value": "0098765"})
    bundle["type"] = kind
    bundle["entry"][0]["resource"]["subject"] = {"reference": f"Patient?{query}"}
    resp = _post(client, bundle, pki)
    _refused(resp, "inbound.identity-mismatch", "Bundle.entry[0].resource.subject", logs)
    assert counts(hk_settings)["inbound_resources"] == before["inbound_resources"]
