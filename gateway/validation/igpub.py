"""The implementation guide made from ``profiles/``: the ImplementationGuide resource
listing every conformance resource of the folder, the gateway's CapabilityStatement
(its profiles per resource type), and the browsable Markdown pages of ``docs/profiles/``
a partner engineer reads. Written by ``make profiles`` (``snapshot.main``); the tests
check the committed files are what this makes.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import orjson

from .. import __version__
from .snapshot import dump_json

__all__ = [
    "AUDIT_SEARCH_PARAMS",
    "BASE",
    "OWN_OPERATION",
    "STORED_SEARCH_PARAMS",
    "STORED_TYPES",
    "SYSTEM_INTERACTIONS",
    "audit_search_params",
    "capability_statement",
    "fhir_resources",
    "implementation_guide",
    "publish",
    "render_docs",
    "root_resources",
    "stored_search_params",
]

BASE = "https://fhir-gateway.example.org"
IG_ID = "fhir-gateway"
PUBLISHER = "FHIR gateway project (demo; not a registered publisher)"
# The conformance resources of profiles/ the guide lists (the others, e.g. the
# ImplementationGuide itself, describe the guide).
LISTED = (
    "StructureDefinition",
    "CodeSystem",
    "ValueSet",
    "NamingSystem",
    "ConceptMap",
    "CapabilityStatement",
)
CONTENT_TYPES = ("ServiceRequest", "ImagingStudy", "DiagnosticReport", "Provenance", "Bundle")
VALIDATE = "http://hl7.org/fhir/OperationDefinition/Resource-validate"
# The gateway's own operations have no published OperationDefinition (profiles/ holds
# none): their canonical is this URN and the name, as GET /metadata's convert and
# report-variants (gateway/api/_app.py); "<type>-<name>" as the core's Resource-validate.
OWN_OPERATION = "urn:fhir-gateway:OperationDefinition/"
_CORE_SEARCH = "http://hl7.org/fhir/SearchParameter/"
# The audit log's search parameters, each that gateway/audit/_search.py accepts (its
# PARAMETERS less the result parameters _count, _after and _format): name, type, and
# documentation when the gateway's own (no core SearchParameter of that name) or
# narrower than the core one. Announced here and by GET /fhir/metadata (_fhir.py); the
# tests check both ways against the search code.
AUDIT_SEARCH_PARAMS: tuple[tuple[str, str, str], ...] = (
    ("patient", "reference", "the patient entity: Patient/<id>, <id> or system|value"),
    ("consent", "reference", "a Consent a policy decision rests on, or a consent event's: "
     "<id> or Consent/<id> (the gateway's own parameter)"),
    ("entity", "reference", "any entity's what: a reference or an identifier system|value"),
    ("agent", "reference", "any agent's who: its identifier value or system|value"),
    ("date", "date", "recorded; prefixes eq (default), ge, gt, le, lt"),
    ("type", "token", ""),
    ("subtype", "token", ""),
    ("outcome", "token", "0, 4, 8 or 12"),
    ("action", "token", "C, R, U, D or E"),
    ("_id", "token", ""),
)  # fmt: skip


def audit_search_params() -> list[dict[str, Any]]:
    """The CapabilityStatement searchParam entries of the audit log: the core
    definition where one exists (AuditEvent-<name>, Resource-id), documentation when
    the gateway's differs or is its own."""
    found = []
    for name, kind, documentation in AUDIT_SEARCH_PARAMS:
        entry: dict[str, Any] = {"name": name}
        if name == "_id":
            entry["definition"] = _CORE_SEARCH + "Resource-id"
        elif name != "consent":  # no core AuditEvent-consent
            entry["definition"] = _CORE_SEARCH + "AuditEvent-" + name
        entry["type"] = kind
        if documentation:
            entry["documentation"] = documentation
        found.append(entry)
    return found


