"""CDA imaging reports → FHIR through the declarative mappings in mappings/cda/: the
mainland WS/T 500 检查报告 (local and co-branded), the C-CDA Diagnostic Imaging Report
of the corpus, and a pinned reason for every other corpus document."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from gateway import Converter
from gateway.envelope import Record
from gateway.validation import check_bundle

REPO = Path(__file__).resolve().parents[3]
GOLDEN = REPO / "tests" / "golden" / "cda"
LAX2 = "https://fhir.lax2.example.cn"
NJMU2_OID = "urn:oid:2.16.156.10011.99.1.3"
LAX2_OID = "urn:oid:2.16.156.10011.99.1.4"


def convert(converter: Converter, data: bytes, name: str = "doc.xml") -> Record:
    [record] = converter.convert(data, name)
    assert record.ok, [i.line() for i in record.issues]
    assert record.bundle is not None and not check_bundle(record.bundle)
    return record


def resources(record: Record, rtype: str) -> list[dict[str, Any]]:
    assert record.bundle is not None
    return [e["resource"] for e in record.bundle["entry"] if e["resource"]["resourceType"] == rtype]


def by_url(record: Record) -> dict[str, dict[str, Any]]:
    assert record.bundle is not None
    return {e["fullUrl"]: e["resource"] for e in record.bundle["entry"]}


def org_oid(org: dict[str, Any]) -> str:
    return str(org["identifier"][0]["value"])


def test_local_chinese_report(converter: Converter) -> None:
    record = convert(converter, (GOLDEN / "lax2-ct-report-local.xml").read_bytes())
    [report] = resources(record, "DiagnosticReport")
    urls = by_url(record)
    assert report["language"] == "zh-Hans"
    assert report["status"] == "final"
    assert report["identifier"][0] == {
        "system": f"{LAX2}/sid/document",
        "value": "LAX2-CT-20260610-0001",
    }
    assert report["category"][0]["coding"][0]["code"] == "RAD"
    codes = [(c["system"], c["code"]) for c in report["code"]["coding"]]
    # one concept, the exam: CT001 头颅CT平扫 and LOINC 30799-1 via the LAX2 ConceptMap
    assert codes == [
        ("https://fhir-gateway.example.org/CodeSystem/lax2-99lax2", "CT001"),
        ("http://loinc.org", "30799-1"),
    ]
    assert report["code"]["coding"][1]["display"] == "CT Head WO contrast"
    assert report["code"]["text"] == "头颅CT平扫"
    assert report["effectiveDateTime"] == "2026-06-10T09:05:00+08:00"
    assert report["issued"] == "2026-06-10T10:30:00+08:00"
    assert report["conclusion"].startswith("1. 左侧基底节区软化灶")
    patient = urls[report["subject"]["reference"]]
    assert patient["name"][0]["text"] == "王伟"
    assert {"system": f"{LAX2}/sid/mrn", "value": "0012345"}.items() <= patient["identifier"][
        1
    ].items()
    assert any(i["value"] == "341122196604200135" for i in patient["identifier"])
    # order and report numbers (WS/T 500 puts them under patientRole/id) are not the patient's
    assert not any(i["value"] in ("PLC0001", "CT20260610001") for i in patient["identifier"])
    [performer] = [urls[p["reference"]] for p in report["performer"]]
    assert org_oid(performer) == LAX2_OID
    [interpreter] = [urls[r["reference"]] for r in report["resultsInterpreter"]]
    assert urls[interpreter["organization"]["reference"]] is performer
    assert urls[interpreter["practitioner"]["reference"]]["name"][0]["text"] == "孙昞"
    [finding] = [urls[r["reference"]] for r in report["result"]]
    assert finding["code"]["coding"][0]["code"] == "59776-5"
    assert finding["valueString"].startswith("双侧大脑半球对称")
    # logical references to the study and the order (other conversions: docs/partners.md)
    assert report["imagingStudy"][0] == {
        "type": "ImagingStudy",
        "identifier": {
            "system": "urn:dicom:uid",
            "value": "urn:oid:2.16.156.10011.99.1.4.3.20260610.1",
        },
    }
    assert report["basedOn"][0] == {
        "type": "ServiceRequest",
        "identifier": {"system": f"{LAX2}/sid/placer-order", "value": "PLC0001"},
    }


def test_cobranded_report_names_both_institutions(converter: Converter) -> None:
    record = convert(converter, (GOLDEN / "lax2-ct-report-cobranded.xml").read_bytes())
    [report] = resources(record, "DiagnosticReport")
    urls = by_url(record)
    [performer] = [urls[p["reference"]] for p in report["performer"]]
    assert org_oid(performer) == LAX2_OID  # the exam was done at Lai'an
    signer, author = (urls[r["reference"]] for r in report["resultsInterpreter"])
    assert org_oid(urls[signer["organization"]["reference"]]) == NJMU2_OID
    assert urls[signer["practitioner"]["reference"]]["name"][0]["text"] == "徐静"
    assert signer["identifier"][0] == {
        "system": "https://fhir.njmu2.example.cn/sid/staff",
        "value": "N4102",
    }
    assert org_oid(urls[author["organization"]["reference"]]) == LAX2_OID
    assert (
        report["conclusion"].split("\n")[1] == "2. 双侧侧脑室旁白质轻度脱髓鞘改变（Fazekas 1级）。"
    )
    names = {o["name"] for o in resources(record, "Organization")}
    assert names == {"来安县第二人民医院", "南京医科大学第二附属医院"}


def test_same_people_and_places_as_the_hl7v2_conversions(converter: Converter) -> None:
    """The Patient, Organization and Practitioner ids agree with those of the ORM of the
    same exam (examples/hl7v2/orm_o01_lax2_ct.hl7), so a partner sees one of each."""
    orm = (REPO / "examples" / "hl7v2" / "orm_o01_lax2_ct.hl7").read_bytes()
    [order] = converter.convert(orm, "orm.hl7")
    report = convert(converter, (GOLDEN / "lax2-ct-report-local.xml").read_bytes())
    for rtype in ("Patient", "Organization"):
        ids = {r["id"] for r in resources(order, rtype)}
        assert {r["id"] for r in resources(report, rtype)} <= ids
    [order_request] = [
        r for r in resources(order, "ServiceRequest") if r["identifier"][0]["value"] == "PLC0001"
    ]
    [based_on] = resources(report, "DiagnosticReport")[0]["basedOn"]
    assert based_on["identifier"]["system"] == order_request["identifier"][0]["system"]


def test_a_gb18030_encoded_report_converts_to_the_same_bundle(converter: Converter) -> None:
    text = (GOLDEN / "lax2-ct-report-local.xml").read_text(encoding="utf-8")
    gb = text.replace('encoding="UTF-8"', 'encoding="GB18030"', 1).encode("gb18030")
    utf8 = convert(converter, text.encode("utf-8"))
    record = convert(converter, gb)
    assert record.charset == "GB18030"
    assert record.bundle == utf8.bundle


def test_an_unsigned_report_is_preliminary(converter: Converter) -> None:
    text = (GOLDEN / "lax2-ct-report-local.xml").read_text(encoding="utf-8")
    start, end = text.index("  <legalAuthenticator>"), text.index("</legalAuthenticator>")
    draft = text[:start] + text[end + len("</legalAuthenticator>") :]
    record = convert(converter, draft.encode())
    assert resources(record, "DiagnosticReport")[0]["status"] == "preliminary"


def test_the_ccda_diagnostic_imaging_report(converter: Converter, corpus: Path) -> None:
    record = convert(
        converter, (corpus / "cda" / "hl7_C-CDA_Diagnostic_Imaging_Report.xml").read_bytes()
    )
    [report] = resources(record, "DiagnosticReport")
    urls = by_url(record)
    assert report["language"] == "en"
    # the exam (serviceEvent code, CPT-4), its display the document's text only
    cpt = "http://www.ama-assn.org/go/cpt"
    assert report["code"]["coding"] == [{"system": cpt, "code": "70544"}]
    assert report["code"]["text"].startswith("Magnetic resonance angiography, head")
    assert report["conclusion"].startswith("Impression: No acute cardiopulmonary process.")
    [finding] = [urls[r["reference"]] for r in report["result"]]
    assert "new round density at the left hilus" in finding["valueString"]
    assert report["imagingStudy"][0]["identifier"]["value"] == (
        "urn:oid:1.2.840.113619.2.62.994044785528.114289542805"
    )
    patient = urls[report["subject"]["reference"]]
    assert patient["name"][0]["family"] == "Everyman"


# Every corpus CDA document: converts, or the pinned reason it cannot.
CORPUS_OUTCOMES = {
    "hl7_C-CDA_Diagnostic_Imaging_Report.xml": None,
    "hl7_C-CDA_Referral_Note.xml": "no mapping for CDA^57113-1",
    "hl7_C-CDA_Consult_Document_Closing_Referral.xml": "no mapping for CDA^11488-4",
    "ms_CDA_with_Embedded_PDF.ccda": "no mapping for CDA^81334-5",
    "ms_Unstructured_Document_reference.ccda": "no mapping for CDA^11490-0",
}


def test_every_corpus_document_has_a_pinned_outcome(corpus: Path) -> None:
    assert sorted(p.name for p in (corpus / "cda").iterdir()) == sorted(CORPUS_OUTCOMES)


@pytest.mark.parametrize("name", sorted(CORPUS_OUTCOMES))
def test_corpus_document_outcome(name: str, converter: Converter, corpus: Path) -> None:
    [record] = converter.convert((corpus / "cda" / name).read_bytes(), name)
    expected = CORPUS_OUTCOMES[name]
    if expected is None:
        assert record.ok, [i.line() for i in record.issues]
        return
    [issue] = record.issues
    assert issue.code == "mapping.unsupported-message"
    assert issue.location == "/ClinicalDocument/code"
    assert issue.message.startswith(expected + "; supported: CDA^18748-4, CDA^C0006")
