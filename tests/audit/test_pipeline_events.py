"""The audit trail wired into the stages: a referral and a report run store → convert
→ outbound (policy, signing) → delivery (to a mocked partner), a message that does not
convert stops at validation; each leaves the expected ordered AuditEvents, with the
right agents, entities and outcomes, each valid against the gateway's AuditEvent
profiles, and ``gateway audit verify`` finds the log intact."""

from __future__ import annotations

import dataclasses
import logging
import random
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import respx

from gateway import Converter, Settings, validation
from gateway.audit import PSEUDONYM, AuditLog, store_hook
from gateway.audit._events import BASIS_EXTENSION, FACILITY, keys_of
from gateway.cli import main
from gateway.delivery import Deliverer, DeliveryConfig, Outbound
from gateway.intake.hl7v2 import split_messages
from gateway.policy import PolicyRecords
from gateway.processing import process_message
from gateway.signing import make_demo_pki
from gateway.store import Incoming, Store, open_store
from tests.conftest import REPO
from tests.delivery.conftest import answer_checks, response
from tests.policy.conftest import HKID, consent

NJMU2 = "https://fhir.njmu2.example.cn/fhir/"
HKPMC = "https://fhir.hkpmc.example.hk/fhir/R4/"
FAST = DeliveryConfig(backoff_base=0.01, backoff_cap=0.01, max_attempts=4)
MESSAGE = "https://fhir-gateway.example.org/sid/stored-message"


@pytest.fixture
def home(tmp_path: Path) -> Settings:
    settings = Settings.load(home=tmp_path, env={})
    make_demo_pki(settings.network, tmp_path / "keys", "EdDSA")
    return dataclasses.replace(
        settings,
        signing_keys=tmp_path / "keys",
        signing_rules="LAX2/REF^I12=lax2;NSCH/ORU^R01=nsch",
        audit_key="nsch",
        delivery_reference_wait=0.0,  # the report does not wait for the order it names
    )


@pytest.fixture
def store(home: Settings) -> Iterator[Store]:
    opened = open_store(home)
    yield opened
    opened.close()


def receive(store: Store, outbound: Outbound, raw: bytes) -> int:
    receipt = store.receive(Incoming(raw, "cli"))
    audit = store_hook(outbound.audit, channel="cli")
    process_message(store, Converter(outbound.settings), receipt.id, audit=audit)
    return receipt.id


def of_message(log: AuditLog, message_id: int) -> list[dict[str, Any]]:
    """The events naming the stored message, in the log's order."""
    ident = {"system": MESSAGE, "value": str(message_id)}
    return [
        e.resource()
        for e in log.rows()
        if any((x.get("what") or {}).get("identifier") == ident for x in e.resource()["entity"])
    ]


