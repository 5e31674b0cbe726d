"""One report, one language: the single-language tree every variant is built from.

``localize`` rewrites a copy of the report in a target language:

* coded displays from the terminology (Chinese variants also by OpenCC), each Coding
  keeping the other languages in ``translation`` extensions on ``_display``;
* clinical free text (rules.narrative) converted between Chinese scripts; in English
  taken from the linked English report only, else absent and the report marked pending;
* institution names from the network (its own zh-Hant names for Hong Kong Traditional);
  people's names (rules.verbatim) never converted: what the ID card says, in every
  variant; an English variant adds the seed file's Latin name beside.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from ..mapping import TRANSLATION_URL, language_of
from ._document import ReportDocument, Resource
from ._names import Names, translation

__all__ = ["EnglishReport", "Localizer"]

_ABC = "http://hl7.org/fhir/StructureDefinition/iso21090-EN-representation"


@dataclass(slots=True)
class EnglishReport:
    """What the linked English report contributes: narrative and its signers."""

    doc: ReportDocument
    conclusion: str | None = None
    findings: list[str] = field(default_factory=list)
    text: dict[str, Any] | None = None


class Localizer:
    def __init__(self, names: Names) -> None:
        self.names = names
        self.rules = names.rules
        # The names of the people of the report being localized (see _names_in), per
        # thread: the outbound workers share one Localizer.
        self._local = threading.local()

    # -- the entry point ------------------------------------------------------------------

    def localize(
        self, doc: ReportDocument, source: str, lang: str, english: EnglishReport | None
    ) -> bool:
        """Rewrite ``doc`` (a copy) in ``lang``; True when its English narrative is pending."""
        report = doc.report
        results = [r for r in (doc.resolve(x) for x in report.get("result") or []) if r]
        self._local.names = _names_in(doc, self.rules.verbatim)
        for resource in doc.resources():
            if resource is report or resource in results or "language" in resource:
                resource["language"] = lang
            self._codings(resource, source, lang)
            self._texts(doc, resource, source, lang)
            kind = resource.get("resourceType")
            if kind == "Organization":
                self._organization(resource, source, lang)
            elif kind in ("Patient", "Practitioner", "RelatedPerson"):
                self._people(resource, source, lang)
        if lang == source:
            return False
        if lang in self.rules.chinese:
            for resource in doc.resources():
                self._convert_narrative(resource, source, lang)
            return False
        return self._english_narrative(doc, report, results, english)

    # -- coded elements -------------------------------------------------------------------

    def _codings(self, node: Any, source: str, lang: str) -> None:
        if isinstance(node, list):
            for item in node:
                self._codings(item, source, lang)
            return
        if not isinstance(node, dict):
            return
        if _is_coding(node):
            self.coding(node, source, lang)
            return
        for key, value in node.items():
            if not key.startswith("_") and isinstance(value, (dict, list)):
                self._codings(value, source, lang)

    def coding(self, coding: dict[str, Any], source: str, lang: str) -> None:
        names = self.names.coding(coding, source)
        shown = names.get(lang) or coding.get("display")
        if not isinstance(shown, str) or not shown:
            return
        shown_lang = lang if lang in names else self.names.text_language(shown, source)
        coding["display"] = shown
        others = [
            translation(other, names[other])
            for other in self.rules.order
            if other != shown_lang and other in names and names[other] != shown
        ]
        _set_translations(coding, "display", others, self.rules.language)

    # -- short texts: CodeableConcept.text, Reference.display, Annotation.text ---------------

    def _texts(self, doc: ReportDocument, node: Any, source: str, lang: str) -> None:
        if isinstance(node, list):
            for item in node:
                self._texts(doc, item, source, lang)
            return
        if not isinstance(node, dict) or _is_coding(node):
            return
        if isinstance(node.get("coding"), list) and isinstance(node.get("text"), str):
            node["text"] = self._concept_text(node, source, lang)
        if isinstance(node.get("display"), str) and "code" not in node:
            node["display"] = self._reference_display(doc, node, source, lang)
        for key, value in node.items():
            if key not in ("contained", "text") and isinstance(value, (dict, list)):
                self._texts(doc, value, source, lang)
        notes = node.get("note")
        if isinstance(notes, list):
            self._notes(node, notes, source, lang)

    def _concept_text(self, concept: dict[str, Any], source: str, lang: str) -> str:
        text: str = concept["text"]
        converted = self.names.convert(text, self.names.text_language(text, source), lang)
        if converted is not None:
            return converted
        for coding in concept["coding"]:  # English: the first coding shown in English
            if isinstance(coding, dict) and "en" in self.names.coding(coding, source):
                return str(coding.get("display"))
        return text

    def _reference_display(
        self, doc: ReportDocument, ref: dict[str, Any], source: str, lang: str
    ) -> str:
        display: str = ref["display"]
        target = doc.resolve(ref)
        kind = (target or {}).get("resourceType") or ref.get("type") or _literal_type(ref)
        if kind in self.rules.verbatim or kind == "PractitionerRole":
            return display  # a person's name (a PractitionerRole's display names its person)
        if kind in ("Organization", None):
            inst = self.names.institution(target, display)
            if inst is not None:
                found = self.names.institution_names(inst).get(lang)
                if found:
                    return found
        if kind is None:
            return display  # of a resource of unknown type: it may name a person
        converted = self._convert_text(display, source, lang)
        return display if converted is None else converted

    def _notes(self, holder: dict[str, Any], notes: list[Any], source: str, lang: str) -> None:
        """Annotations are clinical free text: a Chinese one converted, or dropped from an
        English variant (the English report brings its own narrative); one written in
        English is its author's words in every variant, kept as written."""
        kept = []
        for note in notes:
            text = note.get("text") if isinstance(note, dict) else None
            if not isinstance(text, str):
                kept.append(note)
                continue
            converted = self._convert_text(text, source, lang)
            if converted is None and self.names.text_language(text, source) == "en":
                converted = text
            if converted is not None:
                note["text"] = converted
                kept.append(note)
        if kept:
            holder["note"] = kept
        else:
            holder.pop("note", None)

    # -- names --------------------------------------------------------------------------

    def _organization(self, org: Resource, source: str, lang: str) -> None:
        name = org.get("name")
        inst = self.names.institution(org, None)
        if inst is not None:
            found = self.names.institution_names(inst).get(lang)
            if found:
                org["name"] = found
                return
        if isinstance(name, str):
            converted = self.names.convert(name, self.names.text_language(name, source), lang)
            org["name"] = name if converted is None else converted

    def _people(self, person: Resource, source: str, lang: str) -> None:
        known = self.names.person(person)
        by_lang: dict[str, dict[str, Any]] = {}
        for tag, parts in (known or {}).items():
            variant = self.rules.language(tag)
            if variant:
                by_lang.setdefault(variant, parts)
        names = [n for n in person.get("name") or [] if isinstance(n, dict)]
        verbatim = "name" in self.rules.verbatim.get(str(person.get("resourceType")), ())
        for name in names:
            if verbatim or lang == source or lang not in self.rules.chinese:
                continue  # a legal name, as received
            if not _is_chinese_name(name):
                continue  # an English name
            seed = by_lang.get(lang)
            for part in ("text", "family"):
                value = name.get(part)
                if isinstance(value, str):
                    name[part] = (
                        seed.get(part, value) if seed else self._convert_any(value, source, lang)
                    )
            given = name.get("given")
            if isinstance(given, list):
                seeded = seed.get("given") if seed else None
                name["given"] = (
                    [str(seeded)]
                    if isinstance(seeded, str) and len(given) == 1
                    else [self._convert_any(str(g), source, lang) for g in given]
                )
        english = by_lang.get("en")
        if lang == "en" and english and not any(not _is_chinese_name(n) for n in names):
            person.setdefault("name", []).append(_latin_name(english))

    def add_english_names(self, doc: ReportDocument) -> None:
        """People the seed file knows get their English name beside the Chinese one."""
        for resource in doc.resources():
            if resource.get("resourceType") in ("Patient", "Practitioner", "RelatedPerson"):
                self._people(resource, "en", "en")

    def _convert_any(self, text: str, source: str, lang: str) -> str:
        converted = self._convert_text(text, source, lang)
        return text if converted is None else converted

    def _convert_text(self, text: str, source: str, lang: str) -> str | None:
        """``text`` in ``lang`` (None: no conversion there), the people's names the report
        holds (see ``_names_in``) kept as written: free text and narratives quote the
        patient's or a doctor's name, which is never script-converted."""
        source = self.names.text_language(text, source)
        names: re.Pattern[str] | None = getattr(self._local, "names", None)
        if names is None or source == lang or not names.search(text):
            return self.names.convert(text, source, lang)
        out = []
        for n, part in enumerate(names.split(text)):  # the pattern's group: odd parts
            converted = part if n % 2 or not part else self.names.convert(part, source, lang)
            if converted is None:
                return None
            out.append(converted)
        return "".join(out)

    # -- clinical free text ---------------------------------------------------------------

    def _convert_narrative(self, resource: Resource, source: str, lang: str) -> None:
        if resource.get("resourceType") in self.rules.verbatim:
            return  # a person's own narrative shows their name: never converted
        for key in self.rules.narrative.get(str(resource.get("resourceType")), ()):
            value = resource.get(key)
            if isinstance(value, str):
                resource[key] = self._convert_any(value, source, lang)
        text = resource.get("text")
        # A generated narrative is made again for the variant (it shows names, which are
        # never converted); a sender's own is clinical text. OpenCC only touches CJK
        # characters, so markup passes through unchanged.
        if (
            isinstance(text, dict)
            and text.get("status") != "generated"
            and isinstance(text.get("div"), str)
        ):
            text["div"] = self._convert_any(text["div"], source, lang)

    def _english_narrative(
        self,
        doc: ReportDocument,
        report: Resource,
        results: list[Resource],
        english: EnglishReport | None,
    ) -> bool:
        """English narrative from the English report, or absent and marked pending."""
        for resource in (report, *results):
            for key in self.rules.narrative.get(str(resource.get("resourceType")), ()):
                resource.pop(key, None)
                resource.pop(f"_{key}", None)
            if english is None or resource is not report:
                resource.pop("text", None)
        findings = [r for r in results if self.is_findings(r)]
        if english is not None:
            if english.conclusion:
                report["conclusion"] = english.conclusion
            if english.text:
                report["text"] = english.text
            else:
                report.pop("text", None)
        texts = english.findings if english else []
        for n, obs in enumerate(findings):
            if n < len(texts):
                obs["valueString"] = texts[n]
                obs.pop("dataAbsentReason", None)
            else:
                obs["dataAbsentReason"] = dict(self.rules.data_absent_reason)
        pending = english is None
        if pending:
            extensions = [
                e for e in report.get("extension") or [] if e.get("url") != self.rules.pending_url
            ]
            extensions.append({"url": self.rules.pending_url, "valueCode": "en"})
            report["extension"] = extensions
        return pending

    def is_findings(self, obs: Resource) -> bool:
        codings = (obs.get("code") or {}).get("coding") or []
        return any((c.get("system"), c.get("code")) in self.rules.findings for c in codings)


