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
import json
import os
import platform
import pstats
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
from typing import IO, Any

import hl7  # type: ignore[import-untyped]  # python-hl7
from hl7apy.consts import VALIDATION_LEVEL  # type: ignore[import-untyped]
from hl7apy.parser import parse_message as hl7apy_parse  # type: ignore[import-untyped]

from gateway.config import Settings
from gateway.intake.hl7v2 import Hl7View, RawMessage, parse_message, split_messages
from gateway.mapping import MessageMapping
from gateway.pipeline import Converter, dump_json
from gateway.validation import check_references, validate_bundle

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


def _in_process(one_pass: Callable[[], int]) -> Callable[[int], Timing]:
    def run(passes: int) -> Timing:
        gc.collect()
        done = 0
        c0, t0 = time.process_time(), time.perf_counter()
        for _ in range(passes):
            done += one_pass()
        return time.perf_counter() - t0, time.process_time() - c0, done

    return run


def gateway_benches(conv: Converter, novalidate: Converter, msgs: Sequence[Sample]) -> list[Bench]:
    datas = [s.data for s in msgs]
    charset = conv.network.charset

    def e2e(c: Converter) -> Callable[[], int]:
        def one_pass() -> int:
            for data in datas:
                c.convert(data)
            return len(datas)

        return one_pass

    def parse_only() -> int:
        for data in datas:
            for raw in split_messages(data):
                parse_message(raw, charset)
        return len(datas)

    return [
        Bench(
            "gw_e2e", "gateway end to end", "`Converter.convert(bytes)`: split, decode, tokenise, "
            "map, reference check, R4B validation, JSON", _in_process(e2e(conv)),
        ),
        Bench(
            "gw_noval", "gateway end to end, validation off", "the same with "
            "`Settings.validate = False`", _in_process(e2e(novalidate)),
        ),
        Bench(
            "gw_parse", "gateway ER7 parse only", "`split_messages` + `parse_message` "
            "(charset decode + tokenise)", _in_process(parse_only),
        ),
    ]


def peer_benches(msgs: Sequence[Sample]) -> list[Bench]:
    pairs = [(s.data, s.codec) for s in msgs]
    tolerant = VALIDATION_LEVEL.TOLERANT

    def python_hl7() -> int:
        for data, codec in pairs:
            hl7.parse(data.decode(codec))
        return len(pairs)

    def hl7apy_flat() -> int:
        for data, codec in pairs:
            hl7apy_parse(data.decode(codec), validation_level=tolerant, find_groups=False)
        return len(pairs)

    def hl7apy_groups() -> int:
        for data, codec in pairs:
            hl7apy_parse(data.decode(codec), validation_level=tolerant, find_groups=True)
        return len(pairs)

    return [
        Bench("hl7", "python-hl7 parse", "`hl7.parse(bytes.decode(codec))`",
              _in_process(python_hl7)),
        Bench("hl7apy", "hl7apy parse", "`parse_message(text, TOLERANT, find_groups=False)`",
              _in_process(hl7apy_flat)),
        Bench("hl7apy_g", "hl7apy parse + groups",
              "`parse_message(text, TOLERANT, find_groups=True)`", _in_process(hl7apy_groups)),
    ]


