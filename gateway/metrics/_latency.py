"""Stage latencies: histograms kept in the process that ran the stage.

prometheus-client decides at import whether values live in memory or in files shared by
processes (``PROMETHEUS_MULTIPROC_DIR``), so it is imported at the first observation,
not with this module: ``gateway serve --workers N`` sets the variable before anything
is measured, in the supervisor and in every worker it starts.

The pipeline's four stage observations a record (:func:`observe_steps`) are held in
memory and added to the histogram a few hundred at a time, and whenever it is read
(its ``collect``, which every scrape and test goes through): each one added alone takes
two locked increments, eight a record. In the multiprocess mode the values are files
that other processes read, so they are written at once.
"""

from __future__ import annotations

import logging
import threading
from bisect import bisect_left
from collections import deque
from collections.abc import Iterable, Iterator
from typing import Any

__all__ = ["BUCKETS", "STAGE_SECONDS", "observe_stage", "observe_steps", "stage_histogram"]

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
_broken = False
# Steps (stage, outcome, ms, code) observed by the pipeline, not yet in the histogram.
# A deque: appending is atomic, so converting threads need no lock to add. Taking is
# done under _flushing: two flushes at once (a scrape and a converting thread, or two
# converting threads) each counted len(_pending) and popped that many, so one found it
# empty and lost the steps it had taken; and a scrape must wait for a flush under way,
# or it misses the steps that flush holds.
_pending: deque[tuple[str, str, float, str | None]] = deque()
_flushing = threading.Lock()
_FLUSH_AT = 256  # pending steps (64 records of four stages)
_immediate = True  # until the histogram says its values are in memory (not files)


def stage_histogram() -> Any:
    """The stage latency histogram of this process (made at the first use; registered in
    no registry: /metrics reads it, or the multiprocess files it writes). Reading it
    (``collect``) first adds the observations still held."""
    global _histogram, _immediate
    with _made:
        if _histogram is None:
            from prometheus_client import Histogram, disable_created_metrics
            from prometheus_client.values import ValueClass

            # The same series with one process or several (the multiprocess mode has
            # no *_created): the gateway uses prometheus-client for nothing else.
            disable_created_metrics()  # type: ignore[no-untyped-call]

            class _Flushed(Histogram):
                def collect(self) -> Iterator[Any]:
                    _flush()
                    yield from super().collect()

            _histogram = _Flushed(
                STAGE_SECONDS,
                "Time a record spent in a stage: intake, mapping, validation, serialise "
                "(the converter) and process (a stored message: load, convert, keep the "
                "outcome).",
                ["stage"],
                buckets=BUCKETS,
                registry=None,
            )
            _immediate = getattr(ValueClass, "_multiprocess", True)
        return _histogram


class _Series:
    """One stage's series, observed as ``Histogram.observe`` observes it (its sum, then
    the first bucket whose bound holds the value) without that method's per-call label
    check and its Python loop over the bounds: a bisection finds the bucket.
    tests/metrics/test_latency.py holds the two equal, in one process and in the
    multiprocess files."""

    __slots__ = ("bounds", "buckets", "sum")

    def __init__(self, child: Any) -> None:
        self.bounds: list[float] = list(child._upper_bounds)  # ends with +Inf: holds any number
        self.buckets: list[Any] = child._buckets  # the values /metrics reads
        self.sum: Any = child._sum

    def observe(self, seconds: float) -> None:
        self.sum.inc(seconds)
        if seconds == seconds:  # NaN fits no bucket: Histogram.observe counts it in none
            self.buckets[bisect_left(self.bounds, seconds)].inc(1)


_series: dict[str, _Series] = {}  # per stage; .labels() costs a lock


def _series_of(stage: str) -> _Series:
    series = _series.get(stage)
    if series is None:
        series = _series[stage] = _Series(stage_histogram().labels(stage))
    return series


def observe_stage(stage: str, seconds: float) -> None:
    """Count one pass of a record through ``stage`` that took ``seconds``, at once.
    Never raises: a measurement must not fail a record."""
    try:
        _series_of(stage).observe(seconds)
    except Exception as exc:  # a full or removed metrics directory, say: said once
        _failed(exc)


def observe_steps(steps: Iterable[tuple[str, str, float, str | None]]) -> None:
    """:func:`observe_stage` for each ``(stage, outcome, ms, code)`` of a record's
    history (milliseconds, as the history keeps them), held until the histogram is
    read or a few hundred are held (see the module's text). Never raises."""
    _pending.extend(steps)  # tuples: a later change to the history does not reach them
    if _immediate or len(_pending) >= _FLUSH_AT:
        _flush()


def _flush() -> None:
    """Add the held steps to the histogram: per stage, one increment of its sum (added
    in the order observed) and one of each bucket that got any."""
    try:
        with _flushing:
            _add_held()
    except Exception as exc:  # see observe_stage
        _failed(exc)


def _add_held() -> None:
    """:func:`_flush`'s work, under its lock: the only code that takes from _pending."""
    sums: dict[str, float] = {}
    counts: dict[tuple[str, int], int] = {}
    for _ in range(len(_pending)):  # what is there now; more may come meanwhile
        stage, _, ms, _ = _pending.popleft()
        series = _series.get(stage) or _series_of(stage)
        seconds = ms / 1000.0
        sums[stage] = sums.get(stage, 0.0) + seconds
        if seconds == seconds:  # NaN fits no bucket (see _Series.observe)
            key = (stage, bisect_left(series.bounds, seconds))
            counts[key] = counts.get(key, 0) + 1
    for stage, total in sums.items():
        _series[stage].sum.inc(total)
    for (stage, index), count in counts.items():
        _series[stage].buckets[index].inc(count)


def _failed(exc: Exception) -> None:
    global _broken
    if not _broken:
        _broken = True
        log.warning("metrics: stage latency not recorded: %s", type(exc).__name__)
