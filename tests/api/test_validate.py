"""POST /$validate and POST /{type}/$validate: FHIR's validate operation, authenticated,
answering an OperationOutcome (200 "All OK" when valid), 400 for unparsable input."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest
from fhir.resources.R4B.operationoutcome import OperationOutcome

from gateway import Converter, Settings
from gateway.api import TokenSet, create_app
from gateway.api._validate import MAX_VALIDATE_BODY
from tests.api.test_app import Client

TOKEN = "validate-test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/fhir+json"}
GOLDEN = Path(__file__).resolve().parents[1] / "golden" / "hl7v2" / "omg_o19.expected.json"
PATIENT = {
    "resourceType": "Patient",
    "text": {"status": "generated", "div": '<div xmlns="http://www.w3.org/1999/xhtml">P</div>'},
    "gender": "male",
    "birthDate": "1957-09-03",
}
BAD_PATIENT = {**PATIENT, "birthDate": "1957-13-45"}


@pytest.fixture(scope="module")
def client(converter: Converter, settings: Settings) -> Client:
    return Client(create_app(settings, converter, TokenSet([TOKEN])))


def _post(client: Client, url: str, body: Any, headers: dict[str, str] = AUTH) -> Any:
    content = body if isinstance(body, bytes) else orjson.dumps(body)
    return client.post(url, content=content, headers=headers)


def _outcome(resp: Any) -> dict[str, Any]:
    assert resp.headers["content-type"] == "application/fhir+json"
    data: dict[str, Any] = resp.json()
    OperationOutcome.model_validate(data)
    return data


@pytest.mark.parametrize("url", ["/$validate", "/Patient/$validate"])
def test_a_valid_resource_is_all_ok(client: Client, url: str) -> None:
    resp = _post(client, url, PATIENT)
    assert resp.status_code == 200
    [issue] = _outcome(resp)["issue"]
    assert issue["severity"] == "information" and issue["code"] == "informational"
    assert issue["details"]["coding"][0]["code"] == "validation.ok"


def test_a_golden_bundle_is_all_ok(client: Client) -> None:
    resp = _post(client, "/Bundle/$validate", GOLDEN.read_bytes())
    assert resp.status_code == 200
    errors = [i for i in _outcome(resp)["issue"] if i["severity"] in ("error", "fatal")]
    assert errors == []


def test_an_invalid_resource_gives_its_errors_with_fhirpath(client: Client) -> None:
    resp = _post(client, "/$validate", BAD_PATIENT)
    assert resp.status_code == 200  # the operation worked; the resource is invalid
    [issue] = _outcome(resp)["issue"]
    assert issue["severity"] == "error" and issue["expression"] == ["Patient.birthDate"]
    assert "location" not in issue


def test_a_parameters_body_names_the_resource(client: Client) -> None:
    body = {
        "resourceType": "Parameters",
        "parameter": [{"name": "resource", "resource": BAD_PATIENT}],
    }
    [issue] = _outcome(_post(client, "/Patient/$validate", body))["issue"]
    assert issue["expression"] == ["Patient.birthDate"]
    empty = {"resourceType": "Parameters", "parameter": [{"name": "resource", "valueString": "x"}]}
    resp = _post(client, "/$validate", empty)
    assert resp.status_code == 400
    [issue] = _outcome(resp)["issue"]
    assert issue["expression"] == ["Parameters.parameter[0].resource"]


@pytest.mark.parametrize(
    ("body", "code", "text"),
    [
        (b'{"resourceType": "Patient",', "intake.json", "not JSON"),
        (b"[1]", "intake.not-a-resource", "not an object"),
        (b'{"gender": "male"}', "intake.not-a-resource", "without a resourceType"),
    ],
)
def test_unparsable_input_is_400(client: Client, body: bytes, code: str, text: str) -> None:
    resp = _post(client, "/$validate", body)
    assert resp.status_code == 400
    [issue] = _outcome(resp)["issue"]
    assert issue["details"]["coding"][0]["code"] == code and text in issue["diagnostics"]


def test_the_type_in_the_url_must_be_the_resources(client: Client) -> None:
    resp = _post(client, "/Observation/$validate", PATIENT)
    assert resp.status_code == 400
    [issue] = _outcome(resp)["issue"]
    assert issue["details"]["coding"][0]["code"] == "request.resource-type"


@pytest.mark.parametrize("url", ["/$validate", "/Patient/$validate"])
def test_a_token_is_required(client: Client, url: str) -> None:
    resp = _post(client, url, PATIENT, headers={"Content-Type": "application/fhir+json"})
    assert resp.status_code == 401
    wrong = {**AUTH, "Authorization": "Bearer nope"}
    assert _post(client, url, PATIENT, headers=wrong).status_code == 401


def test_the_profile_comes_from_the_query_or_the_parameters(client: Client) -> None:
    # Valid R4, but not a referral as the gateway's profile has it (no identifier, code...)
    bare = {
        "resourceType": "ServiceRequest",
        "status": "active",
        "intent": "order",
        "subject": {"reference": "Patient/1"},
    }
    referral = "https://fhir-gateway.example.org/StructureDefinition/referral-servicerequest"
    other = "http://hl7.org/fhir/StructureDefinition/ServiceRequest"

    def codes(url: str, body: Any) -> set[str]:
        resp = _post(client, url, body)
        assert resp.status_code == 200, resp.text
        return {i["details"]["coding"][0]["code"] for i in _outcome(resp)["issue"]}

    assert "validation.cardinality" not in codes("/ServiceRequest/$validate", bare)
    assert "validation.cardinality" in codes(f"/ServiceRequest/$validate?profile={referral}", bare)
    named = {
        "resourceType": "Parameters",
        "parameter": [
            {"name": "resource", "resource": bare},
            {"name": "profile", "valueUri": referral},
        ],
    }
    # the Parameters' profile wins over the query's
    assert "validation.cardinality" in codes(f"/$validate?profile={other}", named)


def test_a_profile_the_gateway_does_not_hold_is_an_error(client: Client) -> None:
    resp = _post(client, "/$validate?profile=https://x.example/StructureDefinition/y", PATIENT)
    assert resp.status_code == 200
    codes = [i["details"]["coding"][0]["code"] for i in _outcome(resp)["issue"]]
    assert "validation.profile-unknown" in codes


def test_the_operations_are_described(client: Client) -> None:
    spec = client.get("/openapi.json").json()
    for path in ("/$validate", "/{resource_type}/$validate"):
        operation = spec["paths"][path]["post"]
        assert "application/fhir+json" in operation["requestBody"]["content"]
        assert {"200", "400", "401"} <= set(operation["responses"])
        assert operation["security"] == [{"HTTPBearer": []}]
    names = [o["name"] for o in client.get("/metadata").json()["rest"][0]["operation"]]
    assert "validate" in names


def test_an_oversized_body_is_refused_with_413(client: Client) -> None:
    resp = client.post("/$validate", content=b" " * (MAX_VALIDATE_BODY + 1), headers=AUTH)
    assert resp.status_code == 413
    [issue] = resp.json()["issue"]
    assert issue["details"]["coding"][0]["code"] == "request.too-large"
    assert str(MAX_VALIDATE_BODY) in issue["diagnostics"]
