"""The cross-border policy on the API (Bearer token):

    POST /policy/check?to=&from=&purpose=   a Bundle in; its decision out (nothing sent,
                                            nothing stored): rules, reasons in zh-Hans,
                                            zh-Hant and en, changes, the OperationOutcome
    GET  /policy/decisions?message=&outcome=&limit=   stored decisions, newest first
    GET  /policy/decisions/{id}             one stored decision (read-back for audit)
    POST /Consent                           import a FHIR Consent; held records it now
                                            allows are released (201 with Location when
                                            new, 200 when a new version of one on file,
                                            as FHIR's create and update: ETag,
                                            Last-Modified, Content-Location, the Consent
                                            stored; Prefer: return=minimal|representation
                                            |OperationOutcome; If-Match honoured)
    GET  /Consent?patient=SYSTEM|VALUE      consents on file (a searchset Bundle)
    GET  /Consent/{id}                      one (read: its current version; 304 Not
                                            Modified to If-None-Match/If-Modified-Since)
    GET  /Consent/{id}/_history/{vid}       vread: the current version only (the one
                                            kept); another is 404
    POST /Consent/{id}/$withdraw            withdraw (status inactive; a new version; one
                                            withdrawn already answered as it is; If-Match)

The consent writes' audit events name the token's client as the operator (the CLI's,
the OS account). Errors are OperationOutcomes with the status registered for their code.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response

from ..audit import PSEUDONYM, message_subject
from ..config import Settings
from ..errors import GatewayError, Issue, http_status, operation_outcome, shape
from ..policy import ConsentRecord, Decision, Policy, PolicyError, PolicyRecords, Released
from ..store import is_row_id, open_store
from ._auditing import read_audit
from ._http import http_date, unchanged_read

__all__ = ["add_policy_routes"]

JSON = "application/json"
FHIR_JSON = "application/fhir+json"
MAX_BODY = 4 * 1024 * 1024


class _Lazy:
    """The policy and its records, made at the first request that needs them."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._records: PolicyRecords | None = None
        self._lock = threading.Lock()

    def records(self) -> PolicyRecords:
        with self._lock:
            if self._records is None:
                self._records = PolicyRecords(open_store(self.settings), Policy(self.settings))
            return self._records


def _json(body: Any, status: int = 200, media: str = JSON) -> Response:
    return Response(orjson.dumps(body), status, media_type=media)


def _error(exc: GatewayError) -> Response:
    return _json(operation_outcome([exc.issue]), http_status([exc.issue]), FHIR_JSON)


def _preferred(request: Request) -> str | None:
    """The ``return`` preference of a Prefer header (RFC 7240; FHIR http.html#ops):
    minimal, representation or OperationOutcome; None when absent or another value."""
    for part in request.headers.get("prefer", "").split(","):
        name, _, value = part.split(";")[0].strip().partition("=")
        if name.strip().lower() == "return":
            found = value.strip().strip('"')
            if found in ("minimal", "representation", "OperationOutcome"):
                return found
    return None


def _if_match(request: Request) -> list[str] | None:
    """The versions an If-Match header names (RFC 9110 13.1.1: entity tags, weak or
    strong, as the gateway's ETag W/"vid" and FHIR clients send them; ``*`` any); None
    without the header. A tag that is no version of ours matches nothing (412)."""
    header = request.headers.get("if-match")
    if header is None:
        return None
    tags = [t.strip() for t in header.split(",")]
    return [t.removeprefix("W/").strip('"') for t in tags if t]


def _created(
    request: Request, public: str | None, record: ConsentRecord, released: list[Released]
) -> Response:
    """FHIR create's answer (http.html#create) for a Consent new to the gateway: 201 and
    Location; FHIR update's (http.html#update) for a new version of one on file (the
    route is a create-or-update by id): 200, no Location (RFC 9110: a 200 creates no
    resource). Both: ETag, Last-Modified, Content-Location of the version made
    ([base]/Consent/id/_history/vid; under inbound_public_url, else an absolute path:
    never made from the Host); the body as Prefer asks, the Consent stored by default.
    The held records released name their messages in X-Gateway-Released (and as issues
    with return=OperationOutcome)."""
    where = f"{public or ''}/Consent/{record.id}/_history/{record.version}"
    created = record.version == 1  # the first version: no Consent of that id was on file
    status = 201 if created else 200
    headers = {
        **({"Location": where} if created else {}),
        "Content-Location": where,
        **_versioned(record),
        "X-Gateway-Released": ",".join(str(r.message_id) for r in released) or "none",
    }
    preferred = _preferred(request)
    if preferred is not None:
        headers["Preference-Applied"] = f"return={preferred}"
    if preferred == "minimal":
        return Response(b"", status, headers)
    if preferred == "OperationOutcome":
        issues = [_kept(record), *(_released(r) for r in released)]
        return Response(orjson.dumps(operation_outcome(issues)), status, headers, FHIR_JSON)
    return Response(record.resource, status, headers, FHIR_JSON)


