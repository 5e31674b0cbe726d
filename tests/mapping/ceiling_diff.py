"""A differential fuzzer of the ceiling mapping engine (issue 18) against the compiled one.

Each input (an HL7 v2 message or batch, mutated from the goldens, examples and the
shared corpus) is converted by three Converters (interpreted, compiled, ceiling), each
long-lived, so that their memo, shared entries and answers carry the history of every
message before (interleaved messages, each converted twice in a row). What a caller sees
(``_outcome`` of tests/mapping/test_codegen.py) must be the same byte for byte; the
compiled engine is the truth, checked against the interpreter where they differ.

Run longer than the bounded test (tests/mapping/test_ceiling_differential.py):
``CEILING_DIFF_SECONDS=600 CEILING_DIFF_SEED=7 .venv/bin/python -m tests.mapping.ceiling_diff``
prints the inputs run, the differences (saved under tests/mapping/ceiling_found/) and the
ceiling's fallback rate by reason.
"""

from __future__ import annotations

import dataclasses
import os
import random
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from gateway import Converter, Settings, dump_json, operation_outcome
from gateway.envelope import Record
from tests.fuzz import harness, mutators

REPO = Path(__file__).resolve().parents[2]
CORPUS = REPO.parent / "shared" / "corpus" / "hl7v2"
FOUND = Path(__file__).with_name("ceiling_found")
ENGINES = ("interpreted", "compiled", "ceiling")

Rng = random.Random


def converters(home: Path, engines: tuple[str, ...] = ENGINES) -> dict[str, Converter]:
    """One Converter per engine on the same settings, as test_codegen's ``engines``."""
    settings = Settings.load(home=home / "home", env={})
    saved = {k: os.environ.get(k) for k in ("GATEWAY_MAPPING_CACHE", "GATEWAY_MAPPING_ENGINE")}
    out = {}
    try:
        os.environ["GATEWAY_MAPPING_CACHE"] = str(home / "cache")
        for engine in engines:
            os.environ["GATEWAY_MAPPING_ENGINE"] = engine
            out[engine] = Converter(settings)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return out


def outcome(records: list[Record]) -> list[Any]:
    """All a caller sees of a conversion: state, Bundle bytes, issues, OperationOutcome
    bytes, unmapped fields (test_codegen compares the same)."""
    return [
        (
            r.state,
            r.bundle_json,
            [dataclasses.asdict(i) for i in r.issues],
            dump_json(operation_outcome(r.issues)),
            r.unmapped,
        )
        for r in records
    ]


def convert(conv: Converter, data: bytes, trace: bool = False) -> list[Any]:
    return outcome(list(conv.iter_convert(data, "input.hl7", trace=trace)))


# -- seeds --------------------------------------------------------------------------------


def seeds() -> list[bytes]:
    """Every golden/example HL7 v2 input, and the shared corpus when it is beside the
    checkout; each multi-message file also message by message."""
    from gateway.intake.hl7v2 import split_messages

    out = [next(iter(c.parts.values())) for c in harness.seeds("hl7v2")]
    if CORPUS.is_dir():
        out += [p.read_bytes() for p in sorted(CORPUS.iterdir()) if p.suffix in (".hl7", ".txt")]
    singles = []
    for data in out:
        raws = [r for r in split_messages(data) if r.segments]
        if len(raws) > 1:
            singles += [r.data for r in raws]
    return out + singles


# -- targeted mutations -------------------------------------------------------------------

