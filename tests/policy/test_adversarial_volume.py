"""Adversarial: the yearly count of individuals whose data left the mainland on a basis
with a threshold (PIPL: the national standard contract up to 10,000 individuals a year)
must count every individual of a record, not one per Bundle: else two patients a record
halve the count."""

from __future__ import annotations

from typing import Any

import orjson

from gateway.policy import Policy, PolicyRecords
from gateway.store import Store

from .conftest import KEY, NOW, RESIDENT_ID, consent

NAME, SENDER, RECIPIENT = "ref_i12_lax2_to_njmu2", "LAX2", "HKPMC"  # national contract
FIRST = "341122196604200135"  # the Lai'an referral's patient (demo, nobody's)
SECOND = "11010519491231002X"  # another individual (valid check digit, nobody's)


def _two_patients(bundle: bytes) -> dict[str, Any]:
    parsed = orjson.loads(bundle)
    parsed["entry"].append(
        {
            "fullUrl": "urn:uuid:00000000-0000-4000-8000-0000000000d1",
            "resource": {
                "resourceType": "Patient",
                "identifier": [{"system": RESIDENT_ID, "value": SECOND}],
            },
            "request": {"method": "POST", "url": "Patient"},
        }
    )
    return parsed


def test_every_individual_of_a_record_is_counted(
    policy: Policy, bundles: dict[str, bytes], store: Store
) -> None:
    assert policy.key == KEY
    records = PolicyRecords(store, policy)
    for value in (FIRST, SECOND):
        records.import_consent(
            consent((RESIDENT_ID, value), RECIPIENT, ("second-opinion",), ident=f"c-{value}")
        )
    bundle = _two_patients(bundles[NAME])
    decision = records.apply(None, bundle, SENDER, RECIPIENT, "second-opinion", now=NOW)
    assert decision.allowed, [r.reason["en"] for r in decision.results]
    volume = next(r for r in decision.results if r.rule == "volume")
    assert volume.reason["en"].startswith("2 individuals'")
    assert records.count(NOW.year, "lax2", "national-standard-contract", "sensitive") == 2
    # Decided again: the same two individuals, counted once each.
    records.apply(None, bundle, SENDER, RECIPIENT, "second-opinion", now=NOW)
    assert records.count(NOW.year, "lax2", "national-standard-contract", "sensitive") == 2
