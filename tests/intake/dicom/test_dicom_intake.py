"""DICOM intake through the whole pipeline: folders, archives, DICOM JSON, broken files.

Studies are built with pydicom in the test (headers only): 王伟's chest CT at Lai'an
(GB18030 name) unless a test needs another.
"""

from __future__ import annotations

import io
import json
import warnings
import zipfile
from typing import Any

import pytest
from pydicom import Dataset, dcmread
from pydicom.uid import ImplicitVRLittleEndian

from gateway import Converter
from gateway.envelope import Record
from gateway.intake.dicom import _reader, read_studies
from tests.golden.dicom.make_studies import LAX2_CHEST, NSCH_KNEE, instance, part10, wang_wei
from tests.intake.dicom._shown import shown


def _resources(record: Record, kind: str) -> list[dict[str, Any]]:
    assert record.bundle is not None, [i.line() for i in record.issues]
    return [e["resource"] for e in record.bundle["entry"] if e["resource"]["resourceType"] == kind]


def _study_of(record: Record) -> dict[str, Any]:
    [study] = _resources(record, "ImagingStudy")
    return study


def _chest(series: int = 1, number: int = 1, **attrs: Any) -> bytes:
    return part10(wang_wei(series=series, number=number, **attrs))


def test_a_multi_series_study_in_files_becomes_one_imaging_study(
    converter: Converter, tmp_path: Any
) -> None:
    items = [(f"S{s}/IM{n}.dcm", _chest(s, n)) for s in (2, 1) for n in (2, 1)]
    for name, data in items:
        (tmp_path / name.replace("/", "_")).write_bytes(data)
    files = [(p.name, p.read_bytes()) for p in sorted(tmp_path.iterdir())]
    [record] = converter.convert_files(files)
    assert record.ok, [i.line() for i in record.issues]
    assert record.kind == "study" and record.control_id == LAX2_CHEST
    assert record.charset == "GB18030" and record.sender == "LAX2"
    study = _study_of(record)
    assert (study["numberOfSeries"], study["numberOfInstances"]) == (2, 4)
    assert [s["number"] for s in study["series"]] == [1, 2]
    assert [i["number"] for i in study["series"][0]["instance"]] == [1, 2]
    [patient] = _resources(record, "Patient")
    ideographic, alphabetic = patient["name"]
    assert (ideographic["text"], ideographic["family"], ideographic["given"]) == (
        "王伟",
        "王",
        ["伟"],
    )
    assert (alphabetic["family"], alphabetic["given"]) == ("WANG", ["WEI"])
    assert patient["identifier"][0]["system"] == "https://fhir.lax2.example.cn/sid/mrn"
    [org] = _resources(record, "Organization")
    assert org["name"] == "来安县第二人民医院"
    [endpoint] = _resources(record, "Endpoint")
    assert endpoint["address"] == "https://pacs.lax2.example.cn/dicom-web"
    assert study["endpoint"] == [{"reference": f"urn:uuid:{endpoint['id']}"}]
    assert study["started"] == "2026-06-10T09:15:00+08:00"
    assert study["referrer"] == {"display": "张建国"}


def test_the_same_patient_as_the_hl7_order(converter: Converter) -> None:
    """The order (HL7 v2 ORM) and the study (DICOM) of 王伟 name one Patient, and the
    study's basedOn finds the order's ServiceRequest by its accession number."""
    orm = (
        "MSH|^~\\&|LAX2_HIS|LAX2|LAX2_RIS|LAX2|20260610083000+0800||ORM^O01^ORM_O01|"
        "M1|P|2.5|||AL|NE|CHN|UNICODE UTF-8\r"
        "PID|1||0012345^^^LAX2^MR||王^伟^^^^^L||19660420|M\r"
        "ORC|NW|PLC0002^LAX2|FIL0002^LAX2\r"
        "OBR|1|PLC0002^LAX2|FIL0002^LAX2|CT002^胸部CT平扫^99LAX2" + "|" * 14 + "LA2026061000002\r"
    ).encode()
    [order] = converter.convert(orm)
    [study_record] = converter.convert(_chest(), source="IM1.dcm")
    assert order.ok and study_record.ok
    assert _resources(order, "Patient")[0]["id"] == _resources(study_record, "Patient")[0]["id"]
    [request] = _resources(order, "ServiceRequest")
    acsn = next(i for i in request["identifier"] if i["type"]["coding"][0]["code"] == "ACSN")
    [based_on] = _study_of(study_record)["basedOn"]
    assert based_on == {  # a logical reference (docs/partners.md)
        "type": "ServiceRequest",
        "identifier": {"system": acsn["system"], "value": acsn["value"]},
    }


