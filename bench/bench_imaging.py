"""Imaging benchmark: DICOM headers → FHIR ImagingStudy, instances/s on one core.

Measured with pyperf (worker processes, calibrated loops, warm-ups, statistics). On
generated DICOM files, single-threaded, it times

* the floor: a bare ``pydicom.dcmread(path, stop_before_pixels=True)`` of every file;
* the gateway end to end: ``Converter.convert_files([(name, bytes), ...])`` over every
  file of the data set (read the files, group by study, map, reference check, R4B model
  validation, JSON), its DICOM intake alone and, with ``--extra-rows``, the same with
  validation off and on the very same files again;
* dicom2fhir (``from_directory`` per study folder, as its README shows, then
  ``model_dump_json``), a peer converter, in its own virtual environment
  (``bench/.peers/dicom2fhir``, made by ``--setup-peers``) as a worker process that times
  itself; the worker also times the bare ``dcmread`` there, a cross-check that both
  environments read headers equally fast;

and writes medians and their ratios to the imaging section of bench/RESULTS.md. The
data set (studies × series × instances of CT headers without pixel data, Chinese names
in GB18030 or UTF-8) is generated from a seed; every pyperf value converts a data set of
its own, so no content-keyed cache sees a file twice.

Run from the repository root::

    .venv/bin/python bench/bench_imaging.py [--out bench/RESULTS.md | -] [pyperf options]

See bench/README.md ("Imaging") for what each row means.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import functools
import itertools
import json
import random
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import _results  # bench/_results.py (this script's folder is on sys.path)
import pydicom
from _peer import PeerWorker  # bench/_peer.py
from pydicom.charset import convert_encodings
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_data_element, write_file_meta_info
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from gateway.config import Settings
from gateway.envelope import Record
from gateway.pipeline import Converter

REPO = _results.REPO
BENCH = REPO / "bench"
PEER_VENV = BENCH / ".peers" / "dicom2fhir"
# dicom2fhir 0.1.25 breaks on fhir.resources 8.3 (the gateway's): its bare
# ``Extension()`` fails "url is required"; 8.2.0 is the newest that works.
PEER_PINS = ("dicom2fhir==0.1.25", "fhir.resources==8.2.0")

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


# -- rows --------------------------------------------------------------------------------

Work = _results.Work
Prepared = Callable[[int], Work]  # loops → the timed work on data sets written now


class Peer(PeerWorker):
    """dicom2fhir runs in its own virtual environment, driven over a pipe."""

    def __init__(self, python: Path) -> None:
        super().__init__(python, BENCH / "peer_dicom2fhir.py", "dicom2fhir")
        self.versions: dict[str, str] = self.ask({"hello": 1})["versions"]

    def run(self, mode: str, data: Sequence[DataSet]) -> tuple[float, float]:
        """(wall, CPU) seconds of converting (or reading) the data sets, in its process."""
        wall = cpu = 0.0
        for one in data:
            reply = self.ask({"run": mode, "studies": [str(p) for p in one.studies]})
            wall, cpu = wall + float(reply["wall"]), cpu + float(reply["cpu"])
        return wall, cpu


class Context:
    """One pyperf worker process: its converter(s), peer and data sets, made on first use.
    Every value gets data sets of its own (a running number in this process), written
    before the clock starts and removed after the next value's are written."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.shape = Shape(args.studies, args.series, args.instances)
        self.numbers = itertools.count(1)
        self.old: list[DataSet] = []

    @functools.cached_property
    def root(self) -> Path:
        return Path(tempfile.mkdtemp(prefix="bench-imaging-"))

    @functools.cached_property
    def conv(self) -> Converter:
        return Converter(Settings.load(home=self.root / "home", env={}))

    @functools.cached_property
    def novalidate(self) -> Converter:
        return Converter(dataclasses.replace(self.conv.settings, validate=False))

    @functools.cached_property
    def peer(self) -> Peer:
        return Peer(PEER_VENV / "bin" / "python")

    @functools.cached_property
    def again(self) -> DataSet:
        """The data set the *same files again* row converts every time."""
        return self.write(0)

    def write(self, k: int) -> DataSet:
        return write_dataset(self.root / f"set-{k}", self.args.seed, k, self.shape)

    def fresh(self, loops: int) -> list[DataSet]:
        for old in self.old:
            shutil.rmtree(old.root, ignore_errors=True)
        self.old = [self.write(next(self.numbers)) for _ in range(loops)]
        return self.old


