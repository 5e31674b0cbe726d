"""GB 18030 and Big5 mistaken for each other (patient safety).

GB 18030 decodes nearly any Big5 byte pair and Big5 much GB 2312 text, so a message
declaring (or defaulting to) the wrong one of the two never fails to decode: 許嘉瑋 in
Big5 read as GB 18030 is 砛古蕹. Such a message follows the sender's charset_mismatch
like a single-byte charset over Chinese text; real names with rare characters, HKSCS
names and short names keep their declared charset.
"""

from __future__ import annotations

import pytest

from gateway.errors import IntakeError
from gateway.intake.hl7v2 import Hl7View, Message, parse_message, read_messages, split_messages
from gateway.network import Institution, Network

MSH = (
    "MSH|^~\\&|{facility}_HIS|{facility}^2.16.156.10011.99.1.2^ISO|NSCH_HIS|"
    "NSCH^2.16.156.10011.99.1.1^ISO|20260612093015+0800||ADT^A04^ADT_A01|C1|P|2.5|||||CHN|"
    "{charset}"
)


def message(name: str, address: str = "", charset: str = "", facility: str = "HKPMC") -> str:
    """A message whose only non-ASCII text is the patient's name and address (PID-5,
    PID-11): UTF-8 source strings, encoded to the charset under test by the caller."""
    pid = f"PID|1||P1^^^{facility}^MR||{name}^^^^^L||19570903|M|||{address}"
    return MSH.format(facility=facility, charset=charset) + f"\r{pid}\rPV1|1|O\r"


def sender(facility: str = "HKPMC", **data: str) -> Network:
    inst = Institution(
        facility.lower(),
        facility,
        f"https://{facility.lower()}.example",
        {},
        jurisdiction="HK" if facility == "HKPMC" else "CN-GD",
        charset=data.get("charset"),
        data=dict(data),
    )
    return Network([inst])


def parse(data: bytes, network: Network | None = None) -> Message:
    [raw] = split_messages(data)
    return parse_message(raw, network=network)


def fails(data: bytes, network: Network | None = None) -> IntakeError:
    with pytest.raises(IntakeError) as exc:
        parse(data, network)
    return exc.value


def name_of(message: Message) -> tuple[str | None, str | None]:
    view = Hl7View(message)
    return view.value("PID-5.1", view.root)[0], view.value("PID-5.2", view.root)[0]


# Big5 text declared GB 18030, and GB 18030 text declared Big5 (where it decodes): the
# declared reading is mostly rare ideographs, kana or private-use characters.
MISLABELLED = [
    pytest.param(
        "許^嘉瑋", "協和街88號^^九龍^香港^^HKG^H^^觀塘區", "big5hkscs", "GB18030", id="big5-as-gb"
    ),
    pytest.param("陳^大文", "", "big5hkscs", "GB 18030-2000", id="big5-as-gb-short"),
    pytest.param("梁^振英", "沙田^^新界^香港", "big5hkscs", "GBK", id="big5-as-gbk"),
    pytest.param("陈^志强", "南沙区黄阁镇", "gb18030", "BIG-5", id="gb-as-big5"),
    pytest.param("刘^洋", "深圳市南山区", "gb18030", "BIG5-HKSCS", id="gb-as-big5-hkscs"),
    pytest.param("黄^丽", "佛山市顺德区", "gb18030", "BIG-5", id="gb-as-big5-foshan"),
]


@pytest.mark.parametrize(("name", "address", "codec", "declared"), MISLABELLED)
def test_the_other_national_charset_is_refused_naming_msh18(
    name: str, address: str, codec: str, declared: str
) -> None:
    data = message(name, address, declared).encode(codec)
    other = "gb18030" if codec == "big5hkscs" else "big5hkscs"
    data.decode(other)  # it decodes as declared: nothing failed before
    err = fails(data)
    likely = "BIG-5" if codec == "big5hkscs" else "GB 18030-2000"
    assert (err.code, err.location) == ("intake.charset-mislabelled", "MSH-18")
    assert err.issue.details["likely"] == likely
    assert f"declared {declared!r} but the bytes of PID-5 are {likely} text" in str(err)
    # No patient data, neither as sent nor as the mojibake it would have become.
    mojibake = data.decode(other).split("\r")[1].split("|")[5]  # PID-5 as declared
    for part in (*name.split("^"), *mojibake.split("^")):
        assert part.isascii() or part not in str(err)


