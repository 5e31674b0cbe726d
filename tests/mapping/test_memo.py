"""Memoised pure fragments never change what a message converts to, whatever came
before it: each sample converted after all the others, in two orders, gives the same
bytes as a fresh converter that has seen nothing."""

from __future__ import annotations

from pathlib import Path

from gateway import Converter, Settings

REPO = Path(__file__).resolve().parents[2]
SAMPLES = sorted((REPO / "examples" / "hl7v2").glob("*.hl7")) + sorted(
    (REPO / "tests" / "golden" / "hl7v2").glob("*.hl7")
)


def _outputs(converter: Converter, paths: list[Path]) -> dict[str, list[bytes | None]]:
    return {
        f"{p.parent.name}/{p.name}": [r.bundle_json for r in converter.convert(p.read_bytes())]
        for p in paths
    }


def test_memo_never_leaks_between_messages(tmp_path: Path) -> None:
    settings = Settings.load(home=tmp_path, env={})
    fresh = {}
    for path in SAMPLES:
        fresh.update(_outputs(Converter(settings), [path]))
    shared = Converter(settings)
    forwards = _outputs(shared, SAMPLES)
    backwards = _outputs(shared, list(reversed(SAMPLES)))
    assert forwards == fresh and backwards == fresh
