"""Reading DICOM leaves no process-wide setting changed (issue 19): pydicom's value
validation mode and the garbage collector are as they were after a study is read, a
study fails, reading raises, and while a half-consumed generator is suspended."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest
from pydicom import config

from gateway import Converter
from gateway.intake.dicom import _reader, read_studies
from tests.golden.dicom.make_studies import NSCH_KNEE, instance, part10, wang_wei


def _state() -> tuple[int | None, bool]:
    return config.settings._reading_validation_mode, gc.isenabled()


@pytest.fixture(params=[(None, True), (config.WARN, False), (config.RAISE, True)])
def before(request: pytest.FixtureRequest) -> Iterator[tuple[int | None, bool]]:
    """A process state (pydicom's mode as set, or never set; gc on or off) to keep."""
    mode, collecting = request.param
    saved = _state()
    config.settings._reading_validation_mode = mode
    (gc.enable if collecting else gc.disable)()
    try:
        yield mode, collecting
    finally:
        config.settings._reading_validation_mode = saved[0]
        (gc.enable if saved[1] else gc.disable)()


def _two_studies() -> list[tuple[str, bytes]]:
    knee = instance(NSCH_KNEE, 1, 1, PatientID="0098765", InstitutionName="南沙中心医院",
                    SpecificCharacterSet="ISO_IR 192")  # fmt: skip
    return [("a/IM1.dcm", part10(wang_wei())), ("b/IM1.dcm", part10(knee))]


def test_reading_and_mapping_a_study_restore_the_settings(
    converter: Converter, before: tuple[int | None, bool]
) -> None:
    records = list(converter.convert_files(_two_studies()))
    assert all(r.ok for r in records)
    assert _state() == before


def test_a_failing_study_restores_the_settings(
    converter: Converter, before: tuple[int | None, bool]
) -> None:
    cut = part10(wang_wei())[:-54]
    [record] = converter.convert_files([("IM1.dcm", cut)])
    assert not record.ok
    assert _state() == before


def test_an_exception_while_reading_restores_the_settings(
    converter: Converter, before: tuple[int | None, bool], monkeypatch: pytest.MonkeyPatch
) -> None:
    def boom(*args: object) -> None:
        assert _state()[0] == config.IGNORE  # inside the scope: quiet
        raise RuntimeError("boom")

    monkeypatch.setattr(_reader, "_place", boom)
    with pytest.raises(RuntimeError):
        list(read_studies(_two_studies(), converter.network))
    assert _state() == before


def test_a_suspended_generator_holds_no_setting(
    converter: Converter, before: tuple[int | None, bool]
) -> None:
    units = read_studies(_two_studies(), converter.network)
    first = next(units)
    assert first.error is None
    assert _state() == before  # the caller runs with the process as it was
    converter.finish(first)  # mapping reads values lazily: still nothing left changed
    assert _state() == before
    units.close()  # abandoned half way
    assert _state() == before
