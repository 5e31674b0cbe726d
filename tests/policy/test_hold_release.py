"""The held-record story: a mainland → Hong Kong referral without consent is held (its
reason shown), released to the outbox once a matching consent is imported, and after
the consent is withdrawn the next referral is held again."""

from __future__ import annotations

from pathlib import Path

from gateway import Converter
from gateway.policy import Policy, PolicyRecords
from gateway.processing import process_message
from gateway.store import Incoming, Store

from .conftest import HKID, NOW, REPO, consent


def _received(store: Store, converter: Converter, name: str, control_id: bytes = b"") -> int:
    raw = (REPO / "examples" / "hl7v2" / name).read_bytes()
    if control_id:  # another referral of the same patient: a message of its own
        raw = raw.replace(b"NSCH20260618143000017", control_id)
    receipt = store.receive(Incoming(raw, "cli"))
    process_message(store, converter, receipt.id)
    return receipt.id


def test_held_released_on_consent_held_again_after_withdrawal(
    store: Store, converter: Converter, policy: Policy
) -> None:
    records = PolicyRecords(store, policy)
    message = _received(store, converter, "ref_i12_nsch_to_hkpmc.hl7")
    bundle = store.get(message).outcomes[-1].output  # type: ignore[union-attr]
    assert bundle is not None

    held = records.apply(message, bundle, "NSCH", "HKPMC", now=NOW)
    assert held.outcome == "hold"
    assert store.state_of(message) == "held"
    shown = records.find(message_id=message)[0]
    consent_rule = next(r for r in shown.results if r.rule == "consent")
    assert consent_rule.outcome == "hold"
    assert "no separate consent" in consent_rule.reason["en"]
    assert "未找到患者" in consent_rule.reason["zh-Hans"]
    stored = store.get(message)
    assert stored is not None and stored.outcomes[-1].stage == "policy"
    assert stored.outcomes[-1].output is None  # nothing leaves while held

    # A consent for another purpose releases nothing; the matching one releases it.
    _, none = records.import_consent(
        consent((HKID, "K583726A"), "HKPMC", ("second-opinion",), ident="c-other"), now=NOW
    )
    assert none == [] and store.state_of(message) == "held"
    _, released = records.import_consent(consent((HKID, "K583726A"), "HKPMC"), now=NOW)
    assert [r.message_id for r in released] == [message]
    assert released[0].decision.outcome == "allow-with-changes"
    assert store.state_of(message) == "outbox"
    out = store.get(message).outcomes[-1]  # type: ignore[union-attr]
    assert out.stage == "policy" and out.output is not None and b"K583726A" not in out.output

    # Withdrawn: the next referral of the patient is held again.
    withdrawn = records.withdraw("consent-1")
    assert withdrawn.status == "inactive"
    again = _received(store, converter, "ref_i12_nsch_to_hkpmc.hl7", b"NSCH20260618150000018")
    assert again != message
    next_bundle = store.get(again).outcomes[-1].output  # type: ignore[union-attr]
    assert next_bundle is not None
    decision = records.apply(again, next_bundle, "NSCH", "HKPMC", now=NOW)
    assert decision.outcome == "hold" and store.state_of(again) == "held"
    assert store.state_of(message) == "outbox"  # the one released stays released
    assert [c.status for c in records.list_consents()] == ["active", "inactive"]


def test_a_referral_held_without_a_message_is_released_too(
    tmp_path: Path, store: Store, policy: Policy, bundles: dict[str, bytes]
) -> None:
    records = PolicyRecords(store, policy)
    decision = records.apply(None, bundles["ref_i12_nsch_to_hkpmc"], "NSCH", "HKPMC", now=NOW)
    assert decision.outcome == "hold"
    _, released = records.import_consent(consent((HKID, "K583726A"), "HKPMC"), now=NOW)
    assert len(released) == 1 and released[0].decision.allowed
    assert records.find(outcome="hold") == []


def test_the_converters_bundle_held_is_kept_as_its_json_and_released(
    store: Store, converter: Converter, policy: Policy
) -> None:
    # The outbound path hands the stage the converter's Bundle and its JSON: a held record
    # keeps that JSON (no second serialisation) and is decided again from it.
    record = converter.convert(
        (REPO / "examples" / "hl7v2" / "ref_i12_nsch_to_hkpmc.hl7").read_bytes()
    )[0]
    assert record.mapped is not None and record.bundle_json is not None
    records = PolicyRecords(store, policy)
    held = records.apply(None, record.mapped, "NSCH", "HKPMC", now=NOW, text=record.bundle_json)
    assert held.outcome == "hold"
    _, released = records.import_consent(consent((HKID, "K583726A"), "HKPMC"), now=NOW)
    assert len(released) == 1 and released[0].decision.outcome == "allow-with-changes"
    again = policy.decide(record.bundle_json, "NSCH", "HKPMC", consents=records, now=NOW)
    assert released[0].decision.bundle_json == again.bundle_json
