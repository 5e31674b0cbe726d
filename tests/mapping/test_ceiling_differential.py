"""The ceiling engine (gateway/mapping/_ceiling.py) against the compiled one, differentially:
mutated HL7 v2 inputs (tests/mapping/ceiling_diff.py: repetitions, empty and "" components,
subcomponents, escapes, trailing separators, segments missing, repeated, moved, long
fields, other MSH-2 characters, GB 18030 / Big5 with MSH-18, lenient fields, batches),
each converted twice by long-lived interpreted, compiled and ceiling Converters, traced
one time in ten, and 4 threads on the one ceiling Converter every 40 inputs: the same
records, Bundles, issues, OperationOutcomes and unmapped fields, byte for byte.

Bounded here, seeded: ``CEILING_DIFF_INPUTS`` inputs (1200) through the three, and
``CEILING_DIFF_SOLO_INPUTS`` (250) through each engine alone in its own process; under a
minute of CPU. Longer, for a time, a random seed unless ``CEILING_DIFF_SEED`` is set:
``CEILING_DIFF_SECONDS=600 .venv/bin/python -m pytest -q tests/mapping -k differential``
or ``CEILING_DIFF_SECONDS=600 .venv/bin/python -m tests.mapping.ceiling_diff``;
a differing input is written to tests/mapping/ceiling_found/ (git-ignored).
"""

from __future__ import annotations

import itertools
import os
import random
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway import Converter
from tests.mapping import ceiling_diff

INPUTS = int(os.environ.get("CEILING_DIFF_INPUTS", "1200"))
SOLO_INPUTS = int(os.environ.get("CEILING_DIFF_SOLO_INPUTS", "250"))
SECONDS = float(os.environ.get("CEILING_DIFF_SECONDS", "0"))


@pytest.fixture(scope="module")
def engines(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Converter]]:
    yield ceiling_diff.converters(tmp_path_factory.mktemp("ceiling-diff"))


def test_ceiling_gives_the_compiled_output_on_mutants(engines: dict[str, Converter]) -> None:
    seed = os.environ.get("CEILING_DIFF_SEED") or ("ci" if not SECONDS else random.random())
    camp = ceiling_diff.run(
        SECONDS or 1e9, seed, limit=None if SECONDS else INPUTS, engines=engines
    )
    found = ceiling_diff.save(camp.diffs + camp.compiled_wrong)
    summary = f"seed {seed}: {ceiling_diff.report(camp)}; saved {[str(p) for p in found]}"
    assert not camp.diffs, summary
    assert not camp.compiled_wrong, summary
    # both ways were compared: messages the ceiling built itself, and fallbacks
    built = sum(n for k, n in camp.per_input.items() if "built" in k.split("+"))
    assert built > 0.3 * camp.inputs, summary
    assert "fallback:error-path" in camp.stats and "fallback:several-patients" in camp.stats, (
        summary
    )


def test_ceiling_alone_gives_what_the_compiled_engine_alone_gives(tmp_path: Path) -> None:
    """In production one engine runs in a process: its memo, shared entries and answers
    hold its own history, no other engine's runs in between. The same seeded inputs,
    each converted twice, by a ceiling Converter alone in one process and a compiled one
    alone in another: the same outcome digests, input by input."""
    seed = os.environ.get("CEILING_DIFF_SEED") or "ci"
    runs = {
        engine: subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests.mapping.ceiling_diff",
                "solo",
                engine,
                seed,
                str(SOLO_INPUTS),
            ],
            env={**os.environ, "CEILING_SOLO_OUT": str(tmp_path / engine)},
            cwd=ceiling_diff.REPO,
        )
        for engine in ("compiled", "ceiling")
    }
    for engine, run in runs.items():
        assert run.wait(timeout=600) == 0, engine
    digests = {e: (tmp_path / e).read_text().split() for e in runs}
    assert len(digests["ceiling"]) == len(digests["compiled"]) > SOLO_INPUTS
    for n, (a, b) in enumerate(zip(digests["compiled"], digests["ceiling"], strict=True)):
        if a != b:
            data = next(itertools.islice(ceiling_diff.solo_inputs(seed, SOLO_INPUTS), n, None))
            (saved,) = ceiling_diff.save([ceiling_diff.Diff(data, "ceiling alone")])
            raise AssertionError(f"input #{n} (seed {seed}) differs alone: {saved}")
