"""Where the validator's conformance resources come from, by canonical URL.

Two sources, read once per process:

* the official FHIR R4 definitions, the ``hl7.fhir.r4.core`` 4.0.1 package
  (StructureDefinitions with snapshots, ValueSets, CodeSystems), read by ``corepkg``
  (where it comes from and why is said there).
* the gateway's own profiles (``profiles/*.json``), which win over the core package.

Without the core package the base definitions are absent: profile checks are then made
only for profiles whose snapshot is complete, and ``corepkg.core_available`` says so.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

from ..datafiles import data_dir
from .corepkg import KINDS, core_index

__all__ = ["Definitions", "definitions"]


class Definitions:
    """Conformance resources by canonical URL (``url`` or ``url|version``)."""

    def __init__(self, core: dict[str, dict[str, Any]], extra_dirs: list[Path]) -> None:
        self.by_url: dict[str, dict[str, Any]] = dict(core)
        self.local: set[str] = set()
        for folder in extra_dirs:
            for file in sorted(folder.glob("*.json")):
                resource = json.loads(file.read_text(encoding="utf-8"))
                url = resource.get("url")
                if resource.get("resourceType") in KINDS and isinstance(url, str):
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
def definitions(*extra: Path) -> Definitions:
    """The core package plus the gateway's profiles/ (and any ``extra`` folders)."""
    return Definitions(core_index(), [data_dir("profiles"), *extra])
