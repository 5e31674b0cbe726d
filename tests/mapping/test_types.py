"""Value conversions (``as:``): impossible dates and bad base64 are errors at the field."""

from __future__ import annotations

import base64

import pytest

from gateway.errors import MappingError
from gateway.mapping._types import convert


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("19571345", "month"),
        ("195713", "month"),
        ("19570230", "day"),
        ("19570931", "day"),
        ("19570229", "day"),  # 1957 is not a leap year
        ("00000101", "year"),
        ("2026061224", "hour"),
        ("202606122360", "minute"),
        ("20260612235961", "second"),
        ("20260612101010+1500", "zone"),
        ("20260612101010+1060", "zone"),
    ],
)
@pytest.mark.parametrize("kind", ["date", "dateTime", "instant"])
def test_impossible_dates_are_errors_at_the_field(kind: str, value: str, problem: str) -> None:
    with pytest.raises(MappingError) as exc:
        convert(kind, value, "PID-7", "+08:00")
    assert (exc.value.code, exc.value.location) == ("mapping.bad-datetime", "PID-7")
    assert problem in str(exc.value)
    assert value not in str(exc.value)  # its form only


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("19560229", "1956-02-29"),
        ("20000229", "2000-02-29"),
        ("1957", "1957"),
        ("195709", "1957-09"),
        ("20260612235960+0800", "2026-06-12T23:59:60+08:00"),  # a leap second
        ("20260612101010-1300", "2026-06-12T10:10:10-13:00"),
        ("20260612101010+1400", "2026-06-12T10:10:10+14:00"),
    ],
)
def test_possible_dates_convert(value: str, expected: str) -> None:
    assert convert("dateTime", value, "PID-7", "+08:00") == expected


def test_base64_binary_is_checked_and_kept() -> None:
    data = base64.b64encode(b"%PDF-1.4 report").decode()
    assert convert("base64Binary", data, "OBX-5.5", "+08:00") == data
    # Line breaks inside base64 are skipped, as the FHIR validator does.
    wrapped = data[:8] + "\n" + data[8:]
    assert convert("base64Binary", wrapped, "OBX-5.5", "+08:00") == wrapped
    for bad in (data[:-3], data + "A", "报告"):
        with pytest.raises(MappingError) as exc:
            convert("base64Binary", bad, "OBX-5.5", "+08:00")
        assert (exc.value.code, exc.value.location) == ("mapping.bad-base64", "OBX-5.5")
        assert "报告" not in str(exc.value)


def _dtm_values() -> list[str]:
    """Every prefix length of a DTM, with each part at and around its limits."""
    out: list[str] = []
    zones = ["", "+0000", "-0059", "+0060", "+1359", "+1360", "+1400", "-1400", "+1401", "+1500"]
    for year in ("0000", "0001", "2024", "9999"):
        for zone in zones:
            out.append(year + zone)
            for month in ("00", "01", "02", "12", "13"):
                out.append(year + month + zone)
                for day in ("00", "01", "28", "29", "30", "31", "32"):
                    out.append(year + month + day + zone)
                    for hour in ("00", "23", "24"):
                        out.append(year + month + day + hour + zone)
                        for minute in ("00", "59", "60"):
                            out.append(year + month + day + hour + minute + zone)
                            for second in ("00", "59", "60", "61"):
                                for frac in ("", ".5", ".1234"):
                                    out.append(
                                        year + month + day + hour + minute + second + frac + zone
                                    )
    return out


def test_the_fast_date_path_accepts_only_what_the_full_check_accepts() -> None:
    # _SURE_DTM skips _out_of_range: it must match no value that check refuses, and
    # give the same parts as _DTM for the values it matches
    from gateway.mapping._types import _DTM, _SURE_DTM, _out_of_range

    fast = 0
    for value in _dtm_values():
        sure = _SURE_DTM.match(value)
        if sure is None:
            continue
        full = _DTM.match(value)
        assert full is not None and _out_of_range(full) is None, value
        assert sure.groups() == full.groups(), value
        fast += 1
    assert fast > 3_000  # the well-formed values within every limit take it
