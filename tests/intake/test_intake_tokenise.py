"""Tokenising: delimiters from MSH-1/MSH-2, header checks, segment syntax."""

from __future__ import annotations

import pytest

from gateway.errors import IntakeError
from gateway.intake.hl7v2 import Hl7View, Message, parse_message, split_messages

MSH = (
    "MSH|^~\\&|NSCH_HIS|NSCH^2.16.156.10011.99.1.1^ISO|NSCH_RIS|NSCH|20260615100000+0800||"
    "OMI^O23^OMI_O23|NSCH0017|P|2.5|||||CHN|UNICODE UTF-8"
)


def parse(*segments: str) -> Message:
    [raw] = split_messages("".join(s + "\r" for s in segments).encode("utf-8"))
    return parse_message(raw)


def fails(*segments: str) -> IntakeError:
    with pytest.raises(IntakeError) as exc:
        parse(*segments)
    return exc.value


def test_default_delimiters_and_msh_numbering() -> None:
    message = parse(MSH, "PID|1||0098765^^^NSCH^MR||許^嘉瑋")
    assert message.separators == "|^~\\&"
    msh = message.segments[0]
    # segments[0][n] is MSH-n: MSH-1 is the field separator itself, MSH-2 the encoding chars.
    assert msh[:4] == ["MSH", "|", "^~\\&", "NSCH_HIS"]
    assert message.msh(9) == "OMI^O23^OMI_O23"
    assert message.msh(18) == "UNICODE UTF-8"
    assert message.msh(40) == ""
    assert message.message_type == "OMI^O23"
    assert message.control_id == "NSCH0017"
    assert message.segments[1] == ["PID", "1", "", "0098765^^^NSCH^MR", "", "許^嘉瑋"]
    assert message.positions == {"MSH": [0], "PID": [1]}


def test_non_default_delimiters_are_read_from_msh1_and_msh2() -> None:
    # Field '#', component '$', repetition '%', escape '@', subcomponent '!'.
    # '|', '^', '~', '\' and '&' are plain data in this message.
    message = parse(
        "MSH#$%@!#NSCH_HIS#NSCH$2.16.156.10011.99.1.1$ISO#NSCH_RIS#NSCH#20260615##"
        "REF$I12$REF_I12#NSCH0018#P#2.5######UNICODE UTF-8",
        "PID#1##0098765$$$NSCH$MR%K583726A$$$HKID!香港$NNHKG##許$嘉瑋%HUI$KA WAI",
        "NTE#1#P#血压 160|95 mmHg; 服药 A^B~C\\D&E@F@结束@.br@复查",
    )
    assert message.separators == "#$%@!"
    assert message.segments[0][1:3] == ["#", "$%@!"]
    assert message.message_type == "REF^I12"  # always reported with '^'
    assert message.control_id == "NSCH0018"
    assert message.declared_charset == "UNICODE UTF-8"
    view = Hl7View(message)
    assert view.values("PID-5(*).1", view.root) == [("許", "PID-5.1"), ("HUI", "PID-5(2).1")]
    assert view.value("PID-3(2).4.2", view.root) == ("香港", "PID-3(2).4.2")
    assert view.value("/MSH-4.2", view.root)[0] == "2.16.156.10011.99.1.1"
    # Default delimiters stay literal; the custom escape '@' is honoured.
    assert view.value("NTE-3", view.root)[0] == "血压 160|95 mmHg; 服药 A^B~C\\D&E#结束\n复查"
    assert view.values("/MSH-1", view.root) == [("#", "MSH-1")]
    assert view.values("/MSH-2", view.root) == [("$%@!", "MSH-2")]


def test_msh1_and_msh2_are_not_split() -> None:
    message = parse(MSH)
    view = Hl7View(message)
    assert view.values("MSH-1", view.root) == [("|", "MSH-1")]
    # MSH-2 holds '^' and '&' but is one value, and its '\' is not an escape.
    assert view.values("MSH-2", view.root) == [("^~\\&", "MSH-2")]
    assert view.values("MSH-2.1", view.root) == [("^~\\&", "MSH-2")]


