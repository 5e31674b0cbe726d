"""Adversarial: the patient's identifiers hidden where a minimisation that only looks at
the Patient would miss them — an extension, a contained Patient, a Provenance sent in the
Bundle, a narrative in another spelling, a Bundle nested in an entry."""

from __future__ import annotations

import base64
from typing import Any

import orjson
import pytest

from gateway.policy import MemoryConsents, Policy, parse_consent

from .conftest import HKID, NOW, consent

NAME, SENDER, RECIPIENT = "ref_i12_nsch_to_hkpmc", "NSCH", "HKPMC"
VALUE = "K583726A"  # the demo patient's HKID (the referral's Patient)
OTHER = "A1234563"  # another individual's HKID (valid check digit, nobody's)


def _entry(resource: dict[str, Any], n: int) -> dict[str, Any]:
    return {
        "fullUrl": f"urn:uuid:00000000-0000-4000-8000-00000000a{n:03d}",
        "resource": resource,
        "request": {"method": "POST", "url": resource["resourceType"]},
    }


def _leaves(policy: Policy, bundle: dict[str, Any], *patients: str) -> bytes:
    consents = MemoryConsents(
        [
            parse_consent(
                consent((HKID, p), RECIPIENT, ident=f"c-{p}"), policy.network, policy.data.purposes
            )
            for p in patients
        ]
    )
    decision = policy.decide(bundle, SENDER, RECIPIENT, "referral", consents=consents, now=NOW)
    assert decision.allowed, [r.reason["en"] for r in decision.results]
    assert decision.bundle_json is not None
    return decision.bundle_json


def _all_text(data: bytes) -> str:
    """Every string of what leaves, base64 attachments decoded."""
    out = [data.decode()]

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if isinstance(node.get("data"), str):
                out.append(base64.b64decode(node["data"]).decode(errors="replace"))
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(orjson.loads(data))
    return "\n".join(out)


@pytest.mark.parametrize(
    "hide",
    [
        # an extension of another resource, as a string and as an Identifier
        lambda v: {
            "resourceType": "Observation",
            "status": "final",
            "code": {"text": "note"},
            "extension": [
                {"url": "https://example.org/x", "valueString": f"HKID {v[:4]} {v[4:7]}({v[7]})"},
                {"url": "https://example.org/y", "valueIdentifier": {"system": HKID, "value": v}},
            ],
        },
        # a contained Patient of the same person
        lambda v: {
            "resourceType": "Observation",
            "status": "final",
            "code": {"text": "note"},
            "contained": [
                {"resourceType": "Patient", "id": "p", "identifier": [{"system": HKID, "value": v}]}
            ],
            "subject": {"reference": "#p"},
        },
        # a Provenance sent by the hospital naming the patient
        lambda v: {
            "resourceType": "Provenance",
            "target": [{"reference": "Patient/x"}],
            "recorded": "2026-06-18T08:00:00Z",
            "agent": [{"who": {"identifier": {"system": HKID, "value": v.lower()}}}],
        },
        # a narrative, HTML-escaped and spaced
        lambda v: {
            "resourceType": "Observation",
            "status": "final",
            "code": {"text": "note"},
            "text": {
                "status": "generated",
                "div": f'<div xmlns="http://www.w3.org/1999/xhtml">&#75;{v[1:4]}&#x20;{v[4:]}</div>',
            },
        },
    ],
)
def test_the_patients_identifier_is_found_wherever_it_hides(
    policy: Policy, bundles: dict[str, bytes], hide: Any
) -> None:
    bundle = orjson.loads(bundles[NAME])
    bundle["entry"].append(_entry(hide(VALUE), 1))
    text = _all_text(_leaves(policy, bundle, VALUE))
    squeezed = "".join(ch for ch in text.upper() if ch.isalnum())
    assert VALUE not in squeezed and "K583726" not in squeezed


def test_a_bundle_nested_in_an_entry_does_not_carry_another_individual_across(
    policy: Policy, bundles: dict[str, bytes]
) -> None:
    """A document Bundle inside the transaction holding another Patient: that
    individual needs a consent, and their identifier does not leave in clear."""
    bundle = orjson.loads(bundles[NAME])
    inner = {
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [
            {
                "fullUrl": "urn:uuid:00000000-0000-4000-8000-00000000b001",
                "resource": {
                    "resourceType": "Patient",
                    "identifier": [{"system": HKID, "value": OTHER}],
                },
            }
        ],
    }
    bundle["entry"].append(_entry(inner, 2))
    decision = policy.decide(
        bundle,
        SENDER,
        RECIPIENT,
        "referral",
        consents=MemoryConsents(
            [parse_consent(consent((HKID, VALUE), RECIPIENT), policy.network, policy.data.purposes)]
        ),
        now=NOW,
    )
    assert decision.outcome == "hold"
    # Both consent: the nested Patient is out of the minimisation's reach: refused.
    consents = MemoryConsents(
        [
            parse_consent(
                consent((HKID, p), RECIPIENT, ident=p), policy.network, policy.data.purposes
            )
            for p in (VALUE, OTHER)
        ]
    )
    both = policy.decide(bundle, SENDER, RECIPIENT, "referral", consents=consents, now=NOW)
    refused = next(r for r in both.results if r.rule == "minimisation")
    assert (both.outcome, refused.reason_code) == ("deny", "minimise.nested")
    assert both.bundle_json is None and "Patient" in refused.reason["en"]
