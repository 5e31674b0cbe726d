"""The harness itself: it must see each kind of failure, pass good and refused inputs,
and its mutators must be deterministic for a seed."""

from __future__ import annotations

import random
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from itertools import islice
from pathlib import Path
from typing import Any

import pytest

from gateway.envelope import Record
from gateway.errors import GatewayError, IntakeError, Issue
from tests.conftest import REPO

from .harness import FORMATS, Case, Targets, check, load, save, seeds
from .run import cases


class _Stub(Targets):
    """Targets whose run does what the test says instead of converting."""

    def __init__(self, real: Targets, action: Callable[[], list[str]]) -> None:
        super().__init__(real.settings, real.converter)
        self.action = action

    def run(self, case: Case, arm: Callable[[], None] = lambda: None) -> list[str]:
        arm()
        return self.action()

    def warm(self, fmt: str) -> None:
        pass


CASE = Case("hl7v2", {"x.hl7": b"MSH|^~\\&|"})


def test_an_escaping_exception_is_a_failure_naming_its_type(fuzz_targets: Targets) -> None:
    def boom() -> list[str]:
        raise NotImplementedError("unknown VR")

    failure = check(_Stub(fuzz_targets, boom), CASE)
    assert failure is not None and failure.kind == "exception"
    assert failure.summary.startswith("NotImplementedError")


def test_an_escaping_gateway_error_from_the_converter_is_a_failure(
    fuzz_targets: Targets,
) -> None:
    def refuse() -> list[str]:
        raise IntakeError("x", "stops the batch")

    failure = check(_Stub(fuzz_targets, refuse), CASE)
    assert failure is not None and failure.summary.startswith("IntakeError")


def test_a_busy_hang_is_cut_short_on_cpu_time(fuzz_targets: Targets) -> None:
    def spin() -> list[str]:
        while True:
            pass

    failure = check(_Stub(fuzz_targets, spin), CASE, budget=0.2)
    assert failure is not None and failure.kind == "timeout"
    assert "CPU" in failure.summary


def test_a_waiting_hang_is_cut_short_on_wall_time(fuzz_targets: Targets) -> None:
    def wait() -> list[str]:
        while True:
            time.sleep(0.01)

    start = time.monotonic()
    failure = check(_Stub(fuzz_targets, wait), CASE, budget=0.1)
    assert failure is not None and failure.kind == "timeout"
    assert "wall-clock" in failure.summary
    assert time.monotonic() - start < 10


def test_an_internal_issue_is_a_failure(fuzz_targets: Targets) -> None:
    line = Issue("intake.internal", "unexpected ValueError").line()
    failure = check(_Stub(fuzz_targets, lambda: [line]), CASE)
    assert failure is not None and failure.kind == "internal-issue"


def test_the_real_targets_report_internal_issues(fuzz_targets: Targets) -> None:
    """`Targets.run` picks out records whose issues are coded internal or *.internal."""

    targets = Targets(fuzz_targets.settings, fuzz_targets.converter)
    targets.warm("hl7v2")
    original = targets.converter.iter_convert

    def iter_convert(*args: Any, **kwargs: Any) -> Iterator[Record]:
        for record in original(*args, **kwargs):
            record.issues.append(Issue("internal", "unexpected KeyError"))
            yield record

    targets.converter = type("C", (), {"iter_convert": staticmethod(iter_convert)})()
    failure = check(targets, seeds("hl7v2")[0])
    assert failure is not None and failure.kind == "internal-issue"


# Run in a fresh interpreter: a long-lived test process (an xdist worker after the memory
# tests) has a peak far above its size and a busy machine around it, and growing past
# that peak there did not always show (CI, twice in parallel runs); a fresh one's peak is
# its size, so 64 MB over it is what the check must see.
_GROW = """
from tests.fuzz import harness

harness.MEMORY_BUDGET = 16 << 20


class Grow:
    def warm(self, fmt):
        pass

    def run(self, case, arm=lambda: None):
        arm()
        # ru_maxrss is a high-water mark: grow 64 MB past the peak (touching every page)
        size = max(harness._peak() - harness._rss(), 0) + (64 << 20)
        block = bytearray(size)
        block[::4096] = b"x" * len(block[::4096])
        return []


failure = harness.check(Grow(), harness.Case("hl7v2", {"x.hl7": b"MSH|^~\\\\&|"}))
print(failure.kind if failure is not None else "none")
"""


def test_a_memory_blow_up_is_a_failure() -> None:
    done = subprocess.run(
        [sys.executable, "-c", _GROW], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "memory"


def test_a_variants_refusal_with_a_code_is_not_a_failure(fuzz_targets: Targets) -> None:
    case = Case("variants", {"report.json": b"not json"}, {"lang": "bilingual"})
    assert check(fuzz_targets, case) is None
    with pytest.raises(GatewayError):  # the refusal really happened
        from gateway.reports import variant_response

        variant_response(b"not json", "bilingual", settings=fuzz_targets.settings)


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_seed_converts_or_is_refused(fuzz_targets: Targets, fmt: str) -> None:
    pool = seeds(fmt)
    assert pool
    for case in pool[:2]:
        failure = check(fuzz_targets, case)
        assert failure is None, failure.summary


@pytest.mark.parametrize("fmt", FORMATS)
def test_mutations_are_deterministic_for_a_seed(fmt: str) -> None:
    def digests(seed: int) -> list[str]:
        return [c.digest for c in islice(cases(fmt, random.Random(seed)), 25)]

    first = digests(7)
    assert first == digests(7)
    assert first != digests(8)
    assert len(set(first)) > 15  # mutants differ from each other and from their seeds


def test_a_saved_case_loads_back_the_same(tmp_path: Path) -> None:
    for fmt in FORMATS:
        case = seeds(fmt)[-1]
        again = load(fmt, save(case, tmp_path / fmt))
        assert sorted(again.parts.values()) == sorted(case.parts.values())
        assert again.meta == case.meta
