"""A study sent as a zip archive and loose files at once (a PACS export as an archive,
images sent again or later as files), in one ``gateway convert`` batch: the batch plan
(gateway/inputs.py ``dicom_batches``, from ``intake/dicom/_peek.py``) reads the archive
with every study its members name, so each study is converted once, whole, from all of
its files: no ``intake.dicom-late-file``, no second partial study, no duplicate.

Studies made with pydicom (headers only): 王伟's chest CT at Lai'an (GB18030) and 何慧敏's
knee MR at Nansha (ISO_IR 192, UTF-8).
"""

from __future__ import annotations

import io
import json
import warnings
import zipfile
from pathlib import Path
from typing import Any

import pytest

from gateway import Converter
from gateway.envelope import Record
from gateway.inputs import DicomInput, dicom_batches
from gateway.intake.dicom import Studies, studies_in
from tests.gateway_cli import run
from tests.golden.dicom.make_studies import LAX2_CHEST, NSCH_KNEE, instance, part10, wang_wei
from tests.intake.dicom._shown import shown


def _chest(number: int, series: int = 1) -> bytes:
    return part10(wang_wei(series=series, number=number))


def _knee(number: int) -> bytes:
    return part10(
        instance(
            NSCH_KNEE,
            1,
            number,
            SpecificCharacterSet="ISO_IR 192",
            PatientName="HE^HUIMIN=何^慧敏=",
            PatientID="0098765",
            IssuerOfPatientID="NSCH",
            InstitutionName="南沙中心医院",
            StudyDate="20260620",
            StudyTime="101500",
        )
    )


def _zip(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def _write(root: Path, files: dict[str, bytes]) -> list[DicomInput]:
    """The files under ``root``, as ``gateway convert`` names them (in this order)."""
    items = []
    for name, data in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        items.append(DicomInput(f"{root.name}/{name}", path))
    return items


def _study(record: Record) -> dict[str, Any]:
    assert record.bundle is not None, [i.line() for i in record.issues]
    [study] = [
        e["resource"]
        for e in record.bundle["entry"]
        if e["resource"]["resourceType"] == "ImagingStudy"
    ]
    return study


def _patient_name(record: Record) -> str:
    assert record.bundle is not None
    [patient] = [
        e["resource"] for e in record.bundle["entry"] if e["resource"]["resourceType"] == "Patient"
    ]
    return str(patient["name"][0]["text"])


def _sop_uids(study: dict[str, Any]) -> list[str]:
    return sorted(i["uid"] for s in study["series"] for i in s["instance"])


@pytest.mark.parametrize("order", ["loose first", "archive first"])
def test_a_study_as_an_archive_and_loose_files_in_other_folders_converts_once_whole(
    converter: Converter, tmp_path: Path, order: str
) -> None:
    loose = {"loose/IM1.dcm": _chest(1), "later/S2/IM1.dcm": _chest(1, series=2)}
    archive = {"cd/study.zip": _zip({"DICOM/IM2": _chest(2), "DICOM/IM3": _chest(3)})}
    files = {**loose, **archive} if order == "loose first" else {**archive, **loose}
    items = _write(tmp_path / "export", files)
    records = list(converter.convert_dicom_inputs(items))
    assert [(r.control_id, r.ok) for r in records] == [(LAX2_CHEST, True)], [
        i.line() for r in records for i in r.issues
    ]
    [record] = records
    assert not record.issues
    study = _study(record)
    assert (study["numberOfSeries"], study["numberOfInstances"]) == (2, 4)
    assert _sop_uids(study) == sorted(
        f"{LAX2_CHEST}.{s}.{n}" for s, n in ((1, 1), (1, 2), (1, 3), (2, 1))
    )
    assert _patient_name(record) == "王伟" and record.charset == "GB18030"
    # The same Bundle as the study's files read together in one go.
    together = list(converter.convert_files([(i.name, i.read()) for i in items]))
    assert [r.bundle_json for r in together] == [record.bundle_json]


def test_an_archive_of_two_studies_goes_with_the_loose_files_of_both(
    converter: Converter, tmp_path: Path
) -> None:
    """One archive holds the chest (GB18030) and the knee (UTF-8); each study's other
    files are loose elsewhere, between other studies' files: two whole studies."""
    files = {
        "a/chest1.dcm": _chest(1),
        "b/both.zip": _zip({"chest2.dcm": _chest(2), "knee1.dcm": _knee(1)}),
        "c/knee2.dcm": _knee(2),
        "c/knee3.dcm": _knee(3),
    }
    items = _write(tmp_path / "pacs", files)
    assert [len(b) for b in dicom_batches(items)] == [4]
    records = list(converter.convert_dicom_inputs(items))
    assert [(r.control_id, r.ok) for r in records] == [(LAX2_CHEST, True), (NSCH_KNEE, True)]
    assert [_study(r)["numberOfInstances"] for r in records] == [2, 3]
    assert [_patient_name(r) for r in records] == ["王伟", "何慧敏"]
    assert [r.charset for r in records] == ["GB18030", "ISO_IR 192"]


def test_an_instance_both_in_the_archive_and_loose_is_counted_once(
    converter: Converter, tmp_path: Path
) -> None:
    """The same image loose and in the archive: one instance (a warning), one study."""
    files = {
        "cd/study.zip": _zip({"IM1": _chest(1), "IM2": _chest(2)}),
        "resent/IM2.dcm": _chest(2),
    }
    [record] = converter.convert_dicom_inputs(_write(tmp_path / "in", files))
    assert record.ok and _study(record)["numberOfInstances"] == 2
    assert [w.code for w in record.warnings] == ["intake.duplicate-instance"]


def test_a_damaged_member_still_fails_the_whole_study_with_its_loose_files(
    converter: Converter, tmp_path: Path
) -> None:
    """All or nothing: a member whose header cannot be read (its study unknown) fails
    the studies of its archive; the study's loose files elsewhere are read with it, so
    the study is not converted from them alone either (nor met again, late)."""
    cut = _chest(3)[:150]  # 'DICM', then the file meta cut short
    files = {
        "loose/IM1.dcm": _chest(1),
        "cd/study.zip": _zip({"IM2": _chest(2), "IM3": cut}),
    }
    items = _write(tmp_path / "in", files)
    assert studies_in(items[1].path) == Studies((LAX2_CHEST,), False)
    [record] = converter.convert_dicom_inputs(items)
    assert record.control_id == LAX2_CHEST and not record.ok and record.bundle is None
    [error] = record.errors
    assert error.code != "intake.dicom-late-file" and "IM3" in shown(
        error.message, [(i.name, i.read()) for i in items]
    )
    assert "王" not in error.message and "WANG" not in error.message


def test_studies_in_tells_archives_json_and_files(tmp_path: Path) -> None:
    knee_json = json.dumps(
        [{"0020000D": {"vr": "UI", "Value": [NSCH_KNEE]}}, {"0008": "not an attribute"}]
    ).encode()
    both = _zip({"x/IM1": _chest(1), "y/knee.dcm": _knee(1), "README.txt": b"\xe5\x85\x89"})
    assert studies_in(data=both) == _studies_in_file(tmp_path, both)
    assert studies_in(data=both).uids == (LAX2_CHEST, NSCH_KNEE) and studies_in(data=both).whole
    assert studies_in(data=_chest(1)).uids == (LAX2_CHEST,)
    told = studies_in(data=knee_json)
    assert told.uids == (NSCH_KNEE,) and not told.whole  # its second object names no study
    assert studies_in(data=_zip({"a.json": knee_json})).uids == (NSCH_KNEE,)
    assert studies_in(data=b"not dicom").uids == () and not studies_in(data=b"PK\x03\x04").whole
    cut = _zip({"IM1": _chest(1), "IM2": _chest(2)[:150]})
    assert studies_in(data=cut) == Studies((LAX2_CHEST,), False)  # IM2's study: unknown


def _studies_in_file(tmp_path: Path, data: bytes) -> Any:
    path = tmp_path / "archive.zip"
    path.write_bytes(data)
    return studies_in(path)


def test_gateway_convert_a_folder_holding_a_study_as_archive_and_files(tmp_path: Path) -> None:
    """`gateway convert export/`: the archive in one subfolder, the rest of the study
    loose in another, another study beside them: one Bundle per study, exit 0."""
    _write(
        tmp_path / "export",
        {
            "archive/study.zip": _zip({"IM2.dcm": _chest(2), "IM3.dcm": _chest(3)}),
            "images/IM1.dcm": _chest(1),
            "images/knee1.dcm": _knee(1),
        },
    )
    out = tmp_path / "out"
    proc = run("convert", str(tmp_path / "export"), "-o", f"{out}/", home=tmp_path / "home")
    assert proc.returncode == 0, proc.stderr.decode()
    assert b"late" not in proc.stderr
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [f"{LAX2_CHEST}.json", f"{NSCH_KNEE}.json"]
    )
    chest = json.loads((out / f"{LAX2_CHEST}.json").read_bytes())
    [study] = [
        e["resource"] for e in chest["entry"] if e["resource"]["resourceType"] == "ImagingStudy"
    ]
    assert study["numberOfInstances"] == 3
    assert b"(of 2 records in 3 files)" in proc.stderr


