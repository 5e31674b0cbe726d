"""The gateway's one error family.

Every error names the record, the stage, the location inside the record and the
problem, and turns into one readable CLI line or one ``OperationOutcome.issue``::

    GatewayError                 code prefix  stage
     ├── IntakeError             intake.*     bytes → parsed record (framing, charset, syntax)
     ├── MappingError            mapping.*    parsed record → FHIR (paths, code tables, identity)
     ├── ValidationError         validation.* FHIR structure (fhir.resources models, references)
     └── ConfigError             config.*     configuration, mapping files, seeds

Errors raised by third-party libraries (codecs, YAML, pydantic) are translated into
this family where the gateway calls them; nothing else should reach a user.

Every code is registered, with its stage, HTTP status and meaning, in ``errors.yaml``
beside this module (:func:`registry`); ``docs/errors.md`` is generated from it
(``make docs``).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from functools import cache
from pathlib import Path
from typing import Any

import yaml

__all__ = [
    "ConfigError",
    "ErrorCode",
    "GatewayError",
    "IntakeError",
    "Issue",
    "MappingError",
    "ValidationError",
    "errors_markdown",
    "http_status",
    "operation_outcome",
    "registry",
    "shape",
]


@dataclass(frozen=True, slots=True)
class ErrorCode:
    """One registered error code (``errors.yaml``)."""

    code: str
    family: str
    stage: str  # the pipeline stage that raises it
    http: int  # the API's status for a record failing with it
    issue_type: str  # OperationOutcome.issue.code (http://hl7.org/fhir/issue-type)
    meaning: str
    severity: str = "error"


# The code system of these codes in OperationOutcome.issue.details, published in
# profiles/ (CodeSystem-error-code.json, written by `make docs` from errors.yaml).
ERROR_CODE_SYSTEM = "https://fhir-gateway.example.org/CodeSystem/error-code"


@cache
def registry() -> dict[str, ErrorCode]:
    """Every error code the gateway raises, by code."""
    raw = yaml.safe_load(Path(__file__).with_name("errors.yaml").read_text(encoding="utf-8"))
    families: dict[str, dict[str, Any]] = raw["families"]
    out: dict[str, ErrorCode] = {}
    for code, entry in raw["codes"].items():
        spec = entry if isinstance(entry, dict) else {"meaning": entry}
        family = families[code.split(".", 1)[0]]
        out[code] = ErrorCode(
            code=code,
            family=code.split(".", 1)[0],
            stage=str(family["stage"]),
            http=int(spec.get("http", family["http"])),
            issue_type=str(spec.get("issue_type", family["issue_type"])),
            meaning=str(spec["meaning"]),
            severity=str(spec.get("severity", "error")),
        )
    return out


def http_status(issues: list[Issue]) -> int:
    """The API's status for a record failing with these issues: the highest of its
    errors' registered statuses (a fault of the gateway outranks bad input)."""
    known = registry()
    statuses = [
        known[i.code].http for i in issues if i.severity in ("error", "fatal") and i.code in known
    ]
    return max(statuses, default=422)