def _is_coding(node: dict[str, Any]) -> bool:
    return (
        isinstance(node.get("system"), str)
        and isinstance(node.get("code"), str)
        and "value" not in node  # a Quantity has system and code too
    )


def _literal_type(ref: dict[str, Any]) -> str | None:
    """The resource type a literal reference names (``Patient/1``, ``Patient?identifier=``,
    an absolute URL ending so)."""
    found = re.search(
        r"(?:^|/)([A-Z][A-Za-z]+)(?:/[^/?]+(?:/_history/[^/]+)?|\?.*)$",
        str(ref.get("reference") or ""),
    )
    return found.group(1) if found else None


def _references(node: Any) -> Iterator[dict[str, Any]]:
    """Every Reference in a resource, at any depth (an order's requester, a note's
    author, a performer's actor): each may name a person (contained resources are
    resources of their own, walked by ``doc.resources``)."""
    if isinstance(node, dict):
        if "display" in node and "code" not in node and "system" not in node:
            yield node  # a Reference's display (a Coding's is a code's name)
        for key, value in node.items():
            if key != "contained" and isinstance(value, (dict, list)):
                yield from _references(value)
    elif isinstance(node, list):
        for item in node:
            yield from _references(item)


def _names_in(doc: ReportDocument, verbatim: Any) -> re.Pattern[str] | None:
    """A pattern matching the names of the people a report holds (resources whose names
    are verbatim, and references' displays of them): the whole name as written, family
    and given names together either way round, and given names of two characters or
    more. Longest first, so a whole name is kept whole."""
    found: set[str] = set()
    for resource in doc.resources():
        for ref in _references(resource):  # a person named by a reference's display only
            if isinstance(ref.get("display"), str):
                target = doc.resolve(ref, resource)
                kind = (target or {}).get("resourceType") or ref.get("type")
                kind = kind or _literal_type(ref)
                if kind is None or kind in verbatim or kind == "PractitionerRole":
                    found.add(ref["display"])
        if resource.get("resourceType") not in verbatim:
            continue
        for name in resource.get("name") or []:
            if not isinstance(name, dict):
                continue
            family = name.get("family")
            family = family if isinstance(family, str) else ""
            given = [g for g in name.get("given") or [] if isinstance(g, str)]
            found.update(
                p for p in (name.get("text"), family + "".join(given)) if isinstance(p, str)
            )
            found.update(("".join(given) + family, " ".join([family, *given])))
            found.update(g for g in given if len(g) > 1)
    names = sorted({n.strip() for n in found if n and n.strip()}, key=len, reverse=True)
    if not names:
        return None
    return re.compile("(" + "|".join(map(re.escape, names)) + ")")


