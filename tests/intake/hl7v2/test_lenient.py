"""Lenient intake: a malformed value in a field mappings/hl7v2/strict.yaml lists as
lenient is dropped with a warning naming the field (the record converts); in any other
field (identifiers, required elements) it fails the record as before."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

from gateway import ConfigError, Converter, Settings
from gateway.datafiles import data_dir, load_data_file
from gateway.envelope import Record

REPO = Path(__file__).resolve().parents[3]
REFERRAL = (REPO / "examples" / "hl7v2" / "ref_i12_nsch_to_hkpmc.hl7").read_bytes()
ORDER = (REPO / "examples" / "hl7v2" / "orm_o01_lax2_ct.hl7").read_bytes()
# RF1|status|priority|type|disposition|category|RF1-6 id|RF1-7|RF1-8|RF1-9 process date|...
RF1_DATES = b"|20260618|20260818|20260618|"


def _one(converter: Converter, data: bytes) -> Record:
    records = converter.convert(data, "test.hl7")
    assert len(records) == 1
    return records[0]


def _entries(record: Record, rtype: str) -> list[dict[str, Any]]:
    assert record.bundle is not None
    return [e["resource"] for e in record.bundle["entry"] if e["resource"]["resourceType"] == rtype]


def _dropped(record: Record) -> list[str]:
    return [i.location or "" for i in record.issues if i.code == "mapping.value-dropped"]


def test_a_malformed_rf1_9_is_dropped_with_a_warning_naming_it(converter: Converter) -> None:
    data = REFERRAL.replace(RF1_DATES, b"|20260618|20260818|20261345|")
    record = _one(converter, data)
    assert record.ok, [i.line() for i in record.issues]
    assert _dropped(record) == ["RF1-9"]
    warning = next(i for i in record.issues if i.code == "mapping.value-dropped")
    assert warning.severity == "warning" and "month" in warning.message
    assert "'99999999'" in warning.message  # the value's form, never the value
    assert "20261345" not in warning.line()
    # The dropped process date reads as absent: authoredOn falls back to RF1-7.
    (referral,) = _entries(record, "ServiceRequest")
    assert referral["authoredOn"] == "2026-06-18"
    fhir = warning.to_fhir()
    assert fhir["location"] == ["RF1-9"] and "expression" not in fhir


def test_a_lenient_field_dropped_everywhere_is_named_once(converter: Converter) -> None:
    # RF1-7 gives occurrencePeriod.start and is authoredOn's fallback after RF1-9
    data = REFERRAL.replace(RF1_DATES, b"|2026-06-18|20260818|BAD|")
    record = _one(converter, data)
    assert record.ok, [i.line() for i in record.issues]
    assert sorted(_dropped(record)) == ["RF1-7", "RF1-9"]
    (referral,) = _entries(record, "ServiceRequest")
    assert referral["authoredOn"].startswith("2026-06-18T14:30:00")  # MSH-7
    assert "start" not in referral["occurrencePeriod"]


def test_every_record_of_a_feed_gets_its_warning(converter: Converter) -> None:
    """Condition (DG1) is memoised across records: a remembered result must not hide
    the warning of the records after the first two."""
    bad = REFERRAL.replace(b"||20260616|F\r", b"||2026061X|F\r")
    assert bad != REFERRAL
    records = []
    for n in range(4):
        data = bad.replace(b"NSCH20260618143000017", f"NSCH2026061814300001{n}X".encode())
        records.append(_one(converter, data))
    for record in records:
        assert record.ok, [i.line() for i in record.issues]
        assert _dropped(record) == ["DG1(1)-5"]
        conditions = _entries(record, "Condition")
        assert ["recordedDate" in c for c in conditions] == [False, True]


def test_a_malformed_identifier_still_fails_the_record(converter: Converter) -> None:
    # PID-3.7 (identifier effective date) is part of an identifying field: strict
    data = REFERRAL.replace(b"0098765^^^NSCH^MR~", b"0098765^^^NSCH^MR^^2026BAD~")
    record = _one(converter, data)
    assert not record.ok
    assert [(e.code, e.location) for e in record.errors] == [("mapping.bad-datetime", "PID-3.7")]
    assert not _dropped(record) and record.bundle_json is None


def test_a_malformed_birth_date_still_fails_the_record(converter: Converter) -> None:
    record = _one(converter, REFERRAL.replace(b"||19570903|M|", b"||19571303|M|"))
    assert [(e.code, e.location) for e in record.errors] == [("mapping.bad-datetime", "PID-7")]


def test_a_malformed_orc_2_still_fails_the_order(converter: Converter) -> None:
    data = ORDER.replace(b"ORC|NW|PLC0001^LAX2|", b"ORC|NW|\\X00\\^LAX2|")
    record = _one(converter, data)
    assert not record.ok and record.bundle_json is None
    assert [(e.code, e.location) for e in record.errors] == [
        ("intake.control-characters", "ORC(1)-2.1")
    ]


def test_a_malformed_orc_9_drops_to_the_message_time(converter: Converter) -> None:
    first_orc = b"|SC||||20260610083000+0800|||D1001"
    assert first_orc in ORDER
    record = _one(converter, ORDER.replace(first_orc, b"|SC||||202606100830XX|||D1001", 1))
    assert record.ok, [i.line() for i in record.issues]
    assert _dropped(record) == ["ORC(1)-9"]


def test_the_same_value_in_a_strict_field_fails(converter: Converter) -> None:
    # OBR-27.4 (quantity/timing start → occurrence) is not listed: strict by default
    timing = b"1^ONCE^^20260610091500+0800^"
    assert timing in ORDER
    record = _one(converter, ORDER.replace(timing, b"1^ONCE^^202606100915XX^"))
    assert [(e.code, e.location) for e in record.errors] == [
        ("mapping.bad-datetime", "OBR(2)-27.4")
    ]
    assert not _dropped(record)


def test_a_listing_is_checked_when_the_gateway_starts(tmp_path: Path) -> None:
    root = tmp_path / "mappings"
    shutil.copytree(data_dir("mappings"), root)
    strict = root / "hl7v2" / "strict.yaml"
    settings = Settings.load(home=tmp_path / "home", env={"GATEWAY_MAPPINGS": str(root)})
    strict.write_text("lenient:\n  REF^I12: RF1-9\n", "utf-8")
    with pytest.raises(ConfigError, match=r"lenient.REF\^I12: needs a list of fields"):
        Converter(settings)
    # a type no mapping handles (switched off, misspelt) leaves every field strict
    strict.write_text("lenient:\n  REF^I99: [RF1-9]\n", "utf-8")
    load_data_file.cache_clear()  # data files are read once per process
    data = REFERRAL.replace(RF1_DATES, b"|20260618|20260818|20261345|")
    record = _one(Converter(settings), data)
    assert [(e.code, e.location) for e in record.errors] == [("mapping.bad-datetime", "RF1-9")]


def test_without_a_listing_every_field_is_strict(tmp_path: Path) -> None:
    root = tmp_path / "mappings"
    shutil.copytree(data_dir("mappings"), root)
    (root / "hl7v2" / "strict.yaml").unlink()
    settings = Settings.load(home=tmp_path / "home", env={"GATEWAY_MAPPINGS": str(root)})
    data = REFERRAL.replace(RF1_DATES, b"|20260618|20260818|20261345|")
    record = _one(Converter(settings), data)
    assert [(e.code, e.location) for e in record.errors] == [("mapping.bad-datetime", "RF1-9")]
