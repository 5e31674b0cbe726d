"""The CapabilityStatements announce exactly what the API serves: ``GET /metadata`` (the
API's root, gateway/api/_app.py), ``GET /fhir/metadata`` (/fhir, gateway/api/_fhir.py
``_capability``) and the published one (profiles/CapabilityStatement-fhir-gateway.json,
gateway/validation/igpub.py: the two together).

Search parameters, per type, against the search code both ways: the audit log's
``consent`` and ``_id`` (gateway/audit/_search.py), and the inbound search's ``_id``,
were accepted but never announced. Result parameters (``_count``, ``_after``,
``_format``) page or format the answer: accepted, not search parameters, so not
announced.

Interactions, per type, against the app's routes both ways: each announced one is
answered by a route that serves it, and each route serving a FHIR interaction (read,
search-type, create, transaction) is announced. The published statement announced only
$validate for the types GET /fhir/{type} reads and searches, and neither POST /fhir nor
/Consent; GET /Consent/{id} and its vread (the Location POST /Consent answers) were
neither served nor announced."""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.routing import APIRoute
from starlette.routing import Match

from gateway import Converter, Settings
from gateway.api import TokenSet, create_app
from gateway.api._fhir import SEARCH_PARAMS, _search
from gateway.audit import AuditError
from gateway.audit._search import PARAMETERS, parse_query
from gateway.inbound import InboundError
from gateway.validation.igpub import audit_search_params
from tests.api.test_app import Client

REPO = Path(__file__).resolve().parents[2]
RESULT = {"_count", "_after", "_format"}
SAMPLES = {"date": "2026-06-18", "outcome": "0", "action": "R", "_lastUpdated": "2026-06-18"}


def _names(resource: dict[str, Any]) -> list[str]:
    return [p["name"] for p in resource.get("searchParam") or []]


@pytest.fixture(scope="module")
def app(converter: Converter, settings: Settings) -> Iterator[FastAPI]:
    made = create_app(settings, converter, TokenSet(["capability-token-0123456789"]))
    yield made
    made.state.fhir.close()


@pytest.fixture(scope="module")
def served(app: FastAPI) -> dict[str, Any]:
    """GET /fhir/metadata: the statement of the API's /fhir."""
    found: dict[str, Any] = Client(app).get("/fhir/metadata").json()
    return found


@pytest.fixture(scope="module")
def root(app: FastAPI) -> dict[str, Any]:
    """GET /metadata: the statement of the API's root."""
    found: dict[str, Any] = Client(app).get("/metadata").json()
    return found


def _audit_accepts(name: str) -> bool:
    try:
        parse_query([(name, SAMPLES.get(name, "x"))])
    except AuditError as exc:
        return "unknown search parameter" not in str(exc)
    return True


def _inbound_accepts(name: str) -> bool:
    from starlette.requests import Request

    scope = {"type": "http", "query_string": f"{name}={SAMPLES.get(name, 'x')}".encode()}
    try:
        _search(Request(scope), None)
    except InboundError as exc:
        return "unknown search parameter" not in str(exc)
    return True


def test_metadata_announces_every_audit_parameter_and_no_other(served: dict[str, Any]) -> None:
    audit = next(r for r in served["rest"][0]["resource"] if r["type"] == "AuditEvent")
    announced = _names(audit)
    assert len(announced) == len(set(announced))
    assert set(announced) == set(PARAMETERS) - RESULT  # consent and _id among them
    assert all(_audit_accepts(name) for name in announced)
    assert not _audit_accepts("name")  # the check can fail


def test_metadata_announces_every_inbound_parameter_and_no_other(served: dict[str, Any]) -> None:
    stored = [r for r in served["rest"][0]["resource"] if r["type"] != "AuditEvent"]
    assert stored
    for resource in stored:
        announced = _names(resource)
        assert set(announced) == set(SEARCH_PARAMS) - RESULT, resource["type"]
        assert all(_inbound_accepts(name) for name in announced)
        assert {"search-type", "read"} <= {i["code"] for i in resource["interaction"]}
    assert not _inbound_accepts("name")