# The search parameters of GET /fhir/{type} (gateway/api/_fhir.py, the inbound
# stage's stored resources), each that its search accepts (less the result parameters
# _count and _after): name, type, documentation. Announced here and by GET /fhir/metadata;
# the tests check both ways against the search code.
STORED_SEARCH_PARAMS: tuple[tuple[str, str, str], ...] = (
    ("identifier", "token", "system|value, |value (no system) or value (any system)"),
    ("patient", "reference", "Patient/<id>, <id> or the patient's identifier system|value"),
    ("status", "token", "one status or several, comma-separated (any of them)"),
    ("_lastUpdated", "date", "prefixes eq (default), ge, gt, le, lt; repeatable"),
    ("_id", "token", "one id or several, comma-separated"),
)  # fmt: skip
# The types GET /fhir/{type} and GET /fhir/{type}/{id} serve and announce: the resources
# partners send in their Bundles (POST /fhir, docs/inbound.md; a gateway's Bundles carry
# these: its mapping's content and reference data, the signature Provenance) and this
# gateway's referral Tasks. Any other type answers 404 not-supported (gateway/api/_fhir.py).
STORED_TYPES = (
    "Condition", "DiagnosticReport", "Endpoint", "ImagingStudy", "Observation",
    "Organization", "Patient", "Practitioner", "PractitionerRole", "Provenance",
    "ServiceRequest", "Task",
)  # fmt: skip
_RESOURCE_SEARCH = {"_id": "Resource-id", "_lastUpdated": "Resource-lastUpdated"}
READ_SEARCH: list[dict[str, str]] = [{"code": "read"}, {"code": "search-type"}]
# The referral Task's status operations: POST /fhir/Task/{id}/$accept, $reject, $complete
# (gateway/api/_fhir.py; docs/inbound.md, "Referral status"), local API token only.
TASK_OPERATIONS: list[dict[str, str]] = [
    {
        "name": "accept",
        "definition": OWN_OPERATION + "Task-accept",
        "documentation": "POST /fhir/Task/{id}/$accept (id: the Task's or the referral "
        "number): a requested or received referral is accepted; the sender is told",
    },
    {
        "name": "reject",
        "definition": OWN_OPERATION + "Task-reject",
        "documentation": "POST /fhir/Task/{id}/$reject?reason= (or a Parameters 'reason', "
        "valueString; required): a requested, received or accepted referral is rejected",
    },
    {
        "name": "complete",
        "definition": OWN_OPERATION + "Task-complete",
        "documentation": "POST /fhir/Task/{id}/$complete: an accepted or in-progress "
        "referral is completed",
    },
]
# POST /fhir: a partner's transaction or batch Bundle (gateway/api/_fhir.py)
SYSTEM_INTERACTIONS: list[dict[str, str]] = [{"code": "transaction"}, {"code": "batch"}]


def stored_search_params() -> list[dict[str, Any]]:
    """The searchParam entries of each type GET /fhir/{type} serves: the core
    definition of the Resource ones (``_id``, ``_lastUpdated``); the others are one
    implementation for every type (no one core definition fits them all)."""
    found = []
    for name, kind, documentation in STORED_SEARCH_PARAMS:
        entry: dict[str, Any] = {"name": name}
        if name in _RESOURCE_SEARCH:
            entry["definition"] = _CORE_SEARCH + _RESOURCE_SEARCH[name]
        found.append({**entry, "type": kind, "documentation": documentation})
    return found


def fhir_resources() -> list[dict[str, Any]]:
    """What the API serves under /fhir, per type (GET /fhir/metadata): read and search
    of what partners sent (gateway/api/_fhir.py) and of the audit log (_auditing.py)."""
    stored = [
        {
            "type": rtype,
            "documentation": f"what partners sent (docs/inbound.md): GET /fhir/{rtype}/{{id}} "
            f"and GET /fhir/{rtype}; a partner reads only what it sent",
            "interaction": READ_SEARCH,
            # If-None-Match (the version's ETag) and If-Modified-Since: 304 Not Modified,
            # on GET /fhir/{type}/{id} and a read batch's entries (gateway/api/_fhir.py)
            "conditionalRead": "full-support",
            "searchParam": stored_search_params(),
        }
        for rtype in STORED_TYPES
    ]
    for resource in stored:
        if resource["type"] == "Task":  # the referrals' status (local API token)
            resource["operation"] = TASK_OPERATIONS
    return copy.deepcopy([*stored, SERVER_ONLY["AuditEvent"]])  # the callers' own


def root_resources() -> list[dict[str, Any]]:
    """What the API serves at its root, per type (GET /metadata): the consents
    (gateway/api/_policy.py)."""
    return copy.deepcopy([CONSENT])


