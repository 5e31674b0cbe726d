"""A record queued on a consent, held because its partner left the partners' files
(delivery.unknown-partner), never sent. The partner configured again, the worker
returns such rows to the queue by itself (Outbox.release_known): a never-sent one is
decided again first, as a person's release of it is, so a consent that expired during
the hold never lets it cross (docs/delivery.md, "States")."""

from __future__ import annotations

import random
from datetime import UTC, datetime, tzinfo
from typing import Any

import orjson
import pytest
import respx

from gateway import Converter, Settings
from gateway.audit import AuditLog
from gateway.delivery import Deliverer, DeliveryService, Outbound, OutboxRecord
from gateway.errors import GatewayError
from gateway.policy import PolicyRecords, _engine
from gateway.store import Store, metadata
from tests.delivery import conftest as delivery
from tests.delivery.conftest import answer_checks, receive, response

from .conftest import HKID, NOW, consent
from .test_adversarial_withdrawal import FAST, HKPMC

home, store, outbound = delivery.home, delivery.home_store, delivery.outbound
UNKNOWN = "delivery.unknown-partner"
REFUSED = "delivery.return-refused"
outcomes = metadata.tables["outcomes"]


def _queued(store: Store, converter: Converter, outbound: Outbound, end: str) -> OutboxRecord:
    """A referral to Hong Kong held for a consent, queued on one that ends at ``end``,
    then held because hkpmc was not configured when the worker took it."""
    message = receive(store, converter, "hl7v2/ref_i12_nsch_to_hkpmc.hl7")
    [placed] = outbound.process(message).placed
    assert (placed.partner, placed.outcome) == ("hkpmc", "held")
    records = PolicyRecords(store, outbound.policy.policy)
    records.import_consent(consent((HKID, "K583726A"), "HKPMC", start="2026-01-01", end=end))
    [row] = outbound.recheck_held()
    assert row.state == "pending"
    with Deliverer(outbound.outbox, {}, FAST, rng=random.Random(1)) as without:
        without.run_once()
    held = outbound.outbox.require(row.id)
    assert (held.state, held.last_error, held.part) == ("held", UNKNOWN, 0)
    return held


def _partner_back(home: Settings, store: Store, outbound: Outbound) -> list[bytes]:
    """hkpmc configured: the service's own worker (as `gateway serve` and `gateway work`
    make it) runs against a partner that takes everything; what it got."""
    sent: list[bytes] = []
    with respx.mock(assert_all_mocked=True, assert_all_called=False) as partner:
        answer_checks(partner)

        def answer(request: Any) -> Any:
            sent.append(request.content)
            body = orjson.loads(request.content)
            return respx.MockResponse(200, json=response(*["201"] * len(body["entry"])))

        partner.post(HKPMC).mock(side_effect=answer)
        worker = DeliveryService(home, store, outbound=outbound).deliverer
        try:
            for _ in range(3):
                worker.run_once()
        finally:
            worker.close()
    return sent


class _PolicyClock(datetime):
    """The policy's clock (its decisions' ``now``): the day the test says."""

    day = NOW

    @classmethod
    def now(cls, tz: tzinfo | None = None) -> datetime:  # a plain one: it is stored
        day = datetime(*cls.day.timetuple()[:6])
        return day if tz is None else day.replace(tzinfo=UTC).astimezone(tz)


