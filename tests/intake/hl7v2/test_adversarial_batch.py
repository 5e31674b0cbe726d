"""A broken or hostile HL7 v2 batch file (FHS/BHS ... BTS/FTS): segments outside any
message never join a message of the batch."""

from __future__ import annotations

from gateway.intake.hl7v2 import split_messages

MSH = "MSH|^~\\&|LAX2_HIS|LAX2|RIS|LAX2|20260611||ORU^R01|{cid}|P|2.5"
PID = "PID|1||0012345^^^LAX2^MR||王^伟"
OBX = "OBX|1|TX|^报告||{text}"


def _batch(*lines: str) -> bytes:
    return "\r".join(lines).encode("utf-8") + b"\r"


def test_a_segment_after_bts_is_an_orphan_not_part_of_the_last_message() -> None:
    """Before: the OBX after BTS was appended to message A1, adding a result line to
    another patient's report."""
    data = _batch(
        "FHS|^~\\&",
        "BHS|^~\\&",
        MSH.format(cid="A1"),
        PID,
        OBX.format(text="first"),
        "BTS|1",
        OBX.format(text="stray"),
        "BHS|^~\\&",
        MSH.format(cid="A2"),
        PID,
        "BTS|1",
        "FTS|2",
    )
    first, orphan, second = split_messages(data)
    assert first.error is None and [s[:3] for s in first.segments] == [b"MSH", b"PID", b"OBX"]
    assert b"stray" not in first.data
    assert orphan.error is not None and orphan.error.code == "intake.no-msh"
    assert orphan.line == 7
    assert "王" not in orphan.error.issue.message
    assert second.error is None and second.segments[0].startswith(b"MSH")


def test_trailing_segments_after_the_file_trailer_are_an_orphan() -> None:
    data = _batch("FHS|^~\\&", "BHS|^~\\&", MSH.format(cid="A1"), PID, "BTS|1", "FTS|1", PID)
    first, orphan = split_messages(data)
    assert [s[:3] for s in first.segments] == [b"MSH", b"PID"]
    assert orphan.error is not None and orphan.error.code == "intake.no-msh"
