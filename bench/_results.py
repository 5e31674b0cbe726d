"""What the bench scripts share: pyperf's runner set-up, rows and their rates, the tables
of RESULTS.md (bench_convert.py, bench_imaging.py, bench_validate.py) and writing one
section of it (every script).

pyperf does the measuring (worker processes, loop calibration, warm-ups, values) and
the statistics; this module only turns its Benchmarks into Markdown. pyperf is imported
where it is used: the scripts that do not measure with it run without the bench extra
(make bench-store)."""

from __future__ import annotations

import argparse
import gc
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as package_version
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pyperf  # type: ignore[import-untyped]

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "RESULTS.md"
CLOCKS = {
    "cpu": "Times are the worker's CPU time (`time.process_time`, `--clock cpu`): on a "
    "shared machine, time spent waiting for the core does not count, so a rate is what one "
    "core does (`--clock wall` times by the wall clock instead).",
    "wall": "Times are wall-clock time (`time.perf_counter`, `--clock wall`).",
}


def runner(
    processes: int, values: int, forward: Callable[[argparse.Namespace], list[str]]
) -> pyperf.Runner:
    """A pyperf Runner whose worker processes get this script's own options back
    (``forward(args)``): each worker re-runs the script and must declare the same rows."""

    import pyperf

    def add_cmdline_args(cmd: list[str], args: argparse.Namespace) -> None:
        cmd.extend(forward(args))

    return pyperf.Runner(processes=processes, values=values, add_cmdline_args=add_cmdline_args)


# The timed work of one pyperf value, on inputs made beforehand; work that times itself
# in another process (a peer's worker) returns its (wall, CPU) seconds.
Work = Callable[[], "tuple[float, float] | None"]


def add_clock_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--clock",
        choices=("cpu", "wall"),
        default="cpu",
        help="time by the process's CPU clock (default) or the wall clock",
    )


def time_func(clock: str, prepare: Callable[[int], Work]) -> Callable[[int], float]:
    """pyperf's time function: ``prepare(loops)`` makes the inputs (untimed: fresh
    messages, a new data set), then the work on them is timed, by the process's CPU clock
    (``cpu``: on a shared machine, waiting for the core does not count) or the wall
    clock. The garbage collector stays on; it is run before each value."""
    cpu = clock == "cpu"
    now = time.process_time if cpu else time.perf_counter

    def timed(loops: int) -> float:
        work = prepare(loops)
        gc.collect()
        t0 = now()
        own = work()
        elapsed = now() - t0
        if own is not None:  # timed inside the peer's own process
            return own[1] if cpu else own[0]
        return elapsed

    return timed


@dataclass
class Row:
    key: str
    label: str
    what: str
    group: str = "main"
    bench: pyperf.Benchmark | None = None

    @property
    def rate(self) -> float:
        """Items (messages, instances) per second: 1 / pyperf's median time per item."""
        assert self.bench is not None
        return 1.0 / float(self.bench.median())

    @property
    def us(self) -> float:
        assert self.bench is not None
        return float(self.bench.median()) * 1e6

    @property
    def spread(self) -> float:
        """Standard deviation / mean of pyperf's values (0 with a single value)."""
        assert self.bench is not None
        values = self.bench.get_values()
        return float(self.bench.stdev()) / float(self.bench.mean()) if len(values) > 1 else 0.0


def rate(x: float) -> str:
    return f"{x:,.0f}" if x >= 100 else f"{x:,.1f}"


def reading(ratio: float) -> str:
    if ratio >= 1:
        return f"A is {ratio:.1f}× faster" if ratio < 10 else f"A is {ratio:.0f}× faster"
    inverse = 1 / ratio
    return f"A is {inverse:.1f}× slower" if inverse < 10 else f"A is {inverse:.0f}× slower"


