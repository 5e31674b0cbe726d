"""Control characters in the fields that decide whose record it is, where it goes and
under whose identifier system its numbers are read (mappings/identity-fields.yaml).

A non-identifying value of only control characters is read as absent with a warning
(gateway/intake/_controls.py). In these fields that is not harmless: MSH-4 gone, the
sender's namespace becomes MSH-3's and an MRN sent without an assigning authority is
read under it; removed from a facility code, ``LAX<0x1F>2`` names LAX2 (another
hospital's MRN system, another partner's route). They fail the record instead."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from gateway import Converter
from gateway.envelope import Record
from gateway.intake import _identifying

GOLDEN = Path(__file__).resolve().parents[1] / "golden" / "hl7v2"


def edited_batch(converter: Converter, name: str, *edits: tuple[str, str]) -> list[Record]:
    """The golden ``name`` with ``edits`` made, then omi_o23.hl7 (the batch goes on)."""
    text = (GOLDEN / name).read_text(encoding="utf-8")
    for old, new in edits:
        assert old in text, old
        text = text.replace(old, new, 1)
    second = (GOLDEN / "omi_o23.hl7").read_text(encoding="utf-8")  # the batch goes on
    return list(converter.convert((text.rstrip("\r\n") + "\r" + second).encode()))


def _resources(record: Record, kind: str) -> list[dict[str, Any]]:
    assert record.bundle is not None
    return [e["resource"] for e in record.bundle["entry"] if e["resource"]["resourceType"] == kind]


# The sender's MRN sent without an assigning authority: its system is the sender's.
_NO_AUTHORITY = ("0098765^^^NSCH^MR", "0098765^^^^MR")
_MSH = "NSCH_HIS|NSCH^2.16.156.10011.99.1.1^ISO|NSCH_RIS|NSCH^2.16.156.10011.99.1.1^ISO|"


def test_without_a_control_character_the_mrn_is_the_senders(converter: Converter) -> None:
    record = edited_batch(converter, "omi_o23.hl7", _NO_AUTHORITY)[0]
    assert record.ok, [i.line() for i in record.issues]
    [patient] = _resources(record, "Patient")
    assert patient["identifier"][0]["system"] == "https://fhir.nsch.example.cn/sid/mrn"


@pytest.mark.parametrize(
    ("msh", "where"),
    [
        # MSH-4.1 read as absent: the namespace fell to MSH-3.1 and the MRN was read
        # under https://unregistered.invalid/facility/NSCH_HIS/sid/mrn, record accepted
        ("NSCH_HIS|\\X01\\^2.16.156.10011.99.1.1^ISO|NSCH_RIS|NSCH|", "MSH-4.1"),
        # removed from a facility code: LAX2's MRN system for NSCH's patient
        ("NSCH_HIS|LAX\\X1F\\2|NSCH_RIS|NSCH|", "MSH-4.1"),
        # MSH-4 empty, MSH-3 is the namespace: the same
        ("LAX\\X1F\\2||NSCH_RIS|NSCH|", "MSH-3.1"),
        # the receiving facility is the order's performer (routing's target)
        ("NSCH_HIS|NSCH|NSCH_RIS|HKP\\X1F\\MC|", "MSH-6.1"),
    ],
)
def test_a_control_character_in_the_sender_or_receiver_fails_the_record(
    converter: Converter, msh: str, where: str
) -> None:
    records = edited_batch(converter, "omi_o23.hl7", _NO_AUTHORITY, (_MSH, msh))
    [error] = records[0].errors
    assert (error.code, error.location) == ("intake.control-characters", where)
    assert "identifying field" in error.message
    assert records[0].bundle is None and records[1].ok


_ORC12 = "||20260615101500+0800|||NS0231^梁^志东^^^^^^NSCH|"


@pytest.mark.parametrize(
    ("name", "edits", "where"),
    [
        # the ordering provider's assigning authority read as absent: NS0231 became a
        # staff id of the sender, whoever issued it
        ("omi_o23.hl7", [("NS0231^梁^志东^^^^^^NSCH|||", "NS0231^梁^志东^^^^^^\\X01\\|||")],
         "ORC-12.9.1"),
        # (OBR-16 is read when ORC-12 is empty)
        ("omi_o23.hl7", [(_ORC12, "||20260615101500+0800||||"),
                         ("无|||NS0231^梁", "无|||NS02\\X1F\\31^梁")], "OBR-16.1"),
        # what is ordered: CT1<0x1F>01 removed is another procedure code
        ("omi_o23.hl7", [("|CT101^冠状", "|CT1\\X1F\\01^冠状")], "OBR-4.1"),
        # the interpreter's institution (CNN.9) and the performing organisation
        ("oru_r01_cobranded.hl7", [("N4102&徐&静&&&&&&NJMU2", "N4102&徐&静&&&&&&NJ\\X01\\MU2")],
         "OBR-32.1.9"),
        ("oru_r01_cobranded.hl7", [("&ISO^^^^LAX2", "&ISO^^^^LA\\X1F\\X2")], "OBX(1)-23.10"),
        # the referred-to provider's id and its facility (its identifier system)
        ("ref_i12_utf8.hl7", [("HK1001^PRN^HKPMC", "HK1\\X1F\\001^PRN^HKPMC")], "PRD(2)-7.1"),
        ("ref_i12_utf8.hl7", [("CARD^^^HKPMC", "CARD^^^HKP\\X1F\\MC")], "PRD(2)-4.4.1"),
        # what is diagnosed, referred and observed: codes, as what is ordered
        ("ref_i12_utf8.hl7", [("DG1|1||I25.1^", "DG1|1||I2\\X1F\\5.1^")], "DG1(1)-3.1"),
        ("ref_i12_utf8.hl7", [("|Car^心血管内科", "|C\\X01\\ar^心血管内科")], "RF1-3.1"),
        ("oru_r01_chinese.hl7", [("TX|59776-5^检查所见", "TX|5977\\X1F\\6-5^检查所见")],
         "OBX(2)-3.1"),
    ],
)  # fmt: skip
def test_a_control_character_in_a_provider_organisation_or_code_fails_the_record(
    converter: Converter, name: str, edits: list[tuple[str, str]], where: str
) -> None:
    _refused_at(converter, name, edits, where)


def _refused_at(converter: Converter, name: str, edits: list[tuple[str, str]], where: str) -> None:
    """The edited message is refused for the control character at ``where`` alone; the
    batch's last message still converts."""
    records = edited_batch(converter, name, *edits)
    errors = [(e.code, e.location) for e in records[0].errors]
    assert errors == [("intake.control-characters", where)], [i.line() for i in records[0].issues]
    assert records[0].bundle is None and records[-1].ok


