"""The HTTP API (FastAPI).

    GET  /health     liveness and what the gateway converts (no auth)
    GET  /metadata   CapabilityStatement (no auth, as FHIR servers do)
    POST /convert    raw record(s) in, transaction Bundle out (Bearer token); the
                     format comes from ?format=, else the Content-Type, else the bytes
    POST /report/variants?lang=bilingual|for=HKPMC&format=json|pdf|html
                     a DiagnosticReport (or a Bundle holding one) in, its language
                     variant out (Bearer token); with the English report of a partner,
                     send a FHIR Parameters resource: parameter 'report' and 'english'

Every error is a FHIR OperationOutcome: 400 for input that is not a readable record
(framing, charset, syntax), 422 for a readable record that cannot be mapped or
validated, 401 without a valid token, 413 for oversized bodies.
"""

from __future__ import annotations

import dataclasses
import threading
from typing import Any

import orjson
from fastapi import FastAPI, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from .. import __version__
from ..config import Settings
from ..envelope import Record
from ..errors import ConfigError, GatewayError, IntakeError, Issue, operation_outcome
from ..intake import FORMATS
from ..pipeline import Converter
from ..reports import variant_response
from ._auth import TokenSet, load_tokens
from ._dicomweb import add_dicomweb_routes
from ._messages import add_message_routes

__all__ = ["create_app"]

FHIR_JSON = "application/fhir+json"
MAX_BODY = 4 * 1024 * 1024  # a referral with embedded documents stays far below this
MAX_DICOM_BODY = 64 * 1024 * 1024  # a zip of a study's headers-and-pixels, within reason
# Content types that name the input format (RFC 3240 DICOM, PS3.18 DICOM JSON,
# HL7's registered v2 and CDA types, and the generic XML/zip ones).
CONTENT_FORMATS = {
    "application/dicom": "dicom",
    "application/dicom+json": "dicom",
    "application/zip": "dicom",
    "application/hl7-v2": "hl7v2",
    "x-application/hl7-v2+er7": "hl7v2",
    "application/hl7-cda+xml": "cda",
    "application/xml": "cda",
    "text/xml": "cda",
}


def _fhir(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(body), status, headers, media_type=FHIR_JSON)


def _outcome(issues: list[Issue], status: int, headers: dict[str, str] | None = None) -> Response:
    return _fhir(operation_outcome(issues), status, headers)


def _too_large(limit: int) -> Response:
    issue = Issue(
        "request.too-large",
        f"body is larger than {limit} bytes",
        details={"issue_type": "too-costly"},
    )
    return _outcome([issue], 413)


def _status_for(record: Record) -> int:
    return 400 if any(i.code.startswith("intake.") for i in record.errors) else 422


def capability_statement(converter: Converter) -> dict[str, Any]:
    return {
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": "2026-11-23",
        "kind": "instance",
        "software": {"name": "fhir-gateway", "version": __version__},
        "implementation": {
            "description": "FHIR interoperability gateway: HL7 v2, DICOM and CDA records to "
            "FHIR R4 transaction Bundles (" + ", ".join(converter.message_types) + "), "
            "and language variants of imaging reports"
        },
        "fhirVersion": "4.0.1",
        "format": [FHIR_JSON, "json"],
        "rest": [
            {
                "mode": "server",
                "documentation": "POST /convert with a record as the body (HL7 v2 ER7, "
                "optionally MLLP-framed; DICOM Part 10, a zip of them or DICOM JSON; a CDA "
                "document) returns its transaction Bundle; the format comes from ?format=, "
                "else the Content-Type, else the bytes. POST /report/variants?lang= with a "
                "DiagnosticReport (or a Parameters resource with 'report' and 'english') "
                "returns its zh-Hans, zh-Hant-HK, en or bilingual variant (format=json, "
                "html or pdf).",
                "security": {
                    "cors": False,
                    "description": "Bearer token in the Authorization header (tokens from "
                    "api_token_file or $GATEWAY_HOME/secrets/api-tokens).",
                },
                "operation": [
                    {
                        "name": "convert",
                        "definition": "urn:fhir-gateway:OperationDefinition/convert",
                    },
                    {
                        "name": "report-variants",
                        "definition": "urn:fhir-gateway:OperationDefinition/report-variants",
                    },
                ],
            }
        ],
    }


