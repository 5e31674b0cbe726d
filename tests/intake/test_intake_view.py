"""Hl7View: terser paths, groups, relative paths, labels, HL7 null and escapes."""

from __future__ import annotations

import pytest

from gateway.errors import ConfigError
from gateway.intake.hl7v2 import Hl7View, Position, check_path, parse_message, split_messages

# ORM^O01 from 来安县第二人民医院: two order groups (ORC/OBR), the first with an NTE, the
# second with two OBX. PID-3(2).4 has subcomponents (assigning authority as HD).
ORM = [
    "MSH|^~\\&|LAX2_HIS|LAX2^2.16.156.10011.99.1.4^ISO|LAX2_RIS|LAX2|20260611090000+0800||"
    "ORM^O01^ORM_O01|LAX2-0001|P|2.5|||||CHN|UNICODE UTF-8",
    "PID|1||0012345^^^LAX2^MR~341122196604200135^^^CHNRID&2.16.156.10011.1.1&ISO^NNCHN||"
    '王^伟^^^^^L~WANG^WEI^^^^^A||19660420|""|||汊河镇滨河路1号^""^滁州市',
    "ORC|NW|ORD001^LAX2||PG0001^LAX2|||||||D1001^张^建国",
    "OBR|1|ORD001^LAX2||CT001^头颅CT平扫^99LAX2",
    "NTE|1||  头痛三天  ",
    "ORC|NW|ORD002^LAX2||PG0001^LAX2",
    "OBR|2|ORD002^LAX2||CT002^胸部CT平扫^99LAX2",
    "OBX|1|NM|29463-7^体重^LN||65|kg",
    "OBX|2|NM|8302-2^身高^LN||172|cm",
]


def view_of(segments: list[str], codec: str = "utf-8") -> Hl7View:
    [raw] = split_messages("".join(s + "\r" for s in segments).encode(codec))
    return Hl7View(parse_message(raw))


@pytest.fixture(scope="module")
def orm() -> Hl7View:
    return view_of(ORM)


# -- absolute paths ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("PID-5.1", ("王", "PID-5.1")),
        ("PID-5", ("王", "PID-5")),  # a field read whole is its first component
        ("PID-3(2).1", ("341122196604200135", "PID-3(2).1")),
        ("PID-5(2).2", ("WEI", "PID-5(2).2")),
        ("PID-3(2).4", ("CHNRID", "PID-3(2).4")),  # a component read whole: first sub
        ("PID-3(2).4.2", ("2.16.156.10011.1.1", "PID-3(2).4.2")),
        ("PID-11.3", ("滁州市", "PID-11.3")),
        ("OBX-5", ("65", "OBX(1)-5")),  # no occurrence given: the first
        ("OBX(2)-5", ("172", "OBX(2)-5")),
        ("OBX(2)-3.2", ("身高", "OBX(2)-3.2")),
        ("ORC(2)-2.1", ("ORD002", "ORC(2)-2.1")),
        ("/MSH-10", ("LAX2-0001", "MSH-10")),
        ("MSH-4.2", ("2.16.156.10011.99.1.4", "MSH-4.2")),
        ("NTE-3", ("头痛三天", "NTE-3")),  # stripped
    ],
)
def test_value(orm: Hl7View, path: str, expected: tuple[str, str]) -> None:
    assert orm.value(path, orm.root) == expected


@pytest.mark.parametrize(
    "path",
    [
        "PID-3(3).1",  # no third repetition
        "PID-5.20",  # no such component
        "PID-3(2).4.4",  # no such subcomponent
        "PID-40",  # beyond the segment
        "PID-2",  # empty field
        "OBX(3)-5",  # no third OBX
        "PV1-2",  # no PV1 segment
        "PID-5.1.2",  # a component without subcomponents has only .1
    ],
)
def test_missing_values(orm: Hl7View, path: str) -> None:
    assert orm.values(path, orm.root) == []
    assert orm.value(path, orm.root) == (None, orm.label(path, orm.root))


def test_hl7_null_is_empty(orm: Hl7View) -> None:
    # PID-8 is "" (HL7 explicit null), as is the component PID-11.2.
    assert orm.values("PID-8", orm.root) == []
    assert orm.values("PID-11.2", orm.root) == []
    assert orm.value("PID-8", orm.root) == (None, "PID-8")


def test_star_repetitions_and_occurrences(orm: Hl7View) -> None:
    assert orm.values("PID-3(*).1", orm.root) == [
        ("0012345", "PID-3.1"),
        ("341122196604200135", "PID-3(2).1"),
    ]
    assert orm.values("PID-3.1", orm.root) == [("0012345", "PID-3.1")]  # default: first
    assert orm.values("PID-5(*).7", orm.root) == [("L", "PID-5.7"), ("A", "PID-5(2).7")]
    assert orm.values("OBX(*)-3.2", orm.root) == [("体重", "OBX(1)-3.2"), ("身高", "OBX(2)-3.2")]
    assert orm.values("OBR(*)-4.1", orm.root) == [("CT001", "OBR(1)-4.1"), ("CT002", "OBR(2)-4.1")]


