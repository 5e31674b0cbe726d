"""Conversion benchmark: HL7 v2 messages → validated FHIR R4 Bundle JSON, messages/s on one core.

In one run, on the same messages, single-threaded, it times

* the gateway end to end (split, decode, tokenise, map, reference check, R4B model
  validation, JSON) with validation on and off;
* the gateway's own ER7 parser alone (split + decode + tokenise);
* the bare parse of the same messages by python-hl7 (``hl7.parse``) and by hl7apy
  (``hl7apy.parser.parse_message``, tolerant, with and without group finding);
* brightohir's HL7 v2 → FHIR R5 conversion, a peer *converter*, when its virtual
  environment exists (``--setup-peers`` makes it in ``bench/.peers/``);
* each stage of the gateway's pipeline separately;

and reports medians, spreads and paired ratios, a cProfile of the end-to-end path, and
(optionally) the whole ``gateway convert`` process. The results go to a Markdown file.

Run from the repository root::

    .venv/bin/python bench/bench_convert.py [--rounds N] [--out bench/RESULTS.md]

See bench/README.md for what each row means.
"""

from __future__ import annotations

import argparse
import base64
import cProfile
import dataclasses
import datetime as dt
import gc
import hashlib
import itertools
import os
import platform
import pstats
import re
import resource
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
from typing import Any, TypeVar

import hl7  # type: ignore[import-untyped]  # python-hl7
from _peer import PeerWorker  # bench/_peer.py (this script's folder is on sys.path)
from fhir.resources.R4B.bundle import Bundle
from hl7apy.consts import VALIDATION_LEVEL  # type: ignore[import-untyped]
from hl7apy.parser import parse_message as hl7apy_parse  # type: ignore[import-untyped]

from gateway.config import Settings
from gateway.intake.hl7v2 import Hl7View, Message, RawMessage, parse_message, split_messages
from gateway.pipeline import Converter, dump_json
from gateway.validation import check_bundle

REPO = Path(__file__).resolve().parent.parent
BENCH = REPO / "bench"
PEER_ROOT = BENCH / ".peers"
BRIGHTOHIR_VENV = PEER_ROOT / "brightohir"
BRIGHTOHIR_PIN = "brightohir==2.1.2"
GOAL = 1000.0  # messages/s per core, end to end (the project's target)

MESSAGE_DIRS = (REPO / "examples" / "hl7v2", REPO / "tests" / "golden" / "hl7v2")
# Order and referral messages of the shared corpus (beside the checkout).
CORPUS_FILES = (
    "ms_REF-I12-01.hl7",
    "ms_ORM-O01-01.hl7",
    "ms_ORM-O01-03.hl7",
    "dcm4che_ORM_O01.hl7",
    "dcm4che_OMI_O23-ImagingOrder.hl7",
    "dcm4che_OMG_O19-GeneralClinicalOrder-Eyecare.hl7",
    "v2tofhir_ORM_O01-IHE-RAD-4-Message-v2.3.1.txt",
)

Timing = tuple[float, float, int]  # wall seconds, CPU seconds, messages done
_T = TypeVar("_T")
_CHECK_NAME = "check_bundle(bundle, validate=True)"


def _check(bundle: dict[str, Any]) -> None:
    check_bundle(bundle, True)


# -- messages ----------------------------------------------------------------------------


@dataclass(slots=True)
class Sample:
    """One message, pre-split, that the gateway converts without error."""

    name: str  # file#n
    data: bytes  # the message's segments joined with CR (as split_messages gives them)
    codec: str  # the Python codec the gateway decoded it with (peers decode the same way)
    message_type: str
    resources: int = 0  # entries in the gateway's Bundle
    text: str = ""  # decoded text, for the peers' sanity checks
    python_hl7: bool = False  # parses with hl7.parse
    hl7apy: bool = False  # parses with hl7apy, tolerant, find_groups=False
    hl7apy_groups: bool = False  # ... and with find_groups=True
    problem: str = ""  # first peer error, for the report
    freshens: bool = False  # its variants (see freshen) convert, each to its own Bundle


@dataclass
class MessageSet:
    files: list[str] = field(default_factory=list)
    found: int = 0  # messages split from the files
    duplicates: int = 0  # byte-identical to an earlier one (tests/golden copies examples/)
    failed: list[str] = field(default_factory=list)  # do not convert: left out
    samples: list[Sample] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def common(self) -> list[Sample]:
        """The messages every in-process peer parses: the set all ratios are taken on."""
        return [s for s in self.samples if s.python_hl7 and s.hl7apy and s.hl7apy_groups]


def collect_messages(conv: Converter, corpus: Path) -> MessageSet:
    out = MessageSet()
    paths: list[Path] = []
    for folder in MESSAGE_DIRS:
        paths.extend(sorted(folder.glob("*.hl7")))
    if corpus.is_dir():
        for name in CORPUS_FILES:
            path = corpus / name
            if path.is_file():
                paths.append(path)
            else:
                out.notes.append(f"corpus file {name} not found in {corpus}: skipped")
    else:
        note = f"corpus {corpus} is absent: its {len(CORPUS_FILES)} order/referral files skipped"
        print(f"note: {note}", file=sys.stderr)
        out.notes.append(note)
    seen: set[bytes] = set()
    for path in paths:
        rel = _rel(path)
        out.files.append(rel)
        for raw in split_messages(path.read_bytes()):
            out.found += 1
            name = f"{path.name}#{raw.index}"
            data = raw.data if raw.segments else b""
            digest = hashlib.sha256(data).digest()
            if digest in seen:
                out.duplicates += 1
                continue
            seen.add(digest)
            records = conv.convert(data, source=name)
            if len(records) != 1 or not records[0].ok:
                codes = sorted({i.code for r in records for i in r.issues if i.severity == "error"})
                out.failed.append(f"{rel}#{raw.index} ({', '.join(codes) or 'no record'})")
                continue
            record = records[0]
            entries = len((record.bundle or {}).get("entry", []))
            out.samples.append(
                Sample(name, data, record.charset or "utf-8", record.message_type or "?", entries)
            )
    for sample in out.samples:
        _check_peers(sample)
    return out


def _check_peers(sample: Sample) -> None:
    sample.text = sample.data.decode(sample.codec)
    problems: list[str] = []
    try:
        hl7.parse(sample.text)
        sample.python_hl7 = True
    except Exception as exc:
        problems.append(f"python-hl7: {type(exc).__name__}: {exc}")
    for groups in (False, True):
        try:
            hl7apy_parse(
                sample.text, validation_level=VALIDATION_LEVEL.TOLERANT, find_groups=groups
            )
        except Exception as exc:
            problems.append(f"hl7apy(find_groups={groups}): {type(exc).__name__}: {exc}")
        else:
            if groups:
                sample.hl7apy_groups = True
            else:
                sample.hl7apy = True
    sample.problem = "; ".join(problems)[:160]


