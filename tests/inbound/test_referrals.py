"""Referral status: a Task per referral received (focus = the ServiceRequest), accepted,
rejected (with a reason) or completed here through the API and the CLI; each new status
queued in the outbox for the sending gateway, whose own inbound stores it so the status
shows there too."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import orjson
import pytest

from gateway import Converter, Settings
from gateway.api import TokenSet, create_app
from gateway.delivery import Outbox
from gateway.inbound import Referrals
from gateway.partners import Partner
from gateway.signing import TrustStore, sign_bundle, verify_bundle
from gateway.store import open_store
from tests.api.test_app import Client
from tests.gateway_cli import run

from .conftest import (
    LOCAL,
    LOCAL_AUTH,
    MRN,
    NSCH_TOKEN,
    REFERRAL_SYSTEM,
    make_home,
    partner,
    record_sent,
    signer,
)

HKPMC_TOKEN = "hkpmc-partner-token-0123456789abcdef"
# NSCH's gateway as HKPMC knows it: one transaction per request (seeds/partners.yaml has
# NSCH's own FHIR server, which takes batches)
NSCH_GATEWAY = {"nsch": Partner("nsch", "http://nsch-gateway.example.cn/fhir")}
HKID = "https://fhir-gateway.example.org/sid/hkid"


def _to_gateway(client: Client) -> None:
    client.app.state.fhir.inbound().referrals.partners = lambda: NSCH_GATEWAY


def _receive(client: Client, signed_referral: bytes) -> dict[str, Any]:
    assert (
        client.post("/fhir", content=signed_referral, headers=partner(NSCH_TOKEN)).status_code
        == 200
    )
    tasks = client.get("/fhir/Task", headers=LOCAL_AUTH).json()["entry"]
    assert len(tasks) == 1
    task: dict[str, Any] = tasks[0]["resource"]
    return task


def _queued(settings: Settings, row: int) -> tuple[str, dict[str, Any]]:
    store = open_store(settings)
    try:
        outbox = Outbox(store)
        record = outbox.require(row)
        return record.partner, outbox.parts(row)[0]
    finally:
        store.close()


def test_a_received_referral_gets_a_requested_task(client: Client, signed_referral: bytes) -> None:
    task = _receive(client, signed_referral)
    assert task["status"] == "requested" and task["intent"] == "order"
    assert task["focus"]["identifier"] == {"system": REFERRAL_SYSTEM, "value": "REF20260618001"}
    sr = client.get(f"/fhir/{task['focus']['reference']}", headers=LOCAL_AUTH).json()
    assert sr["identifier"][0]["value"] == "REF20260618001"
    assert task["for"] == sr["subject"]
    assert task["owner"]["identifier"]["value"] == "urn:oid:1.3.6.1.4.1.99999.1.1"  # HKPMC
    assert task["identifier"][0] == {
        "system": "https://fhir.hkpmc.example.hk/sid/referral-task",
        "value": "NSCH-REF20260618001",
    }
    # sent again (the same referral in a new Bundle): still one Task
    found = client.get("/fhir/Task?status=requested", headers=LOCAL_AUTH).json()["entry"]
    assert len(found) == 1


def test_accept_then_complete_queues_each_status_for_the_sender(
    client: Client, hk_settings: Settings, signed_referral: bytes, pki: Path
) -> None:
    task = _receive(client, signed_referral)
    _to_gateway(client)
    complete_early = client.post(f"/fhir/Task/{task['id']}/$complete", headers=LOCAL_AUTH)
    assert complete_early.status_code == 409
    accepted = client.post(f"/fhir/Task/{task['id']}/$accept", headers=LOCAL_AUTH)
    assert accepted.status_code == 200, accepted.text
    assert accepted.json()["status"] == "accepted" and accepted.json()["meta"]["versionId"] == "2"
    row = int(accepted.headers["x-gateway-outbox"])
    to, bundle = _queued(hk_settings, row)
    assert to == "nsch"
    assert bundle["type"] == "transaction"
    sent = [e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Task"]
    assert len(sent) == 1 and sent[0]["status"] == "accepted"
    assert "reference" not in sent[0]["focus"]  # no patient data but the patient's MRN:
    assert sent[0]["for"] == {"type": "Patient",  # NSCH's own, not the HKID it also sent
                              "identifier": {"system": MRN[0], "value": MRN[1]}}  # fmt: skip
    types = {e["resource"]["resourceType"] for e in bundle["entry"]}
    assert types == {"Task", "Provenance"}  # signed by HKPMC's key
    assert verify_bundle(bundle, TrustStore.load(pki / "ca")).ok
    completed = client.post(f"/fhir/Task/{task['id']}/$complete", headers=LOCAL_AUTH)
    assert completed.status_code == 200 and completed.json()["status"] == "completed"
    second = int(completed.headers["x-gateway-outbox"])
    assert second > row
    # kept in order for the sender: one order key per referral
    store = open_store(hk_settings)
    try:
        keys = {Outbox(store).require(r).order_key for r in (row, second)}
    finally:
        store.close()
    assert keys == {f"referral|{REFERRAL_SYSTEM}|REF20260618001"}


def test_reject_needs_a_reason(
    client: Client, hk_settings: Settings, signed_referral: bytes
) -> None:
    task = _receive(client, signed_referral)
    no_reason = client.post(f"/fhir/Task/{task['id']}/$reject", headers=LOCAL_AUTH)
    assert no_reason.status_code == 400
    assert no_reason.json()["issue"][0]["details"]["coding"][0]["code"] == "inbound.reason-required"
    why = "本院心臟科暫無床位，請轉介其他醫院"
    reason = {"resourceType": "Parameters", "parameter": [{"name": "reason", "valueString": why}]}
    rejected = client.post(
        f"/fhir/Task/{task['id']}/$reject", content=orjson.dumps(reason), headers=LOCAL_AUTH
    )
    assert rejected.status_code == 200, rejected.text
    assert rejected.json()["statusReason"]["text"] == "本院心臟科暫無床位，請轉介其他醫院"
    _, bundle = _queued(hk_settings, int(rejected.headers["x-gateway-outbox"]))
    # NSCH's FHIR server takes batches: a signature could not cover the parts, so none
    assert [e["resource"]["resourceType"] for e in bundle["entry"]] == ["Task"]
    sent = bundle["entry"][0]["resource"]
    assert sent["status"] == "rejected" and sent["statusReason"]["text"].startswith("本院")
    again = client.post(f"/fhir/Task/{task['id']}/$accept", headers=LOCAL_AUTH)
    assert again.status_code == 409


def test_only_local_systems_change_a_status(client: Client, signed_referral: bytes) -> None:
    task = _receive(client, signed_referral)
    resp = client.post(f"/fhir/Task/{task['id']}/$accept", headers=partner(NSCH_TOKEN))
    assert resp.status_code == 401
    assert client.post("/fhir/Task/nothing/$accept", headers=LOCAL_AUTH).status_code == 404
    assert client.post(f"/fhir/Task/{task['id']}/$delete", headers=LOCAL_AUTH).status_code == 404


def test_a_cancelled_referral_cancels_its_task(
    client: Client, referral: dict[str, Any], signed_referral: bytes, pki: Path
) -> None:
    _receive(client, signed_referral)
    cancel = copy.deepcopy(referral)
    cancel["identifier"]["value"] = "NSCH20260619080000002"
    for entry in cancel["entry"]:
        if entry["resource"]["resourceType"] == "ServiceRequest":
            entry["resource"]["status"] = "revoked"
    body = orjson.dumps(sign_bundle(cancel, signer(pki, "nsch"), "author"))
    assert client.post("/fhir", content=body, headers=partner(NSCH_TOKEN)).status_code == 200
    tasks = client.get("/fhir/Task", headers=LOCAL_AUTH).json()["entry"]
    assert [t["resource"]["status"] for t in tasks] == ["cancelled"]


def test_the_status_shows_at_the_sending_gateway(
    tmp_path: Path,
    pki: Path,
    converter: Converter,
    client: Client,
    hk_settings: Settings,
    signed_referral: bytes,
) -> None:
    """HKPMC accepts; the queued Bundle is what HKPMC's deliverer POSTs to NSCH's gateway:
    NSCH's inbound verifies HKPMC's signature, stores the Task and lists the referral as
    sent, accepted."""
    task = _receive(client, signed_referral)
    _to_gateway(client)
    accepted = client.post(f"/fhir/Task/{task['id']}/$accept", headers=LOCAL_AUTH)
    _, bundle = _queued(hk_settings, int(accepted.headers["x-gateway-outbox"]))

    nsch = make_home(tmp_path / "nsch", pki, "nsch", {"hkpmc": HKPMC_TOKEN})
    store = open_store(nsch)  # the referral as NSCH's outbox sent it to HKPMC
    try:
        hkpmc = Partner("hkpmc", "http://hkpmc-gateway.example.hk/fhir")
        sent, _ = Outbox(store).enqueue(hkpmc, orjson.loads(signed_referral))
    finally:
        store.close()
    shown = run("outbox", "show", str(sent), "--json", home=nsch.home)
    assert orjson.loads(shown.stdout)["details"] == {"referral": "no status from hkpmc yet"}
    app = create_app(nsch, converter, TokenSet([LOCAL]))
    try:
        sender = Client(app)
        resp = sender.post("/fhir", content=orjson.dumps(bundle), headers=partner(HKPMC_TOKEN))
        assert resp.status_code == 200, resp.text
        query = "/fhir/Task?identifier=https://fhir.hkpmc.example.hk/sid/referral-task|NSCH-REF20260618001"
        seen = sender.get(query, headers=LOCAL_AUTH).json()["entry"]
        assert [t["resource"]["status"] for t in seen] == ["accepted"]
    finally:
        app.state.fhir.close()
    listed = run("referrals", "list", "--json", home=nsch.home)
    assert listed.returncode == 0, listed.stderr.decode()
    rows = orjson.loads(listed.stdout)
    assert [(r["direction"], r["partner"], r["status"]) for r in rows] == [
        ("sent", "hkpmc", "accepted")
    ]
    assert rows[0]["referral"] == f"{REFERRAL_SYSTEM}|REF20260618001"
    # ... and on the outbox record that carried the referral
    shown = run("outbox", "show", str(sent), "--json", home=nsch.home)
    assert shown.returncode == 0, shown.stderr.decode()
    assert orjson.loads(shown.stdout)["details"] == {"referral": "accepted at hkpmc"}
    text = run("outbox", "show", str(sent), home=nsch.home).stdout.decode()
    assert "referral: accepted at hkpmc" in text


def test_the_cli_lists_and_acts(
    client: Client, hk_settings: Settings, signed_referral: bytes
) -> None:
    task = _receive(client, signed_referral)
    client.app.state.fhir.close()
    done = run("referrals", "accept", "REF20260618001", "--json", home=hk_settings.home)
    assert done.returncode == 0, done.stderr.decode()
    shown = orjson.loads(done.stdout)
    assert shown["task"] == task["id"] and shown["status"] == "accepted"
    assert "queued for nsch" in shown["note"] and shown["outbox"] >= 1
    text = run("referrals", "list", home=hk_settings.home).stdout.decode()
    assert "received" in text and "REF20260618001" in text and "accepted" in text
    again = run("referrals", "notify", task["id"], home=hk_settings.home)
    assert again.returncode == 0 and b"queued for nsch" in again.stderr


def test_cli_errors(hk_settings: Settings, client: Client, signed_referral: bytes) -> None:
    _receive(client, signed_referral)
    client.app.state.fhir.close()
    missing = run("referrals", "accept", "REF-NONE", home=hk_settings.home)
    assert missing.returncode == 2 and b"inbound.referral-not-found" in missing.stderr
    no_reason = run("referrals", "reject", "REF20260618001", home=hk_settings.home)
    assert no_reason.returncode == 2  # argparse: --reason is required


@pytest.mark.parametrize("action", ["accept", "reject", "complete"])
def test_a_task_from_a_partner_is_not_ours_to_change(
    hk_settings: Settings, client: Client, action: str
) -> None:
    """NSCH's gateway keeps HKPMC's Task about NSCH's referral: it cannot accept it.
    (Here HKPMC receives NSCH's Task about the referral REF1 HKPMC sent to NSCH.)"""
    task_bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "identifier": {"system": "https://fhir.nsch.example.cn/sid/referral-status",
                       "value": "t-2"},
        "entry": [
            {
                "resource": {
                    "resourceType": "Task",
                    "identifier": [{"system": "https://fhir.nsch.example.cn/sid/referral-task",
                                    "value": "HKPMC-REF1"}],
                    "status": "requested",
                    "intent": "order",
                    "focus": {"type": "ServiceRequest",
                              "identifier": {"system": "https://fhir.hkpmc.example.hk/sid/referral",
                                             "value": "REF1"}},
                    "for": {"type": "Patient", "identifier": {"system": MRN[0], "value": MRN[1]}},
                },
                "request": {"method": "PUT", "url": "Task?identifier=https://fhir.nsch.example.cn/sid/referral-task|HKPMC-REF1"},
            }
        ],
    }  # fmt: skip
    record_sent(hk_settings, "nsch", ("https://fhir.hkpmc.example.hk/sid/referral", "REF1"))
    store = open_store(hk_settings)
    try:
        from gateway.inbound import Inbound, PartnerAuth

        answer = Inbound(hk_settings, store).receive(
            orjson.dumps(task_bundle), PartnerAuth("nsch", "bearer")
        )
        assert answer.status == 422  # NSCH signs: an unsigned Bundle is refused
        signed = sign_bundle(task_bundle, signer(Path(str(hk_settings.signing_keys)), "nsch"))
        answer = Inbound(hk_settings, store).receive(
            orjson.dumps(signed), PartnerAuth("nsch", "bearer")
        )
        assert answer.status == 200, answer.body
        referrals = Referrals(hk_settings, store)
        assert [r.direction for r in referrals.list()] == ["sent"]
        with pytest.raises(Exception, match="only the receiving side"):
            referrals.act(referrals.list()[0].task.logical_id, action, "理由")
    finally:
        store.close()


