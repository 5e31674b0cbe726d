"""Language variants of a DiagnosticReport: zh-Hans, zh-Hant-HK, en and bilingual.

* ``zh-Hans`` / ``zh-Hant-HK`` / ``en``: the report localized to that language
  (``_localize.py``), with one HTML and one PDF ``presentedForm`` in that language.
* ``bilingual``: the report in its own language; the other languages' texts in the
  standard ``translation`` extension on ``_conclusion``, ``_valueString``, ``_display``,
  ``_name``, ``_text``, ``_family``, ``_given``; one HTML and one PDF ``presentedForm``
  per language (``rules.forms`` says which languages each shows, side by side).

The English narrative only comes from a linked English report (a DiagnosticReport whose
``translation-of`` extension names one of the original's identifiers); without one,
the English part is marked pending (docs/reports.md).
"""

from __future__ import annotations

import base64
import copy
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from ..config import Settings
from ..errors import ConfigError, IntakeError, MappingError, ValidationError
from ..mapping import Narratives, Terminology, language_of
from ..network import Network
from ..validation import check_bundle, validate_bundle, validate_resource
from ._document import ReportDocument, Resource
from ._localize import EnglishReport, Localizer, _literal_type
from ._names import Names, translation
from ._pdf import missing_glyphs, render_pdf
from ._render import render_html
from ._rules import Rules
from ._view import ReportView, build_view

__all__ = ["BILINGUAL", "ReportVariants", "Variant"]

BILINGUAL = "bilingual"
HTML = "text/html"
PDF = "application/pdf"
# Elements whose text is a translation target in the bilingual variant (Coding.display
# gets its translations from the terminology when it is localized).
_SKIP = frozenset({"language", "div", "reference", "system", "code", "url", "id", "status"})


@dataclass(slots=True)
class Variant:
    """A produced variant: the resource (Bundle or DiagnosticReport) and its renderings."""

    lang: str
    resource: Resource
    pending: bool
    html: bytes
    pdf: bytes
    notes: list[str] = field(default_factory=list)


# The profile of a bilingual report (profiles/, docs/profiles/): its forms per language.
BILINGUAL_PROFILE = (
    "https://fhir-gateway.example.org/StructureDefinition/bilingual-diagnosticreport"
)


@dataclass(slots=True)
class _Tree:
    doc: ReportDocument
    lang: str
    pending: bool


