"""Texts in each variant language: Chinese script conversion (OpenCC), coded displays
from the terminology, and names of institutions and people from the network."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any, Protocol, cast

import opencc

from ..datafiles import load_data_file
from ..mapping import TRANSLATION_URL, Terminology, language_of
from ..network import Institution, Network
from ._rules import Rules

__all__ = ["Names", "translation"]


class _Converter(Protocol):
    def convert(self, text: str) -> str: ...


_CONVERTERS: dict[str, _Converter] = {}
_LOCK = threading.Lock()


def _converter(config: str) -> _Converter:
    """One OpenCC converter per configuration and process: building one loads its
    dictionaries (~10 ms); converting is then cheap and thread-safe."""
    with _LOCK:
        found = _CONVERTERS.get(config)
        if found is None:
            found = cast(_Converter, opencc.OpenCC(config))
            _CONVERTERS[config] = found
        return found


def translation(lang: str, text: str) -> dict[str, Any]:
    """The standard translation extension (sub-extensions lang, content)."""
    return {
        "url": TRANSLATION_URL,
        "extension": [
            {"url": "lang", "valueCode": lang},
            {"url": "content", "valueString": text},
        ],
    }


def translations_of(element: Any) -> list[tuple[str, str]]:
    """(lang, content) of the translation extensions on a primitive's ``_x`` element."""
    out = []
    if isinstance(element, dict):
        for ext in element.get("extension") or []:
            if not isinstance(ext, dict) or ext.get("url") != TRANSLATION_URL:
                continue
            parts = {e.get("url"): e for e in ext.get("extension") or [] if isinstance(e, dict)}
            lang = parts.get("lang", {}).get("valueCode")
            content = parts.get("content", {}).get("valueString")
            if isinstance(lang, str) and isinstance(content, str):
                out.append((lang, content))
    return out


class Names:
    def __init__(self, rules: Rules, terminology: Terminology, network: Network) -> None:
        self.rules = rules
        self.terminology = terminology
        self.network = network
        self._people, self._patients = _seed_people(network)

    # -- free text ----------------------------------------------------------------------

    def convert(self, text: str, source: str, target: str) -> str | None:
        """``text`` written in ``source`` in the script of ``target``: the text itself when
        the languages agree, OpenCC between Chinese scripts, None otherwise (English is
        never machine-made)."""
        if source == target:
            return text
        config = self.rules.conversions.get((source, target))
        return _converter(config).convert(text) if config else None

    def text_language(self, text: str, report_language: str) -> str:
        """The variant language of a text found in a report written in report_language."""
        if language_of(text) == "en":
            return "en"
        if report_language in self.rules.chinese:
            return report_language
        return self.rules.default_chinese

    def complete(self, names: dict[str, str]) -> dict[str, str]:
        """Fill the Chinese variants missing from ``names`` by converting another one."""
        for target in self.rules.order:
            if target in names or target not in self.rules.chinese:
                continue
            for source in self.rules.order:
                if source in names and source in self.rules.chinese:
                    converted = self.convert(names[source], source, target)
                    if converted:
                        names[target] = converted
                        break
        return names

    # -- coded displays -----------------------------------------------------------------

    def coding(self, coding: dict[str, Any], report_language: str) -> dict[str, str]:
        """A Coding's display per variant language: the received display in its own
        language, then terminology designations, translation extensions on the display,
        and Chinese script conversion."""
        names: dict[str, str] = {}
        display = coding.get("display")
        if isinstance(display, str) and display:
            names[self.text_language(display, report_language)] = display
        system, code = coding.get("system"), coding.get("code")
        if isinstance(system, str) and isinstance(code, str):
            for tag, text in self.terminology.designations(system, code).items():
                lang = self.rules.language(tag)
                if lang:
                    names.setdefault(lang, text)
        for tag, text in translations_of(coding.get("_display")):
            lang = self.rules.language(tag)
            if lang:
                names.setdefault(lang, text)
        return self.complete(names)

    # -- institutions -------------------------------------------------------------------

    def institution(self, org: dict[str, Any] | None, display: str | None) -> Institution | None:
        """The network institution an Organization (or a reference's display) stands for."""
        keys: list[str] = []
        if org:
            keys += [str(i.get("value")) for i in org.get("identifier") or [] if i.get("value")]
            keys += [str(org["name"])] if isinstance(org.get("name"), str) else []
            keys += [str(a) for a in org.get("alias") or []]
        if display:
            keys.append(display)
        for key in keys:
            found = self.network.find(key)
            if found is not None:
                return found
        return None

    def institution_names(self, inst: Institution) -> dict[str, str]:
        names = {}
        for lang in self.rules.order:
            name = next(
                (inst.names[k] for k in self.rules.network_keys[lang] if k in inst.names), None
            )
            if name:
                names[lang] = name
        return self.complete(names)

    # -- people -------------------------------------------------------------------------

    def person(self, resource: dict[str, Any]) -> dict[str, dict[str, Any]] | None:
        """Names by language tag of a practitioner or patient the network's seed file
        knows: a staff number at its institution's identifier base, or an MRN."""
        # A staff number names a practitioner only, an MRN a patient only: a patient
        # whose MRN is a doctor's staff number must not get the doctor's name.
        kind = resource.get("resourceType")
        for ident in resource.get("identifier") or []:
            system, value = str(ident.get("system", "")), ident.get("value")
            found = self._people.get(str(value)) if value and kind == "Practitioner" else None
            if found and system.startswith(found[0] + "/"):
                return found[1]
            patient = self._patients.get((system, str(value))) if kind == "Patient" else None
            if patient:
                return patient
        return None


_PersonNames = dict[str, dict[str, Any]]  # language tag → {family, given, text}


def _seed_people(
    network: Network,
) -> tuple[dict[str, tuple[str, _PersonNames]], dict[tuple[str, str], _PersonNames]]:
    """From the network's seed file (Network itself keeps institutions only): staff
    number → (institution base, names), and (MRN system, MRN) → patient names."""
    source: Path | None = network.source
    raw = load_data_file(source) if source is not None else None
    if not isinstance(raw, dict):
        return {}, {}
    staff: dict[str, tuple[str, _PersonNames]] = {}
    for person in raw.get("practitioners") or []:
        inst = network.institution(str(person.get("institution", "")))
        names = person.get("name")
        if inst is not None and isinstance(names, dict) and person.get("id"):
            staff[str(person["id"])] = (inst.base, {str(k): dict(v) for k, v in names.items()})
    patients: dict[tuple[str, str], _PersonNames] = {}
    for person in raw.get("patients") or []:
        names = person.get("name")
        mrns = (person.get("identifiers") or {}).get("mrn") or {}
        if not isinstance(names, dict) or not isinstance(mrns, dict):
            continue
        for key, value in mrns.items():
            inst = network.institution(str(key))
            if inst is not None:
                patients[(f"{inst.base}/sid/mrn", str(value))] = {
                    str(k): dict(v) for k, v in names.items()
                }
    return staff, patients