# The segments the HL7 v2 mappings read, most often chosen
_READ = ("MSH", "PID", "PV1", "ORC", "OBR", "OBX", "PRD", "RF1", "NTE", "DG1", "PD1", "IPC")
_ESC = [
    "\\F\\",
    "\\S\\",
    "\\T\\",
    "\\R\\",
    "\\E\\",
    "\\X41\\",
    "\\X0A\\",
    "\\X07\\",
    "\\H\\",
    "\\N\\",
    "\\.br\\",
    "\\Zx\\",
    "\\X\\",
    "\\",
    "\\C2842\\",
    "\\M2442\\",
    "\\XE4B8AD\\",
]
_ODD = [
    '""',
    "",
    " ",
    "  x  ",
    "王^伟",
    "X" * 3000,
    "2026-06-20",
    "20261399",
    "-1",
    "0",
    "\x1b",
    "NSCH",
    "HKPMC",
    "LAX2",
    "1.2.3.4",
    "ISO",
    "MR",
    "^^^^",
    "~~",
    "&&&",
    "a&b",
    "1.3.6.1.4.1.99999.1.1",
    "HKID",
    "L",
    "A",
    "RP",
    "F",
    "CT",
    "113014^DICOM Study^DCM",
    "29252-4^CT Chest^LN",
    "GLU^Glucose^LN",
    "許^嘉瑋^^^^^L",
    "\t",
    "É",
    "ÿ",
    "\u3000",
]


@dataclasses.dataclass
class Msg:
    """One HL7 v2 message or batch as text lines (bytes read as latin-1: delimiters are
    ASCII, every other byte kept as it was)."""

    lines: list[str]
    sep: str
    fs: str = "|"
    cs: str = "^"
    rs: str = "~"
    es: str = "\\"
    ss: str = "&"

    @classmethod
    def parse(cls, data: bytes) -> Msg:
        text = data.decode("latin-1")
        sep = "\r\n" if "\r\n" in text else ("\r" if "\r" in text else "\n")
        m = cls(text.split(sep), sep)
        for line in m.lines:
            if line.startswith("MSH") and len(line) > 8:
                m.fs, m.cs, m.rs, m.es, m.ss = line[3], line[4], line[5], line[6], line[7]
                break
        return m

    def data(self) -> bytes:
        return self.sep.join(self.lines).encode("latin-1")

    def pick(self, rng: Rng) -> int | None:
        read = [n for n, x in enumerate(self.lines) if x[:3] in _READ]
        if read and rng.random() < 0.9:
            return rng.choice(read)
        return rng.randrange(len(self.lines)) if self.lines else None


def _u(s: str) -> str:
    """Unicode text as our latin-1 view of its UTF-8 bytes."""
    return s.encode("utf-8").decode("latin-1")


def _field_value(rng: Rng, m: Msg, value: str, pool: list[Msg], seg: str, at: int) -> str:
    comps = value.split(m.cs)
    op = rng.randrange(15)
    c = rng.randrange(len(comps) + 1)
    if op == 0:  # repetitions: the value again, empty ones, changed ones
        reps = [value, "", value + "X", '""', value[::-1]]
        rng.shuffle(reps)
        return m.rs.join(reps[: rng.randrange(2, 5)])
    if op == 1:  # an empty or "" component
        comps += [""] * (c + 1 - len(comps))
        comps[c] = rng.choice(["", '""', " "])
        return m.cs.join(comps)
    if op == 2:
        return '""'
    if op == 3:  # subcomponents where a component is expected
        comps += [""] * (c + 1 - len(comps))
        comps[c] = m.ss.join([comps[c], rng.choice(["X", "", "1.2.3", "ISO", '""'])])
        return m.cs.join(comps)
    if op == 4:  # an escape inside the value
        esc = rng.choice(_ESC).replace("\\", m.es)
        pos = rng.randrange(len(value) + 1)
        return value[:pos] + esc + value[pos:]
    if op == 5:  # trailing separators
        return value + rng.choice([m.cs, m.rs, m.ss]) * rng.randrange(1, 4)
    if op == 6:  # padding
        return rng.choice([" ", "  "]) + value + rng.choice(["", " "])
    if op == 7:  # very long (once: stacked, it would grow to gigabytes)
        return (value or "X") * rng.randrange(100, 2000) if len(value) < 5000 else value
    if op == 8:  # the same field of another message
        other = rng.choice(pool)
        for line in other.lines:
            if line.startswith(seg + other.fs):
                parts = line.split(other.fs)
                if at < len(parts):
                    return parts[at]
        return value
    if op == 9:  # an odd component
        comps += [""] * (c + 1 - len(comps))
        comps[c] = _u(rng.choice(_ODD))
        return m.cs.join(comps)
    if op == 10:  # components dropped from the end or front
        return m.cs.join(
            comps[: rng.randrange(len(comps) + 1)] if rng.random() < 0.6 else comps[1:]
        )
    if op == 11:  # a repetition of an odd value first
        return m.rs.join([_u(rng.choice(_ODD)), value])
    if op == 12:  # CJK text
        comps += [""] * (c + 1 - len(comps))
        comps[c] = _u(rng.choice(["王", "梁志东", "許嘉瑋", "某医院", "徐静"]))
        return m.cs.join(comps)
    if op == 13 and m.ss in value:  # an existing subcomponent set to an odd value
        subs = value.split(m.ss)
        subs[rng.randrange(len(subs))] = rng.choice(['""', "", " ", " x ", "\\T\\", "X" * 50])
        return m.ss.join(subs).replace("\\", m.es)
    if op == 13:  # a repetition separator escaped, or raw delimiters
        return value.replace(m.cs, m.es + "S" + m.es, 1) if rng.random() < 0.5 else value + m.es
    return ""