def dcmread_all(data: DataSet) -> None:
    for path in data.files:
        pydicom.dcmread(path, stop_before_pixels=True)


def _each(sets: list[DataSet], step: Callable[[DataSet], object]) -> Work:
    def run() -> None:
        for data in sets:
            step(data)

    return run


def _floor(ctx: Context) -> Prepared:
    return lambda loops: _each(ctx.fresh(loops), dcmread_all)


def _gateway(which: str) -> Callable[[Context], Prepared]:
    def make(ctx: Context) -> Prepared:
        conv = ctx.novalidate if which == "novalidate" else ctx.conv

        def convert(data: DataSet) -> None:
            _instances(list(conv.convert_files(data.items())))

        if which == "again":
            again = ctx.again
            return lambda loops: _each([again] * loops, convert)
        return lambda loops: _each(ctx.fresh(loops), convert)

    return make


def _intake(ctx: Context) -> Prepared:
    from gateway.intake.dicom import read_studies

    network = ctx.conv.network
    return lambda loops: _each(ctx.fresh(loops), lambda d: list(read_studies(d.items(), network)))


def _peer(mode: str) -> Callable[[Context], Prepared]:
    def make(ctx: Context) -> Prepared:
        peer = ctx.peer

        def prepare(loops: int) -> Work:
            sets = ctx.fresh(loops)
            return lambda: peer.run(mode, sets)

        return prepare

    return make


@dataclass
class Spec:
    row: _results.Row
    make: Callable[[Context], Prepared]


def specs(args: argparse.Namespace) -> list[Spec]:
    R = _results.Row
    out = [
        Spec(
            R(
                "pydicom",
                "pydicom dcmread (floor)",
                "`pydicom.dcmread(path, stop_before_pixels=True)` of every file",
            ),
            _floor,
        ),
        Spec(
            R(
                "gw",
                "gateway end to end",
                "read the files, `Converter.convert_files(items)`: parse headers, group by "
                "study, map, validate + reference check, JSON",
            ),
            _gateway("validate"),
        ),
        Spec(
            R(
                "gw_intake",
                "gateway DICOM intake only",
                "read the files, `list(read_studies(items, network))`: header parse, charset, "
                "grouping, views",
            ),
            _intake,
        ),
    ]
    if args.extra_rows:
        out.append(
            Spec(
                R(
                    "gw_noval",
                    "gateway, validation off",
                    "the same with `Settings.validate = False` (the reference check stays)",
                ),
                _gateway("novalidate"),
            )
        )
        out.append(
            Spec(
                R(
                    "gw_again",
                    "gateway end to end, same files again",
                    "the end-to-end row on the very same files every time (content-keyed "
                    "caches may hit)",
                ),
                _gateway("again"),
            )
        )
    if not args.no_peer and (PEER_VENV / "bin" / "python").exists():
        out.append(
            Spec(
                R(
                    "d2f",
                    "dicom2fhir 0.1.25 (peer converter)",
                    "per study folder: `asyncio.run(from_directory(folder, config))` (it lists "
                    "the folder, checks each file's preamble, `dcmread` + `to_json_dict`, "
                    "builds fhir.resources R4B models), then `model_dump_json()`; instances "
                    "listed (`add_instances`)",
                ),
                _peer("dicom2fhir"),
            )
        )
        out.append(
            Spec(
                R(
                    "d2f_pydicom",
                    "pydicom dcmread, in dicom2fhir's venv",
                    "the floor row in the worker process: the two environments read alike",
                ),
                _peer("pydicom"),
            )
        )
    if args.rows:
        wanted = set(args.rows.split(","))
        out = [s for s in out if s.row.key in wanted]
    return out