def test_a_consent_that_expired_while_the_partner_was_unknown_keeps_the_record_held(
    home: Settings,
    store: Store,
    converter: Converter,
    outbound: Outbound,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(_engine, "datetime", _PolicyClock)
    monkeypatch.setattr(_PolicyClock, "day", NOW)  # 2026-06-18: the consent in force
    row = _queued(store, converter, outbound, "2026-06-30")
    monkeypatch.setattr(_PolicyClock, "day", datetime(2026, 7, 2, 8, 0))  # it has ended
    sent = _partner_back(home, store, outbound)
    assert sent == []  # before: queued again on the expired consent's decision, and sent
    after = outbound.outbox.require(row.id)
    assert (after.state, after.last_error) == ("held", "policy.held")
    last = outbound.outbox.events(row.id)[-1]
    assert (last.from_state, last.to_state) == ("held", "held")
    assert last.reason.startswith(
        f"policy.held: release ({UNKNOWN}: partner hkpmc is configured again) refused: "
        "the policy, deciding again, holds it (consent: no separate consent of the patient"
    ), last.reason
    assert last.reason.endswith(f"(it was held: {UNKNOWN})")
    # The auditor sees the worker's refused return (the gateway its only agent).
    refused = [
        e
        for e in (r.resource() for r in AuditLog(store).rows())
        if (e.get("outcomeDesc") or "").startswith(f"release: {UNKNOWN}")
    ]
    assert [e["outcome"] for e in refused] == ["4"]
    assert "refused: delivery.not-releasable" in refused[0]["outcomeDesc"]
    assert not any(a["requestor"] for a in refused[0]["agent"])
    # Only a decision queues it again: still no consent in force.
    assert outbound.recheck_held() == []


def test_a_consent_in_force_returns_the_record_on_a_decision_of_today(
    home: Settings, store: Store, converter: Converter, outbound: Outbound
) -> None:
    row = _queued(store, converter, outbound, "2099-12-31")
    decided = len(PolicyRecords(store, outbound.policy.policy).find(limit=100))
    sent = _partner_back(home, store, outbound)
    assert len(sent) == outbound.outbox.require(row.id).part_count  # each part once
    assert outbound.outbox.require(row.id).state == "delivered"
    moves = [(e.from_state, e.to_state, e.reason) for e in outbound.outbox.events(row.id)]
    back = [m for m in moves if m[:2] == ("held", "pending")][-1]  # after the consent's
    assert back[2].startswith(f"release: {UNKNOWN}: partner hkpmc is configured again (allow")
    assert "policy decision" in back[2]
    assert len(PolicyRecords(store, outbound.policy.policy).find(limit=100)) == decided + 1


def test_a_worker_that_cannot_decide_leaves_a_never_sent_record_held(
    store: Store, converter: Converter, outbound: Outbound
) -> None:
    """A worker built with no policy to ask (no ``decide``) never queues such a row on
    the old decision: it stays held, for a person's release (which decides again)."""
    row = _queued(store, converter, outbound, "2099-12-31")
    with Deliverer(outbound.outbox, outbound.partners, FAST, rng=random.Random(1)) as worker:
        worker.run_once()
    after = outbound.outbox.require(row.id)
    assert (after.state, after.last_error) == ("held", UNKNOWN)


def test_a_person_releasing_it_first_wins_and_the_worker_keeps_nothing(
    store: Store, converter: Converter, outbound: Outbound
) -> None:
    """A person releases the row while the worker returns it (the person's commit
    first): the worker's move is a compare-and-set on the hold, so it moves nothing,
    keeps no decision of its own and reports nothing; one release in the events."""
    row = _queued(store, converter, outbound, "2099-12-31")
    records = PolicyRecords(store, outbound.policy.policy)

    def racing(found: OutboxRecord, reason: str) -> object:
        outbound.release(found.id, "a person, at the same moment")
        return outbound.return_known(found, reason)  # read before the person's commit

    decided = len(records.find(limit=100))
    assert outbound.outbox.release_known(["hkpmc"], decide=racing) == []
    assert len(records.find(limit=100)) == decided + 1  # the person's decision only
    moves = [(e.from_state, e.to_state, e.reason) for e in outbound.outbox.events(row.id)]
    released = [m for m in moves if m[:2] == ("held", "pending")]
    assert len(released) == 2  # the consent's fill, then the person's release
    assert released[-1][2].startswith("release: a person, at the same moment (")
    assert outbound.outbox.require(row.id).state == "pending"


def test_a_record_that_cannot_be_read_again_never_stops_the_worker(
    home: Settings,
    store: Store,
    converter: Converter,
    outbound: Outbound,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """One row's fault never stops the others: a never-sent row whose stored record no
    longer parses (a damaged outcome) fails its own return, logged by its id; the
    worker goes on delivering (before: the error left ``run_once`` at every batch, as
    the return is retried until it passes, and nothing was sent for any partner)."""
    row = _queued(store, converter, outbound, "2099-12-31")
    o = outcomes.c
    with store.engine.begin() as conn:
        conn.execute(
            outcomes.update()
            .where(o.message_id == row.message_id, o.stage == "convert", o.current)
            .values(output=b"{damaged\n{damaged")
        )
    sent = _partner_back(home, store, outbound)  # before: raised JSONDecodeError
    assert sent == []
    after = outbound.outbox.require(row.id)
    assert (after.state, after.last_error) == ("held", REFUSED)  # not "partner unknown"
    assert f"outbox record {row.id}: not released" in caplog.text
    assert outbound.outbox.events(row.id)[-1].reason == (
        f"{REFUSED}: release ({UNKNOWN}: partner hkpmc is configured again) refused: "
        f"delivery.not-releasable: outbox record {row.id} cannot be released: deciding it "
        f"again failed (JSONDecodeError); gateway outbox release {row.id} decides it again"
    )


def test_a_return_the_audit_log_cannot_record_is_held_for_that_and_a_person_releases_it(
    home: Settings,
    store: Store,
    converter: Converter,
    outbound: Outbound,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """hkpmc configured again, the worker's return of a never-sent row was refused for no
    reason of the policy's (here its new decision could not be audited): the row stayed
    held as delivery.unknown-partner, its partner configured, the operator told nothing
    true. Held for the refusal now, named in its event; the worker leaves it; a person's
    release decides it again and it is sent."""
    row = _returned_while_the_audit_disk_is_full(home, store, converter, outbound, monkeypatch)
    after = outbound.outbox.require(row.id)
    assert (after.state, after.last_error) == ("held", REFUSED)  # before: UNKNOWN
    last = outbound.outbox.events(row.id)[-1]
    assert (last.from_state, last.to_state) == ("held", "held")
    assert last.reason.startswith(
        f"{REFUSED}: release ({UNKNOWN}: partner hkpmc is configured again) refused: "
        "policy.audit-unavailable: "
    ), last.reason
    assert last.reason.endswith(f"; gateway outbox release {row.id} decides it again")
    assert _partner_back(home, store, outbound) == []  # the log writable: still a person's
    assert outbound.outbox.require(row.id).last_error == REFUSED
    released = outbound.act_by("release", "ops", row.id, "the audit disk was full")
    assert released.state == "pending"
    back = outbound.outbox.events(row.id)[-1]
    assert back.reason.startswith("release: the audit disk was full (allow"), back.reason
    assert back.decision_id is not None  # decided again, as a never-sent row's release is
    sent = _partner_back(home, store, outbound)
    assert len(sent) == released.part_count
    assert outbound.outbox.require(row.id).state == "delivered"


def test_a_return_refused_record_whose_consent_was_withdrawn_is_not_released_by_a_person(
    home: Settings,
    store: Store,
    converter: Converter,
    outbound: Outbound,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Adversarial: held for delivery.return-refused (its re-hold held → held), the
    consent withdrawn meanwhile; a person's release decides it again (the re-hold does
    not hide where the hold came from: last_hold_from) and the policy holds it."""
    row = _returned_while_the_audit_disk_is_full(home, store, converter, outbound, monkeypatch)
    assert outbound.outbox.require(row.id).last_error == REFUSED
    PolicyRecords(store, outbound.policy.policy).withdraw("consent-1", operator="dpo")
    with pytest.raises(GatewayError) as refused:  # before 0ca3d7b: released, and sent
        outbound.act_by("release", "ops", row.id, "the audit disk was full")
    assert refused.value.code == "delivery.not-releasable"
    after = outbound.outbox.require(row.id)
    assert (after.state, after.last_error) == ("held", "policy.held")
    assert _partner_back(home, store, outbound) == []


def _returned_while_the_audit_disk_is_full(
    home: Settings,
    store: Store,
    converter: Converter,
    outbound: Outbound,
    monkeypatch: pytest.MonkeyPatch,
) -> OutboxRecord:
    """A row queued for hkpmc, held as unknown, whose automatic return (hkpmc configured
    again) is refused because its new decision cannot be audited."""
    row = _queued(store, converter, outbound, "2099-12-31")
    assert outbound.policy.audit is not None

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise OSError("no space left on device")

    with monkeypatch.context() as broken:
        broken.setattr(outbound.policy.audit, "append_rows", refuse)
        assert _partner_back(home, store, outbound) == []
    return row