def _rel(path: Path) -> str:
    """``path`` relative to the repository root (the corpus is ``../shared/...``)."""
    return os.path.relpath(path.resolve(), REPO)


# -- the timed work ----------------------------------------------------------------------


@dataclass
class Bench:
    key: str
    label: str
    what: str
    run: Callable[[int], Timing]  # passes → (wall, cpu, messages)
    group: str = "main"  # "main" rows, "stage" rows (pipeline stages), "extra"
    passes: int = 1
    walls: list[float] = field(default_factory=list)  # messages/s per round (wall clock)
    cpus: list[float] = field(default_factory=list)  # CPU seconds / wall seconds per round
    n: int = 0  # messages per measurement

    @property
    def median(self) -> float:
        return statistics.median(self.walls)

    @property
    def spread(self) -> float:
        return (max(self.walls) - min(self.walls)) / self.median


def _timed(prepare: Callable[[int], _T], work: Callable[[_T], int]) -> Callable[[int], Timing]:
    """A bench's run: ``prepare(passes)`` makes the input (not timed), ``work`` is timed."""

    def run(passes: int) -> Timing:
        items = prepare(passes)
        gc.collect()
        c0, t0 = time.process_time(), time.perf_counter()
        done = work(items)
        return time.perf_counter() - t0, time.process_time() - c0, done

    return run


# What is new in every message of a real feed: the message's control id and time, the
# patient's identifiers and birth date, the visit, order, referral and accession numbers.
# Staff, organisations, codes and the message structure stay as they are: they recur.
_FRESH_IDS: dict[str, tuple[int, ...]] = {
    "MSH": (10,),
    "PID": (2, 3, 4, 18, 19),
    "PV1": (19,),
    "ORC": (2, 3, 4),
    "OBR": (2, 3, 18, 19, 20),
    "RF1": (6, 11),
    "IPC": (1, 2, 3, 4),
}
_FRESH_TIMES: dict[str, tuple[int, ...]] = {"MSH": (7,), "PID": (7,), "ORC": (9,), "OBR": (7,)}
_FRESH_TEXT: dict[str, tuple[int, ...]] = {"PID": (5, 11, 13)}  # name, address, phone
_TS = re.compile(r"(\d{6})(\d{2})(\d{4})?(\d{2})?(.*)", re.DOTALL)


def _vary_time(value: str, k: int) -> str:
    m = _TS.fullmatch(value)
    if not m:
        return value
    ym, day, hhmm, ss, rest = m.groups()
    if hhmm is None:  # a date: another (valid) day of the month
        return f"{ym}{1 + k % 28:02d}{rest}"
    out = f"{ym}{day}{hhmm[:2]}{k % 60:02d}"
    return out + (f"{k // 60 % 60:02d}" if ss is not None else "") + rest


def _letters(k: int) -> str:
    out = ""
    while True:
        k, r = divmod(k, 26)
        out += "abcdefghijklmnopqrstuvwxyz"[r]
        if not k:
            return out


def freshen(text: str, k: int) -> str:
    """The message with the per-message values of ``_FRESH_IDS``, ``_FRESH_TIMES`` and
    ``_FRESH_TEXT`` made unique to ``k``: the first component of each repetition gets
    ``k`` appended (identifiers), its minutes/seconds or day set from ``k`` (times), or
    ``k`` in letters appended (the patient's name, address and phone)."""
    fs = text[3]
    end = text.find(fs, 4)
    enc = text[4:end] if end > 0 else "^~\\&"
    cs, rs = enc[:1] or "^", enc[1:2] or "~"
    suffix, letters = f"{k:07d}", _letters(k)
    lines = text.split("\r")
    for n, line in enumerate(lines):
        name = line[:3]
        ids, times = _FRESH_IDS.get(name, ()), _FRESH_TIMES.get(name, ())
        texts = _FRESH_TEXT.get(name, ())
        if not ids and not times and not texts:
            continue
        fields = line.split(fs)
        shift = 1 if name == "MSH" else 0  # MSH-1 is the separator itself
        changes: tuple[tuple[tuple[int, ...], Callable[[str], str]], ...] = (
            (ids, lambda v: v + suffix),
            (times, lambda v: _vary_time(v, k)),
            (texts, lambda v: v + letters),
        )
        for numbers, change in changes:
            for number in numbers:
                i = number - shift
                if i < len(fields) and fields[i]:
                    reps = fields[i].split(rs)
                    for r, rep in enumerate(reps):
                        comps = rep.split(cs)
                        if comps[0]:
                            comps[0] = change(comps[0])
                        reps[r] = cs.join(comps)
                    fields[i] = rs.join(reps)
        lines[n] = fs.join(fields)
    return "\r".join(lines)


class Workload:
    """The messages a measurement converts: ``passes`` copies of the list, each message
    either the very same bytes again (``fresh=False``) or a never-seen variant of it made
    by :func:`freshen` (``fresh=True``), so that nothing keyed on content (memoised
    resources, accepted values, shared subtrees) can serve a result from an earlier pass.
    One counter is shared by every workload: no variant is ever made twice in a run."""

    _counter = itertools.count(1)

    def __init__(self, samples: Sequence[Sample], fresh: bool) -> None:
        self.samples = list(samples)
        self.fresh = fresh

    def batch(self, passes: int) -> list[tuple[bytes, str]]:
        if not self.fresh:
            return [(s.data, s.codec) for s in self.samples] * passes
        out = []
        for _ in range(passes):
            for s in self.samples:
                if s.freshens:
                    data = freshen(s.text, next(self._counter)).encode(s.codec)
                else:
                    data = s.data
                out.append((data, s.codec))
        return out

    def datas(self, passes: int) -> list[bytes]:
        return [d for d, _ in self.batch(passes)]


def check_freshening(conv: Converter, samples: Sequence[Sample]) -> None:
    """Every variant must convert, and to a different Bundle, or the sample is used as is."""
    for s in samples:
        original = conv.convert(s.data)[0].bundle_json
        try:
            variants = [freshen(s.text, k).encode(s.codec) for k in (9_999_998, 9_999_999)]
        except (UnicodeEncodeError, ValueError):
            continue
        records = [conv.convert(v) for v in variants]
        s.freshens = (
            all(
                len(r) == 1 and r[0].ok and r[0].bundle_json not in (original, None)
                for r in records
            )
            and records[0][0].bundle_json != records[1][0].bundle_json
        )


