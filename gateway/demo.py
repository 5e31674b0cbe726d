"""``gateway demo``: run the demo network's sample records through the pipeline.

Converts every file in ``examples/hl7v2/`` with the configured network (the demo
network in ``seeds/`` by default), writes each Bundle under
``$GATEWAY_HOME/out/demo/<file>/<control id>.json`` and prints what happened,
including the records that fail on purpose (the broken message in the batch file).
"""

from __future__ import annotations

from collections import Counter
from typing import TextIO

from .config import Settings
from .datafiles import data_dir
from .pipeline import Converter

__all__ = ["run_demo"]


def _resource_summary(bundle: dict[str, object]) -> str:
    entries = bundle.get("entry") or []
    assert isinstance(entries, list)
    counts = Counter(e["resource"]["resourceType"] for e in entries)
    return ", ".join(f"{n} {t}" for t, n in sorted(counts.items()))


def run_demo(settings: Settings, out: TextIO) -> int:
    converter = Converter(settings)
    examples = data_dir("examples") / "hl7v2"
    target = settings.out_dir / "demo"
    files = sorted(p for p in examples.iterdir() if p.suffix == ".hl7")
    out.write(
        f"FHIR gateway demo — network: {settings.network}\n"
        f"converting {len(files)} sample files from {examples}\n\n"
    )
    converted = failed = 0
    for path in files:
        folder = target / path.stem
        folder.mkdir(parents=True, exist_ok=True)
        for record in converter.convert(path.read_bytes(), source=path.name):
            if record.ok and record.bundle is not None and record.bundle_json is not None:
                converted += 1
                dest = folder / f"{record.control_id or record.index}.json"
                dest.write_bytes(record.bundle_json)
                out.write(
                    f"  ok    {path.name:<28} {record.message_type:<8} {record.charset:<10} "
                    f"→ {_resource_summary(record.bundle)}\n"
                )
            else:
                failed += 1
                error = record.errors[0]
                out.write(f"  error {path.name:<28} {error.location or ''}: {error.message}"
                          f" [{error.code}]\n")
            for warning in record.warnings:
                out.write(f"        {warning.line()}\n")
    out.write(
        f"\nconverted {converted} messages, {failed} refused with a reason "
        f"(the batch file holds one broken message on purpose).\n"
        f"Bundles are in {target}\n"
        f"Next: `gateway convert FILE` for your own messages, `gateway serve` for the API.\n"
    )
    return 0 if converted else 1
