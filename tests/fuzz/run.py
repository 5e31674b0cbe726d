"""``make fuzz``: run each format's mutation fuzzer for a while and keep what fails.

    python -m tests.fuzz.run [--seconds 300] [--seed N] [--formats hl7v2,zip,...]

Each failing input is written to ``tests/fuzz/found/<format>/<digest>`` (a file, or a
folder for inputs of several parts) with ``<digest>.txt`` beside it (the summary and
the traceback); one per distinct failure signature is printed at the end. Exit status
1 when anything failed. ``FUZZ_SECONDS`` and ``FUZZ_SEED`` set the defaults.
"""

from __future__ import annotations

import argparse
import faulthandler
import os
import random
import resource
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from .harness import (
    FORMATS,
    FOUND,
    TIME_BUDGET,
    WALL_FACTOR,
    Case,
    Failure,
    Targets,
    check,
    save,
    seeds,
)
from .mutators import mutator

# Inputs beyond the API's body limit (4 MiB) are dropped: stacked repeats can build
# hundreds of MB, which tests the disk more than the gateway.
MAX_INPUT = 4 << 20


@dataclass
class Stats:
    fmt: str
    runs: int = 0
    failures: int = 0
    seconds: float = 0.0
    distinct: dict[str, tuple[Failure, Case]] = field(default_factory=dict)


def cases(fmt: str, rng: random.Random) -> Iterator[Case]:
    """An endless, deterministic stream of mutated inputs of one format."""
    pool = seeds(fmt)
    studies = seeds("dicom") if fmt == "zip" else []
    mutate = mutator(fmt, studies)
    recent: list[Case] = []
    while True:
        base = rng.choice(recent) if recent and rng.random() < 0.25 else rng.choice(pool)
        try:
            case = mutate(rng, base, pool)
        except Exception as exc:  # a mutator bug must not end a long run: say it, go on
            print(f"  [{fmt}] mutator error {type(exc).__name__}: {exc}", file=sys.stderr)
            continue
        if case.size > MAX_INPUT:
            continue
        if case.size < 1 << 20:  # keep small mutants as bases for deeper mutations
            recent.append(case)
            if len(recent) > 64:
                recent.pop(rng.randrange(len(recent)))
        yield case


def campaign(
    targets: Targets,
    fmt: str,
    seed: int,
    *,
    iterations: int | None = None,
    seconds: float | None = None,
    on_case: Callable[[Case | None], None] | None = None,
    on_failure: Callable[[Case, Failure], None] | None = None,
    progress: Callable[[Stats], None] | None = None,
) -> Stats:
    """Run ``fmt``'s fuzzer until ``iterations`` inputs or ``seconds`` have gone by."""
    rng = random.Random(f"{fmt}:{seed}")
    stats = Stats(fmt)
    start = last = time.monotonic()
    for case in cases(fmt, rng):
        if iterations is not None and stats.runs >= iterations:
            break
        now = time.monotonic()
        if seconds is not None and now - start >= seconds:
            break
        if on_case is not None:
            on_case(case)
        failure = check(targets, case)
        if on_case is not None:
            on_case(None)
        stats.runs += 1
        if failure is not None:
            stats.failures += 1
            if failure.signature not in stats.distinct:
                stats.distinct[failure.signature] = (failure, case)
                if on_failure is not None:
                    on_failure(case, failure)
        if progress is not None and now - last >= 30:
            last = now
            stats.seconds = now - start
            progress(stats)
    stats.seconds = time.monotonic() - start
    return stats


def _write_failure(fmt: str) -> Callable[[Case, Failure], None]:
    def write(case: Case, failure: Failure) -> None:
        folder = FOUND / fmt
        path = save(case, folder)
        head = f"{failure.kind}: {failure.summary}\nsignature: {failure.signature}"
        (folder / f"{case.digest}.txt").write_text(f"{head}\n\n{failure.details}\n")
        shown = path.relative_to(Path.cwd()) if path.is_relative_to(Path.cwd()) else path
        print(f"  [{fmt}] NEW {failure.kind}: {failure.summary}  -> {shown}", flush=True)

    return write


def _last_input(fmt: str) -> Callable[[Case | None], None]:
    """Keep the input under test on disk and a watchdog on it: a hang in C code, which
    SIGALRM cannot interrupt, ends the process (faulthandler prints where) and leaves the
    input in found/<format>/.current/."""
    folder = FOUND / fmt / ".current"

    def keep(case: Case | None) -> None:
        if case is None:
            faulthandler.cancel_dump_traceback_later()
            return
        if folder.exists():
            shutil.rmtree(folder)
        save(case, folder, "input")
        faulthandler.dump_traceback_later(TIME_BUDGET * WALL_FACTOR * 5, exit=True)

    return keep


def _cap_memory() -> None:
    """A blow-up becomes a MemoryError (reported) rather than the machine swapping."""
    try:
        with open("/proc/self/status") as f:
            vm = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmSize:"))
        limit = vm + (3 << 30)
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    except (OSError, ValueError, StopIteration):
        pass


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.fuzz.run", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "--seconds",
        type=float,
        default=float(os.environ.get("FUZZ_SECONDS", 300)),
        help="per format (default $FUZZ_SECONDS or 300)",
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=int(os.environ.get("FUZZ_SEED") or random.SystemRandom().randrange(1 << 32)),
    )
    parser.add_argument("--formats", default=os.environ.get("FUZZ_FORMATS", ",".join(FORMATS)))
    args = parser.parse_args(argv)
    formats = [f for f in args.formats.split(",") if f]
    unknown = set(formats) - set(FORMATS)
    if unknown:
        parser.error(
            f"unknown format(s) {', '.join(sorted(unknown))} (one of {', '.join(FORMATS)})"
        )

    import tempfile

    from gateway import Settings

    home = Path(tempfile.mkdtemp(prefix="fuzz-home-"))
    targets = Targets(Settings.load(home=home, env={}))
    _cap_memory()
    print(
        f"fuzz seed {args.seed} ({args.seconds:g} s per format: {', '.join(formats)}); "
        f"replay with FUZZ_SEED={args.seed}",
        flush=True,
    )
    every: list[Stats] = []
    for fmt in formats:
        print(f"[{fmt}] start", flush=True)
        stats = campaign(
            targets,
            fmt,
            args.seed,
            seconds=args.seconds,
            on_case=_last_input(fmt),
            on_failure=_write_failure(fmt),
            progress=lambda s: print(
                f"  [{s.fmt}] {s.runs} inputs, {s.failures} failing "
                f"({len(s.distinct)} distinct), {s.seconds:.0f} s",
                flush=True,
            ),
        )
        every.append(stats)
        print(
            f"[{fmt}] done: {stats.runs} inputs in {stats.seconds:.0f} s, "
            f"{stats.failures} failing, {len(stats.distinct)} distinct",
            flush=True,
        )
    print("\nsummary")
    failed = False
    for stats in every:
        print(
            f"  {stats.fmt:10} {stats.runs:7} inputs {stats.seconds:6.0f} s  "
            f"{stats.failures:5} failing  {len(stats.distinct)} distinct"
        )
        for failure, case in stats.distinct.values():
            failed = True
            print(f"      {failure.kind}: {failure.summary}  [{case.digest}]")
    print(
        f"seed {args.seed}; failing inputs in {FOUND}"
        if failed
        else f"seed {args.seed}; no failure"
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
