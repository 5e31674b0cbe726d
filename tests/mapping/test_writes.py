"""How each resource is written at the partner (mappings/writes.yaml), and what a strict
partner refused in the mapped output: a name extension without a value (ext-1) and a
link to an order by an identifier without a system."""

from __future__ import annotations

import json
from typing import Any

import pytest

from gateway import Converter
from gateway.errors import ConfigError
from gateway.mapping import WriteRules, write_rules
from tests.conftest import REPO

GOLDEN = REPO / "tests" / "golden"


def _entries(converter: Converter, raw: bytes) -> list[dict[str, Any]]:
    [record] = converter.convert(raw)
    assert record.ok and record.bundle is not None, [i.line() for i in record.issues]
    return list(record.bundle["entry"])


def test_reference_data_is_created_if_absent_and_content_is_updated() -> None:
    rules = write_rules()
    for kind in ("Patient", "Practitioner", "PractitionerRole", "Organization", "Endpoint"):
        assert rules.mode(kind) == "create-if-none-exist", kind
    for kind in ("ServiceRequest", "DiagnosticReport", "Observation", "ImagingStudy", "Task"):
        assert rules.mode(kind) == "update", kind


def test_every_entry_is_written_as_its_type_says(converter: Converter) -> None:
    kinds = set()
    for source in ("hl7v2/oru_r01_chinese.hl7", "hl7v2/ref_i12_utf8.hl7"):
        for entry in _entries(converter, (GOLDEN / source).read_bytes()):
            kind = entry["resource"]["resourceType"]
            kinds.add(kind)
            if write_rules().mode(kind) == "update":
                assert entry["request"]["method"] == "PUT"
                assert entry["request"]["url"].startswith(f"{kind}?identifier=")
                assert "ifNoneExist" not in entry["request"] and "id" not in entry["resource"]
            else:
                assert entry["request"]["method"] == "POST" and entry["request"]["url"] == kind
                assert entry["request"]["ifNoneExist"].startswith("identifier=")
                assert entry["fullUrl"] == f"urn:uuid:{entry['resource']['id']}"
    assert {"ServiceRequest", "DiagnosticReport", "Patient", "Practitioner"} <= kinds


@pytest.mark.parametrize(
    ("raw", "words"),
    [
        ({"default": "upsert"}, "default: unknown write mode 'upsert'"),
        ({"types": {"Patient": "overwrite"}}, "Patient: unknown write mode 'overwrite'"),
        (["update"], "needs 'default' and 'types'"),
    ],
)
def test_an_unknown_write_mode_is_refused(raw: Any, words: str) -> None:
    with pytest.raises(ConfigError) as caught:
        WriteRules.parse(raw, "writes.yaml")
    assert caught.value.code == "config.mapping" and words in caught.value.issue.message


def _xcn_shaped(text: bytes) -> bytes:
    # OBR-32 as many feeds send it: id^family^given (XCN) instead of NDL's id&family&given
    return text.replace("NS0415&何&慧敏&&&&&&NSCH".encode(), "2077^戴^奇山".encode())


def test_an_interpreter_sent_in_the_xcn_shape_keeps_the_name_and_no_empty_extension(
    converter: Converter,
) -> None:
    raw = _xcn_shaped((GOLDEN / "hl7v2" / "oru_r01_chinese.hl7").read_bytes())
    [practitioner] = [
        e["resource"]
        for e in _entries(converter, raw)
        if e["resource"]["resourceType"] == "Practitioner"
        and e["resource"]["identifier"][0]["value"] == "2077"
    ]
    [name] = practitioner["name"]
    assert (name["family"], name["given"]) == ("戴", ["奇山"])
    # ext-1: an extension has a value or extensions, never neither
    assert all("valueCode" in x for x in name.get("extension", []))


