"""Writes the DICOM golden inputs (headers only, no pixel data) and offers the instance
builder the DICOM tests use.

Run ``python -m tests.golden.dicom.make_studies`` after editing (then ``make golden``);
``--check`` fails when a file on disk differs from what this script writes.

* ``lax2_chest_ct.study/``: the chest CT of 王伟 at Lai'an (LAX2 MRN 0012345; the second
  order of examples/hl7v2/orm_o01_lax2_ct.hl7, accession LA2026061000002 issued by
  LAX2). Specific Character Set GB18030, PatientName ``WANG^WEI=王^伟=``, three series
  (scout, lung window, left-lung target scan with Laterality L), files written out of
  instance order.
* ``nsch_mr_knee.json``: a DICOM JSON (PS3.18 Annex F) array of the instances of an MR
  knee study of 許嘉瑋 at Nansha (NSCH MRN 0098765), UTF-8, two series, right knee.
"""

from __future__ import annotations

import io
import sys
from pathlib import Path
from typing import Any

import orjson
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian

HERE = Path(__file__).resolve().parent
CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
MR_IMAGE = "1.2.840.10008.5.1.4.1.1.4"
IMPLEMENTATION_UID = "2.16.156.10011.99.9.1"  # demo arc (seeds/network.yaml: not registered)

LAX2_CHEST = "2.16.156.10011.99.1.4.3.20260610.2"
NSCH_KNEE = "2.16.156.10011.99.1.1.3.20260620.5"


def instance(study: str, series: int, number: int, **attrs: Any) -> Dataset:
    """A header-only instance: UIDs from the study UID, series and instance numbers;
    ``attrs`` (DICOM keywords) add to or override the defaults. ``None`` removes one."""
    ds = Dataset()
    ds.SOPClassUID = attrs.pop("SOPClassUID", CT_IMAGE)
    ds.SOPInstanceUID = f"{study}.{series}.{number}"
    ds.StudyInstanceUID = study
    ds.SeriesInstanceUID = f"{study}.{series}"
    ds.SeriesNumber = series
    ds.InstanceNumber = number
    ds.Modality = "CT"
    for keyword, value in attrs.items():
        if value is None:
            if keyword in ds:
                delattr(ds, keyword)
        else:
            setattr(ds, keyword, value)
    return ds


def part10(ds: Dataset) -> bytes:
    """The dataset as a DICOM Part 10 file (Explicit VR Little Endian)."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.get("SOPClassUID", CT_IMAGE)
    meta.MediaStorageSOPInstanceUID = ds.get("SOPInstanceUID", "2.25.1")
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = IMPLEMENTATION_UID
    ds.file_meta = meta
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def issuer(code: str) -> list[Dataset]:
    item = Dataset()
    item.LocalNamespaceEntityID = code
    return [item]


def wang_wei(study: str = LAX2_CHEST, series: int = 1, number: int = 1, **attrs: Any) -> Dataset:
    """An instance of 王伟's chest CT at Lai'an (GB18030)."""
    base: dict[str, Any] = {
        "SpecificCharacterSet": "GB18030",
        "PatientName": "WANG^WEI=王^伟=",
        "PatientID": "0012345",
        "IssuerOfPatientID": "LAX2",
        "PatientBirthDate": "19660420",
        "PatientSex": "M",
        "InstitutionName": "来安县第二人民医院",
        "AccessionNumber": "LA2026061000002",
        "IssuerOfAccessionNumberSequence": issuer("LAX2"),
        "ReferringPhysicianName": "ZHANG^JIANGUO=张^建国=",
        "StudyDate": "20260610",
        "StudyTime": "091500",
        "TimezoneOffsetFromUTC": "+0800",
        "StudyDescription": "胸部CT平扫",
        "StudyID": "2",
        "BodyPartExamined": "CHEST",
    }
    base.update(attrs)
    return instance(study, series, number, **base)


# (series number, description, instances, body part, laterality, time)
CHEST_SERIES = [
    (1, "定位像 Scout", 1, "CHEST", None, "091530"),
    (2, "轴位 1mm 肺窗", 3, "CHEST", None, "091612"),
    (3, "左肺结节靶扫描", 2, "LUNG", "L", "092040"),
]

KNEE_SERIES = [(1, "矢状位 PD 压脂", 2), (2, "冠状位 T1", 2)]


def chest_files() -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    for number, description, count, body, laterality, time in CHEST_SERIES:
        # Written last instance first: the ImagingStudy orders by InstanceNumber.
        for n in range(count, 0, -1):
            ds = wang_wei(
                series=number,
                number=n,
                SeriesDescription=description,
                SeriesDate="20260610",
                SeriesTime=time,
                BodyPartExamined=body,
                Laterality=laterality,
            )
            out[f"lax2_chest_ct.study/S{number}/IM{n:04d}.dcm"] = part10(ds)
    return out


def knee_json() -> bytes:
    objects = []
    for number, description, count in KNEE_SERIES:
        for n in range(1, count + 1):
            ds = instance(
                NSCH_KNEE,
                number,
                n,
                SOPClassUID=MR_IMAGE,
                Modality="MR",
                SpecificCharacterSet="ISO_IR 192",
                PatientName="HUI^KA WAI=許^嘉瑋=",
                PatientID="0098765",
                IssuerOfPatientID="NSCH",
                PatientSex="M",
                PatientBirthDate="19570903",
                InstitutionName="南沙中心医院",
                AccessionNumber="NS2026062000005",
                IssuerOfAccessionNumberSequence=issuer("NSCH"),
                StudyDate="20260620",
                StudyTime="143000.250000",
                StudyDescription="右膝关节MR平扫",
                SeriesDescription=description,
                BodyPartExamined="KNEE",
                ImageLaterality="R",
            )
            objects.append(ds.to_json_dict())
    return orjson.dumps(objects, option=orjson.OPT_INDENT_2) + b"\n"


def files() -> dict[Path, bytes]:
    out = {HERE / name: data for name, data in chest_files().items()}
    out[HERE / "nsch_mr_knee.json"] = knee_json()
    return out


def write_or_check(files: dict[Path, bytes], argv: list[str], root: Path) -> int:
    """Write the files that differ from what a generator makes; with ``--check`` in
    ``argv`` only list them. Exit status 1 when ``--check`` found any."""
    stale = []
    for path, data in files.items():
        if path.exists() and path.read_bytes() == data:
            continue
        if "--check" in argv:
            stale.append(path)
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        print(f"wrote {path.relative_to(root)}")
    for path in stale:
        print(f"differs: {path.relative_to(root)}")
    return 1 if stale else 0


def main(argv: list[str]) -> int:
    return write_or_check(files(), argv, HERE)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
