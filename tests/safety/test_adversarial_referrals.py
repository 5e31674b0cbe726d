"""An inbound referral is matched to the local Task made for it: the match must be the
same referral (its identifier's system and value) of the same patient. Attack: another
referral that shares only the identifier's value (another system), or the same
identifier naming another patient, revoked: it must not cancel the first patient's Task,
nor be taken for it."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import orjson

from gateway.signing import sign_bundle
from tests.api.test_app import Client
from tests.inbound.conftest import LOCAL_AUTH, NSCH_TOKEN, partner, signer


def _send(client: Client, bundle: dict[str, Any], pki: Path) -> int:
    body = orjson.dumps(sign_bundle(bundle, signer(pki, "nsch"), "author"))
    return client.post("/fhir", content=body, headers=partner(NSCH_TOKEN)).status_code


def _tasks(client: Client) -> list[dict[str, Any]]:
    return [e["resource"] for e in client.get("/fhir/Task", headers=LOCAL_AUTH).json()["entry"]]


def _revoked(referral: dict[str, Any], control: str) -> dict[str, Any]:
    other = copy.deepcopy(referral)
    other["identifier"]["value"] = control
    for entry in other["entry"]:
        if entry["resource"]["resourceType"] == "ServiceRequest":
            entry["resource"]["status"] = "revoked"
    return other


def _resources(bundle: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    return [e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == kind]


def test_a_revoked_referral_of_another_system_leaves_the_task_alone(
    client: Client, referral: dict[str, Any], pki: Path
) -> None:
    assert _send(client, referral, pki) == 200
    other = _revoked(referral, "NSCH20260619080000003")
    for sr in _resources(other, "ServiceRequest"):
        for ident in sr["identifier"]:
            ident["system"] += "/other"
    assert _send(client, other, pki) == 409  # inbound.referral-mismatch
    assert [t["status"] for t in _tasks(client)] == ["requested"]


def test_the_same_referral_identifier_for_another_patient_is_refused(
    client: Client, referral: dict[str, Any], pki: Path
) -> None:
    assert _send(client, referral, pki) == 200
    other = _revoked(referral, "NSCH20260619080000004")
    # 李四's Patient entry: the same shape, other identifiers (and its own condition)
    text = orjson.dumps(other).decode().replace("0098765", "0099999").replace("K583726", "K999999")
    # its own conditions: their identifiers hold the Patient entry's uuid (the same
    # ones matched 许嘉玮's stored diagnoses, refused before the referral check: 422)
    uuid = referral["entry"][2]["fullUrl"].removeprefix("urn:uuid:")
    other = orjson.loads(text.replace(uuid, "0b0f4f4e-9a4e-4c59-9a61-6f0f1f3c2a99"))
    code = _send(client, other, pki)
    assert code == 409  # inbound.referral-mismatch
    assert [t["status"] for t in _tasks(client)] == ["requested"]


def test_the_same_referral_cancelled_still_cancels_its_task(
    client: Client, referral: dict[str, Any], pki: Path
) -> None:
    assert _send(client, referral, pki) == 200
    assert _send(client, _revoked(referral, "NSCH20260619080000005"), pki) == 200
    assert [t["status"] for t in _tasks(client)] == ["cancelled"]