@dataclass(frozen=True, slots=True)
class Issue:
    """One problem found in a record; errors carry one, warnings travel on the envelope.

    Two places, kept apart because they speak different languages:

    - ``location``: where in the *source* (an HL7 terser path ``PID-3``, a DICOM tag
      ``(0020,0011) SeriesNumber``, a CDA XPath, an HTTP parameter such as ``sender``);
      it goes to ``OperationOutcome.issue.location``.
    - ``expression``: the FHIR element concerned, as FHIRPath
      (``Bundle.entry[0].resource.subject``); it goes to ``OperationOutcome.issue.expression``,
      which R4 defines as FHIRPath only.

    Validation issues (``validation.*``) locate FHIR elements by nature: when they give only
    ``location`` (the validator's convention), it is their FHIRPath expression.
    """

    code: str  # stable, grouped by stage: "intake.charset", "mapping.unknown-code", ...
    message: str
    record: str | None = None  # "message MSG00112" or "file x.hl7, message #2"
    location: str | None = None  # source location: HL7 terser path, XPath, DICOM tag, ...
    severity: str = "error"  # fatal | error | warning | information
    details: dict[str, Any] = field(default_factory=dict)
    expression: str | None = None  # FHIRPath of the FHIR element concerned

    @property
    def fhirpath(self) -> str | None:
        """The FHIRPath expression of the FHIR element concerned, if the issue is about one."""
        if self.expression is not None:
            return self.expression
        return self.location if self.code.startswith("validation.") else None

    @property
    def source_location(self) -> str | None:
        """Where in the source record or request (never FHIRPath), if known."""
        if self.expression is None and self.code.startswith("validation."):
            return None
        return self.location

    def line(self) -> str:
        """The readable one-liner printed by the CLI."""
        parts = [p for p in (self.record, self.location or self.expression) if p]
        where = ": ".join(parts)
        prefix = f"{where}: " if where else ""
        return f"{self.severity}: {prefix}{self.message} [{self.code}]"

    def to_fhir(self) -> dict[str, Any]:
        """One ``OperationOutcome.issue``: FHIRPath in ``expression``, the source location
        (terser path, DICOM tag, XPath) in ``location`` (docs/errors.md says why)."""
        registered = registry().get(self.code)
        issue: dict[str, Any] = {
            "severity": self.severity,
            "code": self.details.get(
                "issue_type", registered.issue_type if registered else "processing"
            ),
            "details": {
                "coding": [{"system": ERROR_CODE_SYSTEM, "code": self.code}],
                "text": self.message if not self.record else f"{self.record}: {self.message}",
            },
            "diagnostics": self.message,
        }
        source, fhirpath = self.source_location, self.fhirpath
        if source:
            issue["location"] = [source]
        if fhirpath:
            issue["expression"] = [fhirpath]
        return issue


class GatewayError(Exception):
    """Base of every error the gateway raises on purpose."""

    family = "gateway"

    def __init__(
        self,
        code: str,
        message: str,
        *,
        record: str | None = None,
        location: str | None = None,
        expression: str | None = None,
        **details: Any,
    ) -> None:
        """``location``: where in the source (terser path, DICOM tag, XPath);
        ``expression``: the FHIR element concerned, as FHIRPath (see :class:`Issue`)."""
        if not code.startswith(self.family + "."):
            code = f"{self.family}.{code}"
        self.issue = Issue(code, message, record, location, "error", details, expression)
        super().__init__(self.issue.line())

    @property
    def code(self) -> str:
        return self.issue.code

    @property
    def location(self) -> str | None:
        return self.issue.location

    @property
    def expression(self) -> str | None:
        return self.issue.fhirpath

    def with_record(self, record: str) -> GatewayError:
        """Attach the record name once it is known (errors deep in a parse don't know it)."""
        if self.issue.record is None:
            self.issue = replace(self.issue, record=record)
            self.args = (self.issue.line(),)
        return self


class IntakeError(GatewayError):
    family = "intake"


class MappingError(GatewayError):
    family = "mapping"


class ValidationError(GatewayError):
    family = "validation"


class ConfigError(GatewayError):
    family = "config"


def first_nul(named: Iterable[tuple[str, str | None]]) -> str | None:
    """The name of the first text holding U+0000 (NUL), or None: FHIR strings carry no
    NUL, and PostgreSQL's text columns cannot hold one (an insert or a look-up with it
    fails: a 500, a crashed batch). Each entry point refuses it naming the element, with
    :func:`nul_message`'s words."""
    return next((name for name, text in named if text is not None and "\0" in text), None)


def nul_path(node: Any, path: str) -> str | None:
    """The FHIRPath of the first element of parsed JSON ``node`` (at ``path``) whose
    string or member name holds U+0000, or None: FHIR strings carry no NUL (R4
    datatypes: string), and PostgreSQL's text columns cannot hold one. Walked without
    recursion: orjson reads 1,024 levels, deeper than Python recurses."""
    # (value, its path, the path to name when its member name holds a NUL)
    stack: list[tuple[Any, str, str | None]] = [(node, path, None)]
    while stack:
        here, where, named = stack.pop()
        if named is not None:
            return named
        if isinstance(here, str):
            if "\0" in here:
                return where
        elif isinstance(here, dict):
            stack += [
                (v, f"{where}.{k}", where if "\0" in k else None) for k, v in reversed(here.items())
            ]
        elif isinstance(here, list):
            stack += [(v, f"{where}[{n}]", None) for n, v in reversed(list(enumerate(here)))]
    return None


def nul_message(where: str) -> str:
    return f"{where} holds the character U+0000 (NUL), which the gateway's text does not carry"


