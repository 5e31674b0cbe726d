"""One record, one patient, at intake and mapping: a message with a second PID (ORU^R01
allows several PATIENT_RESULT groups), a CDA document with a second recordTarget, a
DICOM study whose instances name the same number of different issuers. The record is
refused naming the place, never mapped under the first patient; a batch goes on, and
the next record carries nothing of the refused one."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from pydicom.dataset import Dataset

from gateway import Converter
from gateway.envelope import Record
from tests.golden.dicom.make_studies import part10, wang_wei

REPO = Path(__file__).resolve().parents[2]
ORU = REPO / "examples/imaging/oru_r01_nsch_cta_zh.hl7"
REF = REPO / "examples/hl7v2/ref_i12_nsch_to_hkpmc.hl7"
ORM = REPO / "examples/hl7v2/orm_o01_lax2_ct.hl7"
CDA = REPO / "examples/imaging/lax2-ct-report-local.xml"
# 李四, another patient: none of it may reach an output or an error line
LI_SI = "PID|2||0099999^^^NSCH^MR||李^四^^^^^L||19600101|F"
SECRETS = ("0099999", "李", "四", "LI^SI", "MZ2026069999999")


def _segments(path: Path) -> list[str]:
    text = path.read_bytes().decode("utf-8").replace("\r\n", "\r").replace("\n", "\r")
    return [line for line in text.split("\r") if line]


def _message(segments: list[str]) -> bytes:
    return ("\r".join(segments) + "\r").encode("utf-8")


def _only(records: list[Record]) -> Record:
    [record] = records
    return record


def _refused(record: Record, code: str, location: str) -> None:
    assert record.bundle is None
    assert [(e.code, e.location) for e in record.errors] == [(code, location)]
    for issue in record.issues:
        for secret in SECRETS:
            assert secret not in issue.line()


def _with_second_pid(path: Path, after: str) -> list[str]:
    """The message with 李四's PID after the last segment named ``after``."""
    segments = _segments(path)
    last = max(n for n, s in enumerate(segments) if s.startswith(after + "|"))
    return [*segments[: last + 1], LI_SI, *segments[last + 1 :]]


@pytest.mark.parametrize(
    ("path", "after"),
    [(ORU, "PID"), (ORU, "OBR"), (ORU, "OBX"), (REF, "PID"), (ORM, "PID"), (ORM, "OBR")],
    ids=["oru-pid", "oru-second-patient-result", "oru-end", "ref", "orm", "orm-after-order"],
)
def test_a_message_with_a_second_patient_is_refused(
    converter: Converter, path: Path, after: str
) -> None:
    # ORU^R01's second PATIENT_RESULT group: its results were mapped under the first PID.
    record = _only(converter.convert(_message(_with_second_pid(path, after))))
    _refused(record, "mapping.several-patients", "PID(2)")


def test_a_refused_message_leaks_nothing_into_the_next_of_its_batch(converter: Converter) -> None:
    alone = _only(converter.convert(ORU.read_bytes()))
    bad = _with_second_pid(ORU, "OBR")
    bad[0] = bad[0].replace("NSCH20260616153000031", "NSCH20260616153000099")
    batch = converter.convert(_message(bad) + ORU.read_bytes())
    assert [r.ok for r in batch] == [False, True]
    assert batch[1].bundle_json == alone.bundle_json


def _cda_with_second_patient() -> bytes:
    text = CDA.read_text(encoding="utf-8")
    start, end = text.index("  <recordTarget"), text.index("</recordTarget>") + 15
    other = text[start:end].replace("MZ2026061000017", "MZ2026069999999")
    other = re.sub(r"<name>.*?</name>", "<name>李四</name>", other, flags=re.S)
    return (text[:end] + "\n" + other + text[end:]).encode("utf-8")


def test_a_cda_document_with_a_second_record_target_is_refused(converter: Converter) -> None:
    record = _only(converter.convert(_cda_with_second_patient()))
    _refused(record, "mapping.several-patients", "/ClinicalDocument/recordTarget[2]/patientRole")


# -- DICOM: one issuer's number, not the same digits of another issuer ----------------------
def _qualified(oid: str) -> list[Dataset]:
    item = Dataset()
    item.UniversalEntityID = oid
    item.UniversalEntityIDType = "ISO"
    return [item]


NSCH_OID, NSGP_OID = "2.16.156.10011.99.1.1", "2.16.156.10011.99.1.2"


