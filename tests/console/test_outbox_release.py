"""The console's release of an outbox record (as ``gateway outbox release``): audited
as the operator's action either way; a release the policy refuses (nothing moves,
``delivery.not-releasable``) is an operator event too, its outcome a failure, so an
auditor sees that someone tried (tests/delivery/test_release_audit.py: the CLI's)."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI

from tests._audit_asserts import refused_event

from .conftest import browser, csrf_of, login
from .test_outbox_discard import OVERWRITE, _form, _hold, _state
from .test_outbox_requeue_audit import _operator_events


def _requestor(event: dict[str, Any]) -> str:
    agent = next(a for a in event["agent"] if a["requestor"])
    return str(agent["who"]["identifier"]["value"])


def test_a_refused_release_is_audited_as_the_operators_attempt(app: FastAPI, home: tuple) -> None:
    settings, _, converted = home
    held = _hold(settings, converted, "policy.held")  # no consent: the policy holds it
    client = login(browser(app), "olivia")
    page = client.get(f"/console/messages/{converted}")
    assert _form(page.text, held, "release")
    refused = client.post(
        f"/console/outbox/{held}/release",
        data={"reason": "asked twice", "csrf": csrf_of(page.text)},
    )
    assert refused.status_code == 409 and "delivery.not-releasable" in refused.text
    assert _state(settings, held) == "held"
    [event] = _operator_events(settings, "release")  # before: none, the refusal left no trace
    refused_event(event, "release", "delivery.not-releasable", "olivia", converted)


def test_a_release_is_audited_once_as_before(app: FastAPI, home: tuple) -> None:
    """Released (a partner in the sender's own province: nothing to consent to): one
    event, success."""
    settings, _, converted = home
    held = _hold(settings, converted, OVERWRITE, partner="nsgp")
    client = login(browser(app), "olivia")
    csrf = csrf_of(client.get(f"/console/messages/{converted}").text)
    done = client.post(f"/console/outbox/{held}/release", data={"reason": "ok", "csrf": csrf})
    assert done.status_code == 303, done.text
    assert _state(settings, held) == "pending"
    [event] = _operator_events(settings, "release")
    assert (event["outcome"], event["outcomeDesc"], _requestor(event)) == (
        "0",
        "release",
        "olivia",
    )