# Resources the gateway serves but never sends: the audit log (GET /fhir/AuditEvent,
# gateway/api/_auditing.py), read and searched by auditor and admin tokens.
SERVER_ONLY: dict[str, dict[str, Any]] = {
    "AuditEvent": {
        "type": "AuditEvent",
        "documentation": "The audit trail (docs/audit.md): GET /fhir/AuditEvent (searchset "
        "Bundle in log order, paged by _count and the next link) and GET "
        "/fhir/AuditEvent/{id}, for auditor and admin API tokens only (403 otherwise).",
        "interaction": READ_SEARCH,
        "searchParam": audit_search_params(),
    }
}
# The patients' consents to cross-border transfer (docs/policy.md): POST /Consent
# imports one (201, or 200 for a new version), GET /Consent?patient= lists them, GET
# /Consent/{id}[/_history/{vid}] reads one (vread: the current version, the only one
# kept), POST /Consent/{id}/$withdraw.
CONSENT: dict[str, Any] = {
    "type": "Consent",
    "documentation": "Consents to cross-border transfer (docs/policy.md): POST /Consent "
    "imports one (201 when new, 200 for a new version of one on file; If-Match honoured; "
    "held records it now allows are released), GET /Consent?patient= lists them (a "
    "searchset Bundle), GET /Consent/{id} reads one (If-None-Match / If-Modified-Since: 304 "
    "Not Modified), GET /Consent/{id}/_history/{vid} its "
    "current version (only the current version is kept: another is 404), POST "
    "/Consent/{id}/$withdraw withdraws one.",
    "versioning": "versioned-update",  # If-Match honoured (http.html#concurrency)
    "readHistory": False,
    # If-None-Match and If-Modified-Since: 304 Not Modified on GET /Consent/{id}, as
    # on GET /fhir/{type}/{id} (gateway/api/_policy.py)
    "conditionalRead": "full-support",
    "interaction": [
        {"code": "read"},
        {"code": "vread"},
        {"code": "create"},
        {"code": "search-type"},
    ],
    "searchParam": [
        {
            "name": "patient",
            "definition": _CORE_SEARCH + "Consent-patient",
            "type": "reference",
            "documentation": "the patient's identifier system|value",
        }
    ],
    "operation": [
        {
            "name": "withdraw",
            "definition": OWN_OPERATION + "Consent-withdraw",
            "documentation": "POST /Consent/{id}/$withdraw: the Consent's status becomes "
            "inactive (kept as evidence); transfers queued on it not yet sent are held",
        }
    ],
}


def _profiles(resources: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        r
        for r in resources
        if r["resourceType"] == "StructureDefinition" and r.get("kind") == "resource"
    ]


