"""Each rule in both directions (mainland → Hong Kong, Hong Kong → mainland) and inside
one jurisdiction, allowing and refusing, with the reason it gives."""

from __future__ import annotations

import dataclasses
from datetime import datetime
from typing import Any

import pytest

from gateway import Settings
from gateway.policy import MemoryConsents, MemoryCounters, Policy, RuleResult, parse_consent

from .conftest import HKID, KEY, NOW, RESIDENT_ID, consent, with_genomic_report

MAINLAND_TO_HK = ("ref_i12_nsch_to_hkpmc", "NSCH", "HKPMC")
HK_TO_MAINLAND = ("ref_i12_hkpmc_to_nsch", "HKPMC", "NSCH")
WITHIN = ("ref_i12_lax2_to_njmu2", "LAX2", "NJMU2")


def _rule(
    policy: Policy,
    bundle: bytes | dict[str, Any],
    sender: str,
    recipient: str,
    rule: str,
    purpose: str | None = None,
    **kw: Any,
) -> RuleResult:
    decision = policy.decide(bundle, sender, recipient, purpose, now=kw.pop("now", NOW), **kw)
    return next(r for r in decision.results if r.rule == rule)


def _consents(policy: Policy, *resources: dict[str, Any]) -> MemoryConsents:
    return MemoryConsents(
        [parse_consent(r, policy.network, policy.data.purposes) for r in resources]
    )


# -- prohibited categories ---------------------------------------------------------------
def test_prohibited_code_denies_mainland_to_hong_kong_naming_it(
    policy: Policy, bundles: dict[str, bytes]
) -> None:
    name, sender, recipient = MAINLAND_TO_HK
    clean = _rule(policy, bundles[name], sender, recipient, "prohibited-category")
    assert clean.outcome == "pass" and "no prohibited category" in clean.reason["en"]
    decision = policy.decide(with_genomic_report(bundles[name]), sender, recipient, now=NOW)
    hit = next(r for r in decision.results if r.rule == "prohibited-category")
    assert decision.outcome == "deny" and hit.outcome == "deny"
    assert "http://loinc.org|51969-4 Genetic analysis report" in hit.reason["en"]
    assert "human genetic resources information" in hit.reason["en"]
    assert (
        "人类遗传资源信息" in hit.reason["zh-Hans"] and "人類遺傳資源資訊" in hit.reason["zh-Hant"]
    )
    assert decision.bundle is None


def test_the_decisions_operation_outcome_uses_the_gateway_language_tags(
    policy: Policy, bundles: dict[str, bytes]
) -> None:
    """Translations are tagged zh-Hant-HK and en (docs/terminology.md), not zh-Hant."""
    name, sender, recipient = MAINLAND_TO_HK
    outcome = policy.decide(bundles[name], sender, recipient, now=NOW).operation_outcome()
    tags = {
        part["valueCode"]
        for issue in outcome["issue"]
        for ext in issue["details"]["_text"]["extension"]
        for part in ext["extension"]
        if part["url"] == "lang"
    }
    assert tags == {"zh-Hant-HK", "en"}


def test_prohibited_list_by_direction(
    policy: Policy, bundles: dict[str, bytes], settings: Settings
) -> None:
    name, sender, recipient = HK_TO_MAINLAND
    genomic = with_genomic_report(bundles[name])
    passed = _rule(policy, genomic, sender, recipient, "prohibited-category")
    assert passed.outcome == "pass" and "does not leave the Chinese mainland" in passed.reason["en"]
    # The same rule, its list exported from Hong Kong too (data, not code): refused.
    lists = {k: dict(v, exporting=["CN", "HK"]) for k, v in policy.data.prohibited.items()}
    strict = Policy(settings, data=dataclasses.replace(policy.data, prohibited=lists), key=KEY)
    refused = _rule(strict, genomic, sender, recipient, "prohibited-category")
    assert (
        refused.outcome == "deny"
        and "may not be provided to the Chinese mainland" in refused.reason["en"]
    )
    name, sender, recipient = WITHIN
    inside = _rule(
        policy, with_genomic_report(bundles[name]), sender, recipient, "prohibited-category"
    )
    assert inside.outcome == "pass" and "not applicable" in inside.reason["en"]