# -- groups ----------------------------------------------------------------------------------


def test_select_groups_scopes_later_lookups(orm: Hl7View) -> None:
    first, second = orm.select("ORC", orm.root)
    assert (first.label, second.label) == ("ORC(1)", "ORC(2)")
    assert (first.start, first.end, second.start, second.end) == (2, 5, 5, 9)
    # OBR-4 inside the second ORC group is the second OBR.
    assert orm.value("OBR-4.1", second) == ("CT002", "OBR(2)-4.1")
    assert orm.value("OBR-4.2", first) == ("头颅CT平扫", "OBR(1)-4.2")
    # The NTE belongs to the first group only; the OBX to the second only.
    assert orm.value("NTE-3", first) == ("头痛三天", "NTE-3")
    assert orm.values("NTE-3", second) == []
    assert orm.values("OBX(*)-5", first) == []
    assert orm.values("OBX(*)-5", second) == [("65", "OBX(1)-5"), ("172", "OBX(2)-5")]
    assert orm.value("OBX(2)-5", second) == ("172", "OBX(2)-5")


def test_absolute_root_paths_from_inside_a_group(orm: Hl7View) -> None:
    group = orm.select("ORC", orm.root)[1]
    assert orm.values("PID-5.1", group) == []  # PID is not in the order group
    assert orm.value("/PID-5.1", group) == ("王", "PID-5.1")
    assert orm.value("/MSH-10", group) == ("LAX2-0001", "MSH-10")
    assert orm.value("/OBR-4.1", group) == ("CT001", "OBR(1)-4.1")  # first in the message


def test_select_group_by_occurrence(orm: Hl7View) -> None:
    [second] = orm.select("ORC(2)", orm.root)
    assert second.label == "ORC(2)"
    assert orm.value("OBR-4.1", second)[0] == "CT002"
    assert orm.select("ORC(3)", orm.root) == []
    assert len(orm.select("ORC(*)", orm.root)) == 2


def test_groups_nested_in_a_group(orm: Hl7View) -> None:
    second = orm.select("ORC", orm.root)[1]
    obx = orm.select("OBX", second)
    assert [g.label for g in obx] == ["OBX(1)", "OBX(2)"]
    assert [orm.value("OBX-5", g)[0] for g in obx] == ["65", "172"]
    assert orm.select("NTE", second) == []


# -- nodes and relative paths ------------------------------------------------------------------


def test_select_field_nodes_and_relative_paths(orm: Hl7View) -> None:
    nodes = orm.select("PID-3", orm.root)  # every repetition
    assert [n.label for n in nodes] == ["PID-3", "PID-3(2)"]
    node = nodes[1]
    assert orm.values(".1", node) == [("341122196604200135", "PID-3(2).1")]
    assert orm.values(".4.1", node) == [("CHNRID", "PID-3(2).4.1")]
    assert orm.values(".4.2", node) == [("2.16.156.10011.1.1", "PID-3(2).4.2")]
    assert orm.values(".4.9", node) == []
    assert orm.value(".2", node) == (None, "PID-3(2).2")
    names = orm.select("PID-5", orm.root)
    assert [orm.value(".1", n)[0] for n in names] == ["王", "WANG"]


def test_select_one_repetition_and_components(orm: Hl7View) -> None:
    [node] = orm.select("PID-5(2)", orm.root)
    assert (node.label, node.text) == ("PID-5(2)", "WANG^WEI^^^^^A")
    [component] = orm.select("PID-3(2).4", orm.root)
    assert (component.label, component.level) == ("PID-3(2).4", 1)
    assert orm.values(".3", component) == [("ISO", "PID-3(2).4.3")]  # .n below a component
    [sub] = orm.select(".3", component)
    assert orm.select(".1", sub) == []  # a subcomponent has no parts


def test_relative_path_outside_a_node_is_a_config_error(orm: Hl7View) -> None:
    with pytest.raises(ConfigError) as exc:
        orm.values(".1", orm.root)
    assert exc.value.code == "config.bad-path"
    group = orm.select("ORC", orm.root)[0]
    with pytest.raises(ConfigError):
        orm.select(".1", group)


