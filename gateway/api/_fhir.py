"""The inbound FHIR endpoint (docs/inbound.md):

    POST /fhir                         a partner's transaction or batch Bundle (partner
                                       credentials only: a partner token, a SMART access
                                       token, or a client certificate at the TLS proxy);
                                       a batch of GETs only: each answered as its GET
    POST /auth/token                   SMART Backend Services token endpoint
    GET  /fhir/.well-known/smart-configuration, GET /fhir/metadata      (no auth)
    GET  /fhir/AuditEvent[/{id}]       the audit log (auditor and admin tokens: _auditing.py)
    GET  /fhir/{type}/{id}             read      (local API token: everything; partner
    GET  /fhir/{type}?identifier=&patient=&status=&_lastUpdated=&_count=&_after=
                                       search     credentials: only what it sent)
    POST /fhir/Task/{id}/$accept|$reject|$complete   a referral's status (local API token;
                                       $reject needs ?reason= or a Parameters 'reason')

Every read and search of stored resources writes one api-read AuditEvent (who: the API
token's name and role, or the partner; what: the resources and their patients).
Registered by ``create_app`` with one call: ``add_fhir_routes(app, settings, ...)``.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Awaitable, Callable, Iterable
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qsl

import orjson
from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response
from starlette.datastructures import URL

from .. import __version__
from ..config import Settings
from ..errors import GatewayError, Issue, http_status, nul_message, operation_outcome, shape
from ..inbound import (
    ID_PATTERN,
    MAX_READ_BYTES,
    MAX_READ_RESOURCES,
    SIGNING_ALGS,
    TYPE_PATTERN,
    Authenticator,
    Inbound,
    InboundError,
    PartnerAuth,
    Read,
    Search,
    Stored,
    TokenError,
    parameter_name,
    parse_last_updated,
    parse_read,
    read_requests,
)
from ..network import Network
from ..store import Store, open_store
from ..validation.igpub import (
    STORED_SEARCH_PARAMS,
    STORED_TYPES,
    SYSTEM_INTERACTIONS,
    fhir_resources,
)
from ._auditing import ReadAudit, add_audit_event_routes, read_audit
from ._http import (
    fragment_in,
    fragment_issue,
    http_date,
    instant_since,
    not_modified,
    unchanged_read,
)
from ._server import tcp_peer
from ._urls import entry, link_of

__all__ = ["add_fhir_routes"]

log = logging.getLogger("gateway.inbound")

FHIR_JSON = "application/fhir+json"
# The search parameters of GET /fhir/{type}, as GET /fhir/metadata announces them
# (igpub.py); then the result parameters (paging), accepted but not announced
SEARCH_PARAMS = (*(name for name, _, _ in STORED_SEARCH_PARAMS), "_count", "_after")
# Most values one search ANDs and ORs (``_id``/``status`` lists, ``_lastUpdated``s): each
# is a SQL variable (SQLite takes 250,000, PostgreSQL 65,535 in all); a GET's URL is
# bounded by the HTTP server's request line, a batch entry's only by max_bundle_bytes
MAX_SEARCH_VALUES = 1000
SCOPES = ("system/*.read", "system/*.write", "system/*.rs", "system/*.cud", "system/*.cruds")


class _EntryError(Exception):
    """A batch entry's GET refused (its entry's OperationOutcome, not the request's)."""

    def __init__(self, issue: Issue) -> None:
        super().__init__(issue.code)
        self.issue = issue


class _Lazy:
    """The store, the inbound stage and the authenticator, opened at first use."""

    def __init__(self, settings: Settings, audit: ReadAudit | None = None) -> None:
        self.settings = settings
        self.audit = audit
        self._lock = threading.Lock()
        self._store: Store | None = None
        self._inbound: Inbound | None = None
        self._auth: Authenticator | None = None

    def inbound(self) -> Inbound:
        with self._lock:
            if self._inbound is None:
                self._store = open_store(self.settings)
                network = Network.load(self.settings.network)
                self._inbound = Inbound(self.settings, self._store, network)
                self._auth = Authenticator(self.settings, self._store, network)
            return self._inbound

    def auth(self) -> Authenticator:
        self.inbound()
        assert self._auth is not None
        return self._auth

    def close(self) -> None:
        with self._lock:
            if self._store is not None:
                self._store.close()
            self._store = self._inbound = self._auth = None
        if self.audit is not None:
            self.audit.close()  # the read events' database too


