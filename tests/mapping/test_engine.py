"""The mapping engine: a message type is added with files alone; mapping mistakes are
caught at load time with the file and key; the expression language behaves as
docs/mapping-language.md says."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

from gateway import ConfigError, Converter, MappingError, Settings
from gateway.datafiles import data_dir
from gateway.intake.hl7v2 import Hl7View, check_path, parse_message, split_messages
from gateway.mapping import Env, MappingSet, Terminology
from gateway.network import Network
from gateway.shared import is_frozen
from tests.conftest import REPO

MAPPINGS = data_dir("mappings")


def _mapping_root(tmp_path: Path, message_yaml: str, extra: dict[str, str] | None = None) -> Path:
    """A copy of mappings/ plus one message mapping (and optional extra files)."""
    root = tmp_path / "mappings"
    shutil.copytree(MAPPINGS, root)
    (root / "hl7v2" / "messages" / "TEST.yaml").write_text(message_yaml, encoding="utf-8")
    for rel, text in (extra or {}).items():
        (root / "hl7v2" / rel).write_text(text, encoding="utf-8")
    return root


def _run(root: Path, message: str) -> tuple[dict[str, Any], list[Any]]:
    env = Env(Terminology(root), Network.load(data_dir("seeds") / "network.yaml"))
    mappings = MappingSet(root, "hl7v2", env, check_path)
    parsed = parse_message(split_messages(message.encode())[0])
    return mappings.for_type(parsed.message_type).run(Hl7View(parsed), env, "+08:00")


HEADER = "MSH|^~\\&|APP|NSCH|RCV|HKPMC|20260601120000+0800||{type}|C1|P|2.5|||||CHN|UNICODE UTF-8\r"
PATIENT = (
    "PID|1||0098765^^^NSCH^MR~K583726A^^^HKID^NNHKG||許^嘉瑋^^^^^L~HUI^KA WAI^^^^^A||19570903|M\r"
)

ADT_A04 = """
messages: [ADT^A04]
vars:
  facility: {path: /MSH-4.1}
bundle:
  identifier: {system: urn:test, value: {path: /MSH-10}}
resources:
  - {key: sender, template: resources/Organization-HD.yaml, at: /MSH-4}
  - {key: patient, template: resources/Patient.yaml}
"""


def test_a_new_message_type_needs_only_a_mapping_file(tmp_path: Path) -> None:
    root = _mapping_root(tmp_path, ADT_A04)
    settings = Settings.load(home=tmp_path / "home", env={"GATEWAY_MAPPINGS": str(root)})
    converter = Converter(settings)
    assert "ADT^A04" in converter.message_types
    [record] = converter.convert((HEADER.format(type="ADT^A04") + PATIENT).encode())
    assert record.ok, [i.line() for i in record.issues]
    assert record.bundle is not None
    patient = record.bundle["entry"][1]["resource"]
    assert [n.get("text") for n in patient["name"]] == ["許嘉瑋", None]
    assert patient["identifier"][1]["system"] == "https://fhir-gateway.example.org/sid/hkid"


@pytest.mark.parametrize(
    ("fragment", "message"),
    [
        ("value: {path: PID-5, color: red}", "['color'] not allowed with 'path'"),
        ("value: {path: PID-five}", "'PID-five' is not an HL7 v2 terser path"),
        ("value: {path: PID-8, map: no-such-table}", "no code table 'no-such-table'"),
        ("value: {fn: translate-please}", "unknown function 'translate-please'"),
        ("value: {path: PID-8, as: colour}", "unknown 'as: colour'"),
        ("value: {path: PID-8, const: x}", "path and const cannot be combined"),
    ],
)
def test_mapping_mistakes_fail_at_load_naming_file_and_key(
    tmp_path: Path, fragment: str, message: str
) -> None:
    template = "resourceType: Basic\nfields:\n  code: {include: datatypes/T.yaml}\n"
    mapping = ADT_A04 + "  - {key: basic, template: resources/T.yaml}\n"
    root = _mapping_root(
        tmp_path, mapping, {"datatypes/T.yaml": fragment, "resources/T.yaml": template}
    )
    with pytest.raises(ConfigError) as err:
        _run(root, HEADER.format(type="ADT^A04") + PATIENT)
    assert message in str(err.value) and "T.yaml" in str(err.value)


def test_references_must_point_backwards(tmp_path: Path) -> None:
    mapping = """
messages: [ADT^A04]
bundle: {identifier: {system: urn:test, value: {path: /MSH-10}}}
resources:
  - {key: patient, template: resources/Patient.yaml}
  - {key: sender, template: resources/Organization-HD.yaml, at: /MSH-4}
