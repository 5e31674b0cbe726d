"""Writes the test profiles beside this file from the base R4 snapshots (run by hand:
``.venv/bin/python tests/validation/profiles/make_test_profiles.py``).

They exercise what the gateway's own profiles (profiles/, written separately) use:
tighter cardinality, a fixed code, a pattern, a required binding to a local ValueSet,
slicing by a system pattern and by resource type, and an invariant of the profile's own.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

from gateway.validation._definitions import definitions

HERE = Path(__file__).resolve().parent
BASE = "https://fhir-gateway.example.org/test"


def _element(snapshot: list[dict[str, Any]], eid: str) -> dict[str, Any]:
    return next(e for e in snapshot if e["id"] == eid)


def servicerequest() -> dict[str, Any]:
    base = definitions().structure("ServiceRequest")
    assert base is not None, "the hl7.fhir.r4.core package is not installed"
    snap = copy.deepcopy(base["snapshot"]["element"])
    _element(snap, "ServiceRequest.identifier")["min"] = 1
    _element(snap, "ServiceRequest.authoredOn")["min"] = 1
    _element(snap, "ServiceRequest.requester")["min"] = 1
    _element(snap, "ServiceRequest.intent")["fixedCode"] = "order"
    _element(snap, "ServiceRequest.priority")["binding"] = {
        "strength": "required",
        "valueSet": f"{BASE}/ValueSet/test-priority",
    }
    identifier = _element(snap, "ServiceRequest.identifier")
    identifier["slicing"] = {
        "discriminator": [{"type": "pattern", "path": "system"}],
        "rules": "open",
    }
    at = snap.index(identifier) + 1
    while snap[at]["id"].startswith("ServiceRequest.identifier."):
        at += 1
    snap[at:at] = [
        {
            "id": "ServiceRequest.identifier:placer",
            "path": "ServiceRequest.identifier",
            "sliceName": "placer",
            "min": 0,
            "max": "1",
            "type": [{"code": "Identifier"}],
        },
        {
            "id": "ServiceRequest.identifier:placer.system",
            "path": "ServiceRequest.identifier.system",
            "min": 1,
            "max": "1",
            "type": [{"code": "uri"}],
            "patternUri": "https://fhir-gateway.example.org/test/sid/placer",
        },
    ]
    root = snap[0]
    root["constraint"] = [
        *root.get("constraint", []),
        {
            "key": "tsr-1",
            "severity": "error",
            "human": "a referral gives a reason (coded or as a note)",
            "expression": "reasonCode.exists() or note.exists()",
            "source": f"{BASE}/StructureDefinition/test-servicerequest",
        },
    ]
    return {
        "resourceType": "StructureDefinition",
        "id": "test-servicerequest",
        "url": f"{BASE}/StructureDefinition/test-servicerequest",
        "name": "TestServiceRequest",
        "status": "draft",
        "kind": "resource",
        "abstract": False,
        "type": "ServiceRequest",
        "baseDefinition": "http://hl7.org/fhir/StructureDefinition/ServiceRequest",
        "derivation": "constraint",
        "snapshot": {"element": snap},
    }


def bundle() -> dict[str, Any]:
    """A transaction Bundle whose entries are sliced by their resource's type: exactly one
    ServiceRequest, any number of other resources (open)."""
    base = definitions().structure("Bundle")
    assert base is not None, "the hl7.fhir.r4.core package is not installed"
    snap = copy.deepcopy(base["snapshot"]["element"])
    _element(snap, "Bundle.type")["fixedCode"] = "transaction"
    entry = _element(snap, "Bundle.entry")
    entry["slicing"] = {
        "discriminator": [{"type": "type", "path": "resource"}],
        "rules": "open",
    }
    at = snap.index(entry) + 1
    while snap[at]["id"].startswith("Bundle.entry."):
        at += 1
    snap[at:at] = [
        {
            "id": "Bundle.entry:order",
            "path": "Bundle.entry",
            "sliceName": "order",
            "min": 1,
            "max": "1",
            "type": [{"code": "BackboneElement"}],
        },
        {
            "id": "Bundle.entry:order.resource",
            "path": "Bundle.entry.resource",
            "min": 1,
            "max": "1",
            "type": [{"code": "ServiceRequest"}],
        },
    ]
    return {
        "resourceType": "StructureDefinition",
        "id": "test-order-bundle",
        "url": f"{BASE}/StructureDefinition/test-order-bundle",
        "name": "TestOrderBundle",
        "status": "draft",
        "kind": "resource",
        "abstract": False,
        "type": "Bundle",
        "baseDefinition": "http://hl7.org/fhir/StructureDefinition/Bundle",
        "derivation": "constraint",
        "snapshot": {"element": snap},
    }


def priority_valueset() -> dict[str, Any]:
    return {
        "resourceType": "ValueSet",
        "id": "test-priority",
        "url": f"{BASE}/ValueSet/test-priority",
        "status": "draft",
        "compose": {
            "include": [
                {
                    "system": "http://hl7.org/fhir/request-priority",
                    "concept": [{"code": "routine"}, {"code": "urgent"}, {"code": "asap"}],
                }
            ]
        },
    }


def main() -> None:
    for resource in (servicerequest(), bundle(), priority_valueset()):
        path = HERE / f"{resource['resourceType']}-{resource['id']}.json"
        path.write_text(json.dumps(resource, ensure_ascii=False, indent=2) + "\n", "utf-8")


if __name__ == "__main__":
    main()
