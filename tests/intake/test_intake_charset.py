"""Charsets: MSH-18 → codec, decoding before tokenising, mismatches and sender defaults."""

from __future__ import annotations

import pytest

from gateway.errors import IntakeError
from gateway.intake import codec_for, decode_strict
from gateway.intake.hl7v2 import Hl7View, Message, parse_message, split_messages


def msh(charset: str, facility: str = "NSGP^2.16.156.10011.99.1.2^ISO", app: str = "HIS") -> str:
    return (
        f"MSH|^~\\&|{app}|{facility}|NSCH_HIS|NSCH|20260612093015+0800||REF^I12^REF_I12|"
        f"C1|P|2.5|||||CHN|{charset}"
    )


def build(segments: list[str], codec: str) -> bytes:
    return "".join(s + "\r" for s in segments).encode(codec)


def parse(data: bytes, fallback=None) -> Message:  # type: ignore[no-untyped-def]
    [raw] = split_messages(data)
    return parse_message(raw, fallback)


def fails(data: bytes, fallback=None) -> IntakeError:  # type: ignore[no-untyped-def]
    with pytest.raises(IntakeError) as exc:
        parse(data, fallback)
    return exc.value


def value(message: Message, path: str) -> str | None:
    view = Hl7View(message)
    return view.value(path, view.root)[0]


# -- MSH-18 names ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("declared", "codec", "name"),
    [
        ("UNICODE UTF-8", "utf-8", "陈^志强"),
        ("unicode utf-8", "utf-8", "陈^志强"),
        ("UTF-8", "utf-8", "陈^志强"),
        ("GB 18030-2000", "gb18030", "陈^志强"),
        ("gb18030", "gb18030", "陈^志强"),
        ("GB_18030_2000", "gb18030", "陈^志强"),
        ("GBK", "gb18030", "陈^志强"),
        ("BIG-5", "big5hkscs", "許^嘉瑋"),
        ("Big5", "big5hkscs", "許^嘉瑋"),
        ("BIG 5", "big5hkscs", "許^嘉瑋"),
        ("BIG5-HKSCS", "big5hkscs", "陳^啫"),  # 啫: HKSCS only, not in plain Big5
        ("8859/1", "latin-1", "GONÇALVES^JOÃO"),  # a Macanese name, Latin-1 bytes
        (" 8859/1 ", "latin-1", "GONÇALVES^JOÃO"),
    ],
)
def test_declared_charset_is_used(declared: str, codec: str, name: str) -> None:
    data = build([msh(declared), f"PID|1||X1^^^NSGP^MR||{name}"], codec)
    message = parse(data)
    assert message.charset == codec
    assert message.declared_charset == declared.strip()
    assert message.warnings == []
    assert value(message, "PID-5.1") == name.split("^")[0]
    assert value(message, "PID-5.2") == name.split("^")[1]


def test_first_repetition_of_msh18_is_the_message_charset() -> None:
    # MSH-18 repeats: the first is the default charset, the others are for escapes.
    data = build([msh("GB 18030-2000~UNICODE UTF-8"), "PID|1||X1||陈^志强"], "gb18030")
    message = parse(data)
    assert (message.charset, message.declared_charset) == ("gb18030", "GB 18030-2000")
    assert value(message, "PID-5.2") == "志强"


# -- trail bytes that are delimiters ---------------------------------------------------------


