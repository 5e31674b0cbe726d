"""Every DICOM sample of the public corpus (../shared/corpus/dicom/) converts, or fails
with the specific reason pinned here. The samples are not copied into the repository.

Most pydicom samples are anonymous test objects: no InstitutionName and no issuer of
their PatientID, so nobody says whose number the PatientID is, and a Patient cannot be
given an identifier system (ImagingStudy.subject is required): the same rule as an HL7
v2 message whose sender is unknown. The error says so and asks for the sender
(intake.dicom-no-sender); a study with no PatientID at all fails in the mapping.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from gateway import Converter
from gateway.intake.dicom import read_studies

NO_ISSUER = ("error", "mapping.no-identity", "(0010,0020) PatientID")
# a PatientID, but no sender and no issuer: the error asks for --sender / ?sender=
NO_SENDER = ("error", "intake.dicom-no-sender", "(0008,0080) InstitutionName")
NO_STUDY = ("error", "intake.dicom-missing-uid", "(0020,000D) StudyInstanceUID")

# file → ("ok", modality, series, instances, patient identifier system) or ("error", code, location)
CORPUS: dict[str, tuple[Any, ...]] = {
    "images/CT_small.dcm": (
        "ok",
        "CT",
        1,
        1,
        "https://unregistered.invalid/facility/JFK%20IMAGING%20CENTER/sid/mrn",
    ),
    "images/MR_small.dcm": (
        "ok",
        "MR",
        1,
        1,
        "https://unregistered.invalid/facility/TOSHIBA/sid/mrn",
    ),
    "images/CR_77654033_CR1_6154.dcm": NO_SENDER,
    "images/test-SR.dcm": NO_ISSUER,  # and no PatientID at all
    "json/pydicom_test1.json": (
        "ok",
        "MR",
        1,
        1,
        "https://unregistered.invalid/facility/Brigham%20and%20Womens%20Hospital/sid/mrn",
    ),
    # A dataset of PN values only; a STOW-RS response (Retrieve URL, Referenced SOP
    # Sequence): neither is an instance of a study.
    "json/pydicom_test_PN.json": NO_STUDY,
    "json/dcm4che_stowrs_response.json": NO_STUDY,
    # Minimal datasets exercising charsets in sequence items: no study either.
    "charset/chrSQEncoding.dcm": NO_STUDY,
    "charset/chrSQEncoding1.dcm": NO_STUDY,
}
CHARSET_FILES = [
    "chrArab", "chrFren", "chrFrenMulti", "chrGerm", "chrGreek", "chrH31", "chrH32",
    "chrHbrw", "chrI2", "chrJapMulti", "chrJapMultiExplicitIR6", "chrKoreanMulti",
    "chrRuss", "chrX1", "chrX2",
]  # fmt: skip
CORPUS |= {f"charset/{name}.dcm": NO_SENDER for name in CHARSET_FILES}

# Patient names as pydicom's charset_files/FileInfo.txt gives them, read through the view.
NAMES = {
    "chrX1.dcm": ("ISO_IR 192", "Wang^XiaoDong", "王^小東"),
    "chrX2.dcm": ("GB18030", "Wang^XiaoDong", "王^小东"),
    "chrH31.dcm": ("\\ISO 2022 IR 87", "Yamada^Tarou", "山田^太郎"),
    "chrI2.dcm": ("\\ISO 2022 IR 149", "Hong^Gildong", "洪^吉洞"),
    "chrFren.dcm": ("ISO_IR 100", "Buc^Jérôme", None),
    "chrRuss.dcm": ("ISO_IR 144", "Люкceмбypг", None),
}


def test_the_table_covers_every_corpus_sample(corpus: Path) -> None:
    found = {
        str(p.relative_to(corpus / "dicom"))
        for p in (corpus / "dicom").rglob("*")
        if p.suffix in (".dcm", ".json")
    }
    assert found == set(CORPUS)


@pytest.mark.parametrize("name", sorted(CORPUS))
def test_corpus_sample(corpus: Path, converter: Converter, name: str) -> None:
    path = corpus / "dicom" / name
    [record] = converter.convert(path.read_bytes(), source=path.name)
    expected = CORPUS[name]
    if expected[0] == "error":
        assert not record.ok
        assert [(e.code, e.location) for e in record.errors] == [expected[1:]]
        return
    assert record.ok, [i.line() for i in record.errors]
    assert record.bundle is not None
    kinds = {e["resource"]["resourceType"]: e["resource"] for e in record.bundle["entry"]}
    study, patient = kinds["ImagingStudy"], kinds["Patient"]
    _, modality, series, instances, system = expected
    assert [m["code"] for m in study["modality"]] == [modality]
    assert (study["numberOfSeries"], study["numberOfInstances"]) == (series, instances)
    assert patient["identifier"][0]["system"] == system
    assert "Organization" not in kinds  # not institutions of the network


@pytest.mark.parametrize("name", sorted(NAMES))
def test_specific_character_set_is_honoured(corpus: Path, converter: Converter, name: str) -> None:
    data = (corpus / "dicom" / "charset" / name).read_bytes()
    [unit] = read_studies([(name, data)], converter.network)
    charset, alphabetic, ideographic = NAMES[name]
    assert unit.charset == charset and not unit.issues
    view = unit.view
    assert view.first("PatientName.Alphabetic", view.root) == alphabetic
    assert view.first("PatientName.Ideographic", view.root) == ideographic