def test_the_published_statement_announces_the_same_audit_parameters(
    served: dict[str, Any],
) -> None:
    path = REPO / "profiles" / "CapabilityStatement-fhir-gateway.json"
    published = json.loads(path.read_text(encoding="utf-8"))
    server = published["rest"][0]
    audit = next(r for r in server["resource"] if r["type"] == "AuditEvent")
    assert set(_names(audit)) == set(PARAMETERS) - RESULT
    runtime = next(r for r in served["rest"][0]["resource"] if r["type"] == "AuditEvent")
    assert audit["searchParam"] == runtime["searchParam"]  # one list, two statements
    consent = next(p for p in audit["searchParam"] if p["name"] == "consent")
    assert consent["type"] == "reference" and "definition" not in consent  # no core one
    assert audit["searchParam"] == audit_search_params()  # `make profiles` is current


# -- interactions against the app's routes ------------------------------------------

# A route's shape below its base → the interaction it serves (http.html): the type
# segment is a type's name or a path parameter (any type).
_SHAPES = {
    ("GET", 2): "read",
    ("GET", 4): "vread",  # [type]/[id]/_history/[vid]
    ("GET", 1): "search-type",
    ("POST", 1): "create",
}
SYSTEM = {"transaction", "batch"}  # POST [base]: a transaction or batch Bundle
_REQUESTS = {
    "read": ("GET", "/{type}/an-id"),
    "vread": ("GET", "/{type}/an-id/_history/1"),
    "search-type": ("GET", "/{type}"),
    "create": ("POST", "/{type}"),
    "transaction": ("POST", ""),
    "batch": ("POST", ""),
}


def _is_type(segment: str) -> bool:
    return segment[:1].isupper() or (segment.startswith("{") and segment.endswith("}"))


def _interaction(route: APIRoute, method: str, base: str) -> tuple[str, str] | None:
    """(type segment, interaction) of a route below ``base``; ("", "transaction") for
    POST [base]; None for anything else (operations, the API's own routes)."""
    if route.path.rstrip("/") == base and method == "POST":
        return "", "transaction"
    if not route.path.startswith(base + "/"):
        return None
    segments = route.path[len(base) + 1 :].split("/")
    if not _is_type(segments[0]) or (len(segments) == 2 and not segments[1].startswith("{")):
        return None  # e.g. /fhir/metadata, /{type}/$validate
    if len(segments) == 4 and segments[2] != "_history":
        return None
    kind = _SHAPES.get((method, len(segments)))
    return (segments[0], kind) if kind else None


def _routes(app: FastAPI) -> list[tuple[str, APIRoute]]:
    return [(m, r) for r in app.router.routes if isinstance(r, APIRoute) for m in r.methods]


def _answering(app: FastAPI, method: str, path: str) -> APIRoute | None:
    """The route that answers ``method path``: the first that matches, as Starlette's
    router picks it."""
    scope = {"type": "http", "method": method, "path": path, "root_path": ""}
    for route in app.router.routes:
        if route.matches(scope)[0] == Match.FULL:
            return route if isinstance(route, APIRoute) else None
    return None


def _announced(statement: dict[str, Any]) -> set[tuple[str, str]]:
    rest = statement["rest"][0]
    found = {
        (r["type"], i["code"]) for r in rest.get("resource", []) for i in r.get("interaction", [])
    }
    return found | {("", i["code"]) for i in rest.get("interaction", [])}


