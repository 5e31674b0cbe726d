"""Imaging benchmark: DICOM headers → FHIR ImagingStudy, instances/s on one core.

In one run, on the same generated DICOM files, single-threaded, it times

* the floor: a bare ``pydicom.dcmread(path, stop_before_pixels=True)`` of every file;
* the gateway end to end: ``Converter.convert_files([(name, bytes), ...])`` over every
  file of the data set (read the files, group by study, map, reference check, R4B model
  validation, JSON), plus the same with validation off, its DICOM intake alone, and the
  very same files again;
* dicom2fhir (``from_directory`` per study folder, as its README shows, then
  ``model_dump_json``), a peer converter, in its own virtual environment
  (``bench/.peers/dicom2fhir``, made by ``--setup-peers``) as a worker process that times
  itself; the worker also times the bare ``dcmread`` there, a cross-check that both
  environments read headers equally fast;

and reports medians, ranges and paired ratios, and a cProfile of the gateway's path.
The data set (studies × series × instances of CT headers without pixel data, Chinese
names in GB18030 or UTF-8) is generated into a temporary folder from a seed; every
round gets a data set of its own, so no content-keyed cache sees a file twice.

Run from the repository root::

    .venv/bin/python bench/bench_imaging.py [--rounds N] [--out bench/RESULTS.md | -]

See bench/README.md ("Imaging") for what each row means.
"""

from __future__ import annotations

import argparse
import cProfile
import dataclasses
import datetime as dt
import gc
import json
import os
import platform
import pstats
import random
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as package_version
from pathlib import Path
from typing import Any

import pydicom
from _peer import PeerWorker  # bench/_peer.py (this script's folder is on sys.path)
from pydicom.charset import convert_encodings
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_data_element, write_file_meta_info
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from gateway.config import Settings
from gateway.envelope import Record
from gateway.pipeline import Converter

REPO = Path(__file__).resolve().parent.parent
BENCH = REPO / "bench"
PEER_VENV = BENCH / ".peers" / "dicom2fhir"
# dicom2fhir 0.1.25 breaks on fhir.resources 8.3 (the gateway's): its bare
# ``Extension()`` fails "url is required"; 8.2.0 is the newest that works.
PEER_PINS = ("dicom2fhir==0.1.25", "fhir.resources==8.2.0")
RESULTS = BENCH / "RESULTS.md"
# bench_imaging.py owns the part of RESULTS.md between these two lines.
BEGIN = "<!-- imaging benchmark: begin (written by bench/bench_imaging.py) -->"
END = "<!-- imaging benchmark: end -->"

# -- the data set ------------------------------------------------------------------------

UID_ROOT = "1.2.826.0.1.3680043.8.498."  # pydicom's root for generated UIDs
INSTITUTION = "来安县第二人民医院"
ISSUER = ("LAX2", "2.16.156.10011.99.1.4")  # facility code, OID (seeds/network.yaml)


def _pairs(text: str) -> list[tuple[str, str]]:
    """(ideographic, pinyin) pairs from "汉 Han 字 Zi ..."."""
    words = text.split()
    return list(zip(words[::2], words[1::2], strict=True))


SURNAMES = _pairs(
    "王 Wang 李 Li 张 Zhang 刘 Liu 陈 Chen 杨 Yang 黄 Huang 赵 Zhao 吴 Wu 周 Zhou "
    "徐 Xu 孙 Sun 胡 Hu 朱 Zhu 郭 Guo"
)
GIVEN = _pairs(
    "伟 Wei 芳 Fang 秀英 Xiuying 建华 Jianhua 丽娟 Lijuan 志强 Zhiqiang 桂兰 Guilan "
    "明 Ming 海燕 Haiyan 玉珍 Yuzhen 德胜 Desheng 淑珍 Shuzhen"
)
REFERRERS = ["张^建国=ZHANG^JIANGUO", "赵^珅=ZHAO^SHEN"]  # LAX2 doctors (seeds)
# BodyPartExamined, StudyDescription, and four series: (description, slice mm, contrast?)
EXAMS = [
    (
        "HEAD",
        "头颅CT平扫",
        [
            ("定位像", 0.0, False),
            ("头颅 平扫 5mm", 5.0, False),
            ("头颅 平扫 骨窗 1.25mm", 1.25, False),
            ("头颅 平扫 薄层 0.625mm", 0.625, False),
        ],
    ),
    (
        "CHEST",
        "胸部CT平扫+增强",
        [
            ("Topogram 0.6 T20s", 0.0, False),
            ("胸部 平扫 肺窗 1.25mm", 1.25, False),
            ("胸部 平扫 纵隔窗 5mm", 5.0, False),
            ("胸部 增强 动脉期 1.25mm", 1.25, True),
        ],
    ),
    (
        "ABDOMEN",
        "上腹部CT增强",
        [
            ("定位像", 0.0, False),
            ("上腹部 平扫 5mm", 5.0, False),
            ("上腹部 增强 动脉期 5mm", 5.0, True),
            ("上腹部 增强 门脉期 5mm", 5.0, True),
        ],
    ),
    (
        "LSPINE",
        "腰椎CT平扫",
        [
            ("定位像", 0.0, False),
            ("腰椎 软组织窗 2mm", 2.0, False),
            ("腰椎 骨窗 2mm", 2.0, False),
            ("腰椎 矢状位重建 2mm", 2.0, False),
        ],
    ),
    (
        "PELVIS",
        "盆腔CT平扫",
        [
            ("Topogram 0.6 T20s", 0.0, False),
            ("Pelvis 5.0 B30f", 5.0, False),
            ("Pelvis 1.0 B30f", 1.0, False),
            ("Pelvis 1.0 B70f", 1.0, False),
        ],
    ),
]
CHARSETS = ["GB18030", "ISO_IR 192"]


