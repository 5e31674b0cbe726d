"""A consent ended by any route stops what is queued on it. A new version of a Consent
that takes its permit away (imported over the one on file: status inactive, a provision
that now denies, a period that has ended) is a withdrawal by update: the transfers queued
on it are held for the policy as ``$withdraw`` holds them. A consent that expires while
a never-sent row is held by delivery: a person's release decides again first."""

from __future__ import annotations

import json
import random
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import respx

import gateway.policy._engine as engine
from gateway import Converter, Settings
from gateway.cli import main
from gateway.delivery import Deliverer, DeliveryError, Outbound
from gateway.policy import PolicyRecords
from gateway.store import Store, utcnow
from tests.delivery import conftest as delivery
from tests.delivery.conftest import receive

from .conftest import HKID, consent
from .test_adversarial_withdrawal import FAST, _deliver
from .test_withdrawal_release import OVERWRITE, _overwrite_guard, _show

home, store, outbound = delivery.home, delivery.home_store, delivery.outbound
PATIENT = (HKID, "K583726A")


def _given(**changes: Any) -> dict[str, Any]:
    given = consent(PATIENT, "HKPMC", start="2026-01-01", end="2099-12-31")
    return {**given, **changes}


def _denies() -> dict[str, Any]:
    given = _given()
    return {**given, "provision": {**given["provision"], "type": "deny"}}


def _ended() -> dict[str, Any]:
    given = _given()
    period = {"start": "2026-01-01", "end": "2026-02-28"}
    return {**given, "provision": {**given["provision"], "period": period}}


TAKEN: dict[str, tuple[dict[str, Any], str]] = {
    "inactive": (_given(status="inactive"), "withdrawn before it was sent"),
    "rejected": (_given(status="rejected"), "withdrawn before it was sent"),
    "entered-in-error": (_given(status="entered-in-error"), "withdrawn before it was sent"),
    "provision-denies": (_denies(), "changed before it was sent (version 2: its provision"),
    "period-ended": (_ended(), "changed before it was sent (version 2: its period"),
}


def _queued(
    store: Store, converter: Converter, outbound: Outbound, given: dict[str, Any]
) -> tuple[int, PolicyRecords, int]:
    """A referral to Hong Kong held for no consent, then queued on ``given``."""
    message = receive(store, converter, "hl7v2/ref_i12_nsch_to_hkpmc.hl7")
    [placed] = outbound.process(message).placed
    assert (placed.partner, placed.outcome) == ("hkpmc", "held")
    records = PolicyRecords(store, outbound.policy.policy)
    records.import_consent(given)
    [moved] = outbound.recheck_held()
    assert moved.state == "pending"
    return message, records, moved.id


@pytest.mark.parametrize("how", sorted(TAKEN))
def test_a_new_version_that_takes_the_permit_away_holds_what_is_queued_on_it(
    store: Store,
    converter: Converter,
    outbound: Outbound,
    home: Settings,
    capsys: pytest.CaptureFixture[str],
    how: str,
) -> None:
    message, records, row = _queued(store, converter, outbound, _given())
    update, why = TAKEN[how]
    records.import_consent(update, operator="dpo")
    assert _deliver(outbound) == []  # before: sent on the consent no longer given
    shown = _show(capsys, home, row)
    assert (shown["state"], shown["last_error"]) == ("held", "policy.held")
    last = shown["events"][-1]
    assert (last["from"], last["to"]) == ("pending", "held"), last
    assert last["reason"].startswith(f"policy.held: consent consent-1 {why}"), last
    assert store.state_of(message) == "held"
    assert outbound.recheck_held() == []  # decided again: still no consent in force