# -- agreements --------------------------------------------------------------------------
@pytest.mark.parametrize("case", [MAINLAND_TO_HK, HK_TO_MAINLAND])
def test_agreement_in_force_allows_both_ways(
    policy: Policy, bundles: dict[str, bytes], case: tuple[str, str, str]
) -> None:
    name, sender, recipient = case
    result = _rule(policy, bundles[name], sender, recipient, "agreement")
    assert result.outcome == "pass"
    assert "agreement GBA-SC-2024-NSCH-HKPMC (GBA Standard Contract" in result.reason["en"]
    assert "粤港澳大湾区个人信息跨境流动标准合同" in result.reason["zh-Hans"]


def test_expired_agreement_denies_naming_it(policy: Policy, bundles: dict[str, bytes]) -> None:
    out = _rule(policy, bundles["ref_i12_nsgp_to_nsch"], "NSGP", "HKPMC", "agreement")
    back = _rule(policy, bundles["ref_i12_hkpmc_to_nsch"], "HKPMC", "NSGP", "agreement")
    for result in (out, back):
        assert result.outcome == "deny" and result.reason_code == "agreement.expired"
        assert result.reason["en"] == (
            "agreement GBA-SC-2023-NSGP-HKPMC (GBA Standard Contract) expired on 2025-12-31"
        )
        assert "已于 2025-12-31 到期" in result.reason["zh-Hans"]


def test_partner_outside_the_gba_under_the_gba_contract_denies_naming_it(
    policy: Policy, bundles: dict[str, bytes]
) -> None:
    decision = policy.decide(
        bundles["ref_i12_lax2_to_njmu2"], "NJMU2", "HKPMC", "second-opinion", now=NOW
    )
    result = next(r for r in decision.results if r.rule == "agreement")
    assert decision.outcome == "deny" and result.reason_code == "agreement.outside-region"
    assert (
        "The Second Affiliated Hospital of Nanjing Medical University is in Gulou District, Nanjing"
        in result.reason["en"]
    )
    assert "outside the Guangdong-Hong Kong-Macao Greater Bay Area" in result.reason["en"]
    assert "南京市鼓楼区，不在粤港澳大湾区内" in result.reason["zh-Hans"]


def test_agreement_refusals_purpose_category_none(
    policy: Policy, bundles: dict[str, bytes], settings: Settings
) -> None:
    lax2 = bundles["ref_i12_lax2_to_njmu2"]
    wrong = _rule(policy, lax2, "LAX2", "HKPMC", "agreement", "referral")
    assert wrong.outcome == "deny" and "does not cover the purpose “referral”" in wrong.reason["en"]
    none = _rule(policy, bundles["ref_i12_hkpmc_to_nsch"], "HKPMC", "LAX2", "agreement")
    assert none.outcome == "deny" and none.reason_code == "agreement.none"
    narrow = [
        dataclasses.replace(a, categories=frozenset({"demographics"}))
        for a in policy.data.agreements
    ]
    strict = Policy(settings, data=dataclasses.replace(policy.data, agreements=narrow), key=KEY)
    category = _rule(strict, bundles["ref_i12_nsch_to_hkpmc"], "NSCH", "HKPMC", "agreement")
    assert (
        category.outcome == "deny"
        and "does not cover the data categories: clinical data" in category.reason["en"]
    )


def test_agreement_inside_one_jurisdiction(policy: Policy, bundles: dict[str, bytes]) -> None:
    name, sender, recipient = WITHIN
    ok = _rule(policy, bundles[name], sender, recipient, "agreement")
    assert (
        ok.outcome == "pass"
        and "DOM-2023-NJMU2-LAX2 (domestic cooperation agreement)" in ok.reason["en"]
    )
    late = _rule(policy, bundles[name], sender, recipient, "agreement", now=datetime(2029, 1, 2))
    assert late.outcome == "deny" and "expired on 2028-12-31" in late.reason["en"]
    none = _rule(policy, bundles[name], "NSCH", "NJMU2", "agreement")
    assert none.outcome == "deny" and "no transfer agreement is recorded" in none.reason["en"]


