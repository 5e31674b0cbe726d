"""The console's retry and replay of an outbox record (as ``gateway outbox retry`` and
``replay``, one path: ``Outbound.act_by``): audited as the operator's action either
way; one refused (nothing moves) is an operator event too, its outcome a failure naming
the refusal, so an auditor sees that someone tried (tests/delivery/
test_retry_replay_audit.py: the CLI's)."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI

from gateway import Settings
from gateway.audit import AuditLog
from gateway.delivery import Outbox
from gateway.store import open_store, utcnow
from tests._audit_asserts import refused_event

from .conftest import browser, csrf_of, login
from .test_outbox_discard import OVERWRITE, _hold, _state


def _operator_events(settings: Settings, action: str) -> list[dict[str, Any]]:
    store = open_store(settings)
    try:
        found = [e.resource() for e in AuditLog(store).rows()]
    finally:
        store.close()
    return [e for e in found if (e.get("outcomeDesc") or "").startswith(action)]


def _dead(settings: Settings, row: int) -> None:
    """The row died at the partner (a refusal); a retry decides it again."""
    store = open_store(settings)
    try:
        Outbox(store).move(
            row,
            "held",
            "dead",
            "delivery.partner-rejected: refused by the partner (for the test)",
            now=utcnow(),
            last_error="delivery.partner-rejected",
        )
    finally:
        store.close()


def test_a_refused_retry_and_replay_are_audited_as_the_operators_attempts(
    app: FastAPI, home: tuple
) -> None:
    settings, _, converted = home
    row = _hold(settings, converted, "policy.held")  # no consent: the policy holds it
    _dead(settings, row)
    client = login(browser(app), "olivia")
    csrf = csrf_of(client.get(f"/console/messages/{converted}").text)
    for action, code, why in (
        ("retry", "delivery.not-retryable", "the policy, deciding again, holds it"),
        ("replay", "delivery.not-replayable", "it is dead"),
    ):
        refused = client.post(
            f"/console/outbox/{row}/{action}", data={"reason": "asked twice", "csrf": csrf}
        )
        assert refused.status_code == 409 and code in refused.text, refused.text
        assert why in refused.text
        assert _state(settings, row) == "dead"
        [event] = _operator_events(settings, action)  # before: none, no trace
        refused_event(event, action, code, "olivia", converted)  # the stored message


def test_a_refused_discard_is_audited_as_the_operators_attempt(app: FastAPI, home: tuple) -> None:
    """A discard refused (a row the policy holds) is an operator event too, as a refused
    retry is; one path with the CLI (``Outbound.act_by``)."""
    settings, _, converted = home
    row = _hold(settings, converted, "policy.held")  # no consent: the policy holds it
    client = login(browser(app), "olivia")
    csrf = csrf_of(client.get(f"/console/messages/{converted}").text)
    refused = client.post(
        f"/console/outbox/{row}/discard", data={"reason": "sent by hand", "csrf": csrf}
    )
    assert refused.status_code == 409 and "delivery.not-discardable" in refused.text
    assert _state(settings, row) == "held"
    [event] = _operator_events(settings, "discard")  # before: none, no trace
    refused_event(event, "discard", "delivery.not-discardable", "olivia", converted)


def test_a_retry_is_audited_once_as_before(app: FastAPI, home: tuple) -> None:
    """Retried (a partner in the sender's own province: nothing to consent to): one
    event, success, naming the console user."""
    settings, _, converted = home
    row = _hold(settings, converted, OVERWRITE, partner="nsgp")
    _dead(settings, row)
    client = login(browser(app), "olivia")
    csrf = csrf_of(client.get(f"/console/messages/{converted}").text)
    done = client.post(f"/console/outbox/{row}/retry", data={"reason": "ok", "csrf": csrf})
    assert done.status_code == 303, done.text
    assert _state(settings, row) == "pending"
    [event] = _operator_events(settings, "retry")
    agent = next(a for a in event["agent"] if a["requestor"])
    assert (event["outcome"], event["outcomeDesc"]) == ("0", "retry")
    assert agent["who"]["identifier"]["value"] == "olivia"