"""
    root = _mapping_root(tmp_path, mapping)
    with pytest.raises(
        ConfigError, match=r"refers to \['sender'\].*referenced resources come first"
    ):
        _run(root, HEADER.format(type="ADT^A04") + PATIENT)


EXPRESSIONS = """
messages: [ADT^A04]
vars: {facility: {path: /MSH-4.1}}
bundle: {identifier: {system: urn:test, value: {path: /MSH-10}}}
resources:
  - {key: x, template: resources/X.yaml}
"""
X_TEMPLATE = """
resourceType: Basic
fields:
  identifier: [{system: urn:x, value: {path: PID-3.1}}]
  extension:
    - url: first-with-fallback
      valueString: {path: PID-99 | PID-5(2).1}
    - url: joined
      valueString: {join: [{path: PID-5.1}, {path: PID-5.2}], sep: ""}
    - url: when-equals
      valueString: {const: male-patient, when: {path: PID-8, equals: M}}
    - url: when-in-false   # an object with constants is kept unless its own 'when' fails
      valueString: never
      when: {path: PID-8, in: [F, O]}
    - url: datetime-with-default-zone
      valueDateTime: {path: PID-7, as: dateTime}
    - url: each-where
      valueString: {join: [{each: PID-3, where: {path: .5, equals: NNHKG}, do: {path: .1}}]}
    - url: mapped
      valueCode: {path: PID-8, map: administrative-gender}
"""


def test_expression_language(tmp_path: Path) -> None:
    root = _mapping_root(tmp_path, EXPRESSIONS, {"resources/X.yaml": X_TEMPLATE})
    pid = "PID|1||0098765^^^NSCH^MR~K583726A^^^HKID^NNHKG||許^嘉瑋~HUI^KA WAI||195709030830|M\r"
    bundle, _ = _run(root, HEADER.format(type="ADT^A04") + pid)
    ext = {
        e["url"]: next(v for k, v in e.items() if k != "url")
        for e in bundle["entry"][0]["resource"]["extension"]
    }
    assert ext == {
        "first-with-fallback": "HUI",
        "joined": "許嘉瑋",
        "when-equals": "male-patient",
        "datetime-with-default-zone": "1957-09-03T08:30:00+08:00",
        "each-where": "K583726A",
        "mapped": "male",
    }


def test_id_of_gives_the_id_of_the_resource_made_under_a_key(tmp_path: Path) -> None:
    """``{id-of: key}`` (a literal key, asked inline by generated code) and ``{id-of:
    $var}`` (the key a variable names) both give the patient's id; a key with nothing
    made under it gives nothing."""
    mapping = """
messages: [ADT^A04]
vars: {who: {const: patient}, nobody: {const: sender}}
bundle: {identifier: {system: urn:test, value: {path: /MSH-10}}}
resources:
  - {key: sender, template: resources/Organization-HD.yaml, at: /MSH-99}
  - {key: patient, template: resources/Patient.yaml}
  - {key: x, template: resources/X.yaml}
"""
    template = """
resourceType: Basic
fields:
  identifier: [{system: urn:x, value: {path: PID-3.1}}]
  extension:
    - {url: literal, valueId: {id-of: patient}}
    - {url: variable, valueId: {id-of: $who}}
    - {url: none-made, valueId: {id-of: sender}}
    - {url: none-made-variable, valueId: {id-of: $nobody}}
