"""Patient safety at DICOM intake (issue 8): one patient per study, all instances or
none, text never misread as another charset, files cut short or damaged never
converted in part, and no input that crashes a batch. Inputs are built with pydicom.

Errors must name files, members and tags, never a patient's name or identifier.
"""

from __future__ import annotations

import io
import json
import struct
import warnings
import zipfile
from pathlib import Path
from typing import Any

import pytest

from gateway import Converter, Settings
from gateway.envelope import Record
from tests.golden.dicom.make_studies import LAX2_CHEST, part10, wang_wei
from tests.intake.dicom._shown import shown

REPO = Path(__file__).resolve().parents[3]
PATIENT_DATA = ("王", "伟", "李", "WANG", "0012345", "0099999", "Íõ")


def _chest(series: int = 1, number: int = 1, **attrs: Any) -> bytes:
    return part10(wang_wei(series=series, number=number, **attrs))


def _li_si(series: int = 1, number: int = 1) -> bytes:
    """An instance of another patient (李四, LAX2 MRN 0099999) in 王伟's study."""
    return _chest(series, number, PatientID="0099999", PatientName="LI^SI=李^四=")


def _clean(record: Record) -> None:
    """No error or warning line of the record quotes patient data."""
    for issue in record.issues:
        line = issue.line()
        for text in PATIENT_DATA:
            assert text not in line, line


def _failed(records: list[Record], code: str) -> Record:
    """The one record of a study refused with ``code``: no Bundle, no partial study."""
    [record] = records
    assert record.bundle is None and record.control_id == LAX2_CHEST
    assert [e.code for e in record.errors] == [code], [i.line() for i in record.issues]
    _clean(record)
    return record


def _zip(members: dict[str, bytes], method: int = zipfile.ZIP_DEFLATED) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", method) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def _eight() -> dict[str, bytes]:
    """王伟's chest CT in 3 series and 8 instances."""
    return {f"S{s}/IM{n}.dcm": _chest(s, n) for s, count in ((1, 2), (2, 3), (3, 3))
            for n in range(1, count + 1)}  # fmt: skip


def _bad_crc(data: bytes, member: str) -> bytes:
    """The archive with ``member``'s CRC-32 changed in its central directory entry."""
    out = bytearray(data)
    entry = out.index(b"PK\x01\x02")
    while True:
        name_len = struct.unpack("<H", out[entry + 28 : entry + 30])[0]
        if out[entry + 46 : entry + 46 + name_len] == member.encode():
            out[entry + 16] ^= 0xFF
            return bytes(out)
        entry = out.index(b"PK\x01\x02", entry + 4)


# -- 1. one patient per study ----------------------------------------------------------------
def test_two_patients_in_one_study_fail_it_naming_both_files(converter: Converter) -> None:
    items = [("S1/IM1.dcm", _chest(1, 1)), ("S2/IM1.dcm", _li_si(2, 1))]
    record = _failed(list(converter.convert_files(items)), "intake.dicom-patient-mismatch")
    [error] = record.errors
    assert "S1/IM1.dcm" in shown(error.message, items) and "S2/IM1.dcm" in shown(
        error.message, items
    )
    assert error.location == "(0010,0020) PatientID"


def test_another_issuer_of_the_same_number_fails_the_study(converter: Converter) -> None:
    items = [("a.dcm", _chest(1, 1)), ("b.dcm", _chest(1, 2, IssuerOfPatientID="NSCH"))]
    record = _failed(list(converter.convert_files(items)), "intake.dicom-patient-mismatch")
    assert record.errors[0].location == "(0010,0021) IssuerOfPatientID"


def test_a_missing_patient_id_beside_one_fails_the_study(converter: Converter) -> None:
    items = [("a.dcm", _chest(1, 1)), ("b.dcm", _chest(1, 2, PatientID=None))]
    record = _failed(list(converter.convert_files(items)), "intake.dicom-patient-missing")
    [error] = record.errors
    text = shown(error.message, items)
    assert "(b.dcm) has no (0010,0020) PatientID" in text and "a.dcm" in text


def test_a_copy_of_an_instance_naming_another_patient_fails_the_study(
    converter: Converter,
) -> None:
    # Counted once as a duplicate SOP instance, it must still name the same patient.
    items = [("a.dcm", _chest(1, 1)), ("copy.dcm", _li_si(1, 1))]
    _failed(list(converter.convert_files(items)), "intake.dicom-patient-mismatch")


