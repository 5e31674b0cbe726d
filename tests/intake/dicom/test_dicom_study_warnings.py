"""A study's warnings come once per (code, tag, message), counted over its instances:
a series whose every slice carries the same control character, or the same
mislabelled charset, gave one warning per instance. Real files written with pydicom."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

from gateway import Converter
from gateway.envelope import Record
from tests.golden.dicom.make_studies import LAX2_CHEST, part10, wang_wei
from tests.intake.dicom._shown import shown

_COUNT = 50


def _series(folder: Path, attrs: Any) -> None:
    """50 instances of 王伟's chest CT in two series; ``attrs(n)`` sets instance n's."""
    for n in range(1, _COUNT + 1):
        with warnings.catch_warnings():  # pydicom's own complaint about the control characters
            warnings.simplefilter("ignore")
            ds = wang_wei(series=1 if n <= 25 else 2, number=n, **attrs(n))
        (folder / f"IM{n:03}.dcm").write_bytes(part10(ds))


def _study(converter: Converter, folder: Path) -> Record:
    [record] = converter.convert_path(folder)
    assert record.control_id == LAX2_CHEST and record.ok, [i.line() for i in record.issues]
    return record


def test_the_same_control_character_in_every_slice_is_one_warning(
    tmp_path: Path, converter: Converter
) -> None:
    _series(tmp_path, lambda n: {"ContentLabel": "LABEL\x01"})
    record = _study(converter, tmp_path)
    [warning] = [w for w in record.warnings if w.code == "intake.control-characters"]
    assert warning.location == "(0070,0080) ContentLabel"
    assert f"(in {_COUNT} of {_COUNT} instances, first in " in warning.message
    assert shown(warning.message, tmp_path).endswith("/IM001.dcm))")
    assert warning.details["instances"] == _COUNT


def test_a_warning_of_some_slices_counts_those(tmp_path: Path, converter: Converter) -> None:
    # Every third slice, from the seventh: the first named is IM007.dcm
    _series(tmp_path, lambda n: {"ContentLabel": "LABEL\x02" if n % 3 == 1 and n > 6 else "A"})
    record = _study(converter, tmp_path)
    [warning] = [w for w in record.warnings if w.code == "intake.control-characters"]
    some = len([n for n in range(7, _COUNT + 1) if n % 3 == 1])
    assert f"(in {some} of {_COUNT} instances, first in " in warning.message
    assert shown(warning.message, tmp_path).endswith("/IM007.dcm))")


def test_two_tags_or_two_problems_stay_apart(tmp_path: Path, converter: Converter) -> None:
    _series(tmp_path, lambda n: {"ContentLabel": "LABEL\x01", "SeriesDescription": "CT\x01"})
    record = _study(converter, tmp_path)
    warnings = [w for w in record.warnings if w.code == "intake.control-characters"]
    assert sorted(w.location or "" for w in warnings) == [
        "(0008,103E) SeriesDescription",
        "(0070,0080) ContentLabel",
    ]
    [label] = [w for w in warnings if w.location == "(0070,0080) ContentLabel"]
    [series] = [w for w in warnings if w.location == "(0008,103E) SeriesDescription"]
    assert f"(in {_COUNT} of {_COUNT} instances, first in " in label.message
    # a series' description is read once a series: counted in series
    assert "(in 2 of 2 series, first in " in series.message
    assert shown(series.message, tmp_path).endswith("/IM001.dcm))")


def test_the_same_mislabelled_charset_in_every_slice_is_one_warning(
    tmp_path: Path, decoding: Converter
) -> None:
    for n in range(1, _COUNT + 1):
        ds = wang_wei(number=n, SpecificCharacterSet="ISO_IR 100", InstitutionName="LAX2",
                      ReferringPhysicianName=None, StudyDescription="CT")  # fmt: skip
        ds.add_new(0x00100010, "PN", "WANG^WEI=王^伟=".encode("gb18030"))
        (tmp_path / f"IM{n:03}.dcm").write_bytes(part10(ds))
    record = _study(decoding, tmp_path)
    [warning] = [w for w in record.warnings if w.code == "intake.charset-mislabelled"]
    assert warning.location == "(0010,0010) PatientName" and "GB18030" in warning.message
    assert f"(in {_COUNT} of {_COUNT} instances, first in " in warning.message
    assert shown(warning.message, tmp_path).endswith("/IM001.dcm))")