# -- consent -------------------------------------------------------------------------------
def test_consent_mainland_to_hong_kong(policy: Policy, bundles: dict[str, bytes]) -> None:
    name, sender, recipient = MAINLAND_TO_HK
    missing = _rule(policy, bundles[name], sender, recipient, "consent")
    assert (
        missing.outcome == "hold"
        and "held until a matching consent arrives" in missing.reason["en"]
    )
    given = _consents(policy, consent((HKID, "K583726A"), "HKPMC"))
    ok = _rule(policy, bundles[name], sender, recipient, "consent", consents=given)
    assert ok.outcome == "pass" and ok.reason["en"].startswith(
        "the patient's separate consent consent-1 covers"
    )
    for other in (
        consent((HKID, "K583726A"), "HKPMC", status="inactive"),  # withdrawn
        consent((HKID, "K583726A"), "NJMU2"),  # another recipient
        consent((HKID, "K583726A"), "HKPMC", ("continuing-care",)),  # another purpose
        consent((HKID, "K583726A"), "HKPMC", end="2026-06-17"),  # lapsed
        consent((HKID, "A1234563"), "HKPMC"),  # another patient
    ):
        held = _rule(
            policy, bundles[name], sender, recipient, "consent", consents=_consents(policy, other)
        )
        assert held.outcome == "hold", other


def test_consent_hong_kong_to_mainland(policy: Policy, bundles: dict[str, bytes]) -> None:
    name, sender, recipient = HK_TO_MAINLAND
    assert _rule(policy, bundles[name], sender, recipient, "consent").outcome == "hold"
    given = _consents(policy, consent((HKID, "K583726A"), "NSCH"))
    assert (
        _rule(policy, bundles[name], sender, recipient, "consent", consents=given).outcome == "pass"
    )


def test_consent_inside_one_jurisdiction_is_a_setting(
    policy: Policy, bundles: dict[str, bytes], settings: Settings
) -> None:
    name, sender, recipient = WITHIN
    free = _rule(policy, bundles[name], sender, recipient, "consent")
    assert free.outcome == "pass" and "needs no separate consent" in free.reason["en"]
    strict = Policy(
        dataclasses.replace(settings, policy_consent_within=True), data=policy.data, key=KEY
    )
    assert _rule(strict, bundles[name], sender, recipient, "consent").outcome == "hold"
    given = _consents(policy, consent((RESIDENT_ID, "341122196604200135"), "NJMU2"))
    assert (
        _rule(strict, bundles[name], sender, recipient, "consent", consents=given).outcome == "pass"
    )


# -- yearly volume ---------------------------------------------------------------------------
def _counted(
    policy: Policy, others: int, sender: str = "lax2", basis: str = "national-standard-contract"
) -> MemoryCounters:
    counters = MemoryCounters()
    counters.people[(NOW.year, sender, basis, "sensitive")] = {f"other-{n}" for n in range(others)}
    return counters


def test_volume_mainland_to_hong_kong_thresholds(policy: Policy, bundles: dict[str, bytes]) -> None:
    bundle = bundles["ref_i12_lax2_to_njmu2"]
    few = _rule(
        policy, bundle, "LAX2", "HKPMC", "volume", "second-opinion", counters=_counted(policy, 5)
    )
    assert few.outcome == "pass" and few.reason["en"].startswith("6 individuals'")
    near = _rule(
        policy,
        bundle,
        "LAX2",
        "HKPMC",
        "volume",
        "second-opinion",
        counters=_counted(policy, 9_999),
    )
    assert near.outcome == "warn"
    assert (
        "10,000 individuals'" in near.reason["en"]
        and "warning threshold of 8,000 (limit 10,000)" in near.reason["en"]
    )
    decision = policy.decide(
        bundle, "LAX2", "HKPMC", "second-opinion", counters=_counted(policy, 10_000), now=NOW
    )
    over = next(r for r in decision.results if r.rule == "volume")
    assert decision.outcome == "deny" and over.outcome == "deny"
    assert (
        "10,001 individuals'" in over.reason["en"]
        and "above the threshold of 10,000" in over.reason["en"]
    )
    assert "超过阈值 10,000" in over.reason["zh-Hans"]


