"""Regenerate the golden files: ``make golden`` (or ``python -m tests.golden.regenerate``).

For every input ``tests/golden/<kind>/<name>.<ext>`` (or folder ``<name>.study/`` of
DICOM files, converted together) it writes ``<name>.expected.json``
(and for every ``examples/<kind>/<name>.<ext>`` the ``examples/<kind>/bundles/<name>.json``
that the README points to):
the Bundle when the input holds one message that converts, an OperationOutcome when
it fails, and a JSON array of those when the input holds several messages. Review the
``git diff`` of the expected files: that review is the check.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path
from typing import Any

from gateway import Converter, Settings, dump_json, operation_outcome
from gateway.envelope import Record

GOLDEN = Path(__file__).resolve().parent
EXAMPLES = GOLDEN.parents[1] / "examples"
INPUT_SUFFIXES = {".hl7", ".txt", ".er7", ".dcm", ".zip", ".xml", ".json", ".study"}


def _is_input(path: Path) -> bool:
    if path.suffix not in INPUT_SUFFIXES or path.name.endswith(".expected.json"):
        return False
    if any(part == "bundles" or part.endswith(".study") for part in path.parent.parts):
        return False  # outputs, and the files inside a study folder
    return path.is_dir() == (path.suffix == ".study")


def inputs() -> list[Path]:
    return sorted(p for p in GOLDEN.rglob("*") if p.parent != GOLDEN and _is_input(p))


def expected_path(source: Path) -> Path:
    return source.with_name(source.stem + ".expected.json")


def example_inputs() -> list[Path]:
    return sorted(p for p in EXAMPLES.rglob("*") if _is_input(p))


def example_output(source: Path) -> Path:
    """examples/<kind>/<name>.hl7 → examples/<kind>/bundles/<name>.json"""
    return source.parent / "bundles" / (source.stem + ".json")


def outcome(record: Record) -> Any:
    if record.ok:
        return record.bundle
    return operation_outcome(record.issues)


def convert(converter: Converter, source: Path, trace: bool = False) -> list[Record]:
    return converter.convert_path(source, trace=trace)  # a .study folder: one study


def render(converter: Converter, source: Path) -> bytes:
    records = convert(converter, source)
    if len(records) == 1:
        return dump_json(outcome(records[0]))
    return dump_json([outcome(r) for r in records])


def make_converter() -> Converter:
    # A throw-away GATEWAY_HOME: goldens use the demo network and default settings only.
    home = Path(tempfile.mkdtemp(prefix="golden-home-"))
    return Converter(Settings.load(home=home, env={}))


def main() -> int:
    converter = make_converter()
    changed = 0
    pairs = [(s, expected_path(s)) for s in inputs()]
    pairs += [(s, example_output(s)) for s in example_inputs()]
    for source, target in pairs:
        target.parent.mkdir(exist_ok=True)
        new = render(converter, source)
        for record in convert(converter, source, trace=True):
            if record.unmapped:  # what the mappings leave behind: worth a look in review
                print(f"  {record.label}: not mapped: {', '.join(record.unmapped)}")
        if not target.exists() or target.read_bytes() != new:
            target.write_bytes(new)
            changed += 1
            print(f"wrote {target.relative_to(GOLDEN.parent.parent)}")
    print(f"{changed} golden file(s) changed; review them with git diff")
    return 0


if __name__ == "__main__":
    sys.exit(main())
