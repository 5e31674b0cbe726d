"""Optional OpenTelemetry tracing of a record through its stages (docs/metrics.md,
"Tracing").

Off by default, and then nothing of opentelemetry is imported and each call below is one
test of a module global. On (``tracing = "console"`` or ``"otlp"``), each stage a record
went through becomes a span, made after the fact from its measured duration.

One trace per stored message across processes, with no new column: the trace id is the
first 128 bits of SHA-256 over a per-installation salt (the gateway's ``institution`` and
``tracing_service_name``, the same in every process of one installation) and the message's
store id; every span's parent is a span id derived the same way, which no process sends
(backends show the trace's spans under a "missing root"). A record converted outside the
store (``gateway convert``, ``POST /$convert``) gets a random trace of its own.

Attributes are operational only: stage, outcome, error code, message id, record index,
partner, format. NEVER patient data, control ids or identifiers.
"""

from __future__ import annotations

import atexit
import hashlib
import logging
import secrets
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from contextvars import ContextVar
from datetime import datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..config import Settings
    from ..envelope import Record

__all__ = [
    "configure_tracing",
    "trace_attempt",
    "trace_id_of",
    "trace_placed",
    "trace_record",
    "trace_stage",
    "traced_message",
    "tracing_on",
]

log = logging.getLogger("gateway.metrics")
_lock = threading.Lock()
_tracer: Any = None  # an opentelemetry Tracer while tracing is on; None: off
_provider: Any = None
_salt = b""
_configured: tuple[Any, ...] | None = None
_broken = False
# The stored message being converted in this thread (set by the store's process step).
_message: ContextVar[int | None] = ContextVar("gateway_trace_message", default=None)
_OFF: AbstractContextManager[None] = nullcontext()
# How long closing tracing (at exit, or on new settings) waits for the exporter to send
# what it holds: a collector that is up takes the last batch in milliseconds; one that
# is down would otherwise hold even a one-file `gateway convert` ~10 s at exit while the
# OTLP exporter retries. Past this, the spans not yet sent are dropped (logged).
SHUTDOWN_SECONDS = 2.0
_exit_hook = False


def tracing_on() -> bool:
    return _tracer is not None


def configure_tracing(settings: Settings, exporter: Any = None) -> None:
    """Turn tracing on or off as ``settings`` say; again only when they change (every
    Converter calls this). ``exporter`` (a SpanExporter, exported span by span) replaces
    the one the setting names, until settings that differ come: tests pass the SDK's
    in-memory exporter, then convert with the same settings."""
    global _tracer, _provider, _salt, _configured
    key = (
        settings.tracing,
        settings.tracing_endpoint,
        settings.tracing_service_name,
        settings.institution,
    )
    same = _configured is not None and _configured[0] == key
    if same and (exporter is None or exporter is _configured[1]):  # type: ignore[index]
        return
    with _lock:
        if _provider is not None:
            _close(_provider)  # flushes what it holds, for SHUTDOWN_SECONDS at most
        _tracer = _provider = None
        _configured = (key, exporter)
        if settings.tracing == "off" and exporter is None:
            return
        _salt = f"{settings.institution or ''}\0{settings.tracing_service_name}".encode()
        _provider = _make_provider(settings, exporter)
        _tracer = _provider.get_tracer("gateway")


def reset_tracing() -> None:
    """Tracing off, whatever configured it (tests)."""
    global _tracer, _provider, _configured
    with _lock:
        if _provider is not None:
            _close(_provider)
        _tracer = _provider = _configured = None


def _close(provider: Any) -> None:
    """Shut ``provider`` down (its processors send what they hold), waiting
    SHUTDOWN_SECONDS at most. The SDK's own shutdown waits for the exporter, which
    retries an unreachable collector for its whole timeout (10 s by default); here it
    runs in a daemon thread, left behind (with the spans it still holds) when the time
    is up, so neither a short command's exit nor a change of settings waits for it."""
    done = threading.Event()

    def shut() -> None:
        try:
            provider.shutdown()
        except Exception as exc:  # an exporter's fault must not fail the exit
            log.warning("tracing: shutdown failed: %s", type(exc).__name__)
        finally:
            done.set()

    threading.Thread(target=shut, name="gateway-tracing-shutdown", daemon=True).start()
    if not done.wait(SHUTDOWN_SECONDS):
        log.warning(
            "tracing: the collector did not take the last spans within %.0f s; dropped",
            SHUTDOWN_SECONDS,
        )


def _at_exit() -> None:
    global _tracer, _provider
    provider, _tracer, _provider = _provider, None, None
    if provider is not None:
        _close(provider)


def _make_provider(settings: Settings, exporter: Any) -> Any:
    # Imported here only: with tracing off, opentelemetry is never imported.
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import (
        BatchSpanProcessor,
        ConsoleSpanExporter,
        SimpleSpanProcessor,
    )

    global _exit_hook
    resource = Resource.create({"service.name": settings.tracing_service_name})
    # Not the global provider: the gateway's spans go where its settings say, whatever
    # else runs in the process. Not the SDK's exit hook either (it waits as long as the
    # exporter retries): ours bounds the wait (_close).
    provider = TracerProvider(resource=resource, shutdown_on_exit=False)
    if not _exit_hook:
        atexit.register(_at_exit)
        _exit_hook = True
    if exporter is not None:
        provider.add_span_processor(SimpleSpanProcessor(exporter))
    elif settings.tracing == "console":
        # stderr: `gateway convert` writes its Bundles to stdout
        provider.add_span_processor(SimpleSpanProcessor(ConsoleSpanExporter(out=sys.stderr)))
    else:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        otlp = OTLPSpanExporter(endpoint=settings.tracing_endpoint)
        provider.add_span_processor(BatchSpanProcessor(otlp))  # sent off the hot path
    return provider