def gateway_benches(
    conv: Converter, novalidate: Converter, work: Workload, repeated: Workload
) -> list[Bench]:
    charset = conv.network.charset

    def e2e(c: Converter) -> Callable[[list[bytes]], int]:
        def convert_all(datas: list[bytes]) -> int:
            for data in datas:
                c.convert(data)
            return len(datas)

        return convert_all

    def parse_only(datas: list[bytes]) -> int:
        for data in datas:
            for raw in split_messages(data):
                parse_message(raw, charset)
        return len(datas)

    return [
        Bench(
            "gw_e2e",
            "gateway end to end",
            "`Converter.convert(bytes)`: split, decode, tokenise, "
            "map, validate + reference check, JSON",
            _timed(work.datas, e2e(conv)),
        ),
        Bench(
            "gw_noval",
            "gateway end to end, validation off",
            "the same with `Settings.validate = False` (the reference check stays)",
            _timed(work.datas, e2e(novalidate)),
        ),
        Bench(
            "gw_parse",
            "gateway ER7 parse only",
            "`split_messages` + `parse_message` (charset decode + tokenise)",
            _timed(work.datas, parse_only),
        ),
        Bench(
            "gw_repeat",
            "gateway end to end, same messages again",
            "as the first row, but "
            "every pass converts the very same bytes: content-keyed caches always hit",
            _timed(repeated.datas, e2e(conv)),
            group="extra",
        ),
    ]


def peer_benches(work: Workload) -> list[Bench]:
    tolerant = VALIDATION_LEVEL.TOLERANT

    def python_hl7(pairs: list[tuple[bytes, str]]) -> int:
        for data, codec in pairs:
            hl7.parse(data.decode(codec))
        return len(pairs)

    def hl7apy_flat(pairs: list[tuple[bytes, str]]) -> int:
        for data, codec in pairs:
            hl7apy_parse(data.decode(codec), validation_level=tolerant, find_groups=False)
        return len(pairs)

    def hl7apy_groups(pairs: list[tuple[bytes, str]]) -> int:
        for data, codec in pairs:
            hl7apy_parse(data.decode(codec), validation_level=tolerant, find_groups=True)
        return len(pairs)

    return [
        Bench(
            "hl7",
            "python-hl7 parse",
            "`hl7.parse(bytes.decode(codec))`",
            _timed(work.batch, python_hl7),
        ),
        Bench(
            "hl7apy",
            "hl7apy parse",
            "`parse_message(text, TOLERANT, find_groups=False)`",
            _timed(work.batch, hl7apy_flat),
        ),
        Bench(
            "hl7apy_g",
            "hl7apy parse + groups",
            "`parse_message(text, TOLERANT, find_groups=True)`",
            _timed(work.batch, hl7apy_groups),
        ),
    ]


def stage_benches(conv: Converter, work: Workload) -> list[Bench]:
    """Each pipeline stage alone, fed with the previous stages' output (made untimed).

    Mapping and checking see fresh messages each pass, as in the end-to-end rows; split,
    tokenise, JSON and the plain model keep no content-keyed state, so they are fed one
    pass's output again and again (making fresh Bundles for thousands of passes of a
    20 µs stage would take minutes)."""
    charset = conv.network.charset
    env, tz = conv.env, conv.settings.timezone

    def parsed(passes: int) -> list[Message]:
        return [parse_message(split_messages(d)[0], charset) for d in work.datas(passes)]

    def mapped(passes: int) -> list[dict[str, Any]]:
        return [
            conv.hl7v2.for_type(m.message_type).run(Hl7View(m), env, tz)[0] for m in parsed(passes)
        ]

    def once(make: Callable[[int], list[_T]]) -> Callable[[int], list[_T]]:
        return lambda passes: make(1) * passes

    def split(datas: list[bytes]) -> int:
        for d in datas:
            split_messages(d)
        return len(datas)

    def parse(raws: list[RawMessage]) -> int:
        for r in raws:
            parse_message(r, charset)
        return len(raws)

    def map_(messages: list[Message]) -> int:
        for m in messages:
            conv.hl7v2.for_type(m.message_type).run(Hl7View(m), env, tz)
        return len(messages)

    def check(bundles: list[dict[str, Any]]) -> int:
        for b in bundles:
            _check(b)
        return len(bundles)

    def serialise(bundles: list[dict[str, Any]]) -> int:
        for b in bundles:
            dump_json(b)
        return len(bundles)

    def full_model(bundles: list[dict[str, Any]]) -> int:
        for b in bundles:
            Bundle.model_validate(b)
        return len(bundles)

    def raws(passes: int) -> list[RawMessage]:
        return [split_messages(d)[0] for d in work.datas(passes)]

    return [
        Bench(
            "stage_split",
            "split",
            "`split_messages` (framing, segment split)",
            _timed(once(work.datas), split),
            group="stage",
        ),
        Bench(
            "stage_parse",
            "decode + tokenise",
            "`parse_message`",
            _timed(once(raws), parse),
            group="stage",
        ),
        Bench(
            "stage_map",
            "map",
            "`MessageMapping.run(Hl7View(msg))` → Bundle dict (fresh messages)",
            _timed(parsed, map_),
            group="stage",
        ),
        Bench(
            "stage_validate",
            "validate + reference check",
            f"`{_CHECK_NAME}` as the pipeline calls it (fresh Bundles; its caches warm)",
            _timed(mapped, check),
            group="stage",
        ),
        Bench(
            "stage_json",
            "JSON",
            "`dump_json(bundle)` (orjson, indent 2)",
            _timed(once(mapped), serialise),
            group="stage",
        ),
        Bench(
            "stage_full_model",
            "for reference: full R4B model",
            "`fhir.resources.R4B` "
            "`Bundle.model_validate(bundle)`, no cache (not part of the pipeline's sum)",
            _timed(once(mapped), full_model),
            group="stage-ref",
        ),
    ]


class BrightohirPeer(PeerWorker):
    """brightohir runs in its own virtual environment, driven over a pipe."""

    def __init__(self, python: Path, msgs: Sequence[Sample]) -> None:
        super().__init__(python, BENCH / "peer_brightohir.py", "brightohir")
        header = {"messages": [[base64.b64encode(s.data).decode(), s.codec] for s in msgs]}
        reply = self.ask(header)
        self.reports: list[dict[str, Any]] = reply["reports"]
        self.versions: dict[str, str] = reply["versions"]
        self.subset = [i for i, r in enumerate(self.reports) if r["ok"]]

    def run(self, passes: int) -> Timing:
        reply = self.ask({"run": passes, "subset": self.subset})
        return float(reply["wall"]), float(reply["cpu"]), int(reply["n"])


def setup_peers() -> None:
    """Make bench/.peers/brightohir with brightohir installed (bench/.peers is gitignored)."""
    if not (BRIGHTOHIR_VENV / "bin" / "python").exists():
        subprocess.run([sys.executable, "-m", "venv", str(BRIGHTOHIR_VENV)], check=True)
    pip = BRIGHTOHIR_VENV / "bin" / "pip"
    subprocess.run([str(pip), "install", "-q", BRIGHTOHIR_PIN], check=True)


