"""White space other than SPACE at an end of an HL7 v2 identifying value
(mappings/identity-fields.yaml): a TAB, an LF (``\\.br\\``, ``\\X0A\\``) or an ideographic
space (U+3000). ``str.strip()`` took it, so PID-3 ``0098765<TAB>`` was read as MRN
``0098765``: another identifier than the one sent, perhaps another patient's. The record
fails instead (``intake.control-characters``, naming the terser path), as a DICOM study
does (tests/intake/dicom/test_dicom_patient_identity.py). Spaces stay padding: HL7
senders pad fields with them. Every mapping engine reads it so."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from gateway import Converter
from gateway.envelope import Record
from gateway.mapping._ceiling import STATS
from tests.conftest import ENGINES
from tests.intake.test_intake_identity_controls import edited_batch as _convert

GOLDEN = Path(__file__).resolve().parents[1] / "golden" / "hl7v2"


@pytest.fixture(params=ENGINES)
def converter(request: pytest.FixtureRequest, engines: dict[str, Converter]) -> Converter:
    return engines[request.param]


def _mrn(record: Record) -> dict[str, Any]:
    assert record.bundle is not None, [i.line() for i in record.issues]
    [patient] = [
        e["resource"] for e in record.bundle["entry"] if e["resource"]["resourceType"] == "Patient"
    ]
    identifier: dict[str, Any] = patient["identifier"][0]
    return identifier


_MRN = "0098765^^^NSCH^MR"


@pytest.mark.parametrize(
    ("edit", "where"),
    [
        ("0098765\t^^^NSCH^MR", "PID-3.1"),  # the MRN's trailing TAB
        ("\t0098765^^^NSCH^MR", "PID-3.1"),
        ("\u30000098765^^^NSCH^MR", "PID-3.1"),  # a leading ideographic space
        ("0098765\u3000 ^^^NSCH^MR", "PID-3.1"),  # padded with spaces after it
        ("0098765\\.br\\^^^NSCH^MR", "PID-3.1"),  # an LF by a formatting escape
        ("0098765\\X0A\\^^^NSCH^MR", "PID-3.1"),  # ... and by a hex escape
        ("0098765^^^NSCH\u3000^MR", "PID-3.4.1"),  # the MRN's assigning authority
        ("0098765^^^NSCH^MR\t", "PID-3.5"),  # its type (which identifier kind)
    ],
)
def test_white_space_at_an_end_of_an_identifier_fails_the_record(
    converter: Converter, edit: str, where: str
) -> None:
    records = _convert(converter, "omi_o23.hl7", (_MRN, edit))
    errors = [(e.code, e.location) for e in records[0].errors]
    assert errors == [("intake.control-characters", where)], [i.line() for i in records[0].issues]
    [error] = records[0].errors
    assert "identifying field" in error.message and "at an end" in error.message
    assert records[0].bundle is None and records[-1].ok


@pytest.mark.parametrize(
    ("old", "new", "where"),
    [
        # the sending facility: the namespace of every MRN sent without an authority
        ("|NSCH^2.16.156.10011.99.1.1^ISO|NSCH_RIS", "|NSCH\t^2.16.156.10011.99.1.1^ISO|NSCH_RIS",
         "MSH-4.1"),
        # the placer order number
        ("ORC|NW|PLC2026061501^NSCH", "ORC|NW|PLC2026061501\u3000^NSCH", "ORC-2.1"),
        # the code and the id beside a text (hl7v2-text) keep their ends
        ("CT101^冠状动脉", "CT101\t^冠状动脉", "OBR-4.1"),
        ("||NS0231^梁^志东^^^^^^NSCH|||", "||NS0231\u3000^梁^志东^^^^^^NSCH|||", "ORC-12.1"),
    ],
)  # fmt: skip
def test_white_space_at_an_end_of_the_sender_an_order_number_or_a_code_fails_the_record(
    converter: Converter, old: str, new: str, where: str
) -> None:
    records = _convert(converter, "omi_o23.hl7", (old, new))
    assert [(e.code, e.location) for e in records[0].errors] == [
        ("intake.control-characters", where)
    ], [i.line() for i in records[0].issues]


def test_the_study_of_a_report_with_a_trailing_tab_fails_the_record(converter: Converter) -> None:
    # OBX-5 identifies in the OBX coded 113014 (DCM: Study Instance UID) only
    uid = "||2.16.156.10011.99.1.4.3.20260610.1|"
    records = _convert(converter, "oru_r01_cobranded.hl7", (uid, uid.replace(".1|", ".1\t|")))
    assert [(e.code, e.location) for e in records[0].errors] == [
        ("intake.control-characters", "OBX(1)-5")
    ]


def test_spaces_stay_padding(converter: Converter) -> None:
    records = _convert(converter, "omi_o23.hl7", (_MRN, "  0098765  ^^^NSCH ^MR"))
    assert records[0].ok, [i.line() for i in records[0].issues]
    mrn = _mrn(records[0])
    assert (mrn["value"], mrn["system"]) == ("0098765", "https://fhir.nsch.example.cn/sid/mrn")


def test_white_space_elsewhere_is_trimmed_as_before(converter: Converter) -> None:
    # not identifying: findings text, the patient's name, an address line; a TAB inside
    # an identifier is not at an end (nothing is taken from it)
    text = "左侧基底节区见一约8mm×6mm低密度软化灶，边界清楚，与2025年6月片比较无明显变化。"
    records = _convert(
        converter,
        "oru_r01_cobranded.hl7",
        (text, f"\t{text}\u3000\\.br\\"),
        ("王^伟^", "王\u3000^伟\t^"),
    )
    assert records[0].ok, [i.line() for i in records[0].issues]
    assert records[0].bundle is not None
    assert text in records[0].bundle_json.decode()


def test_a_message_whose_identifiers_hold_no_such_space_keeps_the_ceiling(
    engines: dict[str, Converter],
) -> None:
    # Chinese text is often padded with ideographic spaces: only a message whose
    # identifying fields hold one leaves the generated code for the checked reads.
    before = STATS["built"]
    records = _convert(
        engines["ceiling"], "oru_r01_cobranded.hl7", ("王^伟^", "王\u3000^伟\u3000^")
    )
    assert all(r.ok for r in records), [i.line() for r in records for i in r.issues]
    assert STATS["built"] - before == 2


@pytest.mark.parametrize(
    ("old", "new"),
    [
        # what is ordered: its display text padded with ideographic spaces
        ("CT101^冠状动脉CT血管成像^99NSCH", "CT101^冠状动脉CT血管成像\u3000\u3000^99NSCH"),
        # the ordering provider's family and given names (ORC-12.2, .3)
        ("||NS0231^梁^志东^^^^^^NSCH|||", "||NS0231^梁\u3000^志东\t^^^^^^NSCH|||"),
    ],
)
def test_names_and_display_texts_in_identifying_fields_are_padded_as_text(
    converter: Converter, old: str, new: str
) -> None:
    # identity-fields.yaml hl7v2-text: Chinese text is padded with U+3000; only the
    # identifying components (the code, the provider's id) keep their ends as sent
    records = _convert(converter, "omi_o23.hl7", (old, new))
    assert records[0].ok, [i.line() for i in records[0].issues]
    plain = _convert(converter, "omi_o23.hl7")
    assert records[0].bundle_json == plain[0].bundle_json


@pytest.mark.parametrize(
    ("space", "charset"),
    [
        ("\u00a0", "utf-8"),  # a no-break space: str.strip() takes it as it takes a TAB
        ("\u2003", "utf-8"),  # an em space
        ("\u0085", "utf-8"),  # NEL, a C1 control that is white space to str.strip()
        ("\u00a0", "gb18030"),  # four bytes in GB 18030 (81 30 84 32)
        ("\u3000", "gb18030"),  # A1 A1
    ],
)
def test_any_white_space_at_an_end_of_an_identifier_fails_the_record(
    converter: Converter, space: str, charset: str
) -> None:
    # Trimmed, PID-3 '0098765<NBSP>' was MRN 0098765 in a message that held nothing
    # else of note, but failed the record when a TAB padded a code's text (OBR-4.2)
    # elsewhere: which MRN was read depended on another field. DICOM refuses them all.
    declared = {"utf-8": "UNICODE UTF-8", "gb18030": "GB18030"}[charset]
    text = (GOLDEN / "omi_o23.hl7").read_text(encoding="utf-8")
    text = text.replace("|UNICODE UTF-8", f"|{declared}", 1)
    text = text.replace(_MRN, f"0098765{space}^^^NSCH^MR", 1)
    records = list(converter.convert(text.encode(charset)))
    assert [(e.code, e.location) for e in records[0].errors] == [
        ("intake.control-characters", "PID-3.1")
    ], [i.line() for i in records[0].issues]


def test_the_edge_spaces_are_what_str_strip_takes_beside_space_and_controls() -> None:
    # the byte pre-check and the view look for EDGE_SPACES: one that str.strip() takes
    # and the list lacks would be trimmed silently again in a plain message
    import sys

    from gateway.intake._controls import CONTROL, EDGE_SPACES

    white = {chr(c) for c in range(sys.maxunicode + 1) if chr(c).isspace()}
    assert set(EDGE_SPACES) == {c for c in white if c not in " \r\n" and not CONTROL.match(c)}


@pytest.mark.parametrize("new", ["NSC\\X1F\\H", "NSCH\t"])
def test_the_performing_organisation_read_by_its_name_keeps_its_ends(
    converter: Converter, new: str
) -> None:
    # OBX-23.1 is the performing organisation's code when OBX-23 sends neither an id
    # (.10) nor an authority (.6): ORU.yaml $performing, the network's look-up. Read as
    # text, 'NSC<0x1F>H' lost its control character and became NSCH, another
    # institution (its OID on the report), with a warning only.
    obx23 = "来安县第二人民医院^^^^^LAX2&2.16.156.10011.99.1.4&ISO^^^^LAX2"
    records = _convert(converter, "oru_r01_cobranded.hl7", (obx23, new))
    assert [(e.code, e.location) for e in records[0].errors] == [
        ("intake.control-characters", "OBX(1)-23.1")
    ], [i.line() for i in records[0].issues]


@pytest.mark.parametrize(
    ("coded", "ok"),
    [
        ("^^^^^LAX2&2.16.156.10011.99.1.4&ISO^^^^LAX2", True),  # .6.1 and .10: the code
        ("^^^^^^^^^LAX2", True),  # .10 alone
        ("^^^^^LAX2", True),  # .6.1 alone
        ("^^^^^&2.16.156.10011.99.1.4&ISO", False),  # .6.2 only: ORU.yaml reads .1 as the code
        ("", False),  # the name alone is the code
    ],
)
def test_the_performing_organisations_name_padded_with_u3000_fails_only_as_its_code(
    converter: Converter, coded: str, ok: bool
) -> None:
    # Chinese systems pad text with U+3000. Beside an id (.10) or an authority (.6.1)
    # ORU.yaml $performing (.10 | .6.1 | .1) never reads the name: its padding is
    # harmless and the Bundle is the unpadded one's. Read as the code it keeps failing
    # the record (above): trimmed, the network's look-up would be of another spelling.
    obx23 = "来安县第二人民医院^^^^^LAX2&2.16.156.10011.99.1.4&ISO^^^^LAX2"
    records = _convert(
        converter, "oru_r01_cobranded.hl7", (obx23, f"来安县第二人民医院\u3000{coded}")
    )
    if not ok:
        assert [(e.code, e.location) for e in records[0].errors] == [
            ("intake.control-characters", "OBX(1)-23.1")
        ], [i.line() for i in records[0].issues]
        return
    assert records[0].ok, [i.line() for i in records[0].issues]
    plain = _convert(converter, "oru_r01_cobranded.hl7", (obx23, f"来安县第二人民医院{coded}"))
    assert records[0].bundle_json == plain[0].bundle_json


@pytest.mark.parametrize("tab", ["\t", "\\X09\\"])
def test_a_memoised_read_of_the_same_text_elsewhere_does_not_hide_the_end(
    converter: Converter, tab: str
) -> None:
    # CodeableConcept-CWE reads OBR-31 (the reason: text) and OBR-4 (what is ordered:
    # identifying). Orders whose reason was 'CT101<TAB>^...' memoised the trimmed code
    # under that node text; an order whose OBR-4 was the same text then hit the memo,
    # and CT101<TAB> was ordered as CT101 without the record's error.
    text = (GOLDEN / "omi_o23.hl7").read_text(encoding="utf-8")
    value = f"CT101{tab}^冠状动脉CT血管成像^99NSCH"
    reasons = [
        text.replace("R07.4^胸痛^I10", value, 1).replace("01500021", f"0150002{n}", 1)
        for n in range(2, 6)
    ]
    ordered = text.replace("CT101^冠状动脉CT血管成像^99NSCH", value, 1)
    batch = "\r".join(m.rstrip("\r\n") for m in (*reasons, ordered))
    records = list(converter.convert(batch.encode()))
    assert [r.ok for r in records[:-1]] == [True] * len(reasons)
    assert [(e.code, e.location) for e in records[-1].errors] == [
        ("intake.control-characters", "OBR-4.1")
    ], [i.line() for i in records[-1].issues]


@pytest.mark.parametrize("interpreter", ["2077^戴\u3000^奇山", "2077^戴^奇山\t"])
def test_the_interpreters_names_in_the_xcn_shape_are_padded_as_text(
    converter: Converter, interpreter: str
) -> None:
    # OBR-32 is NDL (names in OBR-32.1.2-.7, text), but real feeds send the XCN shape
    # (id^family^given; ORU.yaml xcn-name reads .2-.6): its names are text too, where a
    # padded family name failed the report
    records = _convert(converter, "oru_r01_cobranded.hl7", ("N4102&徐&静&&&&&&NJMU2", interpreter))
    assert records[0].ok, [i.line() for i in records[0].issues]
    plain = _convert(converter, "oru_r01_cobranded.hl7", ("N4102&徐&静&&&&&&NJMU2", "2077^戴^奇山"))
    assert records[0].bundle_json == plain[0].bundle_json


def test_a_codes_original_text_is_padded_as_text(converter: Converter) -> None:
    # CWE.9 (original text) is the first text CodeableConcept-CWE reads (.9 | .2 | .5):
    # text as .2 and .5 are, where padding failed the order
    code = "CT101^冠状动脉CT血管成像^99NSCH"
    records = _convert(converter, "omi_o23.hl7", (code, f"{code}^^^^^^冠状动脉CT\u3000"))
    assert records[0].ok, [i.line() for i in records[0].issues]
    plain = _convert(converter, "omi_o23.hl7", (code, f"{code}^^^^^^冠状动脉CT"))
    assert records[0].bundle_json == plain[0].bundle_json