def test_two_patients_in_a_dicom_json_study(converter: Converter) -> None:
    objects = [wang_wei().to_json_dict(), wang_wei(number=2, PatientID="0099999").to_json_dict()]
    record = _failed(converter.convert(json.dumps(objects).encode(), source="s.json"),
                     "intake.dicom-patient-mismatch")  # fmt: skip
    assert "s.json[1]" in shown(record.errors[0].message, ("s.json", b"")) and "s.json[2]" in shown(
        record.errors[0].message, ("s.json", b"")
    )


# -- 2. all or nothing -------------------------------------------------------------------------
def test_a_member_with_a_bad_crc_fails_the_whole_study(converter: Converter) -> None:
    data = _bad_crc(_zip(_eight()), "S2/IM2.dcm")
    record = _failed(converter.convert(data, source="cd.zip"), "intake.dicom-damaged-member")
    assert "cd.zip/S2/IM2.dcm" in shown(record.errors[0].message, ("cd.zip", data))
    assert not record.warnings  # an error, never a converted study with a warning


def test_a_bad_crc_after_the_header_is_found_too(converter: Converter) -> None:
    # The header is read only up to the pixel data: the member is still read to its end,
    # or its CRC would never be checked.
    members = _eight()
    ds = wang_wei(series=3, number=3)
    ds.Rows, ds.Columns, ds.BitsAllocated, ds.BitsStored, ds.HighBit = 64, 64, 16, 12, 11
    ds.SamplesPerPixel, ds.PixelRepresentation = 1, 0
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.PixelData = bytes(range(256)) * 32
    members["S3/IM3.dcm"] = part10(ds)
    data = _bad_crc(_zip(members), "S3/IM3.dcm")
    record = _failed(converter.convert(data, source="cd.zip"), "intake.dicom-damaged-member")
    assert "S3/IM3.dcm" in shown(record.errors[0].message, ("cd.zip", data))


def test_an_unreadable_instance_in_a_folder_fails_its_study(converter: Converter) -> None:
    data = _chest(1, 3)
    start = data.index(b"\x08\x00\x05\x00CS")  # the dataset's first element
    # a sequence of undefined length whose item is not an item: pydicom cannot read on
    broken = data[:start] + b"\x08\x00\x51\x00SQ\x00\x00\xff\xff\xff\xff\x01\x02\x03\x04"
    items = [(f"cd/IM{n}.dcm", _chest(1, n)) for n in (1, 2)] + [("cd/IM3.dcm", broken)]
    record = _failed(list(converter.convert_files(items)), "intake.dicom-unreadable")
    assert "cd/IM3.dcm" in shown(record.errors[0].message, items)


def test_a_dicom_json_study_with_one_bad_instance_is_one_error(converter: Converter) -> None:
    objects = [wang_wei(number=n).to_json_dict() for n in (1, 2, 3)]
    objects[1]["00200011"] = {"vr": "IS", "Value": [{"not": "a number"}]}
    records = converter.convert(json.dumps(objects).encode(), source="study.json")
    record = _failed(records, "intake.dicom-json")  # never an error record AND a study
    [error] = record.errors
    assert (
        "study.json[2]" in shown(error.message, ("study.json", b""))
        and error.location == "(0020,0011) SeriesNumber"
    )


def test_counts_equal_what_was_received(converter: Converter) -> None:
    [record] = converter.convert(_zip(_eight()), source="cd.zip")
    assert record.bundle is not None
    [study] = [e["resource"] for e in record.bundle["entry"]
               if e["resource"]["resourceType"] == "ImagingStudy"]  # fmt: skip
    assert (study["numberOfSeries"], study["numberOfInstances"]) == (3, 8)
    assert sum(len(s["instance"]) for s in study["series"]) == 8


# -- 3. charsets -------------------------------------------------------------------------------
def _undeclared(name: bytes, institution: bytes | None = None, **attrs: Any) -> bytes:
    """An instance without Specific Character Set whose PatientName (and InstitutionName)
    carry the given bytes."""
    ds = wang_wei(SpecificCharacterSet=None, InstitutionName=None, ReferringPhysicianName=None,
                  StudyDescription="CT", SeriesDescription="CT", **attrs)  # fmt: skip
    ds.add_new(0x00100010, "PN", name)
    if institution is not None:
        ds.add_new(0x00080080, "LO", institution)
    return part10(ds)