def test_an_individual_counted_before_is_not_counted_twice(
    policy: Policy, bundles: dict[str, bytes]
) -> None:
    bundle = bundles["ref_i12_lax2_to_njmu2"]
    decision = policy.decide(bundle, "LAX2", "HKPMC", "second-opinion", now=NOW)
    assert decision.count is None  # held for consent: nothing to count yet
    counters = _counted(policy, 9_999)  # and this patient: 10,000, at the limit
    person = pseudonym_of(policy)
    counters.people[(NOW.year, "lax2", "national-standard-contract", "sensitive")].add(person)
    again = _rule(policy, bundle, "LAX2", "HKPMC", "volume", "second-opinion", counters=counters)
    assert again.outcome == "warn" and again.reason["en"].startswith("10,000 individuals'")


def pseudonym_of(policy: Policy) -> str:
    from gateway.policy import pseudonym

    return pseudonym(KEY, RESIDENT_ID, "341122196604200135")


def test_volume_hong_kong_to_mainland_and_within(
    policy: Policy, bundles: dict[str, bytes], settings: Settings
) -> None:
    name, sender, recipient = HK_TO_MAINLAND
    free = _rule(policy, bundles[name], sender, recipient, "volume")
    assert (
        free.outcome == "pass"
        and free.reason["en"] == "not counted: the data does not leave the Chinese mainland"
    )
    # Counted where Hong Kong exports too, on a basis with a limit of 1: refused.
    rules = [
        dict(r, params=dict(r["params"], exporting=["CN", "HK"])) if r["kind"] == "volume" else r
        for r in policy.data.rules
    ]
    bases = {
        k: dataclasses.replace(b, volume_limit=1, volume_warning=1)
        for k, b in policy.data.bases.items()
    }
    strict = Policy(
        settings, data=dataclasses.replace(policy.data, rules=rules, bases=bases), key=KEY
    )
    counters = _counted(policy, 1, "hkpmc", "gba-standard-contract")
    refused = _rule(strict, bundles[name], sender, recipient, "volume", counters=counters)
    assert refused.outcome == "deny" and "above the threshold of 1" in refused.reason["en"]
    name, sender, recipient = WITHIN
    inside = _rule(policy, bundles[name], sender, recipient, "volume")
    assert inside.outcome == "pass" and inside.reason_code == "volume.not-exporting"


# -- minimisation --------------------------------------------------------------------------
@pytest.mark.parametrize(
    "case,consent_for",
    [
        (MAINLAND_TO_HK, consent((HKID, "K583726A"), "HKPMC")),
        (HK_TO_MAINLAND, consent((HKID, "K583726A"), "NSCH")),
    ],
)
def test_minimisation_across_the_boundary(
    policy: Policy,
    bundles: dict[str, bytes],
    case: tuple[str, str, str],
    consent_for: dict[str, Any],
) -> None:
    name, sender, recipient = case
    decision = policy.decide(
        bundles[name], sender, recipient, consents=_consents(policy, consent_for), now=NOW
    )
    result = next(r for r in decision.results if r.rule == "minimisation")
    assert decision.outcome == "allow-with-changes" and result.outcome == "change"
    assert result.reason["en"].startswith(
        "minimised by profile cross-border: identifiers pseudonymised 1"
    )
    assert "phone numbers removed 2" in result.reason["en"]
    assert "标识号假名化 1" in result.reason["zh-Hans"]
    assert b"K583726A" not in (decision.bundle_json or b"K583726A")


def test_no_minimisation_inside_one_jurisdiction(policy: Policy, bundles: dict[str, bytes]) -> None:
    name, sender, recipient = WITHIN
    decision = policy.decide(bundles[name], sender, recipient, now=NOW)
    result = next(r for r in decision.results if r.rule == "minimisation")
    assert decision.outcome == "allow" and result.outcome == "pass"
    assert result.reason["en"] == "no minimisation is configured for this purpose and recipient"
    assert b"341122196604200135" in (decision.bundle_json or b"")