def kinds(events: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return [(keys_of(e)[0], e["outcome"]) for e in events]


def patient_of(event: dict[str, Any]) -> str | None:
    return keys_of(event)[2]


def agent(event: dict[str, Any], code: str) -> dict[str, Any]:
    return next(
        a
        for a in event["agent"]
        if code in [c.get("code") for c in (a.get("type") or {}).get("coding", [])]
        or code in [c.get("code") for r in a.get("role") or [] for c in r.get("coding", [])]
    )


def who(event: dict[str, Any], code: str | None) -> str:
    """The identifier of the agent of that type (None: the requestor)."""
    found = agent(event, code) if code else next(a for a in event["agent"] if a["requestor"])
    return str(found["who"]["identifier"]["value"])


def details(event: dict[str, Any]) -> dict[str, str]:
    return {d["type"]: d["valueString"] for x in event["entity"] for d in x.get("detail") or []}


def basis(event: dict[str, Any]) -> str | None:
    for ext in event.get("extension") or []:
        if ext["url"] == BASIS_EXTENSION:
            return next(e["valueCoding"]["code"] for e in ext["extension"] if e["url"] == "basis")
    return None


def errors(event: dict[str, Any]) -> list[str]:
    return [
        i.line()
        for i in validation.validate_resource(event, all_issues=True)
        if i.severity in ("error", "fatal")
    ]


def deliver(outbound: Outbound, log: AuditLog) -> None:
    """NJMU2 is down once (503), then takes everything; HKPMC takes everything."""
    calls = {"njmu2": 0}

    def njmu2(request: Any) -> Any:
        calls["njmu2"] += 1
        if calls["njmu2"] == 1:
            return respx.MockResponse(503)
        body = orjson.loads(request.content)
        return respx.MockResponse(200, json=response(*["201"] * len(body["entry"])))

    def hkpmc(request: Any) -> Any:
        body = orjson.loads(request.content)
        return respx.MockResponse(200, json=response(*["201"] * len(body["entry"])))

    with respx.mock(assert_all_mocked=True) as partner:
        answer_checks(partner)
        partner.post(NJMU2).mock(side_effect=njmu2)
        partner.post(HKPMC).mock(side_effect=hkpmc)
        with Deliverer(
            outbound.outbox, outbound.partners, FAST, rng=random.Random(1), audit=log
        ) as worker:
            for _ in range(200):  # until every row is delivered (backoff is 10 ms)
                worker.run_once()
                if all(r.state == "delivered" for r in outbound.outbox.records()):
                    break
                time.sleep(0.01)
    assert {r.state for r in outbound.outbox.records()} == {"delivered"}


def test_referral_report_and_failure_leave_their_events_in_order(
    home: Settings, store: Store, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    outbound = Outbound(home, store)
    assert outbound.audit is not None
    log = outbound.audit
    referral = receive(
        store, outbound, (REPO / "examples/hl7v2/ref_i12_lax2_to_njmu2.hl7").read_bytes()
    )
    report = receive(
        store, outbound, (REPO / "examples/imaging/oru_r01_nsch_cta_zh.hl7").read_bytes()
    )
    batch = split_messages((REPO / "examples/hl7v2/batch_mixed.hl7").read_bytes())
    failed = receive(store, outbound, batch[1].data)  # no PID-3: mapping.no-identity
    assert outbound.process(referral).state == "queued"
    assert outbound.process(report).state == "held"  # no consent to Hong Kong yet
    records = PolicyRecords(store, outbound.policy.policy)
    records.import_consent(
        consent(
            (HKID, "K583726A"), "HKPMC", ("second-opinion",), start="2026-01-01", end="2099-12-31"
        ),
        operator="ops-陳",
    )
    assert [r.state for r in outbound.recheck_held()] == ["pending"]
    deliver(outbound, log)

    # The referral: received, converted, allowed, signed, a failed send, a good one.
    ref = of_message(log, referral)
    assert kinds(ref) == [
        ("received", "0"),
        ("converted", "0"),
        ("policy-decision", "0"),
        ("signed", "0"),
        ("delivery", "8"),
        ("delivery", "0"),
    ]
    patient = patient_of(ref[0])
    assert patient is not None and patient.startswith("Patient/")
    assert [patient_of(e) for e in ref] == [patient, patient, patient_of(ref[2]), *[patient] * 3]
    assert (patient_of(ref[2]) or "").startswith(PSEUDONYM + "|")  # the policy's pseudonym
    assert agent(ref[0], "110153")["who"]["identifier"] == {"system": FACILITY, "value": "LAX2"}
    assert (who(ref[2], "110153"), who(ref[2], "110152"), ref[2]["outcomeDesc"]) == (
        "lax2",
        "njmu2",
        "allow",
    )
    assert basis(ref[2]) == "domestic"
    assert who(ref[3], "AUT") == "来安县第二人民医院"  # the key that signed it
    assert [who(e, "110152") for e in ref[4:]] == ["njmu2"] * 2
    assert [basis(e) for e in ref[4:]] == ["domestic"] * 2
    assert [details(e) for e in ref[4:]] == [
        {"attempt": "1", "http-status": "503"},
        {"attempt": "2", "http-status": "200"},
    ]
    # The report: held for consent, then allowed once the patient consented.
    rep = of_message(log, report)
    assert kinds(rep) == [
        ("received", "0"),
        ("converted", "0"),
        ("policy-decision", "4"),  # held: a minor failure
        # Decided again once, by the outbound path as it fills the held row (the
        # consent import leaves an outbox row's hold to that path).
        ("policy-decision", "0"),
        ("signed", "0"),
        ("delivery", "0"),
    ]
    assert [e["outcomeDesc"] for e in rep[2:4]] == ["hold", "allow-with-changes"]
    assert who(rep[4], "AUT") != who(ref[3], "AUT")  # Nansha's key, not Lai'an's
    assert who(rep[5], "110152") == "hkpmc"
    assert basis(rep[5]) == basis(rep[3]) not in (None, "domestic")  # cross-border: its basis
    assert details(rep[5]) == {"attempt": "1", "http-status": "200"}
    assert patient_of(rep[4]) == patient_of(rep[5]) == patient_of(rep[0])
    # The consent import: by whom, for the pseudonymised patient the decisions name.
    [change] = [e.resource() for e in log.rows() if e.kind == "consent"]
    assert (who(change, None), change["outcomeDesc"]) == ("ops-陳", "active")
    held = outbound.policy.find(message_id=report)[0]
    assert (patient_of(change) or "").removeprefix(PSEUDONYM + "|") in held.patients
    # The message that did not convert: received, then the first error's code.
    bad = of_message(log, failed)
    assert kinds(bad) == [("received", "0"), ("validation-failed", "8")]
    assert bad[1]["outcomeDesc"] == "mapping.no-identity"

    everything = [e.resource() for e in log.rows()]
    assert len(everything) == len(ref) + len(rep) + len(bad) + 1
    for event in everything:
        assert errors(event) == [], keys_of(event)[0]
    text = orjson.dumps(everything).decode()
    for name in ("K583726A", "王", "陳大文", "0012345"):  # no identifier, no name
        assert name not in text

    code = main(["--home", str(tmp_path), "audit", "verify"])
    out = capsys.readouterr()
    assert code == 0, out


def test_an_audit_write_failure_is_logged_and_counted_never_fails_the_record(
    home: Settings, store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    outbound = Outbound(home, store)
    assert outbound.audit is not None
    with store.engine.begin() as conn:  # the log's table is gone: every append fails
        conn.exec_driver_sql("ALTER TABLE audit_entries RENAME TO audit_entries_gone")
    with caplog.at_level(logging.ERROR, "gateway.audit"):
        message = receive(
            store, outbound, (REPO / "examples/hl7v2/ref_i12_lax2_to_njmu2.hl7").read_bytes()
        )
    assert store.state_of(message) == "converted"  # the outcome committed
    assert outbound.audit.failures == 1
    [line] = [r.getMessage() for r in caplog.records if r.name == "gateway.audit"]
    assert line.startswith("audit.write-failed: 2 AuditEvent(s) (converted,received)")
    assert "0012345" not in line and "LAX2" not in line


def test_audit_enabled_off_records_nothing(home: Settings, store: Store) -> None:
    off = dataclasses.replace(home, audit_enabled=False)
    outbound = Outbound(off, store)
    assert outbound.audit is None and outbound.policy.audit is None
    message = receive(
        store, outbound, (REPO / "examples/hl7v2/ref_i12_lax2_to_njmu2.hl7").read_bytes()
    )
    outbound.process(message)
    assert AuditLog(store).size() == 0