@pytest.mark.parametrize(("name", "address", "codec", "declared"), MISLABELLED)
def test_charset_mismatch_decode_reads_the_other_charset_with_a_warning(
    name: str, address: str, codec: str, declared: str
) -> None:
    data = message(name, address, declared).encode(codec)
    [unit] = read_messages(data, network=sender(charset_mismatch="decode"))
    assert unit.error is None and unit.view is not None
    assert unit.charset == codec
    [issue] = unit.issues
    assert (issue.code, issue.severity, issue.location) == (
        "intake.charset-mislabelled",
        "warning",
        "MSH-18",
    )
    assert f"decoded as {'BIG-5' if codec == 'big5hkscs' else 'GB 18030-2000'}" in issue.message
    assert name_of(unit.view.message) == tuple(name.split("^"))


# GB 18030 text declared Big5 whose bytes have no Big5 reading at all (饶, 全, 泉 and
# 报 land outside Big5's table): refused as charset-mismatch at the byte's offset, as
# always, the message now saying the bytes read as GB 18030. The reverse cannot happen:
# every Big5-HKSCS byte pair (18,402) decodes as GB 18030, so Big5 text declared GB
# 18030 always decodes and misread_as weighs it (test above).
NOT_BIG5 = [
    pytest.param("饶^美玲", "放射科 报告", "BIG-5", id="rao-meiling-report"),
    pytest.param("袁^泉", "", "BIG5-HKSCS", id="yuan-quan"),
    pytest.param("陈^美玲", "全州路 放射科 报告", "BIG-5", id="chen-meiling-address"),
]


@pytest.mark.parametrize(("name", "address", "declared"), NOT_BIG5)
def test_gb18030_text_that_is_no_big5_says_it_reads_as_gb18030(
    name: str, address: str, declared: str
) -> None:
    data = message(name, address, declared, facility="NSGP").encode("gb18030")
    with pytest.raises(UnicodeDecodeError) as bad:
        data.decode("big5hkscs")
    for network in (None, sender("NSGP"), sender("NSGP", charset_mismatch="decode")):
        err = fails(data, network)
        assert (err.code, err.location) == ("intake.charset-mismatch", "MSH-18")
        assert err.issue.details["offset"] == bad.value.start
        assert err.issue.details["likely"] == "GB 18030-2000"
        assert str(err) == (
            f"error: MSH-18: bytes are not valid {declared} (big5hkscs): cannot decode the "
            f"byte at {bad.value.start}; they read as GB 18030-2000 text: the sender should "
            "declare 'GB 18030-2000' [intake.charset-mismatch]"
        )


def test_gb18030_text_that_is_no_big5_from_a_big5_sender_default() -> None:
    data = message("饶^美玲", "放射科 报告", "", facility="NSGP").encode("gb18030")
    err = fails(data, sender("NSGP", charset="BIG-5"))
    assert (err.code, err.location) == ("intake.charset-mismatch", "MSH-18 (sender default)")
    assert err.issue.details["likely"] == "GB 18030-2000"
    assert "they read as GB 18030-2000 text" in str(err)


@pytest.mark.parametrize("name", ["陈^美玲", "许^嘉玮"])
def test_utf8_text_declared_big5_is_not_said_to_read_as_gb18030(name: str) -> None:
    # UTF-8 bytes have no Big5 reading either, and many also decode as GB 18030 into
    # clean-looking ideographs (陈美玲 as 闄坁缇庣幉): told to declare GB 18030, the sender
    # would have its names decoded as that mojibake. Valid UTF-8 is UTF-8, as
    # mislabelled_as says for a single-byte declaration.
    data = message(name, "", "BIG-5", facility="NSGP").encode("utf-8")
    assert data.decode("gb18030")  # the reading the hint named
    err = fails(data, None)
    assert err.code == "intake.charset-mismatch"
    assert "GB 18030" not in str(err)
    assert err.issue.details["likely"] == "UNICODE UTF-8"
    assert "they read as UNICODE UTF-8 text" in str(err)


@pytest.mark.parametrize(
    ("name", "address", "source", "told"),
    [
        # only one national charset reads: it is named, as for Big5 declared
        ("李^小明", "香港灣仔道100號", "gb18030", "they read as GB 18030-2000 text"),
        ("李^小明", "香港灣仔道100號", "big5hkscs", "they read as BIG-5 text"),
        # both read (許嘉瑋 in Big5 is clean GB 18030 text too): naming one would garble
        # the other's names, so the sender is asked which
        ("許^嘉瑋", "", "big5hkscs", "in GB 18030-2000 or BIG-5: the sender should declare which"),
        ("陈^美玲", "", "gb18030", "in GB 18030-2000 or BIG-5: the sender should declare which"),
    ],
)
def test_national_text_declared_utf8_is_told_what_it_reads_as(
    name: str, address: str, source: str, told: str
) -> None:
    data = message(name, address, "UNICODE UTF-8", facility="NSGP").encode(source)
    with pytest.raises(UnicodeDecodeError) as bad:
        data.decode("utf-8")
    err = fails(data, None)
    assert (err.code, err.location) == ("intake.charset-mismatch", "MSH-18")
    assert err.issue.details["offset"] == bad.value.start
    assert told in str(err)
    assert ("likely" in err.issue.details) == ("declare which" not in told)
    for ch in name + address:  # the bytes are named by offset, never shown
        assert ch == "^" or ch.isascii() or ch not in str(err)