def _bad_study_uid(number: int) -> bytes:
    """A chest instance whose Study Instance UID is no UID (a control character in it):
    intake cannot tell its study (1.2.3\\x01.4 may be meant as 1.2.3.4)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return part10(wang_wei(LAX2_CHEST[:-2] + "\x01" + LAX2_CHEST[-2:], number=number))


def test_a_study_uid_that_is_no_uid_is_not_told_and_goes_with_its_folder(
    tmp_path: Path, converter: Converter
) -> None:
    # The reader cannot place such an instance (its study is unknown), so it fails every
    # study of its folder; told as a study of its own, the batch plan read it alone and
    # the chest study beside it converted without it (gateway convert), where the same
    # files converted at once (POST /convert) fail it.
    bad = _bad_study_uid(2)
    with warnings.catch_warnings():  # as in production: pydicom's warning is no error
        warnings.simplefilter("ignore")
        assert studies_in(data=bad) == Studies()
    knee_json = json.dumps([{"0020000D": {"vr": "UI", "Value": [LAX2_CHEST + ".\x01"]}}])
    assert studies_in(data=knee_json.encode()) == Studies()
    items = _write(tmp_path / "export", {"chest/IM1.dcm": _chest(1), "chest/IM2.dcm": bad})
    [batch] = dicom_batches(items)
    assert [i.name for i in batch] == [i.name for i in items]
    at_once = list(converter.convert_files([(i.name, i.read()) for i in items]))
    by_batch = [
        r
        for b in dicom_batches(items)
        for r in converter.convert_files([(i.name, i.read()) for i in b])
    ]
    assert [(r.ok, [e.code for e in r.errors]) for r in by_batch] == [
        (r.ok, [e.code for e in r.errors]) for r in at_once
    ]
    assert not at_once[0].ok
