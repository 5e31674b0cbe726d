"""Conversion benchmark: HL7 v2 messages → validated FHIR R4 Bundle JSON, messages/s on one core.

Measured with pyperf (worker processes, calibrated loops, warm-ups, statistics). In one
run, on the same messages, single-threaded, it times

* the gateway end to end (split, decode, tokenise, map, reference check, R4B model
  validation, JSON) with validation on and off, and on the very same messages again;
* the gateway's own ER7 parser alone (split + decode + tokenise);
* the bare parse of the same messages by python-hl7 (``hl7.parse``) and by hl7apy
  (``hl7apy.parser.parse_message``, tolerant, with and without group finding);
* brightohir's HL7 v2 → FHIR R5 conversion, a peer *converter*, when its virtual
  environment exists (``--setup-peers`` makes it in ``bench/.peers/``);
* each stage of the gateway's pipeline separately;

and writes the medians and their ratios to the conversion section of bench/RESULTS.md.
Every gateway and in-process peer row converts never-seen variants of the messages
(:func:`freshen`). Run from the repository root::

    .venv/bin/python bench/bench_convert.py [--rows gw_e2e] [--out -] [pyperf options]

See bench/README.md for what each row means. The rows ``gw_e2e_interp`` and
``stage_map_interp`` run the mappings interpreted (``GATEWAY_MAPPING_ENGINE=interpreted``)
beside the compiled default. ``--paired DIR`` instead compares, in paired rounds in three
worker processes fed the same fresh messages pass by pass, the gateway in DIR (an older
commit's ``gateway mappings seeds profiles`` unpacked with ``git archive``) with this
checkout, compiled and interpreted; it prints a table (bench/RESULTS.md, "HL7 v2 end to
end before/after issue 9"); a fourth worker parses the same messages with python-hl7
(``hl7.parse``), for the paired ratio issue 18 asks for. With ``--as-file`` the gateways
convert each pass's messages as one HL7 v2 file (``Converter.iter_convert_stream``, what
``gateway convert`` does with a file: its messages go through the stages in batches)
instead of one ``convert()`` call each.
"""

from __future__ import annotations

import argparse
import atexit
import base64
import dataclasses
import datetime as dt
import functools
import hashlib
import itertools
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import _results  # bench/_results.py (this script's folder is on sys.path)
from _peer import PeerWorker  # bench/_peer.py

from gateway.config import Settings
from gateway.pipeline import Converter

REPO = _results.REPO
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


# -- messages ----------------------------------------------------------------------------


@dataclass(slots=True)
class Sample:
    """One message, pre-split, that the gateway converts without error."""

    name: str  # file#n
    data: bytes  # the message's segments joined with CR (as split_messages gives them)
    codec: str  # the Python codec the gateway decoded it with (peers decode the same way)
    message_type: str
    resources: int = 0  # entries in the gateway's Bundle
    python_hl7: bool = False  # parses with hl7.parse
    hl7apy: bool = False  # parses with hl7apy, tolerant, find_groups=False
    hl7apy_groups: bool = False  # ... and with find_groups=True
    problem: str = ""  # first peer error, for the report
    freshens: bool = False  # its variants (see freshen) convert, each to its own Bundle

    @property
    def text(self) -> str:
        return self.data.decode(self.codec)

    @property
    def common(self) -> bool:
        """Parsed by every in-process peer: the set all ratios are taken on."""
        return self.python_hl7 and self.hl7apy and self.hl7apy_groups


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
        return [s for s in self.samples if s.common]

    def dump(self, path: Path) -> None:
        """For the worker processes: they convert these, and need not find them again."""
        rows = [
            {**dataclasses.asdict(s), "data": base64.b64encode(s.data).decode()}
            for s in self.samples
        ]
        path.write_text(json.dumps(rows), encoding="utf-8")

    @classmethod
    def load(cls, path: Path) -> MessageSet:
        rows = json.loads(path.read_text(encoding="utf-8"))
        return cls(samples=[Sample(**{**r, "data": base64.b64decode(r["data"])}) for r in rows])


def collect_messages(conv: Converter, corpus: Path) -> MessageSet:
    from gateway.intake.hl7v2 import split_messages

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
    import hl7  # type: ignore[import-untyped]  # python-hl7
    from hl7apy.consts import VALIDATION_LEVEL  # type: ignore[import-untyped]
    from hl7apy.parser import parse_message as hl7apy_parse  # type: ignore[import-untyped]

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


# -- never-seen messages -----------------------------------------------------------------


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


# -- rows: what each one times, per message ------------------------------------------------

Work = _results.Work
Prepared = Callable[[int], Work]


