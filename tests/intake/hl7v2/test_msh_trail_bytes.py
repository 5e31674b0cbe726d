"""An MSH in Big5 or GB 18030 without MSH-18 and without MSH-9, whose sending facility
holds a character with '|' as its trail byte (育 is A8 7C in Big5, 東 96 7C in
GB 18030): the error names the missing MSH-9, not the undeclared charset of a sender
read from half a character."""

from __future__ import annotations

import pytest

from gateway.errors import IntakeError
from gateway.intake.hl7v2 import parse_message, split_messages

CASES = [  # (codec, sending facility): each has a character whose second byte is 0x7C
    ("big5hkscs", "育才書院"),
    ("gb18030", "東華醫院"),
]
PID = "PID|1||0012345^^^LAX2^MR||陳^大文\r"


def _error(text: str, codec: str) -> IntakeError:
    data = text.encode(codec)
    assert b"|" in data[data.index(b"HIS|") + 4 :].split(b"|GW|")[0]  # a trail byte is '|'
    with pytest.raises(IntakeError) as caught:
        parse_message(split_messages(data)[0])
    return caught.value


@pytest.mark.parametrize(("codec", "facility"), CASES, ids=["big5", "gb18030"])
@pytest.mark.parametrize(
    "msh",
    [
        "MSH|^~\\&|HIS|{facility}|GW|NJMU2|20260101",  # the MSH ends before MSH-9
        "MSH|^~\\&|HIS|{facility}|GW|NJMU2|20260101|||TB1|P|2.4",  # MSH-9 empty
    ],
    ids=["ends-early", "empty"],
)
def test_a_missing_msh9_is_named_behind_a_trail_byte(codec: str, facility: str, msh: str) -> None:
    error = _error(msh.format(facility=facility) + "\r" + PID, codec)
    assert error.issue.code == "intake.msh-truncated"
    assert error.issue.location == "MSH-9"
    assert "MSH-9" in error.issue.message and "陳" not in error.issue.message


@pytest.mark.parametrize(("codec", "facility"), CASES, ids=["big5", "gb18030"])
def test_an_undeclared_charset_names_the_whole_facility(codec: str, facility: str) -> None:
    """The MSH is whole and MSH-18 empty: charset-undeclared, naming the sending facility
    as it reads in the charset the bytes look like, not its first byte."""
    text = f"MSH|^~\\&|HIS|{facility}|GW|NJMU2|20260101||ADT^A01|TB1|P|2.4\r{PID}"
    error = _error(text, codec)
    assert error.issue.code == "intake.charset-undeclared"
    assert error.issue.location == "MSH-18"
    assert error.issue.message.endswith(f"sender {facility}")
    assert "陳" not in error.issue.message and "0012345" not in error.issue.message
