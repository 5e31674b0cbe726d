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

And behind a TLS proxy: X-Forwarded-For is applied by uvicorn's proxy-headers
middleware inside :class:`RecordPeer`, which first keeps the TCP peer in the scope
(:func:`tcp_peer`): ``request.client`` is the forwarded client (the console's sign-in
limiter, the audit trail) while the inbound mTLS check asks who holds the connection
(the proxy that sets the certificate header), which X-Forwarded-For must not change.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import multiprocessing
import os
import shutil
import socket
import sys
import tempfile
import time
from typing import Any

import h11
import orjson
import uvicorn
from fastapi import FastAPI
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware
from uvicorn.protocols.http.h11_impl import H11Protocol

from ..config import Settings
from ..errors import Issue, operation_outcome
from ..metrics import MULTIPROC_ENV

__all__ = ["GRACE", "PEER", "RecordPeer", "Supervisor", "server_config", "tcp_peer"]

log = logging.getLogger("gateway.api")


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


PEER = "gateway.tcp_peer"  # the ASGI scope key: the connection's peer, before X-Forwarded-For


class RecordPeer:
    """Keeps the TCP peer (``scope["client"]`` as the server made it) under :data:`PEER`
    before the app it wraps (uvicorn's proxy-headers middleware) rewrites the client
    from X-Forwarded-For."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] in ("http", "websocket"):
            scope[PEER] = scope.get("client")
        await self.app(scope, receive, send)


def tcp_peer(scope: Any) -> str | None:
    """The address the connection comes from, whatever X-Forwarded-For says (the app
    run without :func:`server_config`, no forwarded header was applied: the client)."""
    client = scope.get(PEER, scope.get("client"))
    return str(client[0]) if client else None


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
        # X-Forwarded-For is believed from these proxies only (the console's sign-in
        # limiter keys on the client address): the setting, never uvicorn's own
        # variable; applied below, after RecordPeer kept the TCP peer for the mTLS check
        "proxy_headers": False,
    }
    options.update(overrides)
    asgi: Any = app  # uvicorn types ASGI apps more narrowly than Starlette does
    proxied = ProxyHeadersMiddleware(asgi, trusted_hosts=list(settings.forwarded_allow_ips))
    return uvicorn.Config(RecordPeer(proxied), **options)


# -- gateway serve --workers N ---------------------------------------------------------
GRACE = 30.0  # seconds a worker has to finish its requests after SIGTERM, then SIGKILL
RESTART_DELAY = (1.0, 30.0)  # a worker that died is started again after 1 s, doubling
STEADY = 60.0  # seconds of running after which a worker's next death waits 1 s again


def _api_worker(settings: Settings, sock: socket.socket, host: str, port: int) -> None:
    """One API worker process: the app on the supervisor's listening socket. It runs no
    delivery and no listener (the supervisor does: never twice); uvicorn's own SIGTERM
    handling stops accepting, finishes the requests in flight, then exits."""
    from ..logs import configure as configure_logs
    from ._app import create_app

    configure_logs(settings.log_level, settings.log_format, loggers=("gateway", "uvicorn"))
    settings = dataclasses.replace(settings, delivery_worker=False)
    app = create_app(settings)
    config = server_config(app, settings, host=host, port=port, timeout_graceful_shutdown=GRACE)
    uvicorn.Server(config).run(sockets=[sock])


class Supervisor:
    """``gateway serve --workers N``: N API worker processes accepting on one socket (the
    kernel spreads connections between them), started and watched by this process,
    which keeps the rest of ``gateway serve`` (``serve_gateway``: the MLLP listener,
    delivery, retention; the DICOM listeners): each runs once whatever N is.

    It looks like a ``uvicorn.Server`` to ``serve_gateway``: ``serve()`` runs until
    ``should_exit`` (SIGTERM/SIGINT), then sends each worker SIGTERM and waits up to
    :data:`GRACE` seconds for it. A worker that dies is started again.

    The stage latency histograms of all the processes are shared through
    ``PROMETHEUS_MULTIPROC_DIR``: set before any process measures (so this object is
    made before the app or the listeners), to a fresh directory unless the operator set
    one (docs/metrics.md), which is removed at the end."""

    def __init__(self, settings: Settings, host: str, port: int, workers: int) -> None:
        self.settings, self.host, self.port, self.workers = settings, host, port, workers
        self.should_exit = False
        self._own_dir: str | None = None
        if not os.environ.get(MULTIPROC_ENV):
            if "prometheus_client" in sys.modules:  # too late to share: say so
                log.warning("%s set after prometheus_client was imported", MULTIPROC_ENV)
            self._own_dir = tempfile.mkdtemp(prefix="gateway-metrics-")
            os.environ[MULTIPROC_ENV] = self._own_dir

    async def serve(self) -> None:
        context = multiprocessing.get_context("spawn")  # no fork of a threaded process
        sock = socket.create_server(
            (self.host, self.port), family=_family(self.host), reuse_port=False, backlog=2048
        )
        sock.set_inheritable(True)
        procs: list[Any] = [None] * self.workers
        delays = [RESTART_DELAY[0]] * self.workers
        due, started = [0.0] * self.workers, [0.0] * self.workers
        loop = asyncio.get_running_loop()
        try:
            while not self.should_exit:
                for n, proc in enumerate(procs):
                    if proc is not None and proc.is_alive():
                        continue
                    if proc is not None:  # it died: started again after a pause
                        log.error("API worker %s exited (%s); restarting", proc.pid, proc.exitcode)
                        _dead(proc.pid)
                        if loop.time() - started[n] > STEADY:  # it had been running well
                            delays[n] = RESTART_DELAY[0]
                        due[n] = loop.time() + delays[n]
                        delays[n] = min(delays[n] * 2, RESTART_DELAY[1])
                        procs[n] = None
                    elif loop.time() >= due[n]:
                        procs[n] = context.Process(
                            target=_api_worker,
                            args=(self.settings, sock, self.host, self.port),
                            name=f"gateway-api-{n + 1}",
                        )
                        procs[n].start()
                        started[n] = loop.time()
                await asyncio.sleep(0.2)
        finally:
            await loop.run_in_executor(None, _stop_all, [p for p in procs if p is not None])
            sock.close()
            if self._own_dir is not None:
                shutil.rmtree(self._own_dir, ignore_errors=True)


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def _stop_all(procs: list[Any]) -> None:
    """SIGTERM to every worker, then wait for them all (GRACE in all), then SIGKILL."""
    for proc in procs:
        if proc.is_alive():
            proc.terminate()
    deadline = time.monotonic() + GRACE
    for proc in procs:
        proc.join(max(deadline - time.monotonic(), 0.0))
        if proc.is_alive():
            log.error("API worker %s did not stop in %g s: killed", proc.pid, GRACE)
            proc.kill()
            proc.join()
        _dead(proc.pid)


def _dead(pid: int) -> None:
    """Forget a dead worker's live gauges (its counters and histograms stay counted)."""
    from prometheus_client import multiprocess

    with contextlib.suppress(OSError):
        multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]