def create_app(
    settings: Settings | None = None,
    converter: Converter | None = None,
    tokens: TokenSet | None = None,
) -> FastAPI:
    settings = settings or Settings.load()
    converter = converter or Converter(settings)
    tokens = tokens or load_tokens(settings)
    metadata = capability_statement(converter)
    app = FastAPI(title="FHIR gateway", version=__version__, docs_url="/docs")

    @app.get("/health")
    def health() -> dict[str, Any]:
        return {"status": "ok", "version": __version__, "converts": converter.message_types}

    @app.get("/metadata")
    def capability() -> Response:
        return _fhir(metadata)

    # Conversion is CPU work: it runs in FastAPI's thread pool, off the event loop, so
    # /health answers while a large batch converts. The converter's caches are shared,
    # so conversions take turns.
    lock = threading.Lock()

    def run(body: bytes, fmt: str, sender: str | None) -> list[Record]:
        with lock:
            return converter.convert(body, source="request", fmt=fmt, sender=sender)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        issue = Issue(
            f"request.http-{exc.status_code}",
            str(exc.detail),
            details={"issue_type": "not-found" if exc.status_code == 404 else "processing"},
        )
        return _outcome([issue], exc.status_code)

    @app.exception_handler(RequestValidationError)
    async def bad_request(request: Request, exc: RequestValidationError) -> Response:
        issue = Issue(
            "request.invalid",
            "the request's parameters are invalid",
            details={"issue_type": "invalid"},
        )
        return _outcome([issue], 400)

    @app.exception_handler(Exception)
    async def crashed(request: Request, exc: Exception) -> Response:  # never a bare 500
        issue = Issue(
            "request.internal",
            "the gateway failed to process the request; see its log",
            details={"issue_type": "exception"},
        )
        return _outcome([issue], 500)

    def unauthorized(request: Request) -> Response | None:
        auth = request.headers.get("authorization", "")
        scheme, _, token = auth.partition(" ")
        if scheme.lower() == "bearer" and tokens.check(token.strip()):
            return None
        issue = Issue(
            "security.unauthorized",
            "a valid Bearer token is required",
            details={"issue_type": "login"},
        )
        return _outcome([issue], 401, {"WWW-Authenticate": "Bearer"})

    add_dicomweb_routes(app, settings, unauthorized)  # STOW-RS: docs/listeners-dicom.md

    def make_variant(
        body: bytes, lang: str | None, fmt: str, partner: str | None
    ) -> tuple[int, str, bytes]:
        report, english = _report_parameters(body)
        with lock:  # the validation cache is shared with conversions
            return variant_response(
                report, lang, english, fmt, settings=converter.settings, partner=partner
            )

    @app.post("/report/variants")
    async def report_variants(
        request: Request,
        lang: str | None = None,
        format: str = "json",
        partner: str | None = Query(None, alias="for"),
    ) -> Response:
        refused = unauthorized(request)
        if refused is not None:
            return refused
        body = await _read_body(request, MAX_BODY)
        if body is None:
            return _too_large(MAX_BODY)
        try:
            status, content_type, out = await run_in_threadpool(
                make_variant, body, lang, format, partner
            )
        except GatewayError as exc:
            bad_request = isinstance(exc, (IntakeError, ConfigError))
            return _outcome([exc.issue], 400 if bad_request else 422)
        return Response(out, status, media_type=content_type)

    @app.post("/convert")
    async def convert(
        request: Request, format: str = "auto", sender: str | None = None
    ) -> Response:
        refused = unauthorized(request)
        if refused is not None:
            return refused
        if format not in ("auto", *FORMATS):
            issue = Issue(
                "request.bad-format",
                f"unknown format {format!r} ({', '.join(('auto', *FORMATS))})",
                location="format",
                details={"issue_type": "value"},
            )
            return _outcome([issue], 400)
        if format == "auto":
            content_type = request.headers.get("content-type", "").split(";")[0].strip()
            format = CONTENT_FORMATS.get(content_type.lower(), "auto")
        limit = MAX_DICOM_BODY if format == "dicom" else MAX_BODY
        body = await _read_body(request, limit)
        if body is None:
            return _too_large(limit)
        try:
            facility = converter.known_sender(sender) if sender else None
        except GatewayError as exc:
            return _outcome([dataclasses.replace(exc.issue, location="sender")], 400)
        records = await run_in_threadpool(run, body, format, facility)
        if len(records) == 1:
            record = records[0]
            if record.ok:
                return Response(record.bundle_json, 200, media_type=FHIR_JSON)
            return _outcome(record.issues, _status_for(record))
        return _fhir(_batch_response(records))

    add_message_routes(app, settings, unauthorized)  # GET /messages, $reprocess (the store)
    return app


def _report_parameters(body: bytes) -> tuple[bytes, bytes | None]:
    """The report and the optional English report of a variants request: the body
    itself, or the 'report' and 'english' resources of a FHIR Parameters body."""
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        return body, None  # the variants stage says what is wrong with it
    if not isinstance(parsed, dict) or parsed.get("resourceType") != "Parameters":
        return body, None
    found: dict[str, bytes] = {}
    for parameter in parsed.get("parameter") or []:
        if isinstance(parameter, dict) and isinstance(parameter.get("resource"), dict):
            found[str(parameter.get("name"))] = orjson.dumps(parameter["resource"])
    if "report" not in found:
        raise IntakeError(
            "report-parameters",
            "a Parameters body needs a parameter 'report' holding the DiagnosticReport "
            "(or a Bundle with it); 'english' is optional",
            location="Parameters.parameter",
        )
    return found["report"], found.get("english")


async def _read_body(request: Request, limit: int) -> bytes | None:
    """The request body, or None when it is larger than ``limit`` (refused before
    reading when Content-Length says so)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        return None
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            return None
    return bytes(body)


def _batch_response(records: list[Record]) -> dict[str, Any]:
    """Several messages in one body: a batch-response Bundle, one entry per message."""
    entries = []
    for record in records:
        if record.ok:
            entries.append({"resource": record.bundle, "response": {"status": "200 OK"}})
        else:
            status = _status_for(record)
            entries.append(
                {
                    "response": {
                        "status": f"{status} {'Bad Request' if status == 400 else 'Unprocessable'}",
                        "outcome": operation_outcome(record.issues),
                    }
                }
            )
    return {"resourceType": "Bundle", "type": "batch-response", "entry": entries}
