"""POST /fhir: a partner's signed referral stored and read back; every refusal (401,
403, unsigned, tampered, policy) stores nothing of the Bundle; the same Bundle twice is
one copy and one answer."""

from __future__ import annotations

import copy
from datetime import datetime
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any

import orjson
import pytest

from gateway import Settings
from gateway.signing import sign_bundle
from tests.api.test_app import Client

from .conftest import (
    LOCAL,
    LOCAL_AUTH,
    NJMU2_TOKEN,
    NOTHING,
    NSCH_TOKEN,
    REFERRAL_SYSTEM,
    counts,
    partner,
    signer,
)


def _stored(settings: Settings) -> dict[str, int]:
    found = counts(settings)
    return {k: v for k, v in found.items() if k != "inbound_tokens"}


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
    assert sr["meta"]["versionId"] == "1" and sr["status"] == "active"
    patient = client.get(f"/fhir/{sr['subject']['reference']}", headers=LOCAL_AUTH).json()
    assert patient["name"][0]["text"] == "許嘉瑋"
    # every reference of the stored resources is literal and resolves
    assert sr["requester"]["reference"].startswith("PractitionerRole/")
    role = client.get(f"/fhir/{sr['requester']['reference']}", headers=LOCAL_AUTH)
    assert role.status_code == 200
    # the version's ETag and Last-Modified (an HTTP-date, not the FHIR instant)
    assert role.headers["etag"] == 'W/"1"'
    stored = datetime.fromisoformat(role.json()["meta"]["lastUpdated"].replace("Z", "+00:00"))
    assert parsedate_to_datetime(role.headers["last-modified"]) == stored.replace(microsecond=0)
    by_patient = client.get(
        f"/fhir/Condition?patient={sr['subject']['reference']}", headers=LOCAL_AUTH
    ).json()
    assert len(by_patient["entry"]) == 2
    mrn = "https://fhir.nsch.example.cn/sid/mrn|0098765"
    assert (
        len(client.get(f"/fhir/Condition?patient={mrn}", headers=LOCAL_AUTH).json()["entry"]) == 2
    )


@pytest.mark.parametrize(
    "header",
    [None, "Bearer wrong-token-0123456789", f"Bearer {LOCAL}", "Basic bnNjaDpzZWNyZXQ="],
    ids=["none", "wrong", "local-api-token", "basic"],
)
def test_unauthenticated_is_401_and_stores_nothing(
    client: Client, hk_settings: Settings, signed_referral: bytes, header: str | None
) -> None:
    headers = {"Authorization": header} if header else {}
    resp = client.post("/fhir", content=signed_referral, headers=headers)
    assert resp.status_code == 401
    assert resp.headers["www-authenticate"].startswith("Bearer")
    outcome = resp.json()
    assert outcome["resourceType"] == "OperationOutcome"
    assert outcome["issue"][0]["details"]["coding"][0]["code"] == "inbound.unauthorized"
    assert _stored(hk_settings) == NOTHING


def test_local_systems_cannot_read_without_their_token(client: Client) -> None:
    assert client.get("/fhir/Patient").status_code == 401
    assert client.get("/fhir/Patient", headers=LOCAL_AUTH).status_code == 200


def test_a_bundle_in_another_institutions_name_is_403_and_stores_nothing(
    client: Client, hk_settings: Settings, signed_referral: bytes
) -> None:
    # NJMU2 authenticates, but the Bundle (its identifier, NSCH's signature) is NSCH's
    resp = client.post("/fhir", content=signed_referral, headers=partner(NJMU2_TOKEN))
    assert resp.status_code == 403
    issue = resp.json()["issue"][0]
    assert issue["details"]["coding"][0]["code"] == "inbound.wrong-sender"
    assert issue["expression"] == ["Bundle.identifier.system"]
    assert _stored(hk_settings) == NOTHING