def capability_statement(resources: list[dict[str, Any]]) -> dict[str, Any]:
    """What the gateway does, in FHIR terms: as a server, the operations of its API
    (conversion, report variants, $validate) and the interactions its routes serve
    (``fhir_resources``, ``root_resources``: what GET /fhir/metadata and GET /metadata
    announce, together); as a client of the partners' servers, a
    transaction per record whose entries follow the profiles."""
    by_type: dict[str, list[str]] = {}
    for sd in _profiles(resources):
        by_type.setdefault(str(sd["type"]), []).append(str(sd["url"]))
    client = []
    for rtype in sorted(by_type):
        if rtype in SERVER_ONLY:
            continue  # never sent to a partner: the gateway's own log
        entry: dict[str, Any] = {"type": rtype, "supportedProfile": sorted(by_type[rtype])}
        if rtype != "Bundle":
            entry["interaction"] = [{"code": "create"}, {"code": "update"}]
            entry["conditionalCreate"] = True
            entry["conditionalUpdate"] = True
        client.append(entry)
    served = {r["type"]: r for r in [*fhir_resources(), *root_resources()]}
    server_resources = [
        _server_resource(rtype, by_type.get(rtype), served.get(rtype))
        for rtype in sorted(set(by_type) | set(served))
    ]
    return {
        "resourceType": "CapabilityStatement",
        "id": IG_ID,
        "url": f"{BASE}/CapabilityStatement/{IG_ID}",
        "version": __version__,
        "name": "FhirGateway",
        "title": "FHIR gateway: what it sends and what its API offers",
        "status": "draft",
        "date": "2026-12-05",
        "publisher": PUBLISHER,
        "description": (
            "The FHIR interoperability gateway converts HL7 v2, DICOM and CDA records of "
            "Hong Kong and mainland China hospitals into FHIR R4 transaction Bundles that "
            "follow this guide's profiles, and sends them to partner FHIR servers (client: "
            "one transaction per record, every entry a conditional create or update). Its "
            "HTTP API (server) converts records, makes report language variants and "
            "validates resources against the profiles ($validate)."
        ),
        "kind": "capability",
        "implementationGuide": [f"{BASE}/ImplementationGuide/{IG_ID}"],
        "software": {"name": "fhir-gateway", "version": __version__},
        "fhirVersion": "4.0.1",
        "format": ["application/fhir+json", "json"],
        "rest": [
            {
                "mode": "server",
                "documentation": (
                    "The gateway's HTTP API (docs/api.md; bearer token on every route but "
                    "/health, /metadata and /fhir/metadata). POST /convert: a record in, its "
                    "transaction Bundle out (not a FHIR interaction: the body is HL7 v2, "
                    "DICOM or CDA). "
                    "POST /report/variants: a DiagnosticReport in, its zh-Hans, zh-Hant-HK, "
                    "en or bilingual variant out. POST /$validate and POST /{type}/$validate: "
                    "a resource in, an OperationOutcome against the gateway's profiles out "
                    "(profile= a canonical URL of this guide). POST /fhir: a partner's "
                    "transaction or batch (partner credentials, docs/inbound.md); GET "
                    "/fhir/{type} and /fhir/{type}/{id}: what partners sent; POST "
                    "/fhir/Task/{id}/$accept, $reject, $complete: a received referral's "
                    "status; GET /fhir/AuditEvent: the audit trail, for auditor and admin "
                    "tokens; POST and GET /Consent, POST /Consent/{id}/$withdraw: the "
                    "consents. GET /metadata and GET /fhir/metadata: the API's root and "
                    "/fhir as an instance, together this statement."
                ),
                "security": {
                    "cors": False,
                    "description": "Bearer token in the Authorization header (docs/api.md).",
                },
                "resource": server_resources,
                "interaction": SYSTEM_INTERACTIONS,  # POST /fhir
                "operation": [{"name": "validate", "definition": VALIDATE}],
            },
            {
                "mode": "client",
                "documentation": (
                    "Towards partner FHIR servers: one transaction Bundle per converted record "
                    "(profile transaction-bundle). Reference data (Patient, Practitioner, "
                    "Organization...) by conditional create (POST with ifNoneExist); content "
                    "that evolves (ServiceRequest, ImagingStudy, DiagnosticReport, "
                    "Observation) by conditional update (PUT Type?identifier=system|value); "
                    "a partner that limits transaction size gets the same entries as ordered "
                    "requests (docs/partners.md)."
                ),
                "resource": client,
                "interaction": [{"code": "transaction"}],
            },
        ],
    }


def _server_resource(
    rtype: str, profiles: list[str] | None, served: dict[str, Any] | None
) -> dict[str, Any]:
    """A type on the API: its profiles (and POST /{type}/$validate against them), what
    its routes serve (``served``: interactions, search parameters, operations)."""
    entry: dict[str, Any] = {"type": rtype}
    if profiles:
        entry["supportedProfile"] = sorted(profiles)
    entry.update({k: v for k, v in (served or {}).items() if k != "type"})
    if profiles:
        validate = {"name": "validate", "definition": VALIDATE}
        entry["operation"] = [*entry.get("operation", []), validate]
    return entry


