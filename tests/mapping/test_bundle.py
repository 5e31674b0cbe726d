"""Resource ids (gateway/mapping/_bundle.py): made from the SHA-1 digest directly, they
must stay exactly the uuid5 the gateway has always sent (a changed id duplicates every
resource at every partner)."""

from __future__ import annotations

from typing import Any
from uuid import NAMESPACE_URL, UUID, uuid5

import pytest

from gateway.mapping._bundle import NAMESPACE, resource_id

CASES = [
    ("Patient", "https://fhir.lax2.example.cn/sid/mrn", "0012388"),
    ("Practitioner", "urn:oid:2.16.840.1.113883.2.4.6.3", "D-7|x,y$z\\"),
    ("Patient", "https://fhir.hkpmc.example.hk/sid/hkid", "許嘉瑋 A123456(7)"),
    ("Organization", "", ""),
    ("ServiceRequest", "http://example.org/sid/order", "𠀀 \u00e9 \t"),
]


def test_the_namespace_is_the_gateways_forever() -> None:
    assert uuid5(NAMESPACE_URL, "urn:fhir-gateway:resource-id") == NAMESPACE


@pytest.mark.parametrize(("rtype", "system", "value"), CASES)
def test_a_resource_id_is_the_uuid5_of_type_system_and_value(
    rtype: str, system: str, value: str
) -> None:
    made = resource_id(rtype, system, value)
    assert made == str(uuid5(NAMESPACE, f"{rtype}|{system}|{value}"))
    assert UUID(made).version == 5 and UUID(made).variant == "specified in RFC 4122"


def test_many_resource_ids_match_uuid5() -> None:
    for n in range(2000):
        value = f"{n:07d}-{chr(0x4E00 + n)}"
        assert resource_id("Patient", "urn:x", value) == str(
            uuid5(NAMESPACE, f"Patient|urn:x|{value}")
        )


def _organisation(**fields: Any) -> Any:
    from gateway.shared import freeze

    ident = {"system": "urn:oid:1.2.3", "value": "HOSP"}
    return freeze({"identifier": [ident], **fields})  # as the memo shares it


def test_two_shared_organisations_of_one_id_merge_as_ever_in_every_record() -> None:
    # one organisation named by two segments, two ways (memoised: frozen, shared by
    # every record); the merge is worked out once, each record still gets its own lists
    from gateway.mapping._bundle import BundleBuilder, ResourceTemplate, _merge

    template = ResourceTemplate(
        "Organization", lambda ctx: None, "identifier", (), None, frozenset(), "test"
    )
    first = _organisation(name="Hospital", alias=["H"])
    second = _organisation(alias=["H", "HOSP"], telecom=[{"value": "123"}])
    expected = {"resourceType": "Organization", "id": "", **first}
    _merge(expected, second)
    made = []
    for _ in range(3):
        builder = BundleBuilder()
        builder.add("sender", template, first, None)
        builder.add("receiver", template, second, None)
        [entry] = builder.entries
        expected["id"] = entry["resource"]["id"]
        assert entry["resource"] == expected
        assert list(entry["resource"]) == list(expected)  # the same key order
        made.append(entry["resource"])
    assert made[0]["alias"] == ["H", "HOSP"]
    assert made[0]["alias"] is not made[1]["alias"]  # each record's own joined list
    made[0]["alias"].append("edited")
    assert made[1]["alias"] == ["H", "HOSP"]
