"""The fast header read (gateway/intake/dicom/_fastread.py) reads what dcmread reads.

For every DICOM file of the repository (goldens, examples, fuzz regressions) and for
generated files in every transfer syntax and shape the reader meets, ``read_header``
either declines (None, the file goes to dcmread) or returns a dataset equal to
``dcmread(stop_before_pixels=True, defer_size=...)``'s element by element: the same
element kinds (raw or decoded; in the file meta, the same once decoded), VRs, bytes,
file positions, decoded values, encodings, file meta and the file position where
reading stopped.
"""

from __future__ import annotations

import io
import warnings
import zlib
from pathlib import Path
from typing import Any

import pytest
from pydicom import Dataset, dcmread
from pydicom.dataelem import RawDataElement
from pydicom.multival import MultiValue
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)

from gateway.errors import IntakeError
from gateway.intake.dicom._fastread import read_header
from gateway.intake.dicom._paths import compile_path
from gateway.intake.dicom._scope import quiet_pydicom
from gateway.intake.dicom._view import _element, _Plain, _text_of
from tests.golden.dicom.make_studies import part10, wang_wei

REPO = Path(__file__).resolve().parents[3]
LIMIT = 1 << 20
FILES = sorted(
    p
    for top in ("tests", "examples")
    for p in (REPO / top).rglob("*.dcm")
    if ".venv" not in p.parts
)


def _elements(ds: Dataset) -> list[tuple[Any, ...]]:
    out = []
    for tag in list(ds.keys()):  # tags only: iterating ds would decode values
        e = ds.get_item(tag, keep_deferred=True)
        raw = isinstance(e, RawDataElement)
        out.append(
            (
                tag,
                type(e).__name__,
                e.VR,
                e.value if raw else repr(e.value),
                getattr(e, "value_tell", None),
                getattr(e, "file_tell", None),
            )
        )
    return out


def _decoded(ds: Dataset) -> list[str]:
    out = []
    for tag in list(ds.keys()):  # tags only: iterating ds would decode values
        try:
            out.append(repr(ds[tag].value))
        except Exception as exc:  # the same failure either way
            out.append(type(exc).__name__)
    return out


def _both(data: bytes) -> tuple[Dataset | None, io.BytesIO, Dataset | None, io.BytesIO]:
    slow, fast = io.BytesIO(data), io.BytesIO(data)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            expected: Dataset | None = dcmread(slow, stop_before_pixels=True, defer_size=LIMIT)
        except Exception:
            expected = None
        got = read_header(fast, LIMIT)
    return expected, slow, got, fast


def _assert_same(data: bytes) -> bool:
    """Whether the fast read took the file; when it did, it equals dcmread's."""
    expected, slow, got, fast = _both(data)
    if got is None:
        assert fast.tell() == 0  # declined: handed back at its start for dcmread
        return False
    assert expected is not None
    assert _elements(got) == _elements(expected)
    # dcmread decodes two file meta elements as it reads; here they stay raw until used.
    assert list(got.file_meta.keys()) == list(expected.file_meta.keys())
    assert _decoded(got.file_meta) == _decoded(expected.file_meta)
    assert _elements(got.file_meta) == _elements(expected.file_meta)
    assert got.original_encoding == expected.original_encoding
    assert got.original_character_set == expected.original_character_set
    assert got.file_meta.original_encoding == expected.file_meta.original_encoding
    assert got.preamble == expected.preamble
    assert fast.tell() == slow.tell()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert _decoded(got) == _decoded(expected)
        assert _elements(got) == _elements(expected)  # decoding changed both alike
    return True


def test_every_dicom_file_of_the_repository_reads_as_dcmread_reads_it() -> None:
    assert len(FILES) >= 20
    taken = [p.name for p in FILES if _assert_same(p.read_bytes())]
    assert len(taken) >= len(FILES) // 2  # the usual files take the fast path


def _file(syntax: str, **attrs: Any) -> bytes:
    with warnings.catch_warnings():  # pydicom's complaints about the long test value
        warnings.simplefilter("ignore")
        ds = wang_wei(**attrs)
        data = part10(ds)
        if syntax == ExplicitVRLittleEndian:
            return data
        ds.file_meta.TransferSyntaxUID = syntax
        out = io.BytesIO()
        implicit, little = syntax == ImplicitVRLittleEndian, syntax != ExplicitVRBigEndian
        ds.save_as(out, enforce_file_format=True, implicit_vr=implicit, little_endian=little)
    return out.getvalue()


@pytest.mark.parametrize("syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
def test_usual_files_take_the_fast_path_and_equal_dcmread(syntax: str) -> None:
    long_note = "长" * (LIMIT // 2 + 10)  # beyond defer_size: skipped unread by both
    for attrs in ({}, {"ImageComments": long_note}, {"BitsAllocated": 8, "PixelData": b"\0" * 64}):
        assert _assert_same(_file(syntax, **attrs))


@pytest.mark.parametrize("syntax", [ExplicitVRBigEndian, DeflatedExplicitVRLittleEndian])
def test_other_transfer_syntaxes_are_left_to_dcmread(syntax: str) -> None:
    assert not _assert_same(_file(syntax))


def test_unusual_shapes_are_left_to_dcmread() -> None:
    usual = _file(ExplicitVRLittleEndian)
    no_preamble = usual[128:]
    implicit_meta = _file(ImplicitVRLittleEndian)
    cut_short = usual[: len(usual) - 3]
    # The meta says explicit VR but the dataset is written implicit: dcmread's heuristic.
    meta_end = 132 + 12 + int.from_bytes(usual[140:144], "little")
    lying = usual[:meta_end] + implicit_meta[meta_end:]
    for data in (no_preamble, lying, usual[:140]):
        assert not _assert_same(data)
    # Cut short inside its last value: read alike (the reader's end check reports it).
    assert _assert_same(cut_short)


def test_a_deflated_file_still_reads() -> None:
    data = _file(DeflatedExplicitVRLittleEndian)
    assert zlib is not None and read_header(io.BytesIO(data), LIMIT) is None
    assert str(dcmread(io.BytesIO(data), stop_before_pixels=True).PatientID) == "0012345"


PLAIN_IS = [b"1 ", b"01", b"+3", b"-0", b" 7 ", b"999999999999"]


@pytest.mark.parametrize("sent", [*PLAIN_IS, b"1.0 ", b"1\\2 ", b"x1"])
def test_an_integer_string_reads_as_pydicom_reads_it(sent: bytes) -> None:
    """InstanceNumber is read straight from its bytes when it is one plain integer,
    as the text pydicom's IS gives; anything else (a decimal, two values, a bad value)
    is still pydicom's to convert, or to refuse as dicom-bad-value."""

    def one() -> Dataset:
        raw = RawDataElement(0x00200013, "IS", len(sent), sent, 0, False, True)
        return Dataset({0x00200013: raw})

    path = compile_path("InstanceNumber")
    label = "(0020,0013) InstanceNumber"
    with quiet_pydicom(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            value = one()[0x00200013].value
            want: Any = [_text_of(v, "IS", path, label, []) for v in _listed(value)]
        except (ValueError, TypeError, OverflowError):
            want = "intake.dicom-bad-value"
        try:
            got = _element(one(), 0x00200013, label)
        except IntakeError as exc:
            assert exc.code == want
            return
    assert got is not None
    assert isinstance(got, _Plain) == (sent in PLAIN_IS)
    assert [_text_of(v, got.VR, path, label, []) for v in _listed(got.value)] == want


def _listed(value: Any) -> list[Any]:
    return list(value) if isinstance(value, MultiValue) else [value]
