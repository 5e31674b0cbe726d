"""One order and one sender per DICOM study: what joins the ImagingStudy to its order
(AccessionNumber and IssuerOfAccessionNumberSequence) and names its sender
(InstitutionName) is compared over every instance, not read from the first file only.
A disagreement refuses the study (intake.dicom-study-mismatch) naming the tag and both
files; a control character in a later instance's value is caught as in the first.

The files are written by pydicom into tmp_path and read back: 王伟's chest CT (GB18030)
and the same study sent as ISO_IR 192 (UTF-8) by another modality of the hospital.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import pytest
from pydicom import Dataset, FileMetaDataset
from pydicom.uid import ImplicitVRLittleEndian

from gateway import Converter
from gateway.envelope import Record
from tests.golden.dicom.make_studies import LAX2_CHEST, issuer, part10, wang_wei
from tests.intake.dicom._shown import shown

PATIENT_DATA = ("王", "伟", "WANG", "0012345", "LA2026061000002", "来安")
ACCESSION = "(0008,0050) AccessionNumber"
ISSUER = "(0008,0051) IssuerOfAccessionNumberSequence[1]"
INSTITUTION = "(0008,0080) InstitutionName"


def _study(
    tmp_path: Path, changed: dict[int, dict[str, Any]] | None = None
) -> list[tuple[str, bytes]]:
    """Five instances in two series, written to tmp_path; the even ones in UTF-8.
    ``changed`` overrides attributes of instance n (1-based, in file order)."""
    out = []
    for n in range(1, 6):
        attrs: dict[str, Any] = {"SpecificCharacterSet": "ISO_IR 192"} if n % 2 == 0 else {}
        attrs.update((changed or {}).get(n, {}))
        path = tmp_path / f"S{1 + n // 3}" / f"IM{n}.dcm"
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(part10(wang_wei(series=1 + n // 3, number=n, **attrs)))
        out.append((str(path.relative_to(tmp_path)), path.read_bytes()))
    return out


def _refused(
    converter: Converter,
    files: list[tuple[str, bytes]],
    code: str = "intake.dicom-study-mismatch",
) -> Record:
    return _refused_records(list(converter.convert_files(files)), code)


def _refused_records(records: list[Record], code: str = "intake.dicom-study-mismatch") -> Record:
    [record] = records
    assert record.bundle is None and record.control_id == LAX2_CHEST
    assert [e.code for e in record.errors] == [code], [i.line() for i in record.issues]
    for issue in record.issues:
        assert not any(text in issue.line() for text in PATIENT_DATA), issue.line()
    return record


def _issuer(**attrs: str) -> list[Dataset]:
    [item] = issuer("LAX2")
    for keyword, value in attrs.items():
        setattr(item, keyword, value)
    return [item]


def test_a_study_whose_instances_agree_converts_in_both_charsets(
    tmp_path: Path, converter: Converter
) -> None:
    [record] = list(converter.convert_files(_study(tmp_path)))
    assert record.ok, [i.line() for i in record.issues]
    assert record.bundle is not None
    [study] = [
        e["resource"]
        for e in record.bundle["entry"]
        if e["resource"]["resourceType"] == "ImagingStudy"
    ]
    assert study["numberOfInstances"] == 5
    assert {"value": "LA2026061000002"}.items() <= study["identifier"][1].items()


def test_one_instance_with_another_accession_number_refuses_the_study(
    tmp_path: Path, converter: Converter
) -> None:
    files = _study(tmp_path, {4: {"AccessionNumber": "LA2026061000003"}})
    [error] = _refused(converter, files, "intake.dicom-study-mismatch").errors
    assert error.location == ACCESSION
    assert "S1/IM1.dcm" in shown(error.message, files) and "S2/IM4.dcm" in shown(
        error.message, files
    )


def test_another_issuer_of_the_accession_number_refuses_the_study(
    tmp_path: Path, converter: Converter
) -> None:
    files = _study(tmp_path, {2: {"IssuerOfAccessionNumberSequence": issuer("NSCH")}})
    [error] = _refused(converter, files, "intake.dicom-study-mismatch").errors
    assert error.location == f"{ISSUER} > (0040,0031) LocalNamespaceEntityID"
    assert "S1/IM1.dcm" in shown(error.message, files) and "S1/IM2.dcm" in shown(
        error.message, files
    )


def test_another_issuer_oid_type_refuses_the_study(tmp_path: Path, converter: Converter) -> None:
    oid = {"UniversalEntityID": "2.16.156.10011.99.1.4"}
    iso = {"IssuerOfAccessionNumberSequence": _issuer(**oid, UniversalEntityIDType="ISO")}
    dns = {"IssuerOfAccessionNumberSequence": _issuer(**oid, UniversalEntityIDType="DNS")}
    files = _study(tmp_path, {1: iso, 2: iso, 3: iso, 4: iso, 5: dns})
    [error] = _refused(converter, files, "intake.dicom-study-mismatch").errors
    assert error.location == f"{ISSUER} > (0040,0033) UniversalEntityIDType"


def test_the_accession_number_without_its_issuer_beside_one_with_it_refuses_the_study(
    tmp_path: Path, converter: Converter
) -> None:
    # Without its issuer the number is the sender's: perhaps another order
    files = _study(tmp_path, {3: {"IssuerOfAccessionNumberSequence": None}})
    [error] = _refused(converter, files, "intake.dicom-study-mismatch").errors
    assert "(S2/IM3.dcm) has no" in shown(error.message, files) and "S1/IM1.dcm" in shown(
        error.message, files
    )


def test_an_instance_naming_no_order_takes_no_part(tmp_path: Path, converter: Converter) -> None:
    """A secondary capture without AccessionNumber and issuer names no other order."""
    none = {"AccessionNumber": None, "IssuerOfAccessionNumberSequence": None}
    files = _study(tmp_path, {1: none, 5: {"InstitutionName": None}})
    [record] = list(converter.convert_files(files))
    assert record.ok, [i.line() for i in record.issues]


def test_a_control_character_in_instance_3s_accession_number_refuses_the_study(
    tmp_path: Path, converter: Converter
) -> None:
    files = _study(tmp_path, {3: {"AccessionNumber": "LA20260610\x1f00002"}})
    [error] = _refused(converter, files, "intake.control-characters").errors
    assert error.location == ACCESSION and "S2/IM3.dcm" in shown(error.message, files)


def test_a_tab_at_the_end_of_a_later_accession_number_refuses_the_study(
    tmp_path: Path, converter: Converter
) -> None:
    files = _study(tmp_path, {5: {"AccessionNumber": "LA2026061000002\t"}})
    [error] = _refused(converter, files, "intake.control-characters").errors
    assert error.location == ACCESSION and "S2/IM5.dcm" in shown(error.message, files)


def test_another_institution_refuses_the_study(tmp_path: Path, converter: Converter) -> None:
    files = _study(tmp_path, {4: {"InstitutionName": "南沙中心医院"}})
    [error] = _refused(converter, files, "intake.dicom-study-mismatch").errors
    assert error.location == INSTITUTION
    assert "S1/IM1.dcm" in shown(error.message, files) and "S2/IM4.dcm" in shown(
        error.message, files
    )


@pytest.mark.parametrize(
    "spelling",
    [
        "Lai'an County No.2 People's Hospital",
        "來安縣第二人民醫院",
        # full-width forms (NFKC), as Chinese systems send them: its code, its English name
        "ＬＡＸ２",
        "Ｌａｉ'ａｎ　Ｃｏｕｎｔｙ　Ｎｏ．２　Ｐｅｏｐｌｅ'ｓ　Ｈｏｓｐｉｔａｌ",
    ],
)
def test_another_spelling_of_the_same_institution_is_one_sender(
    tmp_path: Path, converter: Converter, spelling: str
) -> None:
    # InstitutionName is in the General Equipment module (per series): a workstation's
    # series may spell the hospital otherwise. The network's names and aliases of one
    # institution are one sender (ISO_IR 192 for the Traditional spelling: its bytes)
    files = _study(
        tmp_path, {4: {"InstitutionName": spelling, "SpecificCharacterSet": "ISO_IR 192"}}
    )
    [record] = list(converter.convert_files(files))
    assert record.ok, [i.line() for i in record.issues]


def test_a_full_width_institution_name_files_the_patient_id_under_the_institution(
    tmp_path: Path, converter: Converter
) -> None:
    # no issuer beside the PatientID: InstitutionName decides whose number it is. Sent
    # full-width it was not found, and the MRN was filed under a made-up system
    # (https://unregistered.invalid/facility/%EF%BC%AC...): another patient
    ds = wang_wei(
        InstitutionName="ＬＡＸ２",
        IssuerOfPatientID=None,
        IssuerOfAccessionNumberSequence=None,
        SpecificCharacterSet="ISO_IR 192",
    )
    [record] = list(converter.convert_files([("IM1.dcm", part10(ds))]))
    assert record.ok and record.bundle is not None, [i.line() for i in record.issues]
    assert record.sender == "LAX2"
    [patient] = [
        e["resource"] for e in record.bundle["entry"] if e["resource"]["resourceType"] == "Patient"
    ]
    assert [(i["system"], i["value"]) for i in patient["identifier"]] == [
        ("https://fhir.lax2.example.cn/sid/mrn", "0012345")
    ]


def test_a_spelling_the_network_does_not_know_still_refuses_the_study(
    tmp_path: Path, converter: Converter
) -> None:
    files = _study(tmp_path, {4: {"InstitutionName": "LAX2 3D Workstation"}})
    [error] = _refused(converter, files, "intake.dicom-study-mismatch").errors
    assert error.location == INSTITUTION


def test_a_control_character_in_a_later_institution_name_refuses_the_study(
    tmp_path: Path, converter: Converter
) -> None:
    files = _study(tmp_path, {3: {"InstitutionName": "来安县第二\x1f人民医院"}})
    [error] = _refused(converter, files, "intake.control-characters").errors
    assert error.location == INSTITUTION and "S2/IM3.dcm" in shown(error.message, files)


def test_another_type_of_the_patient_issuers_oid_refuses_the_study(
    tmp_path: Path, converter: Converter
) -> None:
    """The Patient mapping reads UniversalEntityIDType too: ISO makes the OID the MRN's
    system, another type leaves it to the sender's."""

    def qualifiers(kind: str) -> list[Dataset]:
        item = Dataset()
        item.UniversalEntityID = "2.16.156.10011.99.1.4"
        item.UniversalEntityIDType = kind
        return [item]

    iso = {"IssuerOfPatientIDQualifiersSequence": qualifiers("ISO")}
    dns = {"IssuerOfPatientIDQualifiersSequence": qualifiers("DNS")}
    files = _study(tmp_path, {1: iso, 2: iso, 3: iso, 4: iso, 5: dns})
    [error] = _refused(converter, files, "intake.dicom-patient-mismatch").errors
    assert error.location == "(0010,0024) IssuerOfPatientIDQualifiersSequence"
    assert "S1/IM1.dcm" in shown(error.message, files) and "S2/IM5.dcm" in shown(
        error.message, files
    )


