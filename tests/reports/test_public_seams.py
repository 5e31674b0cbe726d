"""Subpackages use each other through their public surface only (issue 19): no module
of one gateway subpackage imports another subpackage's private (``_``-prefixed) module."""

from __future__ import annotations

import ast
from pathlib import Path

GATEWAY = Path(__file__).resolve().parents[2] / "gateway"


def _module_of(path: Path) -> list[str]:
    parts = list(path.relative_to(GATEWAY.parent).with_suffix("").parts)
    return parts[:-1] if parts[-1] == "__init__" else parts


def _imported(path: Path) -> list[tuple[int, list[str]]]:
    """(line, dotted module path) of every ``import`` and ``from ... import`` in ``path``,
    relative imports resolved against the importing module's package."""
    package = _module_of(path)
    if path.name != "__init__.py":
        package = package[:-1]
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, alias.name.split(".")) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            target = base + (node.module.split(".") if node.module else [])
            # ``from . import _x`` imports the module _x too
            out += [(node.lineno, [*target, alias.name]) for alias in node.names]
    return out


def _private_owner(target: list[str]) -> list[str] | None:
    """The package whose private module ``target`` reaches into, if it does."""
    if target[:1] != ["gateway"]:
        return None
    for n, part in enumerate(target[1:], start=1):
        if part.startswith("_") and not part.startswith("__"):
            return target[:n]
    return None


def _subpackage(module: list[str]) -> list[str]:
    return module[:2]  # gateway.<stage>; top-level modules are their own "subpackage"


def test_no_module_imports_another_subpackages_private_module() -> None:
    offences = []
    for path in sorted(GATEWAY.rglob("*.py")):
        here = _module_of(path)
        for line, target in _imported(path):
            owner = _private_owner(target)
            if owner is None:
                continue
            # a package's own modules (and its sub-packages) may use its private parts;
            # gateway's own top-level private modules are everyone's
            if len(owner) == 1 or _subpackage(owner) == _subpackage(here):
                continue
            offences.append(f"{path.relative_to(GATEWAY.parent)}:{line}: {'.'.join(target)}")
    assert offences == []


def test_the_checker_sees_relative_imports_of_private_modules() -> None:
    path = GATEWAY / "reports" / "_variants.py"
    targets = [".".join(t) for _, t in _imported(path)]
    assert "gateway.reports._document.ReportDocument" in targets
    assert "gateway.validation.check_bundle" in targets