@pytest.mark.parametrize(
    ("encoding", "separators"),
    [
        ("^~\\&#", "|^~\\&"),  # v2.7+: truncation character '#' is not a separator
        ("^~\\", "|^~\\&"),  # subcomponent missing: '&' is assumed
        ("^~", "|^~\\&"),
    ],
)
def test_short_or_long_encoding_characters(encoding: str, separators: str) -> None:
    message = parse(MSH.replace("^~\\&", encoding, 1), "PID|1||X1||王^伟")
    assert message.separators == separators
    assert message.segments[0][2] == encoding
    assert message.segments[1][5] == "王^伟"


# -- header errors -------------------------------------------------------------------------


def test_missing_msh9_is_truncated() -> None:
    err = fails("MSH|^~\\&|NSCH_HIS|NSCH|NSCH_RIS|NSCH|20260615", "PID|1")
    assert err.code == "intake.msh-truncated"
    assert err.location == "MSH-9"
    assert "MSH has 7 fields" in str(err)


def test_empty_msh9_is_truncated() -> None:
    err = fails(MSH.replace("OMI^O23^OMI_O23", ""), "PID|1")
    assert (err.code, err.location) == ("intake.msh-truncated", "MSH-9")


@pytest.mark.parametrize(
    "msh",
    [
        "MSH|^~\\&|NSCH_HIS|NSCH|NSCH_RIS|NSCH|20260615||OMI^O23|NSCH0017|P",  # cut after MSH-11
        "MSH|^~\\&|NSCH_HIS|NSCH|NSCH_RIS|NSCH|20260615||OMI^O23|NSCH0017|P||||||CHN",  # empty
    ],
    ids=["cut", "empty"],
)
def test_missing_msh12_is_truncated(msh: str) -> None:
    err = fails(msh, "PID|1")
    assert (err.code, err.location) == ("intake.msh-truncated", "MSH-12")


@pytest.mark.parametrize(
    "msh",
    ["MSH", "MSH|^~", "MSHA^~\\&|NSCH_HIS|NSCH", "MSH ^~\\&|NSCH_HIS|NSCH"],
    ids=["bare", "short", "alnum-separator", "space-separator"],
)
def test_malformed_msh_is_a_syntax_error(msh: str) -> None:
    err = fails(msh, "PID|1||X1||王^伟")
    assert err.code == "intake.msh-syntax"
    assert err.location == "MSH-1"


# -- segment syntax ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("bad", "form"),
    [
        ("pid|1||X1||王^伟", "AAA|9||A9||字"),  # lower case
        ("PI|1||X1||王^伟", "AA|9||A9||字^"),  # two letters
        ("PID^1||X1||王^伟", "AAA^9||A9||字"),  # name not followed by the field separator
        ("PIDX|1", "AAAA|9"),  # four letters
        ("1ID|1", "9AA|9"),  # starts with a digit
        ("王伟|1", "字字|9"),
    ],
)
def test_bad_segment_name_names_the_segment_number(bad: str, form: str) -> None:
    err = fails(MSH, "PV1|1|O", bad, "OBR|1")
    assert err.code == "intake.segment-syntax"
    assert err.location == "segment 3"
    # The error line shows the form of the bad line's start, never its text (patient data).
    assert f"segment 3 starts with '{form}" in str(err)
    assert "王" not in str(err) and "X1" not in str(err)


def test_syntactically_valid_names_are_accepted() -> None:
    # 'P1D' (the misspelt PID of examples/hl7v2/batch_mixed.hl7) and Z-segments are valid
    # names; a bare name without fields is a segment too.
    message = parse(MSH, "P1D|1||X1||王^伟", "ZDS|1.2.3^^Application^DICOM", "ZPI")
    assert message.positions == {"MSH": [0], "P1D": [1], "ZDS": [2], "ZPI": [3]}
    assert message.segments[3] == ["ZPI"]


def test_segment_number_counts_segments_not_file_lines() -> None:
    # A blank line in the file does not count: the bad segment is the 2nd of the message.
    [raw] = split_messages(f"{MSH}\r\n\r\nPI|1\r\n".encode())
    with pytest.raises(IntakeError) as exc:
        parse_message(raw)
    assert exc.value.location == "segment 2"