def test_a_zip_archive_skips_what_is_not_dicom(converter: Converter) -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("DICOM/S1/IM1", _chest(1, 1))
        archive.writestr("DICOM/S1/IM2", _chest(1, 2))
        archive.writestr("README.txt", "光盘说明")
        archive.writestr("__MACOSX/._IM1", b"\x00\x05\x16\x07")
    [record] = converter.convert(buffer.getvalue(), source="cd.zip")
    assert record.ok
    assert _study_of(record)["numberOfInstances"] == 2
    [warning] = record.warnings
    assert warning.code == "intake.skipped-member" and "README.txt" in shown(
        warning.message, ("cd.zip", buffer.getvalue())
    )


def test_a_zip_bomb_is_refused(monkeypatch: pytest.MonkeyPatch, converter: Converter) -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("IM1.dcm", _chest())
        archive.writestr("zeros.dcm", b"\0" * (4 << 20))  # 4 MiB packing to a few KiB
    [record] = converter.convert(buffer.getvalue(), source="bomb.zip")
    assert record.ok  # the study converts; the bomb member is skipped
    assert any("zip bomb" in w.message for w in record.warnings)
    monkeypatch.setattr(_reader, "MAX_MEMBERS", 1)
    [refused] = converter.convert(buffer.getvalue(), source="bomb.zip")
    assert not refused.ok and refused.errors[0].code == "intake.dicom-zip"


def test_a_folder_with_two_studies_gives_two_bundles(converter: Converter) -> None:
    knee = instance(
        NSCH_KNEE,
        1,
        1,
        PatientID="0098765",
        InstitutionName="南沙中心医院",
        SpecificCharacterSet="ISO_IR 192",
    )
    items = [("a.dcm", _chest(1, 1)), ("b.dcm", part10(knee)), ("c.dcm", _chest(2, 1))]
    records = list(converter.convert_files(items))
    assert [r.control_id for r in records] == [LAX2_CHEST, NSCH_KNEE]
    assert all(r.ok for r in records)
    assert _study_of(records[0])["numberOfSeries"] == 2
    assert records[1].sender == "NSCH"


def test_a_file_without_study_uid_is_an_error_record_naming_the_tag(
    converter: Converter,
) -> None:
    # In a folder of its own it concerns no study: an error record of its own.
    broken = wang_wei(StudyInstanceUID=None)
    items = [("a/good.dcm", _chest()), ("b/broken.dcm", part10(broken))]
    good, bad = converter.convert_files(items)
    assert good.ok
    [error] = bad.errors
    assert error.code == "intake.dicom-missing-uid"
    assert error.location == "(0020,000D) StudyInstanceUID"
    assert "broken.dcm" in shown(error.message, items)


def test_a_file_without_study_uid_fails_the_studies_of_its_folder(converter: Converter) -> None:
    # It may be an instance of the study beside it: all or nothing.
    broken = part10(wang_wei(number=2, StudyInstanceUID=None))
    items = [("cd/good.dcm", _chest()), ("cd/broken.dcm", broken)]
    [record] = converter.convert_files(items)
    assert record.control_id == LAX2_CHEST and record.bundle is None
    [error] = record.errors
    assert error.code == "intake.dicom-missing-uid" and "cd/broken.dcm" in shown(
        error.message, items
    )


def test_an_instance_without_sop_uid_fails_its_study_only(converter: Converter) -> None:
    knee = instance(
        NSCH_KNEE,
        1,
        1,
        PatientID="0098765",
        InstitutionName="南沙中心医院",
        SpecificCharacterSet="ISO_IR 192",
    )
    items = [("a.dcm", _chest()), ("b.dcm", part10(wang_wei(number=2, SOPInstanceUID=None)))]
    items.append(("c.dcm", part10(knee)))
    chest, other = converter.convert_files(items)
    assert chest.control_id == LAX2_CHEST and not chest.ok
    assert chest.errors[0].location == "(0008,0018) SOPInstanceUID"
    assert other.ok


