"""A referral's status reply crosses a boundary on a policy decision of its own.

HKPMC (Hong Kong) received NSCH's (Nansha, the mainland) referral and accepts it: the
status Bundle (a Task naming the referral and the patient by NSCH's MRN) went straight
into the outbox for NSCH, with no decision and no place in the transfer report. It is
now decided by the ``status_rules`` of mappings/policy/rules.yaml: on the demo rules it
goes back to its issuer (basis ``return-to-issuer``), recorded and counted in the
report; rules that refuse it hold its row (never sent, the reason in ``gateway
outbox``). Within one jurisdiction (NSGP → NSCH) it is queued as before."""

from __future__ import annotations

import datetime as dt
import shutil
from pathlib import Path
from typing import Any

import orjson
import pytest
import respx
import sqlalchemy as sa
import yaml

from gateway import Settings
from gateway.audit import audit_log, transfers
from gateway.cli import main
from gateway.datafiles import data_dir, load_data_file
from gateway.delivery import Deliverer, Outbox
from gateway.inbound import Inbound, PartnerAuth, Referrals
from gateway.network import Network
from gateway.partners import Partner
from gateway.policy import LEGAL_BASIS_SYSTEM, Policy, PolicyRecords
from gateway.signing import sign_bundle, trust_store, verify_bundle
from gateway.store import open_store
from tests.delivery.conftest import CONFIG, answer_checks, response

from .conftest import NSCH_TOKEN, counts, make_home, signer

NSCH = {"nsch": Partner("nsch", "http://nsch-gateway.example.cn/fhir")}
NSGP = {"nsgp": Partner("nsgp", "http://nsgp-gateway.example.cn/fhir")}
# NSCH's referral to HKPMC as NSGP's to NSCH: (from, to) in order, NSCH's bases and
# OID first set aside, then HKPMC's made NSCH's.
AS_NSGP = [
    (b"fhir.nsch.example.cn", b"@nsgp-base"),
    (b"urn:oid:2.16.156.10011.99.1.1", b"@nsgp-oid"),
    (b"fhir.hkpmc.example.hk", b"fhir.nsch.example.cn"),
    (b"urn:oid:1.3.6.1.4.1.99999.1.1", b"urn:oid:2.16.156.10011.99.1.1"),
    (b"@nsgp-base", b"fhir.nsgp.example.cn"),
    (b"@nsgp-oid", b"urn:oid:2.16.156.10011.99.1.2"),
]


def _cli(capsys: pytest.CaptureFixture[str], home: Path, *args: str) -> Any:
    code = main(["--home", str(home), *args])
    out = capsys.readouterr().out
    assert code == 0, out
    return orjson.loads(out)


def _accept(
    settings: Settings, body: bytes, sender: str, partners: dict[str, Partner]
) -> tuple[int | None, str]:
    """``sender``'s referral received here, then accepted: the status's outbox row and
    the note ``referrals accept`` prints."""
    store = open_store(settings)
    try:
        assert Inbound(settings, store).receive(body, PartnerAuth(sender, "bearer")).status == 200
        referrals = Referrals(settings, store, partners=lambda: partners)
        (task,) = referrals.list(direction="received")
        _, row, note = referrals.act(task.task.logical_id, "accept")
        return row, note
    finally:
        store.close()


def _row(settings: Settings, row: int) -> tuple[str, str | None, list[str]]:
    """An outbox row's state, last error and its events' reasons."""
    store = open_store(settings)
    try:
        outbox = Outbox(store)
        record = outbox.require(row)
        return record.state, record.last_error, [e.reason or "" for e in outbox.events(row)]
    finally:
        store.close()


