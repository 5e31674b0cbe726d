"""Adversarial review of POST /fhir: patient identifiers without a system. A systemless
identifier (``{"value": "0098765"}``: a number of no namespace the gateway knows)
cannot prove who a patient is, and must not let a mismatch through either
(docs/inbound.md, "Identifiers without a system"):

* a Patient entry matched to a stored Patient by a condition naming no system
  (``identifier=0098765``: that value in any system; ``identifier=|0098765``) is that
  Patient only if they share an identifier with a system: else the Bundle's records
  would be joined to whichever patient of the partner holds that value (许嘉玮's MRN
  0098765, for 陈美玲's records) -- refused whole, ``inbound.identity-mismatch``;
* a stored Patient's systemless identifiers are its identifiers too: a Reference's
  ``identifier`` beside a reference to a stored Patient that holds only systemless
  ones is compared with them (it was never compared: any number went through);
* a systemless identifier beside a reference is one of the target's only when the
  target holds it without a system too (a value of a system's is not that identifier).

Nothing stored on a refusal, no patient data in the answer or the log."""

from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Any

import orjson
import pytest

from gateway import Settings
from tests.api.test_app import Client

from .conftest import LOCAL_AUTH, counts
from .test_adversarial_identity import NSCH_MRN, PATIENT, SERVICE_REQUEST, _post, _refused

MRN_0098765 = {"system": NSCH_MRN, "value": "0098765"}
CONDITION = 6  # a Condition of the referral, once its Patient entry is gone


@pytest.fixture
def logs(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.INFO, logger="gateway")
    return caplog


def _systemless(referral: dict[str, Any], identifiers: list[dict[str, Any]], condition: str) -> Any:
    """The referral with its Patient entry carrying ``identifiers``, matched by
    ``condition`` (ifNoneExist), 陈美玲 by name."""
    bundle = copy.deepcopy(referral)
    entry = bundle["entry"][PATIENT]
    entry["resource"]["identifier"] = identifiers
    entry["resource"]["name"] = [{"text": "陈美玲"}]
    entry["request"]["ifNoneExist"] = condition
    return bundle


def _stored_patient(client: Client, query: str) -> str:
    found = client.get(f"/fhir/Patient?{query}", headers=LOCAL_AUTH).json()
    [entry] = found["entry"]
    return str(entry["resource"]["id"])


def _without_patient_entry(referral: dict[str, Any], patient_id: str) -> dict[str, Any]:
    """The referral again with no Patient entry: its references name the stored
    Patient ``patient_id`` literally."""
    text = orjson.dumps(referral).decode()
    url = referral["entry"][PATIENT]["fullUrl"]
    bundle: dict[str, Any] = orjson.loads(text.replace(f'"{url}"', f'"Patient/{patient_id}"'))
    del bundle["entry"][PATIENT]
    # a new diagnosis (a matched conditional create writes nothing, checks no reference)
    condition = bundle["entry"][CONDITION]
    condition["resource"]["identifier"][0]["value"] = "second-visit:I25.1"
    diagnosis = condition["resource"]["identifier"][0]["system"]
    condition["request"]["ifNoneExist"] = f"identifier={diagnosis}|second-visit:I25.1"
    return bundle


@pytest.mark.parametrize("kind", ["transaction", "batch"])
@pytest.mark.parametrize("condition", ["identifier=0098765", "identifier=|0098765"])
def test_a_systemless_patient_matched_by_a_value_alone_is_refused(
    client: Client, hk_settings: Settings, referral: dict[str, Any], pki: Path,
    logs: pytest.LogCaptureFixture, kind: str, condition: str,
) -> None:  # fmt: skip
    # 许嘉玮 stored (MRN 0098765; and 0098765 without a system for the second condition);
    # then 陈美玲's record, her Patient by the number 0098765 without a system (another
    # hospital's?), matched by that value alone
    first = copy.deepcopy(referral)
    first["entry"][PATIENT]["resource"]["identifier"].append({"value": "0098765"})
    assert _post(client, first, pki).status_code == 200
    before = counts(hk_settings)
    bundle = _systemless(referral, [{"value": "0098765"}], condition)
    bundle["type"] = kind
    resp = _post(client, bundle, pki)
    where = f"Bundle.entry[{PATIENT}].request.ifNoneExist"
    _refused(resp, "inbound.identity-mismatch", where, logs)
    after = counts(hk_settings)
    assert after["inbound_resources"] == before["inbound_resources"]


