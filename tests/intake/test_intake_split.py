"""split_messages: files → RawMessage records (line ends, BOM, batches, MLLP, junk)."""

from __future__ import annotations

import pytest

from gateway.errors import IntakeError
from gateway.intake.hl7v2 import Message, RawMessage, parse_message, split_messages

# A small UTF-8 REF^I12 from 来安县第二人民医院; {cid} is MSH-10 so messages can be told apart.
MSH = (
    "MSH|^~\\&|LAX2_HIS|LAX2^2.16.156.10011.99.1.4^ISO|NJMU2_HIS|NJMU2|20260611090000+0800||"
    "REF^I12^REF_I12|{cid}|P|2.5|||||CHN|UNICODE UTF-8"
)
PID = "PID|1||0012345^^^LAX2^MR||王^伟^^^^^L||19660420|M"
PV1 = "PV1|1|O|NEU^^^LAX2"


def segments(cid: str) -> list[str]:
    return [MSH.format(cid=cid), PID, PV1]


def encode(*messages: list[str], end: str = "\r") -> bytes:
    return "".join(seg + end for msg in messages for seg in msg).encode("utf-8")


def parse(raw: RawMessage) -> Message:
    return parse_message(raw)


def only_error(result: list[RawMessage]) -> IntakeError:
    assert len(result) == 1
    assert result[0].error is not None
    return result[0].error


# -- one and many messages ---------------------------------------------------------------


def test_one_message_per_file() -> None:
    [raw] = split_messages(encode(segments("A1")))
    assert (raw.index, raw.line, raw.error) == (1, 1, None)
    assert [s[:3] for s in raw.segments] == [b"MSH", b"PID", b"PV1"]
    # RawMessage.data is the message re-terminated with CR, whatever the file used.
    assert raw.data == encode(segments("A1"))
    message = parse(raw)
    assert message.control_id == "A1"
    assert message.segments[1][5] == "王^伟^^^^^L"


def test_many_messages_per_file_keep_order_index_and_line() -> None:
    raws = split_messages(encode(segments("A1"), segments("A2"), segments("A3")))
    assert [r.index for r in raws] == [1, 2, 3]
    # Each message has 3 segments, each ending in CR: MSH lines are 1, 4, 7.
    assert [r.line for r in raws] == [1, 4, 7]
    assert [parse(r).control_id for r in raws] == ["A1", "A2", "A3"]
    assert raws[1].label("batch.hl7") == "batch.hl7, message #2 (line 4)"
    assert raws[1].label() == "message #2 (line 4)"


@pytest.mark.parametrize("end", ["\r", "\n", "\r\n"], ids=["CR", "LF", "CRLF"])
def test_segment_ends(end: str) -> None:
    raws = split_messages(encode(segments("A1"), segments("A2"), end=end))
    assert [r.line for r in raws] == [1, 4]  # CRLF is one line end, not two
    for raw in raws:
        assert len(raw.segments) == 3
        assert not any(b"\r" in s or b"\n" in s for s in raw.segments)
        assert parse(raw).segments[1][5] == "王^伟^^^^^L"


def test_mixed_segment_ends_in_one_message() -> None:
    msh, pid, pv1 = segments("A1")
    data = f"{msh}\r\n{pid}\n{pv1}\r".encode()
    [raw] = split_messages(data)
    assert [s[:3] for s in raw.segments] == [b"MSH", b"PID", b"PV1"]
    assert parse(raw).segments[2] == ["PV1", "1", "O", "NEU^^^LAX2"]


def test_blank_lines_between_segments_and_messages_are_skipped() -> None:
    msh1, pid, pv1 = segments("A1")
    msh2 = MSH.format(cid="A2")
    # Line 2 is empty, line 4 holds only spaces and a tab, lines 6-7 separate the messages.
    text = f"{msh1}\n\n{pid}\n  \t\n{pv1}\n\n\n{msh2}\n{pid}\n"
    raws = split_messages(text.encode())
    assert [len(r.segments) for r in raws] == [3, 2]
    assert [r.line for r in raws] == [1, 8]  # file line numbers, blank lines counted
    assert parse(raws[0]).positions == {"MSH": [0], "PID": [1], "PV1": [2]}


