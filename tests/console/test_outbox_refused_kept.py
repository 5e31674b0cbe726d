"""A console action on an outbox record that is refused (a release the policy still
holds, a discard of a record it holds, a retry of one that is not dead) is kept in the
message's history (``console_actions``) as the operator's attempt, outcome refused, the
refusal named, as the audit log keeps it (``Outbound.act_by``); before, only the
actions done were kept, and the history said nobody had tried."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI

from gateway.console import _data
from gateway.store import open_store

from .conftest import browser, csrf_of, login
from .test_outbox_discard import _hold, _state


def _history(settings: Any, message_id: int) -> list[dict[str, Any]]:
    store = open_store(settings)
    try:
        return _data.message_actions(store, message_id)
    finally:
        store.close()


def test_refused_outbox_actions_are_kept_with_their_refusal(app: FastAPI, home: tuple) -> None:
    settings, _, converted = home
    held = _hold(settings, converted, "policy.held")  # no consent: the policy holds it
    client = login(browser(app), "olivia")
    csrf = csrf_of(client.get(f"/console/messages/{converted}").text)
    for action, code in (
        ("release", "delivery.not-releasable"),
        ("discard", "delivery.not-discardable"),
        ("retry", "delivery.not-retryable"),
    ):
        refused = client.post(
            f"/console/outbox/{held}/{action}", data={"reason": f"try {action}", "csrf": csrf}
        )
        assert refused.status_code == 409 and code in refused.text, refused.text
    assert _state(settings, held) == "held"  # nothing moved
    found = _history(settings, converted)
    assert [(a["action"], a["outbox_id"], a["reason"], a["outcome"]) for a in found] == [
        ("release", held, "try release", "refused"),
        ("discard", held, "try discard", "refused"),
        ("retry", held, "try retry", "refused"),
    ]  # before: []
    assert [a["refusal"].split(":")[0] for a in found] == [
        "delivery.not-releasable",
        "delivery.not-discardable",
        "delivery.not-retryable",
    ]
    assert "the policy holds it" in found[1]["refusal"]
    assert all(a["user_name"] == "olivia" for a in found)
    page = client.get(f"/console/messages/{converted}").text
    assert "放行 (被拒绝: delivery.not-releasable: " in page  # olivia reads zh-Hans
    # One on no such record: nothing was tried on one, nothing kept.
    missing = client.post("/console/outbox/999/release", data={"reason": "x", "csrf": csrf})
    assert missing.status_code == 409
    assert len(_history(settings, converted)) == 3


def test_an_action_done_is_kept_as_done(app: FastAPI, home: tuple) -> None:
    settings, _, converted = home
    held = _hold(settings, converted, "delivery.identifier-other-patient", partner="nsgp")
    client = login(browser(app), "olivia")
    csrf = csrf_of(client.get(f"/console/messages/{converted}").text)
    done = client.post(f"/console/outbox/{held}/discard", data={"reason": "dup", "csrf": csrf})
    assert done.status_code == 303, done.text
    [kept] = _history(settings, converted)
    assert (kept["action"], kept["outcome"], kept["refusal"]) == ("discard", "done", None)
