"""The stage latency histogram (gateway/metrics/_latency.py): what ``observe_stage`` counts
is what prometheus-client's own ``Histogram.observe`` counts for the same values."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Histogram

from gateway.metrics import BUCKETS, STAGE_SECONDS, observe_stage
from gateway.metrics._latency import _observer, stage_histogram

# On a bucket's bound, between bounds, zero, negative, past the last bound (+Inf only).
VALUES = (0.0, 0.0005, 0.0004999, 0.00050001, 0.001, 0.3, 2.5, 3600.0, 14400.0, 1e9, -1.0)


def _samples(histogram: Any, stage: str) -> dict[tuple[str, str], float]:
    return {
        (s.name, s.labels.get("le", "")): s.value
        for family in histogram.collect()
        for s in family.samples
        if s.labels.get("stage") == stage
    }


def _reference() -> Histogram:
    return Histogram(
        STAGE_SECONDS, "reference", ["stage"], buckets=BUCKETS, registry=CollectorRegistry()
    )


def test_observe_stage_counts_as_histogram_observe_does() -> None:
    stage = "test-latency-equivalence"  # a series of its own in the process's histogram
    ours = stage_histogram()  # made first: it turns prometheus-client's *_created off
    reference = _reference()
    for value in VALUES:
        observe_stage(stage, value)
        reference.labels(stage).observe(value)
    got = _samples(ours, stage)
    assert got == _samples(reference, stage)
    assert got[(f"{STAGE_SECONDS}_count", "")] == len(VALUES)


def test_a_child_not_laid_out_as_expected_is_observed_by_its_own_observe() -> None:
    class Child:
        def __init__(self) -> None:
            self.seen: list[float] = []

        def observe(self, seconds: float) -> None:
            self.seen.append(seconds)

    child = Child()
    _observer(child)(0.25)
    assert child.seen == [0.25]
