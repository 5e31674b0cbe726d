"""One order and one study per CDA document: where a document names them in two places
(inFulfillmentOf/order/id and WS/T 500's 电子申请单编号 on patientRole; serviceEvent/id
and the DICOM object catalog), the identifiers must agree, or the report would be
linked to the first alone. Refused naming the XPath, never a number."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway import Converter

REPO = Path(__file__).resolve().parents[3]
CDA = REPO / "examples/imaging/lax2-ct-report-cobranded.xml"
ORDER = '<id root="2.16.156.10011.1.24" extension="PLC0001"/>\n    </order>'
STUDY = '<id root="2.16.156.10011.99.1.4.3.20260610.1"/>'
CATALOG = (
    '<component><section><code code="121181" codeSystem="1.2.840.10008.2.16.4"/>'
    '<entry><act classCode="ACT" moodCode="EVN">'
    '<id root="{uid}"/><code code="113014" codeSystem="1.2.840.10008.2.16.4"/>'
    "</act></entry></section></component></structuredBody>"
)


def _converted(converter: Converter, old: str, new: str) -> list[tuple[str, str | None]]:
    text = CDA.read_text(encoding="utf-8")
    assert old in text
    [record] = converter.convert(text.replace(old, new, 1).encode("utf-8"))
    for issue in record.issues:
        assert "PLC0002" not in issue.line() and "20260610.2" not in issue.line()
    return [(e.code, e.location) for e in record.errors]


@pytest.mark.parametrize(
    ("old", "new", "location"),
    [
        # the order of the header is not the one of the patientRole's 电子申请单编号
        (
            ORDER,
            ORDER.replace("PLC0001", "PLC0002"),
            "/ClinicalDocument/recordTarget/patientRole/id[4]",
        ),
        # a second serviceEvent id: another study
        (
            STUDY,
            STUDY + STUDY.replace('.1"', '.2"'),
            "/ClinicalDocument/documentationOf/serviceEvent/id[2]",
        ),
        # the object catalog's study is not the serviceEvent's
        (
            "</structuredBody>",
            CATALOG.format(uid="2.16.156.10011.99.1.4.3.20260610.2"),
            "/ClinicalDocument/component/structuredBody/component[4]/section/entry/act/id",
        ),
    ],
    ids=["order", "service-event", "catalog"],
)
def test_two_orders_or_studies_are_refused(
    converter: Converter, old: str, new: str, location: str
) -> None:
    assert _converted(converter, old, new) == [("mapping.conflicting-identifiers", location)]


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("</structuredBody>", CATALOG.format(uid="2.16.156.10011.99.1.4.3.20260610.1")),
        # an order's number of another issuer (its filler number) is the same order
        (ORDER, ORDER.replace("<id", '<id root="1.2.3.4" extension="F77"/><id', 1)),
    ],
    ids=["catalog-agrees", "filler-number"],
)
def test_the_same_order_and_study_named_twice_convert(
    converter: Converter, old: str, new: str
) -> None:
    assert _converted(converter, old, new) == []
