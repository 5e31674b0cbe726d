"""A broken or hostile HL7 v2 batch file (FHS/BHS ... BTS/FTS): segments outside any
message never join a message of the batch."""

from __future__ import annotations

from gateway.intake.hl7v2 import read_messages, split_messages

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


def _counted(bts: str, fts: str) -> list[list[str]]:
    data = _batch(
        "FHS|^~\\&",
        "BHS|^~\\&",
        MSH.format(cid="A1"),
        PID,
        MSH.format(cid="A2"),
        PID,
        f"BTS|{bts}",
        "BHS|^~\\&",
        MSH.format(cid="B1"),
        PID,
        "BTS|1",
        f"FTS|{fts}",
    )
    return [[i.line() for i in unit.issues] for unit in read_messages(data)]


def test_batch_trailer_counts_that_differ_warn_on_the_batch_records() -> None:
    """BTS-1/FTS-1 were never compared with what the batch holds: a message lost in
    transit went unnoticed. Now a warning (the messages themselves are read)."""
    a1, a2, b1 = _counted("3", "1")
    for lines in (a1, a2):
        assert any("BTS-1 declares 3 messages" in x and "holds 2" in x for x in lines), lines
        assert all(x.startswith("warning") for x in lines)
    assert not any("BTS-1" in x for x in b1)
    for lines in (a1, a2, b1):
        assert any("FTS-1 declares 1 batches" in x and "holds 2" in x for x in lines), lines
        assert all("王" not in x for x in lines)


def test_batch_trailer_counts_that_match_or_are_empty_give_no_warning() -> None:
    assert _counted("2", "2") == [[], [], []]
    assert _counted("", "") == [[], [], []]
