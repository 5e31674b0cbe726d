"""What the DICOM listeners keep of an instance: the header whole, bulk data at every
depth removed unless configured, the sender's bytes untouched when there is none."""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.uid import ExplicitVRLittleEndian, JPEGLosslessSV1

from gateway import Converter, IntakeError
from gateway.listeners.dicom import Origin, prepare_instance
from gateway.store import Store
from tests.golden.dicom.make_studies import part10, wang_wei

from .dicom_support import NSCH_CTA, converted, dicom_settings, intake_for, study_files


def _bulky() -> Dataset:
    ds = wang_wei(Rows=2, Columns=2, BitsAllocated=8)
    ds.PixelData = b"\x01\x02\x03\x04"
    ds["PixelData"].VR = "OB"
    icon = Dataset()
    icon.Rows, icon.Columns = 1, 1
    icon.PixelData = b"\x09\x09"
    icon["PixelData"].VR = "OB"
    ds.IconImageSequence = [icon]
    ds.add_new(0x60003000, "OW", b"\x00\x01")  # OverlayData, group 6000
    ds.add_new(0x60023000, "OW", b"\x00\x01")  # ... and a repeating group 6002
    return ds


def test_bulk_data_is_removed_at_every_depth_and_the_header_kept() -> None:
    instance = prepare_instance(part10(_bulky()))
    kept = dcmread(io.BytesIO(instance.data))
    assert instance.stripped and "PixelData" not in kept
    assert 0x60003000 not in kept and 0x60023000 not in kept
    assert "PixelData" not in kept.IconImageSequence[0] and kept.IconImageSequence[0].Rows == 1
    header = wang_wei(Rows=2, Columns=2, BitsAllocated=8)
    assert all(kept[e.tag] == e for e in header)
    assert (instance.study_uid, instance.series_uid, instance.sop_instance_uid) == (
        header.StudyInstanceUID,
        header.SeriesInstanceUID,
        header.SOPInstanceUID,
    )


def test_bulk_data_is_kept_when_configured_and_bytes_as_sent_when_there_is_none() -> None:
    sent = part10(_bulky())
    assert prepare_instance(sent, keep_pixels=True).data == sent
    plain = part10(wang_wei())
    instance = prepare_instance(plain)
    assert instance.data == plain and not instance.stripped


def test_an_encapsulated_instance_without_its_pixels_is_explicit_vr_little_endian() -> None:
    ds = wang_wei(Rows=2, Columns=2, BitsAllocated=8)
    part10(ds)  # gives it its file meta
    ds.file_meta.TransferSyntaxUID = JPEGLosslessSV1
    ds.PixelData = encapsulate([b"\xff\xd8 a JPEG frame \xff\xd9"])
    ds["PixelData"].VR = "OB"
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    kept = dcmread(io.BytesIO(prepare_instance(out.getvalue()).data))
    assert kept.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian and "PixelData" not in kept
    assert kept.PatientName == ds.PatientName


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (b"MSH|^~\\&|not DICOM", "intake.dicom-not-dicom"),
        (part10(wang_wei(StudyInstanceUID=None)), "intake.dicom-missing-uid"),
        (
            b"\0" * 128 + b"DICM\x02\x00\x10\x00UI\x0a\x00" + b"\xff" * 10,
            "intake.dicom-missing-uid",
        ),
    ],
)
def test_what_cannot_be_understood_is_an_intake_error(data: bytes, code: str) -> None:
    with pytest.raises(IntakeError) as caught:
        prepare_instance(data)
    assert caught.value.code == code
    assert "WANG" not in str(caught.value) and "王" not in str(caught.value)


def test_a_study_taken_but_not_converted_before_a_stop_is_converted_on_resume(
    tmp_path: Path, converter: Converter
) -> None:
    intake = intake_for(dicom_settings(tmp_path), converter)
    files = study_files(NSCH_CTA)
    for _, data in files:
        intake.receive(data, Origin("dicom", "MODALITY1@127.0.0.1:40000"))
    receipt = intake.store.commit_study("2.16.156.10011.99.1.1.3.20260615.17")
    assert receipt is not None  # ... and the process stopped before converting it
    taken = intake.store.get(receipt.id)
    assert taken is not None and taken.state == "received"
    assert intake.resume() == 1
    done = intake.store.get(receipt.id)
    assert done is not None and done.state == "converted"
    assert done.outcomes[-1].output == converted(converter, files)
    assert intake.resume() == 0
    intake.store.close()


