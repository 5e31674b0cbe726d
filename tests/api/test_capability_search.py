"""The CapabilityStatements announce exactly the search parameters the search code
accepts, per type: ``GET /fhir/metadata`` (gateway/api/_fhir.py ``_capability``) and
the published one (profiles/CapabilityStatement-fhir-gateway.json, gateway/validation/
igpub.py). The audit log's ``consent`` and ``_id`` (gateway/audit/_search.py), and the
inbound search's ``_id``, were accepted but never announced. Result parameters
(``_count``, ``_after``, ``_format``) page or format the answer: accepted, not search
parameters, so not announced."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

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
def served(converter: Converter, settings: Settings) -> dict[str, Any]:
    app = create_app(settings, converter, TokenSet(["capability-token-0123456789"]))
    try:
        found: dict[str, Any] = Client(app).get("/fhir/metadata").json()
    finally:
        app.state.fhir.close()
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
    # only the audit log is searched on this API's statement: the other types announce
    # $validate, no search parameter that the server would refuse
    for resource in server["resource"]:
        if resource["type"] != "AuditEvent":
            assert not _names(resource), resource["type"]
    assert audit["searchParam"] == audit_search_params()  # `make profiles` is current
