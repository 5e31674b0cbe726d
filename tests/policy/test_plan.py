"""The rules folded into a plan per (sender, recipient, purpose): built once and kept,
dropped when the agreements or rules change (a new ``data``), never holding what a
consent or a counter decides (asked at every decision)."""

from __future__ import annotations

import dataclasses

import orjson

from gateway import Settings
from gateway.policy import MemoryConsents, Policy, parse_consent

from .conftest import HKID, KEY, NOW, consent, with_genomic_report


def test_one_plan_per_parties_and_purpose_and_the_same_decision(
    settings: Settings, bundles: dict[str, bytes]
) -> None:
    policy = Policy(settings, key=KEY)
    bundle = bundles["ref_i12_hkpmc_to_nsch"]
    first = policy.decide(bundle, "HKPMC", "NSCH", now=NOW)
    plan = policy._plans[("HKPMC", "NSCH", first.purpose)]
    second = policy.decide(bundle, "HKPMC", "NSCH", now=NOW)
    assert policy._plans[("HKPMC", "NSCH", first.purpose)] is plan  # kept, not rebuilt
    # Every result is a copy of its own: changing one changes no later decision.
    second.results[0].reason["en"] = "changed"
    third = policy.decide(bundle, "HKPMC", "NSCH", now=NOW)
    fresh = Policy(settings, key=KEY).decide(bundle, "HKPMC", "NSCH", now=NOW)
    for decision in (first, third):
        assert [r.to_json() for r in decision.results] == [r.to_json() for r in fresh.results]
        assert decision.bundle_json == fresh.bundle_json


def test_new_rules_or_agreements_drop_the_plans(
    settings: Settings, bundles: dict[str, bytes]
) -> None:
    policy = Policy(settings, key=KEY)
    genomic = with_genomic_report(bundles["ref_i12_hkpmc_to_nsch"])

    def rule(name: str) -> tuple[str, str]:
        decision = policy.decide(genomic, "HKPMC", "NSCH", now=NOW)
        found = next(r for r in decision.results if r.rule == name)
        return found.outcome, found.reason_code

    assert rule("prohibited-category") == ("pass", "prohibited.not-exporting")
    # The list exported from Hong Kong too: the plan's fixed pass must go.
    lists = {k: dict(v, exporting=["CN", "HK"]) for k, v in policy.data.prohibited.items()}
    policy.data = dataclasses.replace(policy.data, prohibited=lists)
    assert rule("prohibited-category") == ("deny", "prohibited.found")
    # Agreements that no longer cover the categories: the kept agreement result goes.
    narrow = [
        dataclasses.replace(a, categories=frozenset({"demographics"}))
        for a in policy.data.agreements
    ]
    policy.data = dataclasses.replace(policy.data, agreements=narrow)
    assert rule("agreement") == ("deny", "agreement.category")


def test_a_consent_change_is_seen_at_the_next_decision_under_the_same_plan(
    settings: Settings, bundles: dict[str, bytes]
) -> None:
    policy = Policy(settings, key=KEY)
    bundle = orjson.loads(bundles["ref_i12_nsch_to_hkpmc"])
    consents = MemoryConsents([])
    assert policy.decide(bundle, "NSCH", "HKPMC", consents=consents, now=NOW).outcome == "hold"
    plans = dict(policy._plans)
    given = parse_consent(
        consent((HKID, "K583726A"), "HKPMC"), policy.network, policy.data.purposes
    )
    consents = MemoryConsents([given])
    allowed = policy.decide(bundle, "NSCH", "HKPMC", consents=consents, now=NOW)
    assert allowed.outcome == "allow-with-changes"
    assert policy._plans == plans  # the same plan: consents are not in it
    withdrawn = parse_consent(
        consent((HKID, "K583726A"), "HKPMC", status="inactive"),
        policy.network,
        policy.data.purposes,
    )
    consents = MemoryConsents([withdrawn])
    assert policy.decide(bundle, "NSCH", "HKPMC", consents=consents, now=NOW).outcome == "hold"
