"""Regressions found in review: each test names the failure it keeps out."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from gateway import ConfigError, Converter, Settings
from tests.gateway_cli import run

HEADER = (
    "MSH|^~\\&|APP|{facility}|RCV|{receiver}|20260601120000+0800||{type}|{ctl}|P|2.5"
    "|||||CHN|UNICODE UTF-8\r"
)


def _bundle(converter: Converter, text: str) -> dict[str, Any]:
    [record] = converter.convert(text.encode())
    assert record.ok, [i.line() for i in record.issues]
    assert record.bundle is not None
    return record.bundle


def _of(bundle: dict[str, Any], rtype: str) -> list[dict[str, Any]]:
    return [e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == rtype]


def test_unregistered_facilities_stay_distinct_organizations(converter: Converter) -> None:
    msg = HEADER.format(facility="CLINIC-A", receiver="CLINIC-B", type="ORM^O01", ctl="1")
    msg += "PID|1||P1^^^CLINIC-A^MR\rORC|NW|O1^CLINIC-A\rOBR|1|O1^CLINIC-A||CT001^头颅CT^99X\r"
    orgs = _of(_bundle(converter, msg), "Organization")
    assert len(orgs) == 2
    for org in orgs:  # no identifier may be the bare prefix 'urn:oid:'
        assert all(i["value"] != "urn:oid:" for i in org["identifier"])


def test_a_diagnosis_belongs_to_its_patient_even_with_an_empty_first_pid3(
    converter: Converter,
) -> None:
    def condition(mrn: str) -> dict[str, Any]:
        msg = HEADER.format(facility="NSCH", receiver="HKPMC", type="ORM^O01", ctl=mrn)
        msg += f"PID|1||~{mrn}^^^NSCH^MR\rORC|NW|O{mrn}^NSCH\r"
        msg += f"OBR|1|O{mrn}^NSCH||CT101^冠脉CTA^99NSCH\r"
        msg += "DG1|1||I25.1^冠状动脉粥样硬化性心脏病^I10\r"
        return _of(_bundle(converter, msg), "Condition")[0]

    assert condition("0001")["id"] != condition("0002")["id"]


def test_the_memo_respects_each_message_s_delimiters(tmp_path: Path) -> None:
    plain = HEADER.format(facility="NSCH", receiver="HKPMC", type="ORM^O01", ctl="1")
    plain += "PID|1||P1^^^NSCH^MR||WANG^WEI\rORC|NW|O1^NSCH\rOBR|1|O1^NSCH||X^Y^99NSCH\r"
    # Same name field text, but here '^' is data: the component separator is '$'.
    odd = "MSH|$~\\&|APP|NSCH|RCV|HKPMC|20260601120000+0800||ORM$O01|2|P|2.5\r"
    odd += "PID|1||P2$$$NSCH$MR||WANG^WEI\rORC|NW|O2$NSCH\rOBR|1|O2$NSCH||X$Y$99NSCH\r"
    settings = Settings.load(home=tmp_path, env={})
    fresh = Converter(settings).convert(odd.encode())[0].bundle_json
    shared = Converter(settings)
    shared.convert(plain.encode())
    assert shared.convert(odd.encode())[0].bundle_json == fresh
    patient = _of(_bundle(shared, odd), "Patient")[0]
    assert patient["name"][0]["family"] == "WANG^WEI"


@pytest.mark.parametrize(
    ("body", "code", "location"),
    [
        ("PID|1||P1^^^NSCH^MR\r", "mapping.required", "ORC"),
        ("PID|1||P1^^^NSCH^MR\rORC|NW|O1^NSCH\r", "mapping.required", "OBR-4"),
    ],
    ids=["no-orc", "orc-without-obr"],
)
def test_an_order_message_without_an_order_fails(
    converter: Converter, body: str, code: str, location: str
) -> None:
    msg = HEADER.format(facility="NSCH", receiver="HKPMC", type="ORM^O01", ctl="9") + body
    [record] = converter.convert(msg.encode())
    [error] = record.errors
    assert (error.code, error.location) == (code, location)


def test_made_up_uris_are_valid_uris(converter: Converter) -> None:
    msg = HEADER.format(facility="NSCH", receiver="HKPMC", type="ORM^O01", ctl="3")
    msg += "PID|1||P1^^^ST MARY^MR\rORC|NW|O1^NSCH\rOBR|1|O1^NSCH||X1^检查^MY LOCAL\r"
    bundle = _bundle(converter, msg)
    systems = [i["system"] for i in _of(bundle, "Patient")[0]["identifier"]]
    systems += [c["system"] for c in _of(bundle, "ServiceRequest")[0]["code"]["coding"]]
    assert all(" " not in s for s in systems) and any("ST%20MARY" in s for s in systems)


def test_no_identifier_or_contact_point_without_a_value(converter: Converter) -> None:
    msg = HEADER.format(facility="NSCH", receiver="HKPMC", type="ORM^O01", ctl="4")
    msg += "PID|1||P1^^^NSCH^MR|||||||||^PRN^PH\rORC|NW|O1^NSCH\rOBR|1|O1^NSCH||X^Y^99NSCH\r"
    bundle = _bundle(converter, msg)
    for resource in _of(bundle, "Patient") + _of(bundle, "ServiceRequest"):
        assert all("value" in i for i in resource.get("identifier", []))
        assert "telecom" not in resource


def test_control_characters_never_reach_fhir_strings(converter: Converter) -> None:
    msg = HEADER.format(facility="NSCH", receiver="HKPMC", type="ORM^O01", ctl="5")
    msg += "PID|1||P1^^^NSCH^MR||王\\X07\\伟\rORC|NW|O1^NSCH\rOBR|1|O1^NSCH||X^Y^99NSCH\r"
    name = _of(_bundle(converter, msg), "Patient")[0]["name"][0]
    assert name["family"] == "王伟"


def test_a_huge_message_is_refused_not_ground_through(converter: Converter) -> None:
    msg = HEADER.format(facility="NSCH", receiver="HKPMC", type="ORM^O01", ctl="6")
    msg += "PID|1||P1^^^NSCH^MR\r" + "NTE|1||x\r" * 6000
    [record] = converter.convert(msg.encode())
    assert record.errors[0].code == "intake.too-many-segments"


def test_cli_output_that_cannot_be_written_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("")
    example = Path(__file__).resolve().parents[1] / "examples/hl7v2/omi_o23_nsch_ct.hl7"
    proc = run("convert", str(example), "-o", str(tmp_path / "afile" / "out.json"), home=tmp_path)
    assert proc.returncode == 2
    assert b"error: cannot write" in proc.stderr and b"Traceback" not in proc.stderr


def test_network_with_a_malformed_name_is_a_config_error(tmp_path: Path) -> None:
    from gateway.network import Network

    path = tmp_path / "network.yaml"
    path.write_text("institutions:\n  - {key: x, facility: X, base: 'https://x', name: [a, b]}\n")
    with pytest.raises(ConfigError, match="'name' must map languages"):
        Network.load(path)


def test_a_network_institution_has_one_name_in_every_format(tmp_path: Path) -> None:
    """Same Organization id from HL7 v2 and CDA, so the same name: without a zh-Hans
    name both fall back to zh-Hant (CDA used to skip to English)."""
    import yaml

    repo = Path(__file__).resolve().parents[1]
    net = yaml.safe_load((repo / "seeds" / "network.yaml").read_text(encoding="utf-8"))
    for inst in net["institutions"]:
        if inst["facility"] == "LAX2":
            del inst["name"]["zh-Hans"]
    path = tmp_path / "network.yaml"
    path.write_text(yaml.safe_dump(net, allow_unicode=True), encoding="utf-8")
    converter = Converter(Settings(home=tmp_path, network=path))
    names: dict[str, set[str]] = {}
    for name in ("hl7v2/orm_o01_lax2_ct.hl7", "imaging/lax2-ct-report-local.xml"):
        [record] = converter.convert((repo / "examples" / name).read_bytes(), name)
        assert record.ok and record.bundle is not None, [i.line() for i in record.issues]
        for org in _of(record.bundle, "Organization"):
            names.setdefault(org["id"], set()).add(org["name"])
    assert [n for n in names.values() if "來安縣第二人民醫院" in n] == [{"來安縣第二人民醫院"}]