def test_a_duplicate_instance_is_counted_once(converter: Converter) -> None:
    items = [("a.dcm", _chest(1, 1)), ("copy.dcm", _chest(1, 1)), ("b.dcm", _chest(1, 2))]
    [record] = converter.convert_files(items)
    assert record.ok and _study_of(record)["numberOfInstances"] == 2
    [warning] = record.warnings
    assert warning.code == "intake.duplicate-instance" and "copy.dcm" in shown(
        warning.message, items
    )


def test_unreadable_and_foreign_files_are_named_without_markup(converter: Converter) -> None:
    name = "<script>alert(1)</script>.dcm"
    truncated = _chest()[:300]
    records = list(converter.convert_files([(name, b"hello"), ("cut.dcm", truncated)]))
    assert [r.ok for r in records] == [False, False]
    for record in records:
        line = record.errors[0].line()
        assert "<" not in line and ">" not in line.split("(0020")[0]
        assert "王" not in line and "WANG" not in line
    assert "not DICOM" in records[0].errors[0].message


def test_no_patient_name_in_error_messages(converter: Converter) -> None:
    # SeriesNumber (IS) '1 ' made 'X1': pydicom will not write such a value itself.
    good = b"\x20\x00\x11\x00IS\x02\x001 "
    data = _chest()
    assert good in data
    [record] = converter.convert_files([("IM1.dcm", data.replace(good, good[:-2] + b"X1"))])
    [error] = record.errors
    assert error.location == "series[1] (0020,0011) SeriesNumber"
    for text in (error.message, error.location or ""):
        assert "王" not in text and "WANG" not in text and "0012345" not in text


def test_dicom_json_array_and_single_object(converter: Converter) -> None:
    objects = [wang_wei(number=n).to_json_dict() for n in (1, 2)]
    [record] = converter.convert(json.dumps(objects).encode(), source="study.json")
    assert record.ok and _study_of(record)["numberOfInstances"] == 2
    [single] = converter.convert(json.dumps(objects[0]).encode(), source="one.json")
    assert single.ok and _study_of(single)["numberOfInstances"] == 1
    odd = converter.convert(b'[{"00080060": {"vr": "CS"}}, 3]', source="odd.json")
    assert [r.errors[0].code for r in odd] == ["intake.dicom-missing-uid", "intake.dicom-json"]


def test_an_unknown_character_set_is_a_warning(converter: Converter) -> None:
    ascii_only = {"PatientName": "WANG^WEI", "InstitutionName": "LAX2", "StudyDescription": "CT"}
    ascii_only |= {"ReferringPhysicianName": "ZHANG^JIANGUO"}
    data = _chest(SpecificCharacterSet="ISO_IR 192", **ascii_only)
    data = data.replace(b"ISO_IR 192", b"ISO_IR 999")
    [record] = converter.convert(data, source="x.dcm")
    assert any(w.code == "intake.charset-unknown" for w in record.warnings)


def test_read_studies_yields_units(converter: Converter) -> None:
    [unit] = read_studies([("a.dcm", _chest())], converter.network)
    assert (unit.kind, unit.message_type, unit.format) == ("study", "dicom-study", "dicom")
    assert unit.raw.startswith(b"DICOM study " + LAX2_CHEST.encode())
    assert b"WANG" not in unit.raw


def test_an_undecodable_uid_or_charset_is_an_error_record_not_a_traceback(
    converter: Converter,
) -> None:
    # pydicom decodes lazily: an unknown VR on a UID or on Specific Character Set raised
    # NotImplementedError out of intake itself (found by fuzzing).
    def damaged(tag: bytes, vr: bytes, **attrs: Any) -> bytes:
        data = _chest(**attrs)
        assert tag + vr in data
        return data.replace(tag + vr, tag + b"XX", 1)

    knee = {"PatientID": "0098765", "InstitutionName": "南沙中心医院"}
    knee["SpecificCharacterSet"] = "ISO_IR 192"
    items = [  # in folders of their own: study.dcm's study cannot be told
        ("a/study.dcm", damaged(b"\x20\x00\x0d\x00", b"UI")),
        ("b/sop.dcm", damaged(b"\x08\x00\x18\x00", b"UI", number=2)),
        ("c/good.dcm", part10(instance(NSCH_KNEE, 1, 1, **knee))),
    ]
    bad_study, bad_sop, good = converter.convert_files(items)
    assert good.ok
    for record, name, where in (
        (bad_study, "study.dcm", "(0020,000D) StudyInstanceUID"),
        (bad_sop, "sop.dcm", "(0008,0018) SOPInstanceUID"),
    ):
        [error] = record.errors
        assert error.code == "intake.dicom-bad-value" and error.location == where
        assert name in shown(error.message, items) and "王" not in shown(error.message, items)
    [charset] = converter.convert_files([("cs.dcm", damaged(b"\x08\x00\x05\x00", b"CS"))])
    assert charset.errors[0].code == "intake.dicom-unreadable"
    # a damaged InstanceNumber only orders the instance last; the mapping names it
    [number] = converter.convert_files([("n.dcm", damaged(b"\x20\x00\x13\x00", b"IS"))])
    assert [e.code for e in number.errors] == ["intake.dicom-bad-value"]


