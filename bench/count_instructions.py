"""Instructions a message, counted by callgrind: the conversion's cost where a shared
machine's load makes wall-clock pairs unresolvable (other work changes the time a step
takes, never the instructions it runs).

Runs the gateway of this checkout, or of DIR (an older commit's ``gateway mappings seeds
profiles`` unpacked with ``git archive``, put first on ``PYTHONPATH``), under
``valgrind --tool=callgrind --instr-atstart=no`` and switches counting on only around
the timed loop (``callgrind_control -i on/off``): N × the bench's messages made fresh
(:func:`bench_convert.freshen`), after a warm-up on other fresh ones, ``PYTHONHASHSEED=0``.
From the repository root (valgrind installed: Debian ``valgrind``)::

    .venv/bin/python bench/count_instructions.py [--tree DIR] [--passes N] [--engine interpreted]

prints ``instructions a message: …``. Compare two trees in one sitting: the figure is
steady to well under 0.1 % from run to run.
"""

from __future__ import annotations

import argparse
import gc
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CORPUS = REPO.parent / "shared" / "corpus"


def _loop(passes: int, engine: str, flags: Path) -> None:
    """The child under valgrind: warm up, say ready, convert when told, say done."""
    sys.path.insert(0, str(REPO / "bench"))
    import bench_convert as bc

    from gateway.config import Settings

    conv = bc.converter(Settings(), engine)
    found = bc.collect_messages(conv, CORPUS)
    bc.check_freshening(conv, found.samples)
    samples = [s for s in found.samples if s.common and s.freshens]
    warm = [bc.freshen(s.text, 9999 - k).encode(s.codec) for k in range(3) for s in samples]
    data = [bc.freshen(s.text, k).encode(s.codec) for k in range(1, passes + 1) for s in samples]
    for d in warm:
        conv.convert(d)
    gc.collect()
    gc.freeze()
    (flags / "count").write_text(str(len(data)))
    (flags / "ready").touch()
    _wait(flags / "go")
    for d in data:
        conv.convert(d)
    (flags / "done").touch()
    _wait(flags / "end")


def _wait(path: Path) -> None:
    while not path.exists():
        time.sleep(0.05)


def _control(pid: int, state: str) -> None:
    subprocess.run(["callgrind_control", "-i", state, str(pid)], check=True, capture_output=True)


def _total(out: Path) -> int:
    summary = subprocess.run(
        ["callgrind_annotate", str(out)], check=True, capture_output=True, text=True
    ).stdout
    found = re.search(r"^([\d,]+)\s.*PROGRAM TOTALS", summary, re.M)
    if found is None:
        raise SystemExit(f"no PROGRAM TOTALS in callgrind_annotate's output of {out}")
    return int(found.group(1).replace(",", ""))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tree", type=Path, help="an unpacked older gateway (git archive)")
    ap.add_argument("--passes", type=int, default=10, help="fresh variants of each message")
    ap.add_argument("--engine", default="compiled", choices=("compiled", "interpreted"))
    ap.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child is not None:
        _loop(args.passes, args.engine, args.child)
        return
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        raise SystemExit("valgrind is not installed (Debian: apt-get install valgrind)")
    with tempfile.TemporaryDirectory(prefix="count-instructions-") as tmp:
        flags, out = Path(tmp), Path(tmp) / "callgrind.out"
        env = {**os.environ, "PYTHONHASHSEED": "0"}
        if args.tree is not None:
            env["PYTHONPATH"] = str(args.tree.resolve())
        valgrind = ["valgrind", "--tool=callgrind", "--instr-atstart=no"]
        loop = [sys.executable, __file__, "--child", tmp, "--passes", str(args.passes)]
        child = subprocess.Popen(
            [*valgrind, f"--callgrind-out-file={out}", *loop, "--engine", args.engine],
            env=env,
            cwd=REPO,
            stderr=subprocess.DEVNULL,
        )
        _wait(flags / "ready")
        _control(child.pid, "on")
        (flags / "go").touch()
        _wait(flags / "done")
        _control(child.pid, "off")
        (flags / "end").touch()
        child.wait()
        messages = int((flags / "count").read_text())
        total = _total(out)
    print(f"messages: {messages}; instructions: {total:,}")
    print(f"instructions a message: {total // messages:,}")


if __name__ == "__main__":
    main()
