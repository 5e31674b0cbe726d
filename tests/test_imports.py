"""Stages use each other through public interfaces only: no module imports a private
(``_``-prefixed) module of a package it is not itself inside."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, absolute dotted name) of every module an import statement names."""
    module = _module_name(path)
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            found.append((node.lineno, base))
            # "from . import _x" names a module too
            found += [
                (node.lineno, f"{base}.{a.name}") for a in node.names if a.name.startswith("_")
            ]
    return found


def _private_owner(name: str) -> str | None:
    """The package that owns ``name``'s first private component, if it has one."""
    parts = name.split(".")
    for i, part in enumerate(parts):
        if part.startswith("_") and not part.startswith("__"):
            return ".".join(parts[:i])
    return None


def test_no_module_imports_another_packages_private_module() -> None:
    wrong = []
    for path in sorted((ROOT / "gateway").rglob("*.py")):
        importer = _module_name(path)
        for line, name in _imports(path):
            if not name.startswith("gateway"):
                continue
            owner = _private_owner(name)
            if owner is not None and not (importer + ".").startswith(owner + "."):
                wrong.append(f"{path.relative_to(ROOT)}:{line} imports {name}")
    assert not wrong, "import these through their package's public names:\n" + "\n".join(wrong)
