"""A hostile or broken DICOM source: sequences nested past the stack, BulkDataURIs that
point at local files or the network, zip members named to escape a folder or as
symlinks, archives in archives. Zip bombs and member limits: test_dicom_intake.py."""

from __future__ import annotations

import io
import json
import socket
import stat
import struct
import urllib.request
import zipfile
from pathlib import Path
from typing import Any

import pytest

from gateway import Converter
from gateway.intake.dicom import _reader
from tests.golden.dicom.make_studies import part10, wang_wei
from tests.intake.dicom._shown import shown

OTHER_STUDY = "1.2.826.0.1.3680043.8.498.77001"
SECRET = "绝密-7f3a9c"


def _other() -> bytes:
    """An instance of another patient's study, converted beside the hostile one."""
    return part10(wang_wei(OTHER_STUDY, PatientID="0099999"))


def _nested_json(depth: int) -> dict[str, Any]:
    obj: dict[str, Any] = wang_wei().to_json_dict()
    inner: dict[str, Any] = {}
    for _ in range(depth):
        inner = {"00081140": {"vr": "SQ", "Value": [inner]}}
    obj.update(inner)
    return obj


def test_json_sequences_nested_past_the_stack_fail_their_study_only(
    converter: Converter,
) -> None:
    """pydicom's from_json recurses: 300 levels were a RecursionError that failed every
    study of the batch as an internal error."""
    items = [("good.dcm", _other()), ("deep.json", json.dumps(_nested_json(300)).encode())]
    good, failed = converter.convert_files(items)
    assert good.control_id == OTHER_STUDY and good.ok
    [error] = failed.errors
    assert error.code == "intake.dicom-json"
    assert error.location == "(0008,1140) ReferencedImageSequence"
    assert "nested deeper than 64" in error.message


def test_the_sequence_depth_limit_is_exact(converter: Converter) -> None:
    at = json.dumps(_nested_json(_reader.MAX_SEQUENCE_DEPTH)).encode()
    [record] = converter.convert(at, source="at.json")
    assert record.ok, [i.line() for i in record.issues]
    beyond = json.dumps(_nested_json(_reader.MAX_SEQUENCE_DEPTH + 1)).encode()
    [record] = converter.convert(beyond, source="beyond.json")
    assert [e.code for e in record.errors] == ["intake.dicom-json"]


def _undefined_length_nest(depth: int) -> bytes:
    """A private sequence (0009,1010) nesting ``depth`` items of undefined length, in
    explicit VR little endian, closed by its delimiters."""
    opening = struct.pack("<HH2sHI", 0x0009, 0x1010, b"SQ", 0, 0xFFFFFFFF) + struct.pack(
        "<HHI", 0xFFFE, 0xE000, 0xFFFFFFFF
    )
    closing = struct.pack("<HHI", 0xFFFE, 0xE00D, 0) + struct.pack("<HHI", 0xFFFE, 0xE0DD, 0)
    return opening * depth + closing * depth


@pytest.mark.parametrize("depth", [2_000, 100_000])
def test_a_part10_nest_past_the_stack_fails_its_study_not_the_batch(
    converter: Converter, depth: int
) -> None:
    deep = part10(wang_wei()) + _undefined_length_nest(depth)
    items = [("a/good.dcm", _other()), ("b/deep.dcm", deep)]
    good, failed = converter.convert_files(items)
    assert good.control_id == OTHER_STUDY and good.ok
    [error] = failed.errors
    assert error.code == "intake.dicom-unreadable" and "b/deep.dcm" in shown(error.message, items)


def test_a_part10_nest_of_defined_length_is_refused_naming_the_tag(converter: Converter) -> None:
    ds = wang_wei()
    ds.ReferencedImageSequence = []
    item = ds
    for _ in range(_reader.MAX_SEQUENCE_DEPTH + 1):
        child = type(ds)()
        item.ReferencedImageSequence = [child]
        item = child
    [record] = converter.convert(part10(ds), source="deep.dcm")
    [error] = record.errors
    assert error.code == "intake.dicom-unreadable"
    assert error.location == "(0008,1140) ReferencedImageSequence"


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("the gateway tried to reach the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(urllib.request, "urlopen", refuse)


@pytest.mark.parametrize("scheme", ["file", "http"])
def test_bulk_data_uris_are_never_fetched(
    converter: Converter, tmp_path: Path, no_network: None, scheme: str
) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text(SECRET, encoding="utf-8")
    uri = f"file://{secret}" if scheme == "file" else "http://169.254.169.254/latest/meta-data"
    obj = wang_wei().to_json_dict()
    obj["7FE00010"] = {"vr": "OB", "BulkDataURI": uri}
    obj["00081030"] = {"vr": "LO", "BulkDataURI": uri}  # StudyDescription, mapped
    [record] = converter.convert(json.dumps(obj).encode(), source="bulk.json")
    assert record.ok, [i.line() for i in record.issues]
    assert SECRET not in (record.bundle_json or b"").decode()


def _zip(members: list[tuple[zipfile.ZipInfo | str, bytes]]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for info, data in members:
            archive.writestr(info, data)
    return buffer.getvalue()


def test_escaping_absolute_and_symlink_member_names_are_only_names(
    converter: Converter, tmp_path: Path
) -> None:
    """Members are read from the archive, never extracted: a ``../`` or absolute name
    writes nothing and a symlink member is its own bytes (the link text), not its target."""
    secret = tmp_path / "secret.dcm"
    secret.write_bytes(part10(wang_wei(number=9)))
    link = zipfile.ZipInfo("S1/link.dcm")
    link.external_attr = (stat.S_IFLNK | 0o777) << 16
    data = _zip(
        [
            ("../../../tmp/escape/IM1.dcm", part10(wang_wei(number=1))),
            ("/etc/IM2.dcm", part10(wang_wei(number=2))),
            (link, str(secret).encode()),
        ]
    )
    [record] = converter.convert(data, source="cd.zip")
    assert record.ok, [i.line() for i in record.issues]
    bundle = json.loads(record.bundle_json or b"{}")
    [study] = [
        e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "ImagingStudy"
    ]
    assert study["numberOfInstances"] == 2  # not the symlink's target, instance 9
    [warning] = record.warnings
    assert warning.code == "intake.skipped-member" and "link.dcm" in shown(
        warning.message, ("cd.zip", data)
    )
    assert not Path("/tmp/escape").exists()


def test_an_archive_inside_the_archive_is_skipped_not_opened(converter: Converter) -> None:
    inner = _zip([("IM2.dcm", part10(wang_wei(number=2)))])
    data = _zip([("IM1.dcm", part10(wang_wei(number=1))), ("inner.zip", inner)])
    [record] = converter.convert(data, source="cd.zip")
    assert record.ok
    [warning] = record.warnings
    assert "inner.zip" in shown(
        warning.message, ("cd.zip", data)
    ) and "archive inside the archive" in shown(warning.message, ("cd.zip", data))
