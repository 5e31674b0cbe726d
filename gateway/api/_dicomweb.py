"""DICOMweb routes: STOW-RS (PS3.18 §10.5) and the explicit commit of a study.

    POST /dicomweb/studies                   multipart/related; type="application/dicom"
    POST /dicomweb/studies/{study}           the same, every instance of study {study}
    POST /dicomweb/studies/{study}/$commit   convert the study's stored instances now

STOW answers with a Store Instances Response (application/dicom+json): the instances
stored in ReferencedSOPSequence, the others in FailedSOPSequence with their
FailureReason (0xA700 the store could not keep it, 0xA900 another study than the URL
names, 0xC000 not a readable DICOM instance). 200 when all were stored, 202 when some
were, 409 when none could be read, 503 when the store kept none. Each instance is
committed to the store before the response says so; the study is converted once it
has been quiet for ``dicom_quiet_seconds`` or on ``$commit``. ``$commit`` answers 200
converted, 422 failed, or 202 ``"state": "converting"`` when another process took the
same instances and had not finished within ``dicom_commit_wait_seconds``; a study
converted (or refused) before, with nothing new pending, answers that outcome again
(a retry after a timeout); 404 a study never received. Bearer token, as every API route.
A token bound to an institution (api-tokens: ``TOKEN ROLE NAME INSTITUTION``) stores a
request only when every study in it names that institution; else 403 with an
OperationOutcome, one ``intake.dicom-sender-mismatch`` issue per refused study, nothing
of the request stored, each refused study kept as a rejected message.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import replace

import orjson
from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response

from ..config import Settings
from ..errors import GatewayError, Issue, operation_outcome
from ..listeners.dicom import (
    DICOM,
    OUT_OF_RESOURCES,
    CommitResult,
    DicomIntake,
    Origin,
    Outcome,
    Part,
    iter_outcomes,
    media_type,
    open_intake,
    refuse_for_sender,
    response_json,
    split_multipart,
)
from ._auth import Principal

__all__ = ["MAX_STOW_BODY", "add_dicomweb_routes"]

DICOM_JSON = "application/dicom+json"
# A study's instances with their pixels; the headers the gateway keeps are far smaller.
MAX_STOW_BODY = 512 * 1024 * 1024


def add_dicomweb_routes(
    app: FastAPI, settings: Settings, unauthorized: Callable[[Request], Response | None]
) -> None:
    """Add the DICOMweb routes. They use ``app.state.dicom_intake`` (``gateway serve``
    sets it, to share it with the C-STORE SCP and the study completer), else open one
    on first use, so an API without DICOM traffic never opens it."""
    opening = threading.Lock()

    def intake() -> DicomIntake:
        with opening:
            found: DicomIntake | None = getattr(app.state, "dicom_intake", None)
            if found is None:
                found = app.state.dicom_intake = open_intake(settings)
            return found

    async def stow(request: Request, study: str | None) -> Response:
        refused = unauthorized(request)
        if refused is not None:
            return refused
        kind, params = media_type(request.headers.get("content-type", ""))
        part_type = params.get("type", DICOM).lower()
        if kind != "multipart/related" or part_type != DICOM:
            problem = (
                'STOW-RS takes multipart/related; type="application/dicom" (DICOM Part 10 '
                "instances); DICOM JSON or XML metadata with bulk data is not supported"
            )
            issue = Issue("request.stow-media-type", problem, location="Content-Type")
            return _outcome(issue, 415)
        body = await _read_limited(request, MAX_STOW_BODY)
        if body is None:
            issue = Issue("request.too-large", f"body is larger than {MAX_STOW_BODY} bytes")
            return _outcome(issue, 413)
        try:
            parts = list(split_multipart(body, params.get("boundary", "")))
        except GatewayError as exc:
            return _outcome(exc.issue, 400)
        if not parts:
            return _outcome(Issue("request.stow-empty", "the request holds no body part"), 400)
        client = request.client
        origin = Origin("stow", f"{client.host}:{client.port}" if client else None)
        origin = _sent_by(intake(), request, origin)
        mismatched = await _refused_for_sender(intake(), request, parts, origin)
        if mismatched:
            body = orjson.dumps(operation_outcome(mismatched))
            return Response(body, 403, media_type="application/fhir+json")
        outcomes = await run_in_threadpool(iter_outcomes, intake(), iter(parts), origin, study)
        return Response(
            orjson.dumps(response_json(outcomes)),
            _stow_status(outcomes),
            media_type=DICOM_JSON,
        )

    @app.post("/dicomweb/studies")
    async def store_instances(request: Request) -> Response:
        return await stow(request, None)

    @app.post("/dicomweb/studies/{study}")
    async def store_study_instances(request: Request, study: str) -> Response:
        return await stow(request, study)

    @app.post("/dicomweb/studies/{study}/$commit")
    async def commit_study(request: Request, study: str) -> Response:
        refused = unauthorized(request)
        if refused is not None:
            return refused
        result = await run_in_threadpool(lambda: intake().commit(study))
        if result is None:
            problem = "no instance of this study was received"
            return _outcome(Issue("request.no-pending-study", problem, location="study"), 404)
        body = {
            "study": result.study_uid,
            "message": result.message_id,
            "instances": result.instances,
            "state": result.state,
            "converted": result.ok,
            "errors": list(result.errors),
        }
        return Response(orjson.dumps(body), _commit_status(result), media_type="application/json")


async def _refused_for_sender(
    intake: DicomIntake, request: Request, parts: list[Part], origin: Origin
) -> list[Issue]:
    """The refusals of a request by a token bound to an institution: its studies must
    name that institution (``refuse_for_sender``); none for a token bound to none."""
    principal: Principal = request.state.principal
    if principal.institution is None:
        return []
    own = intake.network.institution(principal.institution)
    return await run_in_threadpool(refuse_for_sender, intake, parts, origin, principal.name, own)


def _sent_by(intake: DicomIntake, request: Request, origin: Origin) -> Origin:
    """``origin`` with the facility of the institution a bound token stands for: kept on
    its instances, so that a later refusal of their study takes them with it."""
    bound = request.state.principal.institution
    if bound is None:
        return origin
    own = intake.network.institution(bound)
    return replace(origin, sender=own.facility if own is not None else None)


def _commit_status(result: CommitResult) -> int:
    """200 converted, 422 failed; 202 while another caller (a worker, the study
    completer) is still converting the same instances: its outcome is not a failure."""
    if result.converting:
        return 202
    return 200 if result.ok else 422


def _stow_status(outcomes: list[Outcome]) -> int:
    failed = [o for o in outcomes if o.failure is not None]
    if not failed:
        return 200
    if len(failed) < len(outcomes):
        return 202
    return 503 if all(o.failure == OUT_OF_RESOURCES for o in failed) else 409


def _outcome(issue: Issue, status: int) -> Response:
    body = orjson.dumps(operation_outcome([issue]))
    return Response(body, status, media_type="application/fhir+json")


async def _read_limited(request: Request, limit: int) -> bytes | None:
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        return None
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            return None
    return bytes(body)