@pytest.mark.parametrize(
    ("keyword", "tail", "problem"),
    [
        ("StudyInstanceUID", ".ABC", "a character other than the digits 0-9 and '.'"),
        ("SeriesInstanceUID", " .4", "a character other than the digits 0-9 and '.'"),
        ("SOPInstanceUID", "\x01.4", "a character other than the digits 0-9 and '.'"),
        ("SOPInstanceUID", ".", "an empty component"),
        ("SeriesInstanceUID", "." + "1" * 70, "characters, at most 64"),
    ],
)
def test_a_value_that_is_no_dicom_uid_fails_its_study_naming_file_and_tag(
    converter: Converter, keyword: str, tail: str, problem: str
) -> None:
    # Kept as sent, a control character was dropped from the FHIR output: SOP instance
    # 1.2.3\x01.4 became 1.2.3.4, which may be another instance's UID.
    bad = wang_wei(series=1, number=2)
    with warnings.catch_warnings():  # pydicom warns of the invalid UI value it is given
        warnings.simplefilter("ignore")
        setattr(bad, keyword, getattr(bad, keyword) + tail)
        written = part10(bad)
    knee = {"PatientID": "0098765", "InstitutionName": "南沙中心医院"}
    knee["SpecificCharacterSet"] = "ISO_IR 192"
    items = [
        ("chest/IM1.dcm", _chest(1, 1)),
        ("chest/IM2.dcm", written),
        ("knee/IM1.dcm", part10(instance(NSCH_KNEE, 1, 1, **knee))),
    ]
    records = list(converter.convert_files(items))
    assert [r.ok for r in records] == [False, True]
    [error] = records[0].errors
    assert error.code == "intake.dicom-bad-value" and keyword in (error.location or "")
    assert "chest/IM2.dcm" in shown(error.message, items) and problem in shown(error.message, items)
    assert "王" not in error.message and "WANG" not in error.message


def test_a_uid_of_64_characters_or_with_a_leading_zero_is_kept_as_sent(
    converter: Converter,
) -> None:
    # PS3.5 9.1 forbids leading zeros too, but old feeds send them and no other UID is
    # named by keeping them: converted as sent.
    study, sop = "1.2.840.0555.001", "1.2.840.1" + "5" * (64 - len("1.2.840.1"))
    assert len(sop) == 64
    with warnings.catch_warnings():  # pydicom warns of the leading zero
        warnings.simplefilter("ignore")
        data = part10(wang_wei(study, SOPInstanceUID=sop))
    [record] = converter.convert_files([("a.dcm", data)])
    assert record.ok, [i.line() for i in record.issues]
    assert _study_of(record)["identifier"][0]["value"] == f"urn:oid:{study}"
    assert _study_of(record)["series"][0]["instance"][0]["uid"] == sop


@pytest.mark.parametrize("keyword", ["StudyDescription", "PatientName"])
def test_control_characters_are_removed_with_a_warning_naming_the_tag(
    converter: Converter, keyword: str
) -> None:
    # as HL7 v2's view does: FHIR strings cannot carry them
    value = {"StudyDescription": "胸部\x07平扫", "PatientName": "王\x07^伟"}[keyword]
    [record] = converter.convert_files([("a.dcm", _chest(**{keyword: value}))])
    assert record.ok, [i.line() for i in record.issues]
    [warning] = [w for w in record.warnings if w.code == "intake.control-characters"]
    assert keyword in (warning.location or "")
    assert "\x07" not in (record.bundle_json or b"").decode()
    assert "\\u0007" not in (record.bundle_json or b"").decode()


