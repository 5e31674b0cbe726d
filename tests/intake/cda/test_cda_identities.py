"""One identity per CDA document, by issuer: an id is a number within its root, so

* two numbers of one root on the patient (two 病案号 of one hospital, two 身份证号) are one
  person with two numbers in one system, or two people: refused;
* an id without a root names no issuer: it is no identifier at all (never one system
  shared by every root-less number of every hospital), and the document's own id needs
  its root;
* an order named by two elements is one order only when they share a number: a
  placer-only and a filler-only order cannot be told to be one.

Refused naming the XPath, never a number; each engine gives the same answer."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gateway import Converter

REPO = Path(__file__).resolve().parents[3]
CDA = REPO / "examples/imaging/lax2-ct-report-cobranded.xml"
MRN = '<id root="2.16.156.10011.1.13" extension="0012345"/>'
ID_CARD = '<id root="2.16.156.10011.1.3" extension="341122196604200135"/>'
ORDER = '<id root="2.16.156.10011.1.24" extension="PLC0001"/>\n    </order>'
ORDER_ON_PATIENT = '<id root="2.16.156.10011.1.24" extension="PLC0001"/>\n      <addr'
DOCUMENT_ID = '<id root="2.16.156.10011.1.1" extension="LAX2-CT-20260610-0001-NJMU2"/>'
FILLER = '<id root="2.16.156.10011.99.1.4.9" extension="F77"/>'
SECRETS = ("0099999", "110101198001010011", "F77", "PLC0009", "王伟", "0012345")


def _convert(converter: Converter, *edits: tuple[str, str]) -> list[tuple[str, str | None]]:
    text = CDA.read_text(encoding="utf-8")
    for old, new in edits:
        assert old in text
        text = text.replace(old, new, 1)
    [record] = converter.convert(text.encode("utf-8"))
    for issue in record.issues:
        assert not any(secret in issue.line() for secret in SECRETS)
    return [(e.code, e.location) for e in record.errors]


def _bundle(converter: Converter, *edits: tuple[str, str]) -> dict[str, object]:
    text = CDA.read_text(encoding="utf-8")
    for old, new in edits:
        text = text.replace(old, new, 1)
    [record] = converter.convert(text.encode("utf-8"))
    assert record.ok, [i.line() for i in record.issues]
    return dict(record.bundle or {})


def _resource(bundle: dict[str, object], kind: str) -> dict[str, object]:
    entries = bundle["entry"]
    assert isinstance(entries, list)
    return next(e["resource"] for e in entries if e["resource"]["resourceType"] == kind)


@pytest.mark.parametrize("engine", ["interpreted", "compiled", "ceiling"])
@pytest.mark.parametrize(
    ("edit", "location"),
    [
        # two 病案号 of 来安县第二人民医院 on one patientRole
        (
            (MRN, MRN + '<id root="2.16.156.10011.1.13" extension="0099999"/>'),
            "/ClinicalDocument/recordTarget/patientRole/id[3]",
        ),
        # two resident identity card numbers on one patient
        (
            (ID_CARD, ID_CARD + '<id root="2.16.156.10011.1.3" extension="110101198001010011"/>'),
            "/ClinicalDocument/recordTarget/patientRole/patient/id[2]",
        ),
        # the MRN root on patientRole and again, with another number, on the patient
        (
            (ID_CARD, ID_CARD + '<id root="2.16.156.10011.1.13" extension="0099999"/>'),
            "/ClinicalDocument/recordTarget/patientRole/patient/id[2]",
        ),
    ],
    ids=["two-mrns", "two-id-cards", "mrn-on-patient"],
)
def test_two_numbers_of_one_issuer_on_the_patient_are_refused(
    engines: dict[str, Converter], engine: str, edit: tuple[str, str], location: str
) -> None:
    errors = _convert(engines[engine], edit)
    assert errors == [("mapping.conflicting-identifiers", location)]


def test_the_same_number_given_twice_is_one_patient(converter: Converter) -> None:
    assert _convert(converter, (MRN, MRN + MRN)) == []


@pytest.mark.parametrize("engine", ["interpreted", "compiled", "ceiling"])
def test_a_second_patient_role_is_refused_as_a_second_patient(
    engines: dict[str, Converter], engine: str
) -> None:
    # Its numbers differ from the first's too: it is refused as the second patient it is.
    text = CDA.read_text(encoding="utf-8")
    start, end = text.index("<recordTarget"), text.index("</recordTarget>") + 15
    second = text[start:end].replace("0012345", "0099999").replace("PLC0001", "PLC0009")
    errors = _convert(engines[engine], ("</recordTarget>", "</recordTarget>" + second))
    assert errors == [("mapping.several-patients", "/ClinicalDocument/recordTarget[2]/patientRole")]


def test_an_id_without_a_root_is_no_identifier(converter: Converter) -> None:
    # Before, it became system "urn:oid:" — one system for every root-less number of
    # every hospital: this patient and another hospital's 0012345 were one identifier.
    bundle = _bundle(converter, (ID_CARD, ID_CARD + '<id extension="0099999"/>'))
    identifiers = _resource(bundle, "Patient")["identifier"]
    assert isinstance(identifiers, list)
    assert all(i["system"].startswith(("https://", "urn:oid:2.")) for i in identifiers)
    assert "0099999" not in json.dumps(bundle)


def test_root_less_order_ids_are_not_compared_and_not_linked(converter: Converter) -> None:
    # Two root-less numbers that differ name no order: not two orders, and not the
    # report's order either; the report is linked by the order number it can name.
    edit = (ORDER, '<id extension="PLC0009"/><id extension="F77"/>\n    </order>')
    assert _convert(converter, edit) == []
    report = _resource(_bundle(converter, edit), "DiagnosticReport")
    assert report["basedOn"] == [
        {
            "type": "ServiceRequest",
            "identifier": {
                "system": "https://fhir.lax2.example.cn/sid/placer-order",
                "value": "PLC0001",
            },
        }
    ]


@pytest.mark.parametrize("engine", ["interpreted", "compiled", "ceiling"])
def test_a_document_id_without_a_root_is_refused(
    engines: dict[str, Converter], engine: str
) -> None:
    errors = _convert(
        engines[engine], (DOCUMENT_ID, '<id extension="LAX2-CT-20260610-0001-NJMU2"/>')
    )
    assert errors == [("mapping.required", "/ClinicalDocument/id/@root")]


@pytest.mark.parametrize("engine", ["interpreted", "compiled", "ceiling"])
@pytest.mark.parametrize(
    ("edits", "location"),
    [
        # the header's order known by its filler number only, the patientRole's
        # 电子申请单编号 by the placer's: nothing says they are one order
        (
            ((ORDER, FILLER + "\n    </order>"),),
            "/ClinicalDocument/recordTarget/patientRole/id[4]",
        ),
        # a placer-only order and a filler-only order (no 电子申请单编号 on patientRole)
        (
            (
                (ORDER_ON_PATIENT, "<addr"),
                (
                    "</inFulfillmentOf>",
                    f"</inFulfillmentOf><inFulfillmentOf><order>{FILLER}</order></inFulfillmentOf>",
                ),
            ),
            "/ClinicalDocument/inFulfillmentOf[2]/order/id",
        ),
    ],
    ids=["filler-vs-patient-role", "placer-only-and-filler-only"],
)
def test_orders_sharing_no_number_are_refused(
    engines: dict[str, Converter],
    engine: str,
    edits: tuple[tuple[str, str], ...],
    location: str,
) -> None:
    assert _convert(engines[engine], *edits) == [("mapping.conflicting-identifiers", location)]


@pytest.mark.parametrize(
    "edits",
    [
        # placer and filler numbers on one order element: one order
        ((ORDER, FILLER + ORDER),),
        # a second order element with the placer number and the filler number: it shares
        # the placer number with the first, so it is the same order
        (
            (
                "</inFulfillmentOf>",
                "</inFulfillmentOf><inFulfillmentOf><order>"
                f'<id root="2.16.156.10011.1.24" extension="PLC0001"/>{FILLER}'
                "</order></inFulfillmentOf>",
            ),
        ),
    ],
    ids=["one-element", "linked-by-the-placer-number"],
)
def test_an_orders_numbers_that_meet_are_one_order(
    converter: Converter, edits: tuple[tuple[str, str], ...]
) -> None:
    assert _convert(converter, *edits) == []


UUID_ROOT = "6F0E5A3C-1B2D-4E5F-8A9B-0C1D2E3F4A5B"


@pytest.mark.parametrize("engine", ["interpreted", "compiled", "ceiling"])
def test_a_uuid_root_is_one_issuer_in_either_case(
    engines: dict[str, Converter], engine: str
) -> None:
    # A UUID root is one issuer however its hex digits are cased (the mapping gives both
    # urn:uuid:6f0e…): two numbers under it are two numbers of one system.
    ids = (
        f'<id root="{UUID_ROOT}" extension="0099999"/>'
        f'<id root="{UUID_ROOT.lower()}" extension="F77"/>'
    )
    errors = _convert(engines[engine], (MRN, MRN + ids))
    assert errors == [
        ("mapping.conflicting-identifiers", "/ClinicalDocument/recordTarget/patientRole/id[4]")
    ]


ORDER_UUID = "A1B2C3D4-0000-4000-8000-00000000F077"
ORDER_UUID_2 = "A1B2C3D4-0000-4000-8000-00000000F078"


def _orders(*ids: str) -> str:
    """inFulfillmentOf elements, one order per id, in place of the example's order."""
    return (
        "</order></inFulfillmentOf>".join(
            ("" if n == 0 else "<inFulfillmentOf><order>") + i for n, i in enumerate(ids)
        )
        + "\n    </order>"
    )


@pytest.mark.parametrize("engine", ["interpreted", "compiled", "ceiling"])
def test_two_orders_each_identified_by_its_root_alone_refuse(
    engines: dict[str, Converter], engine: str
) -> None:
    # C-CDA orders are often a UUID root alone: two such orders are two orders, and the
    # report would be based on the first only.
    orders = _orders(f'<id root="{ORDER_UUID}"/>', f'<id root="{ORDER_UUID_2}"/>')
    errors = _convert(engines[engine], (ORDER, orders), (ORDER_ON_PATIENT, "<addr"))
    assert errors == [
        ("mapping.conflicting-identifiers", "/ClinicalDocument/inFulfillmentOf[2]/order/id")
    ]


def test_one_order_identified_by_its_root_alone_converts(converter: Converter) -> None:
    bundle = _bundle(
        converter, (ORDER, _orders(f'<id root="{ORDER_UUID}"/>')), (ORDER_ON_PATIENT, "<addr")
    )
    based_on = _resource(bundle, "DiagnosticReport")["basedOn"]
    assert isinstance(based_on, list)
    assert based_on[0]["identifier"]["value"] == f"urn:uuid:{ORDER_UUID.lower()}"
