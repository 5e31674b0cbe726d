"""The HTTP API: authentication, OperationOutcomes with locations, Bundles."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from fhir.resources.R4B.capabilitystatement import CapabilityStatement
from fhir.resources.R4B.operationoutcome import OperationOutcome

from gateway import Converter, Settings
from gateway.api import TokenSet, create_app, load_tokens

REPO = Path(__file__).resolve().parents[2]
TOKEN = "test-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "x-application/hl7-v2+er7"}


class Client:
    """Calls the ASGI app in-process through httpx (no network, no server)."""

    def __init__(self, app: FastAPI) -> None:
        self.app = app

    def request(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        async def go() -> httpx.Response:
            transport = httpx.ASGITransport(app=self.app)
            async with httpx.AsyncClient(transport=transport, base_url="http://gw") as http:
                return await http.request(method, url, **kwargs)

        return asyncio.run(go())

    def get(self, url: str, **kwargs: Any) -> httpx.Response:
        return self.request("GET", url, **kwargs)

    def post(self, url: str, **kwargs: Any) -> httpx.Response:
        return self.request("POST", url, **kwargs)


@pytest.fixture(scope="module")
def client(converter: Converter, settings: Settings) -> Client:
    return Client(create_app(settings, converter, TokenSet([TOKEN])))


def test_health_and_metadata_need_no_token(client: Client) -> None:
    health = client.get("/health").json()
    assert health["status"] == "ok" and "REF^I12" in health["converts"]
    meta = client.get("/metadata")
    assert meta.headers["content-type"] == "application/fhir+json"
    CapabilityStatement.model_validate(meta.json())


@pytest.mark.parametrize("header", [None, "Bearer wrong", "Basic dGVzdA=="])
def test_convert_refuses_missing_or_wrong_tokens(client: Client, header: str | None) -> None:
    headers = {"Authorization": header} if header else {}
    resp = client.post("/convert", content=b"MSH|^~\\&|", headers=headers)
    assert resp.status_code == 401 and resp.headers["www-authenticate"] == "Bearer"
    assert resp.json()["issue"][0]["code"] == "login"


def test_convert_returns_the_bundle(client: Client) -> None:
    body = (REPO / "examples/hl7v2/ref_i12_hkpmc_to_nsch.hl7").read_bytes()  # Big5
    resp = client.post("/convert", content=body, headers=AUTH)
    assert resp.status_code == 200 and resp.headers["content-type"] == "application/fhir+json"
    bundle = resp.json()
    names = [
        e["resource"]["name"][0]["text"]
        for e in bundle["entry"]
        if e["resource"]["resourceType"] == "Patient"
    ]
    assert names == ["許嘉瑋"]


def test_unreadable_input_is_400_with_the_location(client: Client) -> None:
    body = b"MSH|^~\\&|A|B|C|D|20260101||REF^I12|1|P|2.5|||||CHN|KLINGON\rPID|1\r"
    resp = client.post("/convert", content=body, headers=AUTH)
    assert resp.status_code == 400
    outcome = OperationOutcome.model_validate(resp.json())
    issue = outcome.issue[0]
    assert issue.location == ["MSH-18"] and "KLINGON" in (issue.diagnostics or "")
    assert issue.expression is None  # a terser path is not FHIRPath


def test_unmappable_record_is_422_naming_the_field(client: Client) -> None:
    body = b"MSH|^~\\&|A|B|C|D|20260101||REF^I12|1|P|2.5\rPID|1||X1^^^A^MR\rRF1|P\r"
    resp = client.post("/convert", content=body, headers=AUTH)
    assert resp.status_code == 422
    issue = resp.json()["issue"][0]
    assert issue["location"] == ["RF1-6"] and issue["code"] == "value"
    assert "expression" not in issue


def test_several_messages_give_a_batch_response(client: Client) -> None:
    body = (REPO / "examples/hl7v2/batch_mixed.hl7").read_bytes()
    resp = client.post("/convert", content=body, headers=AUTH)
    assert resp.status_code == 200
    statuses = [e["response"]["status"] for e in resp.json()["entry"]]
    assert statuses == ["200 OK", "422 Unprocessable", "200 OK"]


def test_a_fresh_home_gets_a_private_random_token(tmp_path: Path) -> None:
    settings = Settings.load(home=tmp_path, env={})
    tokens = load_tokens(settings)
    path = tmp_path / "secrets" / "api-tokens"
    assert tokens.source == path and path.stat().st_mode & 0o777 == 0o600
    token = path.read_text().strip()
    assert len(token) >= 40 and tokens.check(token) and not tokens.check(token[:-1])


def test_unknown_route_is_an_operation_outcome(client: Client) -> None:
    resp = client.get("/Patient/123")
    assert resp.status_code == 404
    assert resp.json()["resourceType"] == "OperationOutcome"
    assert resp.json()["issue"][0]["code"] == "not-found"


def test_oversized_body_is_refused_with_413(client: Client) -> None:
    resp = client.post("/convert", content=b"MSH" + b"x" * (5 * 1024 * 1024), headers=AUTH)
    assert resp.status_code == 413 and resp.json()["issue"][0]["code"] == "too-costly"
