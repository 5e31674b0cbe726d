"""Issue 8 (patient safety) for HL7 v2: mislabelled charsets, resource bounds, control
characters, impossible dates and malformed delimiters, each failing with an error that
names the field, never the patient's data, and never stopping the rest of a batch."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway import Converter, Settings
from gateway.envelope import Record
from gateway.errors import IntakeError
from gateway.intake.hl7v2 import Hl7View, Message, parse_message, read_messages, split_messages
from gateway.network import Institution, Network

REPO = Path(__file__).resolve().parents[2]

MSH = (
    "MSH|^~\\&|{app}|{facility}^2.16.156.10011.99.1.2^ISO|NSCH_HIS|NSCH^2.16.156.10011.99.1.1^ISO|"
    "20260612093015+0800||ORM^O01^ORM_O01|CTL{n}|P|2.5|||||CHN|{charset}"
)
ORDER = "ORC|NW|O{n}^NSGP\rOBR|1|O{n}^NSGP||CT001^CT HEAD^99NSGP"


def message(
    n: int = 1,
    charset: str = "UNICODE UTF-8",
    name: str = "王^伟",
    dob: str = "19660420",
    pid3: str = "P1^^^NSGP^MR",
    facility: str = "NSGP",
) -> str:
    header = MSH.format(app=f"{facility}_HIS", facility=facility, n=n, charset=charset)
    pid = f"PID|1||{pid3}||{name}||{dob}|M"
    return f"{header}\r{pid}\r{ORDER.format(n=n)}\r"


def parse(data: bytes, network: Network | None = None) -> Message:
    [raw] = split_messages(data)
    return parse_message(raw, network=network) if network else parse_message(raw)


def fails(data: bytes, network: Network | None = None) -> IntakeError:
    with pytest.raises(IntakeError) as exc:
        parse(data, network)
    return exc.value


def sender(facility: str, jurisdiction: str = "CN-GD", **data: str) -> Network:
    inst = Institution(
        facility.lower(),
        facility,
        f"https://{facility.lower()}.example",
        {},
        jurisdiction=jurisdiction,
        charset=data.get("charset"),
        data=dict(data),
    )
    return Network([inst])


@pytest.fixture(scope="module")
def converter(tmp_path_factory: pytest.TempPathFactory) -> Converter:
    return Converter(Settings.load(home=tmp_path_factory.mktemp("home"), env={}))


def convert(converter: Converter, text: str | bytes) -> list[Record]:
    return list(converter.convert(text.encode() if isinstance(text, str) else text))


# -- 1. a single-byte charset declared (or defaulted) over Chinese multi-byte text ---------


@pytest.mark.parametrize(
    ("codec", "likely"),
    [("gb18030", "GB 18030-2000"), ("big5hkscs", "BIG-5"), ("utf-8", "UNICODE UTF-8")],
)
def test_8859_1_over_chinese_bytes_is_refused_naming_msh18_and_the_charset(
    codec: str, likely: str
) -> None:
    # Before: 王 became 'Íõ' (GB 18030) or similar mojibake, with no warning at all.
    name = "許^嘉瑋" if codec == "big5hkscs" else "王^伟"
    data = message(charset="8859/1", name=name).encode(codec)
    err = fails(data)
    assert (err.code, err.location) == ("intake.charset-mislabelled", "MSH-18")
    assert f"bytes of PID-5 are {likely} text" in str(err)
    assert err.issue.details["likely"] == likely
    for ch in name.replace("^", ""):
        assert ch not in str(err)


def test_hong_kong_sender_bytes_are_tried_as_big5_first() -> None:
    # 陳^大文 in Big5 also decodes as GB 18030 text; a Hong Kong sender means Big5.
    data = message(charset="8859/1", name="陳^大文", facility="HKPMC").encode("big5hkscs")
    hk = sender("HKPMC", "HK")
    assert "bytes of PID-5 are BIG-5 text" in str(fails(data, hk))


def test_charset_mismatch_decode_reads_the_likely_charset_with_a_warning() -> None:
    data = message(charset="8859/1", name="陈^志强").encode("gb18030")
    decoded = parse(data, sender("NSGP", charset_mismatch="decode"))
    assert (decoded.charset, decoded.declared_charset) == ("gb18030", "8859/1")
    [warning] = decoded.warnings
    assert "'8859/1'" in warning and "GB 18030-2000" in warning
    view = Hl7View(decoded)
    assert view.value("PID-5.1", view.root) == ("陈", "PID-5.1")
    # 'refuse', set explicitly, is the default.
    assert fails(data, sender("NSGP", charset_mismatch="refuse")).code == (
        "intake.charset-mislabelled"
    )


def test_empty_msh18_with_a_single_byte_sender_default_is_checked_too() -> None:
    data = message(charset="", name="陈^志强").encode("gb18030")
    err = fails(data, sender("NSGP", charset="8859/1"))
    assert (err.code, err.location) == ("intake.charset-mislabelled", "MSH-18 (sender default)")
    decoded = parse(data, sender("NSGP", charset="8859/1", charset_mismatch="decode"))
    assert decoded.charset == "gb18030"
    [warning] = decoded.warnings
    assert "'8859/1'" in warning and "GB 18030-2000" in warning


def test_empty_msh18_without_a_default_names_the_likely_charset() -> None:
    err = fails(message(charset="", name="陈^志强").encode("gb18030"))
    assert err.code == "intake.charset-undeclared"
    assert "they look like GB 18030-2000 text" in str(err)


@pytest.mark.parametrize(
    "name",
    [
        "GONÇALVES^JOÃO",
        "CONCEIÇÃO^MARIA JOÃO",
        "Ribeiro^São",
        "Françoise^Müller",
        "ÉLISE^ÓSCAR",
        "Ångström^Zoë",
        "LEÃO^ASSUNÇÃO",
    ],
)
def test_latin1_names_under_8859_1_are_not_taken_for_chinese(name: str) -> None:
    # A Latin-1 accent and the letter after it often decode as one GB 18030 or Big5
    # ideograph (Ç A → 茿): the accents sit inside Latin words, not as Chinese text does.
    for network in (None, sender("HKPMC", "HK")):
        facility = "HKPMC" if network else "NSGP"
        decoded = parse(
            message(charset="8859/1", name=name, facility=facility).encode("latin-1"), network
        )
        assert (decoded.charset, decoded.warnings) == ("latin-1", [])
        view = Hl7View(decoded)
        assert view.value("PID-5.1", view.root)[0] == name.split("^")[0]


def test_charset_mismatch_decode_through_the_pipeline(tmp_path: Path) -> None:
    # The pipeline hands the reader the network, so the per-sender setting applies.
    seeds = (REPO / "seeds" / "network.yaml").read_text(encoding="utf-8")
    network = tmp_path / "network.yaml"
    network.write_text(
        seeds.replace("    facility: NSGP\n", "    facility: NSGP\n    charset_mismatch: decode\n"),
        encoding="utf-8",
    )
    converter = Converter(Settings.load(home=tmp_path, env={"GATEWAY_NETWORK": str(network)}))
    data = message(charset="8859/1", name="陈^志强").encode("gb18030")
    [record] = convert(converter, data)
    assert record.ok and record.charset == "gb18030"
    assert [w.code for w in record.warnings] == ["intake.charset-mislabelled"]
    assert record.bundle is not None
    [patient] = [
        e["resource"] for e in record.bundle["entry"] if e["resource"]["resourceType"] == "Patient"
    ]
    assert patient["name"][0]["family"] == "陈"


def test_read_messages_without_a_network_refuses() -> None:
    [unit] = read_messages(message(charset="8859/1").encode("gb18030"))
    assert unit.error is not None and unit.error.code == "intake.charset-mislabelled"
    assert unit.control_id == "CTL1"


# -- 2. resource bounds ------------------------------------------------------------------------


def test_300000_pid3_repetitions_are_refused_naming_pid3(converter: Converter) -> None:
    # 3.6 MB of identifiers gave a 125 MB Bundle before.
    pid3 = "~".join(["0012345^^^NSGP^MR"] * 300_000)
    records = convert(converter, message(pid3=pid3) + message(n=2))
    assert [r.ok for r in records] == [False, True]  # the next message still converts
    [error] = records[0].errors
    assert (error.code, error.location) == ("intake.too-many-repetitions", "PID-3")
    assert error.line() == (
        "error: message CTL1: PID-3: 300000 repetitions, more than the limit of 100 "
        "(mappings/hl7v2/limits.yaml) [intake.too-many-repetitions]"
    )
    assert records[0].bundle is None


def test_repetitions_at_the_limit_are_accepted() -> None:
    parse(message(pid3="~".join(["0012345^^^NSGP^MR"] * 100)).encode())
    err = fails(message(pid3="~".join(["0012345^^^NSGP^MR"] * 101)).encode())
    assert err.code == "intake.too-many-repetitions"


def test_report_text_lines_may_repeat_more() -> None:
    # OBX-5 and NTE-3 carry report text one line per repetition in some feeds.
    lines = "~".join(f"第{n}行" for n in range(500))
    text = message() + f"OBX|1|TX|IMP^印象^99NSGP||{lines}\rNTE|1|P|{lines}\r"
    decoded = parse(text.encode())
    assert Hl7View(decoded).values("OBX-5(*)", Hl7View(decoded).root)[499][0] == "第499行"
    err = fails(text.replace("\rNTE|1|P|", "\rZXX|1|P|").replace("OBX|1", "ZXY|1").encode())
    assert (err.code, err.location) == ("intake.too-many-repetitions", "ZXY-5")


def test_the_field_of_a_second_segment_is_named_with_its_occurrence() -> None:
    text = message() + "NTE|1|P|ok\rNTE|2|P|ok|" + "~".join(["x"] * 200) + "\r"
    err = fails(text.encode())
    assert (err.code, err.location) == ("intake.too-many-repetitions", "NTE(2)-4")


def test_too_many_fields_components_and_subcomponents() -> None:
    fields = message() + "ZXX" + "|x" * 300 + "\r"
    err = fails(fields.encode())
    assert (err.code, err.location) == ("intake.too-many-fields", "ZXX")
    assert "300 fields, more than the limit of 256" in str(err)
    comps = message(name="王^伟~" + "^".join(["x"] * 2000))
    err = fails(comps.encode())
    assert (err.code, err.location) == ("intake.too-many-components", "PID-5(2)")
    subs = message(pid3="P1^^^NSGP&" + "&".join(["x"] * 20000) + "^MR")
    err = fails(subs.encode())
    assert (err.code, err.location) == ("intake.too-many-subcomponents", "PID-3.4")


def test_the_limits_are_data() -> None:
    from gateway.intake.hl7v2._er7 import limits

    bounds = limits()
    assert (bounds.segments, bounds.fields, bounds.repetitions) == (5000, 256, 100)
    assert bounds.repetitions_of("OBX", 5) > bounds.repetitions_of("PID", 3)


# -- 3. a control byte in a field: the record keeps its control id ----------------------------


@pytest.mark.parametrize("byte", ["\x00", "\x01", "\x1f", "\x7f"])
def test_control_byte_in_pid5_keeps_the_control_id(converter: Converter, byte: str) -> None:
    records = convert(converter, message(name=f"王{byte}^伟") + message(n=2))
    assert [r.label for r in records] == ["message CTL1", "message CTL2"]
    [error] = records[0].errors
    assert (error.code, error.location) == ("intake.binary", "PID-5")
    assert error.record == "message CTL1"
    assert records[1].ok


def test_control_byte_in_msh10_falls_back_to_the_position(converter: Converter) -> None:
    [record] = convert(converter, message().replace("CTL1", "CT\x00L1"))
    assert record.label == "message #1 (line 1)"
    assert record.errors[0].location == "MSH-10"


# -- 4. an impossible date names its field -----------------------------------------------------


@pytest.mark.parametrize("dob", ["19571345", "19570230", "19570931", "00000101"])
def test_impossible_birth_date_names_pid7(converter: Converter, dob: str) -> None:
    # Before: the FHIR validator caught it as Bundle.entry[2].resource.birthDate.
    [record] = convert(converter, message(dob=dob))
    [error] = record.errors
    assert (error.code, error.location) == ("mapping.bad-datetime", "PID-7")
    assert dob not in error.message


def test_leap_day_is_a_date(converter: Converter) -> None:
    [record] = convert(converter, message(dob="19560229"))
    assert record.ok


# -- 5. MSH-2 with delimiters that are not distinct -------------------------------------------


@pytest.mark.parametrize("encoding", ["^^^^", "^~^&", "^~\\^", "^~\\&^", "A~\\&", "^ \\&"])
def test_encoding_characters_that_are_not_distinct_are_refused(encoding: str) -> None:
    # Before: ^^^^ was accepted and split 王^伟 in odd places.
    data = message().replace("^~\\&", encoding, 1).encode()
    err = fails(data)
    assert (err.code, err.location) == ("intake.msh-encoding-characters", "MSH-2")


# -- 6. a hex escape to a control character ----------------------------------------------------


@pytest.mark.parametrize("given", ["\\X00\\", "\\X01\\\\X1F\\ ", '"\\X07\\"'])
def test_a_value_of_only_control_characters_is_read_as_absent_with_a_warning(
    converter: Converter, given: str
) -> None:
    # Before: the record's error, so a garbled non-identifying value (a given name, a
    # note) failed the whole message. It carries no data: read as absent, never
    # silently (the warning names the field), as DICOM's view does; '"\X07\"' is
    # HL7's explicit null once the control character is removed.
    records = convert(converter, message(name=f"王^{given}") + message(n=2))
    record = records[0]
    assert record.ok and record.bundle is not None, [i.line() for i in record.issues]
    [warning] = record.warnings
    assert (warning.code, warning.location) == ("intake.control-characters", "PID-5.2")
    assert "only control characters" in warning.message and "absent" in warning.message
    [patient] = [
        e["resource"] for e in record.bundle["entry"] if e["resource"]["resourceType"] == "Patient"
    ]
    assert patient["name"][0]["family"] == "王" and "given" not in patient["name"][0]
    assert records[1].ok


def test_a_control_escape_inside_text_is_removed_with_a_warning(converter: Converter) -> None:
    # Twice, so that the second message would be a memo hit without the warning.
    records = convert(converter, message(name="王\\X00\\^伟") + message(n=2, name="王\\X00\\^伟"))
    for record in records:
        assert record.ok and record.bundle is not None
        [warning] = record.warnings
        assert (warning.code, warning.location) == ("intake.control-characters", "PID-5.1.1")
        [patient] = [
            e["resource"]
            for e in record.bundle["entry"]
            if e["resource"]["resourceType"] == "Patient"
        ]
        assert patient["name"][0]["family"] == "王"


@pytest.mark.parametrize(
    ("pid3", "order", "where"),
    [
        ("P1\\X1F\\2^^^NSGP^MR", None, "PID-3.1"),  # removed: P12, another MRN
        ("P9^^^NSGP^MR~P1\\X01\\2^^^NSGP^MR", None, "PID-3(2).1"),
        ("P1^^^NS\\X07\\GP^MR", None, "PID-3.4.1"),  # the assigning authority
        ("P1^^^NSGP^MR", ("ORC|NW|O1", "ORC|NW|O\\X01\\1"), "ORC-2.1"),
    ],
)
def test_a_control_escape_in_an_identifying_field_fails_the_record(
    converter: Converter, pid3: str, order: tuple[str, str] | None, where: str
) -> None:
    # Removed with a warning, P1\X1F\2 became P12: another patient's MRN, and the
    # record filed under that patient (mappings/identity-fields.yaml). The rest of the
    # batch goes on; the error names the field, never the value.
    first = message(pid3=pid3)
    if order is not None:
        assert order[0] in first
        first = first.replace(order[0], order[1], 1)
    records = convert(converter, first + message(n=2))
    [error] = records[0].errors
    assert (error.code, error.location) == ("intake.control-characters", where)
    assert "identifying field" in error.message and "P1" not in error.message
    assert records[0].bundle is None and records[1].ok


# -- 7. edges found by an adversarial pass ------------------------------------------------------


def test_msh_without_a_field_after_msh2_is_truncated_not_a_delimiter_error() -> None:
    # MSH-2 ends at the end of the MSH segment, not at a '|' in the next segment.
    err = fails(b"MSH|^~\\&\rPID|1||X1||W^X\r")
    assert (err.code, err.location) == ("intake.msh-truncated", "MSH-9")


def test_control_id_with_a_control_character_names_the_message_by_position(
    converter: Converter,
) -> None:
    # VT is not refused as binary (it frames MLLP), but it must not reach labels.
    [record] = convert(converter, message().replace("CTL1", "CT\x0bL1"))
    assert record.label == "message #1 (line 1)"


def test_bad_base64_in_an_ed_names_the_field(converter: Converter) -> None:
    # Before: the FHIR validator refused it at Bundle.entry[2].resource.presentedForm[0].data.
    oru = (REPO / "tests" / "golden" / "hl7v2" / "oru_r01_chinese.hl7").read_text(encoding="utf-8")
    pdf = "JVBERi0xLjQgcmVwb3J0"  # base64 of '%PDF-1.4 report'
    good = oru.rstrip("\r\n") + f"\rOBX|9|ED|PDF^Report^99NSCH||^application^pdf^Base64^{pdf}\r"
    [record] = convert(converter, good)
    assert record.ok, [i.line() for i in record.issues]
    [record] = convert(converter, good.replace(pdf, pdf[:-3]))
    [error] = record.errors
    assert (error.code, error.location) == ("mapping.bad-base64", "OBX(5)-5.5")  # the fifth OBX


@pytest.mark.parametrize("framed", [False, True], ids=["plain", "mllp"])
def test_a_stray_form_feed_in_a_name_is_removed_with_a_warning(
    converter: Converter, framed: bool
) -> None:
    # FF is not refused as binary; like \X0C\ it is removed, never silently.
    texts = [message(name="王\x0c伟^小明"), message(n=2, name="王\x0c伟^小明")]
    if framed:
        data = b"".join(b"\x0b" + t.encode() + b"\x1c\r" for t in texts)
    else:
        data = "".join(texts).encode()
    records = convert(converter, data)
    assert len(records) == 2
    for record in records:
        assert record.ok, [i.line() for i in record.issues]
        assert [(w.code, w.location) for w in record.warnings] == [
            ("intake.control-characters", "PID-5.1.1")
        ]
