"""Real files: the demo samples in the repository and the public corpus beside the checkout.

The corpus (``<repo>/../shared/corpus``) is not part of the project; the tests that read it
are skipped when it is absent. Nothing from it is copied here.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.errors import IntakeError
from gateway.intake.hl7v2 import Hl7View, Message, parse_message, split_messages
from gateway.network import Institution, Network

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples" / "hl7v2"
GOLDEN = REPO / "tests" / "golden" / "hl7v2"
CORPUS = REPO.parent / "shared" / "corpus" / "hl7v2"


def parse_file(path: Path) -> list[Message]:
    return [parse_message(raw) for raw in split_messages(path.read_bytes())]


def view(message: Message) -> Hl7View:
    return Hl7View(message)


# -- demo samples (in the repository) ----------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    sorted(EXAMPLES.glob("*.hl7")) + sorted(GOLDEN.glob("*.hl7")),
    ids=lambda p: f"{p.parent.name}/{p.name}",
)
def test_every_sample_splits_and_parses(path: Path) -> None:
    messages = parse_file(path)
    assert messages
    for message in messages:
        assert message.warnings == []
        assert message.declared_charset in ("UNICODE UTF-8", "GB 18030-2000", "BIG-5")


def test_big5_sample_keeps_names_with_backslash_trail_bytes() -> None:
    # 許 B3 5C, 功 A5 5C, 區 (Big5 B0 CF), 東 (Big5 AA 46) in a Big5 back-referral.
    [message] = parse_file(EXAMPLES / "ref_i12_hkpmc_to_nsch.hl7")
    v = view(message)
    assert (message.charset, message.declared_charset) == ("big5hkscs", "BIG-5")
    assert v.value("PID-5.1", v.root)[0] == "許"
    assert v.value("PID-5.2", v.root)[0] == "嘉瑋"
    assert v.value("PRD(1)-2.2", v.root) == ("耀功", "PRD(1)-2.2")
    assert v.value("PID-11(2).9", v.root) == ("觀塘區", "PID-11(2).9")
    note = v.value("NTE(1)-3", v.root)[0]
    assert note is not None
    assert "（LDL-C|HDL-C）" in note  # \F\ next to the full-width bracket A1 5E
    assert note.count("\n") == 2  # two \.br\


def test_gb18030_samples_keep_names_with_pipe_and_backslash_trail_bytes() -> None:
    [lax2] = parse_file(EXAMPLES / "ref_i12_lax2_to_njmu2.hl7")
    v = view(lax2)
    assert lax2.charset == "gb18030"
    assert v.value("PRD(1)-2.2", v.root) == ("珅", "PRD(1)-2.2")  # 珅 AB 7C
    note = v.value("NTE(1)-3", v.root)[0]
    assert note is not None
    assert "阅片医师：孙昞\n影像所见" in note  # 昞 95 5C right before \.br\
    assert "kg/m^2" in note
    [nsgp] = parse_file(EXAMPLES / "ref_i12_nsgp_to_nsch.hl7")
    v = view(nsgp)
    assert v.value("PID-5.2", v.root)[0] == "嘉瑋"  # 瑋 AC 7C
    assert v.value("PID-11(2).1", v.root)[0] == "協和街88號錦東大廈12樓B室"  # 錦 E5 5C, 東 96 7C
    assert v.value("PID-11(2).9", v.root)[0] == "觀塘區"  # 觀 D3 5E, 區 85 5E


def test_batch_sample_keeps_three_messages_and_the_broken_one_is_syntactically_valid() -> None:
    raws = split_messages((EXAMPLES / "batch_mixed.hl7").read_bytes())
    assert [(r.index, r.line) for r in raws] == [(1, 1), (2, 9), (3, 12)]
    messages = [parse_message(r) for r in raws]
    assert [m.control_id for m in messages] == [
        "LAX220260622090000001",
        "LAX220260622090500002",
        "LAX220260622091000003",
    ]
    # Message 2's 'P1D' is a valid segment name: it is the mapping that must notice it.
    assert list(messages[1].positions) == ["MSH", "P1D", "OBR"]


def test_mllp_sample() -> None:
    data = (EXAMPLES / "mllp_ref_i12.hl7").read_bytes()
    assert data.startswith(b"\x0b") and data.endswith(b"\x1c\r")
    [message] = parse_file(EXAMPLES / "mllp_ref_i12.hl7")
    v = view(message)
    assert message.control_id == "NSGP20260619110000002"
    assert v.value("PID-3(2).1", v.root)[0] == "44011519751130035X"


# -- public corpus -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def corpus() -> Path:
    if not CORPUS.is_dir():
        pytest.skip(f"public sample corpus not found at {CORPUS} (it lives beside the checkout)")
    return CORPUS


ORDERS = [
    # file, message type, MSH-10, codec used, MSH-18 as declared, ORC groups
    ("ms_REF-I12-01.hl7", "REF^I12", "MSG00112", "utf-8", None, 0),
    ("ms_REF-I14-01.hl7", "REF^I14", "MSG00112", "utf-8", None, 0),
    ("ms_ORM-O01-01.hl7", "ORM^O01", "MSG00018", "utf-8", None, 1),
    ("ms_ORM-O01-03.hl7", "ORM^O01", "MSG00018", "utf-8", None, 2),
    ("ms_OMG-O19-01.hl7", "OMG^O19", "MSG00019", "utf-8", None, 2),
    ("ms_LAB-ORM-1.hl7", "ORM^O01", "MSGID20060307110114", "utf-8", None, 1),
    ("dcm4che_ORM_O01.hl7", "ORM^O01", "103106", "utf-8", None, 1),  # MSH-18 is ' '
    (
        "v2tofhir_ORM_O01-IHE-RAD-4-Message-v2.3.1.txt",
        "ORM^O01",
        "f8d3a7f8-9ff0-4312-93b1-c57976bf66fb",
        "latin-1",
        "8859/1",
        1,
    ),
]


@pytest.mark.parametrize(
    ("name", "mtype", "control_id", "codec", "declared", "orders"),
    ORDERS,
    ids=[o[0] for o in ORDERS],
)
def test_corpus_order_and_referral_messages(
    corpus: Path,
    name: str,
    mtype: str,
    control_id: str,
    codec: str,
    declared: str | None,
    orders: int,
) -> None:
    raws = split_messages((corpus / name).read_bytes())
    assert len(raws) == 1
    message = parse_message(raws[0])
    assert message.message_type == mtype
    assert message.control_id == control_id
    assert (message.charset, message.declared_charset) == (codec, declared)
    v = view(message)
    assert len(v.select("ORC", v.root)) == orders
    assert v.values("/PID-5.1", v.root)  # a patient name is there
    if mtype.startswith("REF"):
        assert v.value("RF1-1.1", v.root)[0]


DASHED = ["dcm4che_OMI_O23-ImagingOrder.hl7", "dcm4che_OMG_O19-GeneralClinicalOrder-Eyecare.hl7"]


@pytest.mark.parametrize("name", DASHED)
def test_corpus_8859_1_files_with_a_utf8_en_dash_are_refused(corpus: Path, name: str) -> None:
    # OBR-31 holds '12 –35' with the en dash as UTF-8 E2 80 93, in an 8859/1 message.
    # Before issue 8 this was read as UTF-8 with a warning; a sender that declares one
    # charset and sends another is now refused unless configured (charset_mismatch).
    data = (corpus / name).read_bytes()
    assert b"\xe2\x80\x93" in data
    [raw] = split_messages(data)
    with pytest.raises(IntakeError) as exc:
        parse_message(raw)
    assert (exc.value.code, exc.value.location) == ("intake.charset-mislabelled", "MSH-18")
    assert "bytes of OBR-31 are UNICODE UTF-8 text" in str(exc.value)


@pytest.mark.parametrize("name", DASHED)
def test_corpus_8859_1_files_with_a_utf8_en_dash_decode_when_configured(
    corpus: Path, name: str
) -> None:
    sender = Institution("xyz", "XYZ_RADIOLOGY", "https://xyz.example", {}, data={})
    decode = Institution(
        "xyz", "XYZ_RADIOLOGY", "https://xyz.example", {}, data={"charset_mismatch": "decode"}
    )
    [raw] = split_messages((corpus / name).read_bytes())
    with pytest.raises(IntakeError):
        parse_message(raw, network=Network([sender]))  # 'refuse' is the default
    message = parse_message(raw, network=Network([decode]))
    assert (message.charset, message.declared_charset) == ("utf-8", "8859/1")
    [warning] = message.warnings
    assert "'8859/1'" in warning and "UNICODE UTF-8" in warning
    v = view(message)
    assert message.message_type in ("OMI^O23", "OMG^O19")
    reason = v.value("OBR-31.2", v.root)[0]
    assert reason is not None
    assert "12 –35" in reason


def test_corpus_ms_files_with_bom_and_lf(corpus: Path) -> None:
    data = (corpus / "ms_ORM-O01-03.hl7").read_bytes()
    assert data.startswith(b"\xef\xbb\xbfMSH") and b"\r" not in data
    [raw] = split_messages(data)
    message = parse_message(raw)
    v = view(message)
    groups = v.select("ORC", v.root)
    assert [v.value("OBR-4.1", g)[0] for g in groups] == ["24725-4", "24590-2"]


def test_corpus_oru_pdf_fails_where_the_base64_is_wrapped(corpus: Path) -> None:
    # Upstream the OBX-5 base64 PDF is cut by a CR after 4096 bytes of segment 9, so
    # segment 10 starts with base64 text instead of a segment name.
    [raw] = split_messages((corpus / "dcm4che_ORU_R01-PDF.hl7").read_bytes())
    assert raw.error is None
    assert len(raw.segments) == 10
    assert len(raw.segments[8]) == 4096
    with pytest.raises(IntakeError) as exc:
        parse_message(raw)
    assert exc.value.code == "intake.segment-syntax"
    assert exc.value.location == "segment 10"
    assert "starts with 'A9AAAAAA9AAA…'" in str(exc.value)  # the form of 'A0KJSVFT0YNC…'
    assert "A0KJ" not in str(exc.value)


def test_corpus_every_hl7v2_file_is_one_message(corpus: Path) -> None:
    for path in sorted(corpus.iterdir()):
        raws = split_messages(path.read_bytes())
        assert len(raws) == 1, path.name
        assert raws[0].error is None, path.name
