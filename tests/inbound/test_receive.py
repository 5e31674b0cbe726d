"""POST /fhir: a partner's signed referral stored and read back; refusals store nothing."""

from __future__ import annotations

from typing import Any

import orjson

from tests.api.test_app import Client

from .conftest import LOCAL_AUTH, NSCH_TOKEN, REFERRAL_SYSTEM, partner


def test_signed_referral_is_stored_and_read_back_by_identifier(
    client: Client, signed_referral: bytes
) -> None:
    resp = client.post("/fhir", content=signed_referral, headers=partner(NSCH_TOKEN))
    assert resp.status_code == 200, resp.text
    answer = resp.json()
    assert answer["type"] == "transaction-response"
    assert {e["response"]["status"] for e in answer["entry"]} == {"201 Created"}
    found = client.get(
        f"/fhir/ServiceRequest?identifier={REFERRAL_SYSTEM}|REF20260618001", headers=LOCAL_AUTH
    ).json()
    assert found["type"] == "searchset" and len(found["entry"]) == 1
    sr = found["entry"][0]["resource"]
    patient = client.get(f"/fhir/{sr['subject']['reference']}", headers=LOCAL_AUTH).json()
    assert patient["name"][0]["text"] == "許嘉瑋"