def test_the_cli_import_of_an_inactive_version_holds_it_too(
    store: Store,
    converter: Converter,
    outbound: Outbound,
    home: Settings,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    _, _, row = _queued(store, converter, outbound, _given())
    file = tmp_path / "consent.json"
    file.write_text(json.dumps(_given(status="inactive")))
    assert main(["--home", str(home.home), "consent", "import", str(file)]) == 0
    assert _deliver(outbound) == []
    shown = _show(capsys, home, row)
    assert (shown["state"], shown["last_error"]) == ("held", "policy.held")


def test_only_the_version_that_takes_the_permit_away_holds_it(
    store: Store, converter: Converter, outbound: Outbound
) -> None:
    """A new version that still permits the transfer (its period moved) leaves it
    queued; the next one, inactive, holds it."""
    _, records, row = _queued(store, converter, outbound, _given())
    records.import_consent(consent(PATIENT, "HKPMC", start="2026-01-01", end="2098-12-31"))
    assert outbound.outbox.require(row).state == "pending"
    records.import_consent(_given(status="inactive"))
    assert _deliver(outbound) == []
    after = outbound.outbox.require(row)
    assert (after.state, after.last_error) == ("held", "policy.held")


class _Later(datetime):
    """The clock two hours on: the consent's period has ended since it was queued."""

    @classmethod
    def now(cls, tz: Any = None) -> Any:
        return datetime.now(tz) + timedelta(hours=2)


def test_a_release_after_the_consent_expired_holds_it_for_the_policy(
    store: Store,
    converter: Converter,
    outbound: Outbound,
    home: Settings,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ends = (utcnow() + timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    given = consent(PATIENT, "HKPMC", start="2026-01-01", end=ends)
    _, _, row = _queued(store, converter, outbound, given)
    with respx.mock(assert_all_mocked=True, assert_all_called=False) as partner:
        _overwrite_guard(partner)
        with Deliverer(outbound.outbox, outbound.partners, FAST, rng=random.Random(1)) as worker:
            worker.run_once()
    held = outbound.outbox.require(row)
    assert (held.state, held.last_error, held.part) == ("held", OVERWRITE, 0)
    monkeypatch.setattr(engine, "datetime", _Later)  # the period has ended
    with pytest.raises(DeliveryError) as refused:  # before: queued with no decision
        outbound.release(row, "checked with the partner")
    assert refused.value.code == "delivery.not-releasable"
    assert "the policy, deciding again, holds it (" in refused.value.issue.message
    assert _deliver(outbound) == []  # nothing crosses on the expired consent
    shown = _show(capsys, home, row)
    assert (shown["state"], shown["last_error"]) == ("held", "policy.held")
    last = shown["events"][-1]
    assert (last["from"], last["to"]) == ("held", "held"), last
    assert last["reason"].startswith(
        "policy.held: release (checked with the partner) refused: the policy, deciding "
        "again, holds it ("
    ), last
    assert last["reason"].endswith(f"(it was held: {OVERWRITE})"), last
    assert outbound.recheck_held() == []  # still no consent in force


def test_a_release_racing_a_withdrawal_never_overwrites_its_hold(
    store: Store, converter: Converter, outbound: Outbound
) -> None:
    """A release checks its row (held by delivery, never sent) before its transaction;
    a withdrawal that holds the row for the policy and commits meanwhile (Postgres: its
    row lock waited on) must win. Here the release's update runs in a transaction that
    holds the row for the policy first, which the check, on its own connection, does
    not see: it is refused, the withdrawal's hold kept (before: queued, policy.held
    overwritten, sent on the withdrawn consent)."""
    _, _, row = _queued(store, converter, outbound, _given())
    with respx.mock(assert_all_mocked=True, assert_all_called=False) as partner:
        _overwrite_guard(partner)
        with Deliverer(outbound.outbox, outbound.partners, FAST, rng=random.Random(1)) as worker:
            worker.run_once()
    assert outbound.outbox.require(row).last_error == OVERWRITE
    now = outbound.outbox.clock()
    with pytest.raises(DeliveryError) as refused, store.engine.begin() as conn:
        outbound.outbox.move(
            row, "held", "held", "policy.held: consent withdrawn before it was sent",
            now=now, conn=conn, last_error="policy.held",
        )  # fmt: skip
        outbound.outbox.release_in(conn, row, "checked with the partner")
    assert refused.value.code == "delivery.not-releasable"
    assert "held or refused by the policy" in refused.value.issue.message
    held = outbound.outbox.require(row)
    assert (held.state, held.last_error) == ("held", OVERWRITE)  # rolled back as a whole