def _fhir(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(body), status, headers, media_type=FHIR_JSON)


def _error(issue: Issue, status: int | None = None) -> Response:
    status = status or http_status([issue])
    headers = None
    if status == 401:
        headers = {"WWW-Authenticate": 'Bearer realm="fhir-gateway", error="invalid_token"'}
    return _fhir(operation_outcome([issue]), status, headers)


def add_fhir_routes(
    app: FastAPI,
    settings: Settings,
    unauthorized: Callable[[Request], Response | None],
    read_body: Callable[[Request, int], Awaitable[bytes | Response]],
) -> None:
    audit = read_audit(app, settings)  # reads and searches are audited (api-read)
    lazy = _Lazy(settings, audit)
    app.state.fhir = lazy  # app.state.fhir.close() releases the database
    if settings.institution and not settings.inbound_public_url:
        log.warning(
            "inbound: inbound_public_url is not set: SMART Backend Services client "
            "assertions are refused (their aud must name its /auth/token)"
        )

    def partner(request: Request) -> PartnerAuth:
        header = settings.inbound_mtls_header
        return lazy.auth().authenticate(
            request.headers.get("authorization", ""),
            tcp_peer(request.scope),  # the proxy itself, not whom it forwards (_server.py)
            request.headers.get(header) if header else None,
        )

    async def reader(request: Request, resource_type: str) -> str | Response | None:
        """None: a local system (everything); a partner key: only what it sent; or the
        refusal to answer: 401/403 for credentials, then 404 for a type not served."""
        refused = unauthorized(request)
        who: PartnerAuth | None = None
        if refused is not None:
            if refused.status_code == 403:  # a valid API token whose role may not read
                return refused
            try:
                who = await run_in_threadpool(partner, request)
            except GatewayError as exc:
                return _error(exc.issue)
        if fragment_in(request.scope):  # read as data (a search value, an id), never answered
            return _error(fragment_issue())
        # after the credentials (no stranger learns more than GET /fhir/metadata says),
        # before the scope: a type the statement does not announce is not served at all
        if resource_type not in STORED_TYPES:
            return _error(_unsupported_type(resource_type))
        if who is None:
            return None
        if not who.may("read", resource_type):
            return _error(_scope_issue("read"))
        return who.partner

    @app.get("/fhir/.well-known/smart-configuration")
    def smart_configuration(request: Request) -> Response:
        public = settings.inbound_public_url  # never a URL made from the request's Host
        if not public:
            return _error(_no_public_url(), 503)
        return Response(
            orjson.dumps(
                {
                    "token_endpoint": public + "/auth/token",
                    "grant_types_supported": ["client_credentials"],
                    "token_endpoint_auth_methods_supported": ["private_key_jwt"],
                    "token_endpoint_auth_signing_alg_values_supported": list(SIGNING_ALGS),
                    "scopes_supported": list(SCOPES),
                    "capabilities": ["client-confidential-asymmetric"],
                }
            ),
            media_type="application/json",
        )

    @app.get("/fhir/metadata")
    def fhir_metadata(request: Request) -> Response:
        return _fhir(_capability(settings.inbound_public_url))  # unset: no URL, no SMART

    @app.post("/auth/token")
    async def token(request: Request) -> Response:
        body = await read_body(request, 64 * 1024)
        if isinstance(body, Response):
            return body
        form = dict(parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True))
        # the audience an assertion must name: the configured URL only, never one made
        # from the request's Host (docs/inbound.md, "Partner authentication")
        public = settings.inbound_public_url
        url = public + "/auth/token" if public else None
        try:
            answer = await run_in_threadpool(lambda: lazy.auth().issue(form, url))
        except TokenError as exc:
            return Response(
                orjson.dumps(exc.body()), exc.status, {"Cache-Control": "no-store"},
                media_type="application/json",
            )  # fmt: skip
        return Response(
            orjson.dumps(answer), 200, {"Cache-Control": "no-store", "Pragma": "no-cache"},
            media_type="application/json",
        )  # fmt: skip

    # httpx (the outbox's client) posts to its base URL with a trailing slash: "/fhir/"
    @app.post("/fhir/", include_in_schema=False)
    @app.post("/fhir")
    async def receive(request: Request) -> Response:
        try:
            who = await run_in_threadpool(partner, request)
        except GatewayError as exc:
            return _error(exc.issue)
        # neither a write nor a read of any type (system/Patient.read reads Patient in a
        # batch, as its GET does: each entry's type checked below): unread
        writer = who.may("write")
        if not writer and not any(who.may("read", t) for t in STORED_TYPES):
            return _error(_scope_issue("write"))
        media = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if media not in ("", FHIR_JSON, "application/json", "application/json+fhir"):
            return _error(_media_issue(media), 415)  # JSON only, said before it is read
        # a token that may only read sends batches of reads: read up to their bound, not
        # max_bundle_bytes (a reader's 100 MB is refused, not read and parsed to a 403)
        limit = settings.max_bundle_bytes
        if not writer:
            limit = min(MAX_READ_BYTES, limit)
        body = await read_body(request, limit)
        if isinstance(body, Response) and body.status_code == 413 and not writer:
            return _error(_reader_too_large(limit), 413)
        if isinstance(body, Response):
            return body
        try:
            reads = read_requests(body)
        except InboundError as exc:
            return _error(exc.issue)
        if reads is not None:  # a batch of GETs: asked, not sent (inbound/_readbatch.py)
            answered = await run_in_threadpool(lambda: read_batch(request, who, reads))
            return _fhir(answered)
        if not writer:
            return _error(_scope_issue("write"))
        peer = request.client.host if request.client else None  # for the audit trail
        answer = await run_in_threadpool(lambda: lazy.inbound().receive(body, who, peer))
        return _fhir(answer.body, answer.status, answer.headers)

    def read_batch(
        request: Request, who: PartnerAuth, asked: list[dict[str, Any]]
    ) -> dict[str, Any]:
        """The batch-response: each entry answered as the partner's GET of its URL, with
        its conditions (entries independent: one's error is its own), the GETs'
        api-read events appended in one commit after the reads. Nothing is stored."""
        out: list[dict[str, Any]] = []
        found: list[dict[str, Any]] = []
        left = MAX_READ_RESOURCES  # the resources the answers may still hold
        for n, entry_request in enumerate(asked):
            try:
                read = parse_read(entry_request.get("url"), n)
                answered, event, held = batch_get(request, who, read, entry_request, left)
                left -= held
            except (GatewayError, _EntryError) as exc:
                status = http_status([exc.issue])
                answered = {"response": {"status": _status_line(status),
                                         "outcome": operation_outcome([exc.issue])}}  # fmt: skip
                event = None
            out.append(answered)
            found += [event] if event is not None else []
        audit.write_all(found)
        return {"resourceType": "Bundle", "type": "batch-response", "entry": out}

    def batch_get(
        request: Request, who: PartnerAuth, read: Read, conditions: dict[str, Any], left: int
    ) -> tuple[dict[str, Any], dict[str, Any], int]:
        """One entry's GET as ``GET /fhir/{url}`` answers the partner (reader, read and
        search below), a read with the entry's ``ifNoneMatch`` / ``ifModifiedSince`` as
        the GET with If-None-Match / If-Modified-Since: its batch-response entry, its
        api-read event and the resources it holds; an error raised, also when it would
        hold more than ``left``."""
        kind = read.resource_type
        if kind not in STORED_TYPES:
            raise _EntryError(_unsupported_type(kind))
        if not who.may("read", kind):
            raise _EntryError(_scope_issue("read"))
        query = f"GET /fhir/{read.url}"
        resources = lazy.inbound().resources
        if read.id is not None:
            stored = _visible(resources, kind, read.id, who.partner)
            if stored is None:
                raise _EntryError(_not_found())
            updated = stored.resource["meta"]["lastUpdated"]
            since = instant_since(conditions.get("ifModifiedSince"))
            unchanged_read = not_modified(
                stored.version, updated, conditions.get("ifNoneMatch"), since
            )
            # a 304 holds no resource, so it costs none of the bound: past it, it was
            # refused as too costly (400), as if it answered the resource again
            if left < 1 and not unchanged_read:
                raise _EntryError(_too_costly())
            event = audit.event(
                request, interaction="read", patients=_patients([stored]),
                records=[stored.reference], partner=who.partner, query=query,
            )  # fmt: skip
            if unchanged_read:
                unchanged = {"status": "304 Not Modified", "etag": f'W/"{stored.version}"',
                             "lastModified": updated}  # fmt: skip
                return {"response": unchanged}, event, 0
            response = {"status": "200 OK", "etag": f'W/"{stored.version}"',
                        "lastModified": updated}  # fmt: skip
            return {"resource": stored.resource, "response": response}, event, 1
        where, count, after = _search_params(read.params, who.partner)
        # at most what is left: a page that fits is the GET's own page; one cut short by
        # the bound (more rows than left) is refused, never answered as all there is
        limit = max(1, min(count, left))  # a page of none would name no next row
        page, nxt = resources.search(kind, where, limit, after)
        if len(page) > left or (limit < count and nxt is not None):
            raise _EntryError(_too_costly())
        event = audit.event(
            request, interaction="search-type", partner=who.partner, query=query,
            patients=_patients(page), records=[s.reference for s in page],
        )  # fmt: skip
        searchset = _searchset(settings.inbound_public_url, URL(f"/fhir/{read.url}"), page, nxt)
        return {"resource": searchset, "response": {"status": "200 OK"}}, event, len(page)

    async def referral_status(request: Request, task_id: str, action: str) -> Response:
        refused = unauthorized(request)
        if refused is not None:
            return refused
        body = await read_body(request, 64 * 1024)
        if isinstance(body, Response):
            return body
        reason = request.query_params.get("reason") or _reason(body)
        if reason is not None and "\0" in reason:  # FHIR text carries none: not sent on
            where = "Parameters.parameter.where(name='reason').valueString"
            invalid = {"issue_type": "invalid"}
            return _error(
                Issue("request.invalid", nul_message(where), None, "reason", details=invalid)
            )

        def act() -> tuple[Any, int | None, str]:
            return lazy.inbound().referrals.act(task_id, action, reason)

        try:
            updated, row, note = await run_in_threadpool(act)
        except GatewayError as exc:
            return _error(exc.issue)
        headers = {"X-Gateway-Outbox": str(row) if row is not None else "none",
                   "X-Gateway-Note": note.encode("ascii", "replace").decode()}  # fmt: skip
        return _fhir(updated.task.resource, 200, headers)

    # One route per operation, as GET /fhir/metadata announces them (Task's operation,
    # igpub.TASK_OPERATIONS); another $name on a Task is no route (404).
    @app.post("/fhir/Task/{task_id}/$accept")
    async def referral_accept(request: Request, task_id: str) -> Response:
        return await referral_status(request, task_id, "accept")

    @app.post("/fhir/Task/{task_id}/$reject")
    async def referral_reject(request: Request, task_id: str) -> Response:
        return await referral_status(request, task_id, "reject")

    @app.post("/fhir/Task/{task_id}/$complete")
    async def referral_complete(request: Request, task_id: str) -> Response:
        return await referral_status(request, task_id, "complete")

    add_audit_event_routes(app, settings, unauthorized)  # before /fhir/{type}

    @app.get("/fhir/{resource_type}/{logical_id}")
    async def read(request: Request, resource_type: str, logical_id: str) -> Response:
        who = await reader(request, resource_type)
        if isinstance(who, Response):
            return who
        found = await run_in_threadpool(
            lambda: _visible(lazy.inbound().resources, resource_type, logical_id, who)
        )
        if found is None:
            return _error(_not_found())
        await run_in_threadpool(
            audit.write, request, interaction="read", patients=_patients([found]),
            records=[found.reference], partner=who,
        )  # fmt: skip
        updated = found.resource["meta"]["lastUpdated"]
        headers = {"ETag": f'W/"{found.version}"', "Last-Modified": http_date(updated)}
        if unchanged_read(request.headers, found.version, updated):
            return Response(status_code=304, headers=headers)  # the version it holds
        return _fhir(found.resource, 200, headers)

    @app.get("/fhir/{resource_type}")
    async def search(request: Request, resource_type: str) -> Response:
        who = await reader(request, resource_type)
        if isinstance(who, Response):
            return who
        try:
            where, count, after = _search(request, who)
            page, nxt = await run_in_threadpool(
                lambda: lazy.inbound().resources.search(resource_type, where, count, after)
            )
        except GatewayError as exc:
            return _error(exc.issue)
        await run_in_threadpool(
            audit.write, request, interaction="search-type", patients=_patients(page),
            records=[s.reference for s in page], partner=who,
        )  # fmt: skip
        # links from the public URL, never the request's Host (_urls.py)
        return _fhir(_searchset(settings.inbound_public_url, request.url, page, nxt))