GB_NAME = "WANG^WEI=王^伟=".encode("gb18030")
LAX2_NAME = "来安县第二人民医院".encode("gb18030")


def _patient_names(record: Record) -> list[dict[str, Any]]:
    assert record.bundle is not None, [i.line() for i in record.issues]
    [patient] = [e["resource"] for e in record.bundle["entry"]
                 if e["resource"]["resourceType"] == "Patient"]  # fmt: skip
    names: list[dict[str, Any]] = patient["name"]
    return names


def test_the_senders_default_charset_reads_an_undeclared_study(converter: Converter) -> None:
    # Lai'an's network entry says GB18030 (seeds/network.yaml): as for MSH-18 empty.
    [record] = converter.convert(_undeclared(GB_NAME, LAX2_NAME), source="x.dcm")
    assert record.ok and record.sender == "LAX2" and record.charset == "GB18030"
    assert any(n.get("text") == "王伟" for n in _patient_names(record))
    [note] = [w for w in record.warnings if w.code == "intake.charset-default"]
    assert note.location == "(0008,0005) SpecificCharacterSet" and "LAX2" in note.message
    assert b"\\u00cd" not in (record.bundle_json or b"") and "Íõ" not in str(record.bundle)


def test_gb18030_bytes_without_charset_or_sender_are_refused(converter: Converter) -> None:
    [record] = converter.convert(_undeclared(GB_NAME, IssuerOfAccessionNumberSequence=None),
                                 source="x.dcm")  # fmt: skip
    [error] = record.errors
    assert error.code == "intake.charset-mismatch"
    assert error.location == "series[1]/instance[1] (0010,0010) PatientName"
    assert "GB18030" in error.message and "ISO_IR 6" in error.message
    _clean(record)


def test_gb18030_bytes_declared_latin1_are_refused(converter: Converter) -> None:
    ds = wang_wei(SpecificCharacterSet="ISO_IR 100", InstitutionName="LAX2",
                  ReferringPhysicianName=None, StudyDescription="CT")  # fmt: skip
    ds.add_new(0x00100010, "PN", "王^伟".encode("gb18030"))
    [record] = converter.convert(part10(ds), source="x.dcm")
    [error] = record.errors
    assert error.code == "intake.charset-mismatch" and "'ISO_IR 100'" in error.message
    assert "(0010,0010) PatientName" in (error.location or "") and "GB18030" in error.message
    _clean(record)


def test_latin1_names_declared_latin1_are_read_as_latin1(converter: Converter) -> None:
    ds = wang_wei(SpecificCharacterSet="ISO_IR 100", InstitutionName="LAX2",
                  ReferringPhysicianName=None, StudyDescription="CT")  # fmt: skip
    ds.add_new(0x00100010, "PN", "Buc^Jérôme".encode("latin-1"))
    [record] = converter.convert(part10(ds), source="x.dcm")
    assert [n["family"] for n in _patient_names(record)] == ["Buc"]
    assert _patient_names(record)[0]["given"] == ["Jérôme"]


def test_a_sender_set_to_decode_gets_its_text_decoded_with_a_warning(decoding: Converter) -> None:
    ds = wang_wei(SpecificCharacterSet="ISO_IR 100", InstitutionName="LAX2",
                  ReferringPhysicianName=None, StudyDescription="CT")  # fmt: skip
    ds.add_new(0x00100010, "PN", GB_NAME)
    [record] = decoding.convert(part10(ds), source="x.dcm")
    assert any(n.get("text") == "王伟" for n in _patient_names(record))
    [warning] = [w for w in record.warnings if w.code == "intake.charset-mislabelled"]
    assert warning.location == "(0010,0010) PatientName" and "GB18030" in warning.message
    assert "Íõ" not in str(record.bundle)


def test_a_person_name_sent_as_us_is_refused_not_stringified(converter: Converter) -> None:
    ds = wang_wei(PatientName=None)
    ds.add_new(0x00100010, "US", [16727, 18254])
    data = part10(ds)
    [record] = converter.convert(data, source="x.dcm")
    [error] = record.errors
    assert error.code == "intake.dicom-bad-vr" and "(0010,0010) PatientName" in (
        error.location or ""
    )
    assert "16727" not in error.line() and record.bundle is None