def time_func(ctx: Context, spec: Spec) -> Callable[[int], float]:
    made: list[Prepared] = []

    def prepare(loops: int) -> Work:
        if not made:
            made.append(spec.make(ctx))
        return made[0](loops)

    return _results.time_func(ctx.args.clock, prepare)


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


# -- report ------------------------------------------------------------------------------

RATIOS = (
    ("gw", "pydicom"),
    ("gw", "d2f"),
    ("gw_noval", "d2f"),
    ("gw_intake", "pydicom"),
    ("d2f", "d2f_pydicom"),
    ("pydicom", "d2f_pydicom"),
    ("gw", "gw_noval"),
    ("gw_again", "gw"),
)


def render(
    args: argparse.Namespace,
    command: str,
    started: str,
    seconds: float,
    sample: DataSet,
    rows: list[_results.Row],
    checks: list[Check],
    notes: list[str],
    peer_versions: str,
) -> str:
    lines: list[str] = []
    add = lines.append
    sh = Shape(args.studies, args.series, args.instances)
    measured = [r for r in rows if r.bench is not None]
    add("## Imaging benchmark: DICOM headers → FHIR ImagingStudy")
    add("")
    add(
        f"Recorded {started} by `bench/bench_imaging.py` in {seconds:.0f} s. Reproduce from "
        "the repository root (`make bench-imaging` does both steps; `--setup-peers` makes "
        "dicom2fhir's own venv in `bench/.peers/` once):"
    )
    add("")
    add("```sh")
    add(command)
    add("```")
    add("")
    add("### Machine and software")
    add("")
    packages = ("fhir-gateway", "pydicom", "fhir.resources", "pydantic", "orjson")
    for line in _results.environment(measured[0].bench if measured else None, packages):
        add(f"- {line}")
    if peer_versions:
        add(f"- dicom2fhir's own venv: {peer_versions}")
    add("")
    add("### Data set")
    add("")
    mean = sample.sizes / max(1, len(sample.files))
    add(
        f"Generated at run time (seed {args.seed}; nothing is committed): {sh.studies} CT "
        f"studies × {sh.series} series × {sh.instances} instances = **{sh.total:,} Part-10 "
        f"files** per data set, headers only (no Pixel Data), mean {mean:,.0f} bytes a file, "
        "one folder per study. Specific Character Set alternates GB18030 / ISO_IR 192; "
        "Chinese patient names (ideographic, or pinyin=ideographic), InstitutionName "
        f"{INSTITUTION}, AccessionNumber with IssuerOfAccessionNumberSequence ({ISSUER[0]}, "
        f"{ISSUER[1]}), BodyPartExamined HEAD/CHEST/ABDOMEN/LSPINE/PELVIS, Chinese and "
        "English SeriesDescription, a localizer series, contrast phases, CT acquisition "
        "attributes. Every pyperf value converts data sets of its own (new UIDs, patients, "
        "accession numbers), written before its clock starts; the files are in the page "
        "cache (just written), so the rows measure CPU, not the disk."
    )
    add("")
    add("### Method")
    add("")
    add(
        _results.method(args, "instances")
        + " dicom2fhir runs in its own venv and process, driven over a pipe and timed inside "
        "itself (`bench/peer_dicom2fhir.py`)."
    )
    add("")
    add("### Results")
    add("")
    add(
        "Taken on a loaded shared machine (7 other helpers' jobs; load average above); rows "
        "are CPU time per worker, so they are comparable within this run, not across runs."
    )
    add("")
    lines.extend(_results.results_table(rows, "instances"))
    add("")
    for note in notes:
        add(note)
        add("")
    ratios = _results.ratios_table(rows, RATIOS)
    if ratios:
        add("#### Ratios (throughput of A ÷ throughput of B, same run)")
        add("")
        lines.extend(ratios)
        add("")
    if checks:
        _render_checks(add, checks)
    return "\n".join(lines).rstrip() + "\n"


