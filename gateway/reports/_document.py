"""A report as received: a DiagnosticReport alone or inside a Bundle, with its references
resolved (Bundle entries by fullUrl, contained resources by '#id')."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import orjson
from fhir.resources.R4B import get_fhir_model_class
from fhir.resources.R4B.resource import Resource as _ResourceModel

from ..errors import IntakeError, shape

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
        if kind in ("DiagnosticReport", "Bundle"):
            _check_resources(root, str(kind), what)
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
                    expression="Bundle.entry",
                )
            return cls(root, reports[0])
        if not kind:
            found = "a resource without resourceType"
        elif isinstance(kind, str) and _is_resource_type(kind):
            found = f"a {kind}"
        else:  # whatever it holds is named by its form only
            found = f"of resourceType {shape(kind)}"
        raise IntakeError(
            "report-shape",
            f"the {what} is {found}, not a DiagnosticReport or a Bundle holding one",
            expression="resourceType",
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


def _check_resources(resource: Resource, path: str, what: str) -> None:
    """Every resource the input holds (Bundle entries, contained resources, Parameters
    values, at any depth) is a JSON object of a known FHIR R4 resource type.

    The FHIR models pick a model by ``resourceType`` and fail with a bare ValueError on
    an unknown one; refused here first, the input gets an error naming where it is."""
    kind = resource.get("resourceType")
    if not isinstance(kind, str) or not _is_resource_type(kind):
        problem = (
            "has no resourceType"
            if kind is None
            else (f"has resourceType {shape(kind)}, which is not a FHIR R4 resource type")
        )
        raise IntakeError(
            "report-resource-type",
            f"the {what}'s {path} {problem}",
            expression=f"{path}.resourceType",
        )
    _check_children(resource.get("contained"), f"{path}.contained", what)
    if kind == "Bundle":
        for n, entry in enumerate(_items(resource.get("entry"), f"{path}.entry", what)):
            _check_held(entry, f"{path}.entry[{n}]", what)
    elif kind == "Parameters":
        _check_parameters(resource.get("parameter"), f"{path}.parameter", what)


def _check_parameters(parameters: Any, path: str, what: str) -> None:
    for n, parameter in enumerate(_items(parameters, path, what)):
        _check_held(parameter, f"{path}[{n}]", what)
        _check_parameters(parameter.get("part"), f"{path}[{n}].part", what)


def _check_held(holder: Any, path: str, what: str) -> None:
    """A Bundle entry or a parameter: an object whose ``resource``, if any, is one."""
    if not isinstance(holder, dict):
        raise IntakeError(
            "report-invalid",
            f"the {what}'s {path} is not a JSON object (value of form {shape(holder)})",
            expression=path,
        )
    if "resource" in holder:
        _check_children([holder["resource"]], f"{path}.resource", what, single=True)


def _check_children(values: Any, path: str, what: str, single: bool = False) -> None:
    for n, value in enumerate(_items(values, path, what)):
        where = path if single else f"{path}[{n}]"
        if not isinstance(value, dict):
            raise IntakeError(
                "report-invalid",
                f"the {what}'s {where} is not a resource (value of form {shape(value)})",
                expression=where,
            )
        _check_resources(value, where, what)


def _items(values: Any, path: str, what: str) -> list[Any]:
    if values is None:
        return []
    if not isinstance(values, list):
        raise IntakeError(
            "report-invalid",
            f"the {what}'s {path} is not a list (value of form {shape(values)})",
            expression=path,
        )
    return values


def _is_resource_type(kind: str) -> bool:
    try:
        model = get_fhir_model_class(kind)
    except (KeyError, ValueError):  # ValueError: "Foo is not a valid FHIR Model"
        return False
    return isinstance(model, type) and issubclass(model, _ResourceModel)
