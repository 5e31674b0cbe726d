"""The HTTP API (FastAPI).

    GET  /health     liveness and what the gateway converts (no auth)
    GET  /metadata   CapabilityStatement (no auth, as FHIR servers do)
    GET  /health/live, /health/ready, /metrics   probes and Prometheus (no auth)
    POST /convert    raw record(s) in, transaction Bundle out (Bearer token); the
                     format comes from ?format=, else the Content-Type, else the bytes
    POST /report/variants?lang=bilingual|for=HKPMC&format=json|pdf|html
                     a DiagnosticReport (or a Bundle holding one) in, its language
                     variant out (Bearer token); with the English report of a partner,
                     send a FHIR Parameters resource: parameter 'report' and 'english'
    POST /$validate, POST /{type}/$validate [?profile=URL]
                     a FHIR resource (or Parameters with 'resource', 'profile') in, its
                     OperationOutcome out (200; "All OK" when valid) (Bearer token)

Every error is a FHIR OperationOutcome: 400 for input that is not a readable record
(framing, charset, syntax), 422 for a readable record that cannot be mapped or
validated, 500 for a record the gateway failed on (an internal error, logged with its
traceback, never sent), 401 without a valid token, 408 for a body that does not arrive
in time, 413 for oversized bodies.

Conversions take turns under one lock in FastAPI's thread pool; report variants render
in worker processes (``VariantPool``), so a long render never delays ``/convert``.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import orjson
from fastapi import FastAPI, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from fastapi_offline import FastAPIOffline
from starlette.exceptions import HTTPException as StarletteHTTPException

from .. import __version__
from ..config import Settings
from ..console import create_console
from ..envelope import Record
from ..errors import (
    ConfigError,
    GatewayError,
    IntakeError,
    Issue,
    http_status,
    nul_message,
    operation_outcome,
    shape,
)
from ..intake import FORMATS
from ..logs import safe_traceback
from ..metrics import add_metrics_route
from ..pipeline import Converter, internal_issue
from ..reports import VariantPool, WorkerCrash
from ..validation.igpub import root_resources
from ._auth import AccessDenied, TokenSet, load_tokens
from ._dicomweb import add_dicomweb_routes
from ._docs import DOCS_ASSETS, add_docs_routes
from ._fhir import add_fhir_routes
from ._health import LazyStore, add_health_routes
from ._http import RefuseNul
from ._messages import add_message_routes
from ._openapi import install_openapi
from ._policy import add_policy_routes
from ._validate import add_validate_routes
from ._verify import add_verify_route

__all__ = ["create_app"]

log = logging.getLogger("gateway.api")

FHIR_JSON = "application/fhir+json"
MAX_BODY = 4 * 1024 * 1024  # a referral with embedded documents stays far below this
MAX_DICOM_BODY = 64 * 1024 * 1024  # a zip of a study's headers-and-pixels, within reason
MIN_BODY_RATE = 64 * 1024  # bytes/s a body must keep up once past api_body_timeout
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


def _nul_refused(where: str) -> Response:
    issue = Issue(
        "request.invalid", nul_message(where), location=where, details={"issue_type": "invalid"}
    )
    return _outcome([issue], 400)


def _too_large(limit: int) -> Response:
    issue = Issue(
        "request.too-large",
        f"body is larger than {limit} bytes",
        details={"issue_type": "too-costly"},
    )
    return _outcome([issue], 413)


API_DESCRIPTION = (
    "HL7 v2, DICOM and CDA records in, FHIR R4 transaction Bundles out; language "
    "variants of imaging reports. Every route but /health and /metadata needs a Bearer "
    "token (Authorize). Errors are FHIR OperationOutcomes with the gateway's error code; "
    "they never hold patient data: a bad value is described by its form, letters as A, "
    "digits as 9 (docs/api.md, docs/errors.md)."
)

_REASONS = {400: "Bad Request", 422: "Unprocessable", 500: "Internal Server Error"}


def _status_for(record: Record) -> int:
    """The registered status of the record's errors (gateway/errors.yaml): 500 for a
    failure of the gateway itself, else 400 unreadable input, 422 unmappable record."""
    return http_status(record.errors)


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
                "html or pdf). POST /$verify with a signed Bundle or PDF returns an "
                "OperationOutcome, one issue per signature.",
                "security": {
                    "cors": False,
                    "description": "Bearer token in the Authorization header (tokens from "
                    "api_token_file or $GATEWAY_HOME/secrets/api-tokens).",
                },
                # the consents: POST and GET /Consent (_policy.py; igpub.py); /fhir's
                # resources are GET /fhir/metadata's
                "resource": root_resources(),
                "operation": [
                    {
                        "name": "convert",
                        "definition": "urn:fhir-gateway:OperationDefinition/convert",
                    },
                    {
                        "name": "report-variants",
                        "definition": "urn:fhir-gateway:OperationDefinition/report-variants",
                    },
                    {
                        "name": "validate",
                        "definition": "http://hl7.org/fhir/OperationDefinition/Resource-validate",
                    },
                    {  # POST /$verify (_verify.py): a system operation
                        "name": "verify",
                        "definition": "urn:fhir-gateway:OperationDefinition/verify",
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
    reports = VariantPool(converter.settings)
    ops_store = LazyStore(settings)  # /health/ready and /metrics read the store

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        reports.shutdown()
        ops_store.close()

    # Swagger UI (/docs) and ReDoc (/redoc) from the files fastapi-offline installs
    # (_docs.py): a hospital network without internet still has its API documentation.
    app = FastAPIOffline(
        title="FHIR gateway",
        version=__version__,
        description=API_DESCRIPTION,
        docs_url=None,
        redoc_url=None,
        static_url=DOCS_ASSETS,
        lifespan=lifespan,
    )
    add_docs_routes(app)
    app.state.reports = reports
    # A URL holding NUL (an id, a search value): 400 naming where, before any route
    # looks it up (PostgreSQL refuses the query: a 500). Also the console's, mounted here.
    app.add_middleware(RefuseNul, refuse=_nul_refused)

    @app.get("/health")
    def health() -> dict[str, Any]:
        return {"status": "ok", "version": __version__, "converts": converter.message_types}

    @app.get("/metadata")
    def capability() -> Response:
        return _fhir(metadata)

    add_health_routes(app, settings, ops_store)  # /health/live, /health/ready (no token)
    add_metrics_route(app, settings, ops_store)  # /metrics (no token; docs/metrics.md)

    # Conversion is CPU work: it runs in FastAPI's thread pool, off the event loop, so
    # /health answers while a large batch converts. Conversions take turns: reading DICOM
    # switches pydicom's process-wide reading mode and pauses the cyclic GC for the
    # duration (intake/dicom/_scope.py), which two threads must not interleave. The
    # converter isolates each record: a fault is an `internal` issue on that record.
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
        where = f"{request.method} {request.url.path}"
        log.error("internal error on %s:\n%s", where, safe_traceback(exc))
        issue = Issue(
            "request.internal",
            "the gateway failed to process the request; see its log",
            details={"issue_type": "exception"},
        )
        return _outcome([issue], 500)

    async def read_body(request: Request, limit: int) -> bytes | Response:
        """The request's body, or the answer to send instead: 413 over ``limit``, 408 when
        it arrives too slowly."""
        try:
            body = await _read_body(request, limit, settings.api_body_timeout)
        except _BodyLate:
            return _late(settings.api_body_timeout)
        return _too_large(limit) if body is None else body

    def unauthorized(request: Request) -> Response | None:
        """None when the token's role may use this route (its Principal is then
        ``request.state.principal``, for the audit trail); else the 401 or 403."""
        try:
            request.state.principal = tokens.authorize(
                request.headers.get("authorization", ""), request.url.path
            )
        except AccessDenied as denied:
            return _outcome([denied.issue], denied.status, denied.headers)
        return None

    add_dicomweb_routes(app, settings, unauthorized)  # STOW-RS: docs/listeners-dicom.md

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
        body = await read_body(request, MAX_BODY)
        if isinstance(body, Response):
            return body
        try:
            report, english = _report_parameters(body)
            status, content_type, out = await reports.render(report, lang, english, format, partner)
        except GatewayError as exc:
            bad_request = isinstance(exc, (IntakeError, ConfigError))
            _log_refused("report variant", exc.issue)
            return _outcome([exc.issue], 400 if bad_request else 422)
        except WorkerCrash as exc:
            log.error("internal error rendering a report variant:\n%s\n%s", exc.kind, exc.stack)
            return _outcome([internal_issue("variants", None)], 500)
        return Response(out, status, media_type=content_type)

    add_verify_route(app, settings, unauthorized, read_body)  # POST /$verify (signing)
    add_validate_routes(app, unauthorized, read_body)  # POST /$validate, /{type}/$validate

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
        body = await read_body(request, limit)
        if isinstance(body, Response):
            return body
        try:
            facility = converter.known_sender(sender) if sender else None
        except GatewayError:
            return _outcome([_unknown_sender(sender or "")], 400)
        records = await run_in_threadpool(run, body, format, facility)
        _log_failures(records)
        if len(records) == 1:
            record = records[0]
            if record.ok:
                return Response(record.bundle_json, 200, media_type=FHIR_JSON)
            return _outcome(record.issues, _status_for(record))
        return _fhir(_batch_response(records))

    add_message_routes(app, settings, unauthorized)  # GET /messages, $reprocess (the store)
    messages = app.state.messages  # the console shares the store and converter (docs/console.md)
    app.mount(
        "/console",
        create_console(settings, messages.store, messages.converter, messages.convert_lock),
    )
    add_policy_routes(app, settings, unauthorized)  # /policy/check, /policy/decisions, /Consent
    add_fhir_routes(app, settings, unauthorized, read_body)  # POST /fhir, /auth/token (inbound)
    install_openapi(app, converter, lock)  # bodies, examples, responses, the bearer scheme
    return app


def _unknown_sender(sender: str) -> Issue:
    """?sender= naming no institution, without the server's network file path (the
    pipeline's message names it, which serves the CLI's user, not an API client)."""
    return Issue(
        "config.unknown-sender",
        f"?sender= names no institution of the gateway's network (value of form "
        f"{shape(sender, 20)}): give the facility code of the hospital that sent the "
        "record, as the network lists it (e.g. the code in its HL7 v2 MSH-4)",
        location="sender",
        details={"issue_type": "value"},
    )


def _log_failures(records: list[Record]) -> None:
    """A warning line per record the API could not convert: which record (control id or
    position), where and why (field, error code), never its data (docs/api.md)."""
    for record in records:
        if not record.ok:
            for issue in record.errors:
                _log_refused("convert", issue, record)


def _log_refused(route: str, issue: Issue, record: Record | None = None) -> None:
    place = issue.location or issue.fhirpath  # the source field, else the FHIR element
    where = f" at {place}" if place else ""
    log.warning(
        "%s: %s failed%s [%s]",
        route,
        record.log_id if record is not None else "request",
        where,
        issue.code,
        extra={
            "record": record.log_id if record is not None else None,
            "stage": issue.code.partition(".")[0] if record is None else _stage(record),
            "outcome": "failed",
            "code": issue.code,
        },
    )


def _stage(record: Record) -> str | None:
    return record.history[-1].stage if record.history else None


def _report_parameters(body: bytes) -> tuple[bytes, bytes | None]:
    """The report and the optional English report of a variants request: the body
    itself, or the 'report' and 'english' resources of a FHIR Parameters body."""
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        return body, None  # the variants stage says what is wrong with it
    if not isinstance(parsed, dict) or parsed.get("resourceType") != "Parameters":
        return body, None
    parameters = parsed.get("parameter")
    if not isinstance(parameters, list):
        raise IntakeError(
            "report-parameters",
            f"Parameters.parameter is not a list (value of form {shape(parameters)})",
            expression="Parameters.parameter",
        )
    found: dict[str, bytes] = {}
    for n, parameter in enumerate(parameters):
        if not isinstance(parameter, dict) or parameter.get("name") not in ("report", "english"):
            continue  # other parameters are not ours to read
        name = str(parameter["name"])
        if not isinstance(parameter.get("resource"), dict):
            raise IntakeError(
                "report-parameters",
                f"the parameter {name!r} holds no resource",
                expression=f"Parameters.parameter[{n}].resource",
            )
        if name in found:
            raise IntakeError(
                "report-parameters",
                f"more than one parameter {name!r}: a request joins one report and at "
                "most one English report",
                expression=f"Parameters.parameter[{n}]",
            )
        found[name] = orjson.dumps(parameter["resource"])
    if "report" not in found:
        raise IntakeError(
            "report-parameters",
            "a Parameters body needs a parameter 'report' holding the DiagnosticReport "
            "(or a Bundle with it); 'english' is optional",
            expression="Parameters.parameter",
        )
    return found["report"], found.get("english")


class _BodyLate(Exception):
    """The body stopped arriving (``api_body_timeout``)."""


async def _read_body(request: Request, limit: int, timeout: float) -> bytes | None:
    """The request body, or None when it is larger than ``limit`` (refused before
    reading when Content-Length says so). _BodyLate when a piece takes more than
    ``timeout`` seconds, or the whole more than ``timeout`` plus a second per
    MIN_BODY_RATE bytes: a client trickling bytes cannot hold a connection."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        return None
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    body = bytearray()
    chunks = request.stream().__aiter__()
    while True:
        wait = min(timeout, deadline + len(body) / MIN_BODY_RATE - loop.time())
        try:
            async with asyncio.timeout(max(wait, 0)):
                chunk = await anext(chunks)
        except StopAsyncIteration:
            return bytes(body)
        except TimeoutError:
            raise _BodyLate from None
        body += chunk
        if len(body) > limit:
            return None


def _late(timeout: float) -> Response:
    issue = Issue(
        "request.timeout",
        f"the request body did not arrive in time (api_body_timeout {timeout:g} s)",
        details={"issue_type": "timeout"},
    )
    return _outcome([issue], 408, {"Connection": "close"})


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
                        "status": f"{status} {_REASONS[status]}",
                        "outcome": operation_outcome(record.issues),
                    }
                }
            )
    return {"resourceType": "Bundle", "type": "batch-response", "entry": entries}