def _policy_dir(
    tmp_path: Path, status_rules: list[dict[str, Any]], purpose: str = "referral"
) -> Path:
    """The demo policy files with ``status_rules`` and ``status_purpose`` as given."""
    out = tmp_path / "policy"
    shutil.copytree(data_dir("mappings") / "policy", out, dirs_exist_ok=True)
    rules = yaml.safe_load((out / "rules.yaml").read_text(encoding="utf-8"))
    rules["status_rules"] = status_rules
    rules["status_purpose"] = purpose
    (out / "rules.yaml").write_text(yaml.safe_dump(rules, allow_unicode=True), encoding="utf-8")
    load_data_file.cache_clear()  # read by path and kept: the CLI of a new process reads it
    return out


def _agreements(tmp_path: Path) -> Path:
    """The demo agreements, NSCH's with HKPMC covering referrals and second opinions
    only (not continuing care)."""
    agreements = yaml.safe_load((data_dir("seeds") / "agreements.yaml").read_text("utf-8"))
    for agreement in agreements["agreements"]:
        if agreement["id"] == "GBA-SC-2024-NSCH-HKPMC":
            agreement["purposes"] = ["referral", "second-opinion"]
    out = tmp_path / "agreements.yaml"
    out.write_text(yaml.safe_dump(agreements, allow_unicode=True), encoding="utf-8")
    return out


def _with(settings: Settings, lines: str) -> Settings:
    toml = settings.home / "gateway.toml"
    toml.write_text(toml.read_text() + lines)
    return Settings.load(home=settings.home, env={})


def test_a_cross_border_status_is_decided_and_counted_in_the_transfer_report(
    hk_settings: Settings, signed_referral: bytes, capsys: pytest.CaptureFixture[str]
) -> None:
    row, note = _accept(hk_settings, signed_referral, "nsch", NSCH)
    assert row is not None
    state, _, reasons = _row(hk_settings, row)
    assert state == "pending"  # sent: the demo rules let it back to its issuer
    assert "return-to-issuer" in note and "policy decision" in note
    assert "return-to-issuer" in reasons[0]
    home = hk_settings.home
    decisions = _cli(capsys, home, "policy", "decisions", "--json")
    assert [(d["recipient"], d["outcome"], d["basis"], d["purpose"]) for d in decisions] == [
        ("nsch", "allow", "return-to-issuer", "referral")
    ]
    assert [r["rule"] for r in decisions[0]["rules"]] == ["return-to-issuer"]
    # What leaves carries its basis, as a record's resources do; sent, it counts as so.
    store = open_store(hk_settings)
    try:
        outbox = Outbox(store)
        (task,) = [e["resource"] for p in outbox.parts(row) for e in p["entry"]
                   if e["resource"]["resourceType"] == "Task"]  # fmt: skip
        assert {"system": LEGAL_BASIS_SYSTEM, "code": "return-to-issuer"}.items() <= (
            task["meta"]["security"][0].items()
        )
        with respx.mock as nsch_api:
            answer_checks(nsch_api)
            nsch_api.post(NSCH["nsch"].base + "/").respond(200, json=response("200", "201"))
            with Deliverer(outbox, NSCH, CONFIG, audit=audit_log(store)) as deliverer:
                deliverer.run_once(limit=1)
        assert outbox.require(row).state == "delivered"
    finally:
        store.close()
    year = str(dt.datetime.now(dt.UTC).year)
    report = _cli(capsys, home, "audit", "transfers", "--year", year, "--format", "json")
    rows = [(r["partner"], r["basis"], r["records"], r["individuals"], r["delivered"])
            for r in report["rows"]]  # fmt: skip
    assert rows == [("nsch", "return-to-issuer", 1, 1, 1)]  # one status, one patient (MRN)
    assert report["rows"][0]["basis_name"]["en"].startswith("reply to the referring")


