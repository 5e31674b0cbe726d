"""Links between records at the partner (issue #13, item 4).

An order, its DICOM study and its report are three conversions; the study's ``basedOn``
and the report's ``basedOn`` / ``imagingStudy`` are *logical* references (``type`` and
``identifier``, docs/partners.md), which a partner accepts whatever it holds but cannot
follow. The outbox keeps what each row **provides** (the identifiers of its orders,
studies and reports) and **needs** (its logical references to such a resource that the
row itself does not carry). A row waits until every record it needs was delivered to
the same partner, then goes with each logical reference made conditional
(``ServiceRequest?identifier=system|value``): the partner resolves it to its own
resource, so the records are linked there. After ``delivery_reference_wait`` it goes
with the logical reference only, and its event says so.

Identity: each link row keeps the hashed identifiers (:func:`patient_ref`) of the patient
of the resource that provides or needs it (:func:`patients_by_link`). A logical reference
resolves only when every delivered record providing it shares a patient identifier
(system|value) with the record that needs it: an accession number or Study UID reused
for another patient (another hospital, another year) never links a report to that
patient's study. On a mismatch, or when a side names no patient identifier, the needing
record is held (``delivery.link-other-patient``, ``delivery.link-unknown-patient``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from ..mapping import search_escape

__all__ = [
    "LINKED_TYPES",
    "LINK_OTHER_PATIENT",
    "LINK_UNKNOWN_PATIENT",
    "Link",
    "Provided",
    "link_fields",
    "link_ref",
    "links_of",
    "patient_ref",
    "patient_refs",
    "patients_by_link",
    "resolve_links",
]

# Resources one conversion makes and another refers to by identifier.
LINKED_TYPES = frozenset({"ServiceRequest", "ImagingStudy", "DiagnosticReport"})

Link = tuple[str, str, str]  # (resource type, identifier system, value)
# The needing record is held: the record providing its link is another patient's...
LINK_OTHER_PATIENT = "delivery.link-other-patient"
# ...or one of the two names no patient identifier (or was queued before they were kept).
LINK_UNKNOWN_PATIENT = "delivery.link-unknown-patient"


@dataclass(frozen=True, slots=True)
class Provided:
    """A needed link some delivered record provides at the partner: the hashed patient
    identifiers of the record needing it and of each record providing it (None: not
    recorded, queued before migration v0011_link_patients)."""

    needing: frozenset[str] | None
    providing: tuple[frozenset[str] | None, ...]

    def refused(self) -> str | None:
        """None when the link may resolve: every providing record shares a patient
        identifier with the needing one. Else the code the needing record is held with
        (any other patient holding the identifier would make the partner's conditional
        reference find it, or find two)."""
        if self.needing and any(p and not p & self.needing for p in self.providing):
            return LINK_OTHER_PATIENT
        if not self.needing or not all(self.providing):
            return LINK_UNKNOWN_PATIENT
        return None


def link_ref(link: Link) -> str:
    """The stored key of a link: no identifier value in the clear."""
    return hashlib.sha256("|".join(link).encode("utf-8", "surrogatepass")).hexdigest()


def patient_ref(system: str, value: str) -> str:
    """The stored key of a patient identifier (hashed like :func:`link_ref`)."""
    return link_ref(("Patient", system, value))


def patient_refs(idents: Iterable[tuple[str, str]]) -> frozenset[str]:
    """:func:`patient_ref` of each (system, value)."""
    return frozenset(patient_ref(system, value) for system, value in idents)


def patients_by_link(bundle: Mapping[str, Any]) -> dict[Link, frozenset[str]]:
    """For each link of ``bundle`` (provided or needed), the hashed identifiers
    (:func:`patient_ref`) of the patient of the resource(s) carrying it; empty when that
    resource names no patient with an identifier."""
    entries = [e for e in bundle.get("entry") or [] if isinstance(e, Mapping)]
    patients = {
        str(e.get("fullUrl")): e["resource"]
        for e in entries
        if isinstance(e.get("resource"), Mapping) and e["resource"].get("resourceType") == "Patient"
    }
    out: dict[Link, set[str]] = {}
    for entry in entries:
        resource = entry.get("resource")
        if not isinstance(resource, Mapping):
            continue
        links: set[Link] = set()
        if resource.get("resourceType") in LINKED_TYPES:
            links |= {
                (str(resource["resourceType"]), str(i["system"]), str(i["value"]))
                for i in resource.get("identifier") or []
                if isinstance(i, Mapping) and i.get("system") and i.get("value")
            }
        _logical(resource, links, top=True)
        if links:
            whose = _patient_of(resource, patients)
            for link in links:
                out.setdefault(link, set()).update(whose)
    return {link: frozenset(refs) for link, refs in out.items()}


def _patient_of(resource: Mapping[str, Any], patients: Mapping[str, Any]) -> set[str]:
    """Hashed identifiers of ``resource``'s patient: its subject (a Patient entry of the
    Bundle, a conditional or logical reference), else the Bundle's only Patient."""
    subject = resource.get("subject") or resource.get("patient")
    if not isinstance(subject, Mapping):
        only = list(patients.values())
        return _identifiers(only[0].get("identifier")) if len(only) == 1 else set()
    found: set[str] = set()
    reference = subject.get("reference")
    if isinstance(reference, str):
        if reference in patients:
            found |= _identifiers(patients[reference].get("identifier"))
        elif reference.startswith("Patient?identifier="):
            system, _, value = reference.removeprefix("Patient?identifier=").partition("|")
            found |= _identifiers([{"system": system, "value": value}])
    found |= _identifiers([subject.get("identifier")])
    return found


