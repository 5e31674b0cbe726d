"""An operator's commands leave their AuditEvents: ``gateway messages reprocess`` (the
new outcome, no second receipt, and the action), ``gateway consent import|withdraw``
(the change, by whom) — each by the OS account that ran it."""

from __future__ import annotations

import getpass
import json
from pathlib import Path
from typing import Any

import pytest

from gateway import Converter, Settings, validation
from gateway.audit import AuditLog, message_subject, store_hook
from gateway.audit._events import keys_of
from gateway.cli import main
from gateway.processing import process_message
from gateway.store import Incoming, open_store
from tests.conftest import REPO
from tests.policy.conftest import HKID, consent


def events_of(home: Path) -> list[dict[str, Any]]:
    store = open_store(Settings.load(home=home, env={}))
    try:
        return [e.resource() for e in AuditLog(store).rows()]
    finally:
        store.close()


def summary(event: dict[str, Any]) -> tuple[str, str | None, str | None]:
    requestor = next((a for a in event["agent"] if a["requestor"]), None)
    who = requestor["who"]["identifier"]["value"] if requestor else None
    return keys_of(event)[0], event.get("outcomeDesc"), who


def test_reprocess_and_consent_commands_are_audited(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = Settings.load(home=tmp_path, env={})
    store = open_store(settings)
    raw = (REPO / "examples/hl7v2/ref_i12_lax2_to_njmu2.hl7").read_bytes()
    message = store.receive(Incoming(raw, "cli")).id
    hook = store_hook(AuditLog(store), channel="cli")
    process_message(store, Converter(settings), message, audit=hook)
    store.close()
    me = getpass.getuser()

    assert main(["--home", str(tmp_path), "messages", "reprocess", str(message)]) == 0
    file = tmp_path / "consent.json"
    file.write_text(json.dumps(consent((HKID, "K583726A"), "HKPMC")), encoding="utf-8")
    assert main(["--home", str(tmp_path), "consent", "import", str(file)]) == 0
    assert main(["--home", str(tmp_path), "consent", "withdraw", "consent-1"]) == 0
    capsys.readouterr()

    found = events_of(tmp_path)
    assert [summary(e) for e in found] == [
        ("received", None, "LAX2"),
        ("converted", None, None),
        ("converted", None, None),  # reprocessed: its new outcome, not a second receipt
        ("operator", "reprocess", me),
        ("consent", "active", me),
        ("consent", "inactive", me),
    ]
    system, value = message_subject(message).records[0].split("|")
    ident = {"system": system, "value": value}
    for event in found[:4]:  # every message event names the stored message
        assert ident in [(x.get("what") or {}).get("identifier") for x in event["entity"]]
    assert found[4]["entity"][0]["what"] == found[5]["entity"][0]["what"]  # one patient
    for event in found:
        problems = [
            i.line()
            for i in validation.validate_resource(event, all_issues=True)
            if i.severity in ("error", "fatal")
        ]
        assert problems == [], summary(event)
    assert "K583726A" not in json.dumps(found)
