"""Memory and GC of ``gateway convert`` on large batches (issue 18, streaming).

    .venv/bin/python bench/bench_memory.py [--out bench/RESULTS.md | -] [--small N] [--large N]
        [--gc-messages N] [--dicom-small N] [--dicom-large N]

Measures, on generated inputs of never-seen records (each message's ids, times and
patient name made unique, as bench_convert.py's ``freshen`` does):

- peak RSS of ``gateway convert FILE`` (a subprocess; its own ``ru_maxrss`` from
  ``os.wait4``) on one HL7 v2 file of ``--large`` messages against one of ``--small``
  (goal: within 10 %: memory does not grow with the file);
- the same for a folder of ``--dicom-large`` DICOM files against ``--dicom-small``
  (small synthetic Part 10 files made with pydicom, 100 instances per study, the
  studies' files interleaved in one flat folder);
- the longest single pause of the garbage collector (``gc.callbacks``) while
  converting ``--gc-messages`` messages the way ``gateway convert`` does (converter
  built, ``BatchGC``, the file streamed), beside the interpreter's default settings.

The section between this script's markers in RESULTS.md is rewritten; the machine's
load average is recorded with it (the machine is shared: figures are taken under load).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import _results  # bench/_results.py (this script's folder is on sys.path)

REPO = Path(__file__).resolve().parent.parent
MARKERS = _results.markers("memory", "bench/bench_memory.py")
PER_STUDY = 100  # DICOM instances per generated study

# Fields made unique per generated message: (segment, field numbers) → first component.
_IDS = {"MSH": (10,), "PID": (2, 3, 4), "ORC": (2, 3), "OBR": (2, 3), "RF1": (6, 11)}
_NAMES = {"PID": (5,)}


# -- inputs --------------------------------------------------------------------------------


def samples() -> list[tuple[str, str]]:
    """(text, codec) of every example message that converts cleanly."""
    from gateway.config import Settings
    from gateway.intake.hl7v2 import split_messages
    from gateway.pipeline import Converter

    conv = Converter(Settings.load(os.environ.get("GATEWAY_HOME")))
    out = []
    for path in sorted((REPO / "examples" / "hl7v2").glob("*.hl7")):
        for raw in split_messages(path.read_bytes()):
            if raw.error is not None:
                continue
            records = conv.convert(raw.data)
            if len(records) == 1 and records[0].ok and records[0].charset:
                out.append((raw.data.decode(records[0].charset), records[0].charset))
    return out


def _letters(k: int) -> str:
    out = ""
    while True:
        k, r = divmod(k, 26)
        out += "abcdefghijklmnopqrstuvwxyz"[r]
        if not k:
            return out


def freshen(text: str, k: int) -> str:
    fs, cs = text[3], text[4]
    lines = text.split("\r")
    for n, line in enumerate(lines):
        name = line[:3]
        fields = line.split(fs)
        shift = 1 if name == "MSH" else 0
        for numbers, add in ((_IDS.get(name, ()), f"{k:07d}"), (_NAMES.get(name, ()), _letters(k))):
            for number in numbers:
                i = number - shift
                if i < len(fields) and fields[i]:
                    comps = fields[i].split(cs)
                    comps[0] += add
                    fields[i] = cs.join(comps)
        lines[n] = fs.join(fields)
    return "\r".join(lines)


def write_hl7(path: Path, count: int, pool: list[tuple[str, str]], start: int) -> None:
    """``count`` never-seen messages, one after the other (a plain concatenated file)."""
    with path.open("wb") as out:
        for k in range(count):
            text, codec = pool[k % len(pool)]
            out.write(freshen(text, start + k).encode(codec) + b"\r")


def write_dicom(folder: Path, count: int) -> None:
    """``count`` small Part 10 files, PER_STUDY instances per study, all in one folder
    with the studies' files interleaved (named so that sorting mixes them)."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    folder.mkdir(parents=True, exist_ok=True)
    studies = max(1, count // PER_STUDY)
    uids = [f"1.2.826.0.1.3680043.10.1001.{s + 1}" for s in range(studies)]
    for n in range(count):
        s = n % studies
        ds = Dataset()
        ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2"  # CT Image Storage
        ds.SOPInstanceUID = generate_uid(entropy_srcs=[str(n)])
        ds.StudyInstanceUID = uids[s]
        ds.SeriesInstanceUID = f"{uids[s]}.1"
        ds.SeriesNumber = 1
        ds.InstanceNumber = n // studies + 1
        ds.Modality = "CT"
        ds.StudyDate, ds.StudyTime = "20260611", "101500"
        ds.AccessionNumber = f"ACC{s + 1:05d}"
        ds.PatientID = f"P{s + 1:06d}"
        ds.IssuerOfPatientID = "LAX2"
        ds.PatientName = f"WANG^WEI{_letters(s)}"
        ds.PatientSex, ds.PatientBirthDate = "M", "19700101"
        ds.InstitutionName = "来安县第二人民医院"
        ds.SpecificCharacterSet = "ISO_IR 192"
        ds.StudyDescription = "CT HEAD"
        ds.Rows = ds.Columns = 8
        ds.BitsAllocated = ds.BitsStored = 8
        ds.HighBit = 7
        ds.SamplesPerPixel, ds.PixelRepresentation = 1, 0
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.PixelData = bytes(64)
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = ds.SOPClassUID
        meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta = meta
        ds.save_as(folder / f"{ds.SOPInstanceUID[-12:]}.dcm", enforce_file_format=True)


# -- measurements --------------------------------------------------------------------------


def peak_rss(args: list[str], home: Path) -> tuple[int, float, str]:
    """(peak RSS in KiB, seconds, summary line) of ``gateway ARGS`` in a child."""
    env = {**os.environ, "GATEWAY_HOME": str(home)}
    cmd = [sys.executable, "-m", "gateway.cli", *args]
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    assert proc.stderr is not None
    err = proc.stderr.read().decode("utf-8", "replace")
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    seconds = time.perf_counter() - start
    summary = next((ln for ln in reversed(err.splitlines()) if ln.startswith("converted")), err)
    return usage.ru_maxrss, seconds, summary.strip()


def gc_probe(path: str, tuned: bool) -> dict[str, float]:
    """In this process: convert ``path`` as ``gateway convert`` does and time every
    collection (``gc.callbacks``)."""
    from gateway.cli import BatchGC
    from gateway.config import Settings
    from gateway.pipeline import Converter

    conv = Converter(Settings.load(os.environ.get("GATEWAY_HOME")))
    collector = BatchGC() if tuned else None
    pauses: list[tuple[int, float]] = []
    started = [0.0]

    def watch(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            started[0] = time.perf_counter()
        else:
            pauses.append((info["generation"], time.perf_counter() - started[0]))

    gc.callbacks.append(watch)
    begin = time.perf_counter()
    records = 0
    with open(path, "rb") as fp:
        for _ in conv.iter_convert_stream(iter(lambda: fp.read(1 << 20), b"")):
            records += 1
            if collector is not None:
                collector.record()
    total = time.perf_counter() - begin
    gc.callbacks.remove(watch)
    longest = max(pauses, key=lambda p: p[1], default=(0, 0.0))
    return {
        "records": records,
        "seconds": total,
        "collections": len(pauses),
        "full": sum(1 for g, _ in pauses if g == 2),
        "longest_ms": longest[1] * 1000,
        "longest_gen": longest[0],
        "gc_share": sum(p for _, p in pauses) / total if total else 0.0,
    }


def run_gc_probe(path: Path, tuned: bool, home: Path) -> dict[str, float]:
    env = {**os.environ, "GATEWAY_HOME": str(home)}
    cmd = [sys.executable, __file__, "--gc-probe", str(path)] + ([] if tuned else ["--default-gc"])
    out = subprocess.run(cmd, env=env, capture_output=True, check=True, text=True).stdout
    result: dict[str, float] = json.loads(out.strip().splitlines()[-1])
    return result


# -- report --------------------------------------------------------------------------------


def _mib(kib: int) -> str:
    return f"{kib / 1024:,.0f} MiB"


def _verdict(ok: bool) -> str:
    return "met" if ok else "**not met**"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(REPO / "bench" / "RESULTS.md"))
    parser.add_argument("--small", type=int, default=10_000)
    parser.add_argument("--large", type=int, default=100_000)
    parser.add_argument("--gc-messages", type=int, default=30_000)
    parser.add_argument("--dicom-small", type=int, default=1_000)
    parser.add_argument("--dicom-large", type=int, default=10_000)
    parser.add_argument("--gc-probe", help=argparse.SUPPRESS)
    parser.add_argument("--default-gc", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    sys.path.insert(0, str(REPO))
    if args.gc_probe:
        print(json.dumps(gc_probe(args.gc_probe, not args.default_gc)))
        return 0
    load = os.getloadavg()
    lines: list[str] = []
    with tempfile.TemporaryDirectory(prefix="bench-memory-") as tmp:
        work = Path(tmp)
        home = work / "home"
        home.mkdir()
        os.environ.setdefault("GATEWAY_HOME", str(home))
        pool = samples()
        small, large, gcfile = work / "small.hl7", work / "large.hl7", work / "gc.hl7"
        write_hl7(small, args.small, pool, 1)
        write_hl7(large, args.large, pool, 1 + args.small)
        write_hl7(gcfile, args.gc_messages, pool, 1 + args.small + args.large)
        rows = []
        for label, path, n in (("small", small, args.small), ("large", large, args.large)):
            kib, secs, summary = peak_rss(["convert", str(path)], home)
            rows.append((label, n, path.stat().st_size, kib, secs, summary))
            print(f"hl7v2 {label}: {n} messages, peak {_mib(kib)}, {secs:.0f} s", file=sys.stderr)
        dicom_rows = []
        for label, n in (("small", args.dicom_small), ("large", args.dicom_large)):
            folder = work / f"dicom-{label}"
            write_dicom(folder, n)
            kib, secs, summary = peak_rss(["convert", str(folder)], home)
            dicom_rows.append((label, n, kib, secs, summary))
            print(f"dicom {label}: {n} files, peak {_mib(kib)}, {secs:.0f} s", file=sys.stderr)
        tuned = run_gc_probe(gcfile, True, home)
        default = run_gc_probe(gcfile, False, home)
    hl7_ratio = rows[1][3] / rows[0][3]
    dicom_ratio = dicom_rows[1][2] / dicom_rows[0][2]
    lines += [
        "## Memory and GC (bench_memory.py)",
        "",
        f"Run {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, Python "
        f"{sys.version.split()[0]}, load average {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} "
        f"on {os.cpu_count()} cores: the machine is shared, figures were taken under load "
        "(peak RSS does not depend on it; seconds and GC pauses do).",
        "",
        "Peak RSS is the `gateway convert` child's own `ru_maxrss` (`os.wait4`); output to "
        "stdout (JSON lines, discarded). Messages are never-seen variants of the examples "
        "(ids, times, patient name unique per message).",
        "",
        "| input | records | size | peak RSS | seconds | summary |",
        "|---|---|---|---|---|---|",
    ]
    for label, n, size, kib, secs, summary in rows:
        lines.append(
            f"| HL7 v2, one file ({label}) | {n:,} | {size / 2**20:,.1f} MiB | {_mib(kib)} "
            f"| {secs:,.0f} | {summary} |"
        )
    for label, n, kib, secs, summary in dicom_rows:
        lines.append(
            f"| DICOM, one folder ({label}), {PER_STUDY} files a study, interleaved | {n:,} files "
            f"| | {_mib(kib)} | {secs:,.0f} | {summary} |"
        )
    lines += [
        "",
        f"- HL7 v2: {args.large:,} messages peak at **{hl7_ratio:.2f}×** the RSS of "
        f"{args.small:,} (goal ≤ 1.10×: {_verdict(hl7_ratio <= 1.10)}).",
        "  Before streaming, one file of 100,000 messages peaked at 914 MB (the file and "
        "the list of its messages were held). "
        "Until 2026-12-06 the 100,000-message file still peaked at 1.29× (397 MiB): "
        "the converter's content caches counted entries, not bytes, and kept filling "
        "(validation by construction's accepted values and verdicts, the mapping "
        "memo's seen-set, `resource_id`). Now each is bounded in bytes and full "
        "within the first few thousand messages: the mapping memo's seen-set is a "
        "fixed 2,048-slot table, remembered fragments are capped at 64 KiB each, the "
        "validator stores a value only once it recurs and never the values that vary "
        "per record (names, numbers, dates); `tests/mapping/test_memo_bounds.py` and "
        "`tests/validation/test_construct.py` hold the bounds.",
        f"- DICOM: {args.dicom_large:,} files peak at **{dicom_ratio:.2f}×** the RSS of "
        f"{args.dicom_small:,} (goal ≤ 1.10×: {_verdict(dicom_ratio <= 1.10)}).",
        "",
        f"Garbage collector over {int(tuned['records']):,} never-seen messages, converted as "
        "`gateway convert` does (file streamed, one record at a time), each collection timed "
        "with `gc.callbacks`:",
        "",
        "| settings | collections | full (gen 2) | longest pause | time in GC | seconds |",
        "|---|---|---|---|---|---|",
    ]
    for name, r in (
        (
            "`BatchGC` (gateway convert): frozen after start-up and after records 1, 10, 100, "
            "1,000 (collector off during the first); thresholds (10000, 20, 50)",
            tuned,
        ),
        ("interpreter default (700, 10, 10), nothing frozen", default),
    ):
        lines.append(
            f"| {name} | {int(r['collections']):,} | {int(r['full']):,} "
            f"| {r['longest_ms']:.1f} ms (gen {int(r['longest_gen'])}) "
            f"| {r['gc_share']:.1%} | {r['seconds']:,.0f} |"
        )
    lines += [
        "",
        f"- Longest single pause with `BatchGC`: **{tuned['longest_ms']:.1f} ms** "
        f"(goal < 50 ms: {_verdict(tuned['longest_ms'] < 50)}).",
    ]
    _results.emit(args.out, MARKERS, "\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