def _visible(resources: Any, kind: str, ident: str, partner: str | None) -> Stored | None:
    """The stored resource ``kind/ident`` as ``partner`` may read it (only what it sent;
    ``None``: a local token, everything), else None (answered 404, as one never sent)."""
    found = resources.read(kind, ident) if ID_PATTERN.fullmatch(ident) else None
    return None if found is None or (partner is not None and found.partner != partner) else found


def _patients(found: Iterable[Stored]) -> list[Any]:
    """The patients a read or search answer is about (an api-read event's)."""
    return [s.reference if s.resource_type == "Patient" else s.patient for s in found]


def _searchset(public: str | None, asked: URL, page: list[Stored], nxt: Any) -> dict[str, Any]:
    """A search's answer: its page, ``self`` and ``next`` links under ``public``."""
    links = [{"relation": "self", "url": link_of(asked, public)}]
    if nxt is not None:
        links.append({"relation": "next", "url": link_of(asked, public, _after=nxt)})
    return {
        "resourceType": "Bundle",
        "type": "searchset",
        "link": links,
        "entry": [entry(public, s.reference, s.resource) for s in page],
    }


def _search(request: Request, who: str | None) -> tuple[Search, int, int]:
    return _search_params(request.query_params.multi_items(), who)


def _search_params(params: Iterable[tuple[str, str]], who: str | None) -> tuple[Search, int, int]:
    """The search of ``params`` (a GET's query, or a batch entry's)."""
    where = Search(partner=who)
    count, after = 50, 0
    for name, value in params:
        if name not in SEARCH_PARAMS:
            raise InboundError(
                "inbound.bad-search",
                f"unknown search parameter {parameter_name(name)} (the gateway searches by "
                f"{', '.join(SEARCH_PARAMS)})",
                location=parameter_name(name).strip("'"),  # a form, never a value
            )
        if name == "identifier":
            where.identifier = value
        elif name == "patient":
            where.patient = value
        elif name == "status":
            where.status += [s for s in value.split(",") if s]
        elif name == "_id":
            where.ids += [s for s in value.split(",") if s]
        elif name == "_lastUpdated":
            where.last_updated.append(parse_last_updated(value))
        elif not (value.isascii() and value.isdigit()):  # "²".isdigit(); int("²") fails
            raise InboundError("inbound.bad-search", f"{name} must be a number", location=name)
        elif name == "_count":
            count = max(1, min(int(value), 1000))
        else:
            after = int(value)
    if len(where.ids) + len(where.status) + len(where.last_updated) > MAX_SEARCH_VALUES:
        raise InboundError(
            "inbound.bad-search",
            f"the search holds more than {MAX_SEARCH_VALUES} values of _id, status and "
            "_lastUpdated: split it",
        )
    return where, count, after


