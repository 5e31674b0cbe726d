"""The CDA reader: well-formedness, the root check, encodings, and the Unit it yields."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.errors import ConfigError, IntakeError
from gateway.intake import detect_format
from gateway.intake.cda import CdaView, check_path, read_documents

REPO = Path(__file__).resolve().parents[3]
LOCAL = REPO / "tests" / "golden" / "cda" / "lax2-ct-report-local.xml"


def read(data: bytes) -> CdaView:
    unit = next(read_documents(data, "t.xml"))
    assert unit.error is None, unit.error
    assert isinstance(unit.view, CdaView)
    return unit.view


def test_the_unit_names_the_document_its_type_and_custodian() -> None:
    unit = next(read_documents(LOCAL.read_bytes(), LOCAL.name))
    assert (unit.format, unit.kind, unit.index) == ("cda", "document", 1)
    assert unit.control_id == "2.16.156.10011.1.1^LAX2-CT-20260610-0001"
    assert unit.message_type == "CDA^C0006"
    assert unit.sender == "LAX2"
    assert unit.charset == "UTF-8"
    assert detect_format(LOCAL.read_bytes()) == "cda"


def test_paths_read_attributes_text_and_relative_nodes() -> None:
    view = read(LOCAL.read_bytes())
    root = view.root
    assert view.first("/ClinicalDocument/realmCode/@code", root) == "CN"
    [patient] = view.select("recordTarget/patientRole", root)
    assert view.first("patient/name", patient) == "王伟"
    assert view.first("id[@root='2.16.156.10011.1.13']/@extension", patient) == "0012345"
    assert view.first("patient/nothing", patient) is None
    assert view.label("patient/id/@extension", patient) == (
        "/ClinicalDocument/recordTarget/patientRole/patient/id/@extension"
    )
    assert view.label("patient/nothing", patient) == (
        "/ClinicalDocument/recordTarget/patientRole/patient/nothing"
    )
    values = view.values("id/@*", patient)
    assert ("0012345", "/ClinicalDocument/recordTarget/patientRole/id[2]/@extension") in values


def test_narrative_keeps_paragraphs_and_captions_as_lines() -> None:
    view = read(LOCAL.read_bytes())
    text = view.first("//section[title='检查报告']/text", view.root)
    assert text is not None
    lines = text.split("\n")
    assert lines[0] == "检查方法: 头颅CT平扫，层厚5mm。"
    assert lines[2].startswith("诊断意见: 1. 左侧基底节区软化灶")


def test_not_well_formed_xml_names_line_and_column() -> None:
    data = '<?xml version="1.0"?>\n<ClinicalDocument xmlns="urn:hl7-org:v3">\n<title>王伟</titel>\n'
    unit = next(read_documents(data.encode(), "bad.xml"))
    assert isinstance(unit.error, IntakeError)
    assert unit.error.code == "intake.xml-syntax"
    assert "(line 3, column" in unit.error.issue.message
    assert unit.error.issue.message.count(", column") == 1  # not libxml2's copy as well
    assert unit.error.location is not None and unit.error.location.startswith("line 3")


def test_encoding_errors_do_not_quote_the_bytes() -> None:
    data = '<?xml version="1.0" encoding="UTF-8"?><ClinicalDocument><t>王伟</t></ClinicalDocument>'
    unit = next(read_documents(data.encode("gb18030"), "gb.xml"))
    assert isinstance(unit.error, IntakeError)
    assert "0x" not in unit.error.issue.message


@pytest.mark.parametrize(
    ("xml", "expected"),
    [
        ("<ClinicalDocument/>", "<ClinicalDocument> in no namespace"),
        ('<Bundle xmlns="http://hl7.org/fhir"/>', "<Bundle> in namespace http://hl7.org/fhir"),
    ],
)
def test_a_root_other_than_a_v3_clinical_document_is_refused(xml: str, expected: str) -> None:
    unit = next(read_documents(xml.encode(), "x.xml"))
    assert isinstance(unit.error, IntakeError)
    assert unit.error.code == "intake.not-cda"
    assert expected in unit.error.issue.message
    assert "not a CDA R2 <ClinicalDocument> in namespace urn:hl7-org:v3" in unit.error.issue.message


@pytest.mark.parametrize("encoding", ["GB18030", "Big5", "UTF-16"])
def test_the_declared_encoding_is_honoured(encoding: str) -> None:
    text = (
        f'<?xml version="1.0" encoding="{encoding}"?>'
        '<ClinicalDocument xmlns="urn:hl7-org:v3"><id root="1.2.3" extension="E1"/>'
        '<code code="C0006"/><title>來安縣第二人民醫院 王偉</title></ClinicalDocument>'
    )
    unit = next(read_documents(text.encode(encoding), "enc.xml"))
    assert unit.charset == encoding
    assert unit.view.first("/ClinicalDocument/title", unit.view.root) == "來安縣第二人民醫院 王偉"


@pytest.mark.parametrize(
    ("path", "problem"),
    [
        ("recordTarget/[", "is not an XPath 1.0 expression"),
        ("hl7:recordTarget/hl7:patientRole", "without a prefix"),
    ],
)
def test_bad_paths_fail_when_mappings_load(path: str, problem: str) -> None:
    with pytest.raises(ConfigError, match=problem):
        check_path(path)


def test_tracing_lists_what_no_mapping_read() -> None:
    view = read(LOCAL.read_bytes())
    view.trace()
    view.first("recordTarget/patientRole/patient/name", view.root)
    unmapped = view.unmapped()
    assert "/ClinicalDocument/title" in unmapped
    assert "/ClinicalDocument/recordTarget/patientRole/patient/name" not in unmapped
    assert "/ClinicalDocument/recordTarget/patientRole/patient/birthTime" in unmapped
    assert not any(u.endswith("templateId") for u in unmapped)
