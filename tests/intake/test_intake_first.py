"""``Hl7View.first`` (the engine's label-free fast path) must give exactly what
``values(...)[0][0]`` gives, for every path shape, at the top, in groups and in nodes."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.intake.hl7v2 import Hl7View, parse_message, split_messages

REPO = Path(__file__).resolve().parents[2]
SAMPLES = sorted((REPO / "examples" / "hl7v2").glob("*.hl7"))


def _views(path: Path) -> list[Hl7View]:
    out = []
    for raw in split_messages(path.read_bytes()):
        if raw.error is None:
            out.append(Hl7View(parse_message(raw, lambda facility: "GB18030")))
    return out


def _paths(view: Hl7View) -> list[str]:
    paths = []
    for name, where in view.message.positions.items():
        for occ in ("", "(2)"):
            count = len(view.message.segments[where[0]])
            for field in range(1, count + 1):
                for rep in ("", "(2)"):
                    base = f"{name}{occ}-{field}{rep}"
                    paths += [base, f"{base}.1", f"{base}.2", f"{base}.4.1", f"{base}.9.2"]
                    paths += [f"/{base}", f"{base}.7"]
    return paths


@pytest.mark.parametrize("sample", SAMPLES, ids=lambda p: p.name)
def test_first_equals_values_everywhere(sample: Path) -> None:
    checked = 0
    for view in _views(sample):
        positions = [view.root]
        for group in ("ORC", "PRD", "DG1", "PID"):
            positions += view.select(group, view.root)
        for here in positions:
            for path in _paths(view):
                found = view.values(path, here)
                assert view.first(path, here) == (found[0][0] if found else None), path
                checked += 1
        for node in view.select("PID-3", view.root) + view.select("PID-5", view.root):
            for rel in (".1", ".2", ".4", ".4.1", ".4.2", ".5", ".8", ".12"):
                found = view.values(rel, node)
                assert view.first(rel, node) == (found[0][0] if found else None), rel
    assert checked > 1000