@dataclass
class Spec:
    row: _results.Row
    make: Callable[[Context], Prepared]
    on: str = "common"  # the messages it converts: "common" or "all" (that convert)


class Context:
    """What one pyperf worker process needs, made on first use: only the rows that it
    runs build their converter, workload or peer."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args

    @functools.cached_property
    def messages(self) -> MessageSet:
        return MessageSet.load(Path(self.args.samples))

    @functools.cached_property
    def settings(self) -> Settings:
        home = Path(tempfile.mkdtemp(prefix="bench-home-"))
        atexit.register(shutil.rmtree, home, True)
        return Settings.load(home=home, env={})

    @functools.cached_property
    def conv(self) -> Converter:
        return Converter(self.settings)

    @functools.cached_property
    def novalidate(self) -> Converter:
        return Converter(dataclasses.replace(self.settings, validate=False))

    @functools.cached_property
    def interpreted(self) -> Converter:
        """The same converter with the mappings run by the closures (the reference
        interpreter) instead of the generated code: the two side by side."""
        return converter(self.settings, "interpreted")

    def work(self, on: str = "common", fresh: bool = True) -> Workload:
        samples = self.messages.common if on == "common" else self.messages.samples
        return Workload(samples, fresh=fresh)

    @functools.cached_property
    def peer(self) -> BrightohirPeer:
        return BrightohirPeer(BRIGHTOHIR_VENV / "bin" / "python", self.messages.common)


def converter(settings: Settings, engine: str) -> Converter:
    """A Converter whose mappings run on ``engine`` (GATEWAY_MAPPING_ENGINE)."""
    before = os.environ.get("GATEWAY_MAPPING_ENGINE")
    os.environ["GATEWAY_MAPPING_ENGINE"] = engine
    try:
        return Converter(settings)
    finally:
        if before is None:
            del os.environ["GATEWAY_MAPPING_ENGINE"]
        else:
            os.environ["GATEWAY_MAPPING_ENGINE"] = before


def _each(items: list[Any], step: Callable[[Any], object]) -> Work:
    def run() -> None:
        for item in items:
            step(item)

    return run


def _e2e(which: str, fresh: bool = True, on: str = "common") -> Callable[[Context], Prepared]:
    def make(ctx: Context) -> Prepared:
        conv = {"validate": ctx.conv, "novalidate": ctx.novalidate}.get(which) or ctx.interpreted
        work = ctx.work(on, fresh)
        return lambda loops: _each(work.datas(loops), conv.convert)

    return make


def _parse_only(ctx: Context) -> Prepared:
    from gateway.intake.hl7v2 import parse_message, split_messages

    charset, work = ctx.conv.network.charset, ctx.work()

    def step(data: bytes) -> None:
        for raw in split_messages(data):
            parse_message(raw, charset)

    return lambda loops: _each(work.datas(loops), step)


def _peer_parse(peer: str) -> Callable[[Context], Prepared]:
    def make(ctx: Context) -> Prepared:
        import hl7
        from hl7apy.consts import VALIDATION_LEVEL
        from hl7apy.parser import parse_message as hl7apy_parse

        tolerant = VALIDATION_LEVEL.TOLERANT
        parse: Callable[[str], object] = {
            "hl7": hl7.parse,
            "hl7apy": lambda t: hl7apy_parse(t, validation_level=tolerant, find_groups=False),
            "hl7apy_g": lambda t: hl7apy_parse(t, validation_level=tolerant, find_groups=True),
        }[peer]
        work = ctx.work()
        return lambda loops: _each(work.batch(loops), lambda dc: parse(dc[0].decode(dc[1])))

    return make


def _stage(stage: str) -> Callable[[Context], Prepared]:
    """Each pipeline stage alone, fed with the previous stages' output (made untimed).
    Mapping and checking see fresh messages, as end to end; split, tokenise, JSON and the
    plain model keep no content-keyed state, so one pass's output is fed again."""

    def make(ctx: Context) -> Prepared:
        from fhir.resources.R4B.bundle import Bundle

        from gateway.intake.hl7v2 import Hl7View, parse_message, split_messages
        from gateway.pipeline import dump_json
        from gateway.validation import check_bundle

        conv, work = ctx.conv, ctx.work()
        charset, env, tz = conv.network.charset, conv.env, conv.settings.timezone
        interpreted = ctx.interpreted.hl7v2 if stage == "stage_map_interp" else None

        def parsed(loops: int) -> list[Any]:
            return [parse_message(split_messages(d)[0], charset) for d in work.datas(loops)]

        def mapped(loops: int) -> list[Any]:
            run = conv.hl7v2.for_type
            return [run(m.message_type).run(Hl7View(m), env, tz)[0] for m in parsed(loops)]

        steps: dict[str, tuple[Callable[[int], list[Any]], Callable[[Any], object], bool]] = {
            "stage_split": (work.datas, split_messages, False),
            "stage_parse": (
                lambda n: [split_messages(d)[0] for d in work.datas(n)],
                lambda raw: parse_message(raw, charset),
                False,
            ),
            "stage_map": (
                parsed,
                lambda m: conv.hl7v2.for_type(m.message_type).run(Hl7View(m), env, tz),
                True,
            ),
            "stage_map_interp": (
                parsed,
                lambda m: interpreted.for_type(m.message_type).run(Hl7View(m), env, tz),  # type: ignore[union-attr]
                True,
            ),
            "stage_validate": (mapped, lambda b: check_bundle(b, True), True),
            "stage_json": (mapped, dump_json, False),
            "stage_full_model": (mapped, Bundle.model_validate, False),
        }
        inputs, step, fresh_each_loop = steps[stage]
        once: list[Any] = []

        def prepare(loops: int) -> Work:
            if fresh_each_loop:
                return _each(inputs(loops), step)
            if not once:
                once.extend(inputs(1))
            return _each(once * loops, step)

        return prepare

    return make