# -- 4. files cut short ------------------------------------------------------------------------
def test_a_file_cut_short_fails_naming_the_file_and_tag(converter: Converter) -> None:
    data = _chest()
    [record] = converter.convert_files([("cd/IM1.dcm", data[:-54])])
    [error] = record.errors
    assert error.code == "intake.dicom-truncated" and "cd/IM1.dcm" in shown(
        error.message, "cd/IM1.dcm"
    )
    assert error.location is not None and error.location.startswith("(0020,")
    assert record.bundle is None


@pytest.mark.parametrize("cut", [1, 3, 7, 9, 54, 200])
def test_a_cut_instance_fails_its_study_in_a_folder(converter: Converter, cut: int) -> None:
    items = [("cd/IM1.dcm", _chest(1, 1)), ("cd/IM2.dcm", _chest(1, 2)[:-cut])]
    [record] = converter.convert_files(items)
    assert record.bundle is None
    [error] = record.errors
    assert error.code in ("intake.dicom-truncated", "intake.dicom-missing-uid")
    assert "cd/IM2.dcm" in shown(error.message, items)


def test_pixel_data_cut_short_fails_the_instance(converter: Converter) -> None:
    ds = wang_wei()
    ds.Rows, ds.Columns, ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 16, 12, 11
    ds.SamplesPerPixel, ds.PixelRepresentation = 1, 0
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.PixelData = b"\x01\x02" * 256
    data = part10(ds)
    assert converter.convert(data, source="whole.dcm")[0].ok
    [record] = converter.convert(data[:-100], source="cut.dcm")
    [error] = record.errors
    assert error.code == "intake.dicom-truncated"
    assert error.location == "(7FE0,0010) PixelData" and "cut.dcm" in shown(
        error.message, "cut.dcm"
    )


# -- 5. crashes --------------------------------------------------------------------------------
def test_a_zip_needing_version_8_8_is_an_error_and_the_batch_goes_on(
    converter: Converter,
) -> None:
    data = bytearray(_zip({"IM1.dcm": _chest()}))
    central = data.rindex(b"PK\x01\x02")
    data[central + 6] = 88  # "version needed to extract": 8.8
    items = [("a/cd.zip", bytes(data)), ("b/IM2.dcm", _chest(1, 2))]
    bad, good = converter.convert_files(items)
    assert good.ok
    [error] = bad.errors
    assert error.code == "intake.dicom-zip" and "a/cd.zip" in shown(error.message, items)
    assert "8.8" in error.message


def test_a_member_without_a_name_is_an_error_not_a_crash(converter: Converter) -> None:
    data = _zip({"IM1.dcm": _chest(1, 1), "X": _chest(1, 2)}, zipfile.ZIP_STORED)
    # Rename 'X' to '' in the central directory (its local header keeps the name).
    out = bytearray(data)
    entry = out.rindex(b"PK\x01\x02")
    assert out[entry + 28 : entry + 30] == b"\x01\x00" and out[entry + 46 : entry + 47] == b"X"
    out[entry + 28 : entry + 30] = b"\x00\x00"
    del out[entry + 46]
    end = out.rindex(b"PK\x05\x06")
    size = struct.unpack("<L", out[end + 12 : end + 16])[0]
    out[end + 12 : end + 16] = struct.pack("<L", size - 1)
    [record] = converter.convert(bytes(out), source="cd.zip")
    [error] = record.errors
    assert error.code == "intake.dicom-damaged-member" and "no name" in error.message


def test_an_unknown_vr_is_an_error_on_the_record(converter: Converter) -> None:
    data = _chest()
    tag = b"\x20\x00\x11\x00IS"
    assert tag in data
    items = [("a/x.dcm", data.replace(tag, tag[:4] + b"XX")),
             ("b/y.dcm", _chest(2, 1, StudyInstanceUID="2.25.9"))]  # fmt: skip
    records = list(converter.convert_files(items))
    assert [r.ok for r in records] == [False, True]
    [error] = records[0].errors
    assert error.code == "intake.dicom-bad-value" and "(0020,0011) SeriesNumber" in str(
        error.location
    )