def test_a_signature_of_another_institution_is_403(
    client: Client, hk_settings: Settings, referral: dict[str, Any], pki: Path
) -> None:
    # the Bundle's identifier says NJMU2 (the sender), but NSCH signed it as author
    bundle = copy.deepcopy(referral)
    bundle["identifier"]["system"] = "https://fhir.njmu2.example.cn/sid/hl7v2-message"
    body = orjson.dumps(sign_bundle(bundle, signer(pki, "nsch"), "author"))
    resp = client.post("/fhir", content=body, headers=partner(NJMU2_TOKEN))
    assert resp.status_code == 403
    assert resp.json()["issue"][0]["expression"][0].startswith("Bundle.entry[")
    assert _stored(hk_settings) == NOTHING


def test_a_custodian_provenance_of_another_institution_is_403(
    client: Client, hk_settings: Settings, referral: dict[str, Any], pki: Path
) -> None:
    bundle = copy.deepcopy(referral)
    bundle["identifier"]["system"] = "https://fhir.njmu2.example.cn/sid/hl7v2-message"
    bundle["entry"].append(
        {
            "fullUrl": "urn:uuid:7d3c1b4e-2f55-4a8e-9d41-0c3c8f1a2b11",
            "resource": {
                "resourceType": "Provenance",
                "target": [{"reference": bundle["entry"][0]["fullUrl"]}],
                "recorded": "2026-06-18T06:30:00Z",
                "agent": [
                    {
                        "type": {"coding": [{"code": "custodian"}]},
                        "who": {
                            "identifier": {
                                "system": "urn:ietf:rfc:3986",
                                "value": "urn:oid:2.16.156.10011.99.1.1",  # NSCH
                            }
                        },
                    }
                ],
            },
            "request": {"method": "POST", "url": "Provenance"},
        }
    )
    body = orjson.dumps(sign_bundle(bundle, signer(pki, "njmu2"), "author"))
    resp = client.post("/fhir", content=body, headers=partner(NJMU2_TOKEN))
    assert resp.status_code == 403
    assert "agent[0].who" in resp.json()["issue"][0]["expression"][0]
    assert _stored(hk_settings) == NOTHING


def test_unsigned_is_refused_unless_the_partner_may_send_unsigned(
    client: Client, hk_settings: Settings, referral: dict[str, Any], converter: Any
) -> None:
    body = orjson.dumps(referral)
    resp = client.post("/fhir", content=body, headers=partner(NSCH_TOKEN))
    assert resp.status_code == 422
    assert resp.json()["issue"][0]["details"]["coding"][0]["code"] == "inbound.unsigned"
    stored = _stored(hk_settings)
    assert stored["inbound_resources"] == 0
    assert stored["inbound_bundles"] == 1  # the refused bytes, kept as evidence

    from gateway.api import TokenSet, create_app

    toml = hk_settings.home / "gateway.toml"
    toml.write_text(toml.read_text() + 'inbound_unsigned = ["nsch"]\n')
    lenient = Settings.load(home=hk_settings.home, env={})
    app = create_app(lenient, converter, TokenSet([LOCAL]))
    try:
        resp = Client(app).post("/fhir", content=body, headers=partner(NSCH_TOKEN))
    finally:
        app.state.fhir.close()
    assert resp.status_code == 200, resp.text


def test_a_changed_signed_bundle_is_422(
    client: Client, hk_settings: Settings, signed_referral: bytes
) -> None:
    bundle = orjson.loads(signed_referral)
    for entry in bundle["entry"]:
        if entry["resource"]["resourceType"] == "Patient":
            entry["resource"]["name"][0]["text"] = "许家伟"  # one character changed
    resp = client.post("/fhir", content=orjson.dumps(bundle), headers=partner(NSCH_TOKEN))
    assert resp.status_code == 422
    codes = {i["details"]["coding"][0]["code"] for i in resp.json()["issue"]}
    assert codes == {"signing.content-changed"}
    assert _stored(hk_settings)["inbound_resources"] == 0