# -- measuring ---------------------------------------------------------------------------


def calibrate(bench: Bench, target: float, warmup: float) -> None:
    """Warm up (at least one pass and ``warmup`` seconds), then size a measurement."""
    best = float("inf")
    spent = 0.0
    while True:
        wall, _, n = bench.run(1)
        bench.n = n
        best = min(best, wall)
        spent += wall
        if spent >= warmup:
            break
    bench.passes = max(1, round(target / best))
    bench.n *= bench.passes


def measure(benches: Sequence[Bench], rounds: int) -> None:
    """Every round runs every bench once; the order rotates so drift hits all alike."""
    for r in range(rounds):
        shift = r % len(benches)
        for bench in list(benches[shift:]) + list(benches[:shift]):
            wall, cpu, n = bench.run(bench.passes)
            bench.walls.append(n / wall)
            bench.cpus.append(cpu / wall)
        print(f"  round {r + 1}/{rounds} done", file=sys.stderr)


def cpu_ticks() -> tuple[int, int] | None:
    """(steal, total) jiffies of all CPUs from /proc/stat, when the kernel shows them."""
    try:
        first = Path("/proc/stat").read_text().splitlines()[0].split()
    except (OSError, IndexError):
        return None
    if first[0] != "cpu" or len(first) < 9:
        return None
    ticks = [int(x) for x in first[1:]]
    return ticks[7], sum(ticks[:8])


def paired_ratio(a: Bench, b: Bench) -> tuple[float, float, float]:
    """Median, min and max over rounds of a's rate / b's rate, round by round."""
    ratios = [x / y for x, y in zip(a.walls, b.walls, strict=True)]
    return statistics.median(ratios), min(ratios), max(ratios)


# -- profile -----------------------------------------------------------------------------


@dataclass
class ProfileRow:
    calls: str
    tottime: float  # µs per message
    cumtime: float  # µs per message
    where: str


@dataclass
class Profile:
    messages: int
    seconds: float
    by_tottime: list[ProfileRow]
    by_cumtime: list[ProfileRow]
    by_package: list[tuple[str, float]]  # share of total own time


def _where(key: tuple[str, int, str]) -> str:
    filename, line, func = key
    if filename == "~":
        return func  # built-in, e.g. {method 'split' of 'str' objects}
    marker = "site-packages/"
    if marker in filename:
        filename = filename.split(marker, 1)[1]
    elif filename.startswith(str(REPO)):
        filename = filename[len(str(REPO)) + 1 :]
    else:
        filename = Path(filename).name
    return f"{filename}:{line}({func})"


def _package(key: tuple[str, int, str]) -> str:
    filename = key[0]
    for marker, name in (
        ("/gateway/intake/hl7v2/_view.py", "gateway Hl7View (terser look-ups for the mapping)"),
        ("/gateway/intake/", "gateway.intake (split, decode, tokenise)"),
        ("/gateway/mapping/", "gateway.mapping (mapping engine)"),
        ("/gateway/validation/", "gateway.validation (reference walk, model call)"),
        ("/gateway/", "gateway (pipeline, other)"),
        ("/fhir_core/", "fhir_core (model validators)"),
        ("/fhir/resources/", "fhir.resources (R4B models)"),
        ("/pydantic/", "pydantic (Python side)"),
    ):
        if marker in filename:
            return name
    if "validate_python" in key[2]:
        return "pydantic-core (Rust validator)"
    if filename == "~":
        return "built-ins (str, dict, re, uuid, orjson, ...)"
    return "stdlib and others"


def profile_e2e(conv: Converter, datas: Sequence[bytes], top: int) -> Profile:
    profiler = cProfile.Profile()
    gc.collect()
    t0 = time.perf_counter()
    profiler.enable()
    for data in datas:
        conv.convert(data)
    profiler.disable()
    seconds = time.perf_counter() - t0
    n = len(datas)
    raw: dict[tuple[str, int, str], tuple[int, int, float, float, Any]]
    raw = pstats.Stats(profiler).stats  # type: ignore[attr-defined]
    rows = []
    packages: dict[str, float] = {}
    total = 0.0
    for key, (primitive, calls, tt, ct, _) in raw.items():
        shown = str(calls) if calls == primitive else f"{calls}/{primitive}"
        rows.append((key, ProfileRow(shown, tt / n * 1e6, ct / n * 1e6, _where(key))))
        packages[_package(key)] = packages.get(_package(key), 0.0) + tt
        total += tt
    by_tot = [r for _, r in sorted(rows, key=lambda kr: -kr[1].tottime)[:top]]
    by_cum = [r for _, r in sorted(rows, key=lambda kr: -kr[1].cumtime)[:top]]
    shares = sorted(((k, v / total) for k, v in packages.items()), key=lambda kv: -kv[1])
    return Profile(n, seconds, by_tot, by_cum, shares)


# -- the whole CLI process ---------------------------------------------------------------


@dataclass
class CliTiming:
    small: int  # messages in the small run
    big: int  # messages in the big run
    small_wall: float
    big_wall: float
    small_cpu: float
    big_cpu: float
    runs: int
    command: str

    @property
    def marginal(self) -> float:
        """Messages/s of the extra messages: start-up (imports, mappings) cancels out."""
        return (self.big - self.small) / (self.big_wall - self.small_wall)


def time_cli(work: Workload, runs: int, copies: int) -> CliTiming | None:
    gateway = Path(sys.executable).parent / "gateway"
    if not gateway.exists():
        return None
    msgs = work.samples
    with tempfile.TemporaryDirectory(prefix="bench-cli-") as tmp:
        root = Path(tmp)
        small, big = root / "small.hl7", root / "big.hl7"
        small.write_bytes(msgs[0].data)
        big.write_bytes(b"".join(work.datas(copies)))

        def once(path: Path) -> tuple[float, float]:
            out = root / "out"
            cmd = [
                str(gateway),
                "--home",
                str(root / "home"),
                "convert",
                "-q",
                str(path),
                "-o",
                f"{out}/",
            ]
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            t0 = time.perf_counter()
            subprocess.run(
                cmd,
                check=True,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                env={**os.environ, "GATEWAY_HOME": str(root / "home")},
            )
            wall = time.perf_counter() - t0
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
            subprocess.run(["rm", "-rf", str(out)], check=True)
            return wall, cpu

        once(small)  # warm the file cache
        smalls = [once(small) for _ in range(runs)]
        bigs = [once(big) for _ in range(runs)]
    return CliTiming(
        1,
        len(msgs) * copies,
        statistics.median(w for w, _ in smalls),
        statistics.median(w for w, _ in bigs),
        statistics.median(c for _, c in smalls),
        statistics.median(c for _, c in bigs),
        runs,
        ".venv/bin/gateway --home H convert -q FILE -o OUT/",
    )


