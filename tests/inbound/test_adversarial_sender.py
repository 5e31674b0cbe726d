"""Adversarial review of POST /fhir: a partner acts only in its own name and on its own
resources (docs/inbound.md). A hostile but authenticated partner tries to speak for
another institution through a Provenance that looks like a signature, to change the
referral Tasks this gateway made, and to write over or link to another partner's
resources. Each of these was accepted before the fix that goes with it."""

from __future__ import annotations

import copy
import datetime as dt
from base64 import b64encode
from pathlib import Path
from typing import Any

import orjson
import pytest

from gateway import Converter, Settings
from gateway.api import TokenSet, create_app
from gateway.datafiles import data_dir
from gateway.signing import make_demo_pki, sign_bundle, signed_content
from gateway.signing._jws import sign_detached
from tests.api.test_app import Client

from .conftest import LOCAL, LOCAL_AUTH, NSCH_TOKEN, counts, make_home, partner, signer

HKPMC_OID = "urn:oid:1.3.6.1.4.1.99999.1.1"
NJMU2_OID = "urn:oid:2.16.156.10011.99.1.3"
LAX2_TOKEN = "lax2-partner-token-0123456789abcdef"
LAX2 = "https://fhir.lax2.example.cn"
REPORT = f"{LAX2}/sid/report|R1"
NSCH_MRN = "https://fhir.nsch.example.cn/sid/mrn|0098765"


def _code(resp: Any) -> str:
    return str(resp.json()["issue"][0]["details"]["coding"][0]["code"])


def _post(client: Client, bundle: dict[str, Any], pki: Path, who: str = "nsch",
          token: str = NSCH_TOKEN) -> Any:  # fmt: skip
    body = orjson.dumps(sign_bundle(bundle, signer(pki, who), "author"))
    return client.post("/fhir", content=body, headers=partner(token))


def _custodian(oid: str) -> dict[str, Any]:
    return {
        "type": {"coding": [{"code": "custodian"}]},
        "who": {"identifier": {"system": "urn:ietf:rfc:3986", "value": oid}},
    }


# -- speaking for another institution ------------------------------------------------
def test_a_provenance_that_only_looks_like_a_signature_is_checked_for_its_agents(
    client: Client, hk_settings: Settings, referral: dict[str, Any], pki: Path
) -> None:
    # sigFormat application/jose made the sender check skip it, yet it is no signature
    # (no signature profile): the verifier ignores it, and it was stored naming NJMU2
    bundle = copy.deepcopy(referral)
    bundle["entry"].append(
        {
            "fullUrl": "urn:uuid:7d3c1b4e-2f55-4a8e-9d41-0c3c8f1a2b11",
            "resource": {
                "resourceType": "Provenance",
                "target": [{"reference": bundle["entry"][2]["fullUrl"]}],
                "recorded": "2026-06-18T06:30:00Z",
                "agent": [_custodian(NJMU2_OID)],
                "signature": [{
                    "type": [{"system": "urn:iso-astm:E1762-95:2013",
                              "code": "1.2.840.10065.1.12.1.1"}],
                    "when": "2026-06-18T06:30:00Z", "who": {"display": "NJMU2"},
                    "sigFormat": "application/jose", "data": "AAAA",
                }],
            },
            "request": {"method": "POST", "url": "Provenance"},
        }
    )  # fmt: skip
    resp = _post(client, bundle, pki)
    assert resp.status_code == 403, resp.text
    assert _code(resp) == "inbound.wrong-sender"
    assert resp.json()["issue"][0]["expression"] == ["Bundle.entry[10].resource.agent[0].who"]
    assert counts(hk_settings)["inbound_resources"] == 0


def test_a_signature_provenance_may_not_add_an_agent_for_another_institution(
    client: Client, hk_settings: Settings, referral: dict[str, Any], pki: Path
) -> None:
    # NSCH signs with its own key a signature Provenance that also says "on behalf of
    # NJMU2": the signature is valid (it covers its Provenance), the claim is not NSCH's
    nsch = signer(pki, "nsch")
    when = dt.datetime.now(dt.UTC).replace(microsecond=0)
    signed = sign_bundle(referral, nsch, "author", when)
    provenance = signed["entry"][-1]["resource"]
    provenance["agent"].append(
        {**_custodian(NJMU2_OID), "onBehalfOf": _custodian(NJMU2_OID)["who"]}
    )
    signed.pop("signature")
    jws = sign_detached(signed_content(signed, 1), nsch, "author", when)
    provenance["signature"][0]["data"] = b64encode(jws.encode()).decode()
    signed["signature"] = dict(provenance["signature"][0])
    resp = client.post("/fhir", content=orjson.dumps(signed), headers=partner(NSCH_TOKEN))
    assert resp.status_code == 403, resp.text
    assert _code(resp) == "inbound.wrong-sender"
    assert resp.json()["issue"][0]["expression"] == ["Bundle.entry[10].resource.agent[1].who"]
    assert counts(hk_settings)["inbound_resources"] == 0