def results_table(rows: Sequence[Row], unit: str) -> list[str]:
    out = [
        f"| row | what is timed | {unit}/s (median) | ± std. dev. | µs/{unit[:-1]} | values |",
        "| --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        if r.bench is None:
            continue
        out.append(
            f"| {r.label} | {r.what} | **{rate(r.rate)}** | {r.spread:.0%} | {r.us:,.0f} | "
            f"{len(r.bench.get_values())} |"
        )
    return out


def ratios_table(rows: Sequence[Row], pairs: Sequence[tuple[str, str]]) -> list[str]:
    by_key = {r.key: r for r in rows if r.bench is not None}
    out = [
        "| A | B | A/B (ratio of medians) | reading |",
        "| --- | --- | ---: | --- |",
    ]
    for ka, kb in pairs:
        a, b = by_key.get(ka), by_key.get(kb)
        if a is not None and b is not None:
            ratio = a.rate / b.rate
            out.append(f"| {a.label} | {b.label} | **{ratio:.3g}** | {reading(ratio)} |")
    return out if len(out) > 2 else []


def method(args: argparse.Namespace, unit: str) -> str:
    """How pyperf measured, from the runner's own (parsed) options."""
    import pyperf

    return (
        f"Measured with [pyperf](https://pyperf.readthedocs.io/) {pyperf.__version__}: every "
        f"row runs in {args.processes} fresh worker processes (each its own interpreter, "
        f"caches and hash seed), each discarding {args.warmups} warm-up value(s) and then "
        f"recording {args.values} values of at least {args.min_time} s (pyperf calibrates how "
        f"many passes one value makes). {CLOCKS[getattr(args, 'clock', 'wall')]} Rates are "
        f"{unit} per second from the median time per {unit[:-1]}; *± std. dev.* is the "
        "standard deviation of the values over their mean. "
        "Single thread; the garbage collector stays on. Ratios divide the medians of two rows "
        "of the same run. On a shared virtual machine the speed drifts from minute to minute: "
        "rerun before drawing conclusions from a small difference."
    )


def environment(first: pyperf.Benchmark | None, packages: Sequence[str]) -> list[str]:
    """Machine and software lines, from pyperf's metadata of one benchmark."""
    meta = first.get_metadata() if first is not None else {}
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    out = [
        f"CPU: {meta.get('cpu_model_name', '?')}; {meta.get('cpu_count', '?')} logical CPUs; "
        f"load average (1, 5, 15 min) at the end of the run: {load} (other work on the "
        "machine: the CPU clock leaves out the time a worker waited for its core)",
        f"OS: {meta.get('platform', '?')}; Python {meta.get('python_version', '?')}",
        f"gateway commit: {commit()}",
    ]
    import gateway  # where the measured code comes from (PYTHONPATH may point elsewhere)

    source = Path(gateway.__file__).resolve().parent.parent
    if source != REPO:
        out[-1] = f"gateway code: {source} (not this checkout, whose commit is {commit()})"
    versions = []
    for name in packages:
        try:
            versions.append(f"{name} {package_version(name)}")
        except PackageNotFoundError:
            versions.append(f"{name} not installed")
    out.append("libraries: " + ", ".join(versions))
    return out


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo), else what ``platform`` knows of it."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def commit() -> str:
    def git(*args: str) -> str:
        return subprocess.run(
            ["git", "-C", str(REPO), *args], capture_output=True, text=True, check=True
        ).stdout.strip()

    try:
        head = git("rev-parse", "--short", "HEAD")
        dirty = git("status", "--porcelain", "--", "gateway", "mappings")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return f"{head} (gateway/ or mappings/ modified in the work tree)" if dirty else head


Markers = tuple[str, str]  # the begin and end comments around a section of RESULTS.md


def markers(name: str, writer: str = "bench/") -> Markers:
    """The comments around benchmark ``name``'s section, as RESULTS.md spells them (each
    script keeps the ``writer`` its section was first written with: they find it by it)."""
    return (
        f"<!-- {name} benchmark: begin (written by {writer}) -->",
        f"<!-- {name} benchmark: end -->",
    )


def section_block(marks: Markers, text: str) -> str:
    """The section as it stands in RESULTS.md: ``text`` between its markers."""
    begin, end = marks
    return f"{begin}\n\n{text.strip()}\n\n{end}"


def write_section(path: Path, marks: Markers, text: str, *, first: bool = False) -> None:
    """Replace the section between ``marks`` in ``path``, in place, keeping every other
    section and the hand-written text around them (the other benchmarks' sections live
    in the same file); a section not there yet goes last (``first``: first)."""
    old = path.read_text(encoding="utf-8") if path.exists() else ""
    begin, end = marks
    block = section_block(marks, text)
    if begin in old and end in old.split(begin, 1)[1]:
        head, rest = old.split(begin, 1)
        path.write_text(head + block + rest.split(end, 1)[1], encoding="utf-8")
        return
    if first or not old.strip():
        new = f"{block}\n\n{old.lstrip()}" if old.strip() else f"{block}\n"
    else:
        new = f"{old.rstrip()}\n\n{block}\n"
    path.write_text(new, encoding="utf-8")


def emit(out: str, marks: Markers, text: str) -> None:
    """A script's ``--out``: its section written into that file, or printed (``-``) as it
    would stand there."""
    if out == "-":
        print(section_block(marks, text))
        return
    write_section(Path(out), marks, text)
    print(f"wrote {out}", file=sys.stderr)
