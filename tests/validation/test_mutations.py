"""The validator bites: for every profile (the gateway's profiles/ and the test profiles
here), mutations generated from its snapshot each give exactly the expected issue at the
expected FHIRPath expression.

For each profile a conforming sample of its type is taken from the golden outputs and the
examples; then, one mutation at a time: each required element removed
(``validation.cardinality``), each fixed or pattern value broken (``validation.fixed``),
each required binding given a code outside it (``validation.binding``), and each of the
profile's own invariants violated by the hand-written case in ``INVARIANT_CASES``
(``validation.invariant``). Only the profile layer is asked (the structural R4B check
also refuses a missing base-required element, with its own code).
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from gateway.validation._check import ProfileValidator
from gateway.validation._profiles import Elem, Plans
from gateway.validation._terminology import expand

from .conftest import REPO, TEST_PROFILES, golden_bundles, needs_core

pytestmark = needs_core

# An expected issue: (code, FHIRPath location, severity)
Expected = tuple[str, str, str]
Mutation = tuple[str, Callable[[dict[str, Any]], None], list[Expected]]  # name, mutate, issues
Mutate = Callable[[dict[str, Any]], None]


# Profile invariants: key → (how to violate it on a conforming sample, the location
# after the resource type). A profile invariant without a case here fails the test.
def _no_reason(resource: dict[str, Any]) -> None:
    resource.pop("reasonCode", None)
    resource.pop("note", None)


def _revoked_without_reason(resource: dict[str, Any]) -> None:
    resource["status"] = "revoked"
    _no_reason(resource)


def _set(key: str, value: Any) -> Mutate:
    def mutate(resource: dict[str, Any]) -> None:
        resource[key] = copy.deepcopy(value)

    return mutate


def _add_identifier(identifier: dict[str, Any]) -> Mutate:
    def mutate(resource: dict[str, Any]) -> None:
        resource["identifier"] = [*resource["identifier"], identifier]

    return mutate


def _miscount(*path: str | int) -> Mutate:
    """A count that no longer matches what is listed."""

    def mutate(resource: dict[str, Any]) -> None:
        node: Any = resource
        for step in path[:-1]:
            node = node[step]
        node[path[-1]] += 1

    return mutate


def _oid_without_prefix(resource: dict[str, Any]) -> None:
    uid = next(i for i in resource["identifier"] if i["system"] == "urn:dicom:uid")
    uid["value"] = uid["value"].removeprefix("urn:oid:")


def _final_saying_nothing(resource: dict[str, Any]) -> None:
    resource["status"] = "final"
    for key in ("conclusion", "result", "presentedForm"):
        resource.pop(key, None)
        resource.pop("_" + key, None)  # its translations: with them the element exists


def _form(resource: dict[str, Any], content_type: str) -> dict[str, Any]:
    return next(f for f in resource["presentedForm"] if f["contentType"] == content_type)


def _form_twice(resource: dict[str, Any]) -> None:
    """An HTML and a PDF form of one language twice (so gw-bil-2 still holds)."""
    html, pdf = _form(resource, "text/html"), _form(resource, "application/pdf")
    resource["presentedForm"] = [*resource["presentedForm"], html, pdf]


def _pdf_missing(resource: dict[str, Any]) -> None:
    resource["presentedForm"].remove(_form(resource, "application/pdf"))


def _plain_entry(resource: dict[str, Any]) -> None:
    entry = next(e for e in resource["entry"] if e["resource"]["resourceType"] != "Provenance")
    entry["request"] = {"method": "POST", "url": entry["resource"]["resourceType"]}


def _entry_url_not_uuid(resource: dict[str, Any]) -> None:
    entry = resource["entry"][0]
    entry["fullUrl"] = f"https://example.org/fhir/{entry['resource']['resourceType']}/1"


_OTHER_ID = {"system": "https://example.org/sid/other", "value": "1"}
_DCM = "http://dicom.nema.org/resources/ontology/DCM"


def _audit_observer_elsewhere(resource: dict[str, Any]) -> None:
    resource["source"]["observer"] = {"display": "another gateway"}


def _audit_without_kind(resource: dict[str, Any]) -> None:
    resource["subtype"] = [s for s in resource["subtype"] if "audit-event-kind" not in s["system"]]


def _audit_import_read(resource: dict[str, Any]) -> None:
    resource["type"] = {"system": _DCM, "code": "110107"}
    resource["action"] = "R"


def _audit_export_without_basis(resource: dict[str, Any]) -> None:
    resource["type"] = {"system": _DCM, "code": "110106"}
    resource["action"] = "R"
    resource.pop("extension", None)


def _audit_agent_off_network(code: str) -> Mutate:
    def mutate(resource: dict[str, Any]) -> None:
        for agent in resource["agent"]:
            if code in [c.get("code") for c in (agent.get("type") or {}).get("coding", [])]:
                agent.pop("network", None)

    return mutate


def _audit_without_patient(resource: dict[str, Any]) -> None:
    resource["entity"] = [e for e in resource["entity"] if e.get("role", {}).get("code") != "1"]


INVARIANT_CASES: dict[str, tuple[Mutate, str]] = {
    "tsr-1": (_no_reason, ""),
    # referral-servicerequest
    "gw-ref-1": (_set("identifier", [_OTHER_ID]), ""),
    "gw-ref-2": (_revoked_without_reason, ""),
    # imaging-servicerequest
    "gw-ord-1": (_add_identifier({"system": "urn:dicom:uid", "value": "1.2.840.1"}), ""),
    "gw-ord-2": (_set("identifier", [_OTHER_ID]), ""),
    # imagingstudy
    "gw-is-1": (_miscount("numberOfSeries"), ""),
    "gw-is-2": (_miscount("numberOfInstances"), ""),
    "gw-is-3": (_oid_without_prefix, ""),
    "gw-is-4": (_miscount("series", 0, "numberOfInstances"), ".series[0]"),
    # diagnosticreport (and the bilingual variant, derived from it)
    "gw-dr-1": (_set("language", "fr"), ""),
    "gw-dr-2": (_final_saying_nothing, ""),
    "gw-dr-3": (
        _set(
            "imagingStudy",
            [{"type": "ImagingStudy", "identifier": {"system": "urn:ietf:rfc:3986", "value": "1"}}],
        ),
        "",
    ),
    # bilingual-diagnosticreport
    "gw-bil-1": (_form_twice, ""),
    "gw-bil-2": (_pdf_missing, ""),
    # transaction-bundle
    "gw-bun-1": (_entry_url_not_uuid, ""),
    "gw-bun-2": (_plain_entry, ""),
    # audit-event, audit-event-disclosure (gateway/audit; sample: produced_bundles)
    "gw-ae-1": (_audit_observer_elsewhere, ""),
    "gw-ae-2": (_audit_without_kind, ""),
    "gw-ae-3": (_audit_import_read, ""),
    "gw-ae-4": (_audit_export_without_basis, ""),
    "gw-aed-1": (_audit_agent_off_network("110153"), ""),
    "gw-aed-2": (_audit_agent_off_network("110152"), ""),
    "gw-aed-3": (_audit_without_patient, ""),
    "gw-aed-4": (_set("type", {"system": _DCM, "code": "110100"}), ""),
}

# Where one change breaks two rules of the profile, both are reported (HAPI reports each
# failed rule too: a slice's or an element's cardinality and an invariant are separate
# findings, never merged). (profile id, mutation) → its other issues, each checked.
_DR = "DiagnosticReport"
_BIL = "bilingual-diagnosticreport"
_RAD_SLICE_GONE = [("validation.slicing", f"{_DR}.category", "error")]  # category:radiology 1..1
_FORM_UNSLICED = [  # closed slicing by language and content type; gw-bil-1/2 read both
    ("validation.invariant", _DR, "error"),
    ("validation.invariant", _DR, "error"),
    ("validation.slicing", f"{_DR}.presentedForm[0]", "error"),
]
ALSO_BROKEN: dict[tuple[str, str], list[Expected]] = {
    # the radiology category slice (1..1) is recognised by its code
    ("diagnosticreport", f"code outside {_DR}.category"): _RAD_SLICE_GONE,
    (_BIL, f"code outside {_DR}.category"): _RAD_SLICE_GONE,
    # a form without language or content type: in no slice, and gw-bil-1/2 fail
    (_BIL, f"remove {_DR}.presentedForm.contentType"): _FORM_UNSLICED,
    (_BIL, f"remove {_DR}.presentedForm.language"): _FORM_UNSLICED,
    # each slice of presentedForm is 0..1: a form twice over-fills two slices
    (_BIL, "violate gw-bil-1"): [("validation.slicing", f"{_DR}.presentedForm", "error")] * 2,
    # presentedForm is 1..*: a final report without it breaks its cardinality too
    (_BIL, "violate gw-dr-2"): [("validation.cardinality", f"{_DR}.presentedForm", "error")],
    # gw-ref-1 / gw-ord-2 ask for a referral number / an order number among identifiers
    ("referral-servicerequest", "remove ServiceRequest.identifier"): [
        ("validation.invariant", "ServiceRequest", "error")
    ],
    ("imaging-servicerequest", "remove ServiceRequest.identifier"): [
        ("validation.invariant", "ServiceRequest", "error")
    ],
    # gw-is-1/2: the counts no longer match what is listed; gw-is-4 the series' own count
    ("imagingstudy", "remove ImagingStudy.series"): [
        ("validation.invariant", "ImagingStudy", "error"),
        ("validation.invariant", "ImagingStudy", "error"),
    ],
    ("imagingstudy", "remove ImagingStudy.series.instance"): [
        ("validation.invariant", "ImagingStudy", "error"),
        ("validation.invariant", "ImagingStudy.series[0]", "error"),
    ],
    # gw-bun-1 reads every fullUrl, gw-bun-2 every request's method
    ("transaction-bundle", "remove Bundle.entry.fullUrl"): [
        ("validation.invariant", "Bundle", "error")
    ],
    ("transaction-bundle", "remove Bundle.entry.request"): [
        ("validation.invariant", "Bundle", "error")
    ],
    ("transaction-bundle", "remove Bundle.entry.request.method"): [
        ("validation.invariant", "Bundle", "error")
    ],
    ("transaction-bundle", "code outside Bundle.entry.request.method"): [
        ("validation.invariant", "Bundle", "error")
    ],  # gw-ae-1 reads the agents' and the observer's identifiers, gw-ae-2 the subtypes,
    # gw-ae-3 the action; the disclosure's gw-aed-* its agents, entities, type and subtype
    **{
        ("audit-event", mutation): [("validation.invariant", "AuditEvent", "error")]
        for mutation in (
            "remove AuditEvent.subtype",
            "code outside AuditEvent.action",
            "remove AuditEvent.agent",
            "remove AuditEvent.agent.who",
            "remove AuditEvent.source",
            "remove AuditEvent.source.observer",
        )
    },
    **{
        ("audit-event-disclosure", mutation): [("validation.invariant", "AuditEvent", "error")]
        * count
        for mutation, count in (
            ("remove AuditEvent.subtype", 2),
            ("code outside AuditEvent.action", 1),
            ("remove AuditEvent.agent", 3),
            ("remove AuditEvent.agent.who", 2),
            ("remove AuditEvent.source", 1),
            ("remove AuditEvent.source.observer", 1),
            ("remove AuditEvent.entity", 1),
        )
    },
}


def _profiles() -> list[Path]:
    found = sorted((REPO / "profiles").glob("StructureDefinition-*.json"))
    found += sorted(TEST_PROFILES.glob("StructureDefinition-*.json"))
    out = []
    for path in found:
        sd = json.loads(path.read_text(encoding="utf-8"))
        if sd.get("kind") == "resource" and "snapshot" in sd:
            out.append(path)
    return out


def _issues(url: str, resource: dict[str, Any]) -> list[Expected]:
    issues = ProfileValidator().validate(resource, str(resource["resourceType"]), url, None, None)
    return sorted(
        (i.code, i.location or "", i.severity) for i in issues if i.severity in ("error", "warning")
    )


def _errors(plans: Plans, url: str, resource: dict[str, Any]) -> list[Expected]:
    return [i for i in _issues(url, resource) if i[2] == "error"]


def _sample(
    plans: Plans, url: str, rtype: str, produced: list[tuple[str, dict[str, Any]]]
) -> dict[str, Any]:
    for _, bundle in [*golden_bundles(), *produced]:
        found = (
            [bundle] if rtype == "Bundle" else [e.get("resource") or {} for e in bundle["entry"]]
        )
        for resource in found:
            if resource.get("resourceType") == rtype and not _errors(plans, url, resource):
                return copy.deepcopy(resource)
    pytest.fail(f"no golden, example or produced {rtype} conforms to {url}: nothing to mutate")


def _present(data: dict[str, Any], elem: Elem) -> tuple[str, Any] | None:
    for key, _ in elem.json_keys():
        if key in data:
            return key, data[key]
    return None


def _break(value: Any) -> Any:
    """The value with its first string changed."""
    if isinstance(value, str):
        return value + "-broken"
    if isinstance(value, bool):
        return not value
    if isinstance(value, (int, float)):
        return value + 1
    if isinstance(value, dict):
        out = dict(value)
        key = next(iter(out))
        out[key] = _break(out[key])
        return out
    if isinstance(value, list):
        return [_break(value[0]), *value[1:]]
    return value


def _mutations(plans: Plans, root: Elem, sample: dict[str, Any]) -> list[Mutation]:
    out: list[Mutation] = []
    rtype = str(sample["resourceType"])

    def visit(children: dict[str, Elem], path: list[str | int], where: str) -> None:
        node: Any = sample
        for step in path:
            node = node[step]
        for elem in children.values():
            found = _present(node, elem)
            if elem.min > 0 and found is not None:
                keys = [k for k, _ in elem.json_keys()]

                def remove(
                    r: dict[str, Any], path: list[str | int] = path, keys: list[str] = keys
                ) -> None:
                    target: Any = r
                    for step in path:
                        target = target[step]
                    for k in keys:
                        target.pop(k, None)

                out.append(
                    (
                        f"remove {elem.id}",
                        remove,
                        [("validation.cardinality", f"{where}.{elem.name}", "error")],
                    )
                )
            if found is None:
                continue
            key, value = found
            many = isinstance(value, list)
            first_path = [*path, key, 0] if many else [*path, key]
            first_where = f"{where}.{key}[0]" if many else f"{where}.{key}"
            expansion = expand(plans.defs, elem.binding[1]) if elem.binding else None
            if elem.fixed is not None and not elem.slices:
                # a bound code is broken into another code of its ValueSet, so that only
                # the fixed value is wrong
                others = sorted(expansion.codes - {elem.fixed[1]}) if expansion else []

                def set_to(
                    r: dict[str, Any], p: list[str | int] = first_path, others: list[str] = others
                ) -> None:
                    target: Any = r
                    for step in p[:-1]:
                        target = target[step]
                    old = target[p[-1]]
                    target[p[-1]] = others[0] if others and isinstance(old, str) else _break(old)

                out.append(
                    (f"break fixed {elem.id}", set_to, [("validation.fixed", first_where, "error")])
                )
            type_name = elem.json_keys()[0][1] if not elem.choice else ""
            if (
                elem.binding is not None
                and elem.fixed is None  # a fixed value is checked as such
                and elem.binding[0] == "required"
                and type_name in ("code", "Coding", "CodeableConcept")
                and expansion is not None
            ):
                where_code = first_where + (".coding[0]" if type_name == "CodeableConcept" else "")

                def off(
                    r: dict[str, Any], p: list[str | int] = first_path, t: str = type_name
                ) -> None:
                    target: Any = r
                    for step in p[:-1]:
                        target = target[step]
                    if t == "code":
                        target[p[-1]] = "zz-not-in-the-valueset"
                    elif t == "Coding":
                        target[p[-1]] = {**target[p[-1]], "code": "zz-not-in-the-valueset"}
                    else:
                        coding = target[p[-1]].get("coding") or [{}]
                        target[p[-1]] = {
                            **target[p[-1]],
                            "coding": [{**coding[0], "code": "zz-not-in-the-valueset"}],
                        }

                out.append(
                    (f"code outside {elem.id}", off, [("validation.binding", where_code, "error")])
                )
            if elem.children and isinstance(value if not many else value[0], dict):
                visit(elem.children, first_path, first_where)

    visit(root.children or {}, [], rtype)
    return out


def _keys(sd: dict[str, Any]) -> list[str]:
    return [str(c["key"]) for e in sd["snapshot"]["element"] for c in e.get("constraint") or []]


def _own_invariants(plans: Plans, sd: dict[str, Any]) -> dict[str, str]:
    """The profile's constraints that its base definition does not have, with severity."""
    base = plans.defs.structure(str(sd["type"]))
    inherited = set(_keys(base)) if base else set()
    return {
        str(c["key"]): str(c.get("severity", "error"))
        for e in sd["snapshot"]["element"]
        for c in e.get("constraint") or []
        if c["key"] not in inherited
    }