@dataclass(frozen=True)
class Shape:
    studies: int
    series: int
    instances: int

    @property
    def total(self) -> int:
        return self.studies * self.series * self.instances


@dataclass
class DataSet:
    root: Path
    studies: list[Path]  # one folder per study (dicom2fhir converts a folder)
    files: list[Path]  # every file, in folder order
    sizes: int = 0  # bytes on disk

    def items(self) -> list[tuple[str, bytes]]:
        """What the gateway is handed: (name, bytes) of every file, read now."""
        return [(str(p.relative_to(self.root)), p.read_bytes()) for p in self.files]


def _uid(*parts: object) -> str:
    """A UID under pydicom's root, derived from ``parts`` (deterministic)."""
    return str(generate_uid(UID_ROOT, entropy_srcs=[str(p) for p in parts]))


def _study_header(rng: random.Random, seed: int, k: int, s: int) -> Dataset:
    """The study- and patient-level attributes every instance of study ``s`` shares."""
    family, given = rng.choice(SURNAMES), rng.choice(GIVEN)
    body, study_desc, _ = EXAMS[s % len(EXAMS)]
    day = dt.date(2026, 11, 2) + dt.timedelta(days=rng.randrange(20))
    ds = Dataset()
    ds.SpecificCharacterSet = CHARSETS[s % len(CHARSETS)]
    ds.SOPClassUID = CTImageStorage
    ds.StudyDate = ds.SeriesDate = ds.AcquisitionDate = ds.ContentDate = f"{day:%Y%m%d}"
    ds.StudyTime = f"{rng.randrange(8, 17):02d}{rng.randrange(60):02d}{rng.randrange(60):02d}"
    ds.AccessionNumber = f"CT{day:%y%m%d}{k:02d}{s:03d}"
    issuer = Dataset()
    issuer.LocalNamespaceEntityID = ISSUER[0]
    issuer.UniversalEntityID = ISSUER[1]
    issuer.UniversalEntityIDType = "ISO"
    ds.IssuerOfAccessionNumberSequence = [issuer]
    ds.Modality = "CT"
    ds.Manufacturer = "GE MEDICAL SYSTEMS"
    ds.InstitutionName = INSTITUTION
    ds.InstitutionAddress = "安徽省滁州市来安县建设路18号"
    ds.ReferringPhysicianName = REFERRERS[s % len(REFERRERS)]
    ds.StationName = "CT01"
    ds.StudyDescription = study_desc
    ds.InstitutionalDepartmentName = "放射科"
    ds.ManufacturerModelName = "Optima CT660"
    # Mainland PACS often send the ideographic name alone, or pinyin=ideographic.
    ideographic = f"{family[0]}^{given[0]}"
    ds.PatientName = ideographic if s % 3 else f"{family[1]}^{given[1]}={ideographic}"
    ds.PatientID = f"{rng.randrange(10**6, 10**7):07d}"
    ds.IssuerOfPatientID = ISSUER[0]
    birth = dt.date(1940, 1, 1) + dt.timedelta(days=rng.randrange(365 * 70))
    ds.PatientBirthDate = f"{birth:%Y%m%d}"
    ds.PatientSex = rng.choice("MF")
    ds.PatientAge = f"{min(99, (day - birth).days // 365):03d}Y"
    ds.BodyPartExamined = body
    ds.DeviceSerialNumber = "CT660-0417"
    ds.SoftwareVersions = "gmp_vct.47"
    ds.ProtocolName = f"{body} routine"
    ds.StudyInstanceUID = _uid(seed, k, s)
    ds.StudyID = f"{k:02d}{s:04d}"
    ds.FrameOfReferenceUID = _uid(seed, k, s, "frame")
    ds.RequestedProcedureID = ds.AccessionNumber
    return ds


def _series_header(study: Dataset, seed: int, k: int, s: int, se: int) -> Dataset:
    """What the instances of series ``se`` share beyond the study: CT image module."""
    _, _, series = EXAMS[s % len(EXAMS)]
    description, thickness, contrast = series[se % len(series)]
    ds = Dataset()
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL" if thickness else "LOCALIZER"]
    ds.SeriesTime = study.StudyTime
    ds.SeriesDescription = description
    if contrast:
        ds.ContrastBolusAgent = "碘海醇 Iohexol 350"
    ds.SliceThickness = thickness or 1.0
    ds.KVP = 120
    ds.ExposureTime = 600
    ds.SeriesInstanceUID = _uid(seed, k, s, se)
    ds.SeriesNumber = se + 1
    ds.AcquisitionNumber = 1
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = ds.Columns = 512
    ds.PixelSpacing = [0.976562, 0.976562]
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.WindowCenter, ds.WindowWidth = (40, 400)
    ds.RescaleIntercept, ds.RescaleSlope = (-1024, 1)
    return ds


def _instance_attrs(seed: int, k: int, s: int, se: int, i: int, step: float) -> Dataset:
    ds = Dataset()
    ds.SOPInstanceUID = _uid(seed, k, s, se, i)
    ds.XRayTubeCurrent = 220 + 5 * i
    ds.InstanceNumber = i + 1
    z = -50.0 - i * step
    ds.ImagePositionPatient = [-250.0, -250.0, z]
    ds.SliceLocation = z
    return ds