class ReportVariants:
    """Builds variants; create once (it loads terminology, network and rules) and reuse."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.rules = Rules.load(settings.mappings / "reports")
        self.network = Network.load(settings.network)
        self.names = Names(self.rules, Terminology(settings.mappings), self.network)
        self.localizer = Localizer(self.names)
        self.narratives = Narratives.load(settings.mappings, self.network)

    def languages(self) -> list[str]:
        return [*self.rules.order, BILINGUAL]

    def preferred(self, partner: str) -> str:
        """The variant a partner institution asks for (``report_variant`` in the
        network: one language, ``bilingual``, or a list of the languages its bilingual
        report shows side by side, given as ``zh-Hant-HK+en``; bilingual when it names
        none)."""
        inst = self.network.find(partner)
        if inst is None:
            raise ConfigError(
                "unknown-partner", f"{partner!r} is not an institution of the network"
            )
        wanted = inst.data.get("report_variant") or BILINGUAL
        if isinstance(wanted, (list, tuple)):
            wanted = "+".join(str(lang) for lang in wanted)
        try:
            self._language(str(wanted))
        except MappingError:
            raise ConfigError(
                "network",
                f"institution {inst.facility}: report_variant {wanted!r} is not a variant "
                f"(one of {', '.join(self.languages())}, or a list of languages)",
            ) from None
        return str(wanted)

    def variant(
        self, report: bytes | Resource, lang: str, english: bytes | Resource | None = None
    ) -> Variant:
        """The ``lang`` variant of ``report`` (a DiagnosticReport or a Bundle holding one),
        with ``english`` the linked English report if there is one. Inputs are not modified."""
        target, columns = self._language(lang)
        doc = _document(report, "report")
        _check_length(doc.root, "report")
        _one_patient(doc, "report")
        source = self._source_language(doc)
        english_doc = _document(english, "English report") if english else None
        if english_doc is not None:
            _check_length(english_doc.root, "English report")
        linked = self._english(doc, english_doc) if english_doc is not None else None
        stale = _superseded(doc.report, linked.doc.report) if linked is not None else None
        if stale is not None:
            linked = None  # it translates a version that no longer stands: pending
        if linked is not None and target != BILINGUAL and target != "en":
            linked = None  # Chinese variants do not carry the English narrative
        base = doc.copy()
        authors = list(range(len(base.report.get("resultsInterpreter") or [])))
        english_authors = self._merge_signers(base, linked) if linked else authors
        trees = {lang: self._tree(base, source, lang, linked) for lang in self.rules.order}
        signers = {
            lang: english_authors if lang == "en" and linked else authors
            for lang in self.rules.order
        }
        if target == BILINGUAL:
            out = self._bilingual(source, trees)
            out.report["meta"] = {**(out.report.get("meta") or {}), "profile": [BILINGUAL_PROFILE]}
            # A partner's own columns give one form; plain bilingual one per language.
            forms = {columns[0]: columns} if columns else self.rules.forms
            primary = columns[0] if columns else source
        else:
            out = trees[target].doc
            forms = {target: (target,)}
            primary = target
        # Each language's issue time: the English column's is its own report's.
        issued = {lang: base.report.get("issued") for lang in self.rules.order}
        if linked is not None:
            issued["en"] = linked.doc.report.get("issued")
        rendered = self._forms(out, trees, forms, signers, issued)
        _set_forms(out.report, rendered, self.rules)
        self._narrate(out)
        self._validate(out)
        pending = any(trees[lang].pending for lang in forms[primary])
        notes = []
        blank = missing_glyphs(_strings(out.root))
        if blank:
            notes.append(
                f"{blank} character(s) of the report have no glyph in the PDF font and show "
                "blank in the PDF; the JSON and HTML carry them"
            )
        if pending and stale is not None:
            notes.append(
                f"{stale}: the English part is marked pending ({self.rules.pending_url}) "
                "until the English report of this version is linked"
            )
        elif pending:
            notes.append(
                "no English report is linked: the English part is marked pending "
                f"({self.rules.pending_url}); link one with --english"
            )
        return Variant(
            lang="+".join(columns) if columns else target,
            resource=out.root,
            pending=pending,
            html=rendered[primary][HTML],
            pdf=rendered[primary][PDF],
            notes=notes,
        )

    def _narrate(self, out: ReportDocument) -> None:
        """The gateway's generated narratives are made again from the variant's content:
        converting them would script-convert the names they show, and their labels follow
        the variant's language (a lone DiagnosticReport is left without one)."""
        for resource in out.resources():
            text = resource.get("text")
            if isinstance(text, dict) and text.get("status") == "generated":
                del resource["text"]
        if out.is_bundle:
            self.narratives.add(out.root)

    # -- inputs -----------------------------------------------------------------------

    def _language(self, lang: str) -> tuple[str, tuple[str, ...] | None]:
        """(variant, columns): columns when ``lang`` is a bilingual choice such as
        ``zh-Hant-HK+en`` (the languages shown side by side, in that order)."""
        if lang.lower() == BILINGUAL:
            return BILINGUAL, None
        columns = self.rules.columns(lang)
        if columns is not None and len(columns) > 1:
            return BILINGUAL, columns
        found = self.rules.language(lang)
        if found is None:
            raise MappingError(
                "report-language",
                f"unknown report language {lang!r} (one of {', '.join(self.languages())}, "
                "or languages joined with '+', e.g. zh-Hant-HK+en)",
                location="lang",
            )
        return found, None

    def _source_language(self, doc: ReportDocument) -> str:
        declared = self.rules.language(doc.report.get("language"))
        if declared:
            return declared
        texts = [doc.report.get("conclusion")] + [
            obs.get("valueString")
            for obs in (doc.resolve(r) for r in doc.report.get("result") or [])
            if obs
        ]
        chinese = any(isinstance(t, str) and language_of(t) == "zh" for t in texts)
        return self.rules.default_chinese if chinese or not any(texts) else "en"

    def _english(self, doc: ReportDocument, english: ReportDocument) -> EnglishReport:
        """The English report's narrative, once its link to ``doc`` is checked."""
        report = english.report
        lang = self.rules.language(report.get("language"))
        if lang != "en":
            raise MappingError(
                "report-not-english",
                f"the English report has language {report.get('language')!r}, not 'en'",
                expression="DiagnosticReport.language",
            )
        links = [
            e.get("valueReference", {}).get("identifier")
            for e in report.get("extension") or []
            if isinstance(e, dict) and e.get("url") == self.rules.translation_of
        ]
        links = [link for link in links if isinstance(link, dict)]
        # A value without its system names no report (any institution has a report 1).
        own = [_ident(i) for i in doc.report.get("identifier") or [] if _has_system(i)]
        if not links:
            raise MappingError(
                "translation-of-missing",
                f"the English report has no {self.rules.translation_of} extension naming "
                "the report it translates",
                expression="DiagnosticReport.extension",
            )
        if not any(_ident(link) in own for link in links if _has_system(link)):
            raise MappingError(
                "translation-of-mismatch",
                f"the English report is a translation of {', '.join(_ident(x) for x in links)}, "
                f"but the report's identifiers are {', '.join(own) or '(none)'}",
                expression="DiagnosticReport.extension.valueReference.identifier",
            )
        _one_patient(english, "English report")
        _same_patient(doc, english, self.settings.report_require_patient_identity)
        _same_study(doc, english)
        findings = [
            str(obs["valueString"])
            for obs in (english.resolve(r) for r in report.get("result") or [])
            if obs and self.localizer.is_findings(obs) and isinstance(obs.get("valueString"), str)
        ]
        _placeable(doc, english, len(findings), self.localizer.is_findings)
        conclusion = report.get("conclusion")
        text = report.get("text")
        return EnglishReport(
            doc=english,
            conclusion=conclusion if isinstance(conclusion, str) else None,
            findings=findings,
            text=text if isinstance(text, dict) else None,
        )

    def _merge_signers(self, base: ReportDocument, english: EnglishReport) -> list[int]:
        """Add the English report's interpreters to ``base`` (their PractitionerRole,
        Practitioner and Organization entries too); their indexes in resultsInterpreter."""
        interpreters = base.report.setdefault("resultsInterpreter", [])
        indexes = []
        for ref in english.doc.report.get("resultsInterpreter") or []:
            target = english.doc.resolve(ref)
            if target is not None and base.is_bundle and english.doc.entry_of(target):
                _copy_entries(english.doc, base, target, set())
                new = {k: v for k, v in ref.items() if k != "display"}
            else:  # nothing to point at in base: keep what names the person
                new = _logical_signer(english.doc, ref, target)
            if not new:
                continue
            same = next((n for n, r in enumerate(interpreters) if _same_ref(r, new)), None)
            if same is None:
                interpreters.append(new)
                same = len(interpreters) - 1
            indexes.append(same)
        if not interpreters:
            base.report.pop("resultsInterpreter")
        # No fallback to the Chinese report's radiologists: they did not sign the English.
        return indexes

    # -- variants ---------------------------------------------------------------------

    def _tree(
        self, base: ReportDocument, source: str, lang: str, english: EnglishReport | None
    ) -> _Tree:
        doc = base.copy()
        pending = self.localizer.localize(doc, source, lang, english)
        return _Tree(doc, lang, pending)

    def _bilingual(self, source: str, trees: dict[str, _Tree]) -> ReportDocument:
        """The source-language tree, with every text that differs in another language's
        tree carried in a translation extension beside it."""
        out = trees[source].doc.copy()
        self.localizer.add_english_names(out)
        for lang in self.rules.order:
            if lang != source:
                _annotate(out.root, trees[lang].doc.root, lang)
        if trees["en"].pending:
            out.report.setdefault("extension", []).append(
                {"url": self.rules.pending_url, "valueCode": "en"}
            )
        return out

    def _forms(
        self,
        out: ReportDocument,
        trees: dict[str, _Tree],
        forms: dict[str, tuple[str, ...]],
        signers: dict[str, list[int]],
        issued: dict[str, Any],
    ) -> dict[str, dict[str, bytes]]:
        """HTML and PDF per form language (each form shows its columns side by side)."""
        views: dict[str, ReportView] = {}
        for lang in {col for cols in forms.values() for col in cols}:
            tree = trees[lang]
            views[lang] = build_view(
                tree.doc, lang, self.rules, signers[lang], tree.pending, issued[lang]
            )
        created = _created(out.report, self.rules.fallback_date)
        rendered = {}
        for lang, columns in forms.items():
            shown = [views[c] for c in columns]
            rendered[lang] = {
                HTML: render_html(self.rules.template, shown),
                PDF: render_pdf(shown, created),
            }
        return rendered

    def _validate(self, out: ReportDocument) -> None:
        if not self.settings.validate:
            return
        issues = check_bundle(out.root) if out.is_bundle else validate_resource(out.root)
        if issues:
            first = issues[0]
            raise ValidationError(
                "report-variant",
                f"the report variant is not valid FHIR: {first.message}",
                expression=first.fhirpath,
            )


