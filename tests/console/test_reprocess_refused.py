"""The console's reprocess of a message the MLLP listener refused for its sender
(南沙医院's referral sent over HKPMC's connection) is refused, as the CLI's and the API's
are: 409, the page naming the message, MSH-4 and why; the attempt kept in the message's
history with its refusal and audited; nothing converted."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI

from gateway import Settings
from gateway.audit import AuditLog
from gateway.console import _data
from gateway.store import open_store
from tests._audit_asserts import refused_event
from tests._sender_refused import HKPMC_NAME, keep, nsch_referral

from .conftest import browser, csrf_of, login


def test_a_message_refused_for_its_sender_is_not_reprocessed(
    app: FastAPI, home: tuple[Settings, int, int]
) -> None:
    settings = home[0]
    store = open_store(settings)
    try:
        refused = keep(settings, store, nsch_referral(), "HKPMC", HKPMC_NAME)
    finally:
        store.close()
    client = login(browser(app), "olivia")
    page = client.get(f"/console/messages/{refused}")
    answer = client.post(
        f"/console/messages/{refused}/reprocess",
        data={"reason": "charset fixed", "csrf": csrf_of(page.text)},
    )
    assert answer.status_code == 409, answer.text
    assert (
        f"message {refused}: MSH-4: refused when received (intake.mllp-sender-mismatch: "
        "its MSH-4 does not name the institution whose certificate sent it), so never "
        "converted: the institution its MSH-4 names must send it over its own connection "
        "[store.sender-refused]"
    ) in answer.text
    store = open_store(settings)
    try:
        assert store.state_of(refused) == "rejected"
        assert [o.stage for o in store.get(refused).outcomes] == ["intake"]  # type: ignore[union-attr]
        history: list[dict[str, Any]] = _data.message_actions(store, refused)
        events = [e.resource() for e in AuditLog(store).rows()]
    finally:
        store.close()
    assert [(a["action"], a["reason"], a["outcome"]) for a in history] == [
        ("reprocess", "charset fixed", "refused")
    ]
    assert history[0]["refusal"].startswith("store.sender-refused: refused when received")
    [event] = [e for e in events if str(e.get("outcomeDesc", "")).startswith("reprocess")]
    refused_event(event, "reprocess", "store.sender-refused", "olivia", refused)
