"""Adversarial review of POST /fhir: conditions and conditional references by an
identifier whose system is spelled otherwise than the stored one's. The identity
checks compared systems however spelled (gateway/fhirsystems.py), but the
look-ups matched them as written: NSCH's second Bundle for 许嘉玮 with
``ifNoneExist: identifier=https://fhir.nsch.example.cn/sid/mrn/|0098765`` (a trailing
slash) found no Patient and created a second one with his MRN, and his records were
split between two Patients; a conditional reference so spelled found none either.
Now conditions (``ifNoneExist``, ``PUT Type?identifier=``), conditional references
(the store's, and the transaction's index of its own entries) and the one-patient
check (mixed_patients) compare systems in that normal form; what is stored keeps the
system as written."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.api.test_app import Client

from .conftest import LOCAL_AUTH
from .test_adversarial_identity import NSCH_MRN, PATIENT, _post
from .test_adversarial_system_spelling import SPELLINGS


def _patients(client: Client) -> list[dict[str, Any]]:
    found = client.get("/fhir/Patient", headers=LOCAL_AUTH).json()
    return [e["resource"] for e in found.get("entry") or []]


def _again(referral: dict[str, Any], n: int) -> dict[str, Any]:
    """The referral as another message of NSCH's (not a resend of the same Bundle)."""
    bundle = copy.deepcopy(referral)
    bundle["identifier"]["value"] = f"NSCH-SPELLING-{n}"
    return bundle


def _respelled(patient: dict[str, Any], system: str) -> None:
    for ident in patient["identifier"]:
        if ident["system"] == NSCH_MRN:
            ident["system"] = system


@pytest.mark.parametrize("spelling", list(SPELLINGS))
@pytest.mark.parametrize("kind", ["transaction", "batch"])
def test_a_condition_spelling_the_system_otherwise_finds_the_stored_patient(
    client: Client, referral: dict[str, Any], pki: Path, kind: str, spelling: str
) -> None:
    assert _post(client, copy.deepcopy(referral), pki).status_code == 200  # 许嘉玮
    bundle = _again(referral, 2)
    bundle["type"] = kind
    entry = bundle["entry"][PATIENT]
    entry["request"]["ifNoneExist"] = f"identifier={SPELLINGS[spelling]}|0098765"
    _respelled(entry["resource"], SPELLINGS[spelling])
    resp = _post(client, bundle, pki)
    assert resp.status_code == 200, resp.text
    assert resp.json()["entry"][PATIENT]["response"]["status"] == "200 OK"  # not created
    [patient] = _patients(client)  # one 许嘉玮, not two Patients with his MRN
    assert {i["system"] for i in patient["identifier"]} >= {NSCH_MRN}  # kept as written


def test_a_conditional_update_spelling_the_system_otherwise_updates_the_stored_patient(
    client: Client, referral: dict[str, Any], pki: Path
) -> None:
    assert _post(client, copy.deepcopy(referral), pki).status_code == 200
    bundle = _again(referral, 2)
    entry = bundle["entry"][PATIENT]
    entry["request"] = {"method": "PUT",
                        "url": f"Patient?identifier={SPELLINGS['capitals']}|0098765"}  # fmt: skip
    _respelled(entry["resource"], SPELLINGS["capitals"])
    resp = _post(client, bundle, pki)
    assert resp.status_code == 200, resp.text
    [patient] = _patients(client)
    assert patient["meta"]["versionId"] == "2"
    assert SPELLINGS["capitals"] in {i["system"] for i in patient["identifier"]}  # as written


def test_a_conditional_reference_spelling_the_system_otherwise_finds_the_stored_patient(
    client: Client, referral: dict[str, Any], pki: Path
) -> None:
    assert _post(client, copy.deepcopy(referral), pki).status_code == 200
    [stored] = _patients(client)
    url = referral["entry"][PATIENT]["fullUrl"]
    condition = f"Patient?identifier={SPELLINGS['trailing-slash']}|0098765"
    text = orjson.dumps(_again(referral, 2)).decode().replace(f'"{url}"', f'"{condition}"')
    bundle: dict[str, Any] = orjson.loads(text)
    del bundle["entry"][PATIENT]
    resp = _post(client, bundle, pki)
    assert resp.status_code == 200, resp.text
    [patient] = _patients(client)
    assert patient["id"] == stored["id"]
    requests = client.get("/fhir/ServiceRequest", headers=LOCAL_AUTH).json()["entry"]
    assert {e["resource"]["subject"]["reference"] for e in requests} == {f"Patient/{stored['id']}"}


def test_a_conditional_reference_to_the_bundles_patient_spelled_otherwise_is_that_entry(
    client: Client, referral: dict[str, Any], pki: Path
) -> None:
    bundle = copy.deepcopy(referral)  # the other records name the entry by its fullUrl
    condition = f"Patient?identifier={SPELLINGS['capitals']}|0098765"
    bundle["entry"][9]["resource"]["subject"]["reference"] = condition  # the ServiceRequest's
    resp = _post(client, bundle, pki)
    assert resp.status_code == 200, resp.text
    [patient] = _patients(client)
    request = client.get("/fhir/ServiceRequest", headers=LOCAL_AUTH).json()["entry"][0]
    assert request["resource"]["subject"]["reference"] == f"Patient/{patient['id']}"


def test_a_patient_alone_with_its_system_spelled_otherwise_is_not_created_twice(
    client: Client, referral: dict[str, Any], pki: Path
) -> None:
    assert _post(client, copy.deepcopy(referral), pki).status_code == 200  # 许嘉玮
    bundle = _again(referral, 2)
    entry = copy.deepcopy(bundle["entry"][PATIENT])
    entry["resource"].pop("managingOrganization", None)
    entry["request"]["ifNoneExist"] = f"identifier={SPELLINGS['trailing-slash']}|0098765"
    _respelled(entry["resource"], SPELLINGS["trailing-slash"])
    bundle["entry"] = [entry]
    resp = _post(client, bundle, pki)
    assert resp.status_code == 200, resp.text
    assert len(_patients(client)) == 1  # it made a second Patient with his MRN