def _identifiers(idents: Any) -> set[str]:
    return {
        patient_ref(str(i["system"]), str(i["value"]))
        for i in idents or []
        if isinstance(i, Mapping) and i.get("system") and i.get("value")
    }


def link_fields(parts: Iterable[Mapping[str, Any]], link: Link) -> list[str]:
    """Where ``parts`` refer to ``link`` logically, as FHIRPath-like element names
    (``DiagnosticReport.imagingStudy``): for a reason that names the field, not the
    value."""
    fields: set[str] = set()
    for part in parts:
        for entry in part.get("entry") or []:
            resource = entry.get("resource") if isinstance(entry, Mapping) else None
            if not isinstance(resource, Mapping):
                continue
            for key, value in resource.items():
                found: set[Link] = set()
                _logical(value, found)
                if link in found:
                    fields.add(f"{resource.get('resourceType')}.{key}")
    return sorted(fields)


def links_of(bundle: Mapping[str, Any]) -> tuple[set[Link], set[Link]]:
    """(provides, needs) of a Bundle: every identifier of its linked resources, and
    every logical reference to a linked resource it does not provide itself."""
    provides: set[Link] = set()
    needs: set[Link] = set()
    for entry in bundle.get("entry") or []:
        resource = entry.get("resource") if isinstance(entry, Mapping) else None
        if not isinstance(resource, Mapping):
            continue
        if resource.get("resourceType") in LINKED_TYPES:
            for ident in resource.get("identifier") or []:
                if ident.get("system") and ident.get("value"):
                    provides.add(
                        (str(resource["resourceType"]), str(ident["system"]), str(ident["value"]))
                    )
        _logical(resource, needs, top=True)
    return provides, needs - provides


def _logical(node: Any, out: set[Link], top: bool = False) -> None:
    if isinstance(node, Mapping):
        ident = node.get("identifier")
        if (
            not top
            and isinstance(node.get("type"), str)
            and node["type"] in LINKED_TYPES
            and isinstance(ident, Mapping)
            and ident.get("system")
            and ident.get("value")
            and not node.get("reference")
        ):
            out.add((str(node["type"]), str(ident["system"]), str(ident["value"])))
        for value in node.values():
            if isinstance(value, (Mapping, list)):
                _logical(value, out)
    elif isinstance(node, list):
        for value in node:
            _logical(value, out)


def resolve_links(parts: list[dict[str, Any]], delivered: Iterable[Link]) -> list[dict[str, Any]]:
    """``parts`` with each logical reference to a ``delivered`` link given the
    conditional reference that finds it at the partner (copies; the rest shared)."""
    found = set(delivered)
    return [_resolve(part, found) for part in parts] if found else parts


def _resolve(node: Any, found: set[Link]) -> Any:
    if isinstance(node, dict):
        changed = {k: _resolve(v, found) for k, v in node.items() if isinstance(v, (dict, list))}
        ident = node.get("identifier")
        if isinstance(ident, dict) and not node.get("reference"):
            link = (str(node.get("type")), str(ident.get("system")), str(ident.get("value")))
            if link in found:
                # escaped as the Bundle's own conditions are: a "|" or "," in the value
                # would otherwise split it into another search at the partner
                query = f"identifier={search_escape(link[1])}|{search_escape(link[2])}"
                changed["reference"] = f"{link[0]}?{query}"
        if not changed or all(changed[k] is node.get(k) for k in changed):
            return node
        return {**node, **changed}
    if isinstance(node, list):
        items = [_resolve(v, found) for v in node]
        return node if all(a is b for a, b in zip(items, node, strict=True)) else items
    return node
