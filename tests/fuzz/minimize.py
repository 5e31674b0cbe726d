"""Shrink a failing input before keeping it as a regression test.

    python -m tests.fuzz.minimize FORMAT PATH NAME [--seconds 120]

Reads the case at PATH (a file or a case folder, as ``make fuzz`` writes them), keeps
removing parts, JSON values and byte ranges while the same failure family remains, and
writes the result to tests/fuzz/regressions/FORMAT/NAME (plus the extension of the format
when it is one file) with NAME.txt holding the failure summary.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from .harness import REGRESSIONS, Case, Failure, Targets, check, load, save


def _key(failure: Failure) -> str:
    """What must stay the same while shrinking: the raise site (signature); for a hang or
    a blow-up the kind, and for a RecursionError the family (where they land varies)."""
    if failure.kind in ("timeout", "memory"):
        return failure.kind
    return failure.family if failure.signature.startswith("RecursionError") else failure.signature


def _same(targets: Targets, case: Case, family: str) -> bool:
    found = check(targets, case)
    return found is not None and _key(found) == family


def _drop_parts(targets: Targets, case: Case, family: str, deadline: float) -> Case:
    for name in list(case.parts):
        if len(case.parts) == 1 or time.monotonic() > deadline:
            break
        trial = Case(case.fmt, {k: v for k, v in case.parts.items() if k != name}, case.meta)
        if _same(targets, trial, family):
            case = trial
    return case


def _paths(node: Any, at: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out: list[tuple[Any, ...]] = []
    stack = [(node, at)]
    while stack:
        cur, here = stack.pop()
        if len(here) > 60:
            continue
        keys = (
            list(cur) if isinstance(cur, dict) else range(len(cur)) if isinstance(cur, list) else []
        )
        for k in keys:
            out.append((*here, k))
            stack.append((cur[k], (*here, k)))
    return out


def _without(doc: Any, path: tuple[Any, ...]) -> Any:
    copy = json.loads(json.dumps(doc))
    node = copy
    for k in path[:-1]:
        node = node[k]
    del node[path[-1]]
    return copy


def _shrink_json(targets: Targets, case: Case, name: str, family: str, deadline: float) -> Case:
    try:
        doc = json.loads(case.parts[name])
        json.dumps(doc)
    except (ValueError, RecursionError):
        return case
    changed = True
    while changed and time.monotonic() < deadline:
        changed = False
        for path in sorted(_paths(doc), key=len):  # outer values first: big cuts
            if time.monotonic() > deadline:
                break
            try:
                smaller = _without(doc, path)
            except (KeyError, IndexError, TypeError):
                continue
            data = json.dumps(smaller, ensure_ascii=False).encode()
            trial = Case(case.fmt, {**case.parts, name: data}, case.meta)
            if _same(targets, trial, family):
                doc, case, changed = smaller, trial, True
                break
    return case


def _shrink_bytes(targets: Targets, case: Case, name: str, family: str, deadline: float) -> Case:
    data = case.parts[name]
    chunk = max(len(data) // 2, 1)
    while chunk >= 1 and time.monotonic() < deadline:
        at, progress = 0, False
        while at < len(data) and time.monotonic() < deadline:
            trial_data = data[:at] + data[at + chunk :]
            trial = Case(case.fmt, {**case.parts, name: trial_data}, case.meta)
            if trial_data and _same(targets, trial, family):
                data, case, progress = trial_data, trial, True
            else:
                at += chunk
        if not progress:
            chunk //= 2
    return case


def minimize(targets: Targets, case: Case, failure: Failure, seconds: float = 120) -> Case:
    deadline = time.monotonic() + seconds
    family = _key(failure)
    case = _drop_parts(targets, case, family, deadline)
    for name in list(case.parts):
        if case.fmt in ("variants", "dicomjson"):
            case = _shrink_json(targets, case, name, family, deadline)
        if case.fmt not in ("zip",):  # zip offsets break with any cut: bytes kept as found
            case = _shrink_bytes(targets, case, name, family, deadline)
    return case


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.fuzz.minimize")
    parser.add_argument("format")
    parser.add_argument("path", type=Path)
    parser.add_argument("name")
    parser.add_argument("--seconds", type=float, default=120)
    args = parser.parse_args(argv)
    from gateway import Settings

    targets = Targets(Settings.load(home=Path(tempfile.mkdtemp(prefix="fuzz-home-")), env={}))
    case = load(args.format, args.path)
    failure = check(targets, case)
    if failure is None:
        print("the input does not fail: nothing to minimise", file=sys.stderr)
        return 1
    small = minimize(targets, case, failure, args.seconds)
    final = check(targets, small) or failure
    path = save(small, REGRESSIONS / args.format, args.name)
    (REGRESSIONS / args.format / f"{args.name}.txt").write_text(f"{final.kind}: {final.summary}\n")
    print(f"{case.size} -> {small.size} bytes: {path}\n{final.kind}: {final.summary}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
