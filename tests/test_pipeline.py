"""End-to-end properties of every Bundle the gateway emits."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import orjson
import pytest
from fhir.resources.R4B.bundle import Bundle

from gateway import Converter
from gateway.mapping import resource_id

REPO = Path(__file__).resolve().parents[1]
SAMPLES = sorted((REPO / "examples" / "hl7v2").glob("*.hl7")) + sorted(
    (REPO / "tests" / "golden" / "hl7v2").glob("*.hl7")
)


def _bundles(converter: Converter, path: Path) -> list[dict[str, Any]]:
    return [r.bundle for r in converter.convert(path.read_bytes()) if r.ok and r.bundle]


def _by_type(bundle: dict[str, Any], rtype: str) -> list[dict[str, Any]]:
    return [e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == rtype]


def _references(node: Any) -> list[str]:
    if isinstance(node, dict):
        found = [node["reference"]] if isinstance(node.get("reference"), str) else []
        return found + [r for v in node.values() for r in _references(v)]
    if isinstance(node, list):
        return [r for v in node for r in _references(v)]
    return []


@pytest.mark.parametrize("path", SAMPLES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_bundle_parses_with_r4b_models_and_references_resolve(
    converter: Converter, path: Path
) -> None:
    bundles = _bundles(converter, path)
    assert bundles, f"{path.name} produced no Bundle"
    for bundle in bundles:
        Bundle.model_validate(bundle)  # raises on any structural error
        urls = {e["fullUrl"] for e in bundle["entry"]}
        refs = _references([e["resource"] for e in bundle["entry"]])
        # Inside the Bundle: literal references to entries. Outside it (the order behind
        # a report, its study): conditional references by business identifier.
        outside = {r for r in refs if r not in urls}
        assert refs and all(re.fullmatch(r"[A-Za-z]+\?identifier=\S+\|\S+", r) for r in outside)


@pytest.mark.parametrize("path", SAMPLES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_converting_twice_gives_byte_identical_output(converter: Converter, path: Path) -> None:
    data = path.read_bytes()
    first = [r.bundle_json for r in converter.convert(data)]
    second = [r.bundle_json for r in converter.convert(data)]
    assert first == second


def test_ids_are_uuid5_of_business_identifiers_and_entries_are_conditional(
    converter: Converter,
) -> None:
    bundle = _bundles(converter, REPO / "examples/hl7v2/ref_i12_lax2_to_njmu2.hl7")[0]
    for entry in bundle["entry"]:
        resource, request = entry["resource"], entry["request"]
        assert entry["fullUrl"] == f"urn:uuid:{resource['id']}"
        assert request["method"] == "POST" and request["url"] == resource["resourceType"]
        system, value = request["ifNoneExist"].removeprefix("identifier=").split("|", 1)
        assert resource["id"] == resource_id(resource["resourceType"], system, value)
        assert {"system": system, "value": value}.items() <= next(
            i for i in resource["identifier"] if i["value"] == value
        ).items()


def test_the_same_referral_from_two_messages_is_the_same_resource(converter: Converter) -> None:
    # The REF^I14 cancels the REF^I12 by quoting the same RF1-6 referral number.
    referral = _by_type(
        _bundles(converter, REPO / "examples/hl7v2/ref_i12_lax2_to_njmu2.hl7")[0], "ServiceRequest"
    )[0]
    cancel = _by_type(
        _bundles(converter, REPO / "examples/hl7v2/ref_i14_lax2_cancel.hl7")[0], "ServiceRequest"
    )[0]
    assert referral["id"] == cancel["id"]
    assert (referral["status"], cancel["status"]) == ("active", "revoked")


def test_gb18030_referral_keeps_chinese_names_notes_and_diagnoses(converter: Converter) -> None:
    path = REPO / "tests/golden/hl7v2/ref_i12_gb18030.hl7"
    assert b"\xcd\xf5" in path.read_bytes()  # 王 in GB18030: the file really is GB18030
    [record] = converter.convert(path.read_bytes())
    assert record.charset == "gb18030"
    bundle = record.bundle
    assert bundle is not None
    patient = _by_type(bundle, "Patient")[0]
    assert patient["name"][0]["text"] == "王伟"
    assert {"family": "WANG", "given": ["WEI"]}.items() <= patient["name"][1].items()
    condition = _by_type(bundle, "Condition")[0]
    coding = condition["code"]["coding"][0]
    assert (coding["code"], coding["display"]) == ("I63.9", "脑梗死")
    english = coding["_display"]["extension"][0]["extension"]
    assert english == [
        {"url": "lang", "valueCode": "en"},
        {"url": "content", "valueString": "Cerebral infarction, unspecified"},
    ]
    notes = _by_type(bundle, "ServiceRequest")[0]["note"]
    assert "介入治疗" in notes[0]["text"]
    # \F\ in the NTE is a literal '|'; \.br\ a line break.
    assert "阿司匹林100mg qd | 阿托伐他汀" in notes[0]["text"]
    assert "\n" in notes[0]["text"]
    practitioners = {p["name"][0]["text"] for p in _by_type(bundle, "Practitioner")}
    assert practitioners == {"赵珅", "刘梅"}  # 珅 is AB 7C in GB18030: '|' as a trail byte


def test_big5_referral_keeps_traditional_chinese(converter: Converter) -> None:
    path = REPO / "tests/golden/hl7v2/ref_i12_big5.hl7"
    assert b"\xb3\x5c" in path.read_bytes()  # 許 in Big5: '\' as a trail byte
    [record] = converter.convert(path.read_bytes())
    assert record.charset == "big5hkscs"
    bundle = record.bundle
    assert bundle is not None
    patient = _by_type(bundle, "Patient")[0]
    assert patient["name"][0]["text"] == "許嘉瑋"
    hkid = next(i for i in patient["identifier"] if i["system"].endswith("/sid/hkid"))
    assert hkid["value"] == "K583726A"
    request = _by_type(bundle, "ServiceRequest")[0]
    assert request["reasonCode"][0]["text"] == "術後病情穩定，轉回南沙跟進（下轉）"
    assert "LDL-C|HDL-C" in request["note"][0]["text"]
    diagnoses = {c["code"]["coding"][0]["display"] for c in _by_type(bundle, "Condition")}
    assert "冠狀動脈粥樣硬化性心臟病" in diagnoses


def test_local_exam_code_is_translated_to_loinc_through_the_conceptmap(
    converter: Converter,
) -> None:
    bundle = _bundles(converter, REPO / "tests/golden/hl7v2/orm_o01_two_orders.hl7")[0]
    codes = [r["code"]["coding"] for r in _by_type(bundle, "ServiceRequest")]
    assert [[(c["system"].rsplit("/", 1)[-1], c["code"]) for c in cc] for cc in codes] == [
        [("99LAX2", "CT001"), ("loinc.org", "30799-1")],
        [("99LAX2", "CT002"), ("loinc.org", "29252-4")],
    ]


def test_one_broken_message_does_not_stop_the_batch(converter: Converter) -> None:
    records = converter.convert((REPO / "examples/hl7v2/batch_mixed.hl7").read_bytes())
    assert [r.ok for r in records] == [True, False, True]
    [error] = records[1].errors
    assert error.code == "mapping.no-identity" and error.location == "PID-3"
    assert "PID segment is missing" in error.message
    assert error.record and "LAX220260622090500002" in error.record


def test_bundle_json_is_the_bundle_as_utf8_json(converter: Converter) -> None:
    [record] = converter.convert((REPO / "examples/hl7v2/omi_o23_nsch_ct.hl7").read_bytes())
    assert record.bundle_json is not None
    assert orjson.loads(record.bundle_json) == record.bundle
    assert record.bundle_json.endswith(b"\n") and "許".encode() in record.bundle_json


def test_a_message_that_cannot_be_decoded_is_still_named_by_its_control_id(
    converter: Converter,
) -> None:
    data = b"MSH|^~\\&|A|B|C|D|20260101||REF^I12|CTRL-77|P|2.5|||||CHN|KLINGON\rPID|1\r"
    [record] = converter.convert(data, source="inbox.hl7")
    [error] = record.errors
    assert error.code == "intake.charset-unknown"
    assert error.record == "inbox.hl7, message CTRL-77"