def _check_routes(app: FastAPI, statement: dict[str, Any], base: str) -> None:
    announced = _announced(statement)
    # each announced interaction: the route answering its request serves it
    for rtype, code in announced:
        method, path = _REQUESTS[code]
        route = _answering(app, method, base + path.format(type=rtype))
        assert route is not None, (base, rtype, code)
        shape = _interaction(route, method, base)
        expected = "transaction" if code in SYSTEM else code
        assert shape is not None and shape[1] == expected, (base, rtype, code, route.path)
        assert shape[0] in (rtype, "") or shape[0].startswith("{"), (rtype, route.path)
    # each route serving an interaction: announced, for its type or every type it answers
    for method, route in _routes(app):
        shape = _interaction(route, method, base)
        if shape is None:
            continue
        segment, kind = shape
        if kind == "transaction":
            assert {c for t, c in announced if t == ""} >= SYSTEM, route.path
        elif not segment.startswith("{"):
            assert (segment, kind) in announced, (method, route.path)
        else:  # any type: each announced type it answers announces it, and one at least
            verb, path = _REQUESTS[kind]
            answers = {t: _answering(app, verb, base + path.format(type=t)) for t, _ in announced}
            reached = {t for t, found in answers.items() if t and found is route}
            assert reached, (method, route.path)
            for rtype in reached:
                assert (rtype, kind) in announced, (rtype, kind, route.path)


# -- operations against the app's routes --------------------------------------------


def _operation(route: APIRoute, method: str, base: str) -> tuple[str, str] | None:
    """(type segment, name) of an operation on a type or an instance below ``base``:
    POST [base]/[type]/$name or POST [base]/[type]/[id]/$name; a name that is a path
    parameter is kept as such (it answers names no statement can list). None for
    anything else (system operations, the API's own routes such as /messages)."""
    if method != "POST" or not route.path.startswith(base + "/"):
        return None
    segments = route.path[len(base) + 1 :].split("/")
    if len(segments) not in (2, 3) or not _is_type(segments[0]):
        return None
    if len(segments) == 3 and not segments[1].startswith("{"):
        return None
    last = segments[-1]
    if last.startswith("$"):
        return segments[0], last[1:]
    return (segments[0], last) if last.startswith("{") else None


def _operations(statement: dict[str, Any]) -> tuple[set[tuple[str, str]], set[str]]:
    """The operations announced per type (rest.resource.operation) and for the whole
    API (rest.operation: system operations, or operations on any type); each names
    its definition's canonical."""
    rest = statement["rest"][0]
    per_type = [(r["type"], o) for r in rest.get("resource", []) for o in r.get("operation", [])]
    everywhere = rest.get("operation", [])
    for operation in [o for _, o in per_type] + everywhere:
        assert operation["definition"].startswith(("http://", "https://", "urn:")), operation
    return {(t, o["name"]) for t, o in per_type}, {o["name"] for o in everywhere}


def _check_operations(app: FastAPI, statement: dict[str, Any], base: str) -> None:
    per_type, everywhere = _operations(statement)
    # each operation announced for a type: a route answers it, on an instance or the type
    for rtype, name in per_type:
        paths = (f"{base}/{rtype}/an-id/${name}", f"{base}/{rtype}/${name}")
        shapes = [_operation(r, "POST", base) for p in paths if (r := _answering(app, "POST", p))]
        assert any(
            s is not None and s[1] == name and (s[0] == rtype or s[0].startswith("{"))
            for s in shapes
        ), (base, rtype, name)
    # each route serving an operation: announced for its type, or for any type when
    # its type is a path parameter (rest.operation, as /metadata's validate); a system
    # operation (POST [base]/$name, as /metadata's $validate and $verify) in rest.operation
    for method, route in _routes(app):
        name = route.path.removeprefix(base + "/")
        if method == "POST" and route.path.startswith(base + "/$") and "/" not in name:
            assert name[1:] in everywhere, (base, route.path)
        shape = _operation(route, method, base)
        if shape is None:
            continue
        segment, name = shape
        if segment.startswith("{"):
            assert name in everywhere, (base, route.path)
        else:
            assert (segment, name) in per_type, (base, route.path)


def test_fhir_metadata_announces_the_interactions_its_routes_serve(
    app: FastAPI, served: dict[str, Any]
) -> None:
    _check_routes(app, served, "/fhir")
    _check_operations(app, served, "/fhir")
    task = {("Task", n) for n in ("accept", "reject", "complete")}
    assert _operations(served)[0] == task  # POST /fhir/Task/{id}/$accept|$reject|$complete
    assert ("Patient", "read") in _announced(served)
    assert ("Provenance", "search-type") in _announced(served)  # stored, so served


