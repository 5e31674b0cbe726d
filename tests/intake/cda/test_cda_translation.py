"""An English CDA report written as the translation of a Chinese one (relatedDocument
typeCode XFRM) converts with the translation-of extension, and the report variants pair
the two; an English report of another patient is refused."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest
from lxml import etree  # type: ignore[import-untyped]

from gateway import Converter, Settings
from gateway.errors import MappingError
from gateway.reports import ReportVariants

EXAMPLES = Path(__file__).resolve().parents[3] / "examples" / "imaging"
V3 = "urn:hl7-org:v3"
DCM = "1.2.840.10008.2.16.4"
TRANSLATION_OF = "https://fhir-gateway.example.org/StructureDefinition/translation-of"
ORIGINAL_ID = ("2.16.156.10011.1.1", "LAX2-CT-20260610-0001-NJMU2")


def _q(tag: str) -> str:
    return f"{{{V3}}}{tag}"


def english_version(other_patient: bool = False) -> bytes:
    """The co-branded Lai'an report as its author would write it in English (or, with
    ``other_patient``, an English report of somebody else that names it by mistake)."""
    root = etree.fromstring((EXAMPLES / "lax2-ct-report-cobranded.xml").read_bytes())
    root.find(_q("id")).set("extension", "LAX2-CT-20260610-0001-NJMU2-EN")
    root.find(_q("languageCode")).set("code", "en-GB")
    # The patient's ids (门诊号, 病案号, 身份证号) are other ones for somebody else.
    other_ids = {
        "2.16.156.10011.1.11": "MZ2026061099999",
        "2.16.156.10011.1.13": "0099999",
        "2.16.156.10011.1.3": "34112219700101001X",
    }
    for pid in root.find(_q("recordTarget")).iter(_q("id")):
        if other_patient and pid.get("root") in other_ids:
            pid.set("extension", other_ids[pid.get("root")])
    related = etree.Element(_q("relatedDocument"), typeCode="XFRM")
    parent = etree.SubElement(related, _q("parentDocument"))
    etree.SubElement(parent, _q("id"), root=ORIGINAL_ID[0], extension=ORIGINAL_ID[1])
    root.find(_q("documentationOf")).addnext(related)
    texts = {
        "影像学表现": (
            "121070",
            "Findings",
            "Old lacunar infarct in the left basal ganglia, unchanged.",
        ),
        "诊断意见": (
            "121072",
            "Impressions",
            "Old lacunar infarct, left basal ganglia; no new infarct.",
        ),
    }
    for section in root.iter(_q("section")):
        title = section.find(_q("title"))
        if title is not None and title.text in texts:
            code, name, text = texts[title.text]
            section.find(_q("code")).attrib.update(
                {"code": code, "codeSystem": DCM, "displayName": name}
            )
            title.text = name
            body = section.find(_q("text"))
            body.clear()
            body.text = text
    return etree.tostring(root, xml_declaration=True, encoding="UTF-8")


def _bundle(converter: Converter, data: bytes) -> bytes:
    [record] = converter.convert(data, source="report.xml")
    assert record.ok and record.bundle_json is not None, [i.line() for i in record.errors]
    return record.bundle_json


def _report(bundle: bytes) -> dict[str, Any]:
    [report] = [
        e["resource"]
        for e in orjson.loads(bundle)["entry"]
        if e["resource"]["resourceType"] == "DiagnosticReport"
    ]
    return report


def test_an_xfrm_document_names_its_original(converter: Converter) -> None:
    original = _report(_bundle(converter, (EXAMPLES / "lax2-ct-report-cobranded.xml").read_bytes()))
    report = _report(_bundle(converter, english_version()))
    assert report["language"] == "en"
    [link] = [e for e in report["extension"] if e["url"] == TRANSLATION_OF]
    # The parent's id becomes the identifier the original report itself was given.
    assert link["valueReference"]["identifier"] == original["identifier"][0]
    assert link["valueReference"]["identifier"]["value"] == ORIGINAL_ID[1]


def test_the_bilingual_variant_pairs_a_cda_report_with_its_english_cda(
    converter: Converter, settings: Settings
) -> None:
    chinese = _bundle(converter, (EXAMPLES / "lax2-ct-report-cobranded.xml").read_bytes())
    english = _bundle(converter, english_version())
    variant = ReportVariants(settings).variant(chinese, "bilingual", english)
    assert not variant.pending
    assert b"Old lacunar infarct" in variant.html


def test_an_english_report_of_another_patient_is_refused(
    converter: Converter, settings: Settings
) -> None:
    chinese = _bundle(converter, (EXAMPLES / "lax2-ct-report-cobranded.xml").read_bytes())
    english = _bundle(converter, english_version(other_patient=True))
    with pytest.raises(MappingError) as caught:
        ReportVariants(settings).variant(chinese, "bilingual", english)
    assert caught.value.issue.code == "mapping.translation-other-patient"