def test_a_systemless_match_confirmed_by_an_identifier_with_a_system_is_stored(
    client: Client, referral: dict[str, Any], pki: Path
) -> None:
    # the same condition, the entry holding the stored Patient's MRN too: that proves it
    assert _post(client, copy.deepcopy(referral), pki).status_code == 200
    patient = _stored_patient(client, f"identifier={NSCH_MRN}|0098765")
    bundle = _systemless(referral, [{"value": "0098765"}, MRN_0098765], "identifier=0098765")
    resp = _post(client, bundle, pki)
    assert resp.status_code == 200, resp.text
    found = client.get(f"/fhir/ServiceRequest?patient=Patient/{patient}", headers=LOCAL_AUTH)
    assert len(found.json()["entry"]) == 1  # the referral is still 许嘉玮's, one of it


def _store_systemless_patient(client: Client, referral: dict[str, Any], pki: Path) -> str:
    """许嘉玮 stored with one identifier, without a system: its id."""
    first = _systemless(referral, [{"value": "0098765"}], "identifier=|0098765")
    first["entry"][PATIENT]["resource"]["name"] = [{"text": "许嘉玮"}]
    assert _post(client, first, pki).status_code == 200
    return _stored_patient(client, "identifier=|0098765")


@pytest.mark.parametrize(
    "identifier",
    [MRN_0098765, {"value": "0011111"}, {"system": NSCH_MRN, "value": "0011111"}],
    ids=["a-system-it-lacks", "another-systemless", "another-mrn"],
)
def test_a_reference_beside_a_stored_systemless_patient_is_compared(
    client: Client, hk_settings: Settings, referral: dict[str, Any], pki: Path,
    logs: pytest.LogCaptureFixture, identifier: dict[str, str],
) -> None:  # fmt: skip
    patient = _store_systemless_patient(client, referral, pki)
    before = counts(hk_settings)
    bundle = _without_patient_entry(referral, patient)
    bundle["entry"][CONDITION]["resource"]["subject"]["identifier"] = identifier
    resp = _post(client, bundle, pki)
    where = f"Bundle.entry[{CONDITION}].resource.subject.identifier"
    _refused(resp, "inbound.identity-mismatch", where, logs)
    assert counts(hk_settings)["inbound_resources"] == before["inbound_resources"]


def test_a_reference_with_a_stored_patients_own_systemless_identifier_is_stored(
    client: Client, referral: dict[str, Any], pki: Path
) -> None:
    patient = _store_systemless_patient(client, referral, pki)
    bundle = _without_patient_entry(referral, patient)
    bundle["entry"][CONDITION]["resource"]["subject"]["identifier"] = {"value": "0098765"}
    resp = _post(client, bundle, pki)
    assert resp.status_code == 200, resp.text


@pytest.mark.parametrize("value", ["0098765", "0011111"])
def test_a_systemless_identifier_beside_a_reference_to_the_entry_is_refused(
    client: Client, hk_settings: Settings, referral: dict[str, Any], pki: Path,
    logs: pytest.LogCaptureFixture, value: str,
) -> None:  # fmt: skip
    # the Patient entry holds MRN 0098765 with its system: a bare 0098765 is not that
    # identifier (it cannot say which system's), another value another patient's
    bundle = copy.deepcopy(referral)
    subject = bundle["entry"][SERVICE_REQUEST]["resource"]["subject"]
    subject["identifier"] = {"value": value}
    resp = _post(client, bundle, pki)
    where = f"Bundle.entry[{SERVICE_REQUEST}].resource.subject.identifier"
    _refused(resp, "inbound.identity-mismatch", where, logs)
    assert counts(hk_settings)["inbound_resources"] == 0
