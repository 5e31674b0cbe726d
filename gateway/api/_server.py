"""Serving the API with uvicorn, with the read timeouts uvicorn lacks.

uvicorn closes idle keep-alive connections, but a client that sends its request line
and headers a byte at a time is waited for indefinitely, and so is a body that trickles
in. Five such clients held connections open for as long as they liked, so:

* headers: the request line and headers must be complete within ``api_header_timeout``
  seconds of the connection opening (or of the previous response); a client that has
  sent part of a request by then gets ``408 Request Timeout`` and is disconnected, an
  idle one is just disconnected. This lives in the HTTP protocol (below), since no
  application code runs before the headers are in.
* body: the app reads bodies itself (``_app._read_body``), ``api_body_timeout`` seconds
  at most between two pieces and in all that much plus one second per 64 KiB received;
  a late body gets a 408 OperationOutcome and the connection is closed.
"""

from __future__ import annotations

import asyncio
from typing import Any

import h11
import orjson
import uvicorn
from fastapi import FastAPI
from uvicorn.protocols.http.h11_impl import H11Protocol

from ..config import Settings
from ..errors import Issue, operation_outcome

__all__ = ["serve", "server_config"]


def _timeout_response(seconds: float) -> bytes:
    issue = Issue(
        "request.timeout",
        f"the request's headers did not arrive within {seconds:g} s",
        details={"issue_type": "timeout"},
    )
    body = orjson.dumps(operation_outcome([issue]))
    head = (
        "HTTP/1.1 408 Request Timeout\r\n"
        "content-type: application/fhir+json\r\n"
        f"content-length: {len(body)}\r\n"
        "connection: close\r\n\r\n"
    )
    return head.encode("ascii") + body


class HeaderTimeoutProtocol(H11Protocol):
    """uvicorn's h11 protocol, with a deadline for each request's headers."""

    header_timeout = 10.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._header_timer: asyncio.TimerHandle | None = None
        super().connection_made(transport)  # type: ignore[arg-type]
        self._watch_headers()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        self._watch_headers()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._watch_headers()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_header_timer()
        super().connection_lost(exc)

    def _watch_headers(self) -> None:
        """Run the deadline while a request's headers are awaited (h11's client state
        is IDLE until they are complete); stop it once they are."""
        waiting = self.conn.their_state is h11.IDLE and not self.transport.is_closing()
        if not waiting:
            self._stop_header_timer()
        elif self._header_timer is None:
            self._header_timer = self.loop.call_later(self.header_timeout, self._headers_late)

    def _stop_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_late(self) -> None:
        self._header_timer = None
        if self.conn.their_state is not h11.IDLE or self.transport.is_closing():
            return
        partial, _ = self.conn.trailing_data
        if partial:  # part of a request came: say why it is refused
            self.transport.write(_timeout_response(self.header_timeout))
        self.transport.close()


def _protocol(header_timeout: float) -> type[HeaderTimeoutProtocol]:
    return type(
        "HeaderTimeoutProtocol", (HeaderTimeoutProtocol,), {"header_timeout": header_timeout}
    )


def server_config(app: FastAPI, settings: Settings, **overrides: Any) -> uvicorn.Config:
    """uvicorn's configuration for the API: ``settings.host``/``port`` and the header
    read timeout (``overrides`` go to ``uvicorn.Config``, e.g. ``port=0``)."""
    options: dict[str, Any] = {
        "host": settings.host,
        "port": settings.port,
        "log_level": "info",
        "http": _protocol(settings.api_header_timeout),
    }
    options.update(overrides)
    return uvicorn.Config(app, **options)


def serve(
    app: FastAPI, settings: Settings, host: str | None = None, port: int | None = None
) -> None:
    """Run the API until interrupted (``gateway serve``)."""
    overrides: dict[str, Any] = {}
    if host:
        overrides["host"] = host
    if port:
        overrides["port"] = port
    uvicorn.Server(server_config(app, settings, **overrides)).run()