# -- 7. errors that point at the right thing ---------------------------------------------------
def test_a_dataset_without_preamble_is_read_as_dicom(converter: Converter) -> None:
    ds = wang_wei()
    out = io.BytesIO()
    ds.save_as(out, implicit_vr=False, little_endian=True)  # no preamble, no file meta
    raw = out.getvalue()
    assert raw[128:132] != b"DICM"
    [record] = converter.convert(raw, source="raw.dcm")
    assert record.ok, [i.line() for i in record.issues]
    assert record.format == "dicom"


def test_dicom_json_with_a_byte_order_mark_is_read(converter: Converter) -> None:
    data = b"\xef\xbb\xbf" + json.dumps([wang_wei().to_json_dict()]).encode()
    [record] = converter.convert(data, source="bom.json")
    assert record.ok, [i.line() for i in record.issues]


def test_dicom_json_errors_name_the_tag(converter: Converter) -> None:
    obj = wang_wei().to_json_dict()
    obj["00200011"] = {"vr": "IS", "Value": ["one"]}
    [record] = converter.convert(json.dumps(obj).encode(), source="x.json")
    [error] = record.errors
    assert error.location == "(0020,0011) SeriesNumber"
    assert "Error" not in error.message  # no Python exception type


def test_an_empty_zip_is_named_so(converter: Converter) -> None:
    buffer = io.BytesIO()
    zipfile.ZipFile(buffer, "w").close()
    [record] = converter.convert(buffer.getvalue(), source="empty.zip")
    [error] = record.errors
    assert error.code == "intake.dicom-zip" and "an empty zip archive" in error.message


# -- 6. resource bounds (the memory test itself: test_dicom_memory.py) ---------------------
def test_large_elements_are_skipped_counted_and_refused_when_mapped(converter: Converter) -> None:
    from gateway.intake.dicom import read_studies

    with warnings.catch_warnings():  # pydicom: "exceeds the maximum length ... for VR LO"
        warnings.simplefilter("ignore")
        ds = wang_wei(StudyDescription="CT " * 700)  # 2100 bytes, read by the mapping
        ds.add_new(0x00290010, "LO", "GATEWAY TEST")
        ds.add_new(0x00291010, "OB", b"\0" * 4096)  # a private blob nobody reads
        data = part10(ds)
    [unit] = read_studies([("x.dcm", data)], converter.network, max_element_bytes=1024)
    [note] = [i for i in unit.issues if i.code == "intake.dicom-skipped-elements"]
    assert "2 element(s) larger than 1024 bytes" in note.message
    assert "(0008,1030) StudyDescription" in note.message and "(0029,1010)" in note.message
    record = converter.finish(unit)
    assert record.bundle is None
    [error] = record.errors
    assert error.code == "intake.dicom-too-large" and "(0008,1030)" in (error.location or "")


def test_the_element_limit_is_a_setting(tmp_path: Path) -> None:
    from gateway.errors import ConfigError

    env = {"GATEWAY_DICOM_MAX_ELEMENT_BYTES": "2048"}
    assert Settings.load(home=tmp_path, env=env).dicom_max_element_bytes == 2048
    assert Settings.load(home=tmp_path, env={}).dicom_max_element_bytes == 1 << 20
    for bad in ("lots", "10"):
        with pytest.raises(ConfigError):
            Settings.load(home=tmp_path, env={"GATEWAY_DICOM_MAX_ELEMENT_BYTES": bad})


def test_listing_unmapped_attributes_does_not_read_skipped_ones(converter: Converter) -> None:
    from gateway.intake.dicom import read_studies

    ds = wang_wei()
    ds.add_new(0x00420011, "OB", b"%PDF" + b"\0" * 4092)  # EncapsulatedDocument
    [unit] = read_studies([("x.dcm", part10(ds))], converter.network, max_element_bytes=1024)
    record = converter.finish(unit, trace=True)
    assert record.ok and "(0042,0011) EncapsulatedDocument" in record.unmapped
    raw = unit.view.root.datasets[0].get_item(0x00420011, keep_deferred=True)
    assert raw.value is None  # still unread


def test_an_lzma_member_is_refused_unread() -> None:
    # An LZMA header names its dictionary size (up to 4 GiB), allocated before the first
    # byte is decompressed; the fuzzer met it as a MemoryError under a memory cap.
    import io
    import zipfile

    from gateway import Converter

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_LZMA) as archive:
        archive.writestr("IM0001.dcm", b"\0" * 132 + b"DICM")
    records = Converter().convert(buf.getvalue(), source="study.zip", fmt="dicom")
    codes = [issue.code for record in records for issue in record.errors]
    assert codes == ["intake.dicom-refused-member"]
    assert "LZMA" in records[0].errors[0].message