def stage_benches(conv: Converter, msgs: Sequence[Sample]) -> list[Bench]:
    """Each pipeline stage on its own, fed with the previous stage's output (made once)."""
    datas = [s.data for s in msgs]
    charset = conv.network.charset
    raws: list[RawMessage] = [split_messages(d)[0] for d in datas]
    parsed = [parse_message(r, charset) for r in raws]
    mappings: list[MessageMapping] = [conv.hl7v2.for_type(m.message_type) for m in parsed]
    env, tz = conv.env, conv.settings.timezone
    bundles = [mp.run(Hl7View(m), env, tz)[0] for mp, m in zip(mappings, parsed, strict=True)]

    def split() -> int:
        for d in datas:
            split_messages(d)
        return len(datas)

    def parse() -> int:
        for r in raws:
            parse_message(r, charset)
        return len(raws)

    def map_() -> int:
        for mp, m in zip(mappings, parsed, strict=True):
            mp.run(Hl7View(m), env, tz)
        return len(parsed)

    def refs() -> int:
        for b in bundles:
            check_references(b)
        return len(bundles)

    def validate() -> int:
        for b in bundles:
            validate_bundle(b)
        return len(bundles)

    def serialise() -> int:
        for b in bundles:
            dump_json(b)
        return len(bundles)

    stages = [
        ("split", "`split_messages` (framing, segment split)", split),
        ("decode + tokenise", "`parse_message`", parse),
        ("map", "`MessageMapping.run(Hl7View(msg))` → Bundle dict", map_),
        ("reference check", "`check_references(bundle)`", refs),
        ("R4B validation", "`validate_bundle(bundle)` (`Bundle.model_validate`)", validate),
        ("JSON", "`dump_json(bundle)` (orjson, indent 2)", serialise),
    ]
    return [
        Bench(f"stage_{n}", label, what, _in_process(fn), group="stage")
        for n, (label, what, fn) in enumerate(stages)
    ]


class BrightohirPeer:
    """brightohir runs in its own virtual environment, driven over a pipe."""

    def __init__(self, python: Path, msgs: Sequence[Sample]) -> None:
        self.proc = subprocess.Popen(
            [str(python), str(BENCH / "peer_brightohir.py")],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=BENCH,
        )
        header = {"messages": [[base64.b64encode(s.data).decode(), s.codec] for s in msgs]}
        reply = self._ask(header)
        self.reports: list[dict[str, Any]] = reply["reports"]
        self.versions: dict[str, str] = reply["versions"]
        self.subset = [i for i, r in enumerate(self.reports) if r["ok"]]

    def _ask(self, request: dict[str, Any]) -> dict[str, Any]:
        stdin, stdout = self._pipes()
        stdin.write(json.dumps(request) + "\n")
        stdin.flush()
        line = stdout.readline()
        if not line:
            raise RuntimeError("the brightohir worker stopped (see its error output above)")
        answer: dict[str, Any] = json.loads(line)
        return answer

    def _pipes(self) -> tuple[IO[str], IO[str]]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        return self.proc.stdin, self.proc.stdout

    def run(self, passes: int) -> Timing:
        reply = self._ask({"run": passes, "subset": self.subset})
        return float(reply["wall"]), float(reply["cpu"]), int(reply["n"])

    def close(self) -> None:
        stdin, _ = self._pipes()
        stdin.close()
        self.proc.wait(timeout=30)


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


def profile_e2e(conv: Converter, msgs: Sequence[Sample], passes: int, top: int) -> Profile:
    datas = [s.data for s in msgs]
    profiler = cProfile.Profile()
    gc.collect()
    t0 = time.perf_counter()
    profiler.enable()
    for _ in range(passes):
        for data in datas:
            conv.convert(data)
    profiler.disable()
    seconds = time.perf_counter() - t0
    n = passes * len(datas)
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


def time_cli(msgs: Sequence[Sample], runs: int, copies: int) -> CliTiming | None:
    gateway = Path(sys.executable).parent / "gateway"
    if not gateway.exists():
        return None
    with tempfile.TemporaryDirectory(prefix="bench-cli-") as tmp:
        root = Path(tmp)
        small, big = root / "small.hl7", root / "big.hl7"
        small.write_bytes(msgs[0].data)
        big.write_bytes(b"".join(s.data for s in msgs) * copies)

        def once(path: Path) -> tuple[float, float]:
            out = root / "out"
            cmd = [str(gateway), "--home", str(root / "home"), "convert", "-q", str(path),
                   "-o", f"{out}/"]
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            t0 = time.perf_counter()
            subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                           env={**os.environ, "GATEWAY_HOME": str(root / "home")})
            wall = time.perf_counter() - t0
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
            subprocess.run(["rm", "-rf", str(out)], check=True)
            return wall, cpu

        once(small)  # warm the file cache
        smalls = [once(small) for _ in range(runs)]
        bigs = [once(big) for _ in range(runs)]
    return CliTiming(
        1, len(msgs) * copies,
        statistics.median(w for w, _ in smalls), statistics.median(w for w, _ in bigs),
        statistics.median(c for _, c in smalls), statistics.median(c for _, c in bigs),
        runs, ".venv/bin/gateway --home H convert -q FILE -o OUT/",
    )


