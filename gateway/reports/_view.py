"""What a rendered report shows, in one language, read from a localized report."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..mapping import language_of
from ._document import ReportDocument, Resource
from ._rules import Rules

__all__ = ["ReportView", "Signer", "build_view"]

_ACCESSION = ("http://terminology.hl7.org/CodeSystem/v2-0203", "ACSN")
_MRN = ("http://terminology.hl7.org/CodeSystem/v2-0203", "MR")


@dataclass(frozen=True, slots=True)
class Signer:
    name: str
    institution: str | None
    # "local": a radiologist of the performing institution; "expert": of another one
    # (the reporting institution of a co-branded report, or the partner's radiologist);
    # "radiologist": one whose institution, or the performing one, is not known, so the
    # label states no institution (a signed report must not say who belongs where
    # without knowing it).
    role: str = "radiologist"


@dataclass(frozen=True, slots=True)
class ReportView:
    lang: str
    labels: dict[str, Any]
    institutions: tuple[tuple[str, str], ...]  # (identity key, name), performer first
    performed_at: tuple[str, ...]  # the institutions where the examination was done
    reported_at: tuple[str, ...]  # the institutions whose radiologists reported it
    report_number: str | None
    cut: str  # the font cut of this language (rules.fonts)
    chinese: bool

    @property
    def colon(self) -> str:
        return "：" if self.chinese else ": "  # full width in Chinese

    def field(self, key: str, value: str | None) -> str:
        """'label: value' in this language ('—' for no value)."""
        return f"{self.label(key)}{self.colon}{value or self.label('none')}"

    patient: str | None
    sex: str | None
    birth_date: str | None
    mrn: str | None
    exam: str | None
    study_date: str | None
    accession: str | None
    status: str | None
    findings: tuple[str, ...]
    impression: str | None
    pending: bool
    signers: tuple[Signer, ...]
    issued: str | None

    def label(self, key: str) -> str:
        return str(self.labels[key])


def build_view(
    doc: ReportDocument,
    lang: str,
    rules: Rules,
    signers: list[int],
    pending: bool,
    issued: Any = None,
) -> ReportView:
    """The view of ``doc`` (already localized to ``lang``); ``signers`` are the indexes
    in resultsInterpreter of those who wrote this language's text, ``issued`` this
    language's issue time. A pending language has no signers and no issue time: its
    report does not exist yet."""
    report = doc.report
    patient = doc.resolve(report.get("subject"), report)
    interpreters = list(report.get("resultsInterpreter") or [])
    orgs: list[tuple[str, str]] = []
    performers: list[tuple[str, str]] = []
    for ref in report.get("performer") or []:
        _add(orgs, _organization(doc, ref, report))
        _add(performers, _organization(doc, ref, report))
    for ref in interpreters:
        _add(orgs, _organization(doc, ref, report))
    people = [] if pending else [interpreters[n] for n in signers if n < len(interpreters)]
    shown = tuple(_signer(doc, ref, lang, rules, report, performers) for ref in people)
    experts = [s.institution for s in shown if s.role == "expert" and s.institution]
    reporters = experts or [s.institution for s in shown if s.institution]
    findings = [
        str(obs["valueString"])
        for obs in (doc.resolve(r, report) for r in report.get("result") or [])
        if obs and _is_findings(obs, rules) and isinstance(obs.get("valueString"), str)
    ]
    effective = report.get("effectiveDateTime") or (report.get("effectivePeriod") or {}).get(
        "start"
    )
    return ReportView(
        lang=lang,
        labels=rules.labels[lang],
        institutions=tuple(orgs),
        patient=_person_name(patient, lang, rules) if patient else _display(report.get("subject")),
        sex=rules.coded_label(lang, "sexes", (patient or {}).get("gender")),
        birth_date=(patient or {}).get("birthDate"),
        mrn=_identifier(patient or {}, _MRN, "/sid/mrn"),
        exam=_exam(report.get("code") or {}, lang, rules),
        study_date=_when(effective),
        accession=_accession(report),
        status=rules.coded_label(lang, "statuses", report.get("status")),
        findings=tuple(findings),
        impression=report.get("conclusion") if isinstance(report.get("conclusion"), str) else None,
        pending=pending,
        signers=shown,
        issued=None if pending else _when(issued),
        performed_at=tuple(name for _, name in performers),
        reported_at=tuple(dict.fromkeys(reporters)),
        report_number=_report_number(report),
        cut=rules.fonts[lang],
        chinese=lang in rules.chinese,
    )


# The key of an institution named only by a reference's display (no identity of its own)
_NAMED = "name:"


def _add(orgs: list[tuple[str, str]], found: tuple[str, str] | None) -> None:
    if found and all(key != found[0] and name != found[1] for key, name in orgs):
        orgs.append(found)


def _display(ref: Any) -> str | None:
    display = ref.get("display") if isinstance(ref, dict) else None
    return display if isinstance(display, str) else None


def _organization(doc: ReportDocument, ref: Any, report: Resource) -> tuple[str, str] | None:
    """(identity, name) of the Organization behind a performer/interpreter reference;
    a PractitionerRole stands for its organization."""
    target = doc.resolve(ref, report)
    if target and target.get("resourceType") in ("PractitionerRole", "Practitioner"):
        ref = target.get("organization")
        target = doc.resolve(ref, report)
        if ref is None:
            return None
    if target and isinstance(target.get("name"), str):
        return (str(ref.get("reference")), str(target["name"]))
    display = _display(ref)
    if display and target is None and (ref.get("type") in (None, "Organization")):
        return (str(ref.get("reference") or _NAMED + display), display)
    return None


def _person_name(person: Resource, lang: str, rules: Rules) -> str | None:
    """The name written in the script of ``lang`` (Chinese or Latin), else the first."""
    names = [n for n in person.get("name") or [] if isinstance(n, dict)]
    want_chinese = lang in rules.chinese

    def text(name: dict[str, Any]) -> str:
        if isinstance(name.get("text"), str):
            return str(name["text"])
        family, given = name.get("family") or "", " ".join(name.get("given") or [])
        chinese = language_of(f"{family}{given}") == "zh"
        return f"{family}{given}" if chinese else " ".join(p for p in (family, given) if p)

    texts = [text(n) for n in names if text(n)]
    for candidate in texts:
        if (language_of(candidate) == "zh") == want_chinese:
            return candidate
    return texts[0] if texts else None


def _signer(
    doc: ReportDocument,
    ref: Any,
    lang: str,
    rules: Rules,
    report: Resource,
    performers: list[tuple[str, str]],
) -> Signer:
    target = doc.resolve(ref, report)
    person, found = target, None
    if target and target.get("resourceType") == "PractitionerRole":
        person = doc.resolve(target.get("practitioner"), report)
        found = _organization(doc, ref, report)
    name = (_person_name(person, lang, rules) if person else None) or _display(ref)
    if name is None and target:
        name = _display(target.get("practitioner"))
    return Signer(
        name or str(rules.label(lang, "none")),
        found[1] if found else None,
        _role(found, performers),
    )


def _role(found: tuple[str, str] | None, performers: list[tuple[str, str]]) -> str:
    """A signer's role label: of the performing institution, of another one, or neutral
    when either institution is unknown (a Practitioner with no role, a radiologist
    carried by name, a report naming no performer). An institution named only by a
    display is compared by that name: the same name is the performing hospital, another
    name is not known to be another hospital (one hospital has several spellings)."""
    if found is None or not performers:
        return "radiologist"
    named = [found, *performers]
    by_name = any(key.startswith(_NAMED) for key, _ in named)
    if any(found[0] == k or (by_name and found[1] == n) for k, n in performers):
        return "local"
    return "radiologist" if by_name else "expert"


def _report_number(report: Resource) -> str | None:
    """The report's number: its identifier of a report system (…/sid/report), else its
    first identifier."""
    values = [
        (str(i.get("system", "")).endswith("/sid/report"), str(i["value"]))
        for i in report.get("identifier") or []
        if isinstance(i, dict) and isinstance(i.get("value"), str) and i["value"]
    ]
    values.sort(key=lambda v: not v[0])
    return values[0][1] if values else None


def _identifier(resource: Resource, type_code: tuple[str, str], suffix: str) -> str | None:
    for ident in resource.get("identifier") or []:
        codings = (ident.get("type") or {}).get("coding") or []
        typed = any((c.get("system"), c.get("code")) == type_code for c in codings)
        if typed or str(ident.get("system", "")).endswith(suffix):
            value = ident.get("value")
            return str(value) if value else None
    return None


def _accession(report: Resource) -> str | None:
    found = _identifier(report, _ACCESSION, "/sid/accession")
    if found:
        return found
    for ref in report.get("basedOn") or []:
        ident = ref.get("identifier") if isinstance(ref, dict) else None
        if isinstance(ident, dict):
            found = _identifier({"identifier": [ident]}, _ACCESSION, "/sid/accession")
            if found:
                return found
    return None


def _exam(code: dict[str, Any], lang: str, rules: Rules) -> str | None:
    """The exam's name: a specific coding's display before a generic report code, one
    written in the view's script before one that is not."""
    codings = [c for c in code.get("coding") or [] if isinstance(c, dict) and c.get("display")]
    script = "zh" if lang in rules.chinese else "en"
    ranked = sorted(
        codings,
        key=lambda c: (
            (c.get("system"), c.get("code")) in rules.generic_codes,
            language_of(str(c["display"])) != script,
        ),
    )
    for coding in ranked:
        return str(coding["display"])
    return str(code["text"]) if isinstance(code.get("text"), str) else None


def _is_findings(obs: Resource, rules: Rules) -> bool:
    codings = (obs.get("code") or {}).get("coding") or []
    return any((c.get("system"), c.get("code")) in rules.findings for c in codings)


def _when(value: Any) -> str | None:
    """A FHIR date/dateTime for reading: '2026-06-16 10:20 +08:00'."""
    if not isinstance(value, str) or not value:
        return None
    if "T" not in value:
        return value
    date, _, rest = value.partition("T")
    clock, zone = rest[:5], rest[8:]
    zone = zone.lstrip(".0123456789")  # fractional seconds
    zone = "UTC" if zone == "Z" else zone
    return f"{date} {clock} {zone}".strip()
