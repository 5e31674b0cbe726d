"""A hostile or broken CDA source: charset lies, XInclude, depth and size bombs, UCS-4
prologs, CDATA tricks. DOCTYPE/entity attacks are in test_cda_security.py."""

from __future__ import annotations

import re
import socket
from pathlib import Path
from typing import Any

import pytest

from gateway import Converter
from gateway.envelope import Record
from gateway.errors import IntakeError
from gateway.intake.cda import read_documents
from gateway.intake.cda._view import element_text

NAME = "王偉"
PATIENT = "recordTarget/patientRole/patient"


def _doc(name_xml: str = NAME, decl: str = "UTF-8", extra: str = "") -> str:
    return (
        f'<?xml version="1.0" encoding="{decl}"?>\n'
        '<ClinicalDocument xmlns="urn:hl7-org:v3"><id root="1.2.3" extension="D1"/>'
        f'<code code="C0006"/>{extra}<recordTarget><patientRole><patient>'
        f"<name>{name_xml}</name></patient></patientRole></recordTarget></ClinicalDocument>"
    )


def _error(data: bytes) -> IntakeError:
    unit = next(read_documents(data, "attack.xml"))
    assert unit.view is None and isinstance(unit.error, IntakeError)
    return unit.error


def _name(data: bytes) -> str:
    unit = next(read_documents(data, "doc.xml"))
    assert unit.error is None and unit.view is not None, unit.error
    [found] = unit.view.select(f"{PATIENT}/name", unit.view.root)
    return element_text(found.node)


@pytest.mark.parametrize("declared", ["GB18030", "GBK", "Big5", "Big5-HKSCS"])
def test_utf8_bytes_declared_chinese_multibyte_are_refused_naming_the_xpath(declared: str) -> None:
    """UTF-8 王偉 read as GB 18030 is 鐜嬪伐 without any error from libxml2 (as Big5 it
    fails with a bare "Invalid bytes"): refused, naming the field, not the name."""
    error = _error(_doc(decl=declared).encode("utf-8"))
    assert error.code == "intake.charset-mislabelled"
    where = f"/ClinicalDocument/{PATIENT}/name"
    assert error.issue.location == where
    assert declared in error.issue.message and "UTF-8" in error.issue.message
    assert NAME not in str(error.issue) and "鐜" not in str(error.issue)


@pytest.mark.parametrize("codec", ["gb18030", "big5"])
def test_chinese_bytes_in_their_declared_multibyte_charset_still_read(codec: str) -> None:
    assert _name(_doc(decl=codec.upper()).encode(codec)) == NAME


def test_the_field_named_may_be_an_attribute() -> None:
    data = _doc(name_xml="x", extra='<title lang="中文"/>', decl="GB18030").encode("utf-8")
    assert _error(data).issue.location == "/ClinicalDocument/title/@lang"


def test_a_utf8_bom_outranks_a_gb18030_declaration() -> None:
    """XML 1.0 Appendix F: the byte order mark says what the bytes are."""
    assert _name(b"\xef\xbb\xbf" + _doc(decl="GB18030").encode("utf-8")) == NAME