def implementation_guide(listed: list[dict[str, Any]]) -> dict[str, Any]:
    """The guide: every conformance resource given (all of profiles/: CodeSystems and
    ValueSets added later are listed as soon as they are there)."""
    resources = []
    for resource in listed:
        rtype = resource["resourceType"]
        item: dict[str, Any] = {
            "reference": {"reference": f"{rtype}/{resource['id']}"},
            "name": str(resource.get("title") or resource.get("name") or resource["id"]),
        }
        if resource.get("description"):
            item["description"] = str(resource["description"])
        item["exampleBoolean"] = False
        resources.append(item)
    return {
        "resourceType": "ImplementationGuide",
        "id": IG_ID,
        "url": f"{BASE}/ImplementationGuide/{IG_ID}",
        "version": __version__,
        "name": "FhirGatewayIG",
        "title": "FHIR gateway implementation guide (Hong Kong / mainland China)",
        "status": "draft",
        "publisher": PUBLISHER,
        "description": (
            "The profiles, extensions, code systems, value sets and naming systems of what "
            "the FHIR gateway sends to partner institutions. One canonical base: "
            f"{BASE}/<type>/<id>. Rendered for reading in docs/profiles/."
        ),
        "packageId": "example.fhir-gateway",
        "license": "Apache-2.0",
        "fhirVersion": ["4.0.1"],
        "dependsOn": [
            {
                "uri": "http://hl7.org/fhir/ImplementationGuide/hl7.fhir.r4.core",
                "packageId": "hl7.fhir.r4.core",
                "version": "4.0.1",
            }
        ],
        "definition": {
            "resource": resources,
            "page": {
                "nameUrl": "index.html",
                "title": "FHIR gateway profiles",
                "generation": "markdown",
            },
        },
    }


# -- Markdown ---------------------------------------------------------------------------


_OR = " \\| "  # "or" inside a table cell


def _cell(text: object) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _type_text(element: dict[str, Any]) -> str:
    out = []
    for t in element.get("type", []):
        targets = t.get("targetProfile") or t.get("profile") or []
        names = [u.rsplit("/", 1)[-1] for u in targets]
        out.append(f"{t['code']}({_OR.join(names)})" if names else str(t["code"]))
    return _OR.join(out)


def _fixed_text(element: dict[str, Any]) -> str:
    for key, value in element.items():
        if key.startswith("fixed") or key.startswith("pattern"):
            shown = value if isinstance(value, str) else orjson.dumps(value).decode()
            return f"{'=' if key.startswith('fixed') else 'pattern'} `{shown}`"
    return ""


def _binding_text(element: dict[str, Any]) -> str:
    binding = element.get("binding")
    if not binding or "valueSet" not in binding:
        return ""
    return f"{binding['strength']}: {binding['valueSet']}"


def _changed_ids(sd: dict[str, Any]) -> set[str]:
    return {str(e.get("id") or e["path"]) for e in sd.get("differential", {}).get("element", [])}


def _zh_title(sd: dict[str, Any]) -> str:
    for ext in sd.get("_title", {}).get("extension", []):
        parts = {
            p["url"]: next(v for k, v in p.items() if k.startswith("value"))
            for p in ext["extension"]
        }
        if parts.get("lang") == "zh-Hans":
            return str(parts.get("content", ""))
    return ""


def _inherits(sd: dict[str, Any]) -> list[str]:
    """A profile on another gateway profile says so: its page lists only its own changes."""
    base = str(sd["baseDefinition"])
    if not base.startswith(f"{BASE}/StructureDefinition/"):
        return []
    name = base.rsplit("/", 1)[-1]
    return [
        f"Everything [{name}]({name}.md) requires holds here too; below, what this",
        "profile adds.",
        "",
    ]


def _profile_page(sd: dict[str, Any]) -> str:
    changed = _changed_ids(sd)
    zh = _zh_title(sd)
    lines = [
        f"# {sd.get('title', sd['name'])}" + (f" · {zh}" if zh else ""),
        "",
        f"- Canonical URL: `{sd['url']}`",
        f"- Type: {sd['type']} · based on `{sd['baseDefinition']}` · FHIR {sd['fhirVersion']}"
        f" · version {sd.get('version', '')} ({sd.get('status', '')})",
        f"- Files: [`profiles/StructureDefinition-{sd['id']}.json`]"
        f"(../../profiles/StructureDefinition-{sd['id']}.json) (differential and snapshot)",
        "",
        str(sd.get("description", "")),
        "",
        *_inherits(sd),
        "## Elements the profile constrains",
        "",
        "Bold rows are changed by this profile; the others are shown for context (their",
        "parents). Cardinality `min..max`; a slice is `element:slice`.",
        "",
        "| element | card. | type | fixed / pattern | binding | description |",
        "|---|---|---|---|---|---|",
    ]
    shown = set()
    for element in sd["snapshot"]["element"]:
        eid = str(element["id"])
        if eid not in changed:
            continue
        # the parents of a changed element, once, for context
        parts = eid.split(".")
        for depth in range(1, len(parts)):
            parent = ".".join(parts[:depth])
            if parent not in shown and parent not in changed and depth > 1:
                shown.add(parent)
                lines.append(f"| {_cell(parent)} | | | | | |")
        shown.add(eid)
        short = element.get("short", "")
        lines.append(
            f"| **{_cell(eid)}** | {element.get('min', '')}..{element.get('max', '')} "
            f"| {_type_text(element)} | {_cell(_fixed_text(element))} "
            f"| {_cell(_binding_text(element))} | {_cell(short)} |"
        )
    constraints = [
        (str(e["id"]), c)
        for e in sd["snapshot"]["element"]
        for c in e.get("constraint", [])
        if c.get("source") == sd["url"]
    ]
    if constraints:
        lines += [
            "",
            "## Rules (FHIRPath invariants)",
            "",
            "| key | on | severity | rule | FHIRPath |",
            "|---|---|---|---|---|",
        ]
        for eid, c in constraints:
            lines.append(
                f"| {c['key']} | {_cell(eid)} | {c['severity']} | {_cell(c['human'])} "
                f"| `{_cell(c['expression'])}` |"
            )
    return "\n".join(lines) + "\n"