def _brightohir(ctx: Context) -> Prepared:
    peer = ctx.peer

    def prepare(loops: int) -> Work:
        return lambda: peer.run(loops)

    return prepare


def specs(args: argparse.Namespace, messages: MessageSet) -> list[Spec]:
    R = _results.Row
    out = [
        Spec(
            R(
                "gw_e2e",
                "gateway end to end",
                "`Converter.convert(bytes)`: split, decode, tokenise, map, validate + "
                "reference check, JSON",
            ),
            _e2e("validate"),
        ),
        Spec(
            R(
                "gw_e2e_interp",
                "gateway end to end, interpreted mappings",
                "the first row with `GATEWAY_MAPPING_ENGINE=interpreted`: the mappings run "
                "by the closures instead of the generated Python (docs/mapping-language.md)",
            ),
            _e2e("interpreted"),
        ),
        Spec(
            R(
                "gw_noval",
                "gateway end to end, validation off",
                "the same with `Settings.validate = False` (the reference check stays)",
            ),
            _e2e("novalidate"),
        ),
        Spec(
            R(
                "gw_parse",
                "gateway ER7 parse only",
                "`split_messages` + `parse_message` (charset decode + tokenise)",
            ),
            _parse_only,
        ),
        Spec(R("hl7", "python-hl7 parse", "`hl7.parse(bytes.decode(codec))`"), _peer_parse("hl7")),
        Spec(
            R("hl7apy", "hl7apy parse", "`parse_message(text, TOLERANT, find_groups=False)`"),
            _peer_parse("hl7apy"),
        ),
        Spec(
            R(
                "hl7apy_g",
                "hl7apy parse + groups",
                "`parse_message(text, TOLERANT, find_groups=True)`",
            ),
            _peer_parse("hl7apy_g"),
        ),
    ]
    if not args.no_peer_converter and (BRIGHTOHIR_VENV / "bin" / "python").exists():
        out.append(
            Spec(
                R(
                    "bo",
                    "brightohir v2 → R5 (peer converter)",
                    "`V2Converter().convert(text)` + `json.dumps`; no validation",
                ),
                _brightohir,
            )
        )
    out.append(
        Spec(
            R(
                "gw_repeat",
                "gateway end to end, same messages again",
                "as the first row, but every pass converts the very same bytes: content-keyed "
                "caches always hit",
                group="extra",
            ),
            _e2e("validate", fresh=False),
        )
    )
    if len(messages.samples) != len(messages.common):
        out.append(
            Spec(
                R(
                    "gw_e2e_all",
                    f"gateway end to end, all {len(messages.samples)} OK messages",
                    "as the first row, on every message that converts",
                    group="extra",
                ),
                _e2e("validate", on="all"),
                on="all",
            )
        )
    if not args.no_stages:
        stages = [
            ("stage_split", "split", "`split_messages` (framing, segment split)"),
            ("stage_parse", "decode + tokenise", "`parse_message`"),
            (
                "stage_map",
                "map",
                "`MessageMapping.run(Hl7View(msg))` → Bundle dict (fresh messages), compiled",
            ),
            (
                "stage_map_interp",
                "map, interpreted (not in the sum)",
                "the same with the interpreted mappings (closures), for comparison",
            ),
            (
                "stage_validate",
                "validate + reference check",
                "`check_bundle(bundle, validate=True)` as the pipeline calls it (fresh Bundles)",
            ),
            ("stage_json", "JSON", "`dump_json(bundle)` (orjson, indent 2)"),
            (
                "stage_full_model",
                "for reference: full R4B model",
                "`fhir.resources.R4B` `Bundle.model_validate(bundle)`, no cache (not part of "
                "the pipeline's sum)",
            ),
        ]
        for key, label, what in stages:
            group = "stage-ref" if key in ("stage_full_model", "stage_map_interp") else "stage"
            out.append(Spec(R(key, label, what, group=group), _stage(key)))
    if args.rows:
        wanted = set(args.rows.split(","))
        out = [s for s in out if s.row.key in wanted]
    return out


