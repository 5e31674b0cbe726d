"""Adversarial review: stored XSS through everything the console shows that a sender, a
partner or another user wrote (a patient's Chinese name, MSH fields, an error quoting a
field, the partner's OperationOutcome, transition reasons, an action's reason, the
search form's echoed criteria), read in each of the three label languages."""

from __future__ import annotations

import re
from datetime import timedelta

import orjson
from fastapi import FastAPI

from gateway import Converter, Settings
from gateway.delivery import Outbox
from gateway.partners import Partner
from gateway.processing import process_message
from gateway.store import Incoming, open_store, utcnow
from tests.store.browse import UTF8_ORU

from .conftest import browser, csrf_of, login

SCRIPT = '<script>alert("陳")</script>'
IMG = "<img src=x onerror=alert(1)>"
BREAKOUT = '"><svg onload=alert(2)>'
RAW = ("<script>alert", "<img src=x", "<svg onload")  # never in a page as markup
USERS = {"olivia": "zh-Hans", "audrey": "en", "adam": "zh-Hant-HK"}


def _poisoned(raw: bytes, message_type: str | None = None) -> bytes:
    """The UTF-8 report with markup in the sending application (MSH-3), the control id
    (MSH-10), the patient's name (PID-5) and, if given, the message type (MSH-9)."""
    segments = raw.decode("utf-8").split("\r")
    msh = segments[0].split("|")
    msh[2] = IMG.replace("^", "")
    msh[9] = BREAKOUT
    if message_type is not None:
        msh[8] = message_type
    segments[0] = "|".join(msh)
    for i, segment in enumerate(segments):
        if segment.startswith("PID|"):
            pid = segment.split("|")
            pid[5] = f"{SCRIPT}許^嘉瑋"
            segments[i] = "|".join(pid)
    return "\r".join(segments).encode("utf-8")


def _fill(settings: Settings) -> tuple[int, int]:
    """(converted id, failed id) of two poisoned messages; the converted one has a dead
    outbox record whose partner answered with markup."""
    store = open_store(settings)
    try:
        converter = Converter(settings)
        good = store.receive(Incoming(_poisoned(UTF8_ORU), "mllp", peer="10.0.0.9:5000")).id
        bad = store.receive(Incoming(_poisoned(UTF8_ORU, f"{SCRIPT}^R01"), "mllp", peer=IMG)).id
        process_message(store, converter, good)
        process_message(store, converter, bad)
        outbox = Outbox(store)
        bundle = {
            "resourceType": "Bundle",
            "type": "transaction",
            "entry": [
                {"resource": {"resourceType": "Patient", "id": "p1", "name": [{"text": SCRIPT}]}}
            ],
        }
        row, _ = outbox.enqueue(
            Partner("hkpmc", "https://fhir.hkpmc.example/fhir"),
            bundle,
            message_id=good,
            reason=f"queued {IMG}",
        )
        answer = {
            "resourceType": "OperationOutcome",
            "issue": [
                {
                    "severity": "error",
                    "code": "invalid",
                    "diagnostics": SCRIPT,
                    "expression": [BREAKOUT],
                }
            ],
        }
        now = utcnow() + timedelta(seconds=1)
        outbox.move(
            row,
            outbox.require(row).state,
            "dead",
            f"partner said {SCRIPT}",
            now=now,
            status=422,
            last_error=IMG,
            last_response=orjson.dumps(answer).decode(),
        )
        return good, bad
    finally:
        store.close()


def _clean(html: str, where: str) -> None:
    for marker in RAW:
        assert marker not in html, f"{marker!r} as markup in {where}"


def test_sender_and_partner_markup_is_shown_as_text_in_every_language(
    app: FastAPI, home: tuple
) -> None:
    settings = home[0]
    good, bad = _fill(settings)
    operator = login(browser(app), "olivia")
    csrf = csrf_of(operator.get(f"/console/messages/{bad}").text)
    resolved = operator.post(  # an insider's reason, read later by everyone
        f"/console/messages/{bad}/resolve", data={"reason": f"ok {SCRIPT} {BREAKOUT}", "csrf": csrf}
    )
    assert resolved.status_code == 303
    for name, lang in USERS.items():
        client = login(browser(app), name)
        for path in (f"/console/messages/{good}", f"/console/messages/{bad}"):
            page = client.get(path)
            assert page.status_code == 200 and f'lang="{lang}"' in page.text
            _clean(page.text, f"{path} ({lang})")
            assert "&lt;script&gt;alert(" in page.text  # shown, as text
        detail = client.get(f"/console/messages/{good}").text
        assert "許^嘉瑋" in detail  # the Chinese name stays readable, in the original
        assert "partner said &lt;script&gt;" in detail  # the transition's reason
        assert "&lt;img src=x" in detail and "&#34;diagnostics&#34;" in detail  # answer
        assert "ok &lt;script&gt;" in client.get(f"/console/messages/{bad}").text
        listing = client.get("/console/messages").text
        _clean(listing, f"the results ({lang})")
        assert "&#34;&gt;&lt;svg" in listing or "&quot;&gt;&lt;svg" in listing  # control id
        for path in ("/console/dashboard", "/console/dashboard?fragment=1", "/console/referrals"):
            _clean(client.get(path).text, f"{path} ({lang})")


def test_search_criteria_echoed_in_the_form_cannot_break_out(app: FastAPI, home: tuple) -> None:
    client = login(browser(app), "adam")
    csrf = csrf_of(client.get("/console/messages").text)
    found = client.post(
        "/console/messages",
        data={
            "sender": BREAKOUT,
            "patient": f"{SCRIPT}|陳大文",
            "type": IMG,
            "control_id": "' autofocus onfocus='alert(3)",
            "csrf": csrf,
        },
    )
    page = client.get(found.headers["location"]).text
    _clean(page, "the search form")
    inputs = re.findall(r"<input [^>]*>", page)
    assert not [i for i in inputs if "onfocus=" in i.replace("onfocus=&#39;", "")]
    assert 'value="&#34;&gt;&lt;svg onload=alert(2)&gt;"' in page
