"""Adversarial: a partner whose jurisdiction is mis-typed or missing. The network's
``jurisdiction`` is ISO 3166-2 (seeds/network.yaml): Hong Kong is ``CN-HK`` there and
Macao ``CN-MO`` — neither is the mainland — and a lower-case or missing one must not make
a mainland sender look like it exports nothing (no prohibited-code search, no count)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from gateway import Settings
from gateway.errors import ConfigError
from gateway.network import Network
from gateway.policy import Policy

from .conftest import KEY, NOW, with_genomic_report

REPO = Path(__file__).resolve().parents[2]


def _network(tmp_path: Path, key: str, jurisdiction: str | None) -> Network:
    data = yaml.safe_load((REPO / "seeds" / "network.yaml").read_text(encoding="utf-8"))
    for inst in data["institutions"]:
        if inst["key"] == key:
            if jurisdiction is None:
                inst.pop("jurisdiction")
            else:
                inst["jurisdiction"] = jurisdiction
    path = tmp_path / "network.yaml"
    path.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    return Network.load(path)


@pytest.mark.parametrize("written", ["cn-ah", "CN-ah", " CN-AH"])
def test_a_mainland_sender_in_lower_case_still_exports_from_the_mainland(
    settings: Settings, tmp_path: Path, bundles: dict[str, bytes], written: str
) -> None:
    """LAX2 (Anhui) sends human genetic data to Hong Kong: refused however its
    jurisdiction is spelt (before: "cn-ah" was not "CN", so nothing was searched)."""
    policy = Policy(settings, network=_network(tmp_path, "lax2", written), key=KEY)
    bundle = with_genomic_report(bundles["ref_i12_lax2_to_njmu2"])
    decision = policy.decide(bundle, "LAX2", "HKPMC", "second-opinion", now=NOW)
    found = next(r for r in decision.results if r.rule == "prohibited-category")
    assert found.outcome == "deny" and decision.outcome == "deny"


@pytest.mark.parametrize("written", ["CN-HK", "cn-hk", "hk"])
def test_hong_kong_as_iso_3166_2_is_hong_kong_not_the_mainland(
    settings: Settings, tmp_path: Path, written: str
) -> None:
    policy = Policy(settings, network=_network(tmp_path, "hkpmc", written), key=KEY)
    hkpmc = policy.institution("HKPMC", "recipient")
    assert policy.data.jurisdiction(hkpmc) == "HK"
    assert policy.data.in_region(hkpmc, "gba")


def test_macao_as_iso_3166_2_is_macao(settings: Settings, tmp_path: Path) -> None:
    policy = Policy(settings, network=_network(tmp_path, "hkpmc", "CN-MO"), key=KEY)
    assert policy.data.jurisdiction(policy.institution("HKPMC", "recipient")) == "MO"


@pytest.mark.parametrize("written", [None, "", "Hong Kong", "XX"])
def test_a_partner_without_a_known_jurisdiction_is_never_decided(
    settings: Settings, tmp_path: Path, bundles: dict[str, bytes], written: str | None
) -> None:
    """No place, no basis: the transfer is refused as a configuration error naming the
    partner, never decided as if both parties were in one place."""
    policy = Policy(settings, network=_network(tmp_path, "lax2", written), key=KEY)
    with pytest.raises(ConfigError) as caught:
        policy.decide(bundles["ref_i12_lax2_to_njmu2"], "LAX2", "HKPMC", "second-opinion", now=NOW)
    assert "lax2" in str(caught.value) and "jurisdiction" in str(caught.value)