def test_xinclude_is_never_processed(tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("绝密-7f3a9c", encoding="utf-8")
    include = (
        '<xi:include xmlns:xi="http://www.w3.org/2001/XInclude" '
        f'href="file://{secret}" parse="text"/>'
    )
    assert "7f3a9c" not in _name(_doc(name_xml=include).encode())


@pytest.mark.parametrize("codec", ["utf-32", "utf-32-le", "utf-32-be"])
def test_a_ucs4_doctype_is_refused(codec: str) -> None:
    text = _doc().replace("?>\n", '?><!DOCTYPE x [<!ENTITY a "b">]>', 1)
    text = text.replace('encoding="UTF-8"', 'encoding="UTF-32"')
    assert _error(text.encode(codec)).code == "intake.xml-doctype"


def test_100k_levels_of_nesting_are_refused_not_recursed() -> None:
    deep = "<a>" * 100_000 + "</a>" * 100_000
    error = _error(_doc(extra=deep).encode())
    assert error.code == "intake.xml-syntax" and "depth" in error.issue.message


def test_a_20_mb_text_node_is_refused() -> None:
    error = _error(_doc(extra="<title>" + "x" * (20 << 20) + "</title>").encode())
    assert error.code == "intake.xml-syntax" and "too long" in error.issue.message


def test_cdata_split_around_its_terminator_keeps_the_text() -> None:
    assert _name(_doc(name_xml="<![CDATA[王]]]]><![CDATA[>偉]]>").encode()) == "王]]>偉"


# -- nullFlavor: a value beside a nullFlavor is no value (CDA R2 data types) ---------------

GOLDEN = Path(__file__).resolve().parents[2] / "golden" / "cda" / "lax2-ct-report-local.xml"


def _patient(converter: Converter, text: str) -> tuple[Record, dict[str, Any]]:
    [record] = converter.convert(text.encode(), source="doc.xml")
    assert record.ok and record.bundle is not None, [i.line() for i in record.issues]
    [patient] = [
        e["resource"] for e in record.bundle["entry"] if e["resource"]["resourceType"] == "Patient"
    ]
    return record, patient


def test_a_birth_time_and_gender_beside_a_null_flavor_are_not_read(converter: Converter) -> None:
    text = GOLDEN.read_text(encoding="utf-8")
    _, before = _patient(converter, text)
    assert before["birthDate"] == "1966-04-20" and before["gender"] == "male"
    text = text.replace(
        '<birthTime value="19660420"/>', '<birthTime nullFlavor="UNK" value="19660420"/>'
    )
    text = text.replace(
        "<administrativeGenderCode code=", '<administrativeGenderCode nullFlavor="UNK" code='
    )
    _, after = _patient(converter, text)
    assert "birthDate" not in after and "gender" not in after


def test_masked_patient_ids_never_identify_the_patient(converter: Converter) -> None:
    """<id nullFlavor="MSK" root=MRN extension="X"/> on every id of the patient: before,
    every such patient had MRN "X" (or the MRN OID itself) and merged with the others."""
    text = re.sub(
        r'<id root="(2\.16\.156\.10011\.1\.(?:11|13|3|32|24))" extension="[^"]+"/>',
        r'<id nullFlavor="MSK" root="\1" extension="X"/>',
        GOLDEN.read_text(encoding="utf-8"),
    )
    [record] = converter.convert(text.encode(), source="masked.xml")
    assert record.bundle is None
    assert [e.code for e in record.errors] == ["mapping.no-identity"]


def test_a_schema_location_is_never_fetched(
    converter: Converter, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("the gateway tried to reach the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    text = GOLDEN.read_text(encoding="utf-8").replace(
        'xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"',
        'xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" '
        'xsi:schemaLocation="urn:hl7-org:v3 http://127.0.0.1:9/CDA.xsd"',
    )
    _patient(converter, text)


def test_a_null_flavored_patient_name_gives_no_name(converter: Converter) -> None:
    """<name nullFlavor="UNK"/> built a HumanName whose name-representation extension had
    no value (ext-1): the Bundle failed validation. The author's Chinese name stays."""
    text = GOLDEN.read_text(encoding="utf-8")
    assert "<name>王伟</name>" in text and "<name>孙昞</name>" in text
    text = text.replace("<name>王伟</name>", '<name nullFlavor="UNK"/>')
    record, patient = _patient(converter, text)
    assert "name" not in patient
    assert not [i for i in record.issues if i.code.startswith("validation.")]
    [author] = [
        e["resource"]
        for e in record.bundle["entry"]  # type: ignore[index]
        if e["resource"]["resourceType"] == "Practitioner"
    ]
    assert author["name"][0]["text"] == "孙昞"