@pytest.mark.parametrize(
    ("name", "old", "new", "where"),
    [
        # the ordering doctor's family name; a code's display text (identity-fields.yaml
        # hl7v2-text): text, as anywhere else; the id and code beside them still fail
        ("omi_o23.hl7", "NS0231^梁^志东^^^^^^NSCH|||", "NS0231^梁\\X01\\^志东^^^^^^NSCH|||",
         "ORC-12.2.1"),
        ("omi_o23.hl7", "|CT101^冠状动脉", "|CT101^冠状\\X1F\\动脉", "OBR-4.2"),
    ],
)  # fmt: skip
def test_a_control_character_in_a_name_or_display_text_is_removed_with_a_warning(
    converter: Converter, name: str, old: str, new: str, where: str
) -> None:
    records = edited_batch(converter, name, (old, new))
    assert records[0].ok, [i.line() for i in records[0].issues]
    warned = [(w.code, w.location) for w in records[0].issues if w.severity == "warning"]
    assert ("intake.control-characters", where) in warned
    assert records[0].bundle_json == edited_batch(converter, name)[0].bundle_json


def test_demographics_and_text_stay_warnings() -> None:
    # Not identifiers: a name, birth date or sex of only control characters is read as
    # absent (visibly: a warning names the field), never as another patient's.
    for label in ("PID-5.1.1", "PID-7", "PID-8", "NTE-3", "OBX(2)-5", "PID-11.1"):
        assert not _identifying.hl7_identifies(label), label
    for label in ("MSH-3.1", "MSH-4.1", "MSH-6.2", "ORC-12.9.1", "OBR-16.1", "OBR-32.1.9"):
        assert _identifying.hl7_identifies(label), label
    for label in ("OBX(3)-23.10", "PRD(2)-7.1", "PRD-4.4.1", "OBR-4.1", "OBR-44.1", "DG1-3.1"):
        assert _identifying.hl7_identifies(label), label


_STUDY_OBX = "113014^DICOM Study^DCM||2.16.156.10011.99.1.4.3.20260610.1|"


@pytest.mark.parametrize(
    ("name", "edits", "where"),
    [
        # the report's study: removed, ...20260610.1<0x01>2 named study ...20260610.12,
        # perhaps another patient's images (DICOM refuses a UID with one: UI)
        ("oru_r01_cobranded.hl7",
         [(_STUDY_OBX, _STUDY_OBX.replace(".1|", ".1\\X01\\2|"))], "OBX(1)-5"),
        # the RIS's Study Instance UID of an IHE RAD-4 order (IPC-3 is listed)
        ("omi_o23.hl7",
         [("IPC|NS2026061500017^NSCH|RP2026061501^NSCH|2.16.156.10011.99.1.1.3.20260615.17|",
           "ZDS|2.16.156.10011.99.1.1.3.2026\\X1F\\0615.17^NSCH_RIS^Application^DICOM\rIPC|NS2026061500017^NSCH|RP2026061501^NSCH||")],
         "ZDS-1.1"),
    ],
)  # fmt: skip
def test_a_control_character_in_a_study_instance_uid_fails_the_record(
    converter: Converter, name: str, edits: list[tuple[str, str]], where: str
) -> None:
    _refused_at(converter, name, edits, where)


def test_a_control_character_in_findings_text_stays_a_warning(converter: Converter) -> None:
    # OBX-5 is identifying only in the OBX that names the DICOM study (OBX-3 113014)
    text = "左侧基底节区见一约8mm×6mm低密度软化灶"
    records = edited_batch(
        converter, "oru_r01_cobranded.hl7", (text, text.replace("8mm", "8\\X07\\mm", 1))
    )
    assert records[0].ok, [i.line() for i in records[0].issues]
    assert [(w.code, w.location) for w in records[0].warnings] == [
        ("intake.control-characters", "OBX(2)-5")
    ]
