"""The decision record read back on the CLI and the API; `policy check` in Chinese and
English; consents imported, listed and withdrawn on both."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import orjson
from fastapi import FastAPI

from gateway import Converter, Settings
from gateway.api import TokenSet, create_app
from gateway.policy import Policy, PolicyRecords
from gateway.processing import process_message
from gateway.store import Incoming, open_store
from tests.api.test_app import Client

from ..gateway_cli import run
from .conftest import HKID, NOW, REPO, consent, dumps

TOKEN = "policy-test-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def call(app: FastAPI, method: str, url: str, **kwargs: Any) -> httpx.Response:
    return Client(app).request(method, url, **kwargs)


def _held(home: Path, converter: Converter) -> tuple[int, int]:
    """A mainland → Hong Kong referral stored, converted and held; (message, decision)."""
    settings = Settings.load(home=home, env={})
    store = open_store(settings)
    raw = (REPO / "examples" / "hl7v2" / "ref_i12_nsch_to_hkpmc.hl7").read_bytes()
    message = store.receive(Incoming(raw, "cli")).id
    bundle = process_message(store, converter, message).output
    assert bundle is not None
    decision = PolicyRecords(store, Policy(settings)).apply(
        message, bundle, "NSCH", "HKPMC", now=NOW
    )
    store.close()
    assert decision.id is not None
    return message, decision.id


def test_policy_check_on_the_cli_in_chinese_and_english(tmp_path: Path) -> None:
    bundle = REPO / "examples" / "hl7v2" / "bundles" / "ref_i12_nsch_to_hkpmc.json"
    out = run(
        "policy", "check", str(bundle), "--to", "HKPMC", "--at", "2026-06-18T08:00", home=tmp_path
    )
    assert out.returncode == 1, out.stderr
    text = out.stdout.decode()
    assert "决定 / decision: 暂存 / hold" in text
    assert "未找到患者对用途“转诊”及接收方大灣區醫療集團香港合作醫療中心的有效单独同意" in text
    assert "no separate consent of the patient in force for the purpose “referral”" in text
    as_json = run(
        "policy",
        "check",
        str(bundle),
        "--to",
        "HKPMC",
        "--json",
        "--at",
        "2026-06-18T08:00",
        home=tmp_path,
    )
    decision = orjson.loads(as_json.stdout)
    assert decision["outcome"] == "hold" and decision["agreement"] == "GBA-SC-2024-NSCH-HKPMC"
    assert decision["operationOutcome"]["issue"][2]["details"]["coding"][0]["code"] == "policy.held"
    lax2 = REPO / "examples" / "hl7v2" / "bundles" / "ref_i12_lax2_to_njmu2.json"
    allowed = run(
        "policy",
        "check",
        str(lax2),
        "--to",
        "NJMU2",
        "-o",
        str(tmp_path / "out.json"),
        "--at",
        "2026-06-18T08:00",
        home=tmp_path,
    )
    assert allowed.returncode == 0 and "允许 / allow" in allowed.stdout.decode()
    assert (
        orjson.loads((tmp_path / "out.json").read_bytes())["entry"][-1]["resource"]["resourceType"]
        == "Provenance"
    )
    unknown = run("policy", "check", str(lax2), "--to", "NOWHERE", home=tmp_path)
    assert unknown.returncode == 2 and b"[config.unknown-partner]" in unknown.stderr


def test_decisions_and_consents_on_the_cli(tmp_path: Path, converter: Converter) -> None:
    message, decision = _held(tmp_path, converter)
    listed = run("policy", "decisions", "--outcome", "hold", home=tmp_path)
    assert listed.returncode == 0
    assert f"#{decision} message {message} " in listed.stdout.decode()
    shown = run("policy", "show", str(decision), home=tmp_path).stdout.decode()
    assert "暂存 / hold" in shown and "GBA-SC-2024-NSCH-HKPMC" in shown
    assert "no separate consent of the patient" in shown
    as_json = orjson.loads(run("policy", "show", str(decision), "--json", home=tmp_path).stdout)
    assert as_json["message_id"] == message and [r["outcome"] for r in as_json["rules"]] == [
        "pass",
        "pass",
        "hold",
        "pass",
        "skip",
    ]

    (tmp_path / "consent.json").write_bytes(dumps(consent((HKID, "K583726A"), "HKPMC")))
    imported = run("consent", "import", str(tmp_path / "consent.json"), home=tmp_path)
    assert imported.returncode == 0, imported.stderr
    text = imported.stdout.decode()
    assert f"released message {message}: allow-with-changes" in text
    assert "K583726A" not in text  # the patient's identifier is shown by its shape only
    assert "consent-1 active" in run("consent", "list", home=tmp_path).stdout.decode()
    batch = {
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [
            {"resource": {"resourceType": "Consent", "status": "active"}},
            {"resource": consent((HKID, "K583726A"), "NSCH", ident="consent-2")},
        ],
    }
    (tmp_path / "batch.json").write_bytes(dumps(batch))
    mixed = run("consent", "import", str(tmp_path / "batch.json"), home=tmp_path)
    assert mixed.returncode == 1 and "imported consent-2 active" in mixed.stdout.decode()
    assert b"Consent #1" in mixed.stderr and b"[policy.consent-invalid]" in mixed.stderr
    withdrawn = run("consent", "withdraw", "consent-1", home=tmp_path)
    assert "withdrawn consent-1 inactive" in withdrawn.stdout.decode()
    missing = run("consent", "withdraw", "nope", home=tmp_path)
    assert missing.returncode == 2 and b"[policy.consent-not-found]" in missing.stderr
    latest = run("policy", "decisions", "--message", str(message), "--json", home=tmp_path)
    assert [d["outcome"] for d in orjson.loads(latest.stdout)] == ["allow-with-changes", "hold"]


def test_decisions_and_consents_on_the_api(tmp_path: Path, converter: Converter) -> None:
    message, decision = _held(tmp_path, converter)
    settings = Settings.load(home=tmp_path, env={})
    app = create_app(settings, tokens=TokenSet([TOKEN]))
    assert call(app, "GET", f"/policy/decisions/{decision}").status_code == 401
    got = call(app, "GET", f"/policy/decisions/{decision}", headers=AUTH)
    assert got.status_code == 200
    body = got.json()
    assert body["outcome"] == "hold" and body["message_id"] == message
    consent_issue = body["operationOutcome"]["issue"][2]
    assert (
        consent_issue["severity"] == "warning" and "未找到患者" in consent_issue["details"]["text"]
    )
    assert call(app, "GET", "/policy/decisions/999", headers=AUTH).status_code == 404
    for bad in ("\u00b2", "99999999999999999999999"):  # int() fails; beyond the ids
        assert call(app, "GET", f"/policy/decisions/{bad}", headers=AUTH).status_code == 404
    listed = call(app, "GET", f"/policy/decisions?message={message}", headers=AUTH).json()
    assert [d["id"] for d in listed] == [decision]

    bad = call(app, "POST", "/Consent", content=b'{"resourceType": "Consent"}', headers=AUTH)
    assert (
        bad.status_code == 400
        and bad.json()["issue"][0]["details"]["coding"][0]["code"] == "policy.consent-invalid"
    )
    sent = consent((HKID, "K583726A"), "HKPMC")
    told = {**AUTH, "Prefer": "return=OperationOutcome"}
    made = call(app, "POST", "/Consent", content=dumps(sent), headers=told)
    assert made.status_code == 201  # a FHIR create (tests/api/test_consent_create.py)
    assert made.headers["location"] == "/Consent/consent-1/_history/1"
    assert made.headers["x-gateway-released"] == str(message)
    kept, released = made.json()["issue"]
    assert kept["details"]["coding"][0]["code"] == "policy.consent-kept"
    assert released["details"]["coding"][0]["code"] == "policy.released"
    assert released["details"]["text"] == (
        f"message {message}: held, now allow-with-changes (decision {decision + 1})"
    )
    found = call(
        app, "GET", "/Consent", params={"patient": f"{HKID}|K583726A"}, headers=AUTH
    ).json()
    assert found["total"] == 1 and found["entry"][0]["resource"]["id"] == "consent-1"
    assert found["entry"][0]["resource"]["meta"]["versionId"] == "1"
    gone = call(app, "POST", "/Consent/consent-1/$withdraw", headers=AUTH)
    assert gone.status_code == 200 and gone.json()["status"] == "inactive"
    assert gone.json()["meta"]["versionId"] == "2" and gone.headers["etag"] == 'W/"2"'

    bundle = (REPO / "examples" / "hl7v2" / "bundles" / "ref_i12_nsch_to_hkpmc.json").read_bytes()
    check = call(app, "POST", "/policy/check?to=HKPMC", content=bundle, headers=AUTH)
    assert check.status_code == 200 and check.json()["outcome"] == "hold"  # withdrawn: held again
    nobody = call(app, "POST", "/policy/check?to=NOWHERE", content=bundle, headers=AUTH)
    assert nobody.status_code == 400
