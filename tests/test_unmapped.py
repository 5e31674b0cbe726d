"""``trace``: which input fields held data that no mapping read."""

from __future__ import annotations

from pathlib import Path

from gateway import Converter
from tests.gateway_cli import run

REPO = Path(__file__).resolve().parents[1]
REFERRAL = REPO / "examples/hl7v2/ref_i12_lax2_to_njmu2.hl7"


def test_trace_lists_what_nothing_read_and_changes_no_output(converter: Converter) -> None:
    data = REFERRAL.read_bytes()
    [plain] = converter.convert(data)
    [traced] = converter.convert(data, trace=True)
    assert traced.bundle_json == plain.bundle_json and plain.unmapped is None
    unmapped = traced.unmapped or []
    assert "PV1" in unmapped  # the visit is not mapped yet: the whole segment is listed
    assert "RF1-4" in unmapped  # referral disposition
    mapped = {"PID-3", "PID-5", "RF1-6", "DG1-3", "MSH-9", "MSH-10", "MSH-18"}
    assert not mapped & set(unmapped)


def test_cli_prints_the_unmapped_fields(tmp_path: Path) -> None:
    proc = run(
        "convert", "--unmapped", str(REFERRAL), "-o", str(tmp_path / "b.json"), home=tmp_path
    )
    assert proc.returncode == 0
    line = next(ln for ln in proc.stderr.decode().splitlines() if ln.startswith("info:"))
    assert "message LAX220260611101500003: not mapped:" in line and "PV1" in line