def test_another_accession_number_in_a_dicom_json_study_refuses_it(converter: Converter) -> None:
    objects = [
        wang_wei(number=n, **({"AccessionNumber": "LA2026061000003"} if n == 2 else {}))
        for n in (1, 2, 3)
    ]
    data = json.dumps([ds.to_json_dict() for ds in objects]).encode()
    [error] = _refused_records(converter.convert(data, source="s.json")).errors
    assert error.location == ACCESSION
    assert "s.json[1]" in shown(error.message, ("s.json", b"")) and "s.json[2]" in shown(
        error.message, ("s.json", b"")
    )


def test_one_accession_number_in_two_transfer_syntaxes_is_one(
    tmp_path: Path, converter: Converter
) -> None:
    """Compared as sent, not as bytes: an implicit VR instance's values agree."""
    files = _study(tmp_path)
    ds = wang_wei(number=6, InstitutionName="来安县第二人民医院 ")
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    path = tmp_path / "implicit.dcm"
    ds.save_as(path, enforce_file_format=True)
    [record] = list(converter.convert_files([*files, ("implicit.dcm", path.read_bytes())]))
    assert record.ok, [i.line() for i in record.issues]


_IN_ANY_ORDER = {
    # an instance naming no institution first, then two institutions: refused whatever
    # instance comes first
    "no name, another institution, the sender": (
        [{"InstitutionName": None}, {"InstitutionName": "南沙中心医院"}, {}],
        False,
    ),
    # the network's code, its key in other case, its OID and its name: one sender
    "code, key, OID and name of one institution": (
        [
            {"InstitutionName": None},
            {"InstitutionName": "LAX2"},
            {"InstitutionName": "lax2"},
            {"InstitutionName": "urn:oid:2.16.156.10011.99.1.4"},
            {},
        ],
        True,
    ),
}


@pytest.mark.parametrize("case", _IN_ANY_ORDER)
def test_the_outcome_does_not_depend_on_the_order_of_the_files(
    converter: Converter, case: str
) -> None:
    """A study is converted whole or refused whatever instance the modality sends first
    (the first one sets what the others are compared with)."""
    variants, converts = _IN_ANY_ORDER[case]
    files = []
    for n, attrs in enumerate(variants, 1):
        ds = wang_wei(series=1 + n % 2, number=n)
        for keyword, value in attrs.items():
            if value is None:
                delattr(ds, keyword)
            else:
                setattr(ds, keyword, value)
        files.append((f"IM{n}.dcm", part10(ds)))
    for order in itertools.permutations(files):
        [record] = list(converter.convert_files(list(order)))
        assert record.ok is converts, ([name for name, _ in order], record.errors)
