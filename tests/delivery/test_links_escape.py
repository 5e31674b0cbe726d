"""A logical reference made conditional (``_links.py`` ``resolve_links``) escapes its
identifier as a FHIR search token (search.html#escaping: ``\\ , $ |``), as the mapping
escapes the Bundle's own conditions (``gateway.mapping.search_escape``). Written raw,
``ServiceRequest?identifier=<system>|ACC|2024,7`` is two searches at the partner
(``ACC|2024`` or ``7``, the system read up to the first ``|``): the report or study is
linked to another order, or to none.

(The partner server of tests/partner, Medplum 5.2.13's router, does not honour search
escaping at all, for the Bundle's own conditions neither: the escaped form cannot be
checked there.)"""

from __future__ import annotations

from typing import Any

from gateway import Converter
from gateway.delivery._links import links_of, resolve_links
from tests.conftest import REPO

EXAMPLES = REPO / "examples"
PLACER = "https://fhir.lax2.example.cn/sid/placer-order"
ODD = "ACC|2024,7"  # an identifier value holding the search separators | and ,


def _order(converter: Converter, placer: str) -> dict[str, Any]:
    """The LAX2 CT order converted from its HL7 v2 message, its first order's placer
    number replaced (HL7 escapes: ``\\F\\`` is ``|``)."""
    hl7 = (EXAMPLES / "hl7v2" / "orm_o01_lax2_ct.hl7").read_bytes()
    hl7 = hl7.replace(b"PLC0001^", placer.replace("|", "\\F\\").encode() + b"^")
    [record] = converter.convert(hl7, source="test", fmt="hl7v2")
    assert record.ok, record.issues
    assert record.bundle is not None
    return record.bundle


def _based_on(bundle: dict[str, Any]) -> dict[str, Any]:
    study = next(
        e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "ImagingStudy"
    )
    based_on = study["basedOn"][0]
    assert isinstance(based_on, dict)
    return based_on


def test_the_conditional_reference_is_the_one_the_mapping_writes(converter: Converter) -> None:
    order = _order(converter, ODD)
    written = next(
        e["request"]["url"]
        for e in order["entry"]
        if e["request"]["url"].startswith("ServiceRequest?")
        and "PLC0002" not in e["request"]["url"]
    )
    link = ("ServiceRequest", PLACER, ODD)
    assert link in links_of(order)[0]  # the order provides it, under its raw value
    part = {
        "resourceType": "Bundle",
        "entry": [
            {
                "resource": {
                    "resourceType": "ImagingStudy",
                    "basedOn": [{"type": "ServiceRequest", "identifier": {"system": PLACER,
                                                                         "value": ODD}}],
                }
            }
        ],
    }  # fmt: skip
    [resolved] = resolve_links([part], [link])
    assert _based_on(resolved)["reference"] == written
    assert "|" not in written.split("|", 1)[1] and "," not in written  # one search only
    assert _based_on(part) == {"type": "ServiceRequest",
                               "identifier": {"system": PLACER, "value": ODD}}  # fmt: skip