def _document(data: bytes | Resource | None, what: str) -> ReportDocument:
    if isinstance(data, (bytes, bytearray)):
        doc = ReportDocument.parse(bytes(data), what)
    else:
        doc = ReportDocument.of(data, what)
    # The variant code reads the input as FHIR (language a string, entries objects, ...):
    # input of any other shape is refused here by the models, not met as a traceback.
    issues = validate_bundle(doc.root) if doc.is_bundle else validate_resource(doc.root)
    if issues:
        first = issues[0]
        raise IntakeError(
            "report-invalid",
            f"the {what} is not valid FHIR R4: {first.message}",
            expression=first.fhirpath,
        )
    return doc


# A radiology report's text runs to a few thousand characters; rendering grows with it
# (~12 s for a bilingual variant of 59,000), and each render holds a report worker.
MAX_TEXT = 60_000


def _check_length(root: Any, what: str) -> None:
    size = sum(len(text) for text in _strings(root))
    if size > MAX_TEXT:
        raise IntakeError(
            "report-too-long",
            f"the {what} holds {size} characters of text; at most {MAX_TEXT} are rendered",
        )


def _strings(node: Any) -> Iterator[str]:
    """Every string value in a resource (the texts the renderings may show)."""
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for key, value in node.items():
            if key != "data":  # base64 renderings are not text
                yield from _strings(value)
    elif isinstance(node, list):
        for item in node:
            yield from _strings(item)