def _encoded(ds: Dataset, encodings: list[str]) -> dict[int, bytes]:
    """Each element of ``ds`` written alone (explicit VR little endian), by tag: the
    study's and series' elements are encoded once, not once per file."""
    out: dict[int, bytes] = {}
    for elem in ds:
        fp = DicomBytesIO()
        fp.is_implicit_VR, fp.is_little_endian = False, True
        write_data_element(fp, elem, encodings)
        out[elem.tag] = fp.getvalue()
    return out


def _file_meta() -> tuple[bytes, bytes]:
    """Preamble and file meta of a CT image, with a placeholder SOP Instance UID, and that
    placeholder: every generated UID has the same length (64), so a byte replace fits."""
    placeholder = _uid("placeholder")
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = placeholder
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    fp = DicomBytesIO()
    fp.is_implicit_VR, fp.is_little_endian = False, True
    fp.write(b"\0" * 128 + b"DICM")
    write_file_meta_info(fp, meta, enforce_standard=True)
    return fp.getvalue(), placeholder.encode("ascii")


def _part10(meta: tuple[bytes, bytes], parts: Sequence[dict[int, bytes]], sop_uid: str) -> bytes:
    """Preamble, file meta and the elements in tag order: what ``dcmwrite(...,
    enforce_file_format=True)`` writes for the merged data set, at a fraction of its cost."""
    head, placeholder = meta
    assert len(sop_uid) == len(placeholder), "generated UIDs have a fixed length"
    merged: dict[int, bytes] = {}
    for part in parts:
        merged.update(part)
    body = b"".join(merged[tag] for tag in sorted(merged))
    return head.replace(placeholder, sop_uid.encode("ascii")) + body


def write_dataset(root: Path, seed: int, k: int, shape: Shape) -> DataSet:
    """Data set ``k`` of the run: deterministic for (seed, k); distinct UIDs, patients
    and accession numbers for every k. Layout: ``root/study-NN/series-M/IMnnnn.dcm``."""
    rng = random.Random(f"{seed}/{k}")
    data = DataSet(root, [], [])
    meta = _file_meta()
    for s in range(shape.studies):
        study = _study_header(rng, seed, k, s)
        encodings = convert_encodings(study.SpecificCharacterSet)
        study_bytes = _encoded(study, encodings)
        folder = root / f"study-{s + 1:02d}"
        data.studies.append(folder)
        for se in range(shape.series):
            series = _series_header(study, seed, k, s, se)
            series_bytes = _encoded(series, encodings)
            (folder / f"series-{se + 1}").mkdir(parents=True)
            for i in range(shape.instances):
                own = _instance_attrs(seed, k, s, se, i, float(series.SliceThickness))
                blob = _part10(
                    meta, [study_bytes, series_bytes, _encoded(own, encodings)], own.SOPInstanceUID
                )
                path = folder / f"series-{se + 1}" / f"IM{i + 1:04d}.dcm"
                path.write_bytes(blob)
                data.files.append(path)
                data.sizes += len(blob)
    return data


# -- rows --------------------------------------------------------------------------------

Timing = tuple[float, float, int]  # wall s, CPU s, instances


@dataclass
class Row:
    key: str
    label: str
    what: str
    run: Callable[[DataSet], Timing]
    warmed: bool = False  # the untimed check already ran it once
    rates: list[float] = field(default_factory=list)  # instances/s, one per round
    cpus: list[float] = field(default_factory=list)  # CPU time / wall time

    @property
    def median(self) -> float:
        return statistics.median(self.rates)


def _timed(work: Callable[[DataSet], int]) -> Callable[[DataSet], Timing]:
    def run(data: DataSet) -> Timing:
        gc.collect()
        c0, t0 = time.process_time(), time.perf_counter()
        n = work(data)
        return time.perf_counter() - t0, time.process_time() - c0, n

    return run


def dcmread_all(data: DataSet) -> int:
    for path in data.files:
        pydicom.dcmread(path, stop_before_pixels=True)
    return len(data.files)


def _instances(records: Sequence[Record]) -> int:
    """Instances listed in the ImagingStudy resources of the Bundles (fails loudly)."""
    n = 0
    for record in records:
        if record.bundle is None:
            problems = "; ".join(i.code for i in record.issues)
            raise RuntimeError(f"the gateway did not convert {record.label}: {problems}")
        for entry in record.bundle["entry"]:
            if entry["resource"]["resourceType"] == "ImagingStudy":
                n += int(entry["resource"]["numberOfInstances"])
    return n


def gateway_rows(conv: Converter, extra: tuple[Converter, DataSet] | None) -> list[Row]:
    """The gateway's rows; ``extra`` (a converter with validation off, and the data set
    converted again every round) adds the two optional ones."""
    from gateway.intake.dicom import read_studies

    def e2e(c: Converter) -> Callable[[DataSet], int]:
        def convert(data: DataSet) -> int:
            return _instances(list(c.convert_files(data.items())))

        return convert

    def intake(data: DataSet) -> int:
        list(read_studies(data.items(), conv.network))
        return len(data.files)

    rows = [
        Row(
            "gw",
            "gateway end to end",
            "read the files, `Converter.convert_files(items)`: "
            "parse headers, group by study, map, validate + reference check, JSON",
            _timed(e2e(conv)),
            warmed=True,
        ),
        Row(
            "gw_intake",
            "gateway DICOM intake only",
            "read the files, "
            "`list(read_studies(items, network))`: header parse, charset, grouping, views",
            _timed(intake),
        ),
    ]
    if extra is not None:
        novalidate, repeat = extra
        again = _timed(e2e(conv))
        rows.append(
            Row(
                "gw_noval",
                "gateway, validation off",
                "the same with `Settings.validate = False` (the reference check stays)",
                _timed(e2e(novalidate)),
            )
        )
        rows.append(
            Row(
                "gw_again",
                "gateway end to end, same files again",
                "the first row on the very same files every round (content-keyed caches may hit)",
                lambda _data: again(repeat),
            )
        )
    return rows