def test_a_signature_by_a_look_alike_ca_is_refused_and_kept_as_evidence(
    client: Client, hk_settings: Settings, referral: dict[str, Any], tmp_path: Path
) -> None:
    # another CA with the same names issues "NSCH" a certificate with NSCH's OID
    rogue = tmp_path / "rogue"
    make_demo_pki(data_dir("seeds") / "network.yaml", rogue)
    body = orjson.dumps(sign_bundle(referral, signer(rogue, "nsch"), "author"))
    resp = client.post("/fhir", content=body, headers=partner(NSCH_TOKEN))
    assert resp.status_code == 422, resp.text
    assert _code(resp) == "signing.untrusted"
    found = counts(hk_settings)
    assert found["inbound_resources"] == 0 and found["inbound_bundles"] == 1


# -- the referral Tasks made here ----------------------------------------------------
def _our_task(client: Client) -> dict[str, Any]:
    tasks = client.get("/fhir/Task", headers=LOCAL_AUTH).json()["entry"]
    task: dict[str, Any] = tasks[0]["resource"]
    return task


def _task_bundle(task: dict[str, Any], url: str) -> dict[str, Any]:
    forged = {k: v for k, v in task.items() if k not in ("id", "meta")}
    forged["status"] = "accepted"
    return {
        "resourceType": "Bundle",
        "type": "transaction",
        "identifier": {"system": "https://fhir.nsch.example.cn/sid/forged", "value": "T1"},
        "entry": [
            {
                "fullUrl": "urn:uuid:0b5bb0c0-3c6f-4e55-9c43-3f1b0f8f6a01",
                "resource": forged,
                "request": {"method": "PUT", "url": url},
            }
        ],
    }


def test_the_sender_cannot_accept_its_own_referral_by_writing_our_task(
    client: Client, signed_referral: bytes, pki: Path
) -> None:
    assert client.post("/fhir", content=signed_referral, headers=partner(NSCH_TOKEN)).is_success
    task = _our_task(client)
    forged = _task_bundle(task, f"Task/{task['id']}")
    forged["entry"][0]["resource"].pop("identifier")  # ours is refused on its own (below)
    resp = _post(client, forged, pki)
    assert resp.status_code == 403, resp.text
    assert _code(resp) == "inbound.wrong-sender"
    assert resp.json()["issue"][0]["expression"] == ["Bundle.entry[0].request.url"]
    after = client.get(f"/fhir/Task/{task['id']}", headers=LOCAL_AUTH).json()
    assert after["status"] == "requested" and after["meta"]["versionId"] == "1"


def test_a_conditional_update_by_our_task_identifier_leaves_our_task_alone(
    client: Client, signed_referral: bytes, pki: Path
) -> None:
    assert client.post("/fhir", content=signed_referral, headers=partner(NSCH_TOKEN)).is_success
    task = _our_task(client)
    ident = task["identifier"][0]
    url = f"Task?identifier={ident['system']}|{ident['value']}"
    forged = _task_bundle(task, url)
    forged["entry"][0]["resource"]["identifier"] = [{**ident, "system": "urn:x:tasks"}]
    resp = _post(client, forged, pki)  # matches NSCH's own Tasks only: a new one of NSCH's
    assert resp.status_code == 200, resp.text
    after = client.get(f"/fhir/Task/{task['id']}", headers=LOCAL_AUTH).json()
    assert after["status"] == "requested" and after["meta"]["versionId"] == "1"


def test_a_task_sent_before_the_referral_does_not_stand_in_for_ours(
    client: Client, referral: dict[str, Any], signed_referral: bytes, pki: Path
) -> None:
    # NSCH first sends a Task under this gateway's referral-task identifier, "accepted"
    ident = {"system": "https://fhir.hkpmc.example.hk/sid/referral-task",
             "value": "NSCH-REF20260618001"}  # fmt: skip
    forged = {"resourceType": "Task", "identifier": [ident], "status": "requested",
              "intent": "order"}  # fmt: skip
    url = f"Task?identifier={ident['system']}|{ident['value']}"
    resp = _post(client, _task_bundle(forged, url), pki)
    assert resp.status_code == 403, resp.text
    assert resp.json()["issue"][0]["expression"] == ["Bundle.entry[0].resource.identifier[0]"]
    assert client.post("/fhir", content=signed_referral, headers=partner(NSCH_TOKEN)).is_success
    tasks = [e["resource"] for e in client.get("/fhir/Task", headers=LOCAL_AUTH).json()["entry"]]
    ours = [t for t in tasks if t.get("focus", {}).get("reference", "").startswith("Service")]
    assert len(ours) == 1 and ours[0]["status"] == "requested"