def _reader_too_large(limit: int) -> Issue:
    """A body past MAX_READ_BYTES from a token that may only read: refused unread."""
    return Issue(
        "request.too-large",
        f"body is larger than {limit} bytes, the most a token that may only read sends "
        "(a batch of reads; a write needs write scope): split the batch",
        details={"issue_type": "too-costly"},
    )


def _too_costly() -> Issue:
    """A batch entry past MAX_READ_RESOURCES: asked again in another batch, or as a GET."""
    message = (
        "the answers of this batch of reads already hold the most resources one batch "
        f"answers ({MAX_READ_RESOURCES}): ask this entry in another batch"
    )
    return Issue("inbound.too-costly", message, details={"issue_type": "too-costly"})


def _status_line(status: int) -> str:
    """A batch-response entry's ``response.status``: the code and its phrase."""
    try:
        return f"{status} {HTTPStatus(status).phrase}"
    except ValueError:
        return str(status)


def _reason(body: bytes) -> str | None:
    """The 'reason' of a Parameters body (valueString), if any."""
    if not body.strip():
        return None
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    for parameter in parsed.get("parameter") or [] if isinstance(parsed, dict) else []:
        if isinstance(parameter, dict) and parameter.get("name") == "reason":
            value = parameter.get("valueString")
            return str(value) if value else None
    return None


