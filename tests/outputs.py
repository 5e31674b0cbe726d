"""Every Bundle the gateway makes, for the tests that judge its output as a partner would
(tests/partner: a strict FHIR server; tests/test_independent_validators.py: three
independent R4 validators): the goldens, examples/ and what `make demo` writes,
report variants included."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import orjson

from gateway import Settings
from gateway.demo import run_demo
from tests.conftest import REPO

GOLDEN = REPO / "tests" / "golden"
EXAMPLES = REPO / "examples"

Named = tuple[str, dict[str, Any]]


def bundles(path: Path, label: str) -> list[Named]:
    """The Bundles in one output file (a batch file holds a list)."""
    data = orjson.loads(path.read_bytes())
    found = data if isinstance(data, list) else [data]
    return [
        (f"{label}[{n}]" if len(found) > 1 else label, b)
        for n, b in enumerate(found)
        if b.get("resourceType") == "Bundle"  # not a batch file's refused message's outcome
    ]


def run_demo_into(home: Path) -> Path:
    """Run `gateway demo` in a fresh home; the folder its Bundles are written to."""
    settings = Settings.load(home=home, env={})
    run_demo(settings, io.StringIO())
    return settings.out_dir / "demo"


def every_bundle(demo_out: Path) -> list[Named]:
    out: list[Named] = []
    for path in sorted(GOLDEN.glob("**/*.expected.json")):
        out += bundles(path, str(path.relative_to(REPO)))
    for path in sorted(EXAMPLES.glob("*/bundles/*.json")):
        out += bundles(path, str(path.relative_to(REPO)))
    for path in sorted(demo_out.glob("**/*.json")):
        if path.relative_to(demo_out).parts[0] == "gateway":
            continue  # section 4's gateways: the referral as sent, signed (a Bundle above)
        out += bundles(path, f"demo:{path.relative_to(demo_out)}")
    return out