class Peer(PeerWorker):
    """dicom2fhir runs in its own virtual environment, driven over a pipe."""

    def __init__(self, python: Path) -> None:
        super().__init__(python, BENCH / "peer_dicom2fhir.py", "dicom2fhir")
        self.versions: dict[str, str] = self.ask({"hello": 1})["versions"]

    def timer(self, mode: str) -> Callable[[DataSet], Timing]:
        def run(data: DataSet) -> Timing:
            reply = self.ask({"run": mode, "studies": [str(p) for p in data.studies]})
            return float(reply["wall"]), float(reply["cpu"]), int(reply["n"])

        return run


def setup_peers() -> None:
    """Make bench/.peers/dicom2fhir with dicom2fhir installed (bench/.peers is gitignored):
    dicom2fhir is no gateway dependency, pulls in pandas, and needs an older
    fhir.resources than the gateway's."""
    python = PEER_VENV / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(PEER_VENV)], check=True)
    wanted = dict(pin.split("==") for pin in PEER_PINS)
    probe = subprocess.run(
        [
            str(python),
            "-c",
            "import importlib.metadata as m, sys; print(*(m.version(n) for n in sys.argv[1:]))",
            *wanted,
        ],
        capture_output=True,
        text=True,
    )
    if probe.stdout.split() != list(wanted.values()):
        subprocess.run([str(python), "-m", "pip", "install", "-q", *PEER_PINS], check=True)


# -- what each converter makes (checked once, untimed) -----------------------------------


@dataclass
class Truth:
    """What pydicom itself reads from one study's files: the reference for both."""

    study_uid: str
    series: dict[str, set[str]]  # series UID → SOP instance UIDs
    patient_name: str  # decoded with the file's Specific Character Set

    @classmethod
    def read(cls, folder: Path) -> Truth:
        series: dict[str, set[str]] = {}
        study_uid = name = ""
        for path in sorted(folder.rglob("*.dcm")):
            ds = pydicom.dcmread(path, stop_before_pixels=True)
            series.setdefault(ds.SeriesInstanceUID, set()).add(ds.SOPInstanceUID)
            study_uid, name = ds.StudyInstanceUID, str(ds.PatientName)
        return cls(study_uid, series, name)

    def matches(self, study: dict[str, Any]) -> bool:
        """Counts, series UIDs and each series' instance UIDs as pydicom read them."""
        theirs = {
            s["uid"]: {i["uid"] for i in s.get("instance", [])} for s in study.get("series", [])
        }
        return (
            theirs == self.series
            and study.get("numberOfSeries") == len(self.series)
            and study.get("numberOfInstances") == sum(len(v) for v in self.series.values())
        )


def _types(bundle: dict[str, Any]) -> list[str]:
    return sorted(e["resource"]["resourceType"] for e in bundle.get("entry", []))


def _names(bundle: dict[str, Any]) -> list[str]:
    """Patient.name as one short line of text, however the converter filled it in."""
    out = []
    for entry in bundle.get("entry", []):
        resource = entry["resource"]
        if resource["resourceType"] != "Patient":
            continue
        for name in resource.get("name", []):
            text = name.get("text") or (
                f"family={json.dumps(name.get('family'), ensure_ascii=False)}, "
                f"given={json.dumps(name.get('given'), ensure_ascii=False)}"
            )
            text = " ".join(text.replace("\\n", " ").split()).replace("`", "'")
            text = text.replace("|", "/")
            out.append(text if len(text) <= 100 else text[:97] + "...")
    return out


def _study(bundle: dict[str, Any]) -> dict[str, Any]:
    return next(
        e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "ImagingStudy"
    )


@dataclass
class Check:
    converter: str
    studies: int
    converted: int
    structure_ok: int  # ImagingStudy matches pydicom's reading
    types: list[str]
    names: list[tuple[str, str]]  # (pydicom's name, the converter's Patient.name) samples
    note: str = ""


def _study_uid(study: dict[str, Any]) -> str:
    for identifier in study.get("identifier", []):
        if identifier.get("system") == "urn:dicom:uid":
            return str(identifier.get("value", "")).removeprefix("urn:oid:")
    return ""


def check_gateway(conv: Converter, data: DataSet) -> Check:
    truths = {t.study_uid: t for t in map(Truth.read, data.studies)}
    records = list(conv.convert_files(data.items()))
    ok = [r.bundle for r in records if r.bundle is not None]
    good, names = 0, []
    for bundle in ok:
        truth = truths.get(_study_uid(_study(bundle)))
        if truth is None:
            continue
        good += truth.matches(_study(bundle))
        if len(names) < 3:
            names.append((truth.patient_name, "; ".join(_names(bundle))))
    errors = sorted({i.code for r in records for i in r.issues if r.bundle is None})
    return Check(
        "gateway",
        len(data.studies),
        len(ok),
        good,
        _types(ok[0]) if ok else [],
        names,
        ", ".join(errors),
    )


def check_peer(peer: Peer, data: DataSet, studies: int = 4) -> Check:
    """The first few studies (both character sets, both name forms): each costs a whole
    dicom2fhir conversion, a JSON round trip and a pydicom reading."""
    good, names, converted, types, notes = 0, [], 0, [], set()
    folders = data.studies[:studies]
    for folder in folders:
        reply = peer.ask({"check": str(folder)})
        if not reply["ok"]:
            notes.add(reply["problem"])
            continue
        converted += 1
        bundle = json.loads(reply["bundle"])
        truth = Truth.read(folder)
        good += truth.matches(_study(bundle))
        types = types or _types(bundle)
        if len(names) < 3:
            names.append((truth.patient_name, "; ".join(_names(bundle))))
        if not reply["valid"]:
            notes.add(f"not a valid R4B Bundle: {reply['problem']}")
    return Check(
        "dicom2fhir", len(folders), converted, good, types, names, "; ".join(sorted(notes))
    )


