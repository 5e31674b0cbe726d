"""Metrics (docs/metrics.md): ``GET /metrics`` for Prometheus and the stage latency
histograms the pipeline and the store feed; optional OpenTelemetry tracing of a record
through its stages (``_tracing``: off by default, and then opentelemetry is not imported).

Counts and queue figures are read from the store when scraped (right across processes
and restarts); latencies are histograms in the process that measured them, shared
through ``PROMETHEUS_MULTIPROC_DIR`` when the API runs as several processes.
prometheus-client is imported only when first used (it fixes the multiprocess mode at
import), so importing this package costs nothing and decides nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from ._blocked import CREDENTIALS_CODES, CREDENTIALS_REFUSED, NO_TOKEN, credentials_blocked
from ._latency import BUCKETS, STAGE_SECONDS, observe_stage, observe_steps
from ._tracing import (
    configure_tracing,
    trace_attempt,
    trace_placed,
    trace_record,
    trace_stage,
    traced_message,
    tracing_on,
)

if TYPE_CHECKING:
    from fastapi import FastAPI

    from ..config import Settings
    from ..store import Store

__all__ = [
    "BUCKETS",
    "CREDENTIALS_CODES",
    "CREDENTIALS_REFUSED",
    "MULTIPROC_ENV",
    "NO_TOKEN",
    "STAGE_SECONDS",
    "add_metrics_route",
    "configure_tracing",
    "credentials_blocked",
    "observe_stage",
    "observe_steps",
    "trace_attempt",
    "trace_placed",
    "trace_record",
    "trace_stage",
    "traced_message",
    "tracing_on",
]

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


def add_metrics_route(app: FastAPI, settings: Settings, store: Callable[[], Store]) -> None:
    """Add ``GET /metrics`` to the API (its collectors read ``store()`` at each scrape)."""
    from ._expose import add_metrics_route as add  # the store imports the pipeline: late

    add(app, settings, store)
