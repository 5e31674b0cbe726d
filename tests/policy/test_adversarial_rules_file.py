"""Adversarial: a rules or agreements file with a typo must be refused when loaded, never
read as something more permissive than what was meant (a rule that silently stops
checking, an agreement that silently never expires)."""

from __future__ import annotations

import dataclasses
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway import Settings
from gateway.errors import ConfigError
from gateway.policy import Policy

from .conftest import KEY, NOW

REPO = Path(__file__).resolve().parents[2]
MAINLAND_TO_HK = ("ref_i12_nsch_to_hkpmc", "NSCH", "HKPMC")


def _copy(tmp_path: Path) -> tuple[Path, Path]:
    policy_dir = tmp_path / "policy"
    shutil.copytree(REPO / "mappings" / "policy", policy_dir)
    agreements = tmp_path / "agreements.yaml"
    shutil.copy(REPO / "seeds" / "agreements.yaml", agreements)
    return policy_dir, agreements


def _edit(path: Path, change: Callable[[dict[str, Any]], None]) -> None:
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    change(data)
    path.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")


def _policy(settings: Settings, policy_dir: Path, agreements: Path) -> Policy:
    return Policy(
        dataclasses.replace(settings, policy_dir=policy_dir, policy_agreements=agreements),
        key=KEY,
    )


def _rule(data: dict[str, Any], rule_id: str) -> dict[str, Any]:
    return next(r for r in data["rules"] if r["id"] == rule_id)


def _rules_key_typo(data: dict[str, Any]) -> None:
    data["rule"] = data.pop("rules")  # every rule gone: every transfer allowed


def _duplicate_rule_id(data: dict[str, Any]) -> None:
    data["rules"].append(dict(_rule(data, "consent"), params={"across": "not-required"}))


def _consent_value_typo(data: dict[str, Any]) -> None:
    _rule(data, "consent")["params"]["across"] = "requried"  # read as "not required"


def _params_key_typo(data: dict[str, Any]) -> None:
    rule = _rule(data, "prohibited-category")
    rule["param"] = rule.pop("params")  # no lists: nothing prohibited


def _unknown_param(data: dict[str, Any]) -> None:
    _rule(data, "volume")["params"]["exportng"] = ["CN"]


def _unknown_list(data: dict[str, Any]) -> None:
    _rule(data, "prohibited-category")["params"]["lists"] = ["human-genetic-resource"]


def _exporting_lower_case(data: dict[str, Any]) -> None:
    _rule(data, "volume")["params"]["exporting"] = ["cn"]  # nothing counted


def _lists_not_a_list(data: dict[str, Any]) -> None:
    _rule(data, "prohibited-category")["params"]["lists"] = "human-genetic-resources"


def _no_catch_all_category(data: dict[str, Any]) -> None:
    del data["categories"]["*"]  # a resource type no line names: no personal data


def _category_typo(data: dict[str, Any]) -> None:
    data["categories"]["Observation"] = "clinicl"


def _default_purpose_typo(data: dict[str, Any]) -> None:
    data["default_purpose"]["ServiceRequest"] = "referal"


@pytest.mark.parametrize(
    "change",
    [
        _no_catch_all_category,
        _category_typo,
        _default_purpose_typo,
        _rules_key_typo,
        _duplicate_rule_id,
        _consent_value_typo,
        _params_key_typo,
        _unknown_param,
        _unknown_list,
        _exporting_lower_case,
        _lists_not_a_list,
    ],
)
def test_a_rules_file_with_a_typo_is_refused(
    settings: Settings, tmp_path: Path, change: Callable[[dict[str, Any]], None]
) -> None:
    policy_dir, agreements = _copy(tmp_path)
    _edit(policy_dir / "rules.yaml", change)
    with pytest.raises(ConfigError) as caught:
        _policy(settings, policy_dir, agreements)
    assert "rules.yaml" in str(caught.value)


def _agreement(data: dict[str, Any], agreement_id: str) -> dict[str, Any]:
    return next(a for a in data["agreements"] if a["id"] == agreement_id)


def _validity_key_typo(data: dict[str, Any]) -> None:
    expired = _agreement(data, "GBA-SC-2023-NSGP-HKPMC")
    expired["vaild"] = expired.pop("valid")  # an expired agreement in force forever


def _validity_inner_typo(data: dict[str, Any]) -> None:
    expired = _agreement(data, "GBA-SC-2023-NSGP-HKPMC")
    expired["valid"] = {"from": "2024-01-02", "until": "2025-12-31"}