# A patient's identity: identifier values by system ("" for identifiers without one).
Identity = dict[str, frozenset[str]]


def _identity(identifiers: list[Any]) -> Identity:
    """Identifier values by system. One without a system is left out: a bare value (an
    MRN without its assigning authority) names no one across two sources, and two
    hospitals' patients may share it."""
    found: dict[str, set[str]] = {}
    for ident in identifiers:
        if isinstance(ident, dict) and isinstance(ident.get("value"), str) and ident["value"]:
            system = ident.get("system")
            if isinstance(system, str) and system:
                found.setdefault(system, set()).add(ident["value"])
    return {system: frozenset(values) for system, values in found.items()}


def _disagreement(a: Identity, b: Identity) -> str | None:
    """Why two identities are not one patient's, or None when they are: a system both
    name with no value in common, or no identifier in common at all. Names systems only,
    never values."""
    differ = sorted(system for system in a.keys() & b.keys() if not a[system] & b[system])
    if differ:
        return f"their patient identifiers differ in {', '.join(differ)}"
    if not any(a[system] & b[system] for system in a.keys() & b.keys()):
        return "their patients share no identifier"
    return None


def _reference_identity(
    doc: ReportDocument, reference: Any, within: Resource, what: str, location: str
) -> Identity:
    """Who a Reference names: its logical ``identifier`` and the identifiers of the
    resource it resolves to (a Bundle entry or a contained resource), which must agree."""
    if not isinstance(reference, dict):
        return {}
    target = doc.resolve(reference, within)
    named = _identity([reference.get("identifier")])
    held = _identity(target.get("identifier") or [] if target is not None else [])
    problem = _disagreement(named, held) if named and held else None
    if problem:
        raise MappingError(
            "report-other-patient",
            f"{_label(doc, what)} names a patient by an identifier that is not the one "
            f"of the resource it references: {problem}",
            expression=location,
        )
    return {s: named.get(s, frozenset()) | held.get(s, frozenset()) for s in named | held}