# -- report ------------------------------------------------------------------------------


def _fmt_rate(x: float) -> str:
    return f"{x:,.0f}" if x >= 100 else f"{x:,.1f}"


def _times(x: float) -> str:
    return f"{x:.1f}×" if x < 10 else f"{x:.0f}×"


def _versions() -> list[tuple[str, str]]:
    out = []
    for name in (
        "fhir-gateway",
        "fhir.resources",
        "fhir-core",
        "pydantic",
        "pydantic-core",
        "orjson",
        "hl7",
        "hl7apy",
    ):
        try:
            out.append((name, package_version(name)))
        except PackageNotFoundError:
            out.append((name, "not installed"))
    return out


def _git() -> str:
    try:
        head = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(REPO), "status", "--porcelain", "--", "gateway", "mappings"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return f"{head} (gateway/ or mappings/ modified in the work tree)" if dirty else head


def _cpu() -> str:
    model, mhz, flags = "unknown", "", ""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or "unknown"
    fields: dict[str, str] = {}
    for line in info.splitlines():
        if ":" in line:
            k, v = (p.strip() for p in line.split(":", 1))
            fields.setdefault(k, v)
    model = fields.get("model name", model)
    if "cpu family" in fields:
        flags = f"family {fields['cpu family']} model {fields.get('model', '?')}"
    if "cpu MHz" in fields:
        mhz = f"{float(fields['cpu MHz']) / 1000:.2f} GHz"
    virt = " (virtual machine)" if " hypervisor" in fields.get("flags", "") else ""
    return ", ".join(x for x in (model, flags, mhz) if x) + virt