def _is_chinese_name(name: dict[str, Any]) -> bool:
    parts = [name.get("text"), name.get("family"), *(name.get("given") or [])]
    return any(isinstance(p, str) and language_of(p) == "zh" for p in parts)


def _latin_name(parts: dict[str, Any]) -> dict[str, Any]:
    name: dict[str, Any] = {"extension": [{"url": _ABC, "valueCode": "ABC"}], "use": "usual"}
    if parts.get("text"):
        name["text"] = str(parts["text"])
    if parts.get("family"):
        name["family"] = str(parts["family"])
    if parts.get("given"):
        name["given"] = [str(parts["given"])]
    return name


def _set_translations(
    holder: dict[str, Any], key: str, extensions: list[dict[str, Any]], language: Any
) -> None:
    """Replace the translation extensions on ``_key`` for the variant languages (others,
    and other extensions, stay)."""
    element = holder.get(f"_{key}")
    kept = []
    if isinstance(element, dict):
        for ext in element.get("extension") or []:
            lang = next(
                (
                    e.get("valueCode")
                    for e in ext.get("extension") or []
                    if isinstance(e, dict) and e.get("url") == "lang"
                ),
                None,
            )
            if ext.get("url") == TRANSLATION_URL and language(lang):
                continue
            kept.append(ext)
    merged = kept + extensions
    rest = (
        {k: v for k, v in element.items() if k != "extension"} if isinstance(element, dict) else {}
    )
    if merged:
        holder[f"_{key}"] = {**rest, "extension": merged}
    elif rest:
        holder[f"_{key}"] = rest
    else:
        holder.pop(f"_{key}", None)
