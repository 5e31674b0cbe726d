"""Chinese hospital systems often send an institution's code in full-width ASCII
(``ＮＳＣＨ``, ``ＨＫＰＭＣ``, ``ＮＪＭＵ２``). The network compares codes and names in
their NFKC form (gateway/network.py ``_fold``), so such a sender is found: before, it
was not, silently, and its patients' numbers were filed under a made-up system
(``https://unregistered.invalid/facility/%EF%BC%AE%EF%BC%B3%EF%BC%A3%EF%BC%A8/sid/mrn``),
another patient than the same MRN sent as ``NSCH``. The look-ups run inside the
mappings (``identifier-system``, ``institution``): every engine reads them so. Names of
persons are never folded: they stay as sent."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from gateway import Converter
from gateway.envelope import Record
from tests.conftest import ENGINES

GOLDEN = Path(__file__).resolve().parents[1] / "golden" / "hl7v2"

NSCH = "https://fhir.nsch.example.cn/sid"


@pytest.fixture(params=ENGINES)
def converter(request: pytest.FixtureRequest, engines: dict[str, Converter]) -> Converter:
    return engines[request.param]


def _convert(converter: Converter, name: str, *edits: tuple[str, str]) -> dict[str, Any]:
    text = (GOLDEN / name).read_text(encoding="utf-8")
    for old, new in edits:
        assert old in text, old
        text = text.replace(old, new, 1)
    records: list[Record] = list(converter.convert(text.encode()))
    [record] = records
    assert record.ok and record.bundle is not None, [i.line() for i in record.issues]
    return record.bundle


def _resources(bundle: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    return [e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == kind]


def _systems(resource: dict[str, Any]) -> list[str]:
    return [i["system"] for i in resource.get("identifier", ())]


def test_a_full_width_sending_facility_is_the_registered_sender(converter: Converter) -> None:
    # MSH-4.1 full-width, and the MRN's assigning authority (PID-3.4) too; the
    # patient's name in full-width letters stays as sent
    bundle = _convert(
        converter,
        "omi_o23.hl7",
        ("NSCH_HIS|NSCH^", "NSCH_HIS|ＮＳＣＨ^"),
        ("0098765^^^NSCH^MR", "0098765^^^ＮＳＣＨ^MR"),
        ("HUI^KA WAI^", "ＨＵＩ^ＫＡ　ＷＡＩ^"),
    )
    assert bundle["identifier"]["system"] == f"{NSCH}/hl7v2-message"
    [patient] = _resources(bundle, "Patient")
    assert patient["identifier"][0] == {**patient["identifier"][0], "system": f"{NSCH}/mrn"}
    assert patient["identifier"][0]["value"] == "0098765"
    families = [n.get("family") for n in patient["name"]]
    assert "ＨＵＩ" in families and "HUI" not in families
    assert ["ＫＡ　ＷＡＩ"] in [n.get("given") for n in patient["name"]]
    names = [o.get("name") for o in _resources(bundle, "Organization")]
    assert "广州市第一人民医院南沙医院" in names and "ＮＳＣＨ" not in names


def test_a_full_width_sending_application_names_the_sender_without_msh_4(
    converter: Converter,
) -> None:
    # MSH-3.1 gives the sender's namespace when MSH-4 is empty
    bundle = _convert(
        converter, "omi_o23.hl7", ("NSCH_HIS|NSCH^2.16.156.10011.99.1.1^ISO|", "ＮＳＣＨ||")
    )
    assert bundle["identifier"]["system"] == f"{NSCH}/hl7v2-message"


def test_a_full_width_receiving_facility_is_the_registered_institution(
    converter: Converter,
) -> None:
    # MSH-6 without its OID: only the full-width code names the Hong Kong centre
    bundle = _convert(
        converter, "ref_i12_utf8.hl7", ("|HKPMC^1.3.6.1.4.1.99999.1.1^ISO|", "|ＨＫＰＭＣ|")
    )
    [receiver] = [
        o
        for o in _resources(bundle, "Organization")
        if any(i["value"] == "ＨＫＰＭＣ" for i in o.get("identifier", ()))
    ]
    assert receiver["name"] == "大灣區醫療集團香港合作醫療中心"
    assert {"system": "urn:ietf:rfc:3986", "value": "urn:oid:1.3.6.1.4.1.99999.1.1"} in (
        receiver["identifier"]
    )