@dataclass
class Report:
    args: argparse.Namespace
    command: str
    started: str
    messages: MessageSet
    main: list[Bench]
    stages: list[Bench]
    extra: list[Bench]
    peer_note: str
    peer_versions: dict[str, str]
    peer_reports: list[tuple[str, dict[str, Any]]]
    profile: Profile | None
    cli: CliTiming | None
    seconds: float
    steal: float | None  # share of the machine's CPU time stolen by the hypervisor

    def bench(self, key: str) -> Bench | None:
        return next((b for b in self.main + self.stages + self.extra if b.key == key), None)

    def render(self) -> str:
        lines: list[str] = []
        add = lines.append
        m = self.messages
        common = m.common
        add("# Conversion benchmark: HL7 v2 → FHIR R4 transaction Bundle JSON")
        add("")
        add(
            f"Recorded {self.started} by `bench/bench_convert.py` in {self.seconds:.0f} s. "
            "Reproduce from the repository root (the venv has the `dev,bench` extras; "
            "`--setup-peers` once makes brightohir's own venv in `bench/.peers/`):"
        )
        add("")
        add("```sh")
        add(self.command)
        add("```")
        add("")
        add("## Machine and software")
        add("")
        add(
            f"- CPU: {_cpu()}; {os.cpu_count()} logical CPUs, "
            f"this process may run on {len(os.sched_getaffinity(0))}"
            + (f", pinned to CPU {self.args.pin}" if self.args.pin is not None else "")
            + ". Every timed loop runs in one thread."
        )
        add(
            f"- OS: {platform.system()} {platform.release()}; Python "
            f"{platform.python_version()} ({platform.python_implementation()})"
        )
        add(f"- gateway commit: {_git()}")
        add("- libraries: " + ", ".join(f"{n} {v}" for n, v in _versions()))
        if self.peer_versions:
            add(
                "- brightohir's own venv: "
                + ", ".join(f"{n} {v}" for n, v in self.peer_versions.items())
            )
        add("")
        add("## Messages")
        add("")
        add(
            f"- {len(m.files)} files ({', '.join(sorted({str(Path(f).parent) for f in m.files}))})"
            f": {m.found} messages after splitting; {m.duplicates} byte-identical to an earlier"
            " one dropped (`tests/golden/hl7v2/` copies `examples/hl7v2/`)."
        )
        failed = "; ".join(m.failed) if m.failed else "none"
        add(f"- Convert OK in the gateway: **{len(m.samples)}** (left out: {failed}).")
        skipped = [s for s in m.samples if s not in common]
        add(
            f"- Parsed by every in-process peer (python-hl7, hl7apy with and without groups): "
            f"**{len(common)}**; every row and ratio below is on these {len(common)} messages. "
            f"Left out ({len(skipped)}): "
            + ("; ".join(f"{s.name} ({s.problem})" for s in skipped) or "none")
            + "."
        )
        kinds: dict[str, int] = {}
        for s in common:
            kinds[s.message_type] = kinds.get(s.message_type, 0) + 1
        size = statistics.mean(len(s.data) for s in common) if common else 0
        add(
            f"- Types: {', '.join(f'{k} ×{v}' for k, v in sorted(kinds.items()))}; "
            f"mean size {size:,.0f} bytes; charsets "
            f"{', '.join(sorted({s.codec for s in common}))}."
        )
        stale = [s.name for s in common if not s.freshens]
        add(
            "- **Fresh messages.** The gateway memoises what recurs (resources built from the "
            "same segments, accepted values, checked subtrees), so converting the same bytes "
            "again measures its caches, not its conversion. Every gateway and in-process peer "
            "row therefore converts, in each pass, never-seen variants of these messages: "
            "`freshen()` appends a running number to the message control id (MSH-10), the "
            "patient's identifiers (PID-2/3/4/18/19), the visit number (PV1-19), the order, "
            "referral and accession numbers (ORC-2/3/4, OBR-2/3/18/19/20, RF1-6/11, "
            "IPC-1..4) and, in letters, to the patient's name, address and phone "
            "(PID-5/11/13), and sets the minutes/seconds or day of MSH-7, PID-7, ORC-9 and "
            "OBR-7 from it. Staff, organisations, codes and structure stay as they are, as "
            "in a real feed. Each variant was checked to convert, to a Bundle of its own: "
            + (
                f"all {len(common)} do."
                if not stale
                else f"{len(common) - len(stale)} do; used unchanged: {', '.join(stale)}."
            )
            + " The row *same messages again* shows what the caches give when everything "
            "recurs; brightohir gets the unchanged messages (it keeps no content caches)."
        )
        for note in m.notes:
            add(f"- Note: {note}")
        add("")
        add("## Method")
        add("")
        add(
            f"Single thread, same process (brightohir: its own process, driven over a pipe, "
            f"timed inside it). Each row is warmed up (≥ {self.args.warmup} s), then sized so one "
            f"measurement lasts about {self.args.target} s (several passes over the message "
            f"list), then measured {self.args.rounds} times, rows interleaved round by round "
            "with a rotating order. Rates are messages / wall-clock second "
            "(`time.perf_counter`); *spread* is (max − min) / median over the rounds; *CPU* is "
            "process CPU time / wall time (below 100 % means the process was waiting for the "
            "core). Ratios are taken round by round (paired) and their median is shown. The "
            "garbage collector stays on, as in production, and is run before each measurement."
            + (
                f" CPU time stolen by the hypervisor during the measured rounds: {self.steal:.1%}."
                if self.steal is not None
                else ""
            )
            + " On a shared virtual machine the speed drifts from minute to minute (the spread "
            "column shows by how much): trust the medians and the paired ratios, not one round."
        )
        add("")
        add("## Results")
        add("")
        add("| row | what is timed | msgs/s (median) | min – max | spread | µs/msg | CPU |")
        add("| --- | --- | ---: | ---: | ---: | ---: | ---: |")
        for b in self.main + self.extra:
            add(
                f"| {b.label} | {b.what} | **{_fmt_rate(b.median)}** | "
                f"{_fmt_rate(min(b.walls))} – {_fmt_rate(max(b.walls))} | {b.spread:.0%} | "
                f"{1e6 / b.median:,.0f} | {statistics.median(b.cpus):.0%} |"
            )
        add("")
        if self.peer_note:
            add(self.peer_note)
            add("")
        add("### Ratios (throughput of A ÷ throughput of B, paired by round)")
        add("")
        add("| A | B | A/B (median) | min – max | reading |")
        add("| --- | --- | ---: | ---: | --- |")
        pairs = [
            ("gw_e2e", "hl7"),
            ("gw_e2e", "hl7apy"),
            ("gw_e2e", "hl7apy_g"),
            ("gw_e2e", "bo"),
            ("gw_noval", "bo"),
            ("gw_parse", "hl7"),
            ("gw_parse", "hl7apy"),
            ("gw_parse", "hl7apy_g"),
            ("gw_parse", "bo"),
            ("gw_e2e", "gw_noval"),
            ("gw_e2e", "gw_parse"),
        ]
        for ka, kb in pairs:
            ra, rb = self.bench(ka), self.bench(kb)
            if ra is None or rb is None:
                continue
            med, lo, hi = paired_ratio(ra, rb)
            reading = f"A is {_times(med)} faster" if med >= 1 else f"A is {_times(1 / med)} slower"
            add(f"| {ra.label} | {rb.label} | {med:.3g} | {lo:.3g} – {hi:.3g} | {reading} |")
        add("")
        if self.stages:
            add("### Where one message's time goes (each stage timed alone)")
            add("")
            add("| stage | what is timed | µs/msg (median) | share of the stages' sum |")
            add("| --- | --- | ---: | ---: |")
            pipeline = [b for b in self.stages if b.group == "stage"]
            total = sum(1e6 / b.median for b in pipeline)
            for b in pipeline:
                us = 1e6 / b.median
                add(f"| {b.label} | {b.what} | {us:,.0f} | {us / total:.0%} |")
            e2e = self.bench("gw_e2e")
            add(
                f"| **sum** | | **{total:,.0f}** | "
                + (f"end to end measured: {1e6 / e2e.median:,.0f} µs/msg |" if e2e else "|")
            )
            for b in self.stages:
                if b.group != "stage":
                    add(f"| *{b.label}* | {b.what} | *{1e6 / b.median:,.0f}* | |")
            add("")
        if self.profile is not None:
            self._render_profile(add)
        if self.cli is not None:
            c = self.cli
            add("## The whole process: `gateway convert`")
            add("")
            add(
                f"`{c.command}`, {c.runs} runs of each input after one warm-up run; median "
                "wall time, CPU time from `getrusage` of the child. FILE holds one message, or "
                f"{c.big // max(1, len(common))} fresh variants of each of the {len(common)} "
                "messages; one Bundle file is written per message."
            )
            add("")
            add("| input | messages | wall s | CPU s | msgs/s |")
            add("| --- | ---: | ---: | ---: | ---: |")
            add(
                f"| one message | {c.small} | {c.small_wall:.2f} | {c.small_cpu:.2f} | "
                f"{c.small / c.small_wall:.1f} |"
            )
            add(
                f"| batch | {c.big} | {c.big_wall:.2f} | {c.big_cpu:.2f} | "
                f"{c.big / c.big_wall:.0f} |"
            )
            add(
                f"| batch − one (start-up cancels out) | {c.big - c.small} | "
                f"{c.big_wall - c.small_wall:.2f} | {c.big_cpu - c.small_cpu:.2f} | "
                f"**{c.marginal:.0f}** |"
            )
            add("")
            add(
                f"Start-up (interpreter, imports of fhir.resources and pydantic, loading and "
                f"compiling the mappings) costs about {c.small_wall:.2f} s per process; a "
                "long-running process (the API, or one `convert` over many files) pays it once."
            )
            add("")
        add("## Interpretation")
        add("")
        for paragraph in self._interpret():
            add(paragraph)
            add("")
        return "\n".join(lines).rstrip() + "\n"

    def _render_profile(self, add: Callable[[str], None]) -> None:
        p = self.profile
        assert p is not None
        common = self.messages.common
        add("## Profile of the end-to-end path")
        add("")
        add(
            f"cProfile of `Converter.convert` over fresh variants of the {len(common)} "
            f"messages, {p.messages} conversions in {p.seconds:.1f} s (the profiler itself "
            "slows Python code down, by about 2× here: read the shares, not the absolute times). "
            "Times are µs per message."
        )
        add("")
        add("Own time by package:")
        add("")
        add("| package | share of own time |")
        add("| --- | ---: |")
        for name, share in p.by_package:
            if share >= 0.005:
                add(f"| {name} | {share:.0%} |")
        add("")
        for title, rows in (("cumulative", p.by_cumtime), ("own time (tottime)", p.by_tottime)):
            add(f"Top {len(rows)} by {title}:")
            add("")
            add("| calls | own µs/msg | cum. µs/msg | function |")
            add("| ---: | ---: | ---: | --- |")
            for r in rows:
                add(f"| {r.calls} | {r.tottime:,.0f} | {r.cumtime:,.0f} | `{r.where}` |")
            add("")

    def _interpret(self) -> list[str]:
        out: list[str] = []
        e2e, noval, parse = self.bench("gw_e2e"), self.bench("gw_noval"), self.bench("gw_parse")
        if e2e is None or noval is None or parse is None:
            return out
        rate = e2e.median
        verdict = (
            f"**met** ({rate / GOAL:.1f}× the goal)"
            if rate >= GOAL
            else f"**not met**: {rate / GOAL:.0%} of it; a {GOAL / rate:.1f}× speed-up is needed"
        )
        out.append(
            f"- **Goal (≥ {GOAL:,.0f} messages/s per core end to end):** {verdict}. The gateway "
            f"converts {_fmt_rate(rate)} messages/s, {1e6 / rate:,.0f} µs per message, against "
            f"a budget of {1e6 / GOAL:,.0f} µs."
        )
        repeat = self.bench("gw_repeat")
        if repeat is not None:
            out.append(
                f"- **Fresh versus repeated messages:** converting the very same messages again "
                f"runs at {_fmt_rate(repeat.median)} messages/s "
                f"({paired_ratio(repeat, e2e)[0]:.2g}× the fresh rate): that is what the "
                "content-keyed caches give when everything recurs, an upper bound, not a "
                "feed's throughput. The goal is judged on fresh messages."
            )
        val_share = 1 - rate / noval.median
        out.append(
            f"- **Validation** (the R4B models, as `check_bundle` applies them) takes "
            f"{val_share:.0%} of the end-to-end time: without it the gateway converts "
            f"{_fmt_rate(noval.median)} messages/s"
            + (", still short of the goal." if noval.median < GOAL else ", above the goal.")
        )
        pipeline = [b for b in self.stages if b.group == "stage"]
        if pipeline:
            total = sum(1e6 / b.median for b in pipeline)
            ranked = sorted(pipeline, key=lambda b: b.median)
            shares = ", ".join(
                f"{b.label} {1e6 / b.median:,.0f} µs ({1e6 / b.median / total:.0%})" for b in ranked
            )
            out.append(f"- **Stages, largest first:** {shares}.")
            cost = {b.key: 1e6 / b.median for b in self.stages}
            mapping, validation = cost.get("stage_map", 0.0), cost.get("stage_validate", 0.0)
            rest = total - mapping - validation
            budget = 1e6 / GOAL
            if total > budget:
                need_map, need_val = mapping + rest > budget, validation + rest > budget
                if need_map and need_val:
                    what = (
                        "mapping and validation each exceed it with the small stages, so "
                        "both have to get faster."
                    )
                elif need_map:
                    what = (
                        "even with validation free, mapping and the small stages exceed it: "
                        f"mapping has to get about {mapping / (budget - rest - validation):.1f}"
                        "× faster at today's validation cost, or more."
                        if budget - rest - validation > 0
                        else "even with validation free, mapping and the small stages exceed "
                        "it: mapping has to get faster first, then validation."
                    )
                elif need_val:
                    what = "validation and the small stages exceed it: validation must shrink."
                else:
                    what = "each fits alone but not together: both must shrink somewhat."
                out.append(
                    f"- **What the goal takes:** {budget:,.0f} µs per message for everything. "
                    f"Mapping ({mapping:,.0f} µs) and validation ({validation:,.0f} µs) are "
                    f"{(mapping + validation) / total:.0%} of the stages' sum; the rest "
                    f"(split, tokenise, JSON) is {rest:,.0f} µs; {what}"
                )
            full = cost.get("stage_full_model")
            if full and validation:
                out.append(
                    f"- **Validation cost in context:** a plain `Bundle.model_validate` of the "
                    f"same Bundles costs {full:,.0f} µs per message; the pipeline's check "
                    f"(`check_bundle`) costs {validation:,.0f} µs ({full / validation:.1f}× less)."
                )
        parse_share = (1e6 / parse.median) / (1e6 / rate)
        out.append(
            f"- **Parsing is not the bottleneck:** the gateway's ER7 parse runs at "
            f"{_fmt_rate(parse.median)} messages/s, {parse_share:.1%} of the end-to-end time."
        )
        peers = [
            b
            for b in (self.bench("hl7"), self.bench("hl7apy"), self.bench("hl7apy_g"))
            if b is not None
        ]
        if peers:
            parts = []
            for b in peers:
                ratio = paired_ratio(parse, b)[0]
                faster = f"{_times(ratio)} faster" if ratio >= 1 else f"{_times(1 / ratio)} slower"
                parts.append(
                    f"{b.label} {_fmt_rate(b.median)} msgs/s (the gateway's parse is {faster}; "
                    f"its end-to-end conversion runs at {paired_ratio(e2e, b)[0]:.2g}× that rate)"
                )
            txt = "; ".join(parts)
            out.append(f"- **Peer parsers** (parse only, no FHIR): {txt}.")
        if self.cli is not None:
            c = self.cli
            out.append(
                f"- **As a process,** `gateway convert` starts in {c.small_wall:.1f} s (imports "
                f"and mapping compilation) and then converts {c.marginal:.0f} messages/s, "
                "writing one file per Bundle; start-up matters for one-message invocations only."
            )
        bo = self.bench("bo")
        if bo is not None:
            out.append(
                f"- **Peer converter:** brightohir (hl7apy parse + its own segment converters "
                f"to FHIR R5, no validation) runs at {_fmt_rate(bo.median)} messages/s; the "
                f"gateway end to end *with* validation is "
                f"{paired_ratio(e2e, bo)[0]:.2g}× that rate, without validation "
                f"{paired_ratio(noval, bo)[0]:.2g}×."
            )
        return out


