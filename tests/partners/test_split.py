"""gateway/partners/_split.py: splitting a Bundle into requests that a partner with a
size limit applies in order (docs/partners.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

from gateway.datafiles import data_dir
from gateway.errors import ConfigError
from gateway.network import Network
from gateway.partners import Partner, load_partners, split_bundle
from tests.conftest import REPO

REFERRAL = REPO / "examples" / "hl7v2" / "bundles" / "ref_i12_lax2_to_njmu2.json"


def _referral() -> dict[str, Any]:
    bundle: dict[str, Any] = orjson.loads(REFERRAL.read_bytes())
    return bundle


def _refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        own = [node["reference"]] if isinstance(node.get("reference"), str) else []
        return own + [r for v in node.values() for r in _refs(v)]
    if isinstance(node, list):
        return [r for v in node for r in _refs(v)]
    return []


def _condition(entry: dict[str, Any]) -> str:
    request = entry["request"]
    if "ifNoneExist" in request:
        return f"{request['url']}?{request['ifNoneExist']}"
    return str(request["url"])


def test_a_bundle_within_the_limit_is_sent_as_it_is() -> None:
    bundle = _referral()
    assert split_bundle(bundle, 0) == [bundle]
    assert split_bundle(bundle, len(bundle["entry"]))[0] is bundle


@pytest.mark.parametrize("limit", [2, 3, 5, 8])
def test_split_transactions_fit_the_limit_and_never_cross_reference_a_urn(limit: int) -> None:
    bundle = _referral()
    entries = bundle["entry"]
    assert len(entries) > 8  # a REF^I12: more than Medplum takes in one transaction
    parts = split_bundle(bundle, limit)
    assert len(parts) > 1 and all(len(p["entry"]) <= limit for p in parts)
    assert all(p["type"] == "transaction" for p in parts)
    sent = [e["fullUrl"] for p in parts for e in p["entry"]]
    assert sorted(sent) == sorted(e["fullUrl"] for e in entries)  # each entry once
    by_url = {e["fullUrl"]: e for e in entries}
    seen: set[str] = set()
    for part in parts:
        own = {e["fullUrl"] for e in part["entry"]}
        for entry in part["entry"]:
            original = by_url[entry["fullUrl"]]
            assert entry["request"] == original["request"]
            for before, after in zip(
                _refs(original["resource"]), _refs(entry["resource"]), strict=True
            ):
                if before in own:
                    assert after == before
                elif before in by_url:  # applied by an earlier part: found by its identity
                    assert before in seen and after == _condition(by_url[before])
                else:
                    assert after == before
            assert not any(r.startswith("urn:uuid:") and r not in own for r in _refs(entry))
        seen |= own


def test_split_is_deterministic_and_leaves_the_bundle_alone() -> None:
    bundle = _referral()
    before = orjson.dumps(bundle)
    first = orjson.dumps(split_bundle(bundle, 4))
    assert orjson.dumps(split_bundle(_referral(), 4)) == first
    assert orjson.dumps(bundle) == before


def test_batches_hold_independent_entries_in_dependency_order() -> None:
    bundle = _referral()
    parts = split_bundle(bundle, 0, "batch")
    assert all(p["type"] == "batch" for p in parts)
    done: set[str] = set()
    by_url = {e["fullUrl"]: e for e in bundle["entry"]}
    for part in parts:
        for entry in part["entry"]:
            # no reference to any other entry by urn: earlier ones by identity
            assert not any(r in by_url for r in _refs(entry["resource"]))
            targets = [u for u in _refs(by_url[entry["fullUrl"]]["resource"]) if u in by_url]
            assert all(t in done for t in targets)
        done |= {e["fullUrl"] for e in part["entry"]}
    assert all(len(p["entry"]) <= 2 for p in split_bundle(bundle, 2, "batch"))


def test_a_reference_cycle_cannot_be_split() -> None:
    a = {"resourceType": "Patient", "link": [{"other": {"reference": "urn:uuid:b"}}]}
    b = {"resourceType": "Patient", "link": [{"other": {"reference": "urn:uuid:a"}}]}
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "fullUrl": f"urn:uuid:{k}",
                "resource": r,
                "request": {"method": "POST", "url": "Patient"},
            }
            for k, r in (("a", a), ("b", b), ("c", {"resourceType": "Patient"}))
        ],
    }
    with pytest.raises(ConfigError) as caught:
        split_bundle(bundle, 2)
    assert caught.value.code == "config.partner-limit"
    assert "Bundle.entry[0]" in caught.value.issue.message


def test_an_entry_without_a_condition_cannot_be_referred_to_across_parts() -> None:
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {"fullUrl": "urn:uuid:o", "resource": {"resourceType": "Organization"},
             "request": {"method": "POST", "url": "Organization"}},
            {"fullUrl": "urn:uuid:p", "resource": {"resourceType": "Patient"},
             "request": {"method": "POST", "url": "Patient"}},
            {"fullUrl": "urn:uuid:q", "resource": {"resourceType": "Patient",
             "managingOrganization": {"reference": "urn:uuid:o"}},
             "request": {"method": "POST", "url": "Patient"}},
        ],
    }  # fmt: skip
    with pytest.raises(ConfigError) as caught:
        split_bundle(bundle, 2)
    assert caught.value.code == "config.partner-limit"


def test_the_shipped_partners_are_institutions_of_the_network() -> None:
    network = Network.load(data_dir("seeds") / "network.yaml")
    partners = load_partners(network=network)
    hkpmc = partners["hkpmc"]
    assert (hkpmc.base, hkpmc.max_entries, hkpmc.write) == (
        "https://fhir.hkpmc.example.hk/fhir/R4",
        8,
        "transaction",
    )
    assert isinstance(hkpmc, Partner) and hkpmc.jurisdiction == "HK"  # from the network
    assert {p.write for p in partners.values()} == {"transaction", "batch"}


@pytest.mark.parametrize(
    ("text", "code", "words"),
    [
        ("partners: {hkpmc: {max_entries: 8}}", "config.partners", "needs 'base'"),
        (
            "partners: {hkpmc: {base: 'https://x', max_entries: -1}}",
            "config.partners",
            "max_entries",
        ),
        (
            "partners: {hkpmc: {base: 'https://x', max_entries: 1}}",
            "config.partners",
            "max_entries",
        ),
        ("partners: {hkpmc: {base: 'https://x', write: stream}}", "config.partners", "write"),
        (
            "partners: {hkpmc: {base: 'https://x', limit: 8}}",
            "config.partners",
            "unknown keys limit",
        ),
        ("partners: [hkpmc]", "config.partners", "'partners' mapping"),
        ("partners: {nowhere: {base: 'https://x'}}", "config.unknown-partner", "partners.nowhere"),
    ],
)
def test_a_malformed_partners_file_is_refused_naming_the_key(
    tmp_path: Path, text: str, code: str, words: str
) -> None:
    path = tmp_path / "partners.yaml"
    path.write_text(text, encoding="utf-8")
    network = Network.load(data_dir("seeds") / "network.yaml")
    with pytest.raises(ConfigError) as caught:
        load_partners(path, network)
    assert caught.value.code == code and words in caught.value.issue.message
