"""Golden tests: every input under tests/golden/<kind>/ converts to its expected file.

Regenerate with ``make golden`` and review the diff. The comparison is on parsed JSON,
field by field, with no volatile paths: the gateway's output is deterministic.
"""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from gateway import Converter
from tests.golden.regenerate import (
    convert,
    example_inputs,
    example_output,
    expected_path,
    inputs,
    render,
)
from tests.jsondiff import differences

CASES = inputs()


def test_there_are_goldens_for_every_supported_message_type(converter: Converter) -> None:
    covered = set()
    for source in CASES:
        for record in convert(converter, source):
            if record.ok and record.message_type:
                covered.add(record.message_type)
    assert covered == set(converter.message_types)


@pytest.mark.parametrize("source", CASES, ids=[str(p.relative_to(p.parents[1])) for p in CASES])
def test_golden(source: Path, converter: Converter) -> None:
    target = expected_path(source)
    assert target.exists(), f"no {target.name}: run `make golden` and review the result"
    expected = orjson.loads(target.read_bytes())
    actual = orjson.loads(render(converter, source))
    diff = differences(expected, actual)
    assert not diff, "output differs from the golden file:\n" + "\n".join(diff[:40])


@pytest.mark.parametrize("source", example_inputs(), ids=lambda p: p.name)
def test_example_bundles_are_current(source: Path, converter: Converter) -> None:
    target = example_output(source)
    assert target.exists(), f"no {target}: run `make golden`"
    diff = differences(orjson.loads(target.read_bytes()), orjson.loads(render(converter, source)))
    assert not diff, "examples/ shows an outdated Bundle:\n" + "\n".join(diff[:40])