def _duplicate_agreement_id(data: dict[str, Any]) -> None:
    data["agreements"].append(dict(_agreement(data, "DOM-2022-NSGP-NSCH")))


def _cross_border_as_text(data: dict[str, Any]) -> None:
    data["bases"]["domestic"]["cross_border"] = "false"  # bool("false") is True


def _unknown_agreement_party(data: dict[str, Any]) -> None:
    _agreement(data, "DOM-2022-NSGP-NSCH")["parties"] = ["nsgp", "nschh"]


def _unknown_category(data: dict[str, Any]) -> None:
    _agreement(data, "DOM-2022-NSGP-NSCH")["categories"] = ["demographic", "clinical"]


def _unknown_region(data: dict[str, Any]) -> None:
    data["bases"]["gba-standard-contract"]["region"] = "GBA"


def _unknown_top_level(data: dict[str, Any]) -> None:
    data["agreement"] = data.pop("agreements")


@pytest.mark.parametrize(
    "change",
    [
        _validity_key_typo,
        _validity_inner_typo,
        _duplicate_agreement_id,
        _cross_border_as_text,
        _unknown_agreement_party,
        _unknown_category,
        _unknown_region,
        _unknown_top_level,
    ],
)
def test_an_agreements_file_with_a_typo_is_refused(
    settings: Settings, tmp_path: Path, change: Callable[[dict[str, Any]], None]
) -> None:
    policy_dir, agreements = _copy(tmp_path)
    _edit(agreements, change)
    with pytest.raises(ConfigError) as caught:
        _policy(settings, policy_dir, agreements)
    assert "agreements.yaml" in str(caught.value)


def test_the_shipped_files_load_and_decide_as_before(
    settings: Settings, tmp_path: Path, bundles: dict[str, bytes]
) -> None:
    """The checks above refuse only typos: the shipped files, copied, still load."""
    policy_dir, agreements = _copy(tmp_path)
    name, sender, recipient = MAINLAND_TO_HK
    decision = _policy(settings, policy_dir, agreements).decide(
        bundles[name], sender, recipient, now=NOW
    )
    assert decision.outcome == "hold"  # no consent given


def test_an_agreement_ended_while_running_stops_the_next_transfer(
    settings: Settings, tmp_path: Path, bundles: dict[str, bytes]
) -> None:
    """The agreements file edited under a running gateway (an agreement terminated):
    the next decision reads it, without a restart."""
    policy_dir, agreements = _copy(tmp_path)
    policy = _policy(settings, policy_dir, agreements)
    policy.watch.reload_interval = 0.0  # look at the files at every decision
    name, sender, recipient = "ref_i12_lax2_to_njmu2", "LAX2", "NJMU2"
    assert policy.decide(bundles[name], sender, recipient, now=NOW).allowed

    def terminate(data: dict[str, Any]) -> None:
        _agreement(data, "DOM-2023-NJMU2-LAX2")["valid"] = {
            "from": "2023-01-01",
            "to": "2026-01-31",
        }

    _edit(agreements, terminate)
    decision = policy.decide(bundles[name], sender, recipient, now=NOW)
    assert decision.outcome == "deny"
    refused = next(r for r in decision.results if r.rule == "agreement")
    assert refused.reason_code == "agreement.expired"


def test_a_rules_file_broken_while_running_refuses_decisions_until_mended(
    settings: Settings, tmp_path: Path, bundles: dict[str, bytes]
) -> None:
    """A typo saved under a running gateway: no decision on the old rules or on a half
    read file; decisions go on once the file is mended."""
    policy_dir, agreements = _copy(tmp_path)
    policy = _policy(settings, policy_dir, agreements)
    policy.watch.reload_interval = 0.0
    name, sender, recipient = "ref_i12_lax2_to_njmu2", "LAX2", "NJMU2"
    good = (policy_dir / "rules.yaml").read_text(encoding="utf-8")
    _edit(policy_dir / "rules.yaml", _consent_value_typo)
    with pytest.raises(ConfigError) as caught:
        policy.decide(bundles[name], sender, recipient, now=NOW)
    assert "rules.yaml" in str(caught.value)
    (policy_dir / "rules.yaml").write_text(good, encoding="utf-8")
    assert policy.decide(bundles[name], sender, recipient, now=NOW).allowed