def test_an_empty_cnn_name_gives_no_representation_extension(converter: Converter) -> None:
    raw = (GOLDEN / "hl7v2" / "oru_r01_chinese.hl7").read_bytes()
    raw = raw.replace("NS0415&何&慧敏&&&&&&NSCH".encode(), b"NS0415&&&&&&&&NSCH")
    practitioners = [
        e["resource"]
        for e in _entries(converter, raw)
        if e["resource"]["resourceType"] == "Practitioner"
    ]
    assert practitioners and all(
        x.get("valueCode")
        for p in practitioners
        for n in p.get("name", [])
        for x in n.get("extension", [])
    )


def _pid5(raw: bytes, name: str) -> bytes:
    lines = raw.split(b"\r")
    for n, line in enumerate(lines):
        if line.startswith(b"PID|"):
            fields = line.split(b"|")
            fields[5] = name.encode()
            lines[n] = b"|".join(fields)
    return b"\r".join(lines)


@pytest.mark.parametrize(
    ("xpn", "given", "code"),
    [
        ("^伟", ["伟"], "IDE"),  # a given name only, no XPN.8: its script says
        ("^嘉瑋^^^^L", ["嘉瑋"], "IDE"),
        ("^KA WAI^^^^^L", ["KA WAI"], "ABC"),
        ("^KA WAI^^^^^L^I", ["KA WAI"], "IDE"),  # XPN.8 first, as with a family name
    ],
)
def test_a_patient_with_a_given_name_only_is_converted_with_its_representation(
    converter: Converter, xpn: str, given: list[str], code: str
) -> None:
    # The extension's value came from the family name alone: without one it had none
    # (ext-1) and the record failed validation.
    raw = _pid5((GOLDEN / "hl7v2" / "orm_o01_hkpmc_ct.hl7").read_bytes(), xpn)
    [patient] = [
        e["resource"]
        for e in _entries(converter, raw)
        if e["resource"]["resourceType"] == "Patient"
    ]
    [name] = patient["name"]
    assert name["given"] == given and "family" not in name
    assert name["extension"] == [
        {
            "url": "http://hl7.org/fhir/StructureDefinition/iso21090-EN-representation",
            "valueCode": code,
        }
    ]


def test_a_name_with_neither_family_nor_given_has_no_representation_extension(
    converter: Converter,
) -> None:
    raw = _pid5((GOLDEN / "hl7v2" / "orm_o01_hkpmc_ct.hl7").read_bytes(), "^^^^Dr^^^I")
    [patient] = [
        e["resource"]
        for e in _entries(converter, raw)
        if e["resource"]["resourceType"] == "Patient"
    ]
    assert patient["name"] == [{"prefix": ["Dr"]}]


def _study_without_issuer() -> bytes:
    """The Nansha knee MR as DICOM JSON, with no institution or accession issuer: an
    accession number nobody can say whose it is."""
    data = json.loads((GOLDEN / "dicom" / "nsch_mr_knee.json").read_bytes())
    dropped = {"00080080", "00080081", "00081040", "00080051"}

    def strip(node: Any) -> Any:
        if isinstance(node, dict):
            return {k: strip(v) for k, v in node.items() if k not in dropped}
        if isinstance(node, list):
            return [strip(v) for v in node]
        return node

    return json.dumps(strip(data)).encode()


def test_an_accession_without_a_known_issuer_links_to_no_order(converter: Converter) -> None:
    [study] = [
        e["resource"]
        for e in _entries(converter, _study_without_issuer())
        if e["resource"]["resourceType"] == "ImagingStudy"
    ]
    accession = next(i for i in study["identifier"] if i["value"] == "NS2026062000005")
    assert "system" not in accession  # kept on the study as sent...
    assert "basedOn" not in study  # ...but `ServiceRequest?identifier=|NS...` names no order


def test_an_accession_with_its_issuer_links_by_logical_reference(converter: Converter) -> None:
    raw = (GOLDEN / "dicom" / "nsch_mr_knee.json").read_bytes()
    [study] = [
        e["resource"]
        for e in _entries(converter, raw)
        if e["resource"]["resourceType"] == "ImagingStudy"
    ]
    assert study["basedOn"] == [
        {
            "type": "ServiceRequest",
            "identifier": {
                "system": "https://fhir.nsch.example.cn/sid/accession",
                "value": "NS2026062000005",
            },
        }
    ]