def _label(doc: ReportDocument, what: str) -> str:
    """How errors name a report: by its (first) identifier, never by its patient."""
    for ident in doc.report.get("identifier") or []:
        if isinstance(ident, dict) and isinstance(ident.get("value"), str) and ident["value"]:
            return f"{what} {ident['value']}"
    return f"the {what}"


def _patient_of(doc: ReportDocument, what: str) -> Identity:
    """The identity of the report's patient, once the report's parts are checked to
    agree on it: its subject, and the subjects of its results (findings of another
    patient must not be shown under this one's name)."""
    where = "DiagnosticReport.subject"
    identity = _reference_identity(doc, doc.report.get("subject"), doc.report, what, where)
    for n, ref in enumerate(doc.report.get("result") or []):
        result = doc.resolve(ref)
        if result is None or not identity:
            continue
        where = f"DiagnosticReport.result[{n}]"
        theirs = _reference_identity(doc, result.get("subject"), result, what, where)
        problem = _disagreement(identity, theirs) if theirs else None
        if problem:
            raise MappingError(
                "report-other-patient",
                f"{_label(doc, what)}: result {n + 1} is of another patient than the "
                f"report: {problem}",
                expression=where,
            )
    return identity


def _one_patient(doc: ReportDocument, what: str) -> Identity:
    """The report's patient (``_patient_of``), once every Patient the input holds is
    checked to be that one: a variant carries every resource of its input, and must
    not carry a second patient's (an unreferenced entry, a stray contained Patient)."""
    identity = _patient_of(doc, what)
    subject = doc.resolve(doc.report.get("subject"), doc.report)
    tops = [e.get("resource") for e in doc.entries()] if doc.is_bundle else [doc.root]
    for n, top in enumerate(tops):
        if not isinstance(top, dict):
            continue
        where = f"Bundle.entry[{n}].resource" if doc.is_bundle else top.get("resourceType")
        inner = [c for c in top.get("contained") or [] if isinstance(c, dict)]
        for m, patient in enumerate([top, *inner]):
            if patient.get("resourceType") != "Patient" or patient is subject:
                continue
            theirs = _identity(patient.get("identifier") or [])
            if identity and theirs:
                problem = _disagreement(identity, theirs)
            else:
                problem = "it cannot be told by identifier to be the report's patient"
            if problem:
                raise MappingError(
                    "report-other-patient",
                    f"{_label(doc, what)} holds a Patient other than its subject: {problem}",
                    expression=f"{where}.contained[{m - 1}]" if m else str(where),
                )
        for m, resource in enumerate([top, *inner]):
            at = f"{where}.contained[{m - 1}]" if m else str(where)
            _check_patient_refs(doc, what, identity, resource, at)
    return identity


# Elements by which a resource says whose it is (Patient references).
_PATIENT_KEYS = ("subject", "patient", "beneficiary")


def _check_patient_refs(
    doc: ReportDocument, what: str, identity: Identity, resource: Resource, at: str
) -> None:
    """A resource the input holds (a study, an order, an encounter...) that names a patient
    by identifier names the report's: the variant carries it beside the report."""
    if resource is doc.report or not identity:
        return
    for key in _PATIENT_KEYS:
        ref = resource.get(key)
        if not isinstance(ref, dict) or _kind(doc, ref, resource) not in ("Patient", None):
            continue
        where = f"{at}.{key}"
        theirs = _reference_identity(doc, ref, resource, what, where)
        problem = _disagreement(identity, theirs) if theirs else None
        if problem:
            raise MappingError(
                "report-other-patient",
                f"{_label(doc, what)} holds a resource ({resource.get('resourceType')}) "
                f"of another patient than the report's: {problem}",
                expression=where,
            )


