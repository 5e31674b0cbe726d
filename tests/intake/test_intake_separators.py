"""An HL7 v2 message whose carriage returns were stripped in transit (``curl -d``) is
refused for what it is, not as an unknown MSH-18 character set."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway import Converter

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "hl7v2"


@pytest.mark.parametrize(
    ("name", "segment"),
    [
        ("ref_i12_nsch_to_hkpmc.hl7", "RF1"),  # UTF-8
        ("omg_o19_nsch.hl7", "PID"),
        ("ref_i12_hkpmc_to_nsch.hl7", "RF1"),  # Big5
        ("ref_i12_lax2_to_njmu2.hl7", "RF1"),  # GB 18030
    ],
)
def test_stripped_line_ends_are_named(converter: Converter, name: str, segment: str) -> None:
    flat = (EXAMPLES / name).read_bytes().replace(b"\r", b"").replace(b"\n", b"")
    [record] = converter.convert(flat, source=name)
    [error] = record.errors
    assert error.code == "intake.no-segment-separators" and error.location == "MSH"
    assert error.message.startswith("no segment separators (carriage returns)")
    assert f"segment {segment} running on inside MSH-18" in error.message
    assert "--data-binary" in error.message


@pytest.mark.parametrize(
    ("name", "codec", "application"),
    [
        # 院 is B0 7C in Big5: its trail byte is '|'
        pytest.param("ref_i12_hkpmc_to_nsch.hl7", "big5hkscs", "瑪麗醫院", id="big5"),
        # 東 is 96 7C in GB 18030 (a traditional character, in GBK's range)
        pytest.param("ref_i12_lax2_to_njmu2.hl7", "gb18030", "東華醫院", id="gb18030"),
    ],
)
def test_a_trail_byte_that_is_a_bar_does_not_shift_the_field_named(
    converter: Converter, name: str, codec: str, application: str
) -> None:
    # The sending application (MSH-3) named in Chinese, one of whose characters has '|'
    # as its second byte: counted on the bytes, RF1 seemed to run on inside MSH-19.
    data = (EXAMPLES / name).read_bytes()
    sender = data.split(b"|")[2]
    named = application.encode(codec)
    assert named.count(b"|") == 1
    data = data.replace(b"|" + sender + b"|", b"|" + named + b"|", 1)
    flat = data.replace(b"\r", b"").replace(b"\n", b"")
    [record] = converter.convert(flat, source=name)
    [error] = record.errors
    assert error.code == "intake.no-segment-separators"
    assert "segment RF1 running on inside MSH-18;" in error.message


def test_a_message_ending_at_msh12_is_caught_too(converter: Converter) -> None:
    flat = b"MSH|^~\\&|NSCH_HIS|NSCH|HKPMC_HIS|HKPMC|20260615100000||ADT^A01|C1|P|2.5EVN|A01"
    [record] = converter.convert(flat, source="flat")
    assert record.errors[0].code == "intake.no-segment-separators"
    assert "inside MSH-12" in record.errors[0].message


@pytest.mark.parametrize(
    "msh",
    [
        # facility names that end in a segment id (NSCH: SCH, XPID: PID) before MSH-12
        b"MSH|^~\\&|XPID|NSCH|A|B|20260615100000||OMI^O23^OMI_O23|C1|P|2.5|||||CHN|UNICODE UTF-8",
        b"MSH|^~\\&|NSCH_HIS|NSCH|RIS|NSCH|20260615100000||ADT^A01|C1|P|2.5",
    ],
)
def test_an_msh_only_message_is_not_taken_for_a_flattened_one(
    converter: Converter, msh: bytes
) -> None:
    [record] = converter.convert(msh, source="msh")
    assert all(i.code != "intake.no-segment-separators" for i in record.issues)


def test_a_segment_name_past_msh25_is_not_named(converter: Converter) -> None:
    # The segment after MSH is one the check does not know (ZRF, ZPR): the first known
    # name in the line is the tail of PRD-8's NSCH, far past MSH's last field (MSH-25).
    # Naming "segment SCH running on inside MSH-45" sent the operator to a field that
    # does not exist; the message says only that the line ends were lost.
    data = (EXAMPLES / "ref_i12_hkpmc_to_nsch.hl7").read_bytes()  # Big5
    data = data.replace(b"\rRF1|", b"\rZRF|").replace(b"\rPRD|", b"\rZPR|")
    flat = data.replace(b"\r", b"").replace(b"\n", b"")
    assert b"NSCH|" in flat
    [record] = converter.convert(flat, source="flat")
    [error] = record.errors
    assert (error.code, error.location) == ("intake.no-segment-separators", "MSH")
    assert "segment SCH" not in error.message
    assert "running on past MSH-25, the last field of MSH" in error.message
    assert "--data-binary" in error.message