def _segment_op(rng: Rng, m: Msg, pool: list[Msg]) -> None:
    n = m.pick(rng)
    if n is None:
        return
    line = m.lines[n]
    op = rng.randrange(9)
    if op == 0 and not line.startswith("MSH"):
        del m.lines[n]
    elif op == 1:  # a segment twice (a second PID, PRD, ORC...)
        m.lines.insert(n + rng.choice([0, 1]), line if not line.startswith("MSH") else "NTE|1")
    elif op == 2:  # a group again: from this segment to the next of its kind
        kind = line[:3]
        end = next((k for k in range(n + 1, len(m.lines)) if m.lines[k][:3] == kind), len(m.lines))
        if kind != "MSH":
            m.lines[end:end] = m.lines[n:end]
    elif op == 3 and len(m.lines) > 2:  # moved elsewhere
        if not line.startswith("MSH"):
            del m.lines[n]
            m.lines.insert(rng.randrange(1, len(m.lines) + 1), line)
    elif op == 4:  # a segment of another message
        other = rng.choice(pool)
        cands = [x for x in other.lines if x[:3] in _READ and x[:3] != "MSH"]
        if cands:
            seg = rng.choice(cands)
            if other.fs != m.fs:
                return
            m.lines.insert(rng.randrange(1, len(m.lines) + 1), seg)
    elif op == 5:  # trailing field separators
        m.lines[n] = line + m.fs * rng.randrange(1, 4)
    elif op == 6:  # a segment truncated after some field
        parts = line.split(m.fs)
        m.lines[n] = m.fs.join(parts[: rng.randrange(1, len(parts) + 1)])
    elif op == 7 and len(m.lines) > 2:  # two segments swapped
        k = rng.randrange(1, len(m.lines))
        if not line.startswith("MSH") and n:
            m.lines[n], m.lines[k] = m.lines[k], m.lines[n]
    else:  # a field swapped with another of the segment
        parts = line.split(m.fs)
        if len(parts) > 3:
            a, b = rng.randrange(1, len(parts)), rng.randrange(1, len(parts))
            if not line.startswith("MSH") or min(a, b) > 2:
                parts[a], parts[b] = parts[b], parts[a]
                m.lines[n] = m.fs.join(parts)


def _field_op(rng: Rng, m: Msg, pool: list[Msg]) -> None:
    n = m.pick(rng)
    if n is None:
        return
    parts = m.lines[n].split(m.fs)
    seg = parts[0]
    lo = 2 if seg == "MSH" else 1  # MSH-2 kept (the delimiters)
    hi = max(lo + 1, len(parts) + 2)
    at = rng.randrange(lo, hi)
    parts += [""] * (at + 1 - len(parts))
    for _ in range(rng.choice((1, 1, 2, 3))):  # shapes stacked: padded and repeated...
        parts[at] = _field_value(rng, m, parts[at], pool, seg, at)
    m.lines[n] = m.fs.join(parts)


_DELIMS = ["#", "!", "$", "*", "@", "%", "`", "{", "}", "?", "=", "+"]