def test_the_operator_walk_through_big5_referral_declared_gb18030() -> None:
    # examples/hl7v2/ref_i12_hkpmc_to_nsch.hl7 with MSH-18 changed: PID-5 read 砛古蕹.
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "examples/hl7v2/ref_i12_hkpmc_to_nsch.hl7"
    data = path.read_bytes().replace(b"|BIG-5", b"|GB18030")
    err = fails(data)
    assert (err.code, err.location) == ("intake.charset-mislabelled", "MSH-18")
    assert err.issue.details["likely"] == "BIG-5"
    decoded = parse(data, sender(charset_mismatch="decode"))
    assert (decoded.charset, name_of(decoded)) == ("big5hkscs", ("許", "嘉瑋"))


def test_empty_msh18_with_the_wrong_national_sender_default() -> None:
    # A sender configured GB 18030 that sends Big5 with MSH-18 empty, and the reverse.
    big5 = message("許^嘉瑋", "協和街88號^^九龍^香港", "").encode("big5hkscs")
    err = fails(big5, sender(charset="GB18030"))
    assert (err.code, err.location) == ("intake.charset-mislabelled", "MSH-18 (sender default)")
    assert "MSH-18 is empty and the sender's configured charset is 'GB18030'" in str(err)
    gb = message("陈^志强", "南沙区黄阁镇", "", facility="NSGP").encode("gb18030")
    err = fails(gb, sender("NSGP", charset="BIG-5"))
    assert (err.code, err.issue.details["likely"]) == (
        "intake.charset-mislabelled",
        "GB 18030-2000",
    )
    [unit] = read_messages(gb, network=sender("NSGP", charset="BIG-5", charset_mismatch="decode"))
    assert unit.view is not None and name_of(unit.view.message) == ("陈", "志强")
    assert [i.code for i in unit.issues] == ["intake.charset-mislabelled"]


def test_empty_msh18_decoded_with_the_sender_default_warns_charset_default() -> None:
    data = message("陈^志强", "南沙区黄阁镇", "", facility="NSGP").encode("gb18030")
    [unit] = read_messages(data, network=sender("NSGP", charset="GB18030"))
    assert unit.error is None and unit.charset == "gb18030"
    [issue] = unit.issues
    assert (issue.code, issue.severity, issue.location) == (
        "intake.charset-default",
        "warning",
        "MSH-18",
    )
    assert issue.message == "MSH-18 is empty; decoded with GB18030, the configured charset of NSGP"


# Real names that must keep their declared charset: GB 18030 names with a rare character
# whose bytes read as common Big5 ideographs (董祎 reads as two), HKSCS names, two-
# character names, compound surnames and names mixed with Latin letters.
GB_NAMES = [
    "董^祎",
    "罗^翾",
    "赵^玥",
    "刘^犇",
    "孙^珺",
    "冯^彧",
    "陈^婧",
    "何^焜",
    "张^璟",
    "孔^钰",
    "曹^姝",
    "严^祎",
    "华^祺",
    "金^煜",
    "陶^芃",
    "姜^骞",
    "柏^韡",
    "龚^琛",
    "韩^昪",
    "卢^昳",
    "黄^頔",
    "林^缃",
    "郭^旸",
    "马^骉",
    "梁^燚",
    "邓^婕",
    "冯^琰",
    "彭^珏",
    "潘^炜",
    "蒋^玮",
    "蔡^珩",
    "杜^玟",
    "邹^磊",
    "朱^镕基",
    "欧阳^靓",
    "司马^懿",
    "诸葛^亮",
    "王^喆",
    "李^堃",
    "刘^龑",
    "张^䶮",
    "CHEN^嘉玮",
    "李^Mary",
]
BIG5_NAMES = [
    "陳^啫",
    "何^鴻燊",
    "鄺^美雲",
    "冼^杞然",
    "佘^詩曼",
    "崔^碧珈",
    "葉^蒨文",
    "許^嘉瑋",
    "區^家麟",
    "譚^詠麟",
    "鍾^鎮濤",
    "諸葛^亮",
    "歐陽^震華",
    "司徒^法正",
    "黎^明",
    "胡^楓",
    "蔡^瀾",
    "吳^彥祖",
    "上官^靜",
    "CHAN^大文",
    "陳^Peter",
    "麥^兆輝",
]


