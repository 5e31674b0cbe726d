"""The audit trail on the API (docs/audit.md, "The API"):

    GET /fhir/AuditEvent?patient=&entity=&agent=&date=&type=&subtype=&outcome=&action=
                         &_count=&_after=           searchset Bundle, log order
    GET /fhir/AuditEvent/{id}                       one event, exactly as logged

for ``auditor`` and ``admin`` tokens only (``_auth.permission_for``: any other role gets
403); and ``ReadAudit``, with which every route that returns patient data writes one
BALP PatientRead / PatientQuery event (``events.api_read``): the token's name and role
(or the partner) as agents, the patients and resources returned as entities, the request
as the query; never a resource's content.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response

from ..audit import AuditLog, Party, Subject, events, parse_query, read_event, search_events
from ..config import Settings
from ..errors import GatewayError, http_status, operation_outcome
from ..store import Store, open_store
from ._http import fragment_in, fragment_issue
from ._urls import entry, link

__all__ = ["ReadAudit", "add_audit_event_routes", "read_audit"]

FHIR_JSON = "application/fhir+json"


class ReadAudit:
    """Writes the API's read events, in a commit of their own after the read (a failed
    write is logged and counted, as every audit write: it never fails the read)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._lock = threading.Lock()
        self._store: Store | None = None
        self._log: AuditLog | None = None

    def log(self) -> AuditLog:
        with self._lock:
            if self._log is None:
                self._store = open_store(self.settings)
                self._log = AuditLog(self._store)
            return self._log

    def close(self) -> None:
        with self._lock:
            if self._store is not None:
                self._store.close()
            self._store = self._log = None

    def event(
        self,
        request: Request,
        *,
        interaction: str,
        patients: Iterable[str | None] = (),
        records: Iterable[str] = (),
        partner: str | None = None,
        query: str | None = None,
    ) -> dict[str, Any]:
        """The api-read event of a request: ``interaction`` read or search-type;
        ``partner``: a partner's credentials read (else the request's API token);
        ``query``: the GET asked (a batch entry's), else the request's own."""
        peer = request.client.host if request.client else None
        principal = getattr(request.state, "principal", None)
        if partner is not None:
            client: str | Party = Party("partner", partner, peer, role=events.DESTINATION_ROLE)
            user, role = None, None
        else:
            name = principal.name if principal is not None else "unknown"
            client, user = Party("system", name, peer, role=events.DESTINATION_ROLE), name
            role = principal.role if principal is not None else None
        found = [p for p in dict.fromkeys(patients) if p]
        if query is None:
            query = f"{request.method} {request.url.path}"
            if request.url.query:
                query += "?" + request.url.query
        return events.api_read(
            client,
            user,
            Subject(found[0] if found else None, tuple(dict.fromkeys(records))),
            interaction=interaction,
            role=role,
            query=query,
            patients=found[1:],
        )

    def write(self, request: Request, **what: Any) -> None:
        """Build and append the request's event (call it off the event loop)."""
        if not self.settings.audit_enabled:
            return
        self.log().record_guarded(None, self.event(request, **what))

    def write_all(self, found: list[dict[str, Any]]) -> None:
        """Append events made by :meth:`event` (a batch's: one per entry), in one commit."""
        if not self.settings.audit_enabled or not found:
            return
        self.log().record_guarded(None, *found)


def read_audit(app: FastAPI, settings: Settings) -> ReadAudit:
    """The app's one ReadAudit (``app.state.read_audit``), made at first ask."""
    found = getattr(app.state, "read_audit", None)
    if found is None:
        found = app.state.read_audit = ReadAudit(settings)
    assert isinstance(found, ReadAudit)
    return found


def _fhir(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(body), status, headers, media_type=FHIR_JSON)


def _error(exc: GatewayError) -> Response:
    return _fhir(operation_outcome([exc.issue]), http_status([exc.issue]))


def add_audit_event_routes(
    app: FastAPI,
    settings: Settings,
    unauthorized: Callable[[Request], Response | None],
) -> None:
    """``GET /fhir/AuditEvent`` and ``/fhir/AuditEvent/{id}``; register before the
    generic ``/fhir/{type}`` routes (FastAPI matches in order)."""
    audit = read_audit(app, settings)

    @app.get("/fhir/AuditEvent")
    async def audit_search(request: Request) -> Response:
        refused = unauthorized(request)  # auditor and admin only (_auth.permission_for)
        if refused is not None:
            return refused
        if fragment_in(request.scope):  # read as data (a value, an id): never answered
            return _fhir(operation_outcome([fragment_issue()]), 400)

        def run() -> dict[str, Any]:
            query = parse_query(request.query_params.multi_items())
            page, after = search_events(audit.log(), query)
            public = settings.inbound_public_url  # never the request's Host (_urls.py)
            links = [{"relation": "self", "url": link(request, public)}]
            if after is not None:
                links.append({"relation": "next", "url": link(request, public, _after=after)})
            bundle = {
                "resourceType": "Bundle",
                "type": "searchset",
                "link": links,
                "entry": [entry(public, f"AuditEvent/{e.event_id}", event) for e, event in page],
            }
            audit.write(
                request,
                interaction="search-type",
                patients=[p for _, e in page for p in _patients_of(e)],
                records=[f"AuditEvent/{entry.event_id}" for entry, _ in page],
            )
            return bundle

        try:
            return _fhir(await run_in_threadpool(run))
        except GatewayError as exc:
            return _error(exc)

    @app.get("/fhir/AuditEvent/{event_id}")
    async def audit_read(request: Request, event_id: str) -> Response:
        refused = unauthorized(request)
        if refused is not None:
            return refused
        if fragment_in(request.scope):  # read as data (a value, an id): never answered
            return _fhir(operation_outcome([fragment_issue()]), 400)

        def run() -> dict[str, Any]:
            entry, event = read_event(audit.log(), event_id)
            audit.write(
                request,
                interaction="read",
                patients=_patients_of(event),
                records=[f"AuditEvent/{entry.event_id}"],
            )
            return event

        try:
            return _fhir(await run_in_threadpool(run))
        except GatewayError as exc:
            return _error(exc)


def _patients_of(event: dict[str, Any]) -> list[str]:
    """The patients an event names (references or system|value), as the log keys them."""
    out = []
    for entity in event.get("entity") or []:
        role = entity.get("role") or {}
        if role.get("system") != events.OBJECT_ROLE or role.get("code") != "1":
            continue
        what = entity.get("what") or {}
        ident = what.get("identifier") or {}
        ref = what.get("reference") or (
            f"{ident.get('system')}|{ident.get('value')}" if ident else None
        )
        if ref:
            out.append(str(ref))
    return out