def test_labels(orm: Hl7View) -> None:
    second = orm.select("ORC", orm.root)[1]
    assert orm.label("OBR-4.1", second) == "OBR(2)-4.1"
    assert orm.label("PID-3(2).4.2", orm.root) == "PID-3(2).4.2"
    assert orm.label("OBX(3)-5", orm.root) == "OBX(3)-5"  # kept even when absent
    assert orm.label("PV1-3.1", orm.root) == "PV1-3.1"
    node = orm.select("PID-3", orm.root)[1]
    assert orm.label(".4.2", node) == "PID-3(2).4.2"
    assert orm.label(".1", Position(0, 1)) == ".1"


# -- check_path ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    [
        "PID",
        "PID-5",
        "PID-5.1",
        "PID-3(2).4.2",
        "OBX(2)-5",
        "OBX(*)-5",
        "PID-3(*).1",
        "/MSH-10",
        "/ORC",
        "ZDS-1.1",
        ".1",
        ".4.1",
    ],
)
def test_check_path_accepts(path: str) -> None:
    check_path(path)


@pytest.mark.parametrize(
    "path",
    [
        "",
        "pid-5",
        "PID5",
        "PID-",
        "PID-5.",
        "PID-5..1",
        "PID-5.1.2.3",
        "PID-x",
        "PID-5(x)",
        "PID(2",
        "PID-5(*",
        "PI-5",
        "PIDX-5",
        "1ID-5",
        "PID-5 ",
        " PID-5",
        "PID/5",
        "..1",
        ".1.2.3",
        "PID-0",
        "PID-5.0",
        "PID(0)-5",
        "PID-5(0)",
        ".0",
        "PID-05.1.0",
    ],
)
def test_check_path_rejects(path: str) -> None:
    with pytest.raises(ConfigError) as exc:
        check_path(path)
    assert exc.value.code == "config.bad-path"
    assert repr(path) in str(exc.value)


# -- escapes ---------------------------------------------------------------------------------


def nte(text: str, charset: str = "UNICODE UTF-8", codec: str = "utf-8") -> str | None:
    msh = ORM[0].replace("UNICODE UTF-8", charset)
    view = view_of([msh, f"NTE|1||{text}"], codec)
    return view.value("NTE-3", view.root)[0]


@pytest.mark.parametrize(
    ("escaped", "text"),
    [
        ("血压160\\S\\95", "血压160^95"),
        ("A\\F\\B", "A|B"),
        ("造影\\T\\介入", "造影&介入"),
        ("甲\\R\\乙", "甲~乙"),
        ("\\E\\\\E\\server\\E\\ct", "\\\\server\\ct"),
        ("第一行\\.br\\第二行", "第一行\n第二行"),
        ("第一行\\X0D0A\\第二行", "第一行\r\n第二行"),
        ("\\XE4BDA0E5A5BD\\", "你好"),  # hex bytes decoded as the message charset (UTF-8)
        ("\\H\\重要\\N\\提示", "重要提示"),  # highlighting on/off: no text
        ("C:\\影像", "C:\\影像"),  # unterminated escape: kept as written
        ("\\XZZ\\", "\\XZZ\\"),  # bad hex: kept
        ("\\Q\\", "\\Q\\"),  # unknown escape: kept
    ],
)
def test_escapes(escaped: str, text: str) -> None:
    assert nte(escaped) == text


def test_escaped_delimiters_do_not_split() -> None:
    # \S\ and \F\ become ^ and | only after the field was split into components.
    view = view_of([ORM[0], "OBX|1|NM|39156-5^BMI^LN||24.2|kg/m\\S\\2^^UCUM|A\\F\\B~C"])
    assert view.value("OBX-6.1", view.root) == ("kg/m^2", "OBX-6.1")
    assert view.value("OBX-6.3", view.root) == ("UCUM", "OBX-6.3")
    assert view.values("OBX-7(*)", view.root) == [("A|B", "OBX-7"), ("C", "OBX-7(2)")]


def test_hex_escape_decoded_in_gb18030() -> None:
    # C4E3 BAC3 is 你好 in GB18030 (as UTF-8 it would not decode).
    assert nte("\\XC4E3BAC3\\", "GB 18030-2000", "gb18030") == "你好"


def test_big5_trail_backslash_next_to_an_escape() -> None:
    # 許 is B3 5C: the bytes B3 5C 5C 2E 62 72 5C hold a character and then \.br\.
    data = "許\\.br\\功".encode("big5hkscs")
    assert data == b"\xb3\x5c\x5c.br\x5c\xa5\x5c"
    assert nte("許\\.br\\功", "BIG-5", "big5hkscs") == "許\n功"


def test_unescape_directly(orm: Hl7View) -> None:
    assert orm.unescape("无转义") == "无转义"
    assert orm.unescape("\\.sp\\") == "\n"
    assert orm.unescape("a\\b\\F\\c") == "a\\b\\F\\c"  # '\b\' unknown, then unterminated