@pytest.mark.parametrize("name", GB_NAMES)
@pytest.mark.parametrize("address", ["", "广东省广州市南沙区凤凰大道88号"])
def test_real_gb18030_names_keep_their_charset(name: str, address: str) -> None:
    data = message(name, address, "GB 18030-2000", facility="NSGP").encode("gb18030")
    decoded = parse(data, sender("NSGP"))
    assert (decoded.charset, decoded.warnings) == ("gb18030", [])
    assert name_of(decoded) == tuple(name.split("^"))
    empty = message(name, address, "", facility="NSGP").encode("gb18030")
    [unit] = read_messages(empty, network=sender("NSGP", charset="GB18030"))
    assert unit.charset == "gb18030"
    assert [i.code for i in unit.issues] == ["intake.charset-default"]


@pytest.mark.parametrize("name", BIG5_NAMES)
@pytest.mark.parametrize("address", ["", "協和街88號錦東大廈12樓B室^^九龍^香港^^HKG^H^^觀塘區"])
def test_real_big5_hkscs_names_keep_their_charset(name: str, address: str) -> None:
    data = message(name, address, "BIG-5").encode("big5hkscs")
    decoded = parse(data, sender())
    assert (decoded.charset, decoded.warnings) == ("big5hkscs", [])
    assert name_of(decoded) == tuple(name.split("^"))


# -- GB 18030 text that happens to be valid UTF-8, MSH-18 empty ---------------------------


@pytest.mark.parametrize("name", ["CHEN^志强", "ZHANG^志强", "LI^志强"])
def test_gb18030_name_that_is_valid_utf8_is_read_with_the_sender_default(name: str) -> None:
    # 志强 in GB 18030 (D6 BE C7 BF) is valid UTF-8: a Hebrew maqaf and a Latin ǿ. With
    # MSH-18 empty it was read as UTF-8, silently, though the sender's default is GB 18030.
    data = message(name, "", "", facility="NSGP").encode("gb18030")
    data.decode("utf-8")  # valid UTF-8 indeed
    [unit] = read_messages(data, network=sender("NSGP", charset="GB18030"))
    assert unit.error is None and unit.view is not None
    assert unit.charset == "gb18030"
    assert name_of(unit.view.message) == tuple(name.split("^"))
    assert [i.code for i in unit.issues] == ["intake.charset-default"]


@pytest.mark.parametrize(
    "name",
    ["ИВАНОВ^ИВАН", "GONÇALVES^JOÃO", "MÜLLER^ÄNNE", "Ελένη^ΠΑΠΑΔΟΠΟΥΛΟΥ", "陈^志强", "O–BRIEN^É"],
)
def test_utf8_text_from_a_gb18030_sender_stays_utf8(name: str) -> None:
    # Real UTF-8 (Cyrillic, Latin accents, Greek, Chinese, an en dash) with MSH-18 empty
    # from a sender whose default is GB 18030 is read as UTF-8, with no warning.
    data = message(name, "", "", facility="NSGP").encode("utf-8")
    [unit] = read_messages(data, network=sender("NSGP", charset="GB18030"))
    assert unit.error is None and unit.view is not None
    assert (unit.charset, unit.issues) == ("utf-8", [])
    assert name_of(unit.view.message) == tuple(name.split("^"))


@pytest.mark.parametrize(
    ("name", "address"),
    [
        ("Dupré^Jérôme", "Rue de l'Église 3^^Macau"),
        ("Lefèvre^Hélène", ""),
        ("Françoise^Hélène", "Avenida de Almeida Ribeiro 1^^Macau"),
    ],
)
def test_latin_text_declared_utf8_is_not_told_to_be_chinese(name: str, address: str) -> None:
    # Two accents a letter apart read as two ideographs side by side (Hélène as
    # H閘鑞e): the sender of 8859/1 names was told to declare GB 18030 or Big5, which
    # would turn them into Chinese. Bytes that read as Latin words are named no charset.
    data = message(name, address, "UNICODE UTF-8", facility="NSGP").encode("latin-1")
    err = fails(data, None)
    assert err.code == "intake.charset-mismatch"
    assert "GB 18030" not in str(err) and "BIG-5" not in str(err)
    assert "likely" not in err.issue.details
