"""``POST /$verify``: a signed Bundle (JSON) or signed PDF in; an OperationOutcome out,
one issue per signature (information when valid, error per failed check), 200 when
every signature is valid and trusted, 422 otherwise. ``?format=json``: the detailed
result (as ``gateway verify --json``). The trust store is ``signing_trust``.

Registered by ``create_app`` with one call: ``add_verify_route(app, settings, ...)``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response

from ..config import Settings
from ..errors import GatewayError, operation_outcome
from ..signing import FileReport, trust_store, verify_bytes

__all__ = ["add_verify_route", "verification_outcome"]

FHIR_JSON = "application/fhir+json"
MAX_VERIFY_BODY = 32 * 1024 * 1024  # a signed report PDF with embedded fonts fits easily


def verification_outcome(report: FileReport) -> dict[str, Any]:
    """The OperationOutcome of a verification: an error per failed check, an information
    issue (``signing.valid``) per valid signature."""
    return operation_outcome(report.issues())


def add_verify_route(
    app: FastAPI,
    settings: Settings,
    unauthorized: Callable[[Request], Response | None],
    read_body: Callable[[Request, int], Awaitable[bytes | Response]],
) -> None:
    @app.post("/$verify")
    async def verify(request: Request, format: str = "fhir") -> Response:
        refused = unauthorized(request)
        if refused is not None:
            return refused
        body = await read_body(request, MAX_VERIFY_BODY)
        if isinstance(body, Response):
            return body
        try:
            trust = trust_store(settings)
            report = await run_in_threadpool(verify_bytes, body, "request", trust)
        except GatewayError as exc:
            return Response(orjson.dumps(operation_outcome([exc.issue])), 400, media_type=FHIR_JSON)
        status = 200 if report.ok else 422
        if format == "json":
            return Response(orjson.dumps(report.to_json()), status, media_type="application/json")
        return Response(orjson.dumps(verification_outcome(report)), status, media_type=FHIR_JSON)
