"""A record held by delivery (the overwrite guard, our credentials refused), never sent,
whose consent is withdrawn while it is held: a person's release must not send it on
the withdrawn consent. The withdrawal holds it for the policy (docs/policy.md), so the
release decides again; with the consent still in force the release sends it, once."""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from typing import Any

import httpx
import orjson
import pytest
import respx

from gateway import Converter, Settings
from gateway.cli import main
from gateway.delivery import Deliverer, DeliveryError, Outbound
from gateway.store import Store
from tests.delivery import conftest as delivery
from tests.delivery.conftest import answer_checks, nothing_held

from .conftest import HKID, consent
from .test_adversarial_withdrawal import FAST, HKPMC, _deliver, _queued_on_consent

home, store, outbound = delivery.home, delivery.home_store, delivery.outbound
OVERWRITE = "delivery.identifier-other-patient"
REFUSED = "delivery.credentials-refused"


def _another_patients(request: httpx.Request) -> httpx.Response:
    """The partner's answer to the overwrite check: every resource the record updates is
    there already, for a patient it does not hold under this record's identifiers."""
    answered = nothing_held(request)
    body = orjson.loads(answered.content)
    asked = orjson.loads(request.content)["entry"]
    for entry, search in zip(body["entry"], asked, strict=True):
        url = search["request"]["url"]
        if not url.startswith("Patient?"):
            kind = url.split("?")[0]
            found = {"resourceType": kind, "id": "theirs", "subject": {"reference": "Patient/x"}}
            entry["resource"]["entry"] = [{"resource": found}]
            entry["resource"]["total"] = 1
    return httpx.Response(200, json=body)


def _overwrite_guard(partner: respx.MockRouter) -> None:
    partner.post(content__contains=b'"method":"GET"').mock(side_effect=_another_patients)


def _credentials_refused(partner: respx.MockRouter) -> None:
    answer_checks(partner)
    partner.post(HKPMC).respond(401, json={"resourceType": "OperationOutcome"})


HOLDS: dict[str, tuple[Callable[[respx.MockRouter], None], str]] = {
    "overwrite-guard": (_overwrite_guard, OVERWRITE),
    "credentials-refused": (_credentials_refused, REFUSED),
}


def _held_by_delivery(outbound: Outbound, how: str) -> None:
    """Run the worker once against a partner that makes it hold the record."""
    make, _ = HOLDS[how]
    with respx.mock(assert_all_mocked=True, assert_all_called=False) as partner:
        make(partner)
        with Deliverer(outbound.outbox, outbound.partners, FAST, rng=random.Random(1)) as worker:
            worker.run_once()


def _show(capsys: pytest.CaptureFixture[str], home: Settings, row: int) -> dict[str, Any]:
    capsys.readouterr()
    assert main(["--home", str(home.home), "outbox", "show", str(row), "--json"]) == 0
    shown: dict[str, Any] = json.loads(capsys.readouterr().out)
    return shown


@pytest.mark.parametrize("how", sorted(HOLDS))
def test_a_release_after_the_withdrawal_keeps_a_never_sent_row_held_for_the_policy(
    store: Store,
    converter: Converter,
    outbound: Outbound,
    home: Settings,
    capsys: pytest.CaptureFixture[str],
    how: str,
) -> None:
    _, (records, given, row) = _queued_on_consent(store, converter, outbound)
    _held_by_delivery(outbound, how)
    held = outbound.outbox.require(row.id)
    assert (held.state, held.last_error, held.part) == ("held", HOLDS[how][1], 0)
    records.withdraw(given.id, operator="dpo")
    with pytest.raises(DeliveryError) as refused:  # before: queued again, no decision
        outbound.release(row.id, "checked with the partner")
    assert refused.value.code == "delivery.not-releasable"
    assert "the policy still holds it" in refused.value.issue.message
    assert _deliver(outbound) == []  # nothing crosses on the withdrawn consent
    shown = _show(capsys, home, row.id)
    assert (shown["state"], shown["last_error"]) == ("held", "policy.held")
    last = shown["events"][-1]
    assert (last["from"], last["to"]) == ("held", "held"), last
    assert last["reason"] == (
        f"policy.held: consent {given.id} withdrawn before it was sent "
        f"(it was held: {HOLDS[how][1]})"
    )


@pytest.mark.parametrize("how", sorted(HOLDS))
def test_a_release_on_a_consent_in_force_sends_the_row_once(
    store: Store, converter: Converter, outbound: Outbound, how: str
) -> None:
    _queued_on_consent(store, converter, outbound)
    row = outbound.outbox.records(limit=10)[0]
    _held_by_delivery(outbound, how)
    assert outbound.outbox.require(row.id).last_error == HOLDS[how][1]
    released = outbound.release(row.id, "checked with the partner")
    assert released.state == "pending"
    sent = _deliver(outbound)
    assert len(sent) == outbound.outbox.require(row.id).part_count  # each part once
    assert outbound.outbox.require(row.id).state == "delivered"
    assert _deliver(outbound) == []


def test_a_new_consent_queues_it_again_and_the_overwrite_guard_still_holds_it(
    store: Store, converter: Converter, outbound: Outbound
) -> None:
    """The withdrawal's hold replaced the guard's: a new consent queues the row again
    (decided again, filled), but that is no person's release past the guard: the guard
    checks it again and holds it again, nothing sent."""
    _, (records, given, row) = _queued_on_consent(store, converter, outbound)
    _held_by_delivery(outbound, "overwrite-guard")
    records.withdraw(given.id, operator="dpo")
    records.import_consent(
        consent(
            (HKID, "K583726A"), "HKPMC", ident="consent-2", start="2026-01-01", end="2099-12-31"
        )
    )
    [again] = outbound.recheck_held()
    assert (again.id, again.state) == (row.id, "pending")
    sent: list[bytes] = []
    with respx.mock(assert_all_mocked=True, assert_all_called=False) as partner:
        _overwrite_guard(partner)
        partner.post(HKPMC).mock(side_effect=lambda r: sent.append(r.content))
        with Deliverer(outbound.outbox, outbound.partners, FAST, rng=random.Random(1)) as worker:
            worker.run_once()
    assert sent == []
    after = outbound.outbox.require(row.id)
    assert (after.state, after.last_error) == ("held", OVERWRITE)
