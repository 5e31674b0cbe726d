"""Stage latencies: histograms kept in the process that ran the stage.

prometheus-client decides at import whether values live in memory or in files shared by
processes (``PROMETHEUS_MULTIPROC_DIR``), so it is imported at the first observation,
not with this module: ``gateway serve --workers N`` sets the variable before anything
is measured, in the supervisor and in every worker it starts.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

__all__ = ["BUCKETS", "STAGE_SECONDS", "observe_stage", "stage_histogram"]

STAGE_SECONDS = "gateway_stage_duration_seconds"
# From a cached mapping fragment (well under a millisecond) to a large DICOM study or a
# store write waiting for its turn (seconds), and a record's wait in the outbox (`queue`:
# retries and holds, up to hours).
BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
    30.0, 60.0, 300.0, 1800.0, 3600.0, 14400.0,
)  # fmt: skip

log = logging.getLogger("gateway.metrics")
_made = threading.Lock()
_histogram: Any = None
_children: dict[str, Any] = {}  # the histogram's series per stage: .labels() costs a lock
_broken = False


def stage_histogram() -> Any:
    """The stage latency histogram of this process (made at the first use; registered in
    no registry: /metrics reads it, or the multiprocess files it writes)."""
    global _histogram
    with _made:
        if _histogram is None:
            from prometheus_client import Histogram, disable_created_metrics

            # The same series with one process or several (the multiprocess mode has
            # no *_created): the gateway uses prometheus-client for nothing else.
            disable_created_metrics()  # type: ignore[no-untyped-call]

            _histogram = Histogram(
                STAGE_SECONDS,
                "Time a record spent in a stage: intake, mapping, validation, serialise "
                "(the converter) and process (a stored message: load, convert, keep the "
                "outcome).",
                ["stage"],
                buckets=BUCKETS,
                registry=None,
            )
        return _histogram


def observe_stage(stage: str, seconds: float) -> None:
    """Count one pass of a record through ``stage`` that took ``seconds``. Never raises:
    a measurement must not fail a record."""
    global _broken
    try:
        child = _children.get(stage)
        if child is None:
            child = _children[stage] = stage_histogram().labels(stage)
        child.observe(seconds)
    except Exception as exc:  # a full or removed metrics directory, say: said once
        if not _broken:
            _broken = True
            log.warning("metrics: stage latency not recorded: %s", type(exc).__name__)
