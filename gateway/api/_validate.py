"""``POST /$validate`` and ``POST /{type}/$validate``: FHIR's validate operation
(R4 resource-operation-validate) with the gateway's validator.

The body is the resource itself (a Bundle is validated with its entries) or a FHIR
Parameters with a ``resource`` parameter and optionally ``profile`` (valueUri or
valueCanonical; ``?profile=`` works too, the Parameters' one wins). The answer is an
OperationOutcome with status 200 whether or not the resource is valid, as the operation
defines: one ``information`` issue ("All OK") when it is, else its errors and warnings,
each with the element's FHIRPath in ``expression``. 400 for a body that is not a FHIR
resource in JSON, or of another type than ``{type}``; 401 without a token; 413 above
the size limit.

Registered by ``create_app`` with one call: ``add_validate_routes(app, ...)``.
"""

from __future__ import annotations

import threading
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response

from ..errors import GatewayError, IntakeError, Issue, operation_outcome
from ..validate_cli import all_ok, check_resource, parse_resource

__all__ = ["MAX_VALIDATE_BODY", "add_validate_routes", "validate_request"]

FHIR_JSON = "application/fhir+json"
MAX_VALIDATE_BODY = 16 * 1024 * 1024  # a transaction Bundle with embedded report PDFs
_PROFILE_VALUES = ("valueUri", "valueCanonical", "valueString")


def _outcome(issues: list[Issue], status: int) -> Response:
    return Response(orjson.dumps(operation_outcome(issues)), status, media_type=FHIR_JSON)


def _unwrap(body: dict[str, Any]) -> tuple[dict[str, Any], str | None]:
    """The resource to validate and the profile a Parameters body names (None: the body
    is the resource). A Parameters without a ``resource`` parameter is itself validated."""
    if body.get("resourceType") != "Parameters":
        return body, None
    parameters = body.get("parameter")
    if not isinstance(parameters, list):
        return body, None
    resource: dict[str, Any] | None = None
    profile: str | None = None
    for n, parameter in enumerate(parameters):
        if not isinstance(parameter, dict):
            continue
        if parameter.get("name") == "resource":
            if not isinstance(parameter.get("resource"), dict):
                raise IntakeError(
                    "not-a-resource",
                    "the parameter 'resource' holds no resource",
                    expression=f"Parameters.parameter[{n}].resource",
                )
            resource = parameter["resource"]
        elif parameter.get("name") == "profile":
            value = next((parameter[k] for k in _PROFILE_VALUES if k in parameter), None)
            if not isinstance(value, str) or not value:
                raise IntakeError(
                    "not-a-resource",
                    "the parameter 'profile' holds no canonical URL (valueUri or valueCanonical)",
                    expression=f"Parameters.parameter[{n}]",
                )
            profile = value
    if resource is None:
        return body, profile
    return resource, profile


def validate_request(
    body: bytes, resource_type: str | None, profile: str | None
) -> tuple[list[Issue], int]:
    """(the OperationOutcome's issues, the HTTP status) for one $validate request."""
    try:
        resource, named = _unwrap(parse_resource(body, "the body"))
        rtype = resource.get("resourceType")
        if resource_type is not None and rtype != resource_type:
            issue = Issue(
                "request.resource-type",
                f"the resource is a {rtype}, not a {resource_type} as the URL says",
                location="type",
                details={"issue_type": "invalid"},
            )
            return [issue], 400
        issues = check_resource(resource, named or profile)
    except GatewayError as exc:  # not JSON, not a resource, a profile we cannot check
        return [exc.issue], 400
    return issues or [all_ok()], 200


def add_validate_routes(
    app: FastAPI,
    unauthorized: Callable[[Request], Response | None],
    read_body: Callable[[Request, int], Awaitable[bytes | Response]],
) -> None:
    # The default validator learns structures as it goes (gateway/validation): one
    # request at a time uses it.
    lock = threading.Lock()

    def run(body: bytes, resource_type: str | None, profile: str | None) -> Response:
        with lock:
            issues, status = validate_request(body, resource_type, profile)
        return _outcome(issues, status)

    async def handle(request: Request, resource_type: str | None, profile: str | None) -> Response:
        refused = unauthorized(request)
        if refused is not None:
            return refused
        body = await read_body(request, MAX_VALIDATE_BODY)
        if isinstance(body, Response):
            return body
        return await run_in_threadpool(run, body, resource_type, profile)

    @app.post("/$validate")
    async def validate(request: Request, profile: str | None = None) -> Response:
        """Validate a FHIR resource (or Bundle), or the ``resource`` of a Parameters."""
        return await handle(request, None, profile)

    @app.post("/{resource_type}/$validate")
    async def validate_type(
        request: Request, resource_type: str, profile: str | None = None
    ) -> Response:
        """Validate a resource of the type the URL names."""
        return await handle(request, resource_type, profile)
