"""``gateway outbox retry`` and ``replay`` audited as the operator's action either way,
as a release is (tests/delivery/test_release_audit.py; one path, ``Outbound.act_by``):
a retry the policy, deciding again, refuses, or a replay of a row that is not
delivered (exit 2, nothing moved) is an operator AuditEvent too, its outcome a failure
naming the refusal, so an auditor sees that someone tried; ``retry --dead`` audits
each row it refuses and goes on (tests/console/test_outbox_requeue_audit.py: the
console's)."""

from __future__ import annotations

from typing import Any

import pytest

from gateway import Converter, Settings
from gateway.audit import AuditLog, operator
from gateway.cli import main
from gateway.delivery import Outbound
from gateway.store import Store, utcnow
from tests._audit_asserts import refused_event
from tests.delivery import conftest as delivery

from .conftest import receive

store = delivery.home_store  # the home's own store: the CLI opens it too


def _operator_events(store: Store, action: str) -> list[dict[str, Any]]:
    found = [e.resource() for e in AuditLog(store).rows()]
    return [e for e in found if (e.get("outcomeDesc") or "").startswith(action)]


def _dead_without_consent(
    store: Store, converter: Converter, outbound: Outbound
) -> tuple[int, int]:
    """A Hong Kong referral's row, dead after a partner's refusal, whose consent is no
    longer in force (none here): a retry, deciding again, is refused. (message, row)"""
    message = receive(store, converter, "hl7v2/ref_i12_nsch_to_hkpmc.hl7")
    [placed] = outbound.process(message).placed
    assert placed.outcome == "held" and placed.outbox_id is not None  # no consent
    outbound.outbox.move(
        placed.outbox_id,
        "held",
        "dead",
        "delivery.partner-rejected: refused by the partner (for the test)",
        now=utcnow(),
        last_error="delivery.partner-rejected",
    )
    return message, placed.outbox_id


def test_a_refused_retry_and_replay_on_the_cli_are_audited(
    home: Settings,
    store: Store,
    converter: Converter,
    outbound: Outbound,
    capsys: pytest.CaptureFixture[str],
) -> None:
    message, row = _dead_without_consent(store, converter, outbound)
    gateway = ["--home", str(home.home), "outbox"]
    assert main([*gateway, "retry", str(row), "--reason", "partner fixed it"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "the policy, deciding again, holds it" in err[0], err
    assert "[delivery.not-retryable]" in err[0]
    assert outbound.outbox.require(row).state == "dead"
    [retry] = _operator_events(store, "retry")  # before: none, the refusal left no trace
    refused_event(retry, "retry", "delivery.not-retryable", operator(), message)

    assert main([*gateway, "replay", str(row), "--reason", "partner lost it"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "[delivery.not-replayable]" in err[0], err
    [replay] = _operator_events(store, "replay")
    refused_event(replay, "replay", "delivery.not-replayable", operator(), message)
    assert main([*gateway, "replay", "999", "--reason", "x"]) == 2  # no record: none tried
    assert len(_operator_events(store, "replay")) == 1


def test_retry_dead_audits_each_refused_row_and_goes_on(
    home: Settings,
    store: Store,
    converter: Converter,
    outbound: Outbound,
    capsys: pytest.CaptureFixture[str],
) -> None:
    message, row = _dead_without_consent(store, converter, outbound)
    assert main(["--home", str(home.home), "outbox", "retry", "--dead", "--reason", "x"]) == 1
    [line] = capsys.readouterr().err.strip().splitlines()
    assert f"outbox record {row} cannot be retried" in line
    [retry] = _operator_events(store, "retry")
    refused_event(retry, "retry", "delivery.not-retryable", operator(), message)