@pytest.mark.parametrize(
    "issuers",
    [
        ({"IssuerOfPatientID": None}, {"IssuerOfPatientID": None}),
        ({}, {}),  # IssuerOfPatientID LAX2 on both, the qualifying OIDs differ
    ],
    ids=["qualifier-only", "issuer-and-qualifier"],
)
def test_a_study_whose_instances_name_different_issuing_oids_is_refused(
    converter: Converter, issuers: tuple[dict[str, Any], dict[str, Any]]
) -> None:
    nsch, nsgp = _qualified(NSCH_OID), _qualified(NSGP_OID)
    first = wang_wei(number=1, IssuerOfPatientIDQualifiersSequence=nsch, **issuers[0])
    second = wang_wei(number=2, IssuerOfPatientIDQualifiersSequence=nsgp, **issuers[1])
    items = [("a.dcm", part10(first)), ("b.dcm", part10(second))]
    record = _only(list(converter.convert_files(items)))
    _refused(
        record, "intake.dicom-patient-mismatch", "(0010,0024) IssuerOfPatientIDQualifiersSequence"
    )


def test_a_study_whose_instances_agree_on_the_issuing_oid_converts(converter: Converter) -> None:
    # (beside IssuerOfPatientID LAX2, NSCH's OID would be refused: mapping.authority-conflict)
    qualified = {
        "IssuerOfPatientID": None,
        "IssuerOfPatientIDQualifiersSequence": _qualified(NSCH_OID),
    }
    items = [(f"{n}.dcm", part10(wang_wei(number=n, **qualified))) for n in (1, 2)]
    assert _only(list(converter.convert_files(items))).ok


@pytest.mark.parametrize(
    "attrs",
    [{"PatientID": "12345"}, {"IssuerOfPatientID": "lax2"}],
    ids=["leading-zeros", "issuer-case"],
)
def test_look_alike_patient_ids_in_one_study_are_refused(
    converter: Converter, attrs: dict[str, str]
) -> None:
    items = [("a.dcm", part10(wang_wei(number=1))), ("b.dcm", part10(wang_wei(number=2, **attrs)))]
    record = _only(list(converter.convert_files(items)))
    assert [e.code for e in record.errors] == ["intake.dicom-patient-mismatch"]


def test_a_record_failing_mid_mapping_leaks_nothing_into_the_next(converter: Converter) -> None:
    # The first fails after its patient was built (a laboratory OBR, no imaging report);
    # the second, another patient's report, is what it is when converted alone.
    lab = [
        s.replace("||CT|F|", "||LAB|F|").replace("113014^DICOM Study^DCM", "1234-5^Lab^LN")
        for s in _segments(ORU)
    ]
    lab[0] = lab[0].replace("NSCH20260616153000031", "NSCH20260616153000098")
    other = [s.replace("0098765^^^NSCH^MR", "0099999^^^NSCH^MR") for s in _segments(ORU)]
    other = [s.replace("K583726A^^^HKID", "K999999A^^^HKID") for s in other]
    alone = _only(converter.convert(_message(other)))
    for _ in range(3):  # its fragments remembered, then the failure, then the other
        converter.convert(_message(lab))
    batch = converter.convert(_message(lab) + _message(other))
    assert [r.ok for r in batch] == [False, True]
    assert [e.code for e in batch[0].errors] == ["mapping.required"]
    assert batch[1].bundle_json == alone.bundle_json
    assert b"0098765" not in (batch[1].bundle_json or b"")


@pytest.mark.parametrize(
    ("authority", "converts"),
    [
        ("NSCH&2.16.156.10011.99.1.2&ISO", False),  # NSCH's namespace, NSGP's OID
        ("NSCH&2.16.156.10011.99.1.1&ISO", True),  # NSCH twice
        ("NSCH&9.9.9&ISO", True),  # an OID of no institution of the network
    ],
    ids=["two-institutions", "one-institution", "unknown-oid"],
)
def test_an_authority_naming_two_institutions_is_refused(
    converter: Converter, authority: str, converts: bool
) -> None:
    segments = [s.replace("0098765^^^NSCH^MR", f"0098765^^^{authority}^MR") for s in _segments(ORU)]
    record = _only(converter.convert(_message(segments)))
    assert record.ok is converts
    if not converts:
        assert [e.code for e in record.errors] == ["mapping.authority-conflict"]


def test_a_dicom_issuer_and_its_qualifying_oid_of_two_institutions_are_refused(
    converter: Converter,
) -> None:
    # IssuerOfPatientID LAX2, its qualifier NSCH's OID, on every instance
    qualified = {"IssuerOfPatientIDQualifiersSequence": _qualified(NSCH_OID)}
    items = [(f"{n}.dcm", part10(wang_wei(number=n, **qualified))) for n in (1, 2)]
    record = _only(list(converter.convert_files(items)))
    assert [e.code for e in record.errors] == ["mapping.authority-conflict"]
