"""``Hl7View.accessor(method, path)`` (the look-ups compiled mappings bind once per path)
must give exactly what ``view.first(path, here)`` / ``view.select(path, here)`` give, for
every path shape, at the top, in groups and in nodes, and record the same reads when
tracing (``--unmapped`` reports)."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway import ConfigError
from gateway.intake.hl7v2 import Hl7View, Position, parse_message, split_messages

REPO = Path(__file__).resolve().parents[2]
SAMPLES = sorted((REPO / "examples" / "hl7v2").glob("*.hl7"))
RELATIVE = (".1", ".2", ".4", ".4.1", ".4.2", ".5", ".8", ".12", ".1.1", ".1.3")


def _views(path: Path) -> list[Hl7View]:
    out = []
    for raw in split_messages(path.read_bytes()):
        if raw.error is None:
            out.append(Hl7View(parse_message(raw, lambda facility: "GB18030")))
    return out


def _paths(view: Hl7View) -> list[str]:
    paths = []
    for name, where in view.message.positions.items():
        paths += [name, f"/{name}", f"{name}(2)", f"{name}(*)"]
        for occ in ("", "(2)", "(*)"):
            count = len(view.message.segments[where[0]])
            for field in range(1, count + 1):
                for rep in ("", "(2)", "(*)"):
                    base = f"{name}{occ}-{field}{rep}"
                    paths += [base, f"{base}.1", f"{base}.2", f"{base}.4.1", f"{base}.9.2"]
                    paths += [f"/{base}", f"{base}.7"]
    return paths


def _positions(view: Hl7View) -> list[Position]:
    positions = [view.root]
    for group in ("ORC", "PRD", "DG1", "PID", "OBX"):
        positions += view.select(group, view.root)
    return positions


def _nodes(view: Hl7View) -> list[Position]:
    """Field repetitions, components and subcomponents, as 'each' and 'at' select them."""
    out: list[Position] = []
    for path in ("PID-3", "PID-5", "PID-11", "PV1-7", "OBX-5", "PID-3.4", "PID-5.1", "MSH-2"):
        out += view.select(path, view.root)
    return out


@pytest.mark.parametrize("sample", SAMPLES, ids=lambda p: p.name)
@pytest.mark.parametrize("method", ["first", "select"])
def test_accessor_equals_the_method(sample: Path, method: str) -> None:
    checked = 0
    for view in _views(sample):
        for here in _positions(view):
            for path in _paths(view):
                got = Hl7View.accessor(method, path)(view, here)
                assert got == getattr(view, method)(path, here), (path, here.label)
                checked += 1
        for node in _nodes(view):
            for rel in RELATIVE:
                got = Hl7View.accessor(method, rel)(view, node)
                assert got == getattr(view, method)(rel, node), (rel, node.label)
    assert checked > 1000


@pytest.mark.parametrize("sample", SAMPLES[:3], ids=lambda p: p.name)
def test_accessors_record_what_they_read(sample: Path) -> None:
    for view, again in zip(_views(sample), _views(sample), strict=True):
        view.trace()
        again.trace()
        for path in _paths(view):
            view.first(path, view.root)
            view.select(path, view.root)
            Hl7View.accessor("first", path)(again, again.root)
            Hl7View.accessor("select", path)(again, again.root)
        assert again.read == view.read


def test_a_relative_path_outside_a_node_is_refused_as_before() -> None:
    view = _views(SAMPLES[0])[0]
    with pytest.raises(ConfigError) as by_method:
        view.first(".1", view.root)
    with pytest.raises(ConfigError) as by_accessor:
        Hl7View.accessor("first", ".1")(view, view.root)
    assert str(by_accessor.value) == str(by_method.value)
