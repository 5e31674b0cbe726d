"""Issue 15's smaller API points: a ?sender= error names no server path; a body whose
line ends were stripped (curl -d) is told so; every failed record leaves a log line
naming the record, the field and the code, never its data."""

from __future__ import annotations

import logging
from pathlib import Path

import orjson
import pytest

from gateway import Converter, Settings
from gateway.api import TokenSet, create_app
from gateway.logs import JsonFormatter
from tests.api.test_app import AUTH, TOKEN, Client

HL7V2 = Path(__file__).resolve().parents[2] / "examples" / "hl7v2"
ORDER = (HL7V2 / "orm_o01_lax2_ct.hl7").read_bytes()
CONTROL_ID = "LAX2FAILS0001"
# The patient's ids and names in the order: never in a log line or an error
SECRETS = ["0012345", "J20250043", "341122196604200135", "王", "WANG", "19660420"]


@pytest.fixture(scope="module")
def client(converter: Converter, settings: Settings) -> Client:
    return Client(create_app(settings, converter, TokenSet([TOKEN])))


def test_an_unknown_sender_names_no_server_path(client: Client, settings: Settings) -> None:
    resp = client.post("/convert?sender=XXXX", content=ORDER, headers=AUTH)
    assert resp.status_code == 400
    [issue] = resp.json()["issue"]
    text = issue["diagnostics"] if "diagnostics" in issue else issue["details"]["text"]
    assert "?sender= names no institution" in text and "'AAAA'" in text
    assert str(settings.network) not in resp.text and "/" not in text.split("(")[0]
    assert ".yaml" not in resp.text and str(Path.home()) not in resp.text
    assert issue["location"] == ["sender"] and "expression" not in issue  # not FHIRPath


def test_a_flattened_message_is_told_it_lost_its_line_ends(client: Client) -> None:
    flat = ORDER.replace(b"\r", b"").replace(b"\n", b"")  # what curl -d sends
    resp = client.post("/convert", content=flat, headers=AUTH)
    assert resp.status_code == 400
    assert "no segment separators (carriage returns)" in resp.text
    assert "unknown character set" not in resp.text


def _failing_order() -> bytes:
    """The order with a birth date that is no date: it fails in the mapping at PID-7."""
    assert b"|19660420|" in ORDER
    assert b"|LAX220260610083000001|" in ORDER
    failing = ORDER.replace(b"|19660420|", b"|1966042X|")
    return failing.replace(b"|LAX220260610083000001|", f"|{CONTROL_ID}|".encode())


def test_each_failed_record_leaves_a_log_line_without_patient_data(
    client: Client, caplog: pytest.LogCaptureFixture
) -> None:
    body = _failing_order() + b"\r" + ORDER  # two records: one fails, one converts
    with caplog.at_level(logging.WARNING, logger="gateway.api"):
        resp = client.post("/convert", content=body, headers=AUTH)
    assert resp.status_code == 200  # a batch-response
    statuses = [e["response"]["status"] for e in resp.json()["entry"]]
    assert statuses[0].startswith(("400", "422")) and statuses[1] == "200 OK"
    lines = [r for r in caplog.records if r.name == "gateway.api"]
    assert len(lines) == 1
    [line] = lines
    code = resp.json()["entry"][0]["response"]["outcome"]["issue"][0]["details"]["coding"][0]
    text = line.getMessage()
    assert f"message {CONTROL_ID}" in text and "PID-7" in text and code["code"] in text
    as_json = orjson.loads(JsonFormatter().format(line))
    assert as_json["record"] == f"message {CONTROL_ID}" and as_json["outcome"] == "failed"
    assert as_json["code"] == code["code"] and as_json["level"] == "warning"
    logged = caplog.text + JsonFormatter().format(line)
    assert not [s for s in SECRETS if s in logged]


def test_a_refused_report_leaves_a_log_line(
    client: Client, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="gateway.api"):
        resp = client.post("/report/variants", content=b'{"resourceType": "Patient"}', headers=AUTH)
    assert resp.status_code == 400
    [line] = [r for r in caplog.records if r.name == "gateway.api"]
    assert "report variant: request failed" in line.getMessage()
    assert line.__dict__["code"].startswith("intake.report")


def test_masked_values_are_explained_where_errors_are_documented() -> None:
    docs = Path(__file__).resolve().parents[2] / "docs"
    api = (docs / "api.md").read_text(encoding="utf-8")
    assert "### Masked values" in api and "'AAAAA AAAAA'" in api
    errors = (docs / "errors.md").read_text(encoding="utf-8")
    intro = errors.split("| family |")[0]
    assert "(api.md#masked-values)" in intro and "'AAAAA AAAAA'" in intro


def test_a_study_without_a_sender_asks_for_it_and_takes_it(client: Client) -> None:
    from tests.golden.dicom.make_studies import instance

    study = [
        instance("2.25.6161", 1, n, PatientID="0012345", PatientName="WANG^WEI").to_json_dict()
        for n in (1, 2)
    ]
    headers = {**AUTH, "Content-Type": "application/dicom+json"}
    resp = client.post("/convert", content=orjson.dumps(study), headers=headers)
    assert resp.status_code == 422
    text = resp.text
    assert "intake.dicom-no-sender" in text and "?sender=" in text
    assert "PatientID is empty" not in text and "0012345" not in text
    resp = client.post("/convert?sender=LAX2", content=orjson.dumps(study), headers=headers)
    assert resp.status_code == 200, resp.text
