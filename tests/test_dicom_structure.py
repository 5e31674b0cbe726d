"""ImagingStudy counts, UIDs and series/instance structure match the DICOM input exactly:
each study is read again with pydicom alone and compared with what the gateway made."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pydicom
import pytest

from gateway import Converter
from tests.golden.regenerate import convert

REPO = Path(__file__).resolve().parents[1]
STUDIES = sorted((REPO / "tests" / "golden" / "dicom").glob("*.study"))
STUDIES += sorted((REPO / "examples" / "imaging").glob("*.study"))
STUDIES += sorted((REPO / "tests" / "golden" / "dicom").glob("*.json"))
STUDIES = [p for p in STUDIES if not p.name.endswith(".expected.json")]


def _pydicom_view(source: Path) -> list[pydicom.Dataset]:
    """Every instance as pydicom alone reads it."""
    if source.is_dir():
        return [
            pydicom.dcmread(p, stop_before_pixels=True)
            for p in sorted(source.rglob("*"))
            if p.is_file()
        ]
    return [pydicom.Dataset.from_json(obj) for obj in orjson.loads(source.read_bytes())]


def _expected(datasets: list[pydicom.Dataset]) -> dict[str, Any]:
    series: dict[str, list[pydicom.Dataset]] = {}
    for ds in datasets:
        series.setdefault(ds.SeriesInstanceUID, []).append(ds)
    ordered = sorted(series.items(), key=lambda kv: (int(kv[1][0].SeriesNumber), kv[0]))
    return {
        "numberOfSeries": len(series),
        "numberOfInstances": len({ds.SOPInstanceUID for ds in datasets}),
        "series": [
            {
                "uid": uid,
                "number": int(members[0].SeriesNumber),
                "modality": members[0].Modality,
                "numberOfInstances": len(members),
                "instance": [
                    (ds.SOPInstanceUID, f"urn:oid:{ds.SOPClassUID}", int(ds.InstanceNumber))
                    for ds in sorted(members, key=lambda d: int(d.InstanceNumber))
                ],
            }
            for uid, members in ordered
        ],
    }


def _actual(study: dict[str, Any]) -> dict[str, Any]:
    return {
        "numberOfSeries": study["numberOfSeries"],
        "numberOfInstances": study["numberOfInstances"],
        "series": [
            {
                "uid": s["uid"],
                "number": s["number"],
                "modality": s["modality"]["code"],
                "numberOfInstances": s["numberOfInstances"],
                "instance": [(i["uid"], i["sopClass"]["code"], i["number"]) for i in s["instance"]],
            }
            for s in study["series"]
        ],
    }


@pytest.mark.parametrize("source", STUDIES, ids=lambda p: p.name)
def test_imaging_study_matches_pydicom(source: Path, converter: Converter) -> None:
    [record] = convert(converter, source)
    assert record.ok, [i.line() for i in record.errors]
    assert record.bundle is not None
    [study] = [
        e["resource"]
        for e in record.bundle["entry"]
        if e["resource"]["resourceType"] == "ImagingStudy"
    ]
    datasets = _pydicom_view(source)
    assert _actual(study) == _expected(datasets)
    assert study["identifier"][0]["value"] == f"urn:oid:{datasets[0].StudyInstanceUID}"
    assert sum(s["numberOfInstances"] for s in study["series"]) == study["numberOfInstances"]
