"""The ER7 reader's fast paths (issue 18) give what the general code gives: line splits
on the bytes' own split, segment names checked by a set look-up, resolved charset names
remembered. Each test compares with the general path or pins the error it must keep."""

from __future__ import annotations

import pytest

from gateway.errors import IntakeError
from gateway.intake import _charset
from gateway.intake.hl7v2 import parse_message, split_messages
from gateway.intake.hl7v2._er7 import _LINE_END, _lines

MSH = b"MSH|^~\\&|APP|NSCH|GW|HUB|20260101||ADT^A01|C1|P|2.5|||||CHN|UNICODE UTF-8"
PID = b"PID|1||123^^^NSCH||CHAN^TAI MAN"


@pytest.mark.parametrize(
    "payload",
    [
        b"",
        b"MSH|a\rPID|b\r",
        b"MSH|a\nPID|b\n",
        b"MSH|a\r\nPID|b\r\n",
        b"MSH|a\rPID|b\nOBX|c\r\n\r\rNTE",
        b"no line end at all",
        b"\r\r\n\n\r",
    ],
)
def test_lines_split_as_the_line_end_pattern(payload: bytes) -> None:
    assert _lines(payload) == _LINE_END.split(payload)


def test_whitespace_lines_and_boms_are_skipped_as_before() -> None:
    """Blank lines of any ASCII whitespace (form feed, vertical tab inside a plain file)
    are skipped, a BOM before a segment is dropped, and batch envelopes are left out."""
    data = (
        b"\xef\xbb\xbfFHS|^~\\&\rBHS|^~\\&\r" + MSH + b"\r \t\x0c\r\xef\xbb\xbf" + PID + b"\r"
        b"BTS|1\rFTS|1\r"
    )
    [raw] = split_messages(data)
    assert raw.error is None and raw.segments == [MSH, PID]
    assert raw.line == 3


def test_an_uncommon_segment_name_is_checked_by_the_pattern() -> None:
    message = parse_message(split_messages(MSH + b"\r" + PID + b"\rZQ9|x\r")[0])
    assert message.positions == {"MSH": [0], "PID": [1], "ZQ9": [2]}


@pytest.mark.parametrize(
    ("bad", "number"),
    [(b"pid|1", 3), (b"PIDX|1", 3), (b"PI|1", 3), (b"PID^1", 3), (b"P1", 3)],
)
def test_a_malformed_segment_is_named_by_its_number_among_all_lines(
    bad: bytes, number: int
) -> None:
    """Empty lines count (the text is split on CR, as the error always numbered it)."""
    [raw] = split_messages(MSH + b"\r" + PID + b"\r" + bad + b"\r")
    raw.segments.insert(2, b"")  # an empty segment before it: still numbered
    with pytest.raises(IntakeError) as exc:
        parse_message(raw)
    assert exc.value.code == "intake.segment-syntax"
    assert exc.value.location == f"segment {number + 1}"


def test_a_resolved_charset_name_is_remembered_and_a_bad_one_still_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(_charset, "_known", {})
    assert _charset.codec_for("UNICODE UTF-8", location="MSH-18") == "utf-8"
    assert _charset._known == {"UNICODE UTF-8": "utf-8"}
    for _ in range(2):
        with pytest.raises(IntakeError) as exc:
            _charset.codec_for("KLINGON", location="MSH-18")
        assert exc.value.code == "intake.charset-unknown"
    assert "KLINGON" not in _charset._known


def test_remembered_charset_names_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any number of spellings of a known name: the memo stops at _KNOWN_SIZE."""
    monkeypatch.setattr(_charset, "_known", {})
    for n in range(_charset._KNOWN_SIZE + 20):
        spelling = "UTF" + "-" * (n + 1) + "8"
        assert _charset.codec_for(spelling, location="MSH-18") == "utf-8"
    assert len(_charset._known) == _charset._KNOWN_SIZE


@pytest.mark.parametrize(
    "payload",
    [
        MSH + b"\r" + PID + b"\r",
        MSH + b"\r\n" + PID + b"\r\n \t\r\n",  # CRLF, a whitespace line
        MSH + b"\n\n" + PID,  # LF, a blank line, no final line end
        MSH + b"\rPID|1||MSH^^^X\r",  # 'MSH' inside a field, not at a line start
        MSH + b"\r" + PID + b"\r\xef\xbb\xbf" + PID + b"\r",  # a BOM before a segment
        MSH + b"\r" + PID + b"\r" + MSH + b"\r",  # a second message
        MSH + b"\rBTS|1\r" + PID + b"\r",  # a batch trailer: PID is an orphan
        MSH + b"\r \rFHS|^~\\&\r",
    ],
)
def test_a_lone_message_is_cut_as_the_per_line_path_cuts_it(payload: bytes) -> None:
    """A payload starting with MSH that holds no other message or envelope line takes
    the one-message path; a blank first line sends the same lines through the per-line
    loop. Both give the same messages, one line further down."""
    fast, slow = split_messages(payload), split_messages(b"\n" + payload)
    assert [(m.index, m.line + 1, m.segments) for m in fast] == [
        (m.index, m.line, m.segments) for m in slow
    ]
    assert [(m.error and m.error.code, m.notes) for m in fast] == [
        (m.error and m.error.code, m.notes) for m in slow
    ]