def shape(value: object, limit: int = 24) -> str:
    """The form of a value without its content, for error lines that must not leak patient
    data: digits become 9, letters A (Chinese characters 字), e.g. '1957-13-45' → '9999-99-99'.
    """
    out = []
    for ch in str(value)[:limit]:
        if ch.isdigit():
            out.append("9")
        elif ch.isascii() and ch.isalpha():
            out.append("A")
        elif ch.isalpha():
            out.append("字")
        else:
            out.append(ch)
    return repr("".join(out) + ("…" if len(str(value)) > limit else ""))


def operation_outcome(issues: list[Issue]) -> dict[str, Any]:
    """A FHIR OperationOutcome holding the given issues."""
    return {"resourceType": "OperationOutcome", "issue": [i.to_fhir() for i in issues]}


def errors_codesystem() -> dict[str, Any]:
    """profiles/CodeSystem-error-code.json, generated from the registry (``make docs``):
    a partner resolves the code of an OperationOutcome by the system's canonical URL."""
    return {
        "resourceType": "CodeSystem",
        "id": "error-code",
        "url": ERROR_CODE_SYSTEM,
        "name": "GatewayErrorCode",
        "title": "FHIR gateway error codes",
        "status": "active",
        "experimental": False,
        "description": (
            "The stable codes of every error and warning the gateway reports, in "
            "OperationOutcome.issue.details.coding. Generated from gateway/errors.yaml."
        ),
        "caseSensitive": True,
        "content": "complete",
        "property": [
            {"code": "stage", "type": "string", "description": "the stage that raises it"},
            {"code": "http", "type": "integer", "description": "the API's HTTP status"},
        ],
        "concept": [
            {
                "code": e.code,
                "display": e.meaning,
                "property": [
                    {"code": "stage", "valueString": e.stage},
                    {"code": "http", "valueInteger": e.http},
                ],
            }
            for e in registry().values()
        ],
    }


def errors_markdown() -> str:
    """docs/errors.md, generated from the registry (``make docs``)."""
    raw = yaml.safe_load(Path(__file__).with_name("errors.yaml").read_text(encoding="utf-8"))
    lines = [
        "# Error codes",
        "",
        "Every error and warning the gateway reports carries one of these codes: on the CLI",
        "in brackets at the end of the line, on the API in",
        "`OperationOutcome.issue.details.coding` (system",
        f"`{ERROR_CODE_SYSTEM}`, published as profiles/CodeSystem-error-code.json).",
        "Generated from `gateway/errors.yaml` by `make docs`; do not edit.",
        "",
        "Messages never quote a record's data: a bad value appears as its form, letters as",
        "`A`, Chinese characters as `字`, digits as `9` (`'AAAAA AAAAA'`): see",
        "[api.md](api.md#masked-values).",
        "",
        "## Where an issue is",
        "",
        "An `OperationOutcome.issue` says where the problem is in two separate elements:",
        "",
        "- `expression`: the FHIR element concerned, as FHIRPath",
        "  (`Bundle.entry[2].resource.birthDate`), and nothing else: R4 defines",
        "  `issue.expression` as FHIRPath. Validation issues (`validation.*`), report variants",
        "  and signature checks locate FHIR elements this way.",
        "- `location`: where in the *source* the sender can fix it: an HL7 v2 terser path",
        "  (`PID-3`, `RF1-9`, `OBR(2)-27.4`), a DICOM tag (`(0020,0011) SeriesNumber`), a CDA",
        "  XPath, or the request parameter (`sender`, `format`). R4 keeps `issue.location` (a",
        "  string, 0..*) and deprecates it only as an XPath into FHIR XML; HAPI uses it the",
        "  same way for the position in the input (`Line[1] Col[2]`). An extension would",
        "  need a published definition that every partner's tooling must learn; `location`",
        "  is read by all of them.",
        "",
        "An issue may have either or both. On the CLI the one-liner names the source",
        "location (else the expression): `error: message M1: PID-7: ... [mapping.bad-datetime]`.",
        "",
        "| family | stage | HTTP | issue type | what |",
        "|---|---|---:|---|---|",
    ]
    for name, fam in raw["families"].items():
        lines.append(
            f"| `{name}` | {fam['stage']} | {fam['http']} | {fam['issue_type']} | {fam['what']} |"
        )
    lines += ["", "| code | HTTP | severity | meaning |", "|---|---:|---|---|"]
    for code in registry().values():
        lines.append(f"| `{code.code}` | {code.http} | {code.severity} | {code.meaning} |")
    return "\n".join(lines) + "\n"