def _versioned(record: ConsentRecord) -> dict[str, str]:
    """ETag and Last-Modified of a Consent's version (FHIR http.html#versioning)."""
    headers = {"ETag": f'W/"{record.version}"'}
    if record.last_updated:  # one stored before the gateway stamped them has none
        headers["Last-Modified"] = http_date(record.last_updated)
    return headers


def _kept(record: ConsentRecord) -> Issue:
    return Issue(
        "policy.consent-kept",
        f"Consent/{record.id} version {record.version} is on file ({record.status})",
        severity="information",
    )


def _released(released: Released) -> Issue:
    decision = released.decision
    return Issue(
        "policy.released",
        f"message {released.message_id}: held, now {decision.outcome} (decision {decision.id})",
        severity="information",
    )


def _decision(decision: Decision) -> dict[str, Any]:
    return dict(decision.to_json(), operationOutcome=decision.operation_outcome())


def _decisions_read(found: list[Decision], interaction: str) -> dict[str, Any]:
    """What an api-read event names of the decisions read: their patients (by the
    policy's keyed pseudonym) and stored messages."""
    return {
        "interaction": interaction,
        "patients": [f"{PSEUDONYM}|{p}" for d in found for p in d.patients],
        "records": [r for d in found for r in message_subject(d.message_id).records],
    }