def _redelimit(rng: Rng, m: Msg) -> None:
    """The same message with other MSH-1/MSH-2 characters, translated consistently."""
    text = m.sep.join(m.lines)
    free = [d for d in _DELIMS if d not in text]
    if len(free) < 5:
        return
    rng.shuffle(free)
    old = [m.fs, m.cs, m.rs, m.es, m.ss]
    keep = rng.random() < 0.5  # keep the field separator, change the others
    new = [m.fs if keep else free[0], *free[1:5]]
    text = text.translate(str.maketrans(dict(zip(old, new, strict=True))))
    m.lines = text.split(m.sep)
    m.fs, m.cs, m.rs, m.es, m.ss = new


def _short_msh2(rng: Rng, m: Msg) -> None:
    """MSH-2 cut short (the defaults fill the rest, as _er7 does) or with v2.7's
    truncation character: the same delimiters, written otherwise."""
    if (m.fs, m.cs, m.rs, m.es, m.ss) != ("|", "^", "~", "\\", "&"):
        return
    enc = rng.choice(["^~\\&#", "^~\\", "^~", "^", "", "^~\\&!"])
    for n, line in enumerate(m.lines):
        if line.startswith("MSH|"):
            parts = line.split("|")
            if len(parts) > 1:
                parts[1] = enc
                m.lines[n] = "|".join(parts)
            return


def _recharset(rng: Rng, m: Msg) -> bytes | None:
    """The message in GB 18030 or Big5 (or UTF-8) with MSH-18 saying so."""
    try:
        text = m.data().decode("utf-8")
    except UnicodeDecodeError:
        return None
    codec, name = rng.choice(
        [
            ("gb18030", "GB 18030-2000"),
            ("big5", "BIG-5"),
            ("utf-8", "UNICODE UTF-8"),
            ("gb18030", "GB18030"),
            ("big5", ""),
            ("gb18030", ""),
        ]
    )
    lines = text.split(m.sep)
    for n, line in enumerate(lines):
        if line.startswith("MSH"):
            parts = line.split(m.fs)
            parts += [""] * (18 - len(parts))
            parts[17] = name
            lines[n] = m.fs.join(parts)
            break
    return m.sep.join(lines).encode(codec, "replace")


# strict.yaml's lenient fields (a malformed value dropped with a warning)
_LENIENT = (("RF1", 7), ("RF1", 8), ("RF1", 9), ("DG1", 5), ("ORC", 9))
_BAD_DATES = ["20261399", "2026-06-20", "99999999", "2026", "20260620250000", "x", '""', "0"]


def _lenient(rng: Rng, m: Msg) -> None:
    """A lenient field's value malformed (or fine), in every segment of its kind."""
    seg, at = rng.choice(_LENIENT)
    value = rng.choice(_BAD_DATES)
    for n, line in enumerate(m.lines):
        if line.startswith(seg + m.fs) and rng.random() < 0.8:
            parts = line.split(m.fs)
            parts += [""] * (at + 1 - len(parts))
            parts[at] = value if rng.random() < 0.8 else m.rs.join([value, "20260620"])
            m.lines[n] = m.fs.join(parts)


def _freshen(rng: Rng, m: Msg) -> None:
    """New identifiers and names (PID-3, PID-5, ORC-2, OBR-2/3, RF1-6, MSH-10): a new
    record whose shared entries (organisations, practitioners) were met before."""
    k = rng.randrange(1000)
    fields = {"PID": (3, 5), "ORC": (2,), "OBR": (2, 3), "RF1": (6,), "MSH": (9,)}
    for n, line in enumerate(m.lines):
        parts = line.split(m.fs)
        for i in fields.get(line[:3], ()):
            if i < len(parts) and parts[i]:
                parts[i] = f"Z{k}" + parts[i]
        m.lines[n] = m.fs.join(parts)


