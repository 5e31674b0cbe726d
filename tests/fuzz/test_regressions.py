"""Replay every input the fuzzer kept (tests/fuzz/regressions/<format>/): each must be
converted or refused with a GatewayError-coded issue; never an exception escaping the
entry point, an `internal` issue, a hang or a memory blow-up."""

from __future__ import annotations

from pathlib import Path

import pytest

from .harness import REGRESSIONS, Targets, check, load, regressions
from .known import KNOWN_FAILING


def _params() -> list[object]:
    params: list[object] = []
    for fmt, path in regressions():
        name = path.relative_to(REGRESSIONS).as_posix()
        marks = []
        if name in KNOWN_FAILING:
            marks.append(pytest.mark.xfail(strict=False, reason=KNOWN_FAILING[name]))
        params.append(pytest.param(fmt, path, id=name, marks=marks))
    return params


def test_every_known_failing_entry_names_a_kept_input() -> None:
    kept = {p.relative_to(REGRESSIONS).as_posix() for _, p in regressions()}
    assert set(KNOWN_FAILING) <= kept


@pytest.mark.parametrize(("fmt", "path"), _params())
def test_regression_input_converts_or_is_refused(
    fuzz_targets: Targets, fmt: str, path: Path
) -> None:
    failure = check(fuzz_targets, load(fmt, path))
    assert failure is None, f"{failure.summary}\n{failure.details}"
