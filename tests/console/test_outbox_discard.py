"""The console's discard of an outbox record (as ``gateway outbox discard``): a button
with a required reason on a held or dead record (not one the policy holds), its CSRF
token, the record never sent afterwards, audited by the console user."""

from __future__ import annotations

import re

from fastapi import FastAPI

from gateway import Settings
from gateway.audit import AuditLog
from gateway.console import _data
from gateway.delivery import Outbox
from gateway.store import open_store

from .conftest import browser, csrf_of, login

OVERWRITE = "delivery.identifier-other-patient"


def _hold(settings: Settings, message_id: int, code: str, partner: str = "hkpmc") -> int:
    store = open_store(settings)
    try:
        return Outbox(store).hold(
            partner,
            message_id=message_id,
            record=0,
            purpose=None,
            order_key=None,
            label=None,
            dedup=f"test-{code}",
            code=code,
            reason=f"{code}: held for the test",
        )[0]
    finally:
        store.close()


def _state(settings: Settings, row: int) -> str:
    store = open_store(settings)
    try:
        return Outbox(store).require(row).state
    finally:
        store.close()


def _form(html: str, row: int, action: str) -> bool:
    return f'action="/console/outbox/{row}/{action}"' in html


def test_an_operator_discards_a_held_record_with_a_reason(app: FastAPI, home: tuple) -> None:
    settings, _, converted = home
    held = _hold(settings, converted, OVERWRITE)
    client = login(browser(app), "olivia")
    page = client.get(f"/console/messages/{converted}")
    assert _form(page.text, held, "discard") and _form(page.text, held, "release")
    csrf = csrf_of(page.text)

    no_token = client.post(f"/console/outbox/{held}/discard", data={"reason": "wrong UID"})
    assert no_token.status_code == 403  # CSRF
    blank = client.post(f"/console/outbox/{held}/discard", data={"reason": " ", "csrf": csrf})
    assert blank.status_code == 409 and "console.no-reason" in blank.text
    assert _state(settings, held) == "held"

    done = client.post(
        f"/console/outbox/{held}/discard", data={"reason": "PACS reused the UID", "csrf": csrf}
    )
    assert done.status_code == 303
    assert done.headers["location"].endswith(f"/messages/{converted}?done=discard")
    assert _state(settings, held) == "discarded"
    after = client.get(done.headers["location"])
    assert "放弃发送" in after.text  # zh-Hans: olivia's language, "done: discard"
    assert re.search(r'class="state-discarded">已放弃<', after.text)
    # Its only record given up, the message is discarded, not dead, on its page, in the
    # messages' state filter and on the dashboard (converted, not in the dead column).
    assert re.search(r'class="badge state-discarded" id="state">已放弃<', after.text)
    listed = client.get("/console/messages").text
    assert '<option value="discarded">已放弃</option>' in listed
    store = open_store(settings)
    try:
        [mllp] = [r for r in _data.dashboard(store, {})["listeners"] if r.name == "mllp"]
    finally:
        store.close()
    assert (mllp.day["converted"], mllp.day["dead"]) == (1, 0)
    assert "discard: PACS reused the UID" in after.text  # the transition's reason
    assert not _form(after.text, held, "discard") and not _form(after.text, held, "release")

    again = client.post(
        f"/console/outbox/{held}/discard", data={"reason": "twice", "csrf": csrf_of(after.text)}
    )
    assert again.status_code == 409 and "delivery.not-discardable" in again.text

    store = open_store(settings)
    try:
        found = [e.resource() for e in AuditLog(store).rows()]
    finally:
        store.close()
    [operator] = [e for e in found if e.get("outcomeDesc") == "discard"]
    requestor = next(a for a in operator["agent"] if a["requestor"])
    assert requestor["who"]["identifier"]["value"] == "olivia"


def test_no_discard_of_a_record_the_policy_holds_nor_by_an_auditor(
    app: FastAPI, home: tuple
) -> None:
    settings, _, converted = home
    consent = _hold(settings, converted, "policy.held")
    operator = login(browser(app), "olivia")
    page = operator.get(f"/console/messages/{converted}")
    assert _form(page.text, consent, "release") and not _form(page.text, consent, "discard")
    refused = operator.post(
        f"/console/outbox/{consent}/discard", data={"reason": "x", "csrf": csrf_of(page.text)}
    )
    assert refused.status_code == 409 and "the policy holds it" in refused.text
    auditor = login(browser(app), "audrey")
    csrf = csrf_of(auditor.get("/console/dashboard").text)
    answer = auditor.post(f"/console/outbox/{consent}/discard", data={"reason": "x", "csrf": csrf})
    assert answer.status_code == 403
    assert _state(settings, consent) == "held"