def mutate(rng: Rng, pool: list[bytes], msgs: list[Msg]) -> bytes:
    """One input: 1-4 targeted mutations of a seed, sometimes tests/fuzz's own on top."""
    m = Msg.parse(rng.choice(pool))
    m = dataclasses.replace(m, lines=list(m.lines))
    if rng.random() < 0.3:
        _freshen(rng, m)
    for _ in range(rng.randrange(1, 5)):
        r = rng.random()
        if r < 0.08:
            _lenient(rng, m)
        elif r < 0.55:
            _field_op(rng, m, msgs)
        elif r < 0.85:
            _segment_op(rng, m, msgs)
        elif r < 0.90:
            _redelimit(rng, m)
        elif r < 0.93:
            _short_msh2(rng, m)
        else:
            data = _recharset(rng, m)
            if data is not None:
                return data
    data = m.data()
    if rng.random() < 0.05:  # a batch: messages of several records in one input
        data = b"\r".join([data, *(rng.choice(pool).rstrip(b"\r\n") for _ in range(2))])
    if rng.random() < 0.15:  # the generic fuzzer's mutations as well
        case = mutators.hl7v2(rng, harness.Case("hl7v2", {"m.hl7": data}), [])
        data = next(iter(case.parts.values()))
    return data


# -- the campaign -------------------------------------------------------------------------


@dataclasses.dataclass
class Diff:
    data: bytes
    what: str  # which comparison differed