# -- measuring ---------------------------------------------------------------------------


def measure(rows: Sequence[Row], sets: Sequence[DataSet]) -> None:
    """Round r: every row converts data set r once; the order rotates round by round so
    that drift and file-cache effects hit all rows alike."""
    for r, data in enumerate(sets):
        shift = r % len(rows)
        for row in list(rows[shift:]) + list(rows[:shift]):
            wall, cpu, n = row.run(data)
            row.rates.append(n / wall)
            row.cpus.append(cpu / wall)
        print(f"  round {r + 1}/{len(sets)} done", file=sys.stderr)


def paired(a: Row, b: Row) -> tuple[float, float, float]:
    ratios = [x / y for x, y in zip(a.rates, b.rates, strict=True)]
    return statistics.median(ratios), min(ratios), max(ratios)


def steal_ticks() -> tuple[int, int] | None:
    """(steal, all) CPU jiffies from /proc/stat's first line."""
    try:
        ticks = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return None
    return (ticks[7], sum(ticks[:8])) if len(ticks) >= 8 else None


@dataclass
class Hotspots:
    studies: int
    instances: int
    seconds: float
    packages: list[tuple[str, float]]  # share of own time
    by_cum: list[tuple[str, float, float, str]]  # calls, own µs/inst, cum µs/inst, where
    by_own: list[tuple[str, float, float, str]]


_PACKAGES = (
    ("/gateway/intake/dicom/", "gateway.intake.dicom (reader, view)"),
    ("/gateway/intake/", "gateway.intake (shared)"),
    ("/gateway/mapping/", "gateway.mapping (mapping engine)"),
    ("/gateway/validation/", "gateway.validation (reference walk, model call)"),
    ("/gateway/", "gateway (pipeline, other)"),
    ("/pydicom/", "pydicom"),
    ("/pydantic", "pydantic"),
)


def _where(filename: str, line: int, func: str) -> str:
    if filename == "~":
        return func
    for marker in ("site-packages/", f"{REPO}/"):
        if marker in filename:
            return f"{filename.split(marker, 1)[1]}:{line}({func})"
    return f"{Path(filename).name}:{line}({func})"


def _package(filename: str) -> str:
    if filename == "~":
        return "built-ins"
    return next((name for marker, name in _PACKAGES if marker in filename), "stdlib and others")


def profile_gateway(conv: Converter, data: DataSet, top: int) -> Hotspots:
    items = data.items()
    profiler = cProfile.Profile()
    gc.collect()
    t0 = time.perf_counter()
    profiler.enable()
    records = list(conv.convert_files(items))
    profiler.disable()
    seconds = time.perf_counter() - t0
    n = _instances(records)
    stats: dict[tuple[str, int, str], tuple[int, int, float, float, Any]]
    stats = pstats.Stats(profiler).stats  # type: ignore[attr-defined]
    rows, packages, total = [], {}, 0.0
    for (filename, line, func), (prim, calls, own, cum, callers) in stats.items():
        # A built-in's time (bytes.decode, dict.get, ...) goes to whoever called it.
        shares = (
            [(_package(c[0]), t[2]) for c, t in callers.items()]
            if filename == "~" and callers
            else [(_package(filename), own)]
        )
        for package, seconds_ in shares:
            packages[package] = packages.get(package, 0.0) + seconds_
            total += seconds_
        shown = str(calls) if calls == prim else f"{calls}/{prim}"
        rows.append((shown, own / n * 1e6, cum / n * 1e6, _where(filename, line, func)))
    shares = sorted(((k, v / total) for k, v in packages.items()), key=lambda kv: -kv[1])
    by_cum = sorted(rows, key=lambda r: -r[2])[:top]
    by_own = sorted(rows, key=lambda r: -r[1])[:top]
    return Hotspots(len(records), n, seconds, shares, by_cum, by_own)


# -- report ------------------------------------------------------------------------------


def _rate(x: float) -> str:
    return f"{x:,.0f}" if x >= 100 else f"{x:,.1f}"


def _factor(ratio: float) -> str:
    """'5.3× faster' or '1.9× slower' for a throughput ratio."""
    x = ratio if ratio >= 1 else 1 / ratio
    times = f"{x:.1f}×" if x < 10 else f"{x:.0f}×"
    return f"{times} faster" if ratio >= 1 else f"{times} slower"


def _reading(ratio: float) -> str:
    return f"A is {_factor(ratio)}"


def _versions(names: Sequence[str]) -> str:
    out = []
    for name in names:
        try:
            out.append(f"{name} {package_version(name)}")
        except PackageNotFoundError:
            out.append(f"{name} (not installed)")
    return ", ".join(out)


def _machine() -> list[str]:
    cpu = "unknown CPU"
    try:
        info = Path("/proc/cpuinfo").read_text()
        found = re.search(r"^model name\s*:\s*(.+)$", info, re.M)
        cpu = found.group(1).strip() if found else cpu
        if re.search(r"^flags\s*:.*\bhypervisor\b", info, re.M):
            cpu += " (virtual machine)"
    except OSError:
        pass
    allowed = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else "?"
    return [
        f"CPU: {cpu}; {os.cpu_count()} logical CPUs, {allowed} usable by this process; "
        "every timed loop runs in one thread.",
        f"OS: {platform.system()} {platform.release()}; Python {platform.python_version()} "
        f"({platform.python_implementation()})",
    ]


