"""A signature Provenance always names what it covers (R4 ``Provenance.target`` is 1..*):
a batch whose entries carry no fullUrl is named by its resources' ``Type/id``, or failing
those by the Bundle's identifier — before, the target list came out empty and the signed
Bundle was no longer valid R4."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from gateway.signing import Signer, sign_bundle, verify_bundle
from gateway.signing._bundle import signature_entries
from gateway.validation import Validator

from .conftest import WHEN

BASE_BUNDLE = "http://hl7.org/fhir/StructureDefinition/Bundle"


def _without_full_urls(bundle: dict[str, Any], keep_ids: bool) -> dict[str, Any]:
    out = copy.deepcopy(bundle)
    out["type"] = "batch"
    for entry in out["entry"]:
        url = entry.pop("fullUrl", "")
        if keep_ids:  # a batch names its resources by id (the golden's urn:uuid here)
            entry["resource"]["id"] = url.rsplit(":", 1)[-1]
        else:
            entry["resource"].pop("id", None)
    return out


def _targets(signed: dict[str, Any]) -> list[dict[str, Any]]:
    (n,) = signature_entries(signed)
    targets: list[dict[str, Any]] = signed["entry"][n]["resource"]["target"]
    return targets


def _r4_issues(bundle: dict[str, Any]) -> list[str]:
    issues = Validator().validate_bundle(bundle, profile=BASE_BUNDLE)
    return [f"{i.fhirpath}: {i.code}" for i in issues if "target" in (i.fhirpath or "")]


def test_batch_without_full_urls_targets_each_resource(
    golden: dict[str, Any], lax2: Signer
) -> None:
    batch = _without_full_urls(golden, keep_ids=True)
    signed = sign_bundle(batch, lax2, "author", WHEN)
    wanted = [f"{e['resource']['resourceType']}/{e['resource']['id']}" for e in batch["entry"]]
    assert [t["reference"] for t in _targets(signed)] == wanted
    assert _r4_issues(signed) == []


def test_nothing_to_name_but_the_bundle(golden: dict[str, Any], lax2: Signer) -> None:
    batch = _without_full_urls(golden, keep_ids=False)
    signed = sign_bundle(batch, lax2, "author", WHEN)
    assert batch.get("identifier", {}).get("value")
    assert _targets(signed) == [{"type": "Bundle", "identifier": batch["identifier"]}]
    assert _r4_issues(signed) == []


@pytest.mark.parametrize("keep_ids", [True, False])
def test_still_verifies(golden: dict[str, Any], lax2: Signer, keep_ids: bool, trust: Any) -> None:
    signed = sign_bundle(_without_full_urls(golden, keep_ids), lax2, "author", WHEN)
    assert verify_bundle(signed, trust)
