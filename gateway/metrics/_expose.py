"""``GET /metrics``: the Prometheus exposition of one gateway process, which is right
for the whole deployment: counts and queues come from the store
(:class:`StoreCollector`), certificate dates from the key files, and the stage latency
histograms from every process of this ``gateway serve`` when ``PROMETHEUS_MULTIPROC_DIR``
is set (``--workers N`` sets it), else from this process alone."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator

from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response
from prometheus_client import CollectorRegistry, multiprocess
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector

from .. import __version__
from ..config import Settings
from ..store import Store
from . import MULTIPROC_ENV
from ._certs import CertificateCollector
from ._latency import stage_histogram
from ._store import StoreCollector

__all__ = ["add_metrics_route", "metrics_registry"]


class _BuildInfo(Collector):
    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily(
            "gateway_build_info", "Always 1; the gateway's version as a label.", labels=["version"]
        )
        family.add_metric([__version__], 1.0)
        yield family


def metrics_registry(settings: Settings, store: Callable[[], Store]) -> CollectorRegistry:
    """A registry holding everything /metrics shows."""
    registry = CollectorRegistry()
    if os.environ.get(MULTIPROC_ENV):  # every process's files, the dead ones' too
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    else:
        registry.register(stage_histogram())
    registry.register(_BuildInfo())
    registry.register(StoreCollector(store))
    registry.register(CertificateCollector(lambda: settings))
    return registry


def add_metrics_route(app: FastAPI, settings: Settings, store: Callable[[], Store]) -> None:
    """``GET /metrics`` (no token: Prometheus scrapes it; it holds institution codes and
    counts, never patient data; docs/metrics.md)."""
    registry = metrics_registry(settings, store)

    @app.get("/metrics", include_in_schema=False)
    async def metrics(request: Request) -> Response:
        encoder, content_type = choose_encoder(request.headers.get("accept", ""))
        body = await run_in_threadpool(encoder, registry)  # the store's queries block
        return Response(body, media_type=content_type)
