"""Liveness and readiness, for a process supervisor or a load balancer (no token; the
answers hold the status of each check and nothing else):

    GET /health/live    200 while the process answers (its event loop runs)
    GET /health/ready   200 when the store can be queried (its message table) and each
                        configured listener (MLLP: mllp_port, DICOM: dicom_port)
                        accepts connections;
                        503 otherwise, naming the check that failed

The listeners are checked by connecting to their port, because with ``--workers N`` they
run in the supervising process, not in the worker that answers. Results are kept for
``READY_CACHE`` seconds so a flood of probes cannot become a flood of queries.
"""

from __future__ import annotations

import socket
import threading
import time
from typing import Any

import sqlalchemy as sa
from fastapi import FastAPI
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

from ..config import Settings
from ..store import Store, metadata

__all__ = ["READY_CACHE", "LazyStore", "add_health_routes", "readiness"]

READY_CACHE = 1.0  # seconds a readiness answer is reused
CONNECT_TIMEOUT = 1.0  # seconds for a listener to accept a probe
_ANY = {"", "0.0.0.0", "::"}  # a wildcard bind is probed on the loopback
_messages = metadata.tables["messages"]


class LazyStore:
    """The store, opened at the first scrape or readiness check and never migrated here
    (``gateway serve`` migrates it before it serves)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._store: Store | None = None
        self._open = threading.Lock()

    def __call__(self) -> Store:
        with self._open:
            if self._store is None:
                self._store = Store.for_home(
                    self.settings.home, self.settings.database_url, upgrade=False
                )
            return self._store

    def close(self) -> None:
        with self._open:
            if self._store is not None:
                self._store.close()
                self._store = None


def _store_ok(store: LazyStore) -> bool:
    """The database answers a query on the message table (so it is there and migrated)."""
    try:
        with store().engine.connect() as conn:
            conn.execute(sa.select(_messages.c.id).limit(1))
        return True
    except Exception:  # any failure of the database is "not ready", never a 500
        return False


def _listening(host: str, port: int) -> bool:
    target = "127.0.0.1" if host in _ANY else host
    try:
        with socket.create_connection((target, port), timeout=CONNECT_TIMEOUT):
            return True
    except OSError:
        return False


def readiness(settings: Settings, store: LazyStore) -> dict[str, str]:
    """Each check's status, ``ok`` or ``down``: the store, then each configured listener."""
    checks = {"store": _store_ok(store)}
    if settings.mllp_port:
        checks["mllp"] = _listening(settings.mllp_host, settings.mllp_port)
    if settings.dicom_port:
        checks["dicom"] = _listening(settings.dicom_host, settings.dicom_port)
    return {name: "ok" if ok else "down" for name, ok in checks.items()}


def add_health_routes(app: FastAPI, settings: Settings, store: LazyStore) -> None:
    cached: dict[str, Any] = {"at": float("-inf"), "checks": {}}
    lock = threading.Lock()

    def ready_now() -> dict[str, str]:
        with lock:  # one probe at a time; the others reuse its answer
            if time.monotonic() - cached["at"] >= READY_CACHE:
                cached["checks"] = readiness(settings, store)
                cached["at"] = time.monotonic()
            checks: dict[str, str] = cached["checks"]
            return checks

    @app.get("/health/live", include_in_schema=False)
    async def live() -> JSONResponse:
        return JSONResponse({"status": "ok"})

    @app.get("/health/ready", include_in_schema=False)
    async def ready() -> JSONResponse:
        checks = await run_in_threadpool(ready_now)
        ok = all(status == "ok" for status in checks.values())
        body = {"status": "ready" if ok else "unavailable", "checks": checks}
        return JSONResponse(body, 200 if ok else 503)
