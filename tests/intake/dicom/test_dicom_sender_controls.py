"""(0008,0080) InstitutionName finds the study's sender, and a PatientID sent without
its own issuer is a medical record number of that sender. A value of only control
characters, read as absent, handed the sender to the accession number's issuer (the
hospital that ordered, perhaps not the one whose MRN this is) or to the channel's
default; removed from a code, ``NJ<0x1F>MU2`` named NJMU2. Either way 王伟's LAX2 number
0012345 was read as another hospital's MRN. The study fails instead (identifying,
mappings/identity-fields.yaml). Real files written with pydicom."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import pytest
from pydicom import Dataset

from gateway import Converter
from gateway.envelope import Record
from tests.golden.dicom.make_studies import issuer, part10, wang_wei


def _study(folder: Path, converter: Converter, institution: str) -> Record:
    # No issuer of its own: 0012345 is the sender's number. The order came from NJMU2,
    # which issued the accession number.
    attrs: dict[str, Any] = {
        "IssuerOfPatientID": None,
        "InstitutionName": institution,
        "IssuerOfAccessionNumberSequence": issuer("NJMU2"),
    }
    for n in (1, 2):
        with warnings.catch_warnings():  # pydicom's own complaint about the control characters
            warnings.simplefilter("ignore")
            ds = wang_wei(number=n, **attrs)
        (folder / f"IM{n}.dcm").write_bytes(part10(ds))
    [record] = converter.convert_path(folder)
    return record


def test_the_institution_names_the_sender_whose_mrn_it_is(
    tmp_path: Path, converter: Converter
) -> None:
    record = _study(tmp_path, converter, "LAX2")
    assert record.ok and record.bundle is not None, [i.line() for i in record.issues]
    [patient] = [
        e["resource"] for e in record.bundle["entry"] if e["resource"]["resourceType"] == "Patient"
    ]
    [mrn] = patient["identifier"]
    assert "lax2" in mrn["system"].lower() and mrn["value"] == "0012345"


@pytest.mark.parametrize("institution", ["\x01\x02", "LA\x1fX2", "NJ\x1fMU2"])
def test_a_control_character_in_the_institution_fails_the_study(
    tmp_path: Path, converter: Converter, institution: str
) -> None:
    record = _study(tmp_path, converter, institution)
    assert record.bundle is None
    [error] = record.errors
    assert error.code == "intake.control-characters"
    assert error.location is not None and error.location.endswith("(0008,0080) InstitutionName")
    assert "identifying field" in error.message


@pytest.mark.parametrize("kind", ["\x01", "IS\x1fO"])
def test_a_control_character_in_the_issuers_oid_type_fails_the_study(
    tmp_path: Path, converter: Converter, kind: str
) -> None:
    # The issuer's OID names whose MRN it is only with its type ISO: the type read as
    # absent, 0012345 left urn:oid:2.16.156.10011.1.5 for another system (a patient no
    # partner holds), the study accepted with a warning.
    qualifier = Dataset()
    qualifier.UniversalEntityID = "2.16.156.10011.1.5"
    with warnings.catch_warnings():  # pydicom's own complaint about the control characters
        warnings.simplefilter("ignore")
        qualifier.UniversalEntityIDType = kind
        ds = wang_wei(IssuerOfPatientID=None, IssuerOfPatientIDQualifiersSequence=[qualifier])
    (tmp_path / "IM1.dcm").write_bytes(part10(ds))
    [record] = converter.convert_path(tmp_path)
    assert record.bundle is None
    [error] = record.errors
    assert error.code == "intake.control-characters"
    assert (error.location or "").endswith("UniversalEntityIDType"), error.location


def test_an_ideographic_space_after_the_institution_name_is_trimmed(
    tmp_path: Path, converter: Converter
) -> None:
    # InstitutionName is looked up by name, not compared as a key: a full-width space
    # padding it (as some Chinese devices send) names no other sender. Only identifiers
    # compared as sent keep such a space (and fail: test_dicom_patient_identity.py).
    record = _study(tmp_path, converter, "来安县第二人民医院\u3000")
    assert record.ok, [i.line() for i in record.issues]
    assert record.sender == "LAX2"