def test_the_same_bundle_twice_stores_once_and_answers_the_same(
    client: Client, hk_settings: Settings, signed_referral: bytes
) -> None:
    first = client.post("/fhir", content=signed_referral, headers=partner(NSCH_TOKEN))
    after_first = _stored(hk_settings)
    # the outbox's httpx client posts to its base URL with a trailing slash
    second = client.post("/fhir/", content=signed_referral, headers=partner(NSCH_TOKEN))
    assert first.status_code == second.status_code == 200
    assert first.json() == second.json()
    assert _stored(hk_settings) == after_first
    assert after_first["inbound_bundles"] == 1


def test_a_denied_transfer_is_403_with_the_policy_reason(
    client: Client, hk_settings: Settings, referral: dict[str, Any], pki: Path
) -> None:
    # NJMU2 (Nanjing, outside the Greater Bay Area) → HKPMC on a GBA contract: denied
    bundle = copy.deepcopy(referral)
    bundle["identifier"]["system"] = "https://fhir.njmu2.example.cn/sid/hl7v2-message"
    body = orjson.dumps(sign_bundle(bundle, signer(pki, "njmu2"), "author"))
    resp = client.post("/fhir", content=body, headers=partner(NJMU2_TOKEN))
    assert resp.status_code == 403
    issues = resp.json()["issue"]
    denied = [i for i in issues if i["details"]["coding"][0]["code"] == "policy.denied"]
    assert denied and "南京" in denied[0]["details"]["text"]
    assert _stored(hk_settings) == NOTHING


def test_a_later_version_updates_and_a_resend_writes_no_new_version(
    client: Client, referral: dict[str, Any], pki: Path
) -> None:
    nsch = signer(pki, "nsch")
    body = orjson.dumps(sign_bundle(referral, nsch, "author"))
    assert client.post("/fhir", content=body, headers=partner(NSCH_TOKEN)).status_code == 200
    changed = copy.deepcopy(referral)
    changed["identifier"]["value"] = "NSCH20260620090000001"
    for entry in changed["entry"]:
        if entry["resource"]["resourceType"] == "ServiceRequest":
            entry["resource"]["priority"] = "urgent"
    body = orjson.dumps(sign_bundle(changed, nsch, "author"))
    resp = client.post("/fhir", content=body, headers=partner(NSCH_TOKEN))
    statuses = [e["response"]["status"] for e in resp.json()["entry"]]
    # conditional creates match what is stored (200, nothing written), the update writes v2
    assert statuses.count("201 Created") == 1  # the signature Provenance alone
    query = f"/fhir/ServiceRequest?identifier={REFERRAL_SYSTEM}|REF20260618001"
    sr = client.get(query, headers=LOCAL_AUTH).json()["entry"][0]["resource"]
    assert sr["meta"]["versionId"] == "2" and sr["priority"] == "urgent"
    patients = client.get("/fhir/Patient", headers=LOCAL_AUTH).json()["entry"]
    assert len(patients) == 1 and patients[0]["resource"]["meta"]["versionId"] == "1"


def test_search_parameters(client: Client, signed_referral: bytes) -> None:
    client.post("/fhir", content=signed_referral, headers=partner(NSCH_TOKEN))
    get = lambda url: client.get(url, headers=LOCAL_AUTH)  # noqa: E731
    assert len(get("/fhir/ServiceRequest?status=active").json()["entry"]) == 1
    assert get("/fhir/ServiceRequest?status=revoked").json()["entry"] == []
    assert len(get("/fhir/ServiceRequest?_lastUpdated=ge2026-01-01").json()["entry"]) == 1
    assert get("/fhir/ServiceRequest?_lastUpdated=lt2026-01-01T00:00:00Z").json()["entry"] == []
    assert len(get("/fhir/ServiceRequest?identifier=REF20260618001").json()["entry"]) == 1
    page = get("/fhir/Practitioner?_count=1").json()
    assert len(page["entry"]) == 1 and page["link"][1]["relation"] == "next"
    rest = client.get(page["link"][1]["url"], headers=LOCAL_AUTH).json()
    assert len(rest["entry"]) == 1 and rest["entry"][0] != page["entry"][0]
    bad = get("/fhir/Patient?name=许")
    assert bad.status_code == 400
    assert bad.json()["issue"][0]["details"]["coding"][0]["code"] == "inbound.bad-search"
    assert get("/fhir/Patient?_lastUpdated=2026-13-01").status_code == 400
    assert get("/fhir/Patient/no-such-id").status_code == 404


