"""MSH-4 (the sending facility) read in the message's charset: the sender's default charset
and its charset_mismatch are looked up by it before the text is decoded
(gateway/intake/hl7v2/_er7.py ``_facility``). Read as ASCII with replacement, a Chinese
facility code was U+FFFD (naming no institution, and 南沙医院 and 北京医院 one string), and
split as bytes, Big5's 院 (B0 7C) ended the field at its trail byte."""

from __future__ import annotations

import pytest

from gateway.intake.hl7v2._er7 import _facility
from tests.intake.test_intake_gb_big5 import message, name_of, parse, sender

# (facility code, codec, MSH-18 for it)
FACILITIES = [
    pytest.param("南沙医院", "utf-8", "UNICODE UTF-8", id="utf-8"),
    pytest.param("南沙医院", "gb18030", "GB18030", id="gb18030"),
    pytest.param("港怡醫院", "big5hkscs", "BIG5-HKSCS", id="big5"),  # 院: B0 7C, a '|' trail
]


def _msh(facility: str, codec: str, charset: str = "") -> bytes:
    return message("陳^大文", facility=facility, charset=charset).encode(codec).split(b"\r")[0]


@pytest.mark.parametrize(("facility", "codec", "declared"), FACILITIES)
def test_a_chinese_facility_is_read_in_the_messages_charset(
    facility: str, codec: str, declared: str
) -> None:
    assert _facility(_msh(facility, codec, declared), codec) == facility


def test_two_chinese_facilities_are_two_facilities() -> None:
    one, other = _msh("南沙医院", "gb18030"), _msh("北京医院", "gb18030")
    assert _facility(one, "gb18030") != _facility(other, "gb18030")
    assert "\ufffd" not in _facility(one, "gb18030")


def test_a_facility_that_does_not_decode_names_none() -> None:
    # GB 18030 bytes read as UTF-8: no facility, not one of U+FFFD that another shares
    assert _facility(_msh("南沙医院", "gb18030"), "utf-8") == ""


@pytest.mark.parametrize(
    ("facility", "codec", "default", "name", "address"),
    [
        ("南沙医院", "gb18030", "GB18030", "陈^志强", "南沙区黄阁镇"),
        ("港怡醫院", "big5hkscs", "BIG5-HKSCS", "陳^大文", "沙田^^新界^香港"),
    ],
)
def test_the_default_charset_of_a_chinese_facility_decodes_its_messages(
    facility: str, codec: str, default: str, name: str, address: str
) -> None:
    # MSH-18 empty: the sender's default charset, found by its MSH-4, decodes the message
    data = message(name, address, facility=facility).encode(codec)
    parsed = parse(data, sender(facility, charset=default))
    assert name_of(parsed) == tuple(name.split("^"))
    assert [n.code for n in parsed.notes] == ["intake.charset-default"]


def test_a_chinese_facility_allowed_to_mislabel_its_charset_is_decoded() -> None:
    # 8859/1 declared over GB 18030 text: the sender's charset_mismatch decides, and it is
    # found by MSH-4, which the declared charset reads as mojibake
    data = message("陈^志强", "南沙区黄阁镇", "8859/1", facility="南沙医院").encode("gb18030")
    parsed = parse(data, sender("南沙医院", charset_mismatch="decode"))
    assert name_of(parsed) == ("陈", "志强")
    assert [n.code for n in parsed.notes] == ["intake.charset-mislabelled"]
