"""Serving the API with uvicorn, with the read timeouts uvicorn lacks.

uvicorn closes idle keep-alive connections, but a client that sends its request line
and headers a byte at a time is waited for indefinitely, and so is a body that trickles
in. Five such clients held connections open for as long as they liked, so:

* headers: the request line and headers must be complete within ``api_header_timeout``
  seconds of the connection opening (or of the previous response); a client that has
  sent part of a request by then gets ``408 Request Timeout`` and is disconnected, an
  idle one is just disconnected. This lives in the HTTP protocol (below), since no
  application code runs before the headers are in. The same protocol disconnects a
  client still sending the body of a request already answered (401, 413) after
  ``api_body_timeout``.
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

__all__ = ["server_config"]


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


class TimeoutProtocol(H11Protocol):
    """uvicorn's h11 protocol, with a deadline whenever the client owes bytes that no
    application code is waiting for: a request's headers, or the rest of the body of a
    request already answered (a 401 or 413 sent before the body was read), which h11
    would otherwise read and discard for as long as the client sends it."""

    header_timeout = 10.0
    body_timeout = 30.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._deadline: asyncio.TimerHandle | None = None
        self._awaiting = ""  # "headers", "answered" (the body of an answered request)
        super().connection_made(transport)  # type: ignore[arg-type]
        self._watch()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        self._watch()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._watch()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop()
        super().connection_lost(exc)

    def _watch(self) -> None:
        """Run the deadline for what is awaited; none while the app reads the body."""
        awaiting = ""
        if not self.transport.is_closing():
            if self.conn.their_state is h11.IDLE:  # until the headers are complete
                awaiting = "headers"
            elif self.conn.their_state is h11.SEND_BODY and self.conn.our_state in (
                h11.DONE,
                h11.MUST_CLOSE,
            ):
                awaiting = "answered"
        if awaiting != self._awaiting:
            self._stop()
            if awaiting:
                seconds = self.header_timeout if awaiting == "headers" else self.body_timeout
                self._deadline = self.loop.call_later(seconds, self._late)
                self._awaiting = awaiting

    def _stop(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
        self._deadline, self._awaiting = None, ""

    def _late(self) -> None:
        awaiting = self._awaiting
        self._deadline, self._awaiting = None, ""
        if self.transport.is_closing():
            return
        partial, _ = self.conn.trailing_data
        if awaiting == "headers" and partial:  # part of a request came: say why
            self.transport.write(_timeout_response(self.header_timeout))
        self.transport.close()


def _protocol(settings: Settings) -> type[TimeoutProtocol]:
    timeouts = {
        "header_timeout": settings.api_header_timeout,
        "body_timeout": settings.api_body_timeout,
    }
    return type("TimeoutProtocol", (TimeoutProtocol,), timeouts)


def server_config(app: FastAPI, settings: Settings, **overrides: Any) -> uvicorn.Config:
    """uvicorn's configuration for the API: ``settings.host``/``port`` and the header
    read timeout (``overrides`` go to ``uvicorn.Config``, e.g. ``port=0``)."""
    options: dict[str, Any] = {
        "host": settings.host,
        "port": settings.port,
        # uvicorn logs through the gateway's handler and level (gateway/logs.py)
        "log_config": None,
        "log_level": settings.log_level,
        "http": _protocol(settings),
    }
    options.update(overrides)
    return uvicorn.Config(app, **options)