def time_func(ctx: Context, spec: Spec) -> Callable[[int], float]:
    """pyperf's time function of a row; its converter, workload or peer is made on the
    first call (only in the worker process that runs the row)."""
    made: list[Prepared] = []

    def prepare(loops: int) -> Work:
        if not made:
            made.append(spec.make(ctx))
        return made[0](loops)

    return _results.time_func(ctx.args.clock, prepare)


# -- brightohir, the peer converter --------------------------------------------------------


class BrightohirPeer(PeerWorker):
    """brightohir runs in its own virtual environment, driven over a pipe."""

    def __init__(self, python: Path, msgs: Sequence[Sample]) -> None:
        super().__init__(python, BENCH / "peer_brightohir.py", "brightohir")
        header = {"messages": [[base64.b64encode(s.data).decode(), s.codec] for s in msgs]}
        reply = self.ask(header)
        self.reports: list[dict[str, Any]] = reply["reports"]
        self.versions: dict[str, str] = reply["versions"]
        self.subset = [i for i, r in enumerate(self.reports) if r["ok"]]

    def run(self, passes: int) -> tuple[float, float]:
        """(wall, CPU) seconds of ``passes`` passes over the messages it converts, timed in
        its own process."""
        reply = self.ask({"run": passes, "subset": self.subset})
        return float(reply["wall"]), float(reply["cpu"])


def setup_peers() -> None:
    """Make bench/.peers/brightohir with brightohir installed (bench/.peers is gitignored)."""
    if not (BRIGHTOHIR_VENV / "bin" / "python").exists():
        subprocess.run([sys.executable, "-m", "venv", str(BRIGHTOHIR_VENV)], check=True)
    pip = BRIGHTOHIR_VENV / "bin" / "pip"
    subprocess.run([str(pip), "install", "-q", BRIGHTOHIR_PIN], check=True)


