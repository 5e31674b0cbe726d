"""A report as received: a DiagnosticReport alone or inside a Bundle, with its references
resolved (Bundle entries by fullUrl, contained resources by '#id')."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import orjson

from ..errors import IntakeError

__all__ = ["ReportDocument"]

Resource = dict[str, Any]


@dataclass(slots=True)
class ReportDocument:
    root: Resource  # the Bundle, or the DiagnosticReport itself
    report: Resource  # the DiagnosticReport (inside root)

    @classmethod
    def parse(cls, data: bytes, what: str = "report") -> ReportDocument:
        """Read JSON bytes; the copy is ours, so variants never touch the caller's data."""
        try:
            root = orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            raise IntakeError(
                "report-json", f"the {what} is not JSON ({exc.msg})", location=f"{what}:{exc.pos}"
            ) from None
        return cls.of(root, what, copy_it=False)

    @classmethod
    def of(cls, root: Any, what: str = "report", copy_it: bool = True) -> ReportDocument:
        if not isinstance(root, dict):
            raise IntakeError("report-shape", f"the {what} is not a FHIR resource (JSON object)")
        root = copy.deepcopy(root) if copy_it else root
        kind = root.get("resourceType")
        if kind == "DiagnosticReport":
            return cls(root, root)
        if kind == "Bundle":
            reports = [
                e["resource"]
                for e in root.get("entry") or []
                if isinstance(e, dict)
                and isinstance(e.get("resource"), dict)
                and e["resource"].get("resourceType") == "DiagnosticReport"
            ]
            if len(reports) != 1:
                raise IntakeError(
                    "report-shape",
                    f"the {what} Bundle holds {len(reports)} DiagnosticReports; expected one",
                    location="Bundle.entry",
                )
            return cls(root, reports[0])
        raise IntakeError(
            "report-shape",
            f"the {what} is a {kind or 'resource without resourceType'}, "
            "not a DiagnosticReport or a Bundle holding one",
            location="resourceType",
        )

    @property
    def is_bundle(self) -> bool:
        return self.root is not self.report

    def copy(self) -> ReportDocument:
        root = copy.deepcopy(self.root)
        if root.get("resourceType") == "DiagnosticReport":
            return ReportDocument(root, root)
        index = [e.get("resource") for e in self.root.get("entry", [])].index(self.report)
        return ReportDocument(root, root["entry"][index]["resource"])

    def entries(self) -> list[Resource]:
        return [e for e in self.root.get("entry") or [] if isinstance(e, dict)]

    def resources(self) -> Iterator[Resource]:
        """Every resource: Bundle entries (or the report) and what they contain."""
        tops = [e.get("resource") for e in self.entries()] if self.is_bundle else [self.root]
        for top in tops:
            if isinstance(top, dict):
                yield top
                for inner in top.get("contained") or []:
                    if isinstance(inner, dict):
                        yield inner

    def resolve(self, reference: Any, within: Resource | None = None) -> Resource | None:
        """The resource a Reference points at, when this document holds it."""
        if not isinstance(reference, dict):
            return None
        ref = reference.get("reference")
        if not isinstance(ref, str) or not ref:
            return None
        if ref.startswith("#"):
            holder = within or self.report
            return next((c for c in holder.get("contained") or [] if c.get("id") == ref[1:]), None)
        for entry in self.entries():
            resource = entry.get("resource")
            if not isinstance(resource, dict):
                continue
            if entry.get("fullUrl") == ref:
                return resource
            if ref == f"{resource.get('resourceType')}/{resource.get('id')}":
                return resource
        return None

    def entry_of(self, resource: Resource) -> Resource | None:
        return next((e for e in self.entries() if e.get("resource") is resource), None)