def render_docs(resources: list[dict[str, Any]]) -> dict[str, str]:
    """File name → Markdown: ``README.md`` (the index) and one page per StructureDefinition
    (``resources``: the StructureDefinitions with their snapshots)."""
    pages: dict[str, str] = {}
    index = [
        "# FHIR gateway profiles · 网关 FHIR 规范",
        "",
        "<!-- generated by `make profiles` (gateway/validation/igpub.py); do not edit -->",
        "",
        "What the gateway sends to partner institutions, as FHIR R4 conformance resources.",
        f"Every canonical URL is under `{BASE}` (`<base>/<type>/<id>`); the files are in",
        "[`profiles/`](../../profiles/), the ImplementationGuide resource is",
        f"`{BASE}/ImplementationGuide/{IG_ID}` and the CapabilityStatement",
        f"`{BASE}/CapabilityStatement/{IG_ID}`. Each StructureDefinition has its differential",
        "and its snapshot (made over the official `hl7.fhir.r4.core` 4.0.1 definitions).",
        "",
        "## Profiles and extensions",
        "",
        "| page | 中文 | type | canonical URL |",
        "|---|---|---|---|",
    ]
    for sd in resources:
        if sd["resourceType"] != "StructureDefinition":
            continue
        name = _cell(sd.get("title") or sd["name"])
        zh = _cell(_zh_title(sd))
        index.append(f"| [{name}]({sd['id']}.md) | {zh} | {sd['type']} | `{sd['url']}` |")
        pages[f"{sd['id']}.md"] = _profile_page(sd)
    others = [
        r
        for r in resources
        if r["resourceType"] not in ("StructureDefinition", "CapabilityStatement")
    ]
    if others:
        index += [
            "",
            "## Code systems, value sets, naming systems",
            "",
            "| resource | URL | title |",
            "|---|---|---|",
        ]
        for r in others:
            url = r.get("url") or ", ".join(u["value"] for u in r.get("uniqueId", []))
            title = _cell(r.get("title") or r.get("name", ""))
            index.append(f"| {r['resourceType']}/{r['id']} | `{url}` | {title} |")
    pages["README.md"] = "\n".join(index) + "\n"
    return pages


def publish(folder: Path, docs: Path) -> dict[Path, bytes]:
    """Every file ``make profiles`` writes besides the snapshots, path → bytes, made from
    the folder's resources as they will be written (StructureDefinitions with snapshots)."""
    from .snapshot import regenerate

    current = {p.name: orjson.loads(p.read_bytes()) for p in sorted(folder.glob("*.json"))}
    for path, data in regenerate(folder).items():
        current[path.name] = orjson.loads(data)
    cs_name = f"CapabilityStatement-{IG_ID}.json"
    current[cs_name] = capability_statement(_listed(current))
    guide = implementation_guide(_listed(current))
    out = {
        folder / cs_name: dump_json(current[cs_name]),
        folder / f"ImplementationGuide-{IG_ID}.json": dump_json(guide),
    }
    for name, text in render_docs(_listed(current)).items():
        out[docs / name] = text.encode("utf-8")
    return out


def _listed(by_name: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    return [by_name[n] for n in sorted(by_name) if by_name[n].get("resourceType") in LISTED]
