"""The files a command reads: those named, and in named folders the files with one of
the given suffixes, hidden files and folders skipped. ``-`` is stdin."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

__all__ = ["input_files"]


def input_files(paths: Iterable[str], suffixes: Iterable[str]) -> list[str]:
    wanted = {s.lower() for s in suffixes}
    found: list[str] = []
    for name in paths:
        path = Path(name)
        if name == "-" or not path.is_dir():
            found.append(name)
            continue
        for child in sorted(path.rglob("*")):
            hidden = any(part.startswith(".") for part in child.relative_to(path).parts)
            if child.is_file() and not hidden and child.suffix.lower() in wanted:
                found.append(str(child))
    return found