def _commit() -> str:
    def git(*args: str) -> str:
        return subprocess.run(
            ["git", "-C", str(REPO), *args], capture_output=True, text=True
        ).stdout.strip()

    head = git("rev-parse", "--short", "HEAD") or "unknown"
    dirty = git("status", "--porcelain", "--", "gateway", "mappings")
    return f"{head} (gateway/ or mappings/ modified in the work tree)" if dirty else head


@dataclass
class Report:
    command: str
    started: str
    seconds: float
    load: tuple[str, str]  # load average (1, 5, 15 min) before and after
    shape: Shape
    seed: int
    sample: DataSet
    rows: list[Row]
    notes: list[str]
    checks: list[Check]
    peer_versions: dict[str, str]
    steal: float | None
    hotspots: Hotspots | None

    def row(self, key: str) -> Row | None:
        return next((r for r in self.rows if r.key == key), None)

    def render(self) -> str:
        lines: list[str] = []
        add = lines.append
        sh = self.shape
        add("## Imaging benchmark: DICOM headers → FHIR ImagingStudy")
        add("")
        add(
            f"Recorded {self.started} by `bench/bench_imaging.py` in {self.seconds:.0f} s. "
            "Reproduce from the repository root (`make bench-imaging` does both steps; "
            "`--setup-peers` makes dicom2fhir's own venv in `bench/.peers/` once):"
        )
        add("")
        add("```sh")
        add(self.command)
        add("```")
        add("")
        add("### Machine and software")
        add("")
        for line in _machine():
            add(f"- {line}")
        add(
            f"- load average (1, 5, 15 min) before the run: {self.load[0]}; after: "
            f"{self.load[1]} (other work on the machine shows here and in the CPU column)"
        )
        add(f"- gateway commit: {_commit()}")
        add(
            "- libraries: "
            + _versions(["fhir-gateway", "pydicom", "fhir.resources", "pydantic", "orjson"])
        )
        if self.peer_versions:
            add(
                "- dicom2fhir's own venv: "
                + ", ".join(f"{k} {v}" for k, v in self.peer_versions.items())
            )
        add("")
        add("### Data set")
        add("")
        mean = self.sample.sizes / max(1, len(self.sample.files))
        add(
            f"Generated at run time (seed {self.seed}; nothing is committed): {sh.studies} CT "
            f"studies × {sh.series} series × {sh.instances} instances = **{sh.total:,} "
            f"Part-10 files** per data set, headers only (no Pixel Data), mean "
            f"{mean:,.0f} bytes a file, one folder per study. Specific Character Set "
            "alternates GB18030 / ISO_IR 192; Chinese patient names (ideographic, or "
            f"pinyin=ideographic), InstitutionName {INSTITUTION}, AccessionNumber with "
            f"IssuerOfAccessionNumberSequence ({ISSUER[0]}, {ISSUER[1]}), BodyPartExamined "
            "HEAD/CHEST/ABDOMEN/LSPINE/PELVIS, Chinese and English SeriesDescription, a "
            "localizer series, contrast phases, CT acquisition attributes. Every round "
            "converts a data set of its own (new UIDs, patients, accession numbers), all rows "
            "the same files; one more set warms up (and is checked), one is profiled"
            + (
                ", one is converted again every round (*same files again*)."
                if self.row("gw_again")
                else "."
            )
        )
        add("")
        add("### Method")
        add("")
        add(
            f"Single thread. Each row converts the round's whole data set once ({sh.total:,} "
            f"instances); {len(self.rows[0].rates)} rounds, rows in a rotating order each "
            "round. Rates are instances per wall-clock second (`time.perf_counter`); "
            "*min – max* is over the rounds; *CPU* is process CPU time / wall time. "
            "Ratios are taken round by round (paired) and their median shown. dicom2fhir runs "
            "in its own process and venv, driven over a pipe and timed inside itself "
            "(`bench/peer_dicom2fhir.py`). The garbage collector stays on and runs before each "
            "measurement. Every file is in the page cache (just written), so the rows measure "
            "CPU, not the disk."
        )
        if self.steal is not None:
            add(
                f"CPU time stolen by the hypervisor during the rounds: {self.steal:.1%}. "
                "On a shared virtual machine the speed drifts by tens of per cent from minute "
                "to minute: trust the medians and paired ratios, not one round."
            )
        add("")
        add("### Results")
        add("")
        add("| row | what is timed | instances/s (median) | min – max | µs/instance | CPU |")
        add("| --- | --- | ---: | ---: | ---: | ---: |")
        for r in self.rows:
            add(
                f"| {r.label} | {r.what} | **{_rate(r.median)}** | {_rate(min(r.rates))} – "
                f"{_rate(max(r.rates))} | {1e6 / r.median:,.0f} | "
                f"{statistics.median(r.cpus):.0%} |"
            )
        add("")
        for note in self.notes:
            add(note)
            add("")
        pairs = [
            ("gw", "pydicom"),
            ("gw", "d2f"),
            ("gw_noval", "d2f"),
            ("gw_intake", "pydicom"),
            ("d2f", "d2f_pydicom"),
            ("pydicom", "d2f_pydicom"),
            ("gw", "gw_noval"),
            ("gw_again", "gw"),
        ]
        present = [
            (a, b)
            for a, b in ((self.row(x), self.row(y)) for x, y in pairs)
            if a is not None and b is not None
        ]
        if present:
            add("#### Ratios (throughput of A ÷ throughput of B, paired by round)")
            add("")
            add("| A | B | A/B (median) | min – max | reading |")
            add("| --- | --- | ---: | ---: | --- |")
            for a, b in present:
                med, lo, hi = paired(a, b)
                add(
                    f"| {a.label} | {b.label} | **{med:.3g}** | {lo:.3g} – {hi:.3g} | "
                    f"{_reading(med)} |"
                )
            add("")
        self._render_checks(add)
        findings = self._interpret()
        if findings:
            add("### Reading")
            add("")
            for finding in findings:
                add(f"- {finding}")
                add("")
        if self.hotspots is not None:
            self._render_hotspots(add)
        return "\n".join(lines).rstrip() + "\n"

    def _interpret(self) -> list[str]:
        out: list[str] = []
        gw, floor, intake = self.row("gw"), self.row("pydicom"), self.row("gw_intake")
        d2f, d2f_floor = self.row("d2f"), self.row("d2f_pydicom")
        if gw is not None and floor is not None:
            med, lo, hi = paired(gw, floor)
            out.append(
                f"**Gateway against the floor:** the gateway converts {_rate(gw.median)} "
                f"instances/s end to end, {1 / med:.1f}× the time of the bare header read "
                f"(paired, range {1 / hi:.1f}–{1 / lo:.1f}×); pydicom's `dcmread` alone "
                f"reads {_rate(floor.median)} files/s."
            )
        if gw is not None and intake is not None:
            share = min(1.0, gw.median / intake.median)
            out.append(
                f"**Where the gateway's time goes:** its DICOM intake alone (read, parse, "
                f"group, views) runs at {_rate(intake.median)} instances/s, about {share:.0%} "
                "of the end-to-end time by the medians; mapping, validation and JSON take the "
                "rest. See the profile below."
            )
        if gw is not None and d2f is not None:
            med, lo, hi = paired(gw, d2f)
            out.append(
                f"**Gateway against dicom2fhir:** on the same files the gateway is "
                f"{_factor(med)} than dicom2fhir (paired median {med:.2g}, range "
                f"{lo:.2g}–{hi:.2g}), which converts {_rate(d2f.median)} instances/s, while "
                "the gateway also validates every Bundle with the R4B models and checks its "
                "references."
            )
        if floor is not None and d2f_floor is not None:
            med, _, _ = paired(floor, d2f_floor)
            out.append(
                f"**The two environments:** the bare `dcmread` runs at {med:.2f}× the speed in "
                "the gateway's venv as in dicom2fhir's (same pydicom): the ratios compare the "
                "converters, not the environments."
            )
        mangled = [c for c in self.checks for _, theirs in c.names if "Alphabetic" in theirs]
        if mangled:
            out.append(
                f"**Names:** {mangled[0].converter} writes the DICOM JSON form of the name "
                '(`{"Alphabetic": ...}`, as text, Chinese characters escaped) into '
                "Patient.name.family/given: it stringifies the PN object of its DICOM JSON "
                "proxy."
            )
        return out

    def _render_checks(self, add: Callable[[str], None]) -> None:
        add("#### What each converter made (checked once, untimed, on the warm-up set)")
        add("")
        add(
            "| converter | studies converted | ImagingStudy = pydicom's reading | resources "
            "per Bundle | Patient.name (pydicom's reading → converter's) | notes |"
        )
        add("| --- | ---: | ---: | --- | --- | --- |")
        for c in self.checks:
            names = "; ".join(f"`{a}` → `{b}`" for a, b in c.names)
            add(
                f"| {c.converter} | {c.converted}/{c.studies} | {c.structure_ok}/{c.studies} | "
                f"{', '.join(c.types)} | {names} | {c.note or '–'} |"
            )
        add("")
        add(
            "*ImagingStudy = pydicom's reading*: numberOfSeries, numberOfInstances, every series "
            "UID and the SOP Instance UIDs of each series equal what `pydicom.dcmread` reads "
            "from the study's files."
        )
        add("")

    def _render_hotspots(self, add: Callable[[str], None]) -> None:
        h = self.hotspots
        assert h is not None
        add("#### Profile of the gateway's DICOM path")
        add("")
        add(
            f"cProfile of `Converter.convert_files(items)` over a fresh data set (the files "
            f"already read into `items`): {h.studies} studies, {h.instances:,} instances in "
            f"{h.seconds:.1f} s. The profiler slows Python code, and calls into C most, by 2× "
            "or more: read the shares, not the absolute times. Times are µs per instance; a "
            "built-in's time (`bytes.decode`, `dict.get`, ...) counts for the package that "
            "called it."
        )
        add("")
        add("| package | share of own time |")
        add("| --- | ---: |")
        for name, share in h.packages:
            if share >= 0.005:
                add(f"| {name} | {share:.0%} |")
        for title, table in (("cumulative", h.by_cum), ("own time", h.by_own)):
            add("")
            add(f"Top {len(table)} by {title}:")
            add("")
            add("| calls | own µs/inst | cum. µs/inst | function |")
            add("| ---: | ---: | ---: | --- |")
            for calls, own, cum, where in table:
                add(f"| {calls} | {own:,.1f} | {cum:,.1f} | `{where}` |")
        add("")