@dataclasses.dataclass
class Campaign:
    engines: dict[str, Converter]
    inputs: int = 0
    conversions: int = 0
    diffs: list[Diff] = dataclasses.field(default_factory=list)
    compiled_wrong: list[Diff] = dataclasses.field(default_factory=list)
    stats: Counter[str] = dataclasses.field(default_factory=Counter)  # per message
    # per input (its first conversion by the ceiling): what its messages' outcomes were,
    # a handful of inputs being batches of hundreds of messages
    per_input: Counter[str] = dataclasses.field(default_factory=Counter)

    def check(self, data: bytes, reference_every: bool = False, trace: bool = False) -> None:
        """``data`` converted twice in a row by each engine; then traced (every tenth)."""
        from gateway.mapping._ceiling import STATS

        self.inputs += 1
        before = Counter(STATS)
        got = {}
        got["compiled"] = [convert(self.engines["compiled"], data) for _ in range(2)]
        got["ceiling"] = [convert(self.engines["ceiling"], data)]
        first = Counter(STATS) - before
        self.per_input["+".join(sorted(first)) or "not mapped by it"] += 1
        got["ceiling"].append(convert(self.engines["ceiling"], data))
        self.stats.update(Counter(STATS) - before)
        self.conversions += 4
        ref = None
        if reference_every or got["ceiling"] != got["compiled"]:
            ref = [convert(self.engines["interpreted"], data) for _ in range(2)]
            if ref != got["compiled"]:
                self.compiled_wrong.append(Diff(data, "compiled != interpreted"))
        if got["ceiling"] != got["compiled"]:
            self.diffs.append(Diff(data, "ceiling != compiled"))
        if trace:
            t = {e: convert(self.engines[e], data, trace=True) for e in ("compiled", "ceiling")}
            if t["ceiling"] != t["compiled"]:
                self.diffs.append(Diff(data, "ceiling != compiled (traced)"))

    def threads(self, batch: list[bytes], n: int = 4) -> None:
        """``n`` threads on the one ceiling Converter, each converting the batch in its
        own order: every output the compiled engine's, byte for byte."""
        want = [convert(self.engines["compiled"], d) for d in batch]
        conv = self.engines["ceiling"]
        bad: list[int] = []

        def work(seed: int) -> None:
            order = list(range(len(batch)))
            random.Random(seed).shuffle(order)
            for k in order:
                if convert(conv, batch[k]) != want[k]:
                    bad.append(k)

        ts = [threading.Thread(target=work, args=(s,)) for s in range(n)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        self.conversions += n * len(batch) + len(batch)
        for k in sorted(set(bad)):
            self.diffs.append(Diff(batch[k], "ceiling != compiled (threads)"))


def run(
    seconds: float,
    seed: int | str,
    limit: int | None = None,
    engines: dict[str, Converter] | None = None,
    progress: Callable[[str], None] | None = None,
) -> Campaign:
    """Mutated inputs until ``seconds`` passed or ``limit`` inputs were run."""
    if engines is None:
        engines = converters(Path(tempfile.mkdtemp(prefix="ceiling-diff-")))
    pool = seeds()
    msgs = [Msg.parse(d) for d in pool]
    rng = random.Random(f"ceiling-diff-{seed}")
    camp = Campaign(engines)
    for data in pool:  # every seed as it is, first
        camp.check(data, reference_every=True, trace=True)
    end = time.monotonic() + seconds
    batch: list[bytes] = []
    last = time.monotonic()
    while time.monotonic() < end and (limit is None or camp.inputs < limit):
        data = mutate(rng, pool, msgs)
        camp.check(data, reference_every=rng.random() < 0.1, trace=rng.random() < 0.1)
        batch.append(data)
        if len(batch) == 40:
            camp.threads(batch)
            batch = []
        if progress and time.monotonic() - last > 30:
            last = time.monotonic()
            progress(f"{camp.inputs} inputs, {len(camp.diffs)} differences, {dict(camp.stats)}")
    return camp


def report(camp: Campaign) -> str:
    tried = sum(camp.stats.values()) or 1
    lines = [
        f"inputs {camp.inputs}, conversions {camp.conversions}",
        f"differences {len(camp.diffs)}, compiled != interpreted {len(camp.compiled_wrong)}",
        "ceiling outcomes per message: "
        + ", ".join(f"{k} {n} ({n / tried:.1%})" for k, n in camp.stats.most_common()),
        "per input: "
        + ", ".join(f"{k} {n} ({n / camp.inputs:.1%})" for k, n in camp.per_input.most_common(12)),
    ]
    return "\n".join(lines)


def save(diffs: list[Diff]) -> list[Path]:
    import hashlib

    FOUND.mkdir(exist_ok=True)
    out = []
    for d in diffs:
        p = FOUND / (hashlib.sha256(d.data).hexdigest()[:16] + ".hl7")
        p.write_bytes(d.data)
        p.with_suffix(".txt").write_text(d.what + "\n")
        out.append(p)
    return out


def solo(engine: str, seed: int | str, limit: int, out: Path) -> None:
    """The campaign's inputs converted twice each by a Converter of ``engine`` alone in
    this process (no other engine's runs between its own: its memo, shared entries and
    answers hold its history only, as in production); a digest of each input's outcome,
    one a line, written to ``out``, for another engine's run to compare with."""
    import hashlib

    conv = converters(Path(tempfile.mkdtemp(prefix="ceiling-solo-")), (engine,))[engine]
    with out.open("w") as f:
        for data in solo_inputs(seed, limit):
            digest = hashlib.sha256()
            for _ in range(2):
                for r in convert(conv, data):
                    digest.update(repr(r).encode())
            f.write(digest.hexdigest() + "\n")


def solo_inputs(seed: int | str, limit: int) -> Iterator[bytes]:
    """The inputs :func:`solo` converts, made one at a time (some are tens of MB)."""
    pool = seeds()
    msgs = [Msg.parse(d) for d in pool]
    rng = random.Random(f"ceiling-solo-{seed}")
    yield from pool
    for _ in range(limit):
        yield mutate(rng, pool, msgs)


def main() -> int:
    if len(sys.argv) == 5 and sys.argv[1] == "solo":  # solo ENGINE SEED LIMIT OUT
        solo(sys.argv[2], sys.argv[3], int(sys.argv[4]), Path(os.environ["CEILING_SOLO_OUT"]))
        return 0
    seconds = float(os.environ.get("CEILING_DIFF_SECONDS", "300"))
    seed = os.environ.get("CEILING_DIFF_SEED") or str(random.randrange(1 << 30))
    print(f"seed {seed}, {seconds:.0f} s", flush=True)
    camp = run(seconds, seed, progress=lambda s: print(s, flush=True))
    print(report(camp))
    for p in save(camp.diffs + camp.compiled_wrong):
        print("saved", p)
    return 1 if camp.diffs else 0


if __name__ == "__main__":
    sys.exit(main())