def test_big5_trail_bytes_that_are_delimiters_keep_fields_intact() -> None:
    # Big5: 許 B3 5C and 功 A5 5C end in '\', 院 B0 7C in '|', 彭 B4 5E and 回 A6 5E in
    # '^', 居 A9 7E and 洗 AC 7E in '~'. Each sits right before a real delimiter, so a
    # parser that splits bytes would cut or unescape the names.
    segments = [
        msh("BIG-5", facility="HKPMC^1.3.6.1.4.1.99999.1.1^ISO"),
        "PID|1||K583726A^^^HKID^NNHKG||許^嘉瑋^^^^^L~彭^耀功^^^^^L||19570903|M",
        "PRD|RT|彭^耀功|協和街88號^^九龍^香港^^HKG^O^^觀塘區",
        "NTE|1|P|居港病人，洗腎後回院覆診|居|回^洗|",
    ]
    data = build(segments, "big5hkscs")
    for pair in (
        b"\xb3\x5c^",
        b"\xa5\x5c^",
        b"\xa5\x5c|",
        b"\xa9\x7e|",
        b"\xa6\x5e^",
        b"\xac\x7e|",
    ):
        assert pair in data  # the trail byte really is followed by a delimiter
    message = parse(data)
    assert message.charset == "big5hkscs"
    view = Hl7View(message)
    assert view.values("PID-5(*).1", view.root) == [("許", "PID-5.1"), ("彭", "PID-5(2).1")]
    assert view.value("PID-5(2).2", view.root) == ("耀功", "PID-5(2).2")
    assert view.value("PRD-2.2", view.root) == ("耀功", "PRD-2.2")
    assert view.value("PRD-3.9", view.root) == ("觀塘區", "PRD-3.9")
    assert view.value("NTE-3", view.root)[0] == "居港病人，洗腎後回院覆診"
    assert message.segments[3][4:] == ["居", "回^洗", ""]
    assert view.value("NTE-5.2", view.root) == ("洗", "NTE-5.2")


def test_gb18030_trail_bytes_that_are_delimiters_keep_fields_intact() -> None:
    # GB18030: 瑋 AC 7C and 東 96 7C end in '|', 錦 E5 5C in '\', 觀 D3 5E and 區 85 5E
    # in '^', 葉 (HK surname Yip) in '~'. 區's lead byte 0x85 is NEL in Latin-1.
    segments = [
        msh("GB 18030-2000"),
        "PID|1||GP0000088^^^NSGP^MR||葉^嘉瑋|許^東|19570903|M|||錦東大廈^^九龍^香港^^HKG^P^^觀塘區",
    ]
    data = build(segments, "gb18030")
    assert "葉".encode("gb18030")[-1:] == b"~"
    for pair in (b"\xac\x7c|", b"\x96\x7c|", b"\xe5\x5c", b"\x85\x5e"):
        assert pair in data
    message = parse(data)
    view = Hl7View(message)
    assert view.value("PID-5.1", view.root) == ("葉", "PID-5.1")
    assert view.value("PID-5.2", view.root) == ("嘉瑋", "PID-5.2")
    assert view.value("PID-6.2", view.root) == ("東", "PID-6.2")
    assert view.value("PID-11.1", view.root) == ("錦東大廈", "PID-11.1")
    assert view.value("PID-11.9", view.root) == ("觀塘區", "PID-11.9")
    assert len(message.segments[1]) == 12  # no field was split inside a character


@pytest.mark.parametrize(
    ("declared", "codec", "facility", "trail"),
    [
        ("BIG-5", "big5hkscs", "養和醫院", b"\xb0\x7c|"),  # 院 B0 7C
        ("GB 18030-2000", "gb18030", "東華醫院", b"\x96\x7c"),  # 東 96 7C
    ],
)
def test_msh18_found_when_msh_fields_hold_delimiter_trail_bytes(
    declared: str, codec: str, facility: str, trail: bytes
) -> None:
    # A Chinese facility name in MSH-4 adds a '|' byte before MSH-18: counting '|' on the
    # bytes would read MSH-17 (CHN) as the charset.
    data = build([msh(declared, facility=facility), "PID|1||X1||許^功"], codec)
    assert trail in data
    message = parse(data)
    assert (message.charset, message.declared_charset) == (codec, declared)
    assert message.msh(4) == facility
    assert message.msh(17) == "CHN"
    assert value(message, "PID-5.2") == "功"


# -- errors ------------------------------------------------------------------------------------


def test_unknown_charset_name() -> None:
    err = fails(build([msh("EUC-TW"), "PID|1||X1||许^嘉玮"], "utf-8"))
    assert err.code == "intake.charset-unknown"
    assert err.location == "MSH-18"
    assert "'EUC-TW'" in str(err)
    assert "GB 18030-2000" in str(err)  # the known names are listed


@pytest.mark.parametrize("declared", ["UNICODE UTF-16", "unicode utf-32"])
def test_utf16_declared_is_unsupported(declared: str) -> None:
    err = fails(build([msh(declared), "PID|1||X1||许^嘉玮"], "utf-8"))
    assert err.code == "intake.charset-unsupported"
    assert err.location == "MSH-18"
    assert "send UTF-8" in str(err)