def brightohir_note(messages: MessageSet) -> tuple[str, str]:
    """(what brightohir made of the messages, its venv's versions), checked once."""
    python = BRIGHTOHIR_VENV / "bin" / "python"
    if not python.exists():
        return (
            f"brightohir (peer converter) skipped: {_rel(BRIGHTOHIR_VENV)} does not exist; "
            "run once with --setup-peers.",
            "",
        )
    peer = BrightohirPeer(python, messages.common)
    try:
        reports = list(zip(messages.common, peer.reports, strict=True))
        versions = ", ".join(f"{n} {v}" for n, v in peer.versions.items())
    finally:
        peer.close()
    ok = [r for _, r in reports if r["ok"]]
    via = sum(1 for r in ok if r["hl7apy"])
    valid = sum(1 for r in ok if r["valid_r5"])
    failed = [f"{s.name} ({r['error']})" for s, r in reports if not r["ok"]]
    errors: dict[str, int] = {}
    for r in ok:
        if not r["valid_r5"]:
            errors[r["error"]] = errors.get(r["error"], 0) + 1
    common = max(errors, key=lambda e: errors[e]) if errors else ""
    theirs = statistics.mean(r.get("resources", 0) for r in ok) if ok else 0.0
    ours = statistics.mean(s.resources for s, _ in reports) if reports else 0.0
    note = (
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
    return note, versions


# -- report ------------------------------------------------------------------------------

RATIOS = (
    ("gw_e2e", "hl7"),
    ("gw_e2e", "hl7apy"),
    ("gw_e2e", "hl7apy_g"),
    ("gw_e2e", "bo"),
    ("gw_noval", "bo"),
    ("gw_parse", "hl7"),
    ("gw_parse", "hl7apy"),
    ("gw_parse", "hl7apy_g"),
    ("gw_e2e", "gw_noval"),
    ("gw_e2e", "gw_e2e_interp"),
    ("stage_map", "stage_map_interp"),
    ("gw_e2e", "gw_parse"),
    ("gw_repeat", "gw_e2e"),
)
PACKAGES = (
    "fhir-gateway",
    "fhir.resources",
    "fhir-core",
    "pydantic",
    "pydantic-core",
    "orjson",
    "hl7",
    "hl7apy",
)


def render(
    args: argparse.Namespace,
    command: str,
    started: str,
    seconds: float,
    messages: MessageSet,
    rows: list[_results.Row],
    peer: tuple[str, str],
) -> str:
    lines: list[str] = []
    add = lines.append
    common = messages.common
    measured = [r for r in rows if r.bench is not None]
    add("# Conversion benchmark: HL7 v2 → FHIR R4 transaction Bundle JSON")
    add("")
    add(
        f"Recorded {started} by `bench/bench_convert.py` in {seconds:.0f} s. Reproduce from "
        "the repository root (the venv has the `dev,bench` extras; `--setup-peers` once "
        "makes brightohir's own venv in `bench/.peers/`):"
    )
    add("")
    add("```sh")
    add(command)
    add("```")
    add("")
    add("## Machine and software")
    add("")
    first = measured[0].bench if measured else None
    for line in _results.environment(first, PACKAGES):
        add(f"- {line}")
    if peer[1]:
        add(f"- brightohir's own venv: {peer[1]}")
    add("")
    add("## Messages")
    add("")
    dirs = ", ".join(sorted({str(Path(f).parent) for f in messages.files}))
    add(
        f"- {len(messages.files)} files ({dirs}): {messages.found} messages after splitting; "
        f"{messages.duplicates} byte-identical to an earlier one dropped "
        "(`tests/golden/hl7v2/` copies `examples/hl7v2/`)."
    )
    add(
        f"- Convert OK in the gateway: **{len(messages.samples)}** (left out: "
        f"{'; '.join(messages.failed) or 'none'})."
    )
    skipped = [s for s in messages.samples if not s.common]
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
        f"- Types: {', '.join(f'{k} ×{v}' for k, v in sorted(kinds.items()))}; mean size "
        f"{size:,.0f} bytes; charsets {', '.join(sorted({s.codec for s in common}))}."
    )
    stale = [s.name for s in common if not s.freshens]
    add(
        "- **Fresh messages.** The gateway memoises what recurs, so converting the same "
        "bytes again measures its caches, not its conversion. Every gateway and in-process "
        "peer row therefore converts never-seen variants of these messages: `freshen()` "
        "appends a running number to MSH-10, PID-2/3/4/18/19, PV1-19, ORC-2/3/4, "
        "OBR-2/3/18/19/20, RF1-6/11 and IPC-1..4, letters to the patient's name, address and "
        "phone (PID-5/11/13), and varies MSH-7, PID-7, ORC-9 and OBR-7. Each variant was "
        "checked to convert to a Bundle of its own: "
        + (
            f"all {len(common)} do."
            if not stale
            else f"{len(common) - len(stale)} do; used unchanged: {', '.join(stale)}."
        )
        + " The row *same messages again* shows what the caches give when everything recurs."
    )
    for note in messages.notes:
        add(f"- Note: {note}")
    add("")
    add("## Method")
    add("")
    add(
        _results.method(args, "messages")
        + " brightohir runs in its own venv and process, driven over a pipe "
        "(`bench/peer_brightohir.py`)."
    )
    add("")
    add("## Results")
    add("")
    lines.extend(_results.results_table([r for r in rows if r.group in ("main", "extra")], "msgs"))
    add("")
    if peer[0]:
        add(peer[0])
        add("")
    ratios = _results.ratios_table(rows, RATIOS)
    if ratios:
        add("### Ratios (throughput of A ÷ throughput of B, same run)")
        add("")
        lines.extend(ratios)
        add("")
    stages = [r for r in rows if r.group.startswith("stage") and r.bench is not None]
    if stages:
        add("### Where one message's time goes (each stage timed alone)")
        add("")
        add("| stage | what is timed | µs/msg (median) | share of the stages' sum |")
        add("| --- | --- | ---: | ---: |")
        total = sum(r.us for r in stages if r.group == "stage")
        for r in stages:
            share = f"{r.us / total:.0%}" if r.group == "stage" and total else ""
            add(f"| {r.label} | {r.what} | {r.us:,.0f} | {share} |")
        add(f"| **sum** | | **{total:,.0f}** | |")
        add("")
    reading = interpret(rows)
    if reading:
        add("## Interpretation")
        add("")
        for paragraph in reading:
            add(f"- {paragraph}")
        add("")
    return "\n".join(lines).rstrip() + "\n"