# -- another partner's resources -----------------------------------------------------
@pytest.fixture
def two_partners(tmp_path: Path, pki: Path, converter: Converter) -> Any:
    """HKPMC receiving from NSCH (referrals) and LAX2 (second opinions)."""
    settings = make_home(tmp_path / "hk2", pki, "hkpmc", {"nsch": NSCH_TOKEN, "lax2": LAX2_TOKEN})
    app = create_app(settings, converter, TokenSet([LOCAL]))
    yield Client(app)
    app.state.fhir.close()


def _lax2_report(
    patient_request: dict[str, Any], subject: str, name: str = "许嘉玮"
) -> dict[str, Any]:
    patient = {"resourceType": "Patient",
               "identifier": [{"system": NSCH_MRN.split("|")[0], "value": "0098765"}],
               "name": [{"text": name}]}  # fmt: skip
    return {
        "resourceType": "Bundle",
        "type": "transaction",
        "identifier": {"system": f"{LAX2}/sid/hl7v2-message", "value": "LAX2-1"},
        "entry": [
            {"fullUrl": "urn:uuid:5a0c2f9e-8f43-4d1e-9b7a-1d2e3f4a5b6c", "resource": patient,
             "request": patient_request},
            {"fullUrl": "urn:uuid:6b1d3a0f-9a54-4e2f-8c8b-2e3f4a5b6c7d",
             "resource": {"resourceType": "DiagnosticReport", "status": "final",
                          "identifier": [{"system": f"{LAX2}/sid/report", "value": "R1"}],
                          "code": {"text": "CT"}, "subject": {"reference": subject}},
             "request": {"method": "PUT", "url": f"DiagnosticReport?identifier={REPORT}"}},
        ],
    }  # fmt: skip


def _nsch_patient(client: Client) -> dict[str, Any]:
    found = client.get(f"/fhir/Patient?identifier={NSCH_MRN}", headers=LOCAL_AUTH).json()
    mine = [e["resource"] for e in found["entry"]]
    return next(p for p in mine if p["name"][0]["text"] == "許嘉瑋")


def test_a_partner_cannot_update_another_partners_resource_by_id(
    two_partners: Client, signed_referral: bytes, pki: Path
) -> None:
    client = two_partners
    assert client.post("/fhir", content=signed_referral, headers=partner(NSCH_TOKEN)).is_success
    theirs = _nsch_patient(client)
    bundle = _lax2_report({"method": "PUT", "url": f"Patient/{theirs['id']}"},
                          f"Patient/{theirs['id']}")  # fmt: skip
    resp = _post(client, bundle, pki, "lax2", LAX2_TOKEN)
    assert resp.status_code == 403, resp.text
    assert _code(resp) == "inbound.wrong-sender"
    assert resp.json()["issue"][0]["expression"] == ["Bundle.entry[0].request.url"]
    assert _nsch_patient(client)["meta"]["versionId"] == "1"


def test_a_partners_conditional_update_does_not_match_another_partners_resource(
    two_partners: Client, signed_referral: bytes, pki: Path
) -> None:
    client = two_partners
    assert client.post("/fhir", content=signed_referral, headers=partner(NSCH_TOKEN)).is_success
    bundle = _lax2_report({"method": "PUT", "url": f"Patient?identifier={NSCH_MRN}"},
                          "urn:uuid:5a0c2f9e-8f43-4d1e-9b7a-1d2e3f4a5b6c")  # fmt: skip
    resp = _post(client, bundle, pki, "lax2", LAX2_TOKEN)
    assert resp.status_code == 200, resp.text
    theirs = _nsch_patient(client)
    assert theirs["meta"]["versionId"] == "1"  # NSCH's patient as NSCH sent it
    report = client.get("/fhir/DiagnosticReport", headers=LOCAL_AUTH).json()["entry"][0]
    assert report["resource"]["subject"]["reference"] != f"Patient/{theirs['id']}"


def test_a_reference_to_another_partners_resource_is_refused(
    two_partners: Client, signed_referral: bytes, pki: Path
) -> None:
    client = two_partners
    assert client.post("/fhir", content=signed_referral, headers=partner(NSCH_TOKEN)).is_success
    theirs = _nsch_patient(client)
    bundle = _lax2_report({"method": "POST", "url": "Patient"}, f"Patient/{theirs['id']}")
    del bundle["entry"][0]  # the report alone, about NSCH's patient
    resp = _post(client, bundle, pki, "lax2", LAX2_TOKEN)
    assert resp.status_code == 422, resp.text
    assert _code(resp) == "inbound.unresolved-reference"
    assert resp.json()["issue"][0]["expression"] == ["Bundle.entry[0].resource.subject"]
    assert client.get("/fhir/DiagnosticReport", headers=LOCAL_AUTH).json()["entry"] == []