@pytest.mark.parametrize(
    ("attrs", "tag"),
    [
        ({"StudyDescription": "\x01\x02 "}, "(0008,1030) StudyDescription"),
        # (not InstitutionName: it names the sender, whose MRN PatientID may be, and is
        # identifying; tests/intake/dicom/test_dicom_sender_controls.py)
    ],
)
def test_a_value_of_only_control_characters_is_read_as_absent_with_a_warning(
    converter: Converter, attrs: dict[str, Any], tag: str
) -> None:
    # Before: the study's error, so a garbled institution name failed a study of 500
    # images. Not an identifying attribute (mappings/identity-fields.yaml), it carries
    # no data: read as absent, never silently (the warning names the tag), as HL7 v2's
    # view does.
    files = [(f"IM{n}.dcm", _chest(1, n, **attrs)) for n in (1, 2, 3)]
    [record] = converter.convert_files(files)
    assert record.ok, [i.line() for i in record.issues]
    [warning] = [w for w in record.warnings if w.code == "intake.control-characters"]
    assert warning.location == tag
    assert "only control characters" in warning.message and "absent" in warning.message
    assert record.sender == "LAX2" and _study_of(record)["numberOfInstances"] == 3
    if "StudyDescription" in attrs:
        assert "description" not in _study_of(record)


def test_a_corrupt_deflate_stream_fails_the_study(converter: Converter) -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("IM1.dcm", _chest(1, 1))
        archive.writestr("IM2.dcm", _chest(1, 2))
    data = bytearray(buffer.getvalue())
    second = data.index(b"IM2.dcm") + len(b"IM2.dcm")  # the member's compressed bytes
    data[second : second + 40] = b"\xff" * 40  # zlib.error while inflating
    [record] = converter.convert(bytes(data), source="cd.zip")
    assert record.control_id == LAX2_CHEST and record.bundle is None
    [error] = record.errors
    assert error.code == "intake.dicom-damaged-member" and "cd.zip/IM2.dcm" in shown(
        error.message, ("cd.zip", bytes(data))
    )


def test_an_undecodable_institution_fails_its_study_only(converter: Converter) -> None:
    # intake reads InstitutionName for the sender before any mapping runs: an unknown
    # VR there raised out of convert_files and stopped the batch (found by fuzzing).
    data = _chest()
    tag = b"\x08\x00\x80\x00LO"
    assert tag in data
    knee = instance(NSCH_KNEE, 1, 1, PatientID="0098765", InstitutionName="南沙中心医院")
    knee.SpecificCharacterSet = "ISO_IR 192"
    items = [("a.dcm", data.replace(tag, tag[:4] + b"XX", 1)), ("b.dcm", part10(knee))]
    bad, good = converter.convert_files(items)
    [error] = bad.errors
    assert error.code == "intake.dicom-bad-value"
    assert error.location == "(0008,0080) InstitutionName"
    assert good.ok


def test_a_damaged_member_header_fails_the_study(converter: Converter) -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        archive.writestr("IM1.dcm", _chest(1, 1))
        archive.writestr("IM2.dcm", _chest(1, 2))
    data = bytearray(buffer.getvalue())
    central = data.rindex(b"PK\x01\x02")  # IM2's central directory entry
    data[central + 10 : central + 12] = (99).to_bytes(2, "little")  # NotImplementedError
    [record] = converter.convert(bytes(data), source="cd.zip")
    assert record.control_id == LAX2_CHEST and record.bundle is None
    [error] = record.errors
    assert error.code == "intake.dicom-damaged-member" and "IM2.dcm" in shown(
        error.message, ("cd.zip", bytes(data))
    )


def test_a_central_directory_offset_past_its_place_is_an_error_record(
    converter: Converter,
) -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        archive.writestr("IM1.dcm", _chest(1, 1))
    data = bytearray(buffer.getvalue())
    end = data.rindex(b"PK\x05\x06")
    offset = int.from_bytes(data[end + 16 : end + 20], "little")
    # zipfile then seeks to a negative position for every member (ValueError)
    data[end + 16 : end + 20] = (offset + 500).to_bytes(4, "little")
    items = [("cd.zip", bytes(data)), ("b.dcm", _chest(1, 2))]
    bad, good = converter.convert_files(items)  # in order of first appearance
    assert good.ok and _study_of(good)["numberOfInstances"] == 1
    [error] = bad.errors
    assert error.code == "intake.dicom-damaged-member" and "cd.zip/IM1.dcm" in shown(
        error.message, items
    )