def _media_issue(media: str) -> Issue:
    return Issue(
        "inbound.media-type",
        f"Content-Type {media[:60]!r}: POST /fhir takes {FHIR_JSON} (or application/json)",
        location="Content-Type",
    )


def _scope_issue(action: str) -> Issue:
    return Issue(
        "inbound.scope",
        f"the access token's scope does not allow {action} here",
        details={"issue_type": "forbidden"},
    )


def _no_public_url() -> Issue:
    return Issue(
        "inbound.no-public-url",
        "SMART Backend Services discovery is off: set inbound_public_url (the URL partners "
        "reach this gateway at); no URL is made from the request's Host",
    )


def _unsupported_type(resource_type: str) -> Issue:
    """HAPI's answer to an unknown type: 404, issue not-supported, the type named (its
    form only when it is no type name: the path is the requester's text)."""
    named = repr(resource_type) if TYPE_PATTERN.fullmatch(resource_type) else shape(resource_type)
    return Issue(
        "inbound.unsupported-type",
        f"resource type {named} is not served here: GET /fhir/{{type}} and "
        f"/fhir/{{type}}/{{id}} serve {', '.join(STORED_TYPES)} (and AuditEvent; "
        "GET /fhir/metadata)",
    )


def _not_found() -> Issue:
    return Issue("inbound.not-found", "no such resource", details={"issue_type": "not-found"})


