"""The message store on the API (Bearer token, like every route but /health and /metadata):

    GET  /messages?state=&sender=&type=&since=&patient=&control_id=&limit=&after=
         one page, newest first; ``next`` is the cursor of the next page and
         ``links.next`` its URL (keyset pagination: fast on a million rows)
    GET  /messages/{id}                   the message: original decoded in its charset,
                                          each stage's outcome and issues
    POST /messages/{id}/$reprocess        convert again from the original with the
                                          current mappings; earlier outcomes stay (409
                                          store.sender-refused for a message the MLLP
                                          listener refused for its sender)

Errors are OperationOutcomes with the status registered for their code.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
from fastapi import FastAPI, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response

from ..audit import audit_log, message_subject, store_hook
from ..config import Settings
from ..errors import GatewayError, http_status, operation_outcome
from ..pipeline import Converter
from ..processing import current_converter
from ..processing import reprocess as reprocess_message
from ..store import MessageFilter, Store, StoreError, message_json, open_store, parse_since
from ._auditing import ReadAudit, read_audit
from ._urls import link

__all__ = ["add_message_routes"]

JSON = "application/json"


class _Lazy:
    """The store and a converter of its own, opened at the first request that needs them
    (an API that never browses messages creates no database)."""

    def __init__(self, settings: Settings, audit: ReadAudit | None = None) -> None:
        self.settings = settings
        self.audit = audit
        self._store: Store | None = None
        self._converter: Converter | None = None
        self._stamp = 0.0
        self._open = threading.Lock()
        self.convert_lock = threading.Lock()  # a converter converts one message at a time

    def store(self) -> Store:
        with self._open:
            if self._store is None:
                self._store = open_store(self.settings)
            return self._store

    def close(self) -> None:
        with self._open:
            if self._store is not None:
                self._store.close()
                self._store = None
        if self.audit is not None:
            self.audit.close()  # the read events' database too

    def converter(self) -> Converter:
        """The converter, rebuilt when a mapping file changed since it was built: a
        mapping fix is what reprocessing is for."""
        stamp = _newest(self.settings.mappings)
        with self._open:
            if self._converter is None or stamp != self._stamp:
                self._converter, self._stamp = current_converter(self.settings), stamp
            return self._converter


def _newest(folder: Path) -> float:
    return max((p.stat().st_mtime for p in folder.rglob("*") if p.is_file()), default=0.0)


def _json(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(body), status, headers, media_type=JSON)


def _error(exc: GatewayError) -> Response:
    return Response(
        orjson.dumps(operation_outcome([exc.issue])),
        http_status([exc.issue]),
        media_type="application/fhir+json",
    )


def add_message_routes(
    app: FastAPI, settings: Settings, unauthorized: Callable[[Request], Response | None]
) -> None:
    audit = read_audit(app, settings)  # reads of stored messages are audited (api-read)
    lazy = _Lazy(settings, audit)
    app.state.messages = lazy  # app.state.messages.close() releases the database

    @app.get("/messages")
    async def list_messages(
        request: Request,
        state: str | None = None,
        sender: str | None = None,
        message_type: str | None = Query(None, alias="type"),
        since: str | None = None,
        patient: str | None = None,
        control_id: str | None = None,
        limit: int = Query(50, ge=1, le=1000),
        after: str | None = None,
    ) -> Response:
        refused = unauthorized(request)
        if refused is not None:
            return refused
        try:
            where = MessageFilter(
                state,
                sender,
                message_type,
                parse_since(since, settings.timezone) if since else None,
                patient,
                control_id,
            )
            page = await run_in_threadpool(lambda: lazy.store().find(where, limit, after))
        except GatewayError as exc:
            return _error(exc)
        await run_in_threadpool(
            audit.write, request, interaction="search-type", patients=[patient],
            records=[message_subject(s.id).records[0] for s in page.items],
        )  # fmt: skip
        body: dict[str, Any] = {
            "messages": [s.to_json() for s in page.items],
            "next": page.next,
            "links": {},
        }
        headers = {}
        if page.next is not None:
            # relative, or under inbound_public_url: never the client's Host (_urls.py)
            url = link(request, settings.inbound_public_url, after=page.next)
            body["links"]["next"] = url
            headers["Link"] = f'<{url}>; rel="next"'
        return _json(body, headers=headers)

    @app.get("/messages/{message_id}")
    async def show_message(request: Request, message_id: int) -> Response:
        refused = unauthorized(request)
        if refused is not None:
            return refused
        found = await run_in_threadpool(lambda: lazy.store().get(message_id))
        if found is None:
            return _error(StoreError("not-found", f"no message {message_id} in the store"))
        await run_in_threadpool(
            audit.write, request, interaction="read", patients=found.patients,
            records=message_subject(message_id).records,
        )  # fmt: skip
        return _json(message_json(found))

    @app.post("/messages/{message_id}/$reprocess")
    async def reprocess(request: Request, message_id: int) -> Response:
        refused = unauthorized(request)
        if refused is not None:
            return refused

        peer = request.client.host if request.client else None
        who = request.state.principal.name  # the token's name (unauthorized() set it)

        def run() -> dict[str, Any]:
            store = lazy.store()
            # audited as `gateway messages reprocess` is: the new outcome (no second
            # receipt), then the operator's action (or its refusal), by the token's name
            log = audit_log(store, lazy.settings)
            hook = store_hook(log, channel="api", peer=peer, with_receipt=False)
            converter = lazy.converter()
            reprocess_message(
                store, lazy.settings, converter, message_id, hook, lock=lazy.convert_lock, who=who
            )
            found = store.get(message_id)
            assert found is not None
            return message_json(found)

        try:
            return _json(await run_in_threadpool(run))
        except GatewayError as exc:
            return _error(exc)