def write_section(path: Path, text: str) -> None:
    """Put ``text`` between the imaging markers of ``path``, keeping everything else."""
    old = path.read_text(encoding="utf-8") if path.exists() else ""
    block = f"{BEGIN}\n\n{text.rstrip()}\n\n{END}\n"
    if BEGIN in old and END in old:
        head, rest = old.split(BEGIN, 1)
        new = head + block + rest.split(END, 1)[1].lstrip("\n")
    else:
        new = (old.rstrip() + "\n\n" if old.strip() else "") + block
    path.write_text(new, encoding="utf-8")


# -- main --------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=5, help="measured rounds (default 5)")
    p.add_argument("--studies", type=int, default=20, help="studies per data set (default 20)")
    p.add_argument("--series", type=int, default=4, help="series per study (default 4)")
    p.add_argument("--instances", type=int, default=25, help="instances per series (default 25)")
    p.add_argument("--seed", type=int, default=4, help="data set seed (default 4)")
    p.add_argument(
        "--out",
        default=str(RESULTS),
        help="results file whose imaging section is replaced (default "
        "bench/RESULTS.md; '-' to print only)",
    )
    p.add_argument("--pin", type=int, default=None, help="pin to this CPU (and the worker)")
    p.add_argument("--no-profile", action="store_true", help="skip the cProfile run")
    p.add_argument("--top", type=int, default=12, help="profile rows shown (default 12)")
    p.add_argument("--no-peer", action="store_true", help="skip dicom2fhir")
    p.add_argument(
        "--extra-rows",
        action="store_true",
        help="also time the gateway with validation off and on the same files again",
    )
    p.add_argument(
        "--setup-peers",
        action="store_true",
        help="first make bench/.peers/dicom2fhir with " + " ".join(PEER_PINS),
    )
    return p.parse_args(argv)