@pytest.mark.parametrize(
    ("declared", "body", "bad"),
    [
        # A stray 0xFF (never valid in GB18030) inside 王伟.
        ("GB 18030-2000", "王".encode("gb18030") + b"\xff" + "伟".encode("gb18030"), b"\xff"),
        # 0x80 is not a Big5 lead byte.
        ("BIG-5", "許".encode("big5") + b"\x80" + "功".encode("big5"), b"\x80"),
        # GB18030 bytes of 王伟 in a message labelled UTF-8.
        ("UNICODE UTF-8", "王伟".encode("gb18030"), "王".encode("gb18030")[:1]),
    ],
    ids=["gb18030", "big5", "utf-8"],
)
def test_undecodable_bytes_are_a_charset_mismatch_with_offset(
    declared: str, body: bytes, bad: bytes
) -> None:
    head = (msh(declared) + "\rPID|1||X1||").encode("ascii")
    data = head + body + b"\r"
    offset = data.index(bad, len(head))
    err = fails(data)
    assert err.code == "intake.charset-mismatch"
    assert err.location == "MSH-18"
    assert err.issue.details["offset"] == offset
    assert f"at {offset}" in str(err)
    assert bad.hex() not in str(err) and bad.hex(" ") not in str(err)  # no patient bytes


def test_ascii_declared_with_non_ascii_non_utf8_bytes_is_a_mismatch() -> None:
    data = (msh("ASCII") + "\rPID|1||X1||").encode() + b"\xe9t\xe9\r"  # Latin-1 'été'
    assert fails(data).code == "intake.charset-mismatch"


def test_ascii_declared_with_gb18030_text_is_mislabelled() -> None:
    data = (msh("ASCII") + "\rPID|1||X1||").encode() + "陈".encode("gb18030") + b"\r"
    err = fails(data)
    assert (err.code, err.location) == ("intake.charset-mislabelled", "MSH-18")
    assert "GB 18030-2000" in str(err)


@pytest.mark.parametrize("text", ["12 –35", "王^伟"], ids=["en-dash", "chinese"])
def test_8859_1_declared_but_utf8_bytes_is_refused(text: str) -> None:
    # Until issue 8, valid UTF-8 under 8859/1 was read as UTF-8 with a warning; now it
    # follows the sender's charset_mismatch like GB 18030 and Big5 do: refused by default.
    err = fails(build([msh("8859/1"), f"PID|1||X1||{text}"], "utf-8"))
    assert (err.code, err.location) == ("intake.charset-mislabelled", "MSH-18")
    assert "'8859/1'" in str(err)
    assert "bytes of PID-5 are UNICODE UTF-8 text" in str(err)
    assert err.issue.details["likely"] == "UNICODE UTF-8"
    assert text not in str(err) and "王" not in str(err)


def test_8859_1_with_latin1_bytes_has_no_warning() -> None:
    message = parse(build([msh("8859/1"), "PID|1||X1||GONÇALVES^JOÃO"], "latin-1"))
    assert (message.charset, message.warnings) == ("latin-1", [])
    assert value(message, "PID-5.1") == "GONÇALVES"


# -- MSH-18 empty: UTF-8, else the sender's configured default ----------------------------


def test_empty_msh18_with_utf8_bytes_is_utf8_and_skips_the_fallback() -> None:
    asked: list[str] = []

    def fallback(facility: str) -> str | None:
        asked.append(facility)
        return "GB18030"

    message = parse(build([msh(""), "PID|1||X1||陈^志强"], "utf-8"), fallback)
    assert (message.charset, message.declared_charset, message.warnings) == ("utf-8", None, [])
    assert asked == []


def test_empty_msh18_not_utf8_uses_the_sender_default() -> None:
    asked: list[str] = []

    def fallback(facility: str) -> str | None:
        asked.append(facility)
        return {"NSGP": "GB18030"}.get(facility)

    message = parse(build([msh(""), "PID|1||X1||陈^志强"], "gb18030"), fallback)
    assert asked == ["NSGP"]  # MSH-4.1, the facility namespace
    assert (message.charset, message.declared_charset) == ("gb18030", None)
    assert value(message, "PID-5.2") == "志强"
    [note] = message.warnings
    assert note == "MSH-18 is empty; decoded with GB18030, the configured charset of NSGP"


