"""What the gateway declares is what it imports, and installing it pulls in no plotting
stack (matplotlib, numpy: the font package it once used brought them)."""

from __future__ import annotations

import ast
import sys
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

GATEWAY = Path(__file__).resolve().parent.parent / "gateway"
DIST = "fhir-gateway"
# Declared but not imported: the PDF font (used through its installed files) and the
# PostgreSQL driver (SQLAlchemy loads it for postgresql+psycopg:// URLs).
DATA_ONLY = {"noto-cjk-sans-otc", "psycopg"}
# Imported only when an optional extra is installed and turned on: opentelemetry (the
# `tracing` extra, gateway/metrics/_tracing.py; tests/metrics/test_tracing.py checks it).
EXTRA_ONLY = {"opentelemetry"}


def _requirements(dist: str, extras: frozenset[str] = frozenset()) -> list[Requirement]:
    out = []
    for line in metadata.requires(dist) or []:
        req = Requirement(line)
        envs = [{"extra": e} for e in extras] or [{"extra": ""}]
        if req.marker is None or any(req.marker.evaluate(env) for env in envs):
            out.append(req)
    return out


def _closure(dist: str) -> set[str]:
    """Every distribution a plain install of ``dist`` pulls in (as installed here)."""
    seen: set[str] = set()
    todo = [(dist, frozenset[str]())]
    while todo:
        name, extras = todo.pop()
        for req in _requirements(name, extras):
            key = canonicalize_name(req.name)
            if key not in seen:
                seen.add(key)
                todo.append((req.name, frozenset(req.extras)))
    return seen


def _imported_top_level() -> set[str]:
    found: set[str] = set()
    for path in GATEWAY.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                found.update(a.name.split(".")[0] for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found.add(node.module.split(".")[0])
    return {m for m in found if m not in sys.stdlib_module_names and m != "gateway"}


def test_a_fresh_install_pulls_no_matplotlib_nor_numpy() -> None:
    pulled = _closure(DIST)
    assert {"fpdf2", "pydantic-core", "starlette"} <= pulled  # the walk sees the whole tree
    assert not pulled & {"matplotlib", "numpy", "mplfonts"}


def test_every_import_is_declared_and_every_declaration_imported() -> None:
    owners = metadata.packages_distributions()
    imported: set[str] = set()
    for module in _imported_top_level() - EXTRA_ONLY:
        dists = owners.get(module)
        assert dists, f"gateway imports {module}, which no installed distribution provides"
        imported.update(canonicalize_name(d) for d in dists)
    declared = {canonicalize_name(r.name) for r in _requirements(DIST)}
    assert imported - declared == set(), "imported but not declared in pyproject.toml"
    assert declared - imported == DATA_ONLY, "declared in pyproject.toml but not imported"