@dataclass
class Run:
    rows: list[Row]
    notes: list[str]
    checks: list[Check]
    peer: Peer | None = None


def _build_rows(
    args: argparse.Namespace, conv: Converter, warm: DataSet, again: DataSet | None
) -> Run:
    floor = Row(
        "pydicom",
        "pydicom dcmread (floor)",
        "`pydicom.dcmread(path, stop_before_pixels=True)` of every file",
        _timed(dcmread_all),
    )
    run = Run([floor], [], [])
    extra = None
    if again is not None:
        extra = (Converter(dataclasses.replace(conv.settings, validate=False)), again)
    try:
        run.rows += gateway_rows(conv, extra)
    except ImportError:
        run.notes.append(
            "**gateway rows skipped:** `gateway.intake.dicom` is not installed "
            "in this tree yet (no DICOM reader)."
        )
    else:
        run.checks.append(check_gateway(conv, warm))
    python = PEER_VENV / "bin" / "python"
    if args.no_peer:
        run.notes.append("dicom2fhir skipped: --no-peer.")
    elif not python.exists():
        run.notes.append(
            "dicom2fhir skipped: `bench/.peers/dicom2fhir` does not exist; run "
            "once with --setup-peers."
        )
    else:
        run.peer = Peer(python)
        run.checks.append(check_peer(run.peer, warm))
        run.rows.append(
            Row(
                "d2f",
                "dicom2fhir 0.1.25 (peer converter)",
                "per study folder: "
                "`asyncio.run(from_directory(folder, config))` (it lists the folder, "
                "checks each file's preamble, `dcmread` + `to_json_dict`, builds "
                "fhir.resources R4B models), then `model_dump_json()`; instances "
                "listed (`add_instances`)",
                run.peer.timer("dicom2fhir"),
                warmed=True,
            )
        )
        run.rows.append(
            Row(
                "d2f_pydicom",
                "pydicom dcmread, in dicom2fhir's venv",
                "the floor row in the worker process: the two environments read alike",
                run.peer.timer("pydicom"),
            )
        )
    return run


def _load() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    started = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    t_start, load_before = time.perf_counter(), _load()
    if args.pin is not None:
        os.sched_setaffinity(0, {args.pin})  # inherited by the dicom2fhir worker
    if args.setup_peers:
        setup_peers()
    shape = Shape(args.studies, args.series, args.instances)
    with tempfile.TemporaryDirectory(prefix="bench-imaging-") as tmp:
        root = Path(tmp)
        # warm-up, profile, one per round, and the one converted again every round
        count = args.rounds + 2 + args.extra_rows
        print(f"writing {count} data sets of {shape.total:,} files ...", file=sys.stderr)
        sets = [write_dataset(root / f"set-{k}", args.seed, k, shape) for k in range(count)]
        warm, fresh, rounds = sets[0], sets[1], sets[2 : 2 + args.rounds]
        again = sets[-1] if args.extra_rows else None
        conv = Converter(Settings.load(home=root / "home", env={}))
        run = _build_rows(args, conv, warm, again)
        print("warming up ...", file=sys.stderr)
        for row in run.rows:
            if not row.warmed:
                row.run(warm)  # gw_again: converts its own set, the one it repeats
        ticks0 = steal_ticks()
        measure(run.rows, rounds)
        ticks1 = steal_ticks()
        if run.peer is not None:
            run.peer.close()
        steal = (
            (ticks1[0] - ticks0[0]) / max(1, ticks1[1] - ticks0[1])
            if ticks0 is not None and ticks1 is not None
            else None
        )
        hotspots = None
        if not args.no_profile and any(r.key == "gw" for r in run.rows):
            hotspots = profile_gateway(conv, fresh, args.top)

    shown = [a for a in (argv if argv is not None else sys.argv[1:]) if a != "--setup-peers"]
    report = Report(
        command=" ".join([".venv/bin/python bench/bench_imaging.py", *shown]),
        started=started,
        seconds=time.perf_counter() - t_start,
        load=(load_before, _load()),
        shape=shape,
        seed=args.seed,
        sample=warm,
        rows=run.rows,
        notes=run.notes,
        checks=run.checks,
        peer_versions=run.peer.versions if run.peer else {},
        steal=steal,
        hotspots=hotspots,
    )
    text = report.render()
    print(text)
    if args.out != "-":
        write_section(Path(args.out), text)
        print(f"imaging section written to {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