def interpret(rows: list[_results.Row]) -> list[str]:
    by = {r.key: r for r in rows if r.bench is not None}
    e2e, noval, parse = by.get("gw_e2e"), by.get("gw_noval"), by.get("gw_parse")
    out: list[str] = []
    if e2e is None:
        return out
    verdict = (
        f"**met** ({e2e.rate / GOAL:.1f}× the goal)"
        if e2e.rate >= GOAL
        else f"**not met**: {e2e.rate / GOAL:.0%} of it"
    )
    out.append(
        f"**Goal (≥ {GOAL:,.0f} messages/s per core end to end):** {verdict}. The gateway "
        f"converts {_results.rate(e2e.rate)} messages/s, {e2e.us:,.0f} µs per message."
    )
    if noval is not None:
        out.append(
            f"**Validation** takes {1 - e2e.rate / noval.rate:.0%} of the end-to-end time: "
            f"without it the gateway converts {_results.rate(noval.rate)} messages/s."
        )
    if parse is not None:
        out.append(
            f"**Parsing is not the bottleneck:** the gateway's ER7 parse runs at "
            f"{_results.rate(parse.rate)} messages/s, {parse.rate and e2e.rate / parse.rate:.1%} "
            "of the end-to-end time."
        )
    repeat = by.get("gw_repeat")
    if repeat is not None:
        out.append(
            f"**Fresh versus repeated messages:** the very same messages again convert at "
            f"{_results.rate(repeat.rate)} messages/s ({repeat.rate / e2e.rate:.2g}× the "
            "fresh rate): what the content-keyed caches give when everything recurs, an upper "
            "bound, not a feed's throughput."
        )
    return out


# -- paired rounds against another checkout ----------------------------------------------

# A worker process converting what it is sent with the gateway found on its PYTHONPATH
# (this checkout, or an older one unpacked by `git archive`), timing itself: one JSON
# request per line in ({"datas": [base64...]}), one answer per line out.
_WORKER = r"""
import base64, hashlib, json, os, sys, tempfile, time
from pathlib import Path
if os.environ.get("BENCH_PEER") == "python-hl7":  # the peer: bare parse, no FHIR at all
    import hl7
    from importlib.metadata import version
    print(json.dumps({"gateway": f"python-hl7 {version('hl7')} (hl7.parse)"}), flush=True)
    for line in sys.stdin:
        req = json.loads(line)
        pairs = [(base64.b64decode(d), c) for d, c in zip(req["datas"], req["codecs"])]
        wall, cpu = time.perf_counter(), time.process_time()
        for data, codec in pairs:
            hl7.parse(data.decode(codec))
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
        print(json.dumps({"cpu": cpu, "wall": wall, "ok": len(pairs), "digest": ""}), flush=True)
    sys.exit(0)
import gateway
from gateway.config import Settings
from gateway.pipeline import Converter
conv = Converter(Settings.load(home=Path(tempfile.mkdtemp(prefix="paired-")), env={}))
print(json.dumps({"gateway": gateway.__file__}), flush=True)
for line in sys.stdin:
    datas = [base64.b64decode(d) for d in json.loads(line)["datas"]]
    outs, convert = [], conv.convert
    wall, cpu = time.perf_counter(), time.process_time()
    if os.environ.get("BENCH_AS_FILE"):  # one HL7 v2 file of them: gateway convert's path
        outs.append([(r.ok, r.bundle_json) for r in conv.iter_convert_stream([b"\r".join(datas)])])
    else:
        for data in datas:
            outs.append([(r.ok, r.bundle_json) for r in convert(data)])
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    digest = hashlib.sha256(b"".join(b or b"" for o in outs for _, b in o)).hexdigest()
    ok = sum(k for o in outs for k, _ in o)
    print(json.dumps({"cpu": cpu, "wall": wall, "ok": ok, "digest": digest}), flush=True)
"""


class _Worker:
    def __init__(
        self, name: str, pythonpath: Path, engine: str, peer: str = "", as_file: bool = False
    ) -> None:
        self.name = name
        env = {**os.environ, "PYTHONPATH": str(pythonpath), "GATEWAY_MAPPING_ENGINE": engine}
        if engine == "default":  # the checkout's own default engine, whatever it is
            del env["GATEWAY_MAPPING_ENGINE"]
        env["BENCH_PEER"] = peer
        env["BENCH_AS_FILE"] = "1" if as_file else ""
        env.pop("GATEWAY_HOME", None)
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _WORKER],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
            cwd=tempfile.gettempdir(),  # not the checkout: PYTHONPATH decides which gateway
        )
        self.gateway = self._answer()["gateway"]

    def _answer(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"paired worker {self.name} stopped (see its errors above)")
        answer: dict[str, Any] = json.loads(line)
        return answer

    def run(self, datas: list[str], codecs: list[str]) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({"datas": datas, "codecs": codecs}) + "\n")
        self.proc.stdin.flush()
        return self._answer()

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


