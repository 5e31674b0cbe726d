"""Issue 8: an unexpected exception while converting one record is that record's 500
OperationOutcome (code ``internal``), logged with its traceback and without the record's
content; the other records of the request are unaffected."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest

from gateway import Converter, Record, Settings
from gateway.api import TokenSet, create_app
from gateway.api._app import _batch_response, _status_for
from gateway.errors import Issue
from gateway.reports import WorkerCrash
from tests.api.test_app import AUTH, TOKEN, Client

HL7V2 = Path(__file__).resolve().parents[2] / "examples" / "hl7v2"
REFERRAL = (HL7V2 / "ref_i12_lax2_to_njmu2.hl7").read_bytes()
ORDER = (HL7V2 / "orm_o01_lax2_ct.hl7").read_bytes()
# What the order says about its patient (PID-3, PID-5): never in a log or a response.
PID = next(s for s in ORDER.decode("utf-8").split("\r") if s.startswith("PID")).split("|")
SECRETS = [PID[3].split("^")[0], PID[5].split("^")[0]]


class _Exploding:
    """A mapping with a bug: its message names the patient, as exceptions may."""

    def run(self, view: Any, env: Any, tz: str) -> Any:
        raise RuntimeError(f"cannot map {' '.join(SECRETS)}")


@pytest.fixture
def client(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Client:
    converter = Converter(settings)
    mappings = converter.mappings["hl7v2"]
    real = mappings.for_type

    def for_type(message_type: str) -> Any:
        return _Exploding() if message_type == "ORM^O01" else real(message_type)

    monkeypatch.setattr(mappings, "for_type", for_type)
    return Client(create_app(settings, converter, TokenSet([TOKEN])))


def _no_content(text: str) -> None:
    assert all(secret and secret not in text for secret in SECRETS)


def test_an_internal_error_is_a_500_outcome_for_that_record(
    client: Client, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR, logger="gateway"):
        resp = client.post("/convert", content=ORDER, headers=AUTH)
    assert resp.status_code == 500
    outcome = resp.json()
    assert outcome["resourceType"] == "OperationOutcome"
    [issue] = outcome["issue"]
    assert issue["code"] == "exception"
    assert issue["details"]["coding"][0]["code"] == "internal"
    assert "Traceback" not in resp.text and "RuntimeError" not in resp.text
    _no_content(resp.text)
    # The converter isolates the record and logs where it failed (gateway/pipeline.py).
    [logged] = [r for r in caplog.records if r.name.startswith("gateway")]
    assert "RuntimeError" in logged.getMessage() and "in run" in logged.traceback
    _no_content(caplog.text)


def test_in_a_batch_only_the_failing_record_is_500(client: Client) -> None:
    resp = client.post("/convert", content=REFERRAL + b"\r" + ORDER, headers=AUTH)
    assert resp.status_code == 200
    entries = resp.json()["entry"]
    assert [e["response"]["status"] for e in entries] == ["200 OK", "500 Internal Server Error"]
    assert entries[0]["resource"]["resourceType"] == "Bundle"
    outcome = entries[1]["response"]["outcome"]
    assert outcome["issue"][0]["details"]["coding"][0]["code"] == "internal"
    _no_content(json.dumps(outcome, ensure_ascii=False))  # (the referral is of 王伟 too)


@pytest.mark.parametrize("code", ["internal", "request.internal"])
def test_a_record_with_an_internal_error_is_500_among_others(code: str) -> None:
    """As records come once the converter isolates records itself: an ``internal``
    issue on one record of a batch gives it a 500 entry (statuses: gateway/errors.yaml)."""
    good = Record(b"", "request", 1, bundle_json=b'{"resourceType": "Bundle"}')
    failed = Record(b"", "request", 2, issues=[Issue(code, "the gateway failed")])
    bad = Record(b"", "request", 3, issues=[Issue("intake.no-msh", "no MSH")])
    assert _status_for(failed) == 500
    statuses = [e["response"]["status"] for e in _batch_response([good, failed, bad])["entry"]]
    assert statuses == ["200 OK", "500 Internal Server Error", "400 Bad Request"]


def test_a_failing_report_render_is_a_logged_500(
    client: Client, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    async def crash(*args: Any) -> Any:
        raise WorkerCrash("KeyError", '  File "_view.py", line 1, in build_view\n')

    monkeypatch.setattr(client.app.state.reports, "render", crash)
    with caplog.at_level(logging.ERROR, logger="gateway.api"):
        resp = client.post("/report/variants", content=b"{}", headers=AUTH)
    assert resp.status_code == 500
    assert resp.json()["issue"][0]["details"]["coding"][0]["code"] == "internal"
    assert "build_view" not in resp.text
    assert "KeyError" in caplog.text and "build_view" in caplog.text