@pytest.mark.parametrize("keyword", ["StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"])
def test_a_uid_holding_nul_inside_is_refused_naming_its_tag(
    tmp_path: Path, converter: Converter, store: Store, keyword: str
) -> None:
    """NUL padding ends a UID (stripped); one inside it is no UID character. On
    PostgreSQL, whose text holds no NUL, storing the instance failed: the sender was
    told to retry (out of resources), for ever. Refused as not understood."""
    ds = dcmread(io.BytesIO(study_files(NSCH_CTA)[0][1]))
    out = io.BytesIO()
    with warnings.catch_warnings():  # pydicom warns of the invalid UI value it is given
        warnings.simplefilter("ignore")
        setattr(ds, keyword, getattr(ds, keyword) + "\0" + "1")
        ds.save_as(out, enforce_file_format=True)
    intake = intake_for(dicom_settings(tmp_path), converter, store)
    with pytest.raises(IntakeError) as caught:
        intake.receive(out.getvalue(), Origin("dicom", "MODALITY1@127.0.0.1:40000"))
    assert caught.value.code == "intake.control-characters"
    assert keyword in (caught.value.location or "") and "U+0000" in str(caught.value)
    assert store.count() == 0


@pytest.mark.parametrize(
    ("keyword", "tail", "problem"),
    [
        ("StudyInstanceUID", ".ABC", "a character other than the digits"),
        ("SeriesInstanceUID", "\x01.4", "a character other than the digits"),
        ("SOPInstanceUID", "..4", "an empty component"),
        ("SOPInstanceUID", "." + "9" * 64, "at most 64"),
    ],
)
def test_a_value_that_is_no_dicom_uid_is_refused_before_it_is_stored(
    tmp_path: Path, converter: Converter, store: Store, keyword: str, tail: str, problem: str
) -> None:
    """The study's conversion would refuse it (a control character dropped from the
    FHIR output names another UID): the sender hears it now, nothing is kept."""
    ds = dcmread(io.BytesIO(study_files(NSCH_CTA)[0][1]))
    out = io.BytesIO()
    with warnings.catch_warnings():  # pydicom warns of the invalid UI value it is given
        warnings.simplefilter("ignore")
        setattr(ds, keyword, getattr(ds, keyword) + tail)
        ds.save_as(out, enforce_file_format=True)
    intake = intake_for(dicom_settings(tmp_path), converter, store)
    with pytest.raises(IntakeError) as caught:
        intake.receive(out.getvalue(), Origin("dicom", "MODALITY1@127.0.0.1:40000"))
    assert caught.value.code == "intake.dicom-bad-value"
    assert keyword in (caught.value.location or "") and problem in str(caught.value)
    assert store.count() == 0


@pytest.mark.parametrize("tail", [b"\n", b"\x1f", b"\xa0"])
def test_a_uid_is_refused_as_sent_not_as_pydicom_strips_it(
    tmp_path: Path, converter: Converter, store: Store, tail: bytes
) -> None:
    """pydicom's UID strips every whitespace at both ends: 1.2.3\\x1f was stored as
    1.2.3 (the sender heard success) and the study's conversion then refused it."""
    ds = dcmread(io.BytesIO(study_files(NSCH_CTA)[0][1]))
    real = str(ds.SOPInstanceUID)
    placeholder = real + "7" * len(tail)
    ds.SOPInstanceUID = placeholder
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    data = out.getvalue().replace(placeholder.encode(), real.encode() + tail)
    intake = intake_for(dicom_settings(tmp_path), converter, store)
    with pytest.raises(IntakeError) as caught:
        intake.receive(data, Origin("dicom", "MODALITY1@127.0.0.1:40000"))
    assert caught.value.code == "intake.dicom-bad-value"
    assert "SOPInstanceUID" in (caught.value.location or "")
    assert store.count() == 0