# -- report ------------------------------------------------------------------------------


def _fmt_rate(x: float) -> str:
    return f"{x:,.0f}" if x >= 100 else f"{x:,.1f}"


def _times(x: float) -> str:
    return f"{x:.1f}×" if x < 10 else f"{x:.0f}×"


def _versions() -> list[tuple[str, str]]:
    out = []
    for name in ("fhir-gateway", "fhir.resources", "fhir-core", "pydantic", "pydantic-core",
                 "orjson", "hl7", "hl7apy"):
        try:
            out.append((name, package_version(name)))
        except PackageNotFoundError:
            out.append((name, "not installed"))
    return out


def _git() -> str:
    try:
        head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(REPO), "status", "--porcelain", "--", "gateway", "mappings"],
            capture_output=True, text=True, check=True,
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

    def bench(self, key: str) -> Bench | None:
        return next((b for b in self.main + self.stages + self.extra if b.key == key), None)

    def render(self) -> str:
        lines: list[str] = []
        add = lines.append
        m = self.messages
        common = m.common
        add("# Conversion benchmark: HL7 v2 → FHIR R4 transaction Bundle JSON")
        add("")
        add(f"Recorded {self.started} by `bench/bench_convert.py` in {self.seconds:.0f} s. "
            "Reproduce from the repository root (the venv has the `dev,bench` extras; "
            "`--setup-peers` once makes brightohir's own venv in `bench/.peers/`):")
        add("")
        add("```sh")
        add(self.command)
        add("```")
        add("")
        add("## Machine and software")
        add("")
        add(f"- CPU: {_cpu()}; {os.cpu_count()} logical CPUs, "
            f"this process may run on {len(os.sched_getaffinity(0))}"
            + (f", pinned to CPU {self.args.pin}" if self.args.pin is not None else "")
            + ". Every timed loop runs in one thread.")
        add(f"- OS: {platform.system()} {platform.release()}; Python "
            f"{platform.python_version()} ({platform.python_implementation()})")
        add(f"- gateway commit: {_git()}")
        add("- libraries: " + ", ".join(f"{n} {v}" for n, v in _versions()))
        if self.peer_versions:
            add("- brightohir's own venv: "
                + ", ".join(f"{n} {v}" for n, v in self.peer_versions.items()))
        add("")
        add("## Messages")
        add("")
        add(f"- {len(m.files)} files ({', '.join(sorted({str(Path(f).parent) for f in m.files}))})"
            f": {m.found} messages after splitting; {m.duplicates} byte-identical to an earlier"
            " one dropped (`tests/golden/hl7v2/` copies `examples/hl7v2/`).")
        failed = "; ".join(m.failed) if m.failed else "none"
        add(f"- Convert OK in the gateway: **{len(m.samples)}** (left out: {failed}).")
        skipped = [s for s in m.samples if s not in common]
        add(f"- Parsed by every in-process peer (python-hl7, hl7apy with and without groups): "
            f"**{len(common)}**; every row and ratio below is on these {len(common)} messages. "
            f"Left out ({len(skipped)}): "
            + ("; ".join(f"{s.name} ({s.problem})" for s in skipped) or "none") + ".")
        kinds: dict[str, int] = {}
        for s in common:
            kinds[s.message_type] = kinds.get(s.message_type, 0) + 1
        size = statistics.mean(len(s.data) for s in common) if common else 0
        add(f"- Types: {', '.join(f'{k} ×{v}' for k, v in sorted(kinds.items()))}; "
            f"mean size {size:,.0f} bytes; charsets "
            f"{', '.join(sorted({s.codec for s in common}))}.")
        for note in m.notes:
            add(f"- Note: {note}")
        add("")
        add("## Method")
        add("")
        add(f"Single thread, same process (brightohir: its own process, driven over a pipe, "
            f"timed inside it). Each row is warmed up (≥ {self.args.warmup} s), then sized so one "
            f"measurement lasts about {self.args.target} s (several passes over the message "
            f"list), then measured {self.args.rounds} times, rows interleaved round by round "
            "with a rotating order. Rates are messages / wall-clock second "
            "(`time.perf_counter`); *spread* is (max − min) / median over the rounds; *CPU* is "
            "process CPU time / wall time (below 100 % means the process was waiting for the "
            "core). Ratios are taken round by round (paired) and their median is shown. The "
            "garbage collector stays on, as in production, and is run before each measurement.")
        add("")
        add("## Results")
        add("")
        add("| row | what is timed | msgs/s (median) | min – max | spread | µs/msg | CPU |")
        add("| --- | --- | ---: | ---: | ---: | ---: | ---: |")
        for b in self.main + self.extra:
            add(f"| {b.label} | {b.what} | **{_fmt_rate(b.median)}** | "
                f"{_fmt_rate(min(b.walls))} – {_fmt_rate(max(b.walls))} | {b.spread:.0%} | "
                f"{1e6 / b.median:,.0f} | {statistics.median(b.cpus):.0%} |")
        add("")
        if self.peer_note:
            add(self.peer_note)
            add("")
        add("### Ratios (throughput of A ÷ throughput of B, paired by round)")
        add("")
        add("| A | B | A/B (median) | min – max | reading |")
        add("| --- | --- | ---: | ---: | --- |")
        pairs = [
            ("gw_e2e", "hl7"), ("gw_e2e", "hl7apy"), ("gw_e2e", "hl7apy_g"), ("gw_e2e", "bo"),
            ("gw_noval", "bo"),
            ("gw_parse", "hl7"), ("gw_parse", "hl7apy"), ("gw_parse", "hl7apy_g"),
            ("gw_parse", "bo"),
            ("gw_e2e", "gw_noval"), ("gw_e2e", "gw_parse"),
        ]
        for ka, kb in pairs:
            ra, rb = self.bench(ka), self.bench(kb)
            if ra is None or rb is None:
                continue
            med, lo, hi = paired_ratio(ra, rb)
            reading = (f"A is {_times(med)} faster" if med >= 1
                       else f"A is {_times(1 / med)} slower")
            add(f"| {ra.label} | {rb.label} | {med:.3g} | {lo:.3g} – {hi:.3g} | {reading} |")
        add("")
        if self.stages:
            add("### Where one message's time goes (each stage timed alone)")
            add("")
            add("| stage | what is timed | µs/msg (median) | share of the stages' sum |")
            add("| --- | --- | ---: | ---: |")
            total = sum(1e6 / b.median for b in self.stages)
            for b in self.stages:
                us = 1e6 / b.median
                add(f"| {b.label} | {b.what} | {us:,.0f} | {us / total:.0%} |")
            e2e = self.bench("gw_e2e")
            add(f"| **sum** | | **{total:,.0f}** | "
                + (f"end to end measured: {1e6 / e2e.median:,.0f} µs/msg |" if e2e else "|"))
            add("")
        if self.profile is not None:
            self._render_profile(add)
        if self.cli is not None:
            c = self.cli
            add("## The whole process: `gateway convert`")
            add("")
            add(f"`{c.command}`, {c.runs} runs of each input after one warm-up run; median "
                "wall time, CPU time from `getrusage` of the child. FILE holds one message, or "
                f"the {len(common)} messages repeated {c.big // max(1, len(common))} times; one "
                "Bundle file is written per message.")
            add("")
            add("| input | messages | wall s | CPU s | msgs/s |")
            add("| --- | ---: | ---: | ---: | ---: |")
            add(f"| one message | {c.small} | {c.small_wall:.2f} | {c.small_cpu:.2f} | "
                f"{c.small / c.small_wall:.1f} |")
            add(f"| batch | {c.big} | {c.big_wall:.2f} | {c.big_cpu:.2f} | "
                f"{c.big / c.big_wall:.0f} |")
            add(f"| batch − one (start-up cancels out) | {c.big - c.small} | "
                f"{c.big_wall - c.small_wall:.2f} | {c.big_cpu - c.small_cpu:.2f} | "
                f"**{c.marginal:.0f}** |")
            add("")
            add(f"Start-up (interpreter, imports of fhir.resources and pydantic, loading and "
                f"compiling the mappings) costs about {c.small_wall:.2f} s per process; a "
                "long-running process (the API, or one `convert` over many files) pays it once.")
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
        add("## Profile of the end-to-end path")
        add("")
        add(f"cProfile of `Converter.convert` over all {len(self.messages.samples)} OK messages, "
            f"{p.messages} conversions in {p.seconds:.1f} s (the profiler itself slows Python "
            "code down, by about 2× here: read the shares, not the absolute times). "
            "Times are µs per message.")
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
            f"**met** ({rate / GOAL:.1f}× the goal)" if rate >= GOAL
            else f"**not met**: {rate / GOAL:.0%} of it; a {GOAL / rate:.1f}× speed-up is needed"
        )
        out.append(
            f"- **Goal (≥ {GOAL:,.0f} messages/s per core end to end):** {verdict}. The gateway "
            f"converts {_fmt_rate(rate)} messages/s, {1e6 / rate:,.0f} µs per message, against "
            f"a budget of {1e6 / GOAL:,.0f} µs."
        )
        val_share = 1 - rate / noval.median
        out.append(
            f"- **Validation** (fhir.resources R4B `Bundle.model_validate`) takes "
            f"{val_share:.0%} of the end-to-end time: without it the gateway converts "
            f"{_fmt_rate(noval.median)} messages/s"
            + (", still short of the goal." if noval.median < GOAL else ", above the goal.")
        )
        if self.stages:
            total = sum(1e6 / b.median for b in self.stages)
            ranked = sorted(self.stages, key=lambda b: b.median)
            shares = ", ".join(
                f"{b.label} {1e6 / b.median:,.0f} µs ({1e6 / b.median / total:.0%})"
                for b in ranked
            )
            out.append(f"- **Stages, largest first:** {shares}.")
            cost = {b.key: 1e6 / b.median for b in self.stages}
            mapping, validation = cost.get("stage_2", 0.0), cost.get("stage_4", 0.0)
            rest = total - mapping - validation
            budget = 1e6 / GOAL
            if total > budget:
                out.append(
                    f"- **What the goal takes:** {budget:,.0f} µs per message for everything. "
                    f"Mapping ({mapping:,.0f} µs) and validation ({validation:,.0f} µs) are "
                    f"{(mapping + validation) / total:.0%} of the stages' sum; the rest "
                    f"(split, tokenise, reference check, JSON) is {rest:,.0f} µs. "
                    + ("Mapping alone is over the budget, so dropping validation cannot reach "
                       "the goal: both stages have to get several times faster."
                       if mapping > budget - rest else
                       "Mapping fits in the budget; validation is what has to shrink.")
                )
        parse_share = (1e6 / parse.median) / (1e6 / rate)
        out.append(
            f"- **Parsing is not the bottleneck:** the gateway's ER7 parse runs at "
            f"{_fmt_rate(parse.median)} messages/s, {parse_share:.1%} of the end-to-end time."
        )
        peers = [b for b in (self.bench("hl7"), self.bench("hl7apy"), self.bench("hl7apy_g"))
                 if b is not None]
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
    p.add_argument("--rounds", type=int, default=7, help="measured rounds per row (default 7)")
    p.add_argument("--target", type=float, default=0.4,
                   help="seconds one measurement should last (default 0.4)")
    p.add_argument("--warmup", type=float, default=0.3,
                   help="seconds of warm-up per row, at least one pass (default 0.3)")
    p.add_argument("--out", default=str(BENCH / "RESULTS.md"),
                   help="results file (default bench/RESULTS.md; '-' for none)")
    p.add_argument("--corpus", type=Path, default=REPO.parent / "shared" / "corpus" / "hl7v2",
                   help="the shared corpus' HL7 v2 folder (default ../shared/corpus/hl7v2)")
    p.add_argument("--home", type=Path, default=None,
                   help="GATEWAY_HOME for the converter (default: a temporary folder)")
    p.add_argument("--pin", type=int, default=None, help="pin the process to this CPU number")
    p.add_argument("--no-stages", action="store_true", help="skip the per-stage rows")
    p.add_argument("--no-profile", action="store_true", help="skip the cProfile run")
    p.add_argument("--profile-seconds", type=float, default=3.0,
                   help="about how long the profiled run lasts (default 3)")
    p.add_argument("--top", type=int, default=15, help="profile rows shown (default 15)")
    p.add_argument("--cli-runs", type=int, default=3,
                   help="runs of the whole `gateway convert` process (0 to skip; default 3)")
    p.add_argument("--cli-copies", type=int, default=20,
                   help="copies of the message set in the CLI's batch file (default 20)")
    p.add_argument("--no-peer-converter", action="store_true", help="skip brightohir")
    p.add_argument("--setup-peers", action="store_true",
                   help=f"first make {_rel(BRIGHTOHIR_VENV)} with {BRIGHTOHIR_PIN}")
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
        print(f"{len(messages.samples)} messages convert OK ({messages.duplicates} duplicates "
              f"dropped, {len(messages.failed)} failing left out); {len(common)} parse in every "
              "peer and are benchmarked", file=sys.stderr)
        if not common:
            print("error: no message to benchmark", file=sys.stderr)
            return 1

        main_rows = gateway_benches(conv, novalidate, common) + peer_benches(common)
        extra_rows = []
        if len(messages.samples) != len(common):
            everything = gateway_benches(conv, novalidate, messages.samples)[0]
            everything.key, everything.group = "gw_e2e_all", "extra"
            everything.label = f"gateway end to end, all {len(messages.samples)} OK messages"
            everything.what = "as the first row, on every message that converts"
            extra_rows.append(everything)
        stages = [] if args.no_stages else stage_benches(conv, common)

        peer: BrightohirPeer | None = None
        peer_note, peer_versions, peer_reports = "", {}, []
        python = BRIGHTOHIR_VENV / "bin" / "python"
        if args.no_peer_converter:
            peer_note = "brightohir (peer converter) skipped: --no-peer-converter."
        elif not python.exists():
            peer_note = (f"brightohir (peer converter) skipped: {_rel(BRIGHTOHIR_VENV)} does not "
                         "exist; run once with --setup-peers.")
            print(f"note: {peer_note}", file=sys.stderr)
        else:
            peer = BrightohirPeer(python, common)
            peer_versions = peer.versions
            peer_reports = [(s.name, r) for s, r in zip(common, peer.reports, strict=True)]
            main_rows.append(Bench(
                "bo", "brightohir v2 → R5 (peer converter)",
                "`V2Converter().convert(text)` + `json.dumps`; no validation", peer.run,
            ))
            peer_note = _brightohir_note(peer_reports, common)

        benches = main_rows + extra_rows + stages
        print("warming up and sizing ...", file=sys.stderr)
        for bench in benches:
            calibrate(bench, args.target, args.warmup)
            print(f"  {bench.label}: {bench.passes} passes per measurement", file=sys.stderr)
        measure(benches, args.rounds)
        if peer is not None:
            peer.close()

        profile = None
        if not args.no_profile:
            e2e = benches[0]
            passes = max(1, round(args.profile_seconds / 2 * e2e.median / len(messages.samples)))
            profile = profile_e2e(conv, messages.samples, passes, args.top)
        cli = time_cli(common, args.cli_runs, args.cli_copies) if args.cli_runs > 0 else None

    command = ".venv/bin/python bench/bench_convert.py " + " ".join(
        a for a in (argv if argv is not None else sys.argv[1:]) if a != "--setup-peers"
    )
    report = Report(
        args, command.strip(), started, messages, main_rows, stages, extra_rows, peer_note,
        peer_versions, peer_reports, profile, cli, time.perf_counter() - t_start,
    )
    text = report.render()
    print(text)
    if args.out != "-":
        Path(args.out).write_text(text, encoding="utf-8")
        print(f"results written to {args.out}", file=sys.stderr)
    return 0


def _brightohir_note(
    reports: Sequence[tuple[str, dict[str, Any]]], msgs: Sequence[Sample]
) -> str:
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