# -- main --------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--rounds", type=int, default=9, help="measured rounds per row (default 9)")
    p.add_argument(
        "--target",
        type=float,
        default=0.3,
        help="seconds one measurement should last (default 0.3)",
    )
    p.add_argument(
        "--warmup",
        type=float,
        default=0.3,
        help="seconds of warm-up per row, at least one pass (default 0.3)",
    )
    p.add_argument(
        "--out",
        default=str(BENCH / "RESULTS.md"),
        help="results file (default bench/RESULTS.md; '-' for none)",
    )
    p.add_argument(
        "--corpus",
        type=Path,
        default=REPO.parent / "shared" / "corpus" / "hl7v2",
        help="the shared corpus' HL7 v2 folder (default ../shared/corpus/hl7v2)",
    )
    p.add_argument(
        "--home",
        type=Path,
        default=None,
        help="GATEWAY_HOME for the converter (default: a temporary folder)",
    )
    p.add_argument("--pin", type=int, default=None, help="pin the process to this CPU number")
    p.add_argument("--no-stages", action="store_true", help="skip the per-stage rows")
    p.add_argument("--no-profile", action="store_true", help="skip the cProfile run")
    p.add_argument(
        "--profile-seconds",
        type=float,
        default=3.0,
        help="about how long the profiled run lasts (default 3)",
    )
    p.add_argument("--top", type=int, default=15, help="profile rows shown (default 15)")
    p.add_argument(
        "--cli-runs",
        type=int,
        default=3,
        help="runs of the whole `gateway convert` process (0 to skip; default 3)",
    )
    p.add_argument(
        "--cli-copies",
        type=int,
        default=20,
        help="copies of the message set in the CLI's batch file (default 20)",
    )
    p.add_argument("--no-peer-converter", action="store_true", help="skip brightohir")
    p.add_argument(
        "--setup-peers",
        action="store_true",
        help=f"first make {_rel(BRIGHTOHIR_VENV)} with {BRIGHTOHIR_PIN}",
    )
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    started = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    t_start = time.perf_counter()
    if args.pin is not None:
        os.sched_setaffinity(0, {args.pin})  # inherited by the brightohir worker
    if args.setup_peers:
        setup_peers()

    with tempfile.TemporaryDirectory(prefix="bench-home-") as tmp:
        home = args.home or Path(tmp)
        settings = Settings.load(home=home, env={})
        conv = Converter(settings)
        novalidate = Converter(dataclasses.replace(settings, validate=False))
        messages = collect_messages(conv, args.corpus)
        common = messages.common
        print(
            f"{len(messages.samples)} messages convert OK ({messages.duplicates} duplicates "
            f"dropped, {len(messages.failed)} failing left out); {len(common)} parse in every "
            "peer and are benchmarked",
            file=sys.stderr,
        )
        if not common:
            print("error: no message to benchmark", file=sys.stderr)
            return 1

        check_freshening(conv, messages.samples)
        fresh, repeated = Workload(common, fresh=True), Workload(common, fresh=False)
        gateway_rows = gateway_benches(conv, novalidate, fresh, repeated)
        main_rows = [b for b in gateway_rows if b.group == "main"] + peer_benches(fresh)
        extra_rows = [b for b in gateway_rows if b.group != "main"]
        if len(messages.samples) != len(common):
            everything = gateway_benches(
                conv, novalidate, Workload(messages.samples, fresh=True), repeated
            )[0]
            everything.key, everything.group = "gw_e2e_all", "extra"
            everything.label = f"gateway end to end, all {len(messages.samples)} OK messages"
            everything.what = "as the first row, on every message that converts"
            extra_rows.append(everything)
        stages = [] if args.no_stages else stage_benches(conv, fresh)

        peer: BrightohirPeer | None = None
        peer_note, peer_versions, peer_reports = "", {}, []
        python = BRIGHTOHIR_VENV / "bin" / "python"
        if args.no_peer_converter:
            peer_note = "brightohir (peer converter) skipped: --no-peer-converter."
        elif not python.exists():
            peer_note = (
                f"brightohir (peer converter) skipped: {_rel(BRIGHTOHIR_VENV)} does not "
                "exist; run once with --setup-peers."
            )
            print(f"note: {peer_note}", file=sys.stderr)
        else:
            peer = BrightohirPeer(python, common)
            peer_versions = peer.versions
            peer_reports = [(s.name, r) for s, r in zip(common, peer.reports, strict=True)]
            main_rows.append(
                Bench(
                    "bo",
                    "brightohir v2 → R5 (peer converter)",
                    "`V2Converter().convert(text)` + `json.dumps`; no validation",
                    peer.run,
                )
            )
            peer_note = _brightohir_note(peer_reports, common)

        benches = main_rows + extra_rows + stages
        print("warming up and sizing ...", file=sys.stderr)
        for bench in benches:
            calibrate(bench, args.target, args.warmup)
            print(f"  {bench.label}: {bench.passes} passes per measurement", file=sys.stderr)
        ticks0 = cpu_ticks()
        measure(benches, args.rounds)
        ticks1 = cpu_ticks()
        steal = (
            (ticks1[0] - ticks0[0]) / max(1, ticks1[1] - ticks0[1])
            if ticks0 is not None and ticks1 is not None
            else None
        )
        if peer is not None:
            peer.close()

        profile = None
        if not args.no_profile:
            e2e = benches[0]
            passes = max(1, round(args.profile_seconds / 2 * e2e.median / len(common)))
            profile = profile_e2e(conv, fresh.datas(passes), args.top)
        cli = time_cli(fresh, args.cli_runs, args.cli_copies) if args.cli_runs > 0 else None

    command = ".venv/bin/python bench/bench_convert.py " + " ".join(
        a for a in (argv if argv is not None else sys.argv[1:]) if a != "--setup-peers"
    )
    report = Report(
        args,
        command.strip(),
        started,
        messages,
        main_rows,
        stages,
        extra_rows,
        peer_note,
        peer_versions,
        peer_reports,
        profile,
        cli,
        time.perf_counter() - t_start,
        steal,
    )
    text = report.render()
    print(text)
    if args.out != "-":
        out = Path(args.out)
        # Keep the imaging benchmark's section (bench/bench_imaging.py writes it).
        old = out.read_text(encoding="utf-8") if out.exists() else ""
        begin = old.find("<!-- imaging benchmark: begin")
        end_marker = "<!-- imaging benchmark: end -->"
        end = old.find(end_marker)
        if 0 <= begin < end:
            text = text.rstrip() + "\n\n" + old[begin : end + len(end_marker)] + "\n"
        out.write_text(text, encoding="utf-8")
        print(f"results written to {args.out}", file=sys.stderr)
    return 0


