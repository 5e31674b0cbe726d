"""Policy fixtures: one Policy on the demo network with a test key, the demo Bundles
converted from examples/, Consents built like a hospital would send them."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson
import pytest

from gateway import Converter, Settings
from gateway.policy import PURPOSE_SYSTEM, Policy
from gateway.store import Store

REPO = Path(__file__).resolve().parents[2]
KEY = bytes(range(32))
# The demo messages' day: every agreement but the expired one is in force.
NOW = datetime(2026, 6, 18, 8, 0)
HKID = "https://fhir-gateway.example.org/sid/hkid"
RESIDENT_ID = "urn:oid:2.16.156.10011.1.3"
OIDS = {
    "HKPMC": "1.3.6.1.4.1.99999.1.1",
    "NSCH": "2.16.156.10011.99.1.1",
    "NJMU2": "2.16.156.10011.99.1.3",
    "LAX2": "2.16.156.10011.99.1.4",
}


@pytest.fixture(scope="session")
def policy(settings: Settings) -> Policy:
    return Policy(settings, key=KEY)


@pytest.fixture(scope="session")
def bundles(converter: Converter) -> dict[str, bytes]:
    """Converted Bundles of the demo referrals, by example file stem."""
    out = {}
    for name in (
        "ref_i12_nsch_to_hkpmc",
        "ref_i12_hkpmc_to_nsch",
        "ref_i12_lax2_to_njmu2",
        "ref_i12_nsgp_to_nsch",
    ):
        records = converter.convert_path(REPO / "examples" / "hl7v2" / f"{name}.hl7")
        assert records[0].ok and records[0].bundle_json is not None
        out[name] = records[0].bundle_json
    return out


def consent(
    patient: tuple[str, str],
    recipient: str,
    purposes: tuple[str, ...] = ("referral",),
    *,
    ident: str = "consent-1",
    status: str = "active",
    start: str = "2026-06-01",
    end: str = "2027-05-31",
) -> dict[str, Any]:
    """A patient's separate consent to a cross-border transfer, FHIR R4 Consent."""
    return {
        "resourceType": "Consent",
        "id": ident,
        "status": status,
        "scope": {
            "coding": [
                {
                    "system": "http://terminology.hl7.org/CodeSystem/consentscope",
                    "code": "patient-privacy",
                }
            ]
        },
        "category": [
            {
                "coding": [
                    {"system": "http://loinc.org", "code": "59284-0", "display": "Patient Consent"}
                ]
            }
        ],
        "patient": {"identifier": {"system": patient[0], "value": patient[1]}},
        "dateTime": start,
        "provision": {
            "type": "permit",
            "period": {"start": start, "end": end},
            "actor": [
                {
                    "role": {
                        "coding": [
                            {
                                "system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType",
                                "code": "IRCP",
                            }
                        ]
                    },
                    "reference": {
                        "identifier": {
                            "system": "urn:ietf:rfc:3986",
                            "value": f"urn:oid:{OIDS[recipient]}",
                        }
                    },
                }
            ],
            "purpose": [{"system": PURPOSE_SYSTEM, "code": p} for p in purposes],
        },
    }


def dumps(resource: dict[str, Any]) -> bytes:
    return orjson.dumps(resource)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    opened = Store.open(f"sqlite:///{tmp_path / 'gateway.db'}")
    yield opened
    opened.close()


GENOMIC = {"system": "http://loinc.org", "code": "51969-4", "display": "Genetic analysis report"}


def with_genomic_report(bundle: bytes) -> dict[str, Any]:
    """The Bundle with a genomic test report (LOINC 51969-4) added: a prohibited export."""
    parsed = orjson.loads(bundle)
    parsed["entry"].append(
        {
            "fullUrl": "urn:uuid:00000000-0000-4000-8000-000000000001",
            "resource": {
                "resourceType": "Observation",
                "status": "final",
                "code": {"coding": [GENOMIC]},
            },
            "request": {"method": "POST", "url": "Observation"},
        }
    )
    return parsed