def paired(args: argparse.Namespace, messages: MessageSet) -> str:
    """In-process paired rounds: the same never-seen messages converted, round after
    round and in rotating order, by the gateway of ``--paired DIR`` (an older checkout),
    by this one with compiled mappings and by this one interpreted, each in its own
    worker process timing its own CPU clock. The ratio of one round is immune to the
    machine's drift between rounds; the median over rounds is reported."""
    as_file = bool(args.as_file)
    workers = [
        _Worker("before", Path(args.paired).resolve(), args.before_engine, as_file=as_file),
        _Worker("compiled", REPO, args.engine, as_file=as_file),
        _Worker("interpreted", REPO, "interpreted", as_file=as_file),
        _Worker("python-hl7", REPO, "compiled", peer="python-hl7"),
    ]
    work = Workload(messages.common, fresh=True)
    load_before = os.getloadavg()
    times: dict[str, list[float]] = {w.name: [] for w in workers}
    lines = [f"- {w.name}: `{w.gateway}`" for w in workers]
    lines.append(f"- this tree's 'compiled' worker runs GATEWAY_MAPPING_ENGINE={args.engine}")
    lines.append(f"- the 'before' worker runs GATEWAY_MAPPING_ENGINE={args.before_engine}")
    lines += ["", "| round | " + " | ".join(f"{w.name} µs/msg" for w in workers) + " |"]
    lines.append("| ---: |" + " ---: |" * len(workers))
    for rnd in range(args.rounds + 1):  # round 0 warms up every worker, not counted
        cpu = dict.fromkeys(times, 0.0)
        count = 0
        # One pass at a time, each sent to every worker in turn (the first one rotating):
        # the workers' clocks are compared over the same seconds, not minutes apart.
        for p in range(args.passes):
            batch = work.batch(1)
            datas = [base64.b64encode(d).decode() for d, _ in batch]
            codecs = [c for _, c in batch]
            count += len(datas)
            turn = (rnd + p) % len(workers)
            answers = {w.name: w.run(datas, codecs) for w in workers[turn:] + workers[:turn]}
            if answers["compiled"]["digest"] != answers["interpreted"]["digest"]:
                raise RuntimeError(f"round {rnd}: compiled and interpreted Bundles differ")
            short = [n for n, a in answers.items() if a["ok"] != len(datas)]
            if short:  # every message converts (also read from one file): same work for all
                raise RuntimeError(f"round {rnd}: {', '.join(short)} did not convert them all")
            for name, a in answers.items():
                cpu[name] += a["cpu"]
        if rnd == 0:
            continue
        for name, seconds in cpu.items():
            times[name].append(seconds / count * 1e6)
        lines.append(
            f"| {rnd} | " + " | ".join(f"{times[w.name][-1]:,.0f}" for w in workers) + " |"
        )
    for w in workers:
        w.close()
    load_after = os.getloadavg()
    before = times["before"]

    def ratio(name: str, base: list[float] = before) -> str:
        per_round = [b / a for b, a in zip(base, times[name], strict=True)]
        return (
            f"{statistics.median(per_round):.3f} (rounds {min(per_round):.3f}–{max(per_round):.3f})"
        )

    lines += [
        "",
        f"- rate after ÷ before, compiled mappings: **{ratio('compiled')}**",
        f"- rate of today's interpreted mappings ÷ before (the earlier tree, compiled): "
        f"{ratio('interpreted')}",
        "- gateway end to end ÷ python-hl7's bare parse (issue 18: ≥ 3), compiled: "
        f"**{ratio('compiled', times['python-hl7'])}**; interpreted: "
        f"{ratio('interpreted', times['python-hl7'])}; "
        f"before: {ratio('before', times['python-hl7'])}",
        f"- {args.rounds} rounds of {args.passes} × {len(messages.common)} fresh messages; "
        f"load average before {' '.join(f'{x:.1f}' for x in load_before)}, after "
        f"{' '.join(f'{x:.1f}' for x in load_after)}",
    ]
    return "\n".join(lines) + "\n"


# -- main --------------------------------------------------------------------------------