def _capability(base: str | None) -> dict[str, Any]:
    """The CapabilityStatement; without ``inbound_public_url`` (``base``) it names no URL
    (none is made from the request's Host) and no SMART token endpoint (SMART is off)."""
    found = _capability_at(base or "")
    if not base:
        del found["implementation"]["url"]
        security = found["rest"][0]["security"]
        del security["extension"], security["service"]
    return found


def _capability_at(base: str) -> dict[str, Any]:
    token_url = base + "/auth/token"
    return {
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": "2026-12-06",
        "kind": "instance",
        "software": {"name": "fhir-gateway", "version": __version__},
        "implementation": {
            "description": "inbound endpoint of the FHIR gateway",
            "url": base + "/fhir",
        },
        "fhirVersion": "4.0.1",
        "format": [FHIR_JSON, "json"],
        "rest": [
            {
                "mode": "server",
                "security": {
                    "extension": [
                        {
                            "url": "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris",
                            "extension": [{"url": "token", "valueUri": token_url}],
                        }
                    ],
                    "service": [
                        {
                            "coding": [
                                {
                                    "system": "http://terminology.hl7.org/CodeSystem/restful-security-service",
                                    "code": "SMART-on-FHIR",
                                }
                            ]
                        }
                    ],
                    "description": "partners: a partner Bearer token, a SMART Backend Services "
                    "access token or a client certificate; local systems: the API token",
                },
                "interaction": SYSTEM_INTERACTIONS,  # POST /fhir
                # read and search of what partners sent and of the audit log (igpub.py)
                "resource": fhir_resources(),
            }
        ],
    }
