"""The API's report-variant endpoint and the content-type routing of /convert."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from gateway import Converter, Settings
from gateway.api import TokenSet, create_app
from tests.api.test_app import TOKEN, Client

REPO = Path(__file__).resolve().parents[2]
IMAGING = REPO / "examples" / "imaging"
BEARER = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def client(converter: Converter, settings: Settings) -> Iterator[Client]:
    app = create_app(settings, converter, TokenSet([TOKEN]))
    yield Client(app)
    app.state.reports.shutdown()  # the report workers (no lifespan in ASGITransport)


def _bundle(converter: Converter, name: str) -> dict[str, Any]:
    [record] = converter.convert((IMAGING / name).read_bytes(), source=name)
    assert record.ok and record.bundle is not None
    return record.bundle


def _report(bundle: dict[str, Any]) -> dict[str, Any]:
    [report] = [
        e["resource"]
        for e in bundle["entry"]
        if e["resource"]["resourceType"] == "DiagnosticReport"
    ]
    return report


def test_bilingual_variant_with_the_partners_english_report(
    client: Client, converter: Converter
) -> None:
    chinese = _bundle(converter, "oru_r01_nsch_cta_zh.hl7")
    english = _bundle(converter, "oru_r01_hkpmc_cta_en.hl7")
    body = {
        "resourceType": "Parameters",
        "parameter": [
            {"name": "report", "resource": chinese},
            {"name": "english", "resource": english},
        ],
    }
    resp = client.post(
        "/report/variants?lang=bilingual", content=orjson.dumps(body), headers=BEARER
    )
    assert resp.status_code == 200, resp.text
    report = _report(resp.json())
    forms = {(f["language"], f["contentType"]) for f in report["presentedForm"]}
    assert {lang for lang, _ in forms} == {"zh-Hans", "zh-Hant-HK", "en"}
    assert {kind for _, kind in forms} == {"text/html", "application/pdf"}
    translations = {
        (sub["valueCode"] if sub["url"] == "lang" else None)
        for ext in report["_conclusion"]["extension"]
        for sub in ext["extension"]
    }
    assert {"zh-Hant-HK", "en"} <= translations
    pdf = next(f for f in report["presentedForm"] if f["contentType"] == "application/pdf")
    assert base64.b64decode(pdf["data"]).startswith(b"%PDF")


def test_pdf_of_a_report_without_english_is_marked_pending(
    client: Client, converter: Converter
) -> None:
    chinese = orjson.dumps(_bundle(converter, "oru_r01_nsch_cta_zh.hl7"))
    resp = client.post(
        "/report/variants?lang=bilingual&format=pdf", content=chinese, headers=BEARER
    )
    assert resp.status_code == 200 and resp.headers["content-type"] == "application/pdf"
    assert resp.content.startswith(b"%PDF")


@pytest.mark.parametrize(
    ("body", "query", "status", "code"),
    [
        (b"not json", "lang=en", 400, None),
        (b'{"resourceType": "Parameters", "parameter": []}', "lang=en", 400, "report-parameters"),
        (b'{"resourceType": "Patient"}', "lang=en", 400, None),
        # a non-list parameter raised TypeError (a bare 500)
        (b'{"resourceType": "Parameters", "parameter": 5}', "lang=en", 400, "report-parameters"),
        (
            b'{"resourceType": "Parameters", "parameter": [{"name": "report", "valueString": '
            b'"x"}]}',
            "lang=en",
            400,
            "report-parameters",
        ),
        (
            b'{"resourceType": "Parameters", "parameter": ['
            b'{"name": "report", "resource": {"resourceType": "DiagnosticReport"}},'
            b'{"name": "report", "resource": {"resourceType": "DiagnosticReport"}}]}',
            "lang=en",
            400,
            "report-parameters",
        ),
        (  # raised ValueError from get_fhir_model_class (issue 8)
            b'{"resourceType": "Parameters", "parameter": [{"name": "report", "resource": '
            b'{"resourceType": "Bundle", "type": "collection", "entry": [{"resource": '
            b'{"resourceType": "Foo"}}]}}]}',
            "lang=en",
            400,
            "report-resource-type",
        ),
    ],
)
def test_variant_errors_are_operation_outcomes(
    client: Client, body: bytes, query: str, status: int, code: str | None
) -> None:
    resp = client.post(f"/report/variants?{query}", content=body, headers=BEARER)
    assert resp.status_code == status
    outcome = resp.json()
    assert outcome["resourceType"] == "OperationOutcome"
    if code:
        assert code in outcome["issue"][0]["details"]["coding"][0]["code"]
    if code == "report-resource-type":
        assert outcome["issue"][0]["expression"] == ["Bundle.entry[0].resource.resourceType"]


def test_variants_need_a_token(client: Client) -> None:
    resp = client.post("/report/variants", content=b"{}")
    assert resp.status_code == 401


def test_convert_takes_the_format_from_the_content_type(client: Client) -> None:
    # XML declared as such goes to the CDA reader even though ?format= is not given.
    resp = client.post(
        "/convert",
        content=b"<notcda/>",
        headers={**BEARER, "Content-Type": "application/xml"},
    )
    assert resp.status_code in (400, 422)
    issue = resp.json()["issue"][0]
    assert "ClinicalDocument" in issue["diagnostics"]


def test_convert_a_dicom_instance_with_a_default_sender(client: Client) -> None:
    from tests.golden.dicom.make_studies import instance, part10

    body = part10(instance("2.25.4243", 1, 1, PatientID="0012345"))
    headers = {**BEARER, "Content-Type": "application/dicom"}
    refused = client.post("/convert", content=body, headers=headers)
    assert refused.status_code == 422  # nobody says whose PatientID it is
    resp = client.post("/convert?sender=LAX2", content=body, headers=headers)
    assert resp.status_code == 200, resp.text
    kinds = {e["resource"]["resourceType"] for e in resp.json()["entry"]}
    assert {"ImagingStudy", "Patient", "Organization", "Endpoint"} <= kinds
    unknown = client.post("/convert?sender=NOWHERE", content=body, headers=headers)
    assert unknown.status_code == 400
    assert unknown.json()["issue"][0]["location"] == ["sender"]


def test_the_partner_preference_picks_the_variant(client: Client, converter: Converter) -> None:
    chinese = orjson.dumps(_bundle(converter, "oru_r01_nsch_cta_zh.hl7"))
    resp = client.post("/report/variants?for=HKPMC", content=chinese, headers=BEARER)
    assert resp.status_code == 200, resp.text
    report = _report(resp.json())
    # HKPMC prefers Hong Kong Traditional beside English: one form showing both.
    assert {f["language"] for f in report["presentedForm"]} == {"zh-Hant-HK"}
    unknown = client.post("/report/variants?for=NOWHERE", content=chinese, headers=BEARER)
    assert unknown.status_code == 400


def test_an_english_report_of_another_patient_is_refused_by_identifier(
    client: Client, converter: Converter
) -> None:
    """Issue 8: a bare English DiagnosticReport naming another MRN by a logical reference
    (no Patient resource) must not be joined to the Chinese report."""
    chinese = _bundle(converter, "oru_r01_nsch_cta_zh.hl7")
    english = _report(_bundle(converter, "oru_r01_hkpmc_cta_en.hl7"))
    # bare: made elsewhere, so it claims no gateway profile (meta) either
    english = {
        k: v for k, v in english.items() if k not in ("result", "resultsInterpreter", "meta")
    }
    mrn = _report(chinese)["subject"]
    patient = next(e["resource"] for e in chinese["entry"] if e["fullUrl"] == mrn["reference"])
    [system] = {i["system"] for i in patient["identifier"] if i["value"] == "0098765"}
    english["subject"] = {"identifier": {"system": system, "value": "0099999"}}
    body = {
        "resourceType": "Parameters",
        "parameter": [
            {"name": "report", "resource": chinese},
            {"name": "english", "resource": english},
        ],
    }
    for fmt in ("json", "html"):
        resp = client.post(
            f"/report/variants?lang=bilingual&format={fmt}",
            content=orjson.dumps(body),
            headers=BEARER,
        )
        assert resp.status_code == 422, resp.text
        issue = resp.json()["issue"][0]
        assert issue["details"]["coding"][0]["code"] == "mapping.translation-other-patient"
        for secret in ("0098765", "0099999", "許", "许", "HUI"):
            assert secret not in resp.text
