"""Intake messages name files by reference (``file 1a2b3c4d``, gateway/intake/_files.py):
the tests read them with the names put back, as ``gateway convert`` prints them."""

from __future__ import annotations

import io
import zipfile
from collections.abc import Iterable
from pathlib import Path

from gateway.intake import with_paths

Item = tuple[str, bytes] | str | Path


def shown(message: str, *items: Item | Iterable[Item]) -> str:
    """``message`` with each file reference followed by its name, from the items read:
    (name, bytes) pairs, with their archive members and JSON objects, or plain names."""
    names: list[str] = []
    for item in _flat(items):
        if isinstance(item, tuple):
            name, data = item
            names.append(name)
            names += _inside(name, data)
        elif isinstance(item, Path) and item.is_dir():
            names += [str(p.relative_to(item.parent)) for p in item.rglob("*") if p.is_file()]
        else:
            names.append(str(item))
    return with_paths(message, names)


def _flat(items: Iterable[object]) -> Iterable[Item]:
    for item in items:
        if isinstance(item, (tuple, str, Path)):
            yield item  # type: ignore[misc]
        else:
            yield from _flat(item)  # type: ignore[arg-type]


def _inside(name: str, data: bytes) -> list[str]:
    """Archive members (``cd.zip/S1/IM1.dcm``) and JSON objects (``s.json[2]``)."""
    if data[:2] == b"PK":
        try:
            members = zipfile.ZipFile(io.BytesIO(data)).namelist()
        except Exception:  # a damaged archive under test: its own name only
            members = []
        return [f"{name}/{m}" for m in members] + [f"{name}[{n}]" for n in range(1, 20)]
    return [f"{name}[{n}]" for n in range(1, 20)]