def add_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--out",
        default=str(_results.RESULTS),
        help="results file whose conversion section is replaced (default bench/RESULTS.md; "
        "'-' for none)",
    )
    parser.add_argument(
        "--corpus",
        type=Path,
        default=REPO.parent / "shared" / "corpus" / "hl7v2",
        help="the shared corpus' HL7 v2 folder (default ../shared/corpus/hl7v2)",
    )
    parser.add_argument(
        "--rows",
        default="",
        help="only these rows, comma-separated keys (e.g. gw_e2e: the end-to-end rate alone)",
    )
    _results.add_clock_option(parser)
    parser.add_argument("--no-stages", action="store_true", help="skip the per-stage rows")
    parser.add_argument("--no-peer-converter", action="store_true", help="skip brightohir")
    parser.add_argument(
        "--setup-peers",
        action="store_true",
        help=f"first make {_rel(BRIGHTOHIR_VENV)} with {BRIGHTOHIR_PIN}",
    )
    parser.add_argument("--samples", default="", help=argparse.SUPPRESS)  # for the workers
    parser.add_argument(
        "--paired",
        default="",
        metavar="DIR",
        help="instead of the pyperf rows: paired rounds against the gateway in DIR (e.g. "
        "`git archive b9eb931 gateway mappings seeds profiles` unpacked there), compiled "
        "and interpreted; prints a table",
    )
    parser.add_argument("--rounds", type=int, default=7, help="paired rounds (with --paired)")
    parser.add_argument(
        "--as-file",
        action="store_true",
        help="with --paired: each pass's messages converted as one HL7 v2 file, the way "
        "`gateway convert` reads one (Converter.iter_convert_stream), not one convert() each",
    )
    parser.add_argument(
        "--passes", type=int, default=10, help="passes over the messages per paired round"
    )
    parser.add_argument(
        "--engine",
        default="ceiling",
        choices=("compiled", "ceiling"),
        help="with --paired: the mapping engine of this tree's 'compiled' worker (ceiling, "
        "the default: gateway/mapping/_ceiling.py, issue 18)",
    )
    parser.add_argument(
        "--before-engine",
        default="default",
        choices=("default", "compiled", "ceiling"),
        help="with --paired: the mapping engine of the earlier tree's worker ('default': "
        "that checkout's own default, so after/before compares the two as they ship; it was "
        "always 'compiled', which overstated the ratio once the ceiling became the default)",
    )


def forward(args: argparse.Namespace) -> list[str]:
    """This script's options, for pyperf's worker processes."""
    out = ["--samples", args.samples, "--corpus", str(args.corpus), "--out", "-"]
    out += ["--clock", args.clock]
    out += ["--rows", args.rows] if args.rows else []
    out += ["--no-stages"] if args.no_stages else []
    out += ["--no-peer-converter"] if args.no_peer_converter else []
    return out


def main() -> int:
    runner = _results.runner(processes=5, values=3, forward=forward)
    add_options(runner.argparser)
    args = runner.parse_args()
    if args.worker:
        ctx = Context(args)
        for spec in specs(args, ctx.messages):
            runner.bench_time_func(
                spec.row.key, time_func(ctx, spec), inner_loops=len(ctx.work(spec.on).samples)
            )
        return 0

    started = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    t_start = time.perf_counter()
    if args.setup_peers:
        setup_peers()
    with tempfile.TemporaryDirectory(prefix="bench-convert-") as tmp:
        conv = Converter(Settings.load(home=Path(tmp) / "home", env={}))
        messages = collect_messages(conv, args.corpus)
        print(
            f"{len(messages.samples)} messages convert OK ({messages.duplicates} duplicates "
            f"dropped, {len(messages.failed)} failing left out); {len(messages.common)} parse "
            "in every peer and are benchmarked",
            file=sys.stderr,
        )
        if not messages.common:
            print("error: no message to benchmark", file=sys.stderr)
            return 1
        check_freshening(conv, messages.samples)
        if args.paired:
            print(paired(args, messages))
            return 0
        args.samples = str(Path(tmp) / "samples.json")
        messages.dump(Path(args.samples))
        rows = []
        for spec in specs(args, messages):
            n = len(messages.common if spec.on == "common" else messages.samples)
            spec.row.bench = runner.bench_time_func(
                spec.row.key, time_func(Context(args), spec), inner_loops=n
            )
            rows.append(spec.row)
    # What brightohir made of the messages (or why its row is missing), checked once.
    wanted = not args.rows or "bo" in args.rows.split(",")
    peer = brightohir_note(messages) if wanted and not args.no_peer_converter else ("", "")
    shown = [a for a in sys.argv[1:] if a != "--setup-peers"]
    command = " ".join([".venv/bin/python bench/bench_convert.py", *shown])
    text = render(args, command, started, time.perf_counter() - t_start, messages, rows, peer)
    print(text)
    if args.out != "-":
        _results.write_section(Path(args.out), _results.markers("conversion"), text, first=True)
        print(f"conversion section written to {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