@pytest.mark.parametrize("value", [1e308, 1e20, "999999999999", "-3000000000"])
def test_an_instance_number_no_fhir_integer_holds_is_an_intake_error(
    converter: Converter, value: Any
) -> None:
    """It failed as validation.structure at the FHIR path; now the tag is named."""
    obj = wang_wei().to_json_dict()
    obj["00200013"] = {"vr": "IS", "Value": [value]}
    [record] = converter.convert(json.dumps(obj).encode(), source="x.json")
    [error] = record.errors
    assert error.code == "intake.dicom-bad-value", error.line()
    assert error.location.endswith("(0020,0013) InstanceNumber"), error.location
    assert "out of range" in error.message and "FHIR" in error.message
    assert str(value) not in error.message
    _clean(record)


def test_a_part10_instance_number_out_of_range_is_an_intake_error(converter: Converter) -> None:
    ds = wang_wei()
    ds.InstanceNumber = "999999999999"
    [record] = converter.convert(part10(ds), source="big.dcm")
    [error] = record.errors
    assert error.code == "intake.dicom-bad-value", error.line()
    assert error.location.endswith("(0020,0013) InstanceNumber"), error.location


# What the sender must set: every message about a wrong or missing (0008,0005) names it and
# the term to declare (a Big5 sender has none in DICOM: UTF-8 and ISO_IR 192)
@pytest.mark.parametrize(
    ("declared", "name", "codec", "hint"),
    [
        (None, "王^伟", "utf-8", "declare (0008,0005) SpecificCharacterSet 'ISO_IR 192'"),
        ("ISO_IR 100", "王^伟", "gb18030", "declare (0008,0005) SpecificCharacterSet 'GB18030'"),
        (
            "ISO_IR 100",
            "陳^大文",
            "big5hkscs",
            "send the text in UTF-8 with (0008,0005) SpecificCharacterSet 'ISO_IR 192'",
        ),
    ],
)
def test_a_refused_charset_says_what_the_sender_should_declare(
    converter: Converter, declared: str | None, name: str, codec: str, hint: str
) -> None:
    ds = wang_wei(SpecificCharacterSet=declared, InstitutionName=None, StudyDescription="CT",
                  IssuerOfAccessionNumberSequence=None, ReferringPhysicianName=None)  # fmt: skip
    ds.add_new(0x00100010, "PN", name.encode(codec))
    [record] = converter.convert(part10(ds), source="x.dcm")
    [error] = record.errors
    assert error.code == "intake.charset-mismatch" and "(0010,0010) PatientName" in (
        error.location or ""
    )
    assert (
        f"the sender should {hint}" in error.message and "charset_mismatch: decode" in error.message
    )


@pytest.mark.parametrize(
    ("declared", "codec", "term"),
    [("ISO_IR 192", "gb18030", "'GB18030'"), ("GB18030", "utf-8", "'ISO_IR 192'")],
)
def test_bytes_undecodable_in_a_declared_multi_byte_charset_say_what_to_declare(
    converter: Converter, declared: str, codec: str, term: str
) -> None:
    ds = wang_wei(SpecificCharacterSet=declared, InstitutionName="LAX2",
                  ReferringPhysicianName=None, StudyDescription="CT")  # fmt: skip
    ds.add_new(0x00081030, "LO", "胸^部".encode(codec))
    [record] = converter.convert(part10(ds), source="x.dcm")
    [warning] = [w for w in record.warnings if w.code == "intake.dicom-undecodable"]
    assert f"(0008,0005) '{declared}'" in warning.message
    assert f"the sender should declare (0008,0005) SpecificCharacterSet {term}" in warning.message
    assert "胸" not in warning.message  # the value is never quoted
    # A person's name so sent refuses the study, with the same advice.
    ds.add_new(0x00100010, "PN", "王^伟".encode(codec))
    [record] = converter.convert(part10(ds), source="x.dcm")
    [error] = record.errors
    assert error.code == "intake.dicom-name-undecodable"
    assert f"the sender should declare (0008,0005) SpecificCharacterSet {term}" in error.message
    assert "王" not in error.message