@pytest.mark.parametrize("declared", ["", " "], ids=["empty", "space"])
def test_empty_msh18_not_utf8_without_fallback_is_undeclared(declared: str) -> None:
    data = build([msh(declared), "PID|1||X1||陈^志强"], "gb18030")
    err = fails(data)
    assert err.code == "intake.charset-undeclared"
    assert err.location == "MSH-18"
    assert "NSGP" in str(err)
    # A fallback that knows nothing about this sender changes nothing.
    assert fails(data, lambda facility: None).code == "intake.charset-undeclared"


def test_msh_without_msh18_is_undeclared() -> None:
    data = "MSH|^~\\&|HIS|NSGP|NSCH_HIS|NSCH|20260612||REF^I12|C1|P|2.5\rPID|1||X||陈".encode(
        "gb18030"
    )
    assert fails(data).code == "intake.charset-undeclared"
    assert parse(data, lambda f: "GB18030").charset == "gb18030"


def test_sender_default_that_does_not_fit_the_bytes_is_a_mismatch() -> None:
    # The sender is configured as Big5 but sent GB18030 with 0xFF junk.
    data = build([msh(""), "PID|1||X1||陈"], "gb18030")[:-1] + b"\xff\r"
    err = fails(data, lambda facility: "BIG-5")
    assert err.code == "intake.charset-mismatch"
    assert err.location == "MSH-18 (sender default)"
    # read as GB 18030 the junk byte is no Chinese either: no charset is suggested
    assert "likely" not in err.issue.details and "read as" not in str(err)


# -- codec_for / decode_strict directly --------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "codec"),
    [
        ("UNICODE UTF-8", "utf-8"),
        ("utf8", "utf-8"),
        ("GB 18030-2000", "gb18030"),
        ("gb-18030-2000", "gb18030"),
        ("GB2312", "gb18030"),
        ("BIG-5", "big5hkscs"),
        ("8859/1", "latin-1"),
    ],
)
def test_codec_for(name: str, codec: str) -> None:
    assert codec_for(name, location="MSH-18") == codec


def test_codec_for_errors_carry_the_location() -> None:
    with pytest.raises(IntakeError) as exc:
        codec_for("KOI8-R", location="MSH-18 (sender default)")
    assert (exc.value.code, exc.value.location) == (
        "intake.charset-unknown",
        "MSH-18 (sender default)",
    )
    with pytest.raises(IntakeError) as exc:
        codec_for("Unicode UTF-16", location="MSH-18")
    assert exc.value.code == "intake.charset-unsupported"


def test_decode_strict() -> None:
    decoded = decode_strict("許功".encode("big5"), "big5hkscs", declared="BIG-5", location="x")
    assert (decoded.text, decoded.codec, decoded.note) == ("許功", "big5hkscs", None)
    with pytest.raises(IntakeError) as exc:
        decode_strict(b"ab\xff", "utf-8", declared="UTF-8", location="MSH-18")
    assert exc.value.issue.details["offset"] == 2
    # Latin-1 decodes anything, but valid UTF-8 is refused by default (charset_mismatch)...
    with pytest.raises(IntakeError) as exc:
        decode_strict("王".encode(), "latin-1", declared="8859/1", location="MSH-18")
    assert exc.value.code == "intake.charset-mislabelled"
    # ... and read as what it is, with a note, when the sender is set to 'decode'.
    mislabelled = decode_strict(
        "王".encode(), "latin-1", declared="8859/1", location="MSH-18", mismatch="decode"
    )
    assert (mislabelled.text, mislabelled.codec) == ("王", "utf-8")
    assert mislabelled.note is not None


def test_plain_utf16_name_is_refused_as_unsupported() -> None:
    with pytest.raises(IntakeError) as err:
        codec_for("UTF-16", location="MSH-18")
    assert err.value.code == "intake.charset-unsupported"


@pytest.mark.parametrize("name", ["BUC^JÉRÔME", "Buc^Jérôme", "MÜLLER^ÄNNE", "LOPES^JOSÉ"])
def test_8859_1_names_whose_accents_pair_into_ideographs_are_latin1(name: str) -> None:
    # 'érô' read as GB 18030 is two ideographs side by side: Chinese-looking, yet every
    # word is a Latin word, so the declared charset stands (one rule for HL7 v2 and DICOM).
    message = parse(build([msh("8859/1"), f"PID|1||X1||{name}"], "latin-1"))
    assert value(message, "PID-5.2") == name.split("^")[1]