def add_policy_routes(
    app: FastAPI, settings: Settings, unauthorized: Callable[[Request], Response | None]
) -> None:
    lazy = _Lazy(settings)
    audit = read_audit(app, settings)  # reads of decisions and consents: api-read events

    async def body_of(request: Request) -> bytes:
        body = await request.body()
        if len(body) > MAX_BODY:
            raise PolicyError("too-large", f"body is larger than {MAX_BODY} bytes")
        return body

    @app.post("/policy/check")
    async def policy_check(
        request: Request,
        to: str | None = None,
        purpose: str | None = None,
        sender: str | None = None,
    ) -> Response:
        # Parameters are checked here, after the token: FastAPI would answer a missing
        # required one with 400 before any handler code, telling strangers the API's shape.
        refused = unauthorized(request)
        if refused is not None:
            return refused
        sender = sender or request.query_params.get("from")
        try:
            if not to:
                raise PolicyError("no-recipient", "give the recipient: ?to=", location="to")
            body = await body_of(request)

            def run() -> Decision:
                records = lazy.records()
                who = sender or records.policy.sender_of(body)
                if who is None:
                    raise PolicyError(
                        "no-sender",
                        "the Bundle does not say who sent it: give ?from=",
                        location="from",
                    )
                return records.policy.decide(
                    body, who, to, purpose, consents=records, counters=records
                )

            decision = await run_in_threadpool(run)
        except GatewayError as exc:
            return _error(exc)
        return _json(_decision(decision))

    @app.get("/policy/decisions")
    async def policy_decisions(
        request: Request, message: int | None = None, outcome: str | None = None, limit: int = 50
    ) -> Response:
        refused = unauthorized(request)
        if refused is not None:
            return refused
        found = await run_in_threadpool(
            lambda: lazy.records().find(message_id=message, outcome=outcome, limit=limit)
        )
        await run_in_threadpool(audit.write, request, **_decisions_read(found, "search-type"))
        return _json([_decision(d) for d in found])

    @app.get("/policy/decisions/{decision_id}")
    async def policy_decision(request: Request, decision_id: str) -> Response:
        refused = unauthorized(request)
        if refused is not None:
            return refused
        try:
            if not is_row_id(decision_id):  # not a 500 from int() or the database
                raise PolicyError(
                    "decision-not-found", "a decision id is a number", location="decision_id"
                )
            number = int(decision_id)
            decision = await run_in_threadpool(lambda: lazy.records().get(number))
        except GatewayError as exc:
            return _error(exc)
        await run_in_threadpool(audit.write, request, **_decisions_read([decision], "read"))
        return _json(_decision(decision))

    @app.post("/Consent")
    async def consent_import(request: Request) -> Response:
        refused = unauthorized(request)
        if refused is not None:
            return refused
        try:
            body = await body_of(request)
            expected = _if_match(request)
            who = _client_name(request)
            record, released = await run_in_threadpool(
                lambda: lazy.records().import_consent(body, operator=who, if_match=expected)
            )
        except GatewayError as exc:
            return _error(exc)
        return _created(request, settings.inbound_public_url, record, released)

    @app.get("/Consent")
    async def consent_list(request: Request, patient: str | None = None) -> Response:
        refused = unauthorized(request)
        if refused is not None:
            return refused
        found = await run_in_threadpool(lambda: lazy.records().list_consents(patient))
        await run_in_threadpool(
            audit.write, request, interaction="search-type",
            patients=[patient, *(r.patient for r in found)],
            records=[f"Consent/{r.id}" for r in found],
        )  # fmt: skip
        bundle = {
            "resourceType": "Bundle",
            "type": "searchset",
            "total": len(found),
            "entry": [{"resource": orjson.loads(r.resource)} for r in found],
        }
        return _json(bundle, media=FHIR_JSON)

    async def consent_read(request: Request, consent_id: str, version: str | None) -> Response:
        """read, or vread of ``version``: the current version is the only one kept."""
        refused = unauthorized(request)
        if refused is not None:
            return refused
        try:
            record = await run_in_threadpool(lambda: lazy.records().read_consent(consent_id))
            if version is not None and version != str(record.version):
                raise _version_not_found(record, version)
        except GatewayError as exc:
            return _error(exc)
        await run_in_threadpool(
            audit.write, request, interaction="vread" if version else "read",
            patients=[record.patient], records=[f"Consent/{record.id}"],
        )  # fmt: skip
        # a conditional read, as GET /fhir/{type}/{id} answers one: a Consent stored
        # before the gateway stamped lastUpdated has no Last-Modified (its date says nothing)
        if version is None and unchanged_read(request.headers, record.version, record.last_updated):
            return Response(status_code=304, headers=_versioned(record))  # the one it holds
        return Response(record.resource, 200, _versioned(record), FHIR_JSON)

    @app.get("/Consent/{consent_id}")
    async def consent_get(request: Request, consent_id: str) -> Response:
        return await consent_read(request, consent_id, None)

    @app.get("/Consent/{consent_id}/_history/{version_id}")
    async def consent_vread(request: Request, consent_id: str, version_id: str) -> Response:
        return await consent_read(request, consent_id, version_id)

    @app.post("/Consent/{consent_id}/$withdraw")
    async def consent_withdraw(request: Request, consent_id: str) -> Response:
        refused = unauthorized(request)
        if refused is not None:
            return refused
        expected = _if_match(request)
        who = _client_name(request)
        try:
            record = await run_in_threadpool(
                lambda: lazy.records().withdraw(consent_id, operator=who, if_match=expected)
            )
        except GatewayError as exc:
            return _error(exc)
        # a new version, or the one on file when it was withdrawn already
        return Response(record.resource, 200, _versioned(record), FHIR_JSON)


def _client_name(request: Request) -> str:
    """Who changes a Consent over the API, as its audit event names the actor: the
    authenticated client (the token's name, else its fingerprint: ``unauthorized()``
    set ``request.state.principal``), as ``$reprocess`` names it and the CLI names the
    OS account."""
    principal = request.state.principal
    assert principal is not None  # unauthorized() answered None: it set one
    return str(principal.name)


def _version_not_found(record: ConsentRecord, version: str) -> PolicyError:
    """FHIR's vread of a version not kept: 404, the version named (its form when it is
    no version number: the path is the requester's text), and the one on file."""
    named = version if version.isascii() and version.isdigit() and len(version) < 12 else None
    return PolicyError(
        "consent-version-not-found",
        f"Consent/{record.id} has no version {named or shape(version)} on file: the gateway "
        f"keeps only a Consent's current version, {record.version} (GET /Consent/{record.id})",
        location="Consent.meta.versionId",
    )
