"""Every exception the libraries a reader calls can raise is translated into an intake
error (the model is httpx's test that every httpcore exception is mapped): a library
failing on bad input is the input's fault and is named as such; anything else escaping a
reader is a fault of the gateway (an ``internal`` issue)."""

from __future__ import annotations

import importlib
import io
import zipfile

import pytest
from pydicom import Dataset
from pydicom.uid import ExplicitVRLittleEndian

from gateway.intake.cda import LXML_FAULTS
from gateway.intake.dicom import ARCHIVE_FAULTS, PYDICOM_FAULTS
from gateway.pipeline import Converter

LIBRARIES = [
    ("pydicom.errors", PYDICOM_FAULTS),
    ("zipfile", ARCHIVE_FAULTS),
    ("zlib", ARCHIVE_FAULTS),
    ("lzma", ARCHIVE_FAULTS),
    ("lxml.etree", LXML_FAULTS),
]


@pytest.mark.parametrize(("module", "faults"), LIBRARIES, ids=[m for m, _ in LIBRARIES])
def test_every_exception_a_library_exports_is_translated(
    module: str, faults: tuple[type[Exception], ...]
) -> None:
    exported = [
        value
        for name, value in vars(importlib.import_module(module)).items()
        if isinstance(value, type) and issubclass(value, Exception) and not name.startswith("_")
    ]
    assert exported, f"{module} exports no exceptions: the test would prove nothing"
    not_mapped = [e.__name__ for e in exported if not issubclass(e, faults)]
    assert not not_mapped, f"{module} exceptions the reader does not translate: {not_mapped}"


def _part10(**values: object) -> bytes:
    ds = Dataset()
    for keyword, value in values.items():
        setattr(ds, keyword, value)
    ds.file_meta = Dataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    ds.file_meta.MediaStorageSOPInstanceUID = "1.2.3.4.5"
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


@pytest.fixture(scope="module")
def converter() -> Converter:
    return Converter()


def _codes(converter: Converter, data: bytes, fmt: str) -> list[str]:
    records = converter.convert(data, source="x", fmt=fmt)
    return [i.code for r in records for i in r.errors]


def test_a_damaged_zip_is_an_intake_error(converter: Converter) -> None:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("a.dcm", _part10(PatientID="1", StudyInstanceUID="1.2.3") * 20)
    data = bytearray(buf.getvalue())
    data[60:80] = bytes(20)  # inside the deflated member: zlib fails, or the CRC does
    codes = _codes(converter, bytes(data), "dicom")
    assert codes and all(c.startswith("intake.") for c in codes), codes


def test_a_cut_dicom_header_is_an_intake_error(converter: Converter) -> None:
    data = _part10(
        SpecificCharacterSet="ISO_IR 192",
        PatientID="0012345",
        StudyInstanceUID="1.2.3",
        SeriesDescription="头颅平扫",
    )
    codes = _codes(converter, data[:-7], "dicom")
    assert codes and all(c.startswith("intake.") for c in codes), codes


def test_an_xpath_failing_on_a_document_is_a_mapping_error_not_a_crash(
    converter: Converter,
) -> None:
    codes = _codes(converter, b"<ClinicalDocument xmlns='urn:hl7-org:v3'><x>", "cda")
    assert codes == ["intake.xml-syntax"]