def test_a_partner_reads_only_what_it_sent(client: Client, signed_referral: bytes) -> None:
    client.post("/fhir", content=signed_referral, headers=partner(NSCH_TOKEN))
    query = f"/fhir/ServiceRequest?identifier={REFERRAL_SYSTEM}|REF20260618001"
    own = client.get(query, headers=partner(NSCH_TOKEN)).json()
    assert len(own["entry"]) == 1  # the sender asks after an ambiguous send
    assert client.get(query, headers=partner(NJMU2_TOKEN)).json()["entry"] == []
    ref = own["entry"][0]["fullUrl"].split("/fhir/")[1]
    assert client.get(f"/fhir/{ref}", headers=partner(NJMU2_TOKEN)).status_code == 404


def test_batch_entries_apply_one_by_one(client: Client, pki: Path) -> None:
    staff = "https://fhir.nsch.example.cn/sid/staff"
    batch = {
        "resourceType": "Bundle",
        "type": "batch",
        "identifier": {"system": "https://fhir.nsch.example.cn/sid/batch", "value": "B1"},
        "entry": [
            {
                "resource": {
                    "resourceType": "Practitioner",
                    "identifier": [{"system": staff, "value": "NS0999"}],
                    "name": [{"text": "何慧敏"}],
                },
                "request": {"method": "POST", "url": "Practitioner",
                            "ifNoneExist": f"identifier={staff}|NS0999"},
            },
            {
                "resource": {"resourceType": "Observation", "status": "final",
                             "code": {"text": "血压"},
                             "subject": {"reference": "Patient?identifier=x|nobody"}},
                "request": {"method": "POST", "url": "Observation"},
            },
            {"resource": {"resourceType": "Patient"},
             "request": {"method": "DELETE", "url": "Patient/1"}},
        ],
    }  # fmt: skip
    body = orjson.dumps(sign_bundle(batch, signer(pki, "nsch"), "author"))
    resp = client.post("/fhir", content=body, headers=partner(NSCH_TOKEN))
    assert resp.status_code == 200, resp.text
    answer = resp.json()
    assert answer["type"] == "batch-response"
    statuses = [e["response"]["status"] for e in answer["entry"]]
    assert statuses == ["201 Created", "422 Unprocessable Entity", "400 Bad Request", "201 Created"]
    failed = answer["entry"][1]["response"]["outcome"]["issue"][0]
    assert failed["details"]["coding"][0]["code"] == "inbound.unresolved-reference"
    found = client.get(f"/fhir/Practitioner?identifier={staff}|NS0999", headers=LOCAL_AUTH)
    assert found.json()["entry"][0]["resource"]["name"][0]["text"] == "何慧敏"
    assert client.get("/fhir/Observation", headers=LOCAL_AUTH).json()["entry"] == []


def test_a_transaction_is_all_or_nothing(
    client: Client, hk_settings: Settings, referral: dict[str, Any], pki: Path
) -> None:
    bundle = copy.deepcopy(referral)
    for entry in bundle["entry"]:
        if entry["resource"]["resourceType"] == "ServiceRequest":  # the last entry
            entry["resource"]["subject"] = {
                "reference": "urn:uuid:00000000-0000-0000-0000-000000000000"
            }
    body = orjson.dumps(sign_bundle(bundle, signer(pki, "nsch"), "author"))
    resp = client.post("/fhir", content=body, headers=partner(NSCH_TOKEN))
    assert resp.status_code == 422
    assert resp.json()["issue"][0]["details"]["coding"][0]["code"] == "inbound.unresolved-reference"
    assert _stored(hk_settings) == NOTHING