def test_status_rules_that_refuse_it_hold_the_row_with_the_reason(
    tmp_path: Path,
    hk_settings: Settings,
    signed_referral: bytes,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The privacy officer lets statuses cross only on an agreement that covers them,
    for continuing care; NSCH's agreement covers referrals only: held, not sent."""
    policy = _policy_dir(tmp_path, [{"id": "agreement", "kind": "agreement"}], "continuing-care")
    settings = _with(
        hk_settings,
        f'policy_dir = "{policy}"\npolicy_agreements = "{_agreements(tmp_path)}"\n',
    )
    row, note = _accept(settings, signed_referral, "nsch", NSCH)
    assert row is not None
    assert _row(settings, row)[:2] == ("held", "policy.status-held")
    assert "held for nsch, not sent" in note and "does not cover the purpose" in note
    shown = _cli(capsys, settings.home, "outbox", "show", str(row), "--json")
    assert shown["state"] == "held" and shown["last_error"] == "policy.status-held"
    assert any("does not cover the purpose" in (e["reason"] or "") for e in shown["events"])
    decisions = _cli(capsys, settings.home, "policy", "decisions", "--json")
    assert [(d["outcome"], d["basis"]) for d in decisions] == [("deny", None)]
    year = str(dt.datetime.now(dt.UTC).year)
    report = _cli(capsys, settings.home, "audit", "transfers", "--year", year, "--format", "json")
    assert report["rows"] == []  # nothing crossed
    # A person cannot push it through: released, it is decided again and still refused.
    release = ["--home", str(settings.home), "outbox", "release", str(row), "--reason"]
    assert main([*release, "x"]) != 0
    assert _row(settings, row)[0] == "held"
    # The rules mended (statuses go back to their issuer): the release sends it.
    _policy_dir(tmp_path, [{"id": "return-to-issuer", "kind": "return-to-issuer",
                            "params": {"basis": "return-to-issuer"}}])  # fmt: skip
    assert main([*release, "the rules mended"]) == 0
    capsys.readouterr()
    assert _row(settings, row)[:2] == ("pending", None)
    decisions = _cli(capsys, settings.home, "policy", "decisions", "--json")
    assert sorted((d["outcome"], d["basis"]) for d in decisions) == [
        ("allow", "return-to-issuer"),
        ("deny", None),
    ]


def test_a_status_within_one_jurisdiction_is_queued_as_before(
    tmp_path: Path, pki: Path, referral: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    """NSGP (Nansha) refers to NSCH (Nansha): no boundary, no decision, queued."""
    text = orjson.dumps(referral)
    for one, other in AS_NSGP:
        text = text.replace(one, other)
    nsgp_referral = orjson.loads(text)
    body = orjson.dumps(sign_bundle(nsgp_referral, signer(pki, "nsgp"), "author"))
    settings = make_home(tmp_path / "nsch", pki, "nsch", {"nsgp": NSCH_TOKEN})
    row, note = _accept(settings, body, "nsgp", NSGP)
    assert row is not None
    assert _row(settings, row)[:2] == ("pending", None)
    assert note == f"status accepted queued for nsgp (outbox {row})"
    assert _cli(capsys, settings.home, "policy", "decisions", "--json") == []


def test_a_retry_of_a_cross_border_status_is_decided_again(
    tmp_path: Path,
    hk_settings: Settings,
    signed_referral: bytes,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Its send failed for good (dead); the rules changed meanwhile (statuses only on an
    agreement for continuing care, which NSCH's does not cover): a retry is refused and
    nothing moves, as a record's would be. The rules mended, the retry goes, decided."""
    policy = _policy_dir(tmp_path, [{"id": "return-to-issuer", "kind": "return-to-issuer",
                                     "params": {"basis": "return-to-issuer"}}])  # fmt: skip
    settings = _with(
        hk_settings, f'policy_dir = "{policy}"\npolicy_agreements = "{_agreements(tmp_path)}"\n'
    )
    row, _ = _accept(settings, signed_referral, "nsch", NSCH)
    assert row is not None
    _refused_once(settings, row)
    _policy_dir(tmp_path, [{"id": "agreement", "kind": "agreement"}], "continuing-care")
    retry = ["--home", str(settings.home), "outbox", "retry", str(row), "--reason"]
    assert main([*retry, "partner fixed"]) != 0
    assert "does not cover the purpose" in capsys.readouterr().err
    assert _row(settings, row)[0] == "dead"
    assert len(_cli(capsys, settings.home, "policy", "decisions", "--json")) == 1
    _policy_dir(tmp_path, [{"id": "return-to-issuer", "kind": "return-to-issuer",
                            "params": {"basis": "return-to-issuer"}}])  # fmt: skip
    assert main([*retry, "partner fixed"]) == 0
    capsys.readouterr()
    state, _, reasons = _row(settings, row)
    assert state == "pending" and "allow on return-to-issuer" in reasons[-1]
    decisions = _cli(capsys, settings.home, "policy", "decisions", "--json")
    assert [d["basis"] for d in decisions] == ["return-to-issuer", "return-to-issuer"]


def _deliver(settings: Settings, row: int) -> list[dict[str, Any]]:
    """Send ``row`` to NSCH (accepted); the Bundles NSCH received."""
    store = open_store(settings)
    try:
        outbox = Outbox(store)
        with respx.mock as nsch_api:
            answer_checks(nsch_api)
            sent = nsch_api.post(NSCH["nsch"].base + "/").respond(200, json=response("200", "201"))
            with Deliverer(outbox, NSCH, CONFIG, audit=audit_log(store)) as deliverer:
                deliverer.run_once(limit=1)
        assert outbox.require(row).state == "delivered"
        return [orjson.loads(call.request.content) for call in sent.calls]
    finally:
        store.close()


def _audit_kinds(store: Any) -> list[str]:
    """The kinds of the audit log's entries, in order."""
    from gateway.audit._tables import entries

    with store.engine.connect() as conn:
        return [str(k) for (k,) in conn.execute(sa.select(entries.c.kind).order_by(entries.c.idx))]


def _nsch_gateway(settings: Settings) -> Settings:
    """NSCH configured here as ``NSCH`` (its gateway, one transaction: signed), for the
    CLI too (the demo's NSCH is a FHIR server taking batches, to which nothing is
    signed)."""
    nsch = {"base": NSCH["nsch"].base, "write": "transaction", "max_entries": 20}
    (settings.home / "partners.yaml").write_text(yaml.safe_dump({"partners": {"nsch": nsch}}))
    return settings


def _labels_and_signature(settings: Settings, bundle: dict[str, Any]) -> tuple[list[str], bool]:
    """The basis labels of ``bundle``'s Task and whether its signature verifies."""
    (task,) = [e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Task"]
    bases = [
        label["code"]
        for label in (task.get("meta") or {}).get("security") or []
        if label["system"] == LEGAL_BASIS_SYSTEM
    ]
    report = verify_bundle(bundle, trust_store(settings))
    return bases, bool(report.signatures) and report.ok


def test_a_held_status_released_leaves_labelled_and_signed_again(
    tmp_path: Path,
    hk_settings: Settings,
    signed_referral: bytes,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Held (the rules let statuses cross only for continuing care), then the rules
    mended and released: what NSCH receives carries the basis of the decision that let
    it go, under a signature that covers it, and the report counts its delivery under
    that basis, not under none. It is the same row (a notify again finds it)."""
    policy = _policy_dir(tmp_path, [{"id": "agreement", "kind": "agreement"}], "continuing-care")
    settings = _with(
        _nsch_gateway(hk_settings),
        f'policy_dir = "{policy}"\npolicy_agreements = "{_agreements(tmp_path)}"\n',
    )
    row, _ = _accept(settings, signed_referral, "nsch", NSCH)
    assert row is not None and _row(settings, row)[0] == "held"
    _policy_dir(tmp_path, [{"id": "return-to-issuer", "kind": "return-to-issuer",
                            "params": {"basis": "return-to-issuer"}}])  # fmt: skip
    release = ["--home", str(settings.home), "outbox", "release", str(row), "--reason"]
    assert main([*release, "the rules mended"]) == 0
    capsys.readouterr()
    (sent,) = _deliver(settings, row)
    assert _labels_and_signature(settings, sent) == (["return-to-issuer"], True)
    year = str(dt.datetime.now(dt.UTC).year)
    report = _cli(capsys, settings.home, "audit", "transfers", "--year", year, "--format", "json")
    rows = [(r["partner"], r["basis"], r["records"], r["delivered"]) for r in report["rows"]]
    assert rows == [("nsch", "return-to-issuer", 1, 1)]
    # The log holds every step (held, released, delivered) and is intact.
    assert main(["--home", str(settings.home), "audit", "verify"]) == 0
    store = open_store(settings)
    try:
        kinds = _audit_kinds(store)
    finally:
        store.close()
    assert [k for k in kinds if k in ("policy-decision", "operator", "delivery")] == [
        "policy-decision",  # held
        "policy-decision",  # released: allowed
        "operator",  # the release
        "delivery",
    ]
    # Nothing twice: the status notified again is this row, not a second one.
    store = open_store(settings)
    try:
        referrals = Referrals(settings, store, partners=lambda: NSCH)
        (task,) = referrals.list(direction="received")
        again, note = referrals.notify(task)
        assert again == row and "already delivered" in note
    finally:
        store.close()
    # Replayed, it is sent again made under a decision of today: one status, one
    # record in the report, delivered twice.
    replay = ["--home", str(settings.home), "outbox", "replay", str(row), "--reason", "lost"]
    assert main([*replay, "--json"]) == 0
    (replayed,) = [r["id"] for r in orjson.loads(capsys.readouterr().out)]
    (sent,) = _deliver(settings, replayed)
    assert _labels_and_signature(settings, sent) == (["return-to-issuer"], True)
    report = _cli(capsys, settings.home, "audit", "transfers", "--year", year, "--format", "json")
    rows = [(r["partner"], r["basis"], r["records"], r["delivered"]) for r in report["rows"]]
    assert rows == [("nsch", "return-to-issuer", 1, 2)]


def test_a_retried_status_is_labelled_with_todays_decision(
    tmp_path: Path, hk_settings: Settings, signed_referral: bytes
) -> None:
    """Queued on return-to-issuer, dead; the privacy officer then lets statuses cross on
    the agreement only (it covers referrals): the retry leaves labelled with the
    agreement's basis (today's), not return-to-issuer, under a new signature."""
    settings = _with(_nsch_gateway(hk_settings), f'policy_agreements = "{_agreements(tmp_path)}"\n')
    row, _ = _accept(settings, signed_referral, "nsch", NSCH)
    assert row is not None
    _refused_once(settings, row)
    policy = _policy_dir(tmp_path, [{"id": "agreement", "kind": "agreement"}])
    settings = _with(settings, f'policy_dir = "{policy}"\n')
    retry = ["--home", str(settings.home), "outbox", "retry", str(row), "--reason", "fixed"]
    assert main(retry) == 0
    (sent,) = _deliver(settings, row)
    assert _labels_and_signature(settings, sent) == (["gba-standard-contract"], True)
    # One status, one record: today's decision supersedes the one it was first sent on.
    store = open_store(settings)
    try:
        report = transfers(store, dt.datetime.now(dt.UTC).year)
    finally:
        store.close()
    assert [(r.partner, r.basis, len(r.records), r.delivered) for r in report] == [
        ("nsch", "gba-standard-contract", 1, 1)
    ]


def test_a_held_status_is_not_released_by_the_records_rules(
    tmp_path: Path, hk_settings: Settings, referral: dict[str, Any], pki: Path
) -> None:
    """The patient is known here by an HKID only: the status is held (return-to-issuer).
    A consent arriving decides the held records again by the records' rules: those
    (here: no consent rule) would allow a Task on the GBA contract, recording a
    transfer that never happened while its row stays held. The status is not theirs:
    only `outbox release`, by status_rules, decides it again."""
    bundle = orjson.loads(orjson.dumps(referral))
    for entry in bundle["entry"]:
        patient = entry["resource"]
        if patient["resourceType"] == "Patient":
            patient["identifier"] = [i for i in patient["identifier"] if "hkid" in i["system"]]
            (hkid,) = patient["identifier"]
            entry["request"]["ifNoneExist"] = f"identifier={hkid['system']}|{hkid['value']}"
    body = orjson.dumps(sign_bundle(bundle, signer(pki, "nsch"), "author"))
    policy = tmp_path / "policy"
    shutil.copytree(data_dir("mappings") / "policy", policy, dirs_exist_ok=True)
    rules = yaml.safe_load((policy / "rules.yaml").read_text(encoding="utf-8"))
    rules["rules"] = [r for r in rules["rules"] if r["kind"] != "consent"]
    (policy / "rules.yaml").write_text(yaml.safe_dump(rules, allow_unicode=True), "utf-8")
    load_data_file.cache_clear()
    settings = _with(hk_settings, f'policy_dir = "{policy}"\n')
    row, note = _accept(settings, body, "nsch", NSCH)
    assert row is not None and "hkid" in note and _row(settings, row)[0] == "held"
    store = open_store(settings)
    try:
        records = PolicyRecords(store, Policy(settings, Network.load(settings.network)))
        assert records.release_held() == []
        assert [(d.outcome, d.basis) for d in records.find()] == [("hold", None)]
        assert transfers(store, dt.datetime.now(dt.UTC).year) == []
    finally:
        store.close()


def test_a_referral_naming_another_patient_beside_its_own_is_refused(
    hk_settings: Settings, referral: dict[str, Any], pki: Path
) -> None:
    """NSCH's referral names its patient by reference (the Bundle's Patient, MRN
    0098765) and, beside it, by another MRN of NSCH's (another patient's, a mistake).
    One record would carry two patients: the referral is refused whole (422
    ``inbound.identity-mismatch`` naming the element), so no Task is opened and no
    status can go back naming that other number."""
    bundle = orjson.loads(orjson.dumps(referral))
    (n, sr) = next((n, e["resource"]) for n, e in enumerate(bundle["entry"])
                   if e["resource"]["resourceType"] == "ServiceRequest")  # fmt: skip
    other = {"system": "https://fhir.nsch.example.cn/sid/mrn", "value": "0011111"}
    sr["subject"] = {**sr["subject"], "identifier": other}
    body = orjson.dumps(sign_bundle(bundle, signer(pki, "nsch"), "author"))
    store = open_store(hk_settings)
    try:
        answer = Inbound(hk_settings, store).receive(body, PartnerAuth("nsch", "bearer"))
        assert answer.status == 422, answer.body
        (issue,) = answer.body["issue"]
        assert issue["details"]["coding"][0]["code"] == "inbound.identity-mismatch"
        assert issue["expression"] == [f"Bundle.entry[{n}].resource.subject.identifier"]
        assert "0011111" not in orjson.dumps(answer.body).decode()
        assert Referrals(hk_settings, store).list() == []
    finally:
        store.close()
    assert counts(hk_settings)["inbound_resources"] == 0


def _refused_once(settings: Settings, row: int) -> None:
    """NSCH refuses the row's send (400): the row is dead, for a retry to decide again."""
    store = open_store(settings)
    try:
        outbox = Outbox(store)
        with respx.mock as nsch_api:
            answer_checks(nsch_api)
            refused = {"resourceType": "OperationOutcome", "issue": []}
            nsch_api.post(NSCH["nsch"].base + "/").respond(400, json=refused)
            with Deliverer(outbox, NSCH, CONFIG) as deliverer:
                deliverer.run_once(limit=1)
        assert outbox.require(row).state == "dead"
    finally:
        store.close()