"""
    root = _mapping_root(tmp_path, mapping, {"resources/X.yaml": template})
    bundle, _ = _run(root, HEADER.format(type="ADT^A04") + PATIENT)
    patient, x = (e["resource"] for e in bundle["entry"])
    assert x["extension"] == [
        {"url": "literal", "valueId": patient["id"]},
        {"url": "variable", "valueId": patient["id"]},
        {"url": "none-made"},
        {"url": "none-made-variable"},
    ]


def test_unknown_code_names_the_field_and_the_table(tmp_path: Path) -> None:
    root = _mapping_root(
        tmp_path,
        EXPRESSIONS,
        {"resources/X.yaml": X_TEMPLATE.replace("administrative-gender", "order-status")},
    )
    with pytest.raises(MappingError) as err:
        _run(root, HEADER.format(type="ADT^A04") + PATIENT)
    assert err.value.location == "PID-8"
    assert "code 'M' is not in table 'order-status'" in str(err.value)


def test_bad_date_names_the_field(tmp_path: Path) -> None:
    root = _mapping_root(tmp_path, EXPRESSIONS, {"resources/X.yaml": X_TEMPLATE})
    pid = "PID|1||0098765^^^NSCH^MR||許^嘉瑋||1957-09-03|M\r"
    with pytest.raises(MappingError) as err:
        _run(root, HEADER.format(type="ADT^A04") + pid)
    assert err.value.location == "PID-7" and "not an HL7 date/time" in str(err.value)


def test_group_resources_do_not_leak_into_the_next_group(converter: Converter) -> None:
    # Two order groups; only the first ORC names an ordering provider. The second order
    # must not borrow the first order's provider.
    msg = (
        HEADER.format(type="ORM^O01")
        + PATIENT
        + "ORC|NW|P1^NSCH||||||||||NS0231^梁^志东^^^^^^NSCH\rOBR|1|P1^NSCH||CT101^冠脉CTA^99NSCH\r"
        + "ORC|NW|P2^NSCH\rOBR|1|P2^NSCH||ECG002^动态心电图^99NSCH\r"
    )
    [record] = converter.convert(msg.encode())
    assert record.bundle is not None
    orders = [
        e["resource"]
        for e in record.bundle["entry"]
        if e["resource"]["resourceType"] == "ServiceRequest"
    ]
    roles = [
        e["fullUrl"]
        for e in record.bundle["entry"]
        if e["resource"]["resourceType"] == "PractitionerRole"
    ]
    assert orders[0]["requester"] == {"reference": roles[0]}
    assert orders[1]["requester"]["reference"] != roles[0]  # falls back to the sender


def test_a_template_part_made_of_constants_is_built_once_and_frozen(
    converter: Converter,
) -> None:
    """Condition.clinicalStatus (a fixed coding in Condition-DG1.yaml) is made when the
    mappings load: every record gets that one frozen value, even the first time a
    template runs (a record-built copy would be remade and revalidated per record)."""
    data = (REPO / "examples" / "hl7v2" / "ref_i12_lax2_to_njmu2.hl7").read_bytes()

    def status(mrn: bytes) -> Any:
        record = converter.convert(data.replace(b"0012388^^^LAX2", mrn + b"^^^LAX2"))[0]
        assert record.ok and record.mapped is not None  # the mapped Bundle (not parsed back)
        resources = [e["resource"] for e in record.mapped["entry"]]
        return next(r for r in resources if r["resourceType"] == "Condition")["clinicalStatus"]

    first, second = status(b"CONST-1"), status(b"CONST-2")
    assert first == {"coding": [{"system": CLINICAL, "code": "active"}]}
    assert first is second and is_frozen(first)
    with pytest.raises(TypeError):
        first["coding"].append({})


CLINICAL = "http://terminology.hl7.org/CodeSystem/condition-clinical"


@pytest.mark.parametrize(
    ("checks", "message"),
    [
        (
            "one-identity:\n  - {what: order, at: /ORC-2, value: .1, off: ..}\n",
            "takes system and of",
        ),
        ("one-identity:\n  - {what: order, at: /ORC-2, value: .1, of: ORC-two}\n", "ORC-two"),
        ("other-subject: {at: /NK1}\n", "other-subject needs at and why"),
        ("other-subject: {at: /NK1-five, why: a relative}\n", "NK1-five"),
    ],
    ids=["unknown-key", "bad-of", "no-why", "bad-path"],
)
def test_record_checks_are_checked_at_load(tmp_path: Path, checks: str, message: str) -> None:
    # A misspelt key would switch the check off silently: refused naming the file.
    root = _mapping_root(tmp_path, ADT_A04 + checks)
    with pytest.raises(ConfigError) as err:
        _run(root, HEADER.format(type="ADT^A04") + PATIENT)
    assert message in str(err.value) and "TEST.yaml" in str(err.value)


def test_other_subject_refuses_a_record_about_another_person(tmp_path: Path) -> None:
    # Any node the path selects refuses the record, at that node, with the file's reason.
    checks = "other-subject: {at: /NK1, why: the message names a relative}\n"
    root = _mapping_root(tmp_path, ADT_A04 + checks)
    with pytest.raises(MappingError) as err:
        _run(root, HEADER.format(type="ADT^A04") + PATIENT + "NK1|1|李^秀英||||\r")
    assert err.value.code == "mapping.several-patients"
    assert err.value.issue.location == "NK1"
    assert str(err.value.issue.message).startswith("the message names a relative;")
    assert "李" not in str(err.value)
    bundle, _ = _run(root, HEADER.format(type="ADT^A04") + PATIENT)  # none there: converts
    assert bundle["resourceType"] == "Bundle"