def _kind(doc: ReportDocument, ref: dict[str, Any], within: Resource) -> str | None:
    """The resource type a Reference names: its target's, its ``type``, its literal's."""
    target = doc.resolve(ref, within)
    kind = (target or {}).get("resourceType") or ref.get("type") or _literal_type(ref)
    return str(kind) if kind else None


def _same_patient(
    doc: ReportDocument, english: ReportDocument, require_identity: bool = True
) -> None:
    """A translation is of the same patient's report, checked by identifier however
    each side names its patient (Patient entry, contained Patient, logical reference):
    a mistyped link must not put one patient's English words into another's report.
    Errors name the two reports by their identifiers, never the patient."""
    own, theirs = _patient_of(doc, "report"), _patient_of(english, "English report")
    report, translation = _label(doc, "report"), _label(english, "English report")
    for side, identity in ((report, own), (translation, theirs)):
        if not identity and require_identity:
            raise MappingError(
                "report-patient-unidentified",
                f"{side} names no patient identifier (DiagnosticReport.subject: a "
                f"reference with an identifier, or to a Patient that has one), so "
                f"{translation} cannot be checked to be of the patient of {report}",
                expression="DiagnosticReport.subject",
            )
    problem = _disagreement(own, theirs) if own and theirs else None
    if problem:
        raise MappingError(
            "translation-other-patient",
            f"{translation} is not of the patient of {report}: {problem}",
            expression="DiagnosticReport.subject",
        )


# What names the study a report is of: its order (the accession) and its images.
_STUDY_LINKS = ("basedOn", "imagingStudy")


def _study_identity(doc: ReportDocument, key: str, what: str) -> Identity:
    """The identifiers of the orders (``basedOn``) or studies (``imagingStudy``) a report
    names: each reference's logical identifier and its target's, when the input holds it.
    The two must agree: else the reference names two orders, and the one agreeing with
    the other report would pass it."""
    found: list[Any] = []
    for ref in _as_list(doc.report.get(key)):
        if isinstance(ref, dict):
            target = doc.resolve(ref, doc.report)
            held = (target or {}).get("identifier") or []
            differ = _differing(_identity([ref.get("identifier")]), _identity(held))
            if differ:
                raise MappingError(
                    "translation-other-study",
                    f"{_label(doc, what)}: a {key} reference's identifier and the "
                    f"identifiers of the resource it points at differ in {', '.join(differ)}",
                    expression=f"DiagnosticReport.{key}",
                )
            found.extend([ref.get("identifier"), *held])
    return _identity(found)


def _differing(a: Identity, b: Identity) -> list[str]:
    """The systems both name with no value in common."""
    return sorted(s for s in a.keys() & b.keys() if not a[s] & b[s])


def _same_study(doc: ReportDocument, english: ReportDocument) -> None:
    """A translation is of the same order and study: where both reports name one in the
    same system, a value in common (compared exactly: 'ns1' and 'ＮＳ1' are other
    numbers). A partner's own accession system is not the original's: not compared."""
    for key in _STUDY_LINKS:
        ours = _study_identity(doc, key, "report")
        theirs = _study_identity(english, key, "English report")
        differ = _differing(ours, theirs)
        if differ:
            raise MappingError(
                "translation-other-study",
                f"{_label(english, 'English report')} is not of the study of "
                f"{_label(doc, 'report')}: their {key} identifiers differ in "
                f"{', '.join(differ)}",
                expression=f"DiagnosticReport.{key}",
            )


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [] if value is None else [value]


def _placeable(doc: ReportDocument, english: ReportDocument, texts: int, is_findings: Any) -> None:
    """The English findings go, in order, into the report's findings Observations: more
    texts than Observations would leave the last English findings unshown."""
    carriers = sum(
        1
        for obs in (doc.resolve(r) for r in doc.report.get("result") or [])
        if obs and is_findings(obs)
    )
    if texts > carriers:
        raise MappingError(
            "translation-findings",
            f"{_label(english, 'English report')} has {texts} findings text(s), but "
            f"{_label(doc, 'report')} has {carriers} findings Observation(s) to carry "
            "them: the rest would not be shown",
            expression="DiagnosticReport.result",
        )