def _brightohir_note(reports: Sequence[tuple[str, dict[str, Any]]], msgs: Sequence[Sample]) -> str:
    ok = [r for _, r in reports if r["ok"]]
    via = sum(1 for r in ok if r["hl7apy"])
    valid = sum(1 for r in ok if r["valid_r5"])
    failed = [f"{n} ({r['error']})" for n, r in reports if not r["ok"]]
    errors: dict[str, int] = {}
    for r in ok:
        if not r["valid_r5"]:
            errors[r["error"]] = errors.get(r["error"], 0) + 1
    common = max(errors, key=lambda e: errors[e]) if errors else ""
    theirs = statistics.mean(r.get("resources", 0) for r in ok) if ok else 0.0
    ours = statistics.mean(s.resources for s in msgs) if msgs else 0.0
    return (
        f"brightohir converted {len(ok)} of {len(reports)} messages "
        f"({via} through hl7apy, {len(ok) - via} through its silent fallback parser)"
        + (f"; failed: {'; '.join(failed)}" if failed else "")
        + ". brightohir does not validate what it returns; checked once, untimed, against "
        f"the fhir.resources R5 models, {valid} of {len(ok)} of its Bundles are valid"
        + (f" (most common first error: `{common}`)" if common else "")
        + f". Its Bundles (type `message`, random uuid4 ids) hold {theirs:.1f} resources on "
        f"average, the gateway's transaction Bundles {ours:.1f}, so the two rows do not do the "
        "same amount of work: compare orders of magnitude, not small factors."
    )


if __name__ == "__main__":
    sys.exit(main())