def test_bytes_that_do_not_decode_are_a_warning_named_by_tag(converter: Converter) -> None:
    from tests.golden.dicom.make_studies import instance, part10

    ds = instance(
        "2.25.777",
        1,
        1,
        PatientID="0012345",
        IssuerOfPatientID="LAX2",
        SpecificCharacterSet="GB18030",
    )
    ds.add_new(0x00081030, "LO", b"CT \xff\x81\x80\xff ")  # not GB18030
    [record] = converter.convert_files([("bad-text.dcm", part10(ds))])
    assert record.ok  # the study still converts; the replaced characters are flagged
    [warning] = [i for i in record.warnings if i.code == "intake.dicom-undecodable"]
    assert warning.location == "(0008,1030) StudyDescription"
    assert "CT" not in warning.line().split(":", 1)[-1]


@pytest.mark.parametrize("tag", [0x00100010, 0x00080090])  # PatientName, ReferringPhysicianName
def test_a_persons_name_that_does_not_decode_refuses_the_study(
    converter: Converter, tag: int
) -> None:
    """A person's name with characters replaced by U+FFFD is another name: the study is
    refused (as HL7 v2 refuses mislabelled text), named by tag, the value never quoted.
    It converted with a warning, 王� on the patient's record."""
    from tests.golden.dicom.make_studies import instance, part10

    ds = instance(
        "2.25.778",
        1,
        1,
        PatientID="0012345",
        IssuerOfPatientID="LAX2",
        SpecificCharacterSet="GB18030",
    )
    ds.add_new(tag, "PN", b"WANG^WEI=\xcd\xf5^\x80\xff ")  # 王, then not GB18030
    [record] = converter.convert_files([("bad-name.dcm", part10(ds))])
    assert not record.ok and record.bundle is None
    [error] = record.errors
    assert error.code == "intake.dicom-name-undecodable"
    assert error.location is not None and error.location.startswith(f"({tag >> 16:04X},")
    assert "WANG" not in error.line() and "王" not in error.line()


def _sent_with(tail: bytes, lead: bytes = b"", implicit: bool = False) -> bytes:
    """王伟's chest instance whose SOP Instance UID is sent with ``lead`` and ``tail``
    around it in its bytes (pydicom strips whitespace from a UID it is given)."""
    real = f"{LAX2_CHEST}.1.1"
    placeholder = real + "7" * (len(lead) + len(tail))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = wang_wei(SOPInstanceUID=placeholder)
        data = part10(ds)
        if implicit:
            ds = dcmread(io.BytesIO(data))
            ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
            out = io.BytesIO()
            ds.save_as(out, implicit_vr=True, little_endian=True, enforce_file_format=True)
            data = out.getvalue()
    return data.replace(placeholder.encode(), lead + real.encode() + tail)


@pytest.mark.parametrize("implicit", [False, True], ids=["explicit-vr", "implicit-vr"])
@pytest.mark.parametrize(
    ("lead", "tail"),
    [(b"", b"\x1f"), (b"", b"\n"), (b"\t", b""), (b"", b"\xa0")],
    ids=["unit-separator", "line-feed", "leading-tab", "no-break-space"],
)
def test_a_uid_is_checked_as_sent_whatever_the_transfer_syntax(
    converter: Converter, implicit: bool, lead: bytes, tail: bytes
) -> None:
    # pydicom's UID strips every whitespace at both ends (TAB, LF, U+001C-U+001F, NBSP):
    # an implicit VR file passed 1.2.3\x1f as 1.2.3 where the explicit VR one failed
    [record] = converter.convert_files([("a.dcm", _sent_with(tail, lead, implicit))])
    assert [(e.code, e.location) for e in record.errors] == [
        ("intake.dicom-bad-value", "(0008,0018) SOPInstanceUID")
    ]


@pytest.mark.parametrize("tail", ["\x1f", "\n", "\u00a0"])
def test_a_dicom_json_uid_is_checked_as_sent(converter: Converter, tail: str) -> None:
    obj = wang_wei(number=2).to_json_dict()
    obj["00080018"]["Value"] = [f"{LAX2_CHEST}.1.2{tail}"]
    items = [("chest/IM1.dcm", _chest(1, 1)), ("chest/more.json", json.dumps([obj]).encode())]
    [record] = converter.convert_files(items)
    assert [(e.code, e.location) for e in record.errors] == [
        ("intake.dicom-bad-value", "(0008,0018) SOPInstanceUID")
    ]
    assert "chest/more.json" in shown(record.errors[0].message, items)


