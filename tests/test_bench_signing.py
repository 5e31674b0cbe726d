"""bench/bench_signing.py has a row for every algorithm the gateway signs with, and each
row's three callables (raw cryptography, gateway, joserfc) run on that algorithm's key."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

import bench_signing

from gateway.signing import ALGORITHMS


class _OnceRunner:
    """Stands in for pyperf.Runner: calls each benchmark once instead of timing it."""

    def __init__(self) -> None:
        self.names: list[str] = []

    def bench_func(self, name: str, func: Any, *args: Any) -> None:
        func(*args)
        self.names.append(name)


def test_every_gateway_algorithm_has_its_rows() -> None:
    assert set(bench_signing.ALGS) == set(ALGORITHMS)


def test_rows_run_for_every_algorithm() -> None:
    runner = _OnceRunner()
    results = bench_signing.add_benchmarks(runner)  # type: ignore[arg-type]
    for alg in ALGORITHMS:
        for op in ("sign", "verify"):
            for who in ("raw cryptography", "gateway", "joserfc"):
                assert f"{alg} {op} {who}" in runner.names
            raw, gateway, jose = results["_pairs"][f"{alg} {op}"]
            raw(), gateway(), jose()  # joserfc verifies the gateway's own token