# -- BOM -------------------------------------------------------------------------------------

BOM = b"\xef\xbb\xbf"


def test_utf8_bom_before_msh() -> None:
    [raw] = split_messages(BOM + encode(segments("A1")))
    assert raw.segments[0].startswith(b"MSH|")
    assert parse(raw).msh(1) == "|"  # the BOM did not shift MSH-1


def test_utf8_bom_before_second_msh() -> None:
    # Two UTF-8 files with BOMs concatenated: the second BOM sits right before MSH.
    data = BOM + encode(segments("A1")) + BOM + encode(segments("A2"))
    raws = split_messages(data)
    assert [parse(r).control_id for r in raws] == ["A1", "A2"]
    assert raws[1].segments[0].startswith(b"MSH|")


# -- batch envelopes -------------------------------------------------------------------------


def test_fhs_bhs_batch_envelope_is_skipped() -> None:
    fhs = "FHS|^~\\&|LAX2_HIS|LAX2|||20260611"
    bhs = "BHS|^~\\&|LAX2_HIS|LAX2|||20260611"
    data = encode([fhs, bhs], segments("A1"), segments("A2"), ["BTS|2", "FTS|1"])
    raws = split_messages(data)
    assert [r.line for r in raws] == [3, 6]
    assert [[s[:3] for s in r.segments] for r in raws] == [[b"MSH", b"PID", b"PV1"]] * 2
    assert [parse(r).control_id for r in raws] == ["A1", "A2"]


# -- MLLP ------------------------------------------------------------------------------------

VT, FS_CR = b"\x0b", b"\x1c\r"


def test_mllp_single_frame() -> None:
    [raw] = split_messages(VT + encode(segments("A1")) + FS_CR)
    assert raw.error is None
    assert raw.data == encode(segments("A1"))  # frame bytes 0x0B / 0x1C are gone
    assert parse(raw).control_id == "A1"


def test_mllp_multiple_frames() -> None:
    data = b"".join(VT + encode(segments(c)) + FS_CR for c in ("A1", "A2", "A3"))
    raws = split_messages(data)
    assert [parse(r).control_id for r in raws] == ["A1", "A2", "A3"]
    # 3 segments + the line holding the end block 0x1C: frames start on lines 1, 5, 9.
    assert [r.line for r in raws] == [1, 5, 9]


def test_mllp_unclosed_frame_is_truncated() -> None:
    # No 0x1C end block: the connection dropped mid-message.
    raws = split_messages(VT + encode(segments("A1"))[:-20])
    err = only_error(raws)
    assert err.code == "intake.mllp-truncated"
    assert err.location == "line 1"
    with pytest.raises(IntakeError) as exc:
        parse(raws[0])
    assert exc.value.code == "intake.mllp-truncated"


def test_mllp_unclosed_last_frame_keeps_the_complete_frames() -> None:
    data = VT + encode(segments("A1")) + FS_CR + VT + encode(segments("A2")) + FS_CR
    data += VT + encode(segments("A3"))[:30]
    raws = split_messages(data)
    assert [r.index for r in raws] == [1, 2, 3]
    assert [parse(r).control_id for r in raws[:2]] == ["A1", "A2"]
    assert raws[2].error is not None
    assert raws[2].error.code == "intake.mllp-truncated"
    assert raws[2].line == 9


def test_mllp_unframed_message_after_a_frame_is_not_dropped() -> None:
    data = VT + encode(segments("A1")) + FS_CR + encode(segments("A2"))
    raws = split_messages(data)
    assert [parse(r).control_id for r in raws] == ["A1", "A2"]
    assert raws[1].line == 5


# -- not a message ---------------------------------------------------------------------------


