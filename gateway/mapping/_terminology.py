"""Code tables, ConceptMaps, code system displays and their translations.

From ``mappings/``:

* ``tables/<name>.yaml``      — ``map`` of source code → target code, optional ``default``
* ``conceptmaps/*.json``      — FHIR ConceptMap resources (local codes → LOINC, ...)
* ``terminology/hl7-v2-displays.yaml`` — the displays of the HL7 v2 tables (as FHIR R4
                               publishes them) that coded HL7 v2 fields may carry

From ``profiles/`` (what the gateway publishes is what it uses: one source of truth):

* ``CodeSystem-*.json`` with ``content: supplement`` — the zh-Hans / zh-Hant-HK
  designations of LOINC, SNOMED CT and ICD-10 codes (``supplements`` names the system)
* every other ``CodeSystem-*.json`` — the gateway's and the demo network's own code
  systems, their displays and designations

Language tags are BCP 47 as the gateway writes them: ``zh-Hans``, ``zh-Hant-HK``, ``en``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..datafiles import data_dir, load_data_file
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


#: ConceptMap equivalences whose target is the same concept as the source: a target
#: joins the source's CodeableConcept only then (one concept per CodeableConcept).
SAME_CONCEPT = frozenset({"equal", "equivalent"})


def profiles_beside(mappings: Path) -> Path:
    """The profiles/ folder that goes with a mappings folder: its sibling (a checkout, or
    the wheel's gateway/_data/), else the one shipped with the gateway."""
    sibling = mappings.parent / "profiles"
    return sibling if sibling.is_dir() else data_dir("profiles")


class Terminology:
    def __init__(self, root: Path, profiles: Path | None = None) -> None:
        self.root = root
        self.profiles = profiles if profiles is not None else profiles_beside(root)
        self.tables: dict[str, CodeTable] = {}
        self._maps: dict[tuple[str, str], list[Target]] = {}
        self._designations: dict[tuple[str, str], dict[str, str]] = {}
        self._displays: dict[tuple[str, str], str] = {}
        self.published: dict[str, str] = {}  # CodeSystem url → file name, in profiles/
        self._load_tables(root / "tables")
        self._load_conceptmaps(root / "conceptmaps")
        self._load_hl7_displays(root / "terminology" / "hl7-v2-displays.yaml")
        self._load_code_systems(self.profiles)

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
        """Displays of a code by language tag: {'en': 'Cerebral infarction', 'zh-Hans': ...}."""
        return self._designations.get((system, code), {})

    def display(self, system: str, code: str) -> str | None:
        """The code system's own display of a code, when the gateway knows it."""
        return self._displays.get((system, code))

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

    def _load_hl7_displays(self, path: Path) -> None:
        if not path.is_file():
            return
        raw = load_data_file(path)
        systems = raw.get("displays") if isinstance(raw, dict) else None
        if not isinstance(systems, dict):
            raise ConfigError("codesystem", f"{path}: needs 'displays' (system → code → display)")
        for system, codes in systems.items():
            for code, display in (codes or {}).items():
                self._displays[(str(system), str(code))] = str(display)

    def _load_code_systems(self, folder: Path) -> None:
        for path in sorted(folder.glob("CodeSystem-*.json")):
            cs = load_data_file(path)
            supplement = cs.get("content") == "supplement"
            system = (cs.get("supplements") or "").split("|")[0] if supplement else cs.get("url")
            if cs.get("resourceType") != "CodeSystem" or not system:
                raise ConfigError(
                    "codesystem", f"{path}: not a FHIR CodeSystem with a url (or supplements)"
                )
            self.published[str(cs.get("url"))] = path.name
            default_lang = cs.get("language", "en")
            for concept in _concepts(cs.get("concept", [])):
                key = (system, concept["code"])
                names = self._designations.setdefault(key, {})
                if concept.get("display"):
                    self._displays.setdefault(key, concept["display"])
                    names.setdefault(default_lang, concept["display"])
                for d in concept.get("designation", []):
                    if d.get("language") and d.get("value"):
                        names.setdefault(d["language"], d["value"])


def _concepts(concepts: Any) -> list[Any]:
    """A CodeSystem's concepts, nested ones included."""
    out = []
    for concept in concepts or []:
        out.append(concept)
        out.extend(_concepts(concept.get("concept")))
    return out