def _has_system(identifier: Any) -> bool:
    return isinstance(identifier, dict) and bool(identifier.get("system"))


def _ident(identifier: dict[str, Any]) -> str:
    return f"{identifier.get('system', '')}|{identifier.get('value', '')}"


def _logical_signer(
    doc: ReportDocument, ref: dict[str, Any], target: Resource | None
) -> dict[str, Any]:
    """An English radiologist named without a resource to point at (the variant is a
    lone DiagnosticReport, or the person is contained in the English report): the type,
    identifier and the name as their own report gives it."""
    new = {k: v for k, v in ref.items() if k in ("type", "identifier", "display")}
    person = target
    if target is not None and target.get("resourceType") == "PractitionerRole":
        person = doc.resolve(target.get("practitioner"), doc.report)
        new.setdefault("type", "PractitionerRole")
    names = [n for n in (person or {}).get("name") or [] if isinstance(n, dict)]
    shown = _name_text(names[0]) if names else None
    if shown:
        new["display"] = shown
    return new


def _name_text(name: dict[str, Any]) -> str | None:
    if isinstance(name.get("text"), str) and name["text"]:
        return str(name["text"])
    given = [g for g in name.get("given") or [] if isinstance(g, str)]
    parts = [p for p in (name.get("family"), *given) if isinstance(p, str) and p]
    return " ".join(parts) or None


def _same_ref(a: dict[str, Any], b: dict[str, Any]) -> bool:
    if a.get("reference") and a.get("reference") == b.get("reference"):
        return True
    ia, ib = a.get("identifier"), b.get("identifier")
    return isinstance(ia, dict) and isinstance(ib, dict) and _ident(ia) == _ident(ib)


def _references(node: Any, out: list[dict[str, Any]]) -> None:
    if isinstance(node, dict):
        if isinstance(node.get("reference"), str):
            out.append(node)
        for value in node.values():
            _references(value, out)
    elif isinstance(node, list):
        for item in node:
            _references(item, out)


def _copy_entries(
    source: ReportDocument, target: ReportDocument, resource: Resource, seen: set[int]
) -> None:
    """Copy ``resource``'s entry from ``source`` into ``target`` (unless its fullUrl is
    there already), then what it references (a PractitionerRole's practitioner and
    organization)."""
    if id(resource) in seen:
        return
    seen.add(id(resource))
    entry = source.entry_of(resource)
    if entry is None:
        return
    url = entry.get("fullUrl")
    held = next((e.get("resource") for e in target.entries() if e.get("fullUrl") == url), None)
    if held is None:
        target.root.setdefault("entry", []).append(copy.deepcopy(entry))
    elif not _same_resource(held, resource):
        # References in the variant resolve by fullUrl: the English report's radiologist
        # would be shown as whoever the report's own entry under that fullUrl is.
        raise MappingError(
            "translation-entry-conflict",
            f"{_label(source, 'English report')}: its {resource.get('resourceType')} entry "
            f"{url} has the fullUrl of another resource of {_label(target, 'report')} "
            f"(a {held.get('resourceType')})",
            expression="Bundle.entry.fullUrl",
        )
    refs: list[dict[str, Any]] = []
    _references(resource, refs)
    for ref in refs:
        inner = source.resolve(ref)
        if inner is not None:
            _copy_entries(source, target, inner, seen)


def _same_resource(a: Resource, b: Resource) -> bool:
    """Two entries under one fullUrl are one resource: equal, or of one type with
    identifiers that agree (the conversions name a resource by type and identifier, so
    one institution or person met in both reports has one fullUrl)."""
    if a == b:
        return True
    if a.get("resourceType") != b.get("resourceType"):
        return False
    ours, theirs = _identity(a.get("identifier") or []), _identity(b.get("identifier") or [])
    return bool(ours and theirs) and _disagreement(ours, theirs) is None


