"""The API driven from its OpenAPI description alone: a small generic client reads
/openapi.json (paths, methods, request content types and examples, security schemes,
documented responses) and calls /convert and /report/variants with a token."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import orjson
import pytest
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.operationoutcome import OperationOutcome

from gateway import Converter, Settings
from gateway.api import TokenSet, create_app
from tests.api.test_app import TOKEN, Client

MODELS = {"Bundle": Bundle, "OperationOutcome": OperationOutcome}


@pytest.fixture(scope="module")
def client(converter: Converter, settings: Settings) -> Iterator[Client]:
    app = create_app(settings, converter, TokenSet([TOKEN]))
    yield Client(app)
    app.state.reports.shutdown()


class OpenApiClient:
    """Knows nothing of the gateway but its description."""

    def __init__(self, http: Client, token: str) -> None:
        self.http = http
        self.spec: dict[str, Any] = http.get("/openapi.json").json()
        self.token = token

    def resolve(self, schema: dict[str, Any]) -> dict[str, Any]:
        ref = schema.get("$ref")
        if ref is None:
            return schema
        node: Any = self.spec
        for part in ref.removeprefix("#/").split("/"):
            node = node[part]
        return dict(node)

    def auth_headers(self, operation: dict[str, Any]) -> dict[str, str]:
        """Headers its security requirement asks for (http bearer schemes only)."""
        headers = {}
        schemes = self.spec["components"]["securitySchemes"]
        for requirement in operation.get("security", []):
            for name in requirement:
                scheme = schemes[name]
                assert scheme["type"] == "http" and scheme["scheme"].lower() == "bearer"
                headers["Authorization"] = f"Bearer {self.token}"
        return headers

    def calls(self, path: str) -> Iterator[tuple[str, str, str, Any, dict[str, Any]]]:
        """(method, content type, example name, example value, operation) for every
        example body of every operation on ``path``."""
        for method, operation in self.spec["paths"][path].items():
            content = operation["requestBody"]["content"]
            for content_type, media in content.items():
                for name, example in media.get("examples", {}).items():
                    yield method, content_type, name, example["value"], operation

    def send(
        self, method: str, path: str, content_type: str, value: Any, operation: dict[str, Any]
    ) -> Any:
        body = value.encode() if isinstance(value, str) else orjson.dumps(value)
        headers = {"Content-Type": content_type, **self.auth_headers(operation)}
        return self.http.request(method.upper(), path, content=body, headers=headers)

    def check_response(self, operation: dict[str, Any], resp: Any) -> None:
        """The status is documented, with this content type, and the body is what the
        documented schema says (FHIR resources also parse as R4B)."""
        documented = operation["responses"].get(str(resp.status_code))
        assert documented is not None, f"undocumented status {resp.status_code}: {resp.text}"
        content_type = resp.headers["content-type"].split(";")[0]
        assert content_type in documented["content"], (content_type, documented)
        schema = self.resolve(documented["content"][content_type]["schema"])
        if content_type.endswith("json"):
            body = resp.json()
            for key in schema.get("required", []):
                assert key in body
            kinds = schema.get("properties", {}).get("resourceType", {}).get("enum")
            if kinds:
                assert body["resourceType"] in kinds
                MODELS[body["resourceType"]].model_validate(body)


@pytest.mark.parametrize("path", ["/convert", "/report/variants"])
def test_every_example_goes_through_with_the_token(client: Client, path: str) -> None:
    api = OpenApiClient(client, TOKEN)
    sent = []
    for method, content_type, name, value, operation in api.calls(path):
        resp = api.send(method, path, content_type, value, operation)
        assert resp.status_code == 200, (content_type, name, resp.text[:500])
        api.check_response(operation, resp)
        assert resp.json()["resourceType"] == "Bundle"
        sent.append(content_type)
    expected = {
        "/convert": {
            "x-application/hl7-v2+er7",
            "application/dicom+json",
            "application/hl7-cda+xml",
        },
        "/report/variants": {"application/fhir+json"},
    }[path]
    assert expected <= set(sent)


def test_the_converted_examples_are_what_they_say(client: Client) -> None:
    """HL7 v2, DICOM JSON and CDA examples each give a transaction with their resources."""
    api = OpenApiClient(client, TOKEN)
    found = {}
    for method, content_type, _, value, operation in api.calls("/convert"):
        bundle = api.send(method, "/convert", content_type, value, operation).json()
        assert bundle["type"] == "transaction"
        found[content_type] = {e["resource"]["resourceType"] for e in bundle["entry"]}
    assert "ServiceRequest" in found["x-application/hl7-v2+er7"]
    assert "ImagingStudy" in found["application/dicom+json"]
    assert "DiagnosticReport" in found["application/hl7-cda+xml"]


@pytest.mark.parametrize("path", ["/convert", "/report/variants"])
def test_without_the_token_the_documented_401(client: Client, path: str) -> None:
    api = OpenApiClient(client, "")
    method, content_type, _, value, operation = next(api.calls(path))
    resp = client.request(
        method.upper(), path, content=orjson.dumps(value), headers={"Content-Type": content_type}
    )
    assert resp.status_code == 401
    api.check_response(operation, resp)


def test_a_bad_record_gets_a_documented_outcome(client: Client) -> None:
    api = OpenApiClient(client, TOKEN)
    operation = api.spec["paths"]["/convert"]["post"]
    resp = api.send(
        "post", "/convert", "x-application/hl7-v2+er7", "MSH|^~\\&|A\rPID|1\r", operation
    )
    assert resp.status_code == 400
    api.check_response(operation, resp)


def test_every_route_but_health_and_metadata_is_protected_and_says_so(client: Client) -> None:
    """The description's security matches the routes: each operation with a bearer
    requirement refuses a call without a token, and only /health and /metadata lack one."""
    spec = client.get("/openapi.json").json()
    assert spec["components"]["securitySchemes"]["HTTPBearer"] == {
        "type": "http",
        "scheme": "bearer",
        "description": spec["components"]["securitySchemes"]["HTTPBearer"]["description"],
    }
    public = []
    for path, methods in spec["paths"].items():
        for method, operation in methods.items():
            url = path.replace("{message_id}", "1").replace("{study}", "1.2.3")
            url = url.replace("{decision_id}", "1").replace("{consent_id}", "c1")
            if "security" not in operation:
                public.append(path)
                continue
            assert "401" in operation["responses"]
            resp = client.request(method.upper(), url, content=b"x")
            assert resp.status_code == 401, (method, path)
    assert sorted(public) == [
        "/auth/token",  # the inbound endpoint's SMART discovery and token endpoint
        "/fhir/.well-known/smart-configuration",
        "/fhir/metadata",
        "/health",
        "/metadata",
    ]


def test_every_operation_with_a_body_has_its_content_types(client: Client) -> None:
    spec = client.get("/openapi.json").json()
    for path, methods in spec["paths"].items():
        for method, operation in methods.items():
            bodyless = ("$reprocess", "$commit", "$withdraw", "$accept", "$complete")
            if method == "post" and not path.endswith(bodyless):
                assert operation["requestBody"]["content"], path
    convert = spec["paths"]["/convert"]["post"]["requestBody"]["content"]
    assert {"application/dicom", "application/zip", "application/hl7-v2"} <= set(convert)
    assert "HTTPValidationError" not in spec["components"]["schemas"]
    assert {"Bundle", "OperationOutcome"} <= set(spec["components"]["schemas"])


def test_docs_pages_load_their_assets_from_the_gateway(client: Client) -> None:
    """Swagger UI and ReDoc name no outside host: their scripts are served here."""
    for page in ("/docs", "/redoc"):
        resp = client.get(page)
        assert "cdn." not in resp.text and "https://" not in resp.text, page
        # the browser itself refuses anything from another host (ReDoc's logo)
        policy = resp.headers["content-security-policy"]
        assert "default-src 'self'" in policy and "img-src 'self' data:;" in policy
    for asset in ("swagger-ui-bundle.js", "swagger-ui.css", "redoc.standalone.js"):
        resp = client.get(f"/static-offline-docs/{asset}")
        assert resp.status_code == 200 and len(resp.content) > 100_000, asset
