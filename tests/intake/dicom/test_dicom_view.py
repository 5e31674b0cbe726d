"""The DICOM path grammar (docs/mapping-dicom.md) and the study tree the view offers."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.multival import MultiValue

from gateway import Converter
from gateway.errors import ConfigError
from gateway.intake.dicom import DicomView, check_path, read_studies
from gateway.intake.dicom._view import _element
from gateway.mapping._functions import translate
from tests.golden.dicom.make_studies import issuer, part10, wang_wei

REPO = Path(__file__).resolve().parents[3]
MAPPINGS = REPO / "mappings"
PROFILES = REPO / "profiles"
BODY_PART_SYSTEM = "https://fhir-gateway.example.org/CodeSystem/dicom-body-part-examined"


@pytest.fixture(scope="module")
def view(converter: Converter) -> DicomView:
    items = [
        ("a.dcm", part10(wang_wei(series=2, number=2, ImageType=["ORIGINAL", "PRIMARY"]))),
        ("b.dcm", part10(wang_wei(series=2, number=1, Modality="CT"))),
        ("c.dcm", part10(wang_wei(series=1, number=1, Modality="DX", Laterality="L"))),
    ]
    [unit] = read_studies(items, converter.network)
    assert isinstance(unit.view, DicomView)
    return unit.view


@pytest.mark.parametrize(
    "path",
    [
        "PatientName",
        "(0010,0010)",
        "/StudyInstanceUID",
        "PatientName.Ideographic.family",
        "ReferringPhysicianName.given",
        "IssuerOfAccessionNumberSequence.LocalNamespaceEntityID@facility",
        "IssuerOfAccessionNumberSequence[2].UniversalEntityID",
        "ImageType[*]",
        "ImageType[2]",
        "series",
        "/instances",
        ".",
        ".Ideographic.given",
        "@sender",
        "@instance-count",
        "StudyDate+StudyTime+TimezoneOffsetFromUTC",
        "(0009,1001)",  # a private tag: no dictionary entry to check against
    ],
)
def test_valid_paths(path: str) -> None:
    check_path(path)


@pytest.mark.parametrize(
    ("path", "named"),
    [
        ("PatientNmae", "PatientNmae"),
        ("PatientName.Kanji", "Kanji"),
        ("Modality.CodeValue", "(0008,0060) Modality"),
        ("(0010,001G)", "(0010,001G)"),
        ("ImageType[0]", "ImageType[0]"),
        ("series+StudyTime", "'+'"),
        ("/.", "root"),
    ],
)
def test_a_bad_path_is_a_config_error_naming_it(path: str, named: str) -> None:
    with pytest.raises(ConfigError) as caught:
        check_path(path)
    assert named in caught.value.issue.message


def test_tree_levels_and_order(view: DicomView) -> None:
    series = view.select("series", view.root)
    assert [s.label for s in series] == ["series[1]", "series[2]"]
    assert [view.first("InstanceNumber", i) for i in view.select("instances", series[1])] == [
        "1",
        "2",
    ]
    assert view.first("@series-count", view.root) == "2"
    assert view.first("@instance-count", view.root) == "3"
    assert view.first("@instance-count", series[1]) == "2"
    assert len(view.select("instances", view.root)) == 3


def test_study_level_values_and_every_instance(view: DicomView) -> None:
    assert view.first("Modality", view.root) == "DX"  # the first series' instance
    assert [v for v, _ in view.values("Modality[*]", view.root)] == ["DX", "CT"]
    assert view.values("Laterality", view.root) == [("L", "(0020,0060) Laterality")]
    series2 = view.select("series", view.root)[1]
    assert view.first("ImageType[2]", series2) == "PRIMARY"
    assert [n.value for n in view.select("ImageType", series2)] == ["ORIGINAL", "PRIMARY"]


def test_person_names_sequences_and_facts(view: DicomView) -> None:
    root = view.root
    assert view.first("PatientName", root) == "WANG^WEI=王^伟"  # as pydicom gives it
    assert view.first("PatientName.Ideographic", root) == "王^伟"
    assert view.first("PatientName.Ideographic.given", root) == "伟"
    assert view.first("PatientName.family", root) == "WANG"
    assert view.first("PatientName.Phonetic", root) is None
    [name] = view.select("ReferringPhysicianName", root)
    assert view.first(".Ideographic.family", name) == "张"
    assert view.first("IssuerOfAccessionNumberSequence.LocalNamespaceEntityID", root) == "LAX2"
    assert view.first("InstitutionName@facility", root) == "LAX2"
    assert view.first("@sender", root) == "LAX2"
    assert view.first("StudyDate+StudyTime+TimezoneOffsetFromUTC", root) == "20260610091500+0800"


def test_labels_name_tag_keyword_and_level(view: DicomView) -> None:
    series2 = view.select("series", view.root)[1]
    instance = view.select("instances", series2)[0]
    assert view.label("PatientName", view.root) == "(0010,0010) PatientName"
    assert view.label("SeriesNumber", series2) == "series[2] (0020,0011) SeriesNumber"
    assert view.label("/StudyDate", instance) == "(0008,0020) StudyDate"
    assert (
        view.label("IssuerOfAccessionNumberSequence.LocalNamespaceEntityID", instance)
        == "series[2]/instance[1] (0008,0051) IssuerOfAccessionNumberSequence"
        " > (0040,0031) LocalNamespaceEntityID"
    )
    [(_, where)] = view.values("IssuerOfAccessionNumberSequence.LocalNamespaceEntityID", view.root)
    assert where.endswith("IssuerOfAccessionNumberSequence[1] > (0040,0031) LocalNamespaceEntityID")


def test_unmapped_lists_attributes_nothing_read(converter: Converter) -> None:
    ds = wang_wei(Manufacturer="DEMO", IssuerOfAccessionNumberSequence=issuer("LAX2"))
    [record] = converter.convert(part10(ds), source="a.dcm", trace=True)
    assert record.unmapped == ["(0008,0070) Manufacturer", "(0020,0010) StudyID"]


def test_body_part_comes_from_the_concept_map_with_chinese_displays(converter: Converter) -> None:
    """bodySite is the ConceptMap's target, with the zh displays of the published SNOMED CT
    supplement (profiles/)."""
    zh = json.loads((PROFILES / "CodeSystem-snomed-zh-supplement.json").read_text())
    designations = {
        c["code"]: {d["language"]: d["value"] for d in c["designation"]} for c in zh["concept"]
    }
    coding = translate(converter.env, system=BODY_PART_SYSTEM, code="HEAD")
    assert coding is not None
    assert (coding["system"], coding["code"], coding["display"]) == (
        "http://snomed.info/sct",
        "69536005",
        "Head",
    )
    shown = {
        t["extension"][0]["valueCode"]: t["extension"][1]["valueString"]
        for t in coding["_display"]["extension"]
    }
    assert shown == designations["69536005"]
    assert translate(converter.env, system=BODY_PART_SYSTEM, code="NOT-A-TERM") is None


def _ascii_elements(ds: Any) -> Iterator[tuple[Any, int]]:
    for tag in list(ds.keys()):
        raw = ds.get_item(tag)
        if raw.VR in ("UI", "CS", "DA", "TM", "DT", "AS"):
            yield ds, tag
        elif raw.VR == "SQ":
            for item in ds[tag].value:
                yield from _ascii_elements(item)


def test_ascii_fast_path_reads_what_pydicom_reads(corpus: Path) -> None:
    """UIDs, codes, dates and times are read from their bytes without pydicom's
    conversion (for speed); on every sample file they come out as pydicom reads them."""
    files = sorted((corpus / "dicom").rglob("*.dcm")) + sorted(
        REPO.glob("examples/imaging/*/*/*.dcm")
    )
    compared = 0
    for path in files:
        ds = pydicom.dcmread(path, stop_before_pixels=True, force=True)
        for owner, tag in list(_ascii_elements(ds)):
            fast = _element(owner, tag, "label")
            slow = owner[tag].value  # pydicom's own conversion (caches the element)
            assert fast is not None
            if isinstance(slow, MultiValue):
                assert list(fast.value) == list(slow)
            else:
                assert str(fast.value) == str(slow), (path.name, hex(tag))
            compared += 1
    assert compared > 500
