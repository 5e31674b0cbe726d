"""Report variants rendered in worker processes, beside conversions rather than in
their way.

Rendering is CPU-bound Python (a 59,000-character bilingual report takes ~9 s): in a
thread of the API process it would hold the GIL and the conversion lock, and every
``/convert`` would wait for it. A small pool of *spawned* processes (a fork of a
threaded server could inherit a held lock) renders instead; each worker builds its own
``ReportVariants`` (terminology, network, rules, the PDF font) and its own validator, so
nothing is shared with the conversions of the API process. The pool starts on the
first render and is shut down with the app.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import multiprocessing
import os
import threading
import traceback
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from ..config import Settings
from ..errors import (
    ConfigError,
    GatewayError,
    IntakeError,
    Issue,
    MappingError,
    ValidationError,
)

__all__ = ["REPORT_WORKERS", "VariantPool", "WorkerCrash"]

# Renders at once: 2, but always a core left for conversions (each worker holds
# ~300 MB: FHIR models, terminology, the PDF font).
REPORT_WORKERS = min(2, max(1, (os.cpu_count() or 2) - 1))

_FAMILIES: dict[str, type[GatewayError]] = {
    cls.family: cls for cls in (IntakeError, MappingError, ValidationError, ConfigError)
}
_SETTINGS: Settings | None = None  # the worker process's settings (set by _start)


class WorkerCrash(Exception):
    """An unexpected exception in a worker (or a worker that died): ``stack`` is the
    worker's traceback without the exception's message, which may quote the report."""

    def __init__(self, kind: str, stack: str) -> None:
        super().__init__(f"report rendering failed: {kind}")
        self.kind = kind
        self.stack = stack


def _start(settings: Settings) -> None:
    """Worker initialiser: load what rendering needs once per process."""
    global _SETTINGS
    from ._cli import variants_for

    _SETTINGS = settings
    variants_for(settings)


def _render(
    body: bytes, lang: str | None, english: bytes | None, fmt: str, partner: str | None
) -> tuple[str, Any]:
    """In a worker: ("ok", (status, content type, bytes)), ("refused", Issue) for bad
    input, or ("crashed", (exception type, stack)) — exceptions themselves do not cross
    the process boundary (GatewayError does not pickle, and messages may hold data)."""
    from ._cli import variant_response

    assert _SETTINGS is not None, "worker started without settings"
    try:
        return "ok", variant_response(body, lang, english, fmt, settings=_SETTINGS, partner=partner)
    except GatewayError as exc:
        return "refused", exc.issue
    except Exception as exc:  # reported to the API process, which logs it
        return "crashed", (type(exc).__name__, "".join(traceback.format_tb(exc.__traceback__)))


def _error(issue: Issue) -> GatewayError:
    """The worker's GatewayError, rebuilt in this process from its Issue."""
    cls = _FAMILIES.get(issue.code.split(".", 1)[0], GatewayError)
    return cls(
        issue.code,
        issue.message,
        record=issue.record,
        location=issue.location,
        expression=issue.expression,
        **issue.details,
    )


class VariantPool:
    """Renders variants (``variant_response``) in up to ``workers`` spawned processes."""

    def __init__(self, settings: Settings, workers: int = REPORT_WORKERS) -> None:
        self.settings = settings
        self.workers = workers
        self.busy = 0  # renders submitted and not finished (read by tests and health)
        self._pool: concurrent.futures.ProcessPoolExecutor | None = None
        self._lock = threading.Lock()

    def _executor(self) -> concurrent.futures.ProcessPoolExecutor:
        with self._lock:
            if self._pool is None:
                self._pool = concurrent.futures.ProcessPoolExecutor(
                    self.workers,
                    mp_context=multiprocessing.get_context("spawn"),
                    initializer=_start,
                    initargs=(self.settings,),
                )
            return self._pool

    async def render(
        self,
        body: bytes,
        lang: str | None,
        english: bytes | None = None,
        fmt: str = "json",
        partner: str | None = None,
    ) -> tuple[int, str, bytes]:
        """(status, content type, bytes) of the variant, as ``variant_response`` gives
        it; GatewayError for bad input; WorkerCrash for a failure of the gateway."""
        loop = asyncio.get_running_loop()
        pool = self._executor()
        self.busy += 1
        try:
            kind, value = await loop.run_in_executor(
                pool, _render, body, lang, english, fmt, partner
            )
        except BrokenProcessPool:
            self._discard(pool)  # a worker died (killed, out of memory): start afresh
            raise WorkerCrash("BrokenProcessPool", "a report worker process died") from None
        finally:
            self.busy -= 1
        if kind == "refused":
            raise _error(value)
        if kind == "crashed":
            raise WorkerCrash(*value)
        status, content_type, out = value
        return int(status), str(content_type), bytes(out)

    def _discard(self, pool: concurrent.futures.ProcessPoolExecutor) -> None:
        with self._lock:
            if self._pool is pool:
                self._pool = None
        pool.shutdown(wait=False, cancel_futures=True)

    def shutdown(self) -> None:
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
