"""The stage works on a parse of its own (changed in place by the minimisation and the
labels) and keeps some rule results per process: neither may reach the caller's Bundle
or the next decision."""

from __future__ import annotations

import orjson

from gateway.policy import MemoryConsents, MemoryCounters, Policy, parse_consent

from .conftest import HKID, NOW, consent


def _consents(policy: Policy) -> MemoryConsents:
    return MemoryConsents(
        [parse_consent(consent((HKID, "K583726A"), "HKPMC"), policy.network, policy.data.purposes)]
    )


def test_a_dict_bundle_is_not_changed_and_decides_like_its_bytes(
    policy: Policy, bundles: dict[str, bytes]
) -> None:
    raw = bundles["ref_i12_nsch_to_hkpmc"]
    source = orjson.loads(raw)
    before = orjson.dumps(source)
    consents = _consents(policy)
    from_dict = policy.decide(
        source, "NSCH", "HKPMC", consents=consents, counters=MemoryCounters(), now=NOW
    )
    from_bytes = policy.decide(
        raw, "NSCH", "HKPMC", consents=consents, counters=MemoryCounters(), now=NOW
    )
    assert orjson.dumps(source) == before  # the caller's Bundle: not pseudonymised, no labels
    assert from_dict.outcome == from_bytes.outcome == "allow-with-changes"
    assert from_dict.bundle_json == from_bytes.bundle_json
    assert from_dict.to_json() == from_bytes.to_json()


def test_a_changed_reason_does_not_reach_the_next_decision(
    policy: Policy, bundles: dict[str, bytes]
) -> None:
    raw = bundles["ref_i12_nsch_to_hkpmc"]
    first = policy.decide(raw, "NSCH", "HKPMC", consents=_consents(policy), now=NOW)
    kept = {r.rule: dict(r.reason) for r in first.results}
    for r in first.results:
        r.reason["en"] = "changed by a caller"
    second = policy.decide(raw, "NSCH", "HKPMC", consents=_consents(policy), now=NOW)
    assert {r.rule: r.reason for r in second.results} == kept


def test_each_decision_gets_its_own_bundle(policy: Policy, bundles: dict[str, bytes]) -> None:
    raw = bundles["ref_i12_nsch_to_hkpmc"]
    first = policy.decide(raw, "NSCH", "HKPMC", consents=_consents(policy), now=NOW)
    assert first.bundle is not None
    expected = first.bundle_json
    first.bundle["entry"].clear()  # a later stage changing what it got
    second = policy.decide(raw, "NSCH", "HKPMC", consents=_consents(policy), now=NOW)
    assert second.bundle_json == expected