def _resend(
    client: Client, referral: dict[str, Any], pki: Path, subject: dict[str, Any] | None = None,
    patient: dict[str, Any] | None = None,
) -> Any:  # fmt: skip
    """The referral again in a new Bundle; its ServiceRequest's ``subject`` given more
    (merged into the reference to the Patient entry), or its Patient entry another."""
    bundle = copy.deepcopy(referral)
    bundle["identifier"]["value"] = "NSCH20260619080000003"
    for entry in bundle["entry"]:
        resource = entry["resource"]
        if resource["resourceType"] == "ServiceRequest" and subject is not None:
            resource["subject"] = {**resource["subject"], **subject}
        if resource["resourceType"] == "Patient" and patient is not None:
            entry["resource"] = {**resource, **patient}
            mrn = patient["identifier"][0]
            entry["request"]["ifNoneExist"] = f"identifier={mrn['system']}|{mrn['value']}"
    body = orjson.dumps(sign_bundle(bundle, signer(pki, "nsch"), "author"))
    return client.post("/fhir", content=body, headers=partner(NSCH_TOKEN))


@pytest.mark.parametrize(
    "added",
    [
        {"identifier": {"system": MRN[0], "value": "0098765"}},
        {"identifier": {"system": HKID, "value": "K583726A"}, "display": "许嘉玮"},
    ],
    ids=["its-mrn", "its-hkid-and-name"],
)
def test_a_resend_adding_the_patients_own_identifier_keeps_its_task(
    client: Client, referral: dict[str, Any], signed_referral: bytes, pki: Path,
    added: dict[str, Any],
) -> None:  # fmt: skip
    """The referral resent with its subject also naming the patient by one of the
    Patient's own identifiers (or its name): more about the same patient, not another
    one (it was 409 referral-mismatch: the subject differed from the Task's ``for``)."""
    task = _receive(client, signed_referral)
    resp = _resend(client, referral, pki, subject=added)
    assert resp.status_code == 200, resp.text
    tasks = client.get("/fhir/Task", headers=LOCAL_AUTH).json()["entry"]
    assert [t["resource"]["id"] for t in tasks] == [task["id"]]  # still its one Task
    sr = client.get(f"/fhir/{task['focus']['reference']}", headers=LOCAL_AUTH).json()
    assert sr["subject"]["reference"] == task["for"]["reference"]
    assert sr["subject"]["identifier"] == added["identifier"]  # the resend's, stored
    # and again with the other identifier beside it: the same patient still
    other = {"identifier": {"system": HKID, "value": "K583726A"}}
    assert _resend(client, referral, pki, subject=other).status_code == 200


