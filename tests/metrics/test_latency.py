"""The stage latency histogram (gateway/metrics/_latency.py): what ``observe_stage`` counts
is what prometheus-client's own ``Histogram.observe`` counts for the same values."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Histogram, generate_latest, multiprocess

from gateway.metrics import BUCKETS, STAGE_SECONDS, observe_stage, observe_steps
from gateway.metrics._latency import stage_histogram
from tests.conftest import REPO

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


def test_nan_is_counted_in_no_bucket_as_histogram_observe_does() -> None:
    stage = "test-latency-nan"
    ours = stage_histogram()
    reference = _reference()
    for value in (0.3, float("nan"), 2.0):
        observe_stage(stage, value)
        reference.labels(stage).observe(value)
    got, expected = _samples(ours, stage), _samples(reference, stage)
    total = (f"{STAGE_SECONDS}_sum", "")
    assert math.isnan(got.pop(total)) and math.isnan(expected.pop(total))
    assert got == expected and got[(f"{STAGE_SECONDS}_count", "")] == 2


def test_observe_steps_counts_a_history_as_histogram_observe_does() -> None:
    """The pipeline observes a record's history in one call (milliseconds, as the history
    keeps them): the same buckets, count and sum as one observe per step, NaN in none."""
    stages = ("test-steps-a", "test-steps-b")
    ours = stage_histogram()
    reference = _reference()
    steps = [(stages[n % 2], "ok", v * 1000.0, None) for n, v in enumerate(VALUES)]
    steps.append((stages[0], "failed", float("nan"), "internal"))
    observe_steps(steps)
    for stage, _, ms, _ in steps:
        reference.labels(stage).observe(ms / 1000.0)
    total = (f"{STAGE_SECONDS}_sum", "")
    with_nan, without = (_samples(ours, stage) for stage in stages)
    assert without == _samples(reference, stages[1])
    assert without[(f"{STAGE_SECONDS}_count", "")] == len(VALUES) // 2
    expected = _samples(reference, stages[0])
    assert math.isnan(with_nan.pop(total)) and math.isnan(expected.pop(total))
    assert with_nan == expected


def test_steps_held_past_the_flush_are_all_counted() -> None:
    """More steps than are held at once (some added on the way, the rest when read):
    every one counted in its bucket; the sum that of the values."""
    stage = "test-steps-many"
    ours = stage_histogram()
    reference = _reference()
    values = [v for _ in range(70) for v in VALUES[:-1]]  # 700 steps
    for value in values:
        observe_steps([(stage, "ok", value * 1000.0, None)])
        reference.labels(stage).observe(value)
    got, expected = _samples(ours, stage), _samples(reference, stage)
    total = (f"{STAGE_SECONDS}_sum", "")
    assert math.isclose(got.pop(total), expected.pop(total), rel_tol=1e-12)
    assert got == expected and got[(f"{STAGE_SECONDS}_count", "")] == len(values)


# Run in a process of its own: prometheus-client picks the multiprocess values at import.
_OBSERVE = """
import sys
from prometheus_client import Histogram
from gateway.metrics import BUCKETS, STAGE_SECONDS, observe_stage, observe_steps
values = [float(v) for v in sys.argv[2:]]
if sys.argv[1] == "gateway":
    for v in values:
        observe_stage("mapping", v)
elif sys.argv[1] == "steps":  # a record's history: written at once, as the files are read
    for v in values:
        observe_steps([("mapping", "ok", v * 1000.0, None)])
else:
    h = Histogram(STAGE_SECONDS, "reference", ["stage"], buckets=BUCKETS, registry=None)
    for v in values:
        h.labels("mapping").observe(v)
"""


def test_multiprocess_mode_writes_what_histogram_observe_writes(tmp_path: Path) -> None:
    """With PROMETHEUS_MULTIPROC_DIR (gateway serve --workers), observe_stage and
    observe_steps write the shared files' values at once: the text /metrics serves
    equals Histogram.observe's."""
    values = [str(v) for v in VALUES] + ["0.02", "0.02"]
    texts = []
    for who in ("gateway", "steps", "reference"):
        folder = tmp_path / who
        folder.mkdir()
        env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(folder)}
        subprocess.run(
            [sys.executable, "-c", _OBSERVE, who, *values], env=env, cwd=REPO, check=True
        )
        assert any(folder.glob("histogram_*.db"))
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=str(folder))  # type: ignore[no-untyped-call]
        lines = generate_latest(registry).splitlines()
        texts.append(b"\n".join(x for x in lines if not x.startswith(b"# HELP")))  # not ours
    assert texts[0] == texts[1] == texts[2]
    assert f'{STAGE_SECONDS}_count{{stage="mapping"}} {len(values)}.0'.encode() in texts[0]


def test_steps_observed_and_read_from_several_threads_are_each_counted_once() -> None:
    """Converting threads (the listeners' processor, API requests) add steps while a
    scrape reads: two flushes at once must not take the same held steps twice (an
    IndexError lost those taken and said "not recorded") nor leave any uncounted."""
    import threading

    stage = "test-steps-threads"
    ours = stage_histogram()
    threads, per_thread, start = 8, 3000, threading.Barrier(9)
    old = sys.getswitchinterval()

    def observe() -> None:
        start.wait()
        for _ in range(per_thread):
            observe_steps([(stage, "ok", 1.0, None)])

    def scrape() -> None:
        start.wait()
        for _ in range(300):
            list(ours.collect())

    sys.setswitchinterval(1e-6)  # switch threads often: the race is in a few bytecodes
    try:
        workers = [threading.Thread(target=observe) for _ in range(threads)]
        workers.append(threading.Thread(target=scrape))
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
    finally:
        sys.setswitchinterval(old)
    assert _samples(ours, stage)[(f"{STAGE_SECONDS}_count", "")] == threads * per_thread
