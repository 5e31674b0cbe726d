"""The audit trail on the API (gateway/api/_auditing.py): every route that returns
patient data writes exactly one api-read AuditEvent naming the token (its name and
role) or the partner, the resources and patients returned, and the query; never a
resource's content. Roles: the audit log for auditor and admin only, everything else
for operator and admin only (403 with an OperationOutcome)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest

from gateway import Converter, Settings, validation
from gateway.api import TokenSet, create_app
from gateway.audit import PSEUDONYM, AuditLog, message_subject
from gateway.audit._events import keys_of
from gateway.policy import Policy, PolicyRecords
from gateway.processing import process_message
from gateway.signing import sign_bundle
from gateway.store import Incoming, open_store
from tests.api.test_app import Client
from tests.audit.conftest import pki  # noqa: F401  (the demo PKI, once per session)
from tests.inbound.conftest import GOLDEN_REFERRAL, NSCH_TOKEN, make_home, partner, signer
from tests.policy.conftest import HKID, NOW, REPO, consent

OPS, AUDITOR, ADMIN, LEGACY = (
    "ops-token-0123456789abcdef",
    "auditor-token-0123456789abcdef",
    "admin-token-0123456789abcdef",
    "legacy-token-0123456789abcdef",
)
LINES = [
    "# the API's tokens",
    f"{OPS} operator ops-desk",
    f"{AUDITOR} auditor compliance-hk",
    f"{ADMIN}   admin",
    LEGACY,  # a line of before roles: operator
]


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}", "Content-Type": "application/fhir+json"}


@dataclass
class Rig:
    client: Client
    settings: Settings
    message: int
    decision: int
    patients: list[str]  # the stored message's patient identifiers

    def events(self) -> list[dict[str, Any]]:
        store = open_store(self.settings)
        try:
            return [e.resource() for e in AuditLog(store).rows()]
        finally:
            store.close()


@pytest.fixture
def rig(tmp_path: Path, pki: Path, converter: Converter) -> Iterator[Rig]:  # noqa: F811
    """HKPMC's gateway: a stored NSCH → HKPMC referral held by the policy, the same
    referral received from NSCH on POST /fhir, and a consent imported."""
    settings = make_home(tmp_path / "hkpmc", pki, "hkpmc", {"nsch": NSCH_TOKEN})
    store = open_store(settings)
    raw = (REPO / "examples" / "hl7v2" / "ref_i12_nsch_to_hkpmc.hl7").read_bytes()
    message = store.receive(Incoming(raw, "mllp")).id
    bundle = process_message(store, converter, message).output
    assert bundle is not None
    decided = PolicyRecords(store, Policy(settings)).apply(
        message, bundle, "NSCH", "HKPMC", now=NOW
    )
    found = store.get(message)
    store.close()
    assert decided.id is not None and found is not None
    app = create_app(settings, converter, TokenSet(LINES))
    client = Client(app)
    referral = orjson.loads(GOLDEN_REFERRAL.read_bytes())
    body = orjson.dumps(sign_bundle(referral, signer(pki, "nsch"), "author"))
    assert client.post("/fhir", content=body, headers=partner(NSCH_TOKEN)).status_code == 200
    made = client.post(
        "/Consent", content=orjson.dumps(consent((HKID, "K583726A"), "HKPMC")), headers=auth(OPS)
    )
    assert made.status_code == 201, made.text
    yield Rig(client, settings, message, decided.id, found.patients)
    app.state.fhir.close()
    app.state.messages.close()


def one_read(rig: Rig, token: str, url: str) -> tuple[Any, dict[str, Any]]:
    """GET ``url``; its body and the one event it added to the log (exactly one)."""
    before = len(rig.events())
    resp = rig.client.get(url, headers=auth(token))
    assert resp.status_code == 200, (url, resp.text)
    added = rig.events()[before:]
    assert [keys_of(e)[0] for e in added] == ["api-read"], url
    return resp.json(), added[0]


def requestor(event: dict[str, Any]) -> tuple[str, str | None]:
    user = next(a for a in event["agent"] if a["requestor"])
    role = (user.get("role") or [{}])[0].get("text")
    return user["who"]["identifier"]["value"], role


def whats(event: dict[str, Any], role: str) -> list[str]:
    """The entities of an object role (1 patient, 4 resource) as references or
    system|value."""
    out = []
    for entity in event.get("entity") or []:
        if entity.get("role", {}).get("code") == role:
            what = entity["what"]
            ident = what.get("identifier")
            out.append(what.get("reference") or f"{ident['system']}|{ident['value']}")
    return out


def query(event: dict[str, Any]) -> str:
    entity = next(e for e in event["entity"] if e.get("role", {}).get("code") == "24")
    return str(entity["detail"][0]["valueString"])


def conforms(event: dict[str, Any]) -> None:
    problems = [
        i.line()
        for i in validation.validate_resource(event, all_issues=True)
        if i.severity in ("error", "fatal")
    ]
    assert problems == []


def test_every_read_of_patient_data_writes_one_event(rig: Rig) -> None:
    stored = message_subject(rig.message).records[0]
    seen: list[dict[str, Any]] = []

    # the message store: a page of messages, one message with its outputs
    _, event = one_read(rig, OPS, "/messages?type=REF^I12")
    assert stored in whats(event, "4") and requestor(event) == ("ops-desk", "operator")
    assert query(event) == "GET /messages?type=REF^I12"
    seen.append(event)
    shown, event = one_read(rig, OPS, f"/messages/{rig.message}")
    assert whats(event, "4") == [stored] and set(whats(event, "1")) == set(rig.patients)
    assert shown["outcomes"][0]["output"]["type"] == "transaction"
    seen.append(event)

    # inbound resources: search, read, the referral's Task, the patient
    ident = "https://fhir.nsch.example.cn/sid/referral|REF20260618001"
    found, event = one_read(rig, ADMIN, f"/fhir/ServiceRequest?identifier={ident}")
    sr = found["entry"][0]["resource"]
    patient = sr["subject"]["reference"]
    assert whats(event, "4") == [f"ServiceRequest/{sr['id']}"] and whats(event, "1") == [patient]
    assert requestor(event)[1] == "admin" and ident in query(event)
    seen.append(event)
    _, event = one_read(rig, OPS, f"/fhir/ServiceRequest/{sr['id']}")
    assert whats(event, "4") == [f"ServiceRequest/{sr['id']}"] and whats(event, "1") == [patient]
    seen.append(event)
    tasks, event = one_read(rig, OPS, "/fhir/Task")
    task = tasks["entry"][0]["resource"]
    assert whats(event, "4") == [f"Task/{task['id']}"]
    seen.append(event)
    _, event = one_read(rig, OPS, f"/fhir/{patient}")
    assert whats(event, "1") == [patient] and whats(event, "4") == [patient]
    seen.append(event)

    # a partner reading what it sent: the partner is the agent
    _, event = one_read(rig, NSCH_TOKEN, f"/fhir/ServiceRequest/{sr['id']}")
    assert keys_of(event)[3] == "nsch" and not any(a["requestor"] for a in event["agent"])
    seen.append(event)

    # the policy's decisions (patients by pseudonym) and consents
    _, event = one_read(rig, LEGACY, f"/policy/decisions?message={rig.message}")
    assert whats(event, "4") == [stored] and whats(event, "1")[0].startswith(PSEUDONYM + "|")
    assert requestor(event)[1] == "operator"  # the line without a role
    seen.append(event)
    _, event = one_read(rig, OPS, f"/policy/decisions/{rig.decision}")
    assert whats(event, "4") == [stored]
    seen.append(event)
    _, event = one_read(rig, OPS, f"/Consent?patient={HKID}|K583726A")
    assert whats(event, "4") == ["Consent/consent-1"] and whats(event, "1") == [f"{HKID}|K583726A"]
    seen.append(event)

    # the audit log itself
    page, event = one_read(rig, AUDITOR, f"/fhir/AuditEvent?entity={stored}")
    ids = [e["resource"]["id"] for e in page["entry"]]
    assert whats(event, "4") == [f"AuditEvent/{i}" for i in ids] and len(ids) >= 3
    assert requestor(event) == ("compliance-hk", "auditor")
    seen.append(event)
    _, event = one_read(rig, AUDITOR, f"/fhir/AuditEvent/{ids[0]}")
    assert whats(event, "4") == [f"AuditEvent/{ids[0]}"]
    seen.append(event)

    for event in seen:
        conforms(event)
        assert {"read", "search-type"} & {s["code"] for s in event["subtype"]}
    text = json.dumps(seen, ensure_ascii=False)
    for secret in ("許嘉瑋", "许嘉玮", OPS, AUDITOR, ADMIN, LEGACY, NSCH_TOKEN):
        assert secret not in text  # no names, no tokens: references and codes


def test_roles(rig: Rig) -> None:
    get, post = rig.client.get, rig.client.post
    # operators (and a line without a role) run the gateway but never read the audit log
    for token in (OPS, LEGACY):
        refused = get("/fhir/AuditEvent", headers=auth(token))
        assert refused.status_code == 403
        issue = refused.json()["issue"][0]
        assert issue["code"] == "forbidden"
        assert issue["details"]["coding"][0]["code"] == "security.forbidden"
        assert get("/fhir/AuditEvent/x", headers=auth(token)).status_code == 403
    # auditors read the audit log and nothing else
    assert get("/fhir/AuditEvent", headers=auth(AUDITOR)).status_code == 200
    for method, url in [
        ("POST", f"/messages/{rig.message}/$reprocess"),
        ("POST", "/Consent"),
        ("POST", "/Consent/consent-1/$withdraw"),
        ("POST", "/fhir/Task/x/$accept"),
        ("POST", "/convert"),
        ("GET", "/messages"),
        ("GET", "/fhir/ServiceRequest?_count=1"),
        ("GET", "/policy/decisions"),
    ]:
        resp = rig.client.request(method, url, headers=auth(AUDITOR), content=b"{}")
        assert resp.status_code == 403, url
        assert resp.json()["issue"][0]["details"]["coding"][0]["code"] == "security.forbidden"
    # admin both; no token, a wrong one or a partner's: 401
    assert get("/fhir/AuditEvent", headers=auth(ADMIN)).status_code == 200
    assert post(f"/messages/{rig.message}/$reprocess", headers=auth(ADMIN)).status_code == 200
    for headers in ({}, auth("wrong-0123456789"), auth(NSCH_TOKEN)):
        assert get("/fhir/AuditEvent", headers=headers).status_code == 401
    # the consent the auditor tried to withdraw is still in force
    found = get(f"/Consent?patient={HKID}|K583726A", headers=auth(OPS)).json()
    assert found["entry"][0]["resource"]["status"] == "active"


def test_audit_event_search_pages_and_refuses_bad_parameters(rig: Rig) -> None:
    everything = [e["id"] for e in rig.events()]
    got: list[str] = []
    url: str | None = "/fhir/AuditEvent?_count=2"
    while url is not None:
        page = rig.client.get(url, headers=auth(ADMIN)).json()
        assert page["type"] == "searchset" and len(page["entry"]) <= 2
        got += [e["resource"]["id"] for e in page["entry"]]
        url = next((lk["url"] for lk in page["link"] if lk["relation"] == "next"), None)
    # every event logged before the search began, in log order (each page's own read
    # event joins the log after it)
    assert got[: len(everything)] == everything
    for bad in ("name=x", "date=yesterday", "outcome=3", "_count=many"):
        resp = rig.client.get(f"/fhir/AuditEvent?{bad}", headers=auth(AUDITOR))
        assert resp.status_code == 400, bad
        assert resp.json()["issue"][0]["details"]["coding"][0]["code"] == "audit.bad-search"
    missing = rig.client.get("/fhir/AuditEvent/no-such-event", headers=auth(AUDITOR))
    assert missing.status_code == 404
    assert missing.json()["issue"][0]["details"]["coding"][0]["code"] == "audit.not-found"


def test_the_capability_statements_serve_audit_events() -> None:
    published = json.loads(
        (REPO / "profiles" / "CapabilityStatement-fhir-gateway.json").read_text()
    )
    server, client = published["rest"]
    audit = next(r for r in server["resource"] if r["type"] == "AuditEvent")
    assert {i["code"] for i in audit["interaction"]} == {"read", "search-type"}
    names = {p["name"] for p in audit["searchParam"]}
    assert {"patient", "entity", "agent", "date", "type", "subtype", "outcome"} <= names
    assert "AuditEvent" not in {r["type"] for r in client["resource"]}  # never sent


def test_consent_changes_over_the_api_name_the_client(rig: Rig) -> None:
    """An import and a withdrawal over the API name the token's client as the actor of
    their consent events, as ``gateway consent withdraw`` names the OS account (both
    named no one on the API before)."""

    def consent_events() -> list[dict[str, Any]]:
        return [e for e in rig.events() if keys_of(e)[0] == "consent"]

    [imported] = consent_events()  # the rig's POST /Consent, by the ops-desk token
    assert requestor(imported)[0] == "ops-desk"
    withdrawn = rig.client.post("/Consent/consent-1/$withdraw", headers=auth(ADMIN))
    assert withdrawn.status_code == 200, withdrawn.text
    event = consent_events()[-1]
    assert event["outcomeDesc"] == "inactive" and whats(event, "4") == ["Consent/consent-1"]
    token_name = TokenSet(LINES).identify(ADMIN)
    assert token_name is not None and token_name.name.startswith(
        "token-"
    )  # no name: its fingerprint
    assert requestor(event)[0] == token_name.name
    conforms(event)
    # a repeated withdrawal changes nothing and records nothing
    again = rig.client.post("/Consent/consent-1/$withdraw", headers=auth(OPS))
    assert again.status_code == 200 and len(consent_events()) == 2