def test_text_before_first_msh_is_no_msh_and_later_messages_still_parse() -> None:
    # A mail header pasted above the messages.
    junk = "转发：来安县转诊单\r\n\r\n"
    data = junk.encode() + encode(segments("A1"), segments("A2"))
    raws = split_messages(data)
    assert len(raws) == 3
    first = raws[0]
    assert first.error is not None
    assert first.error.code == "intake.no-msh"
    assert first.error.location == "MSH"
    assert (first.index, first.line) == (1, 1)
    # The error shows the form of the junk, not its text.
    assert "starts with '字字：字字字字字字'" in str(first.error)
    assert "转诊" not in str(first.error)
    with pytest.raises(IntakeError, match="must begin with MSH"):
        parse(first)
    assert [(r.index, r.line) for r in raws[1:]] == [(2, 3), (3, 6)]
    assert [parse(r).control_id for r in raws[1:]] == ["A1", "A2"]


PNG = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x10"
PDF = (
    b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n"
    b"1 0 obj\n<< /Length 9 /Filter /FlateDecode >>\nstream\nx\x9c\x03\x00"
)


@pytest.mark.parametrize(
    ("data", "offset"),
    [
        (PNG, 6),  # 0x1A after the PNG signature's CR LF
        (PDF, PDF.index(b"\x03")),  # first control byte: inside the compressed stream
        (b"\x00\x00\x00\x00" + b"\x00" * 60, 0),
        (b"PK\x03\x04\x14\x00", 2),  # a zip
    ],
    ids=["png", "pdf", "nul", "zip"],
)
def test_binary_input(data: bytes, offset: int) -> None:
    err = only_error(split_messages(data))
    assert err.code == "intake.binary"
    assert f"offset {offset}" in str(err)


def test_binary_bytes_inside_one_message_fail_only_that_message() -> None:
    # Message A2 carries a NUL byte in PV1; A1 and A3 are fine.
    broken = [MSH.format(cid="A2"), PID, "PV1|1|O|NEU\x00^^^LAX2"]
    raws = split_messages(encode(segments("A1"), broken, segments("A3")))
    assert len(raws) == 3
    assert raws[1].error is not None
    assert raws[1].error.code == "intake.binary"
    assert raws[1].line == 4
    assert [parse(r).control_id for r in (raws[0], raws[2])] == ["A1", "A3"]


@pytest.mark.parametrize(
    "data", [b"", b"\r\n\r\n  \t\r", BOM, VT + FS_CR], ids=["empty", "blank", "bom", "mllp"]
)
def test_empty_input(data: bytes) -> None:
    err = only_error(split_messages(data))
    assert err.code == "intake.empty"


@pytest.mark.parametrize("codec", ["utf-16", "utf-16-le", "utf-16-be", "utf-32"])
def test_utf16_or_utf32_text_is_an_unsupported_charset_not_binary(codec: str) -> None:
    # Notepad's "Unicode" save: NUL bytes between the ASCII letters of MSH.
    data = "".join(s + "\r" for s in segments("A1")).encode(codec)
    err = only_error(split_messages(data))
    assert err.code == "intake.charset-unsupported"
    assert "UTF-8" in str(err)


def test_dos_end_of_file_mark_is_not_content() -> None:
    data = b"MSH|^~\\&|A|NSCH|B|C|20260101||ADT^A01|C1|P|2.5\rPID|1||X^^^NSCH^MR\r\x1a"
    [raw] = split_messages(data)
    assert raw.error is None and len(raw.segments) == 2


def test_bom_before_the_first_mllp_frame() -> None:
    msg = b"MSH|^~\\&|A|NSCH|B|C|20260101||ADT^A01|C1|P|2.5\rPID|1\r"
    [raw] = split_messages(b"\xef\xbb\xbf\x0b" + msg + b"\x1c\r")
    assert raw.error is None and raw.segments[0].startswith(b"MSH")
