"""The mapping memoises pure fragments by their node's text (gateway/mapping/_memo.py),
shared between the records of a converter. Attack: two messages equal except in one
field the memo key might miss. After the first is converted until its fragments are
remembered, the second must convert to exactly what it gives with the memo off: no
value of the first may reach it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway import Converter
from gateway.intake.hl7v2._view import Hl7View

REPO = Path(__file__).resolve().parents[2]
SAMPLES = [
    REPO / "examples/imaging/oru_r01_nsch_cta_zh.hl7",
    REPO / "examples/imaging/oru_r01_lax2_ct_cobranded.hl7",
    REPO / "examples/hl7v2/ref_i12_lax2_to_njmu2.hl7",
    REPO / "examples/hl7v2/omi_o23_nsch_ct.hl7",
]


def _segments(path: Path) -> list[bytes]:
    data = path.read_bytes().replace(b"\r\n", b"\r").replace(b"\n", b"\r")
    return [line for line in data.split(b"\r") if line]


def _variants(segments: list[bytes]) -> Iterator[tuple[str, bytes]]:
    """The message with one field changed: its last character, or a component added."""
    for s, segment in enumerate(segments):
        fields = segment.split(b"|")
        for f in range(3 if s == 0 else 1, len(fields)):
            value = fields[f]
            if not value or (s == 0 and f in (9, 10, 12, 18)):  # type, id, version, charset
                continue
            last = b"8" if value.endswith(b"9") else b"9"
            for changed in (value[:-1] + last, value + b"^Z"):
                out = [*fields[:f], changed, *fields[f + 1 :]]
                message = [*segments[:s], b"|".join(out), *segments[s + 1 :]]
                yield f"{segment[:3].decode()}-{f}", b"\r".join(message) + b"\r"


def _output(converter: Converter, data: bytes) -> list[tuple[bool, bytes | None, list[str]]]:
    return [(r.ok, r.bundle_json, [i.line() for i in r.issues]) for r in converter.convert(data)]


@pytest.mark.parametrize("path", SAMPLES, ids=lambda p: p.name)
def test_a_message_differing_in_one_field_never_gets_the_first_ones_values(
    converter: Converter, path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    segments = _segments(path)
    first = b"\r".join(segments) + b"\r"
    for field, second in _variants(segments):
        monkeypatch.setattr(Hl7View, "memo", False)
        expected = _output(converter, second)
        monkeypatch.setattr(Hl7View, "memo", True)
        for _ in range(3):  # remembered the second time a key is met
            _output(converter, first)
        assert _output(converter, second) == expected, field


def test_the_same_number_of_another_authority_gets_its_own_system(converter: Converter) -> None:
    path = REPO / "examples/imaging/oru_r01_nsch_cta_zh.hl7"
    text = path.read_bytes()
    other = text.replace(b"0098765^^^NSCH^MR", b"0098765^^^LAX2^MR")
    for _ in range(3):
        converter.convert(text)
    [record] = converter.convert(other)
    assert record.bundle is not None
    [patient] = [
        e["resource"] for e in record.bundle["entry"] if e["resource"]["resourceType"] == "Patient"
    ]
    systems = {i["system"] for i in patient["identifier"] if i["value"] == "0098765"}
    assert systems == {"https://fhir.lax2.example.cn/sid/mrn"}