def _annotate(out: Any, other: Any, lang: str) -> None:
    """Put ``other``'s differing texts beside ``out``'s as translation extensions."""
    if isinstance(out, dict) and isinstance(other, dict):
        if isinstance(out.get("system"), str) and isinstance(out.get("code"), str):
            return  # a Coding: its display translations come from the terminology
        for key, value in list(out.items()):
            if key.startswith("_") or key in _SKIP or key not in other:
                continue
            theirs = other[key]
            if isinstance(value, str) and isinstance(theirs, str) and value != theirs:
                _add_translation(out, key, lang, theirs)
            elif (
                isinstance(value, list)
                and isinstance(theirs, list)
                and value
                and all(isinstance(v, str) for v in value)
            ):
                _annotate_strings(out, key, value, theirs, lang)
            else:
                _annotate(value, theirs, lang)
    elif isinstance(out, list) and isinstance(other, list) and len(out) == len(other):
        # Only lists the language kept whole pair by position: when it dropped an item (a
        # Chinese note an English variant cannot carry), item n is another one's text.
        for mine, theirs in zip(out, other, strict=True):
            _annotate(mine, theirs, lang)


def _add_translation(holder: dict[str, Any], key: str, lang: str, text: str) -> None:
    element = holder.setdefault(f"_{key}", {})
    element.setdefault("extension", []).append(translation(lang, text))


def _annotate_strings(
    holder: dict[str, Any], key: str, mine: list[str], theirs: list[Any], lang: str
) -> None:
    """``given: [..]`` gets ``_given: [..]``, one element (or null) per name part."""
    if len(mine) != len(theirs):
        return
    extras = holder.get(f"_{key}") or [None] * len(mine)
    changed = False
    for n, (a, b) in enumerate(zip(mine, theirs, strict=True)):
        if isinstance(b, str) and a != b:
            slot = extras[n] or {}
            slot.setdefault("extension", []).append(translation(lang, b))
            extras[n] = slot
            changed = True
    if changed:
        holder[f"_{key}"] = extras


# Statuses of a report changed after it was first issued (R4 DiagnosticReport.status).
_REVISED = frozenset({"amended", "corrected", "appended"})


def _superseded(report: Resource, english: Resource) -> str | None:
    """Why the English report translates a version of ``report`` that no longer stands
    (the report amended, corrected or appended after the English one was issued; or
    revised with either issue time unknown, which cannot be told apart), else None:
    its text beside the revised Chinese text would read as a translation of it."""
    status = report.get("status")
    if status not in _REVISED:
        return None
    mine, theirs = _instant(report.get("issued")), _instant(english.get("issued"))
    if mine is not None and theirs is not None and theirs >= mine:
        return None
    return (
        f"the report is {status} (issued {report.get('issued') or 'at a time not given'}) "
        f"after its English report (issued {english.get('issued') or 'at a time not given'})"
    )


def _instant(value: Any) -> datetime | None:
    """A FHIR instant (with its offset) as an aware datetime; None when it is not one."""
    if not isinstance(value, str) or "T" not in value:
        return None
    try:
        found = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return found if found.tzinfo is not None else None


def _created(report: Resource, fallback: datetime) -> datetime:
    for key in ("issued", "effectiveDateTime"):
        value = report.get(key)
        if isinstance(value, str) and "T" in value:
            try:
                return datetime.fromisoformat(value.replace("Z", "+00:00"))
            except ValueError:
                continue
    return fallback


def _set_forms(report: Resource, rendered: dict[str, dict[str, bytes]], rules: Rules) -> None:
    """presentedForm: one HTML and one PDF per language, replacing those received
    (a variant's forms must be in the variant's languages)."""
    created = report.get("issued")
    forms = []
    for lang in rules.order:
        if lang not in rendered:
            continue
        title = str(rules.labels[lang]["title"])
        for content_type in (HTML, PDF):
            form: dict[str, Any] = {
                "contentType": content_type,
                "language": lang,
                "data": base64.b64encode(rendered[lang][content_type]).decode("ascii"),
                "title": f"{title} ({lang}, {'PDF' if content_type == PDF else 'HTML'})",
            }
            if isinstance(created, str):
                form["creation"] = created
            forms.append(form)
    report["presentedForm"] = forms
