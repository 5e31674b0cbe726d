"""Intake messages name a file by reference, never by its name (gateway/intake/_files.py):
modalities and exports name files after the patient (``CHAN_TAI_MAN_A1234567.dcm``,
``陈大文.dcm``, a folder per patient in an archive), and the messages go into the record's
OperationOutcome, the message store and the logs. ``gateway convert`` prints the path
beside the reference on its own output, where the operator typed it."""

from __future__ import annotations

import hashlib
import io
import os
import zipfile
from pathlib import Path

from gateway import Converter
from gateway.intake import file_ref, with_paths
from tests.gateway_cli import run
from tests.golden.dicom.make_studies import part10, wang_wei

NAMES = ("CHAN_TAI_MAN_A1234567.dcm", "陈大文.dcm", "陳大文")
PARTS = ("CHAN", "TAI_MAN", "A1234567", "陈大文", "陳大文")


def _two_patients() -> list[tuple[str, bytes]]:
    first = part10(wang_wei(series=1, number=1))
    other = part10(wang_wei(series=1, number=2, PatientID="A1234567"))
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("陳大文/IM1.dcm", b"not dicom")  # skipped, with a warning naming it
        zf.writestr("陳大文/IM2.dcm", part10(wang_wei(series=2, number=3)))
    return [
        (f"in/{NAMES[0]}", first),
        (f"in/{NAMES[1]}", other),
        ("in/陳大文.zip", archive.getvalue()),
    ]


def test_no_file_name_reaches_a_message_or_the_operation_outcome(converter: Converter) -> None:
    items = _two_patients()
    [record] = converter.convert_files(items)
    [error] = record.errors
    assert error.code == "intake.dicom-patient-mismatch"
    texts = [str(i.to_fhir()) for i in record.issues] + [i.line() for i in record.issues]
    assert not [t for t in texts if any(p in t for p in PARTS)], texts
    assert file_ref(items[0][0]) in error.message and file_ref(items[1][0]) in error.message


def test_an_archive_member_is_named_by_reference_too(converter: Converter) -> None:
    # an archive of a patient's folder: the member's path names the patient
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("陳大文/IM1.dcm", part10(wang_wei()))
        zf.writestr("陳大文/notes.txt", b"not dicom")
    [record] = converter.convert(archive.getvalue(), source="陳大文.zip")
    [skipped] = [w for w in record.warnings if w.code == "intake.skipped-member"]
    assert skipped.message.startswith(file_ref("陳大文.zip/陳大文/notes.txt"))
    assert "陳大文" not in skipped.message


def test_a_reference_is_put_back_only_for_the_names_given() -> None:
    line = f"error: {file_ref('a/陈大文.dcm')} and {file_ref('b.dcm')} differ"
    assert with_paths(line, ["a/陈大文.dcm"]) == (
        f"error: {file_ref('a/陈大文.dcm')} (a/陈大文.dcm) and {file_ref('b.dcm')} differ"
    )
    assert with_paths(line, []) == line
    assert file_ref("a.dcm") != file_ref("b.dcm") and len(file_ref("a.dcm")) == len("file ") + 8


def test_the_cli_prints_the_path_beside_the_reference(tmp_path: Path) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    for name, data in _two_patients():
        (tmp_path / name).write_bytes(data)
    done = run("convert", str(folder), "-o", str(tmp_path / "out") + os.sep, home=tmp_path)
    err = done.stderr.decode()
    assert done.returncode == 1, err
    for name in NAMES[:2]:
        path = str(folder / name)
        assert f"{file_ref(path)} ({path})" in err, err


def test_a_name_that_is_not_utf8_is_hashed_as_its_bytes() -> None:
    # 陈大文.dcm written in GB 18030 by a mainland workstation: os.fsdecode gives surrogate
    # escapes; the reference is what `printf '%s' NAME | sha256sum` prints for the bytes
    raw = "in/陈大文.dcm".encode("gb18030")
    expected = hashlib.sha256(raw).hexdigest()[:8]
    assert file_ref(os.fsdecode(raw)) == f"file {expected}"
    assert file_ref("\ud800.dcm").startswith("file ")  # a lone surrogate still hashes


def test_two_names_of_one_reference_are_both_put_back() -> None:
    # found by counting: the first pair of IM<n>.dcm whose references are the same
    a, b = "in/IM051762.dcm", "in/IM079465.dcm"
    assert file_ref(a) == file_ref(b)
    line = f"error: {file_ref(a)}: not DICOM"
    assert (
        with_paths(line, [a, "in/x.dcm", b, a]) == f"error: {file_ref(a)} ({a} or {b}): not DICOM"
    )