def test_a_resend_for_another_patient_is_refused(
    client: Client, referral: dict[str, Any], signed_referral: bytes, pki: Path
) -> None:
    """The same referral number resent for another patient (its Patient entry 陈美玲):
    refused, nothing stored; the Task stays 许嘉玮's. Its diagnoses' conditions match
    许嘉玮's stored ones (nothing written: its ServiceRequest's ``reasonReference``
    would name his diagnoses): refused there first (422 identity-mismatch at the first
    diagnosis' condition), before the referral check's 409."""
    task = _receive(client, signed_referral)
    other = {
        "identifier": [
            {"system": MRN[0], "value": "0011111"},
            {"system": HKID, "value": "R123456A"},
        ],
        "name": [{"text": "陈美玲"}],
    }
    resp = _resend(client, referral, pki, patient=other)
    assert resp.status_code == 422, resp.text
    issue = resp.json()["issue"][0]
    assert issue["details"]["coding"][0]["code"] == "inbound.identity-mismatch"
    assert issue["expression"] == ["Bundle.entry[7].request.ifNoneExist"]
    assert "陈美玲" not in resp.text and "0011111" not in resp.text
    patients = client.get("/fhir/Patient", headers=LOCAL_AUTH).json()["entry"]
    assert len(patients) == 1  # nothing of the resend stored
    tasks = client.get("/fhir/Task", headers=LOCAL_AUTH).json()["entry"]
    assert [t["resource"]["for"] for t in tasks] == [task["for"]]


def test_a_mistyped_status_is_refused_not_an_empty_list(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`referrals list --status requestd` listed nothing with exit 0, which reads as "no
    referral waits for an answer"."""
    from gateway.cli import main

    with pytest.raises(SystemExit) as usage:
        main(["--home", str(tmp_path), "referrals", "list", "--status", "requestd"])
    err = capsys.readouterr().err
    assert usage.value.code == 2
    assert "invalid choice: 'requestd'" in err and "'requested'" in err
    assert main(["--home", str(tmp_path), "referrals", "list", "--status", "on-hold"]) == 0
