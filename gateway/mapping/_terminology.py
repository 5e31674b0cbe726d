"""Code tables, ConceptMaps and display translations, all loaded from ``mappings/``.

* ``tables/<name>.yaml``      — ``map`` of source code → target code, optional ``default``
* ``conceptmaps/*.json``      — FHIR ConceptMap resources (local codes → LOINC, ...)
* ``terminology/*.json``      — FHIR CodeSystem fragments whose concept designations give
                               displays in other languages (zh-CN, zh-HK, en)
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..datafiles import load_data_file
from ..errors import ConfigError

__all__ = ["CodeTable", "Terminology", "language_of"]

_CJK = re.compile(r"[\u3400-\u9fff\uf900-\ufaff]")


def language_of(text: str) -> str:
    """'zh' when the text holds Chinese characters, else 'en' (for display translations)."""
    return "zh" if _CJK.search(text) else "en"


_MISSING = object()


@dataclass(frozen=True, slots=True)
class CodeTable:
    """A code table. A code it lacks gets ``default`` when the file gives one; otherwise
    :meth:`lookup` returns None and the engine reports the unknown code as an error."""

    name: str
    mapping: dict[str, Any]
    default: Any = _MISSING
    source: str = ""
    case_sensitive: bool = False

    @property
    def has_default(self) -> bool:
        return self.default is not _MISSING

    def lookup(self, code: str) -> Any:
        key = code if self.case_sensitive else code.upper()
        found = self.mapping.get(key, _MISSING)
        if found is _MISSING:
            return None if self.default is _MISSING else self.default
        return found


@dataclass(frozen=True, slots=True)
class Target:
    system: str
    code: str
    display: str | None
    relationship: str


class Terminology:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.tables: dict[str, CodeTable] = {}
        self._maps: dict[tuple[str, str], list[Target]] = {}
        self._designations: dict[tuple[str, str], dict[str, str]] = {}
        self._load_tables(root / "tables")
        self._load_conceptmaps(root / "conceptmaps")
        self._load_designations(root / "terminology")

    def table(self, name: str) -> CodeTable:
        try:
            return self.tables[name]
        except KeyError:
            known = ", ".join(sorted(self.tables))
            raise ConfigError("unknown-table", f"no code table {name!r} (known: {known})") from None

    def translate(self, system: str, code: str) -> list[Target]:
        """ConceptMap targets for (system, code), in file order."""
        return self._maps.get((system, code), [])

    def designations(self, system: str, code: str) -> dict[str, str]:
        """Displays of a code by language tag, e.g. {'en': 'Cerebral infarction', 'zh-CN': ...}."""
        return self._designations.get((system, code), {})

    def _load_tables(self, folder: Path) -> None:
        for path in sorted(folder.glob("*.yaml")):
            raw = load_data_file(path)
            if not isinstance(raw, dict) or not isinstance(raw.get("map"), dict):
                raise ConfigError("table", f"{path}: a code table needs a 'map' of code → value")
            case = bool(raw.get("case_sensitive", False))
            mapping = {(str(k) if case else str(k).upper()): v for k, v in raw["map"].items()}
            default = raw.get("default", _MISSING)
            self.tables[path.stem] = CodeTable(
                path.stem, mapping, default, str(raw.get("source", "")), case
            )

    def _load_conceptmaps(self, folder: Path) -> None:
        for path in sorted(folder.glob("*.json")):
            cm = load_data_file(path)
            if cm.get("resourceType") != "ConceptMap":
                raise ConfigError("conceptmap", f"{path}: not a FHIR ConceptMap")
            for group in cm.get("group", []):
                source, target = group.get("source"), group.get("target")
                for element in group.get("element", []):
                    for t in element.get("target", []):
                        rel = t.get("equivalence", "equivalent")
                        if rel in ("unmatched", "disjoint") or not t.get("code"):
                            continue
                        key = (source, element["code"])
                        self._maps.setdefault(key, []).append(
                            Target(target, t["code"], t.get("display"), rel)
                        )

    def _load_designations(self, folder: Path) -> None:
        for path in sorted(folder.glob("*.json")):
            cs = load_data_file(path)
            system = cs.get("url") or cs.get("supplements", "").split("|")[0]
            if cs.get("resourceType") != "CodeSystem" or not system:
                raise ConfigError("codesystem", f"{path}: not a FHIR CodeSystem with a url")
            default_lang = cs.get("language", "en")
            for concept in cs.get("concept", []):
                names = self._designations.setdefault((system, concept["code"]), {})
                if concept.get("display"):
                    names.setdefault(default_lang, concept["display"])
                for d in concept.get("designation", []):
                    if d.get("language") and d.get("value"):
                        names.setdefault(d["language"], d["value"])
