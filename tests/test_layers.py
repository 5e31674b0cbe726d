"""Dependencies point down the pipeline: the gateway's stages (its subpackages and
top-level modules) import each other without a cycle, lazy imports inside functions
included. A cycle means some stage reaches back up to one that builds on it (docs/
architecture.md lists the stages); move the shared piece down instead."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
GATEWAY = ROOT / "gateway"


def _stage(module: str) -> str | None:
    """``gateway.delivery._outbox`` → ``delivery``; the ``gateway`` package itself (its
    version and public names, imported by nothing that it builds on) is no stage."""
    parts = module.split(".")
    return parts[1].removesuffix(".py") if len(parts) > 1 else None


def _module(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imported(path: Path) -> set[str]:
    """The absolute names of the gateway modules ``path`` imports, anywhere in it."""
    module = _module(path)
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            names.add(base)
            names |= {f"{base}.{a.name}" for a in node.names}  # "from . import audit"
    return {n for n in names if n == "gateway" or n.startswith("gateway.")}


def stage_graph() -> dict[str, set[str]]:
    """stage → the other stages its modules import."""
    stages = {p.stem if p.is_file() else p.name for p in GATEWAY.iterdir()}
    graph: dict[str, set[str]] = {}
    for path in sorted(GATEWAY.rglob("*.py")):
        me = _stage(_module(path))
        if me is None:
            continue
        found = {_stage(n) for n in _imported(path)}
        graph.setdefault(me, set()).update(
            s for s in found if s is not None and s != me and s in stages
        )
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as the stages along it, or None."""
    state: dict[str, int] = {}  # 1 on the current path, 2 done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (found := visit(start)):
            return found
    return None


def test_the_stages_import_each_other_without_a_cycle() -> None:
    cycle = _cycle(stage_graph())
    assert cycle is None, "a stage imports one that builds on it: " + " -> ".join(cycle or [])


@pytest.mark.parametrize(
    ("below", "above"),
    [
        ("store", "pipeline"),
        ("store", "metrics"),
        ("audit", "inbound"),
        ("demo", "cli"),
        ("policy", "delivery"),
    ],
)
def test_no_arrow_back_up_that_was_removed(below: str, above: str) -> None:
    # The arrows once found pointing up, each now gone (with its reason in git log).
    assert above not in stage_graph()[below]


def test_the_check_finds_a_cycle() -> None:
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None