def trace_id_of(message_id: int) -> tuple[int, int]:
    """(trace id, parent span id) of a stored message in this installation."""
    digest = hashlib.sha256(b"fhir-gateway trace\0" + _salt + b"\0%d" % message_id).digest()
    trace_id = int.from_bytes(digest[:16], "big") or 1  # 0 is the invalid id
    return trace_id, int.from_bytes(digest[16:24], "big") or 1


def traced_message(message_id: int) -> AbstractContextManager[None]:
    """While converting stored message ``message_id``: its records' spans join its trace."""
    return _OFF if _tracer is None else _within(message_id)


@contextmanager
def _within(message_id: int) -> Iterator[None]:
    token = _message.set(message_id)
    try:
        yield
    finally:
        _message.reset(token)


def trace_record(record: Record) -> None:
    """One span per stage ``record`` went through (its history), ending now."""
    if _tracer is None:
        return
    end = time.time_ns()
    steps = []
    for step in reversed(record.history):
        start = end - int(step.ms * 1_000_000)
        steps.append((step, start, end))
        end = start
    message_id = _message.get()
    ids = trace_id_of(message_id) if message_id is not None else _random_ids()
    for step, start, stop in reversed(steps):
        attrs = _attributes(step.stage, step.outcome, step.code, message_id, record.index)
        attrs["gateway.format"] = record.format
        _span(step.stage, ids, attrs, start, stop)


def trace_stage(
    stage: str,
    seconds: float,
    message_id: int | None,
    outcome: str = "ok",
    code: str | None = None,
    record: int | None = None,
    partner: str | None = None,
) -> None:
    """A span for ``stage`` that took ``seconds`` and ended now (the store's process
    step, the outbound path, a delivery attempt). ``record``: its index in the message."""
    if _tracer is None:
        return
    end = time.time_ns()
    ids = trace_id_of(message_id) if message_id is not None else _random_ids()
    attrs = _attributes(stage, outcome, code, message_id, record, partner)
    _span(stage, ids, attrs, end - int(seconds * 1_000_000_000), end)


def _random_ids() -> tuple[int, int]:
    return secrets.randbits(128) or 1, secrets.randbits(64) or 1


def _attributes(
    stage: str,
    outcome: str,
    code: str | None,
    message_id: int | None,
    record: int | None,
    partner: str | None = None,
) -> dict[str, Any]:
    # The whole list: nothing else reaches a span (tests search every value).
    attrs: dict[str, Any] = {"gateway.stage": stage, "gateway.outcome": outcome}
    if code is not None:
        attrs["gateway.error_code"] = code
    if message_id is not None:
        attrs["gateway.message_id"] = message_id
    if record is not None:
        attrs["gateway.record_index"] = record
    if partner is not None:
        attrs["gateway.partner"] = partner
    return attrs


def _span(name: str, ids: tuple[int, int], attrs: dict[str, Any], start: int, end: int) -> None:
    """Record one finished span; never raises (a trace must not fail a record)."""
    global _broken
    try:
        from opentelemetry import trace
        from opentelemetry.trace import SpanContext, Status, StatusCode, TraceFlags

        parent = SpanContext(ids[0], ids[1], is_remote=True, trace_flags=TraceFlags(1))
        context = trace.set_span_in_context(trace.NonRecordingSpan(parent))
        span = _tracer.start_span(name, context=context, attributes=attrs, start_time=start)
        if attrs["gateway.outcome"] == "failed" or "gateway.error_code" in attrs:
            span.set_status(Status(StatusCode.ERROR, attrs.get("gateway.error_code")))
        span.end(end_time=end)
    except Exception as exc:  # an exporter's fault, say: said once
        if not _broken:
            _broken = True
            log.warning("tracing: span not recorded: %s", type(exc).__name__)


def trace_placed(settings: Settings, message_id: int, placed: Any) -> None:
    """The outbound path's span for one record and one partner (policy, report variant,
    signing, outbox; a ``gateway.delivery.Placed``), ending now. Its duration is not
    measured: the span marks what became of the record for the partner, and when."""
    configure_tracing(settings)  # a process that converts nothing (gateway work)
    if _tracer is None:
        return
    outcome, code, index = placed.outcome, placed.code, placed.record + 1
    trace_stage("outbound", 0.0, message_id, outcome, code, index, placed.partner)


def trace_attempt(row: Any, answer: Any, since: datetime, clock: Callable[[], datetime]) -> None:
    """A delivery attempt's span (``row``: an OutboxRecord, ``answer``: the partner's
    Answer): from ``since`` (the worker took the row, or the previous part arrived) to
    the answer, on the worker's clock (read only when tracing is on: tests drive it)."""
    if _tracer is None:
        return
    seconds = max((clock() - since).total_seconds(), 0.0)
    index = row.record + 1 if row.record is not None else None
    trace_stage("deliver", seconds, row.message_id, answer.kind, answer.code, index, row.partner)
