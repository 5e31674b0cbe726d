"""One patient per CDA document: a recordTarget/patientRole holding a second <patient>
(李四 beside 王伟) is refused naming the XPath, never mapped as one Patient with two
people's names and identity card numbers."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway import Converter

REPO = Path(__file__).resolve().parents[3]
CDA = REPO / "examples/imaging/lax2-ct-report-cobranded.xml"
LI_SI = (
    '<patient classCode="PSN" determinerCode="INSTANCE">'
    '<id root="2.16.156.10011.1.3" extension="110101198001010011"/>'
    "<name>李四</name></patient>"
)
SECRETS = ("李四", "110101198001010011", "王伟", "0012345")


def _with(text: str) -> bytes:
    return text.encode("utf-8")


def _refused(converter: Converter, data: bytes, location: str) -> None:
    [record] = converter.convert(data)
    assert record.bundle is None
    assert [(e.code, e.location) for e in record.errors] == [("mapping.several-patients", location)]
    for issue in record.issues:
        assert not any(secret in issue.line() for secret in SECRETS)


@pytest.mark.parametrize("where", ["after", "before"])
def test_a_second_patient_in_the_patient_role_is_refused(converter: Converter, where: str) -> None:
    text = CDA.read_text(encoding="utf-8")
    if where == "after":
        text = text.replace("</patient>", "</patient>" + LI_SI, 1)
    else:
        text = text.replace('<patient classCode="PSN"', LI_SI + '<patient classCode="PSN"', 1)
    location = "/ClinicalDocument/recordTarget/patientRole/patient[2]"
    _refused(converter, _with(text), location)


def test_one_patient_converts(converter: Converter) -> None:
    [record] = converter.convert(CDA.read_bytes())
    assert record.ok