def test_metadata_announces_the_interactions_its_routes_serve(
    app: FastAPI, root: dict[str, Any]
) -> None:
    _check_routes(app, root, "")
    _check_operations(app, root, "")
    assert _announced(root) == {
        ("Consent", c) for c in ("create", "search-type", "read", "vread")
    }  # read and vread: the Location POST /Consent answers is served
    assert _operations(root) == ({("Consent", "withdraw")}, {"convert", "report-variants",
                                                            "validate", "verify"})  # fmt: skip
    consent = next(r for r in root["rest"][0]["resource"] if r["type"] == "Consent")
    route = _answering(app, "GET", "/Consent")
    assert route is not None
    accepted = {p.alias for p in route.dependant.query_params}  # the handler's parameters
    assert set(_names(consent)) == accepted == {"patient"}


def test_the_route_check_can_fail(app: FastAPI, served: dict[str, Any]) -> None:
    extra = copy.deepcopy(served)
    extra["rest"][0]["resource"][0]["interaction"].append({"code": "create"})  # no route
    with pytest.raises(AssertionError):
        _check_routes(app, extra, "/fhir")
    missing = copy.deepcopy(served)
    del missing["rest"][0]["interaction"]  # POST /fhir served, not announced
    with pytest.raises(AssertionError):
        _check_routes(app, missing, "/fhir")
    audit = copy.deepcopy(served)
    audit["rest"][0]["resource"] = [r for r in audit["rest"][0]["resource"]
                                    if r["type"] != "AuditEvent"]  # fmt: skip
    with pytest.raises(AssertionError):
        _check_routes(app, audit, "/fhir")
    # operations: one announced that no route answers, one route not announced
    patient = next(r for r in extra["rest"][0]["resource"] if r["type"] == "Patient")
    patient["operation"] = [{"name": "everything", "definition": "urn:x:everything"}]
    with pytest.raises(AssertionError):
        _check_operations(app, extra, "/fhir")
    task = next(r for r in missing["rest"][0]["resource"] if r["type"] == "Task")
    task["operation"] = [o for o in task["operation"] if o["name"] != "reject"]
    with pytest.raises(AssertionError):
        _check_operations(app, missing, "/fhir")


def test_the_published_statement_is_the_two_served_ones(
    served: dict[str, Any], root: dict[str, Any]
) -> None:
    """Every type the API's root or /fhir serves, with the same interactions, search
    parameters and documentation; POST /fhir's transaction and batch."""
    path = REPO / "profiles" / "CapabilityStatement-fhir-gateway.json"
    server = json.loads(path.read_text(encoding="utf-8"))["rest"][0]
    published = {r["type"]: r for r in server["resource"]}
    runtime = [*served["rest"][0]["resource"], *root["rest"][0]["resource"]]
    assert len({r["type"] for r in runtime}) == len(runtime)  # no type on both bases
    for resource in runtime:
        mine = published[resource["type"]]
        for key in ("interaction", "searchParam", "documentation"):
            assert mine.get(key) == resource.get(key), (resource["type"], key)
        # the operations its routes serve, then $validate when the type has profiles
        own = [o for o in mine.get("operation", []) if o["name"] != "validate"]
        assert own == resource.get("operation", []), resource["type"]
    with_interactions = {t for t, r in published.items() if r.get("interaction")}
    assert with_interactions == {r["type"] for r in runtime}
    assert server["interaction"] == served["rest"][0]["interaction"]


def test_metadata_announces_conditional_reads_where_the_read_honours_them(
    served: dict[str, Any],
) -> None:
    # GET /fhir/{type}/{id} answers If-None-Match / If-Modified-Since with 304 for what
    # partners sent (tests/inbound/test_conditional_read.py); the audit log's read does not
    resources = {r["type"]: r for r in served["rest"][0]["resource"]}
    for rtype, resource in resources.items():
        expected = None if rtype == "AuditEvent" else "full-support"
        assert resource.get("conditionalRead") == expected, rtype