@pytest.mark.parametrize("path", _profiles(), ids=lambda p: p.stem)
def test_every_mutation_gives_its_issue(
    path: Path, test_plans: Plans, produced_bundles: list[tuple[str, dict[str, Any]]]
) -> None:
    sd = json.loads(path.read_text(encoding="utf-8"))
    url, rtype = str(sd["url"]), str(sd["type"])
    root = test_plans.plan(url)
    assert root is not None
    sample = _sample(test_plans, url, rtype, produced_bundles)
    cases: list[Mutation] = _mutations(test_plans, root, sample)
    for key, severity in sorted(_own_invariants(test_plans, sd).items()):
        assert key in INVARIANT_CASES, f"{url}: add a violating case for invariant {key}"
        mutate, tail = INVARIANT_CASES[key]
        cases.append((f"violate {key}", mutate, [("validation.invariant", rtype + tail, severity)]))
    kinds = {code for _, _, expected in cases for code, _, _ in expected}
    assert "validation.cardinality" in kinds, f"{url}: no required element present in the sample"
    # the sample's own warnings (an extensible binding...) are not the mutation's
    before = set(_issues(url, sample))
    failures = []
    unused = {name for pid, name in ALSO_BROKEN if pid == sd["id"]} - {n for n, *_ in cases}
    assert not unused, f"ALSO_BROKEN names mutations {url} no longer makes: {sorted(unused)}"
    for name, mutate, expected in cases:
        expected = expected + ALSO_BROKEN.get((str(sd["id"]), name), [])
        mutant = copy.deepcopy(sample)
        mutate(mutant)
        got = [i for i in _issues(url, mutant) if i[2] == "error" or i not in before]
        if got != sorted(expected):
            failures.append(f"{name}: expected {sorted(expected)}, got {got}")
    assert not failures, "\n".join(failures)


def test_the_test_profile_covers_each_kind(
    test_plans: Plans, produced_bundles: list[tuple[str, dict[str, Any]]]
) -> None:
    """The generated mutations of the test profile include every kind of check."""
    url = "https://fhir-gateway.example.org/test/StructureDefinition/test-servicerequest"
    root = test_plans.plan(url)
    assert root is not None
    sample = _sample(test_plans, url, "ServiceRequest", produced_bundles)
    names = {name for name, *_ in _mutations(test_plans, root, sample)}
    assert {
        "remove ServiceRequest.identifier",
        "remove ServiceRequest.authoredOn",
        "break fixed ServiceRequest.intent",
        "code outside ServiceRequest.priority",
        "code outside ServiceRequest.status",
    } <= names
