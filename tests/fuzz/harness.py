"""The fuzz harness: cases, seeds, the targets and the verdict on one input.

A *case* is what one target takes: one or more named byte strings (``parts``) and,
for the report variants, the language and output format (``meta``). ``check`` runs one
case against its target and returns a :class:`Failure` when the gateway crashed, marked
a record ``internal``, hung past the time budget or grew the process beyond the memory
budget; ``None`` when the input was converted or refused with a GatewayError.

Targets (every entry point a partner's bytes reach):

========== =====================================================================
hl7v2      ``Converter.iter_convert`` (format detected), then ``convert(fmt="hl7v2")``
dicom      ``Converter.convert_files`` over a study folder's files
zip        ``Converter.convert`` of a zip archive of study files, and ``convert_files``
dicomjson  ``Converter.convert`` of DICOM JSON (PS3.18 Annex F)
cda        ``Converter.convert`` of a CDA document
variants   ``reports.variant_response`` (report, optional English report, language, format)
========== =====================================================================
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import json
import resource
import signal
import traceback
import warnings
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any

from gateway import Converter, Settings
from gateway.envelope import Record
from gateway.errors import GatewayError
from gateway.reports import variant_response

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
REGRESSIONS = HERE / "regressions"
FOUND = HERE / "found"
FORMATS = ("hl7v2", "dicom", "zip", "dicomjson", "cda", "variants")

# Time one entry-point call, or one record of it, may take: CPU seconds (the machine may be
# shared and loaded: wall time would blame the gateway for its neighbours), and a wall-clock
# bound for a hang that waits without computing (a lock).
TIME_BUDGET = 10.0
WALL_FACTOR = 6
MEMORY_BUDGET = 500 << 20  # bytes of peak RSS growth one input may cause
META = "case.json"  # the meta file of a case stored as a folder


@dataclasses.dataclass(slots=True)
class Case:
    """One input: named byte strings and, for the variants, the language and format."""

    fmt: str
    parts: dict[str, bytes]
    meta: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def digest(self) -> str:
        h = hashlib.sha256(self.fmt.encode())
        for name in sorted(self.parts):
            h.update(b"\0" + name.encode("utf-8", "surrogateescape") + b"\0" + self.parts[name])
        h.update(json.dumps(self.meta, sort_keys=True).encode())
        return h.hexdigest()[:16]

    @property
    def size(self) -> int:
        return sum(len(v) for v in self.parts.values())


@dataclasses.dataclass(slots=True)
class Failure:
    kind: str  # exception | internal-issue | timeout | memory
    summary: str  # one line: what and where (gateway file:line)
    signature: str  # distinct failures have distinct signatures
    details: str  # the traceback or the issue lines

    @property
    def family(self) -> str:
        """The signature without line numbers: what KNOWN_FAILING entries name."""
        words = self.signature.split(" ")
        return " ".join([words[0], *(w.rsplit(":", 1)[0] for w in words[1:2])])


class Hang(BaseException):
    """Raised by the alarm in the main thread when one input takes longer than its budget."""


# -- seeds -------------------------------------------------------------------------------


def _files(*globs: str) -> list[Path]:
    return sorted({p for g in globs for p in REPO.glob(g) if p.is_file()})


def _studies() -> list[list[tuple[str, bytes]]]:
    folders = sorted(
        {
            p
            for g in ("examples/imaging/*.study", "tests/golden/dicom/*.study")
            for p in REPO.glob(g)
        }
    )
    out = []
    for folder in folders:
        files = sorted(p for p in folder.rglob("*") if p.is_file())
        out.append([(str(p.relative_to(folder.parent)), p.read_bytes()) for p in files])
    return out


def study_zip(files: list[tuple[str, bytes]], deflate: bool = True) -> bytes:
    buf = io.BytesIO()
    method = zipfile.ZIP_DEFLATED if deflate else zipfile.ZIP_STORED
    with zipfile.ZipFile(buf, "w", method) as archive:
        for name, data in files:
            # A ZipInfo of its own: writestr(name) stamps the current time, so the same
            # seed made other bytes whenever two runs straddled a two-second tick.
            archive.writestr(zipfile.ZipInfo(name), data, compress_type=method)
    return buf.getvalue()


def _dicom_json(files: list[tuple[str, bytes]]) -> bytes:
    import pydicom

    out = []
    for _, data in files:
        ds = pydicom.dcmread(io.BytesIO(data))
        out.append(ds.to_json_dict())
    return json.dumps(out, ensure_ascii=False, indent=1).encode()


_REPORT_BUNDLES = (
    "examples/imaging/bundles/oru_*.json",
    "examples/imaging/bundles/lax2-ct-report-*.json",
    "tests/golden/cda/*.expected.json",
    "tests/golden/hl7v2/oru_*.expected.json",
)


def _report_seeds() -> list[Case]:
    bundles = [(p.name, p.read_bytes()) for p in _files(*_REPORT_BUNDLES)]
    english = [data for name, data in bundles if "_en" in name or "-en" in name]
    cases = []
    for _, data in bundles:
        cases.append(Case("variants", {"report.json": data}, {"lang": "bilingual"}))
        for eng in english:
            if eng is not data:
                parts = {"report.json": data, "english.json": eng}
                cases.append(Case("variants", parts, {"lang": "bilingual"}))
        bundle = json.loads(data)
        for entry in bundle.get("entry", []):
            res = entry.get("resource", {})
            if res.get("resourceType") == "DiagnosticReport":
                bare = json.dumps(res, ensure_ascii=False).encode()
                cases.append(Case("variants", {"report.json": bare}, {"lang": "zh-Hant-HK"}))
    return cases


def seeds(fmt: str) -> list[Case]:
    """The well-formed inputs mutations start from: examples/ and the golden inputs."""
    if fmt == "hl7v2":
        paths = _files("examples/hl7v2/*.hl7", "examples/imaging/*.hl7", "tests/golden/hl7v2/*.hl7")
        return [Case(fmt, {p.name: p.read_bytes()}) for p in paths]
    if fmt == "cda":
        paths = _files("examples/imaging/*.xml", "tests/golden/cda/*.xml")
        return [Case(fmt, {p.name: p.read_bytes()}) for p in paths]
    if fmt == "dicom":
        return [Case(fmt, dict(files)) for files in _studies()]
    if fmt == "zip":
        return [
            Case(fmt, {"study.zip": study_zip(files, d)})
            for files in _studies()
            for d in (True, False)
        ]
    if fmt == "dicomjson":
        paths = [
            p for p in _files("tests/golden/dicom/*.json") if not p.name.endswith(".expected.json")
        ]
        cases = [Case(fmt, {p.name: p.read_bytes()}) for p in paths]
        return cases + [Case(fmt, {"study.json": _dicom_json(files)}) for files in _studies()]
    if fmt == "variants":
        return _report_seeds()
    raise ValueError(f"unknown fuzz format {fmt!r}")


# -- targets -----------------------------------------------------------------------------


class Targets:
    """The gateway built once (a Converter and the report variants' settings)."""

    def __init__(self, settings: Settings, converter: Converter | None = None) -> None:
        self.settings = settings
        self.converter = converter or Converter(settings)
        self._warm: set[str] = set()

    def warm(self, fmt: str) -> None:
        """Pay the once-per-process costs (the 16 MB CJK font of the PDFs) outside the
        time budget, so that the first input is not taken for a hang."""
        if fmt not in self._warm:
            self._warm.add(fmt)
            with warnings.catch_warnings(), contextlib.suppress(Exception):
                warnings.simplefilter("ignore")
                self.run(seeds(fmt)[0])  # its verdict is the seed tests' business

    def run(self, case: Case, arm: Callable[[], None] = lambda: None) -> list[str]:
        """Run the case; returns the lines of any `internal` issue. Exceptions escape.
        ``arm`` starts the time budget: before each entry-point call and again after each
        record (a batch of a thousand messages is not a hang; one slow record is)."""
        conv = self.converter
        if case.fmt == "variants":
            arm()
            self._variants(case)
            return []
        items = list(case.parts.items())
        calls: list[Callable[[], Iterator[Record]]] = []
        if case.fmt == "dicom":
            calls.append(lambda: conv.convert_files(items, trace=True))
            if len(items) == 1:
                calls.append(lambda: conv.iter_convert(items[0][1], items[0][0]))
        else:
            name, data = items[0]
            explicit = {"hl7v2": "hl7v2", "cda": "cda"}.get(case.fmt, "dicom")
            calls.append(lambda: conv.iter_convert(data, name))
            # The format named explicitly, and traced (the --unmapped path reads every field).
            calls.append(lambda: conv.iter_convert(data, name, fmt=explicit, trace=True))
            if case.fmt == "zip":
                calls.append(lambda: conv.convert_files(items))
        internal = []
        for call in calls:
            arm()
            for record in call():
                arm()
                internal += [
                    i.line()
                    for i in record.issues
                    if i.code == "internal" or i.code.endswith(".internal")
                ]
        return internal

    def _variants(self, case: Case) -> None:
        report = case.parts.get("report.json", b"")
        english = case.parts.get("english.json")
        lang = case.meta.get("lang")
        out = case.meta.get("format", "json")
        partner = case.meta.get("partner")
        with contextlib.suppress(GatewayError):  # a refusal with a code: what bad input gets
            variant_response(report, lang, english, out, settings=self.settings, partner=partner)


def _rss() -> int:
    """Current resident set size in bytes (Linux)."""
    try:
        with open("/proc/self/statm", "rb") as f:
            pages = int(f.read().split()[1])
    except OSError:
        return 0
    return pages * resource.getpagesize()


def _peak() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def _arm(budget: float) -> None:
    signal.setitimer(signal.ITIMER_PROF, budget)
    signal.setitimer(signal.ITIMER_REAL, budget * WALL_FACTOR)


def _disarm() -> None:
    signal.setitimer(signal.ITIMER_PROF, 0)
    signal.setitimer(signal.ITIMER_REAL, 0)


def _on_alarm(signum: int, frame: FrameType | None) -> None:
    clock = "CPU" if signum == signal.SIGPROF else "wall-clock"
    raise Hang(f"no answer within its {clock} budget")


def _where(tb: TracebackType | None) -> str:
    """The innermost gateway frame (file:line), where the exception left the gateway."""
    found = "outside gateway/"
    for frame in traceback.extract_tb(tb):
        path = Path(frame.filename)
        if "gateway" in path.parts and "tests" not in path.parts:
            idx = len(path.parts) - 1 - path.parts[::-1].index("gateway")
            found = f"{'/'.join(path.parts[idx:])}:{frame.lineno}"
    return found


def _innermost(tb: TracebackType | None) -> str:
    frames = traceback.extract_tb(tb)
    if not frames:
        return "?"
    last = frames[-1]
    return f"{Path(last.filename).name}:{last.lineno}"


def check(targets: Targets, case: Case, budget: float = TIME_BUDGET) -> Failure | None:
    """The verdict on one case (see the module docstring). Must run in the main thread."""
    targets.warm(case.fmt)
    old = signal.signal(signal.SIGALRM, _on_alarm), signal.signal(signal.SIGPROF, _on_alarm)
    before_rss, before_peak = _rss(), _peak()
    try:
        # Warnings are not failures here, as in production (pytest would make them errors).
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                internal = targets.run(case, lambda: _arm(budget))
            finally:
                _disarm()
    except Hang as exc:
        where = _where(exc.__traceback__)
        return Failure(
            "timeout",
            f"hang ({exc}: {budget:g} s CPU, {budget * WALL_FACTOR:g} s wall) in {where}",
            f"timeout {where}",
            "".join(traceback.format_exception(exc)),
        )
    except Exception as exc:  # everything escaping the entry point is a failure
        where = _where(exc.__traceback__)
        kind = type(exc).__name__
        inner = _innermost(exc.__traceback__)
        first = str(exc).splitlines()[0][:160] if str(exc) else ""
        return Failure(
            "exception",
            f"{kind} raised at {where} (innermost {inner}): {first}",
            f"{kind} {where} {inner}",
            "".join(traceback.format_exception(exc)),
        )
    finally:
        signal.signal(signal.SIGALRM, old[0])
        signal.signal(signal.SIGPROF, old[1])
    peak = _peak()
    growth = peak - before_rss if peak > before_peak else 0
    if growth > MEMORY_BUDGET:
        return Failure(
            "memory",
            f"peak RSS grew by {growth >> 20} MB (> {MEMORY_BUDGET >> 20} MB)",
            "memory",
            f"RSS before {before_rss >> 20} MB, peak after {peak >> 20} MB",
        )
    if internal:
        # The internal issue's message names the exception; group by its first words.
        head = internal[0].split(": ")[-1][:60]
        return Failure(
            "internal-issue",
            f"record marked internal: {internal[0][:200]}",
            f"internal {head}",
            "\n".join(internal),
        )
    return None


# -- cases on disk -----------------------------------------------------------------------

_EXT = {"hl7v2": ".hl7", "zip": ".zip", "dicomjson": ".json", "cda": ".xml", "dicom": ".dcm"}


def save(case: Case, folder: Path, name: str | None = None) -> Path:
    """Write a case: one file when it is one part without meta, else a folder."""
    name = name or case.digest
    folder.mkdir(parents=True, exist_ok=True)
    if len(case.parts) == 1 and not case.meta and case.fmt in _EXT:
        path = folder / f"{name}{_EXT[case.fmt]}"
        path.write_bytes(next(iter(case.parts.values())))
        return path
    path = folder / name
    path.mkdir(exist_ok=True)
    for i, (part, data) in enumerate(case.parts.items()):
        # Part names are fuzzed too (zip members are not; study file names are): keep a safe one.
        safe = part if _plain(part) else f"part{i:03d}.bin"
        (path / safe).parent.mkdir(parents=True, exist_ok=True)
        (path / safe).write_bytes(data)
    if case.meta:
        (path / META).write_text(json.dumps(case.meta, ensure_ascii=False, sort_keys=True) + "\n")
    return path


def _plain(name: str) -> bool:
    return (
        0 < len(name) < 100
        and all(c.isascii() and (c.isalnum() or c in "._-/") for c in name)
        and ".." not in name
        and not name.startswith("/")
        and not name.endswith(("/", ".txt"))
        and name != META
    )


def load(fmt: str, path: Path) -> Case:
    if path.is_file():
        return Case(fmt, {path.name: path.read_bytes()})
    parts = {}
    meta: dict[str, Any] = {}
    for p in sorted(path.rglob("*")):
        if not p.is_file() or p.name.endswith(".txt"):
            continue
        if p.name == META and p.parent == path:
            meta = json.loads(p.read_text())
        else:
            parts[str(p.relative_to(path))] = p.read_bytes()
    return Case(fmt, parts, meta)


def regressions(fmt: str | None = None) -> Iterator[tuple[str, Path]]:
    """(format, path) of every kept regression input (tests/fuzz/regressions/<format>/)."""
    for f in FORMATS if fmt is None else (fmt,):
        folder = REGRESSIONS / f
        if folder.is_dir():
            for p in sorted(folder.iterdir()):
                if not p.name.startswith(".") and p.suffix != ".txt":
                    yield f, p