def test_a_uid_of_several_values_is_told_so(converter: Converter) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        data = part10(wang_wei(SOPInstanceUID=[f"{LAX2_CHEST}.1.1", f"{LAX2_CHEST}.1.2"]))
    [unit] = read_studies([("a.dcm", data)], converter.network)
    assert unit.error is not None and unit.error.code == "intake.dicom-bad-value"
    assert "2 values" in unit.error.issue.message, unit.error.issue.message


def test_control_characters_in_a_value_intake_reads_first_fail_the_study(
    converter: Converter,
) -> None:
    # The sender is found (InstitutionName, the accession issuer) before the mapping
    # reads the study: the look-up is cached at the study. InstitutionName names the
    # sender, whose MRN a PatientID without its own issuer is: identifying, so the
    # study's error (it was a warning, and 来安县第二<BEL>人民医院 still found LAX2; but
    # read as absent, the sender was the accession issuer's hospital).
    attrs = {"InstitutionName": "来安县第二\x07人民医院"}
    [record] = converter.convert_files([("a.dcm", _chest(**attrs))])
    assert record.bundle is None
    [error] = record.errors
    assert error.code == "intake.control-characters"
    assert "(0008,0080) InstitutionName" in (error.location or ""), error.location


def _issuer(oid: str) -> list[Dataset]:
    item = Dataset()
    item.UniversalEntityID = oid
    item.UniversalEntityIDType = "ISO"
    return [item]


@pytest.mark.parametrize(
    ("attrs", "tag"),
    [
        ({"PatientID": "0012\x01345"}, "(0010,0020) PatientID"),
        ({"AccessionNumber": "LA20260610\x1b00002"}, "(0008,0050) AccessionNumber"),
        # the accession issuer's OID, read for the sender and as the accession system
        (
            {"IssuerOfAccessionNumberSequence": _issuer("2.16.156.10011.1\x07.5")},
            "(0040,0032) UniversalEntityID",
        ),
    ],
)
def test_control_characters_in_an_identifying_attribute_fail_the_study(
    converter: Converter, attrs: dict[str, Any], tag: str
) -> None:
    # removed with a warning, PatientID 0012\x01345 became 0012345: another patient's
    # (mappings/identity-fields.yaml)
    [record] = converter.convert_files([("a.dcm", _chest(**attrs))])
    assert not record.ok and record.bundle is None
    [error] = record.errors
    assert error.code == "intake.control-characters" and tag in (error.location or "")
    assert "identifying field" in error.message
    assert "0012" not in error.message and "LA2026" not in error.message


def test_a_sop_class_uid_with_a_control_character_fails_its_study(converter: Converter) -> None:
    # The mapping copies it into ImagingStudy.series.instance.sopClass: removed with a
    # warning, 1.2.840.10008.5.1.4.1.1\x01.2 became CT Image Storage, another class
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        data = _chest(SOPClassUID="1.2.840.10008.5.1.4.1.1\x01.2")
    [record] = converter.convert_files([("a.dcm", data)])
    assert [(e.code, e.location) for e in record.errors] == [
        ("intake.dicom-bad-value", "series[1]/instance[1] (0008,0016) SOPClassUID")
    ]
    assert "1.2.840" not in record.errors[0].message


@pytest.mark.parametrize(
    ("keyword", "sent", "modality"),
    [
        ("BodyPartExamined", b"CHEST\x00", "CT"),
        ("BodyPartExamined", b"\x00\x00", "CT"),
        ("Laterality", b"\x00\x00", "CT"),
        ("PatientSex", b"\x00\x00", "CT"),
    ],
)
def test_a_code_padded_with_nul_is_padding_not_a_control_character(
    converter: Converter, keyword: str, sent: bytes, modality: str
) -> None:
    # Devices pad CS values (and empty ones) with NUL as UIDs are padded: read as such
    # before, the control-character check failed the study on an empty Laterality, and
    # warned on CHEST\0
    placeholder = "Z" * len(sent)
    data = _chest(**{keyword: placeholder})
    assert data.count(placeholder.encode()) == 1
    [record] = converter.convert_files([("a.dcm", data.replace(placeholder.encode(), sent))])
    assert record.ok, [i.line() for i in record.issues]
    assert not [w for w in record.warnings if w.code == "intake.control-characters"]
    assert _study_of(record)["series"][0]["modality"]["code"] == modality