def _render_checks(add: Callable[[str], None], checks: list[Check]) -> None:
    add("#### What each converter made (checked once, untimed, on one data set)")
    add("")
    add(
        "| converter | studies converted | ImagingStudy = pydicom's reading | resources "
        "per Bundle | Patient.name (pydicom's reading → converter's) | notes |"
    )
    add("| --- | ---: | ---: | --- | --- | --- |")
    for c in checks:
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


# -- main --------------------------------------------------------------------------------


def add_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--studies", type=int, default=10, help="studies per data set (10)")
    parser.add_argument("--series", type=int, default=4, help="series per study (4)")
    parser.add_argument("--instances", type=int, default=25, help="instances per series (25)")
    parser.add_argument("--seed", type=int, default=4, help="data set seed (default 4)")
    parser.add_argument(
        "--out",
        default=str(_results.RESULTS),
        help="results file whose imaging section is replaced (default bench/RESULTS.md; "
        "'-' to print only)",
    )
    parser.add_argument("--rows", default="", help="only these rows, comma-separated keys")
    parser.add_argument("--no-peer", action="store_true", help="skip dicom2fhir")
    parser.add_argument(
        "--extra-rows",
        action="store_true",
        help="also time the gateway with validation off and on the same files again",
    )
    parser.add_argument(
        "--setup-peers",
        action="store_true",
        help="first make bench/.peers/dicom2fhir with " + " ".join(PEER_PINS),
    )
    _results.add_clock_option(parser)


def forward(args: argparse.Namespace) -> list[str]:
    """This script's options, for pyperf's worker processes."""
    out = ["--out", "-", "--clock", args.clock, "--seed", str(args.seed)]
    out += ["--studies", str(args.studies), "--series", str(args.series)]
    out += ["--instances", str(args.instances)]
    out += ["--rows", args.rows] if args.rows else []
    out += ["--no-peer"] if args.no_peer else []
    out += ["--extra-rows"] if args.extra_rows else []
    return out


def main() -> int:
    runner = _results.runner(processes=3, values=3, forward=forward)
    add_options(runner.argparser)
    args = runner.parse_args()
    inner = args.studies * args.series * args.instances
    if args.worker:
        ctx = Context(args)
        try:
            for spec in specs(args):
                runner.bench_time_func(spec.row.key, time_func(ctx, spec), inner_loops=inner)
        finally:
            shutil.rmtree(ctx.root, ignore_errors=True)
        return 0

    started = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    t_start = time.perf_counter()
    if args.setup_peers:
        setup_peers()
    notes: list[str] = []
    checks: list[Check] = []
    peer_versions = ""
    with tempfile.TemporaryDirectory(prefix="bench-imaging-") as tmp:
        root = Path(tmp)
        shape = Shape(args.studies, args.series, args.instances)
        sample = write_dataset(root / "check", args.seed, 0, shape)
        conv = Converter(Settings.load(home=root / "home", env={}))
        checks.append(check_gateway(conv, sample))
        python = PEER_VENV / "bin" / "python"
        if args.no_peer:
            notes.append("dicom2fhir skipped: --no-peer.")
        elif not python.exists():
            notes.append(
                "dicom2fhir skipped: `bench/.peers/dicom2fhir` does not exist; run once with "
                "--setup-peers."
            )
        else:
            peer = Peer(python)
            try:
                checks.append(check_peer(peer, sample))
                peer_versions = ", ".join(f"{k} {v}" for k, v in peer.versions.items())
            finally:
                peer.close()
        rows = []
        for spec in specs(args):
            spec.row.bench = runner.bench_time_func(
                spec.row.key, time_func(Context(args), spec), inner_loops=inner
            )
            rows.append(spec.row)
        shown = [a for a in sys.argv[1:] if a != "--setup-peers"]
        command = " ".join([".venv/bin/python bench/bench_imaging.py", *shown])
        seconds = time.perf_counter() - t_start
        text = render(args, command, started, seconds, sample, rows, checks, notes, peer_versions)
    print(text)
    if args.out != "-":
        _results.write_section(Path(args.out), _results.markers("imaging"), text)
        print(f"imaging section written to {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
