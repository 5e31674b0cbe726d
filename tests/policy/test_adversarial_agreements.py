"""Adversarial: the basis a transfer crossed on, as the decision, the Provenance and the
audit record it, when agreements overlap; a Bundle of which one entry's data category
the agreement does not cover leaves as a whole or not at all."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path
from typing import Any

import orjson
import yaml

from gateway import Settings
from gateway.audit import AuditLog
from gateway.policy import MemoryConsents, Policy, PolicyRecords, parse_consent
from gateway.store import Store

from .conftest import HKID, KEY, NOW, consent

REPO = Path(__file__).resolve().parents[2]
NAME, SENDER, RECIPIENT = "ref_i12_nsch_to_hkpmc", "NSCH", "HKPMC"
GBA = "GBA-SC-2024-NSCH-HKPMC"


def _policy(settings: Settings, tmp_path: Path, *extra: dict[str, Any], first: bool) -> Policy:
    """The shipped data with ``extra`` agreements before (``first``) or after the rest."""
    agreements = tmp_path / "agreements.yaml"
    shutil.copy(REPO / "seeds" / "agreements.yaml", agreements)
    data = yaml.safe_load(agreements.read_text(encoding="utf-8"))
    data["agreements"] = [*extra, *data["agreements"]] if first else [*data["agreements"], *extra]
    agreements.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    return Policy(dataclasses.replace(settings, policy_agreements=agreements), key=KEY)


def _national(valid_to: str, **kw: Any) -> dict[str, Any]:
    return {
        "id": f"SC-NSCH-HKPMC-{valid_to}",
        "basis": "national-standard-contract",
        "parties": ["nsch", "hkpmc"],
        "purposes": ["referral"],
        "categories": ["demographics", "clinical", "imaging"],
        "valid": {"from": "2020-01-01", "to": valid_to},
        **kw,
    }


def _basis_in_audit(store: Store) -> list[tuple[str, str]]:
    out = []
    for entry in AuditLog(store).rows():
        resource = entry.resource()
        for ext in resource.get("extension") or []:
            parts = {e["url"]: e for e in ext["extension"]}
            out.append((parts["basis"]["valueCoding"]["code"], parts["agreement"]["valueString"]))
    return out


def test_overlapping_agreements_the_first_that_allows_is_the_basis_recorded(
    settings: Settings, tmp_path: Path, bundles: dict[str, bytes], store: Store
) -> None:
    """An expired agreement listed first does not refuse the transfer another allows;
    the decision, its Provenance and its audit event name the one that allowed."""
    policy = _policy(settings, tmp_path, _national("2025-12-31"), first=True)
    records = PolicyRecords(store, policy)
    records.import_consent(consent((HKID, "K583726A"), RECIPIENT))
    decision = records.apply(None, bundles[NAME], SENDER, RECIPIENT, "referral", now=NOW)
    assert decision.allowed
    assert (decision.basis, decision.agreement) == ("gba-standard-contract", GBA)
    out = orjson.loads(decision.bundle_json or b"{}")
    [provenance] = [
        e["resource"] for e in out["entry"] if e["resource"]["resourceType"] == "Provenance"
    ]
    assert provenance["policy"][0].endswith("/agreement/" + GBA)
    assert ("gba-standard-contract", GBA) in _basis_in_audit(store)
    assert all(agreement == GBA for _, agreement in _basis_in_audit(store))


def test_overlapping_agreements_in_force_the_first_listed_wins(
    settings: Settings, tmp_path: Path, bundles: dict[str, bytes]
) -> None:
    policy = _policy(settings, tmp_path, _national("2027-12-31"), first=True)
    consents = MemoryConsents(
        [
            parse_consent(
                consent((HKID, "K583726A"), RECIPIENT), policy.network, policy.data.purposes
            )
        ]
    )
    decision = policy.decide(
        bundles[NAME], SENDER, RECIPIENT, "referral", consents=consents, now=NOW
    )
    assert (decision.basis, decision.agreement) == (
        "national-standard-contract",
        "SC-NSCH-HKPMC-2027-12-31",
    )


def test_one_entry_outside_the_agreements_categories_refuses_the_whole_bundle(
    settings: Settings, tmp_path: Path, bundles: dict[str, bytes]
) -> None:
    """NSCH → HKPMC on an agreement for demographics and clinical data only (listed
    first): a referral with an imaging report in it is refused as a whole under it;
    nothing of it, not even the entries that agreement covers, leaves on that basis."""
    narrow = _national("2027-12-31", categories=["demographics", "clinical"])
    narrow["id"] = "SC-NARROW"
    policy = _policy(settings, tmp_path, narrow, first=True)
    policy.data.agreements = [a for a in policy.data.agreements if a.id != GBA]
    policy.invalidate()
    bundle = orjson.loads(bundles[NAME])
    bundle["entry"].append(
        {
            "fullUrl": "urn:uuid:00000000-0000-4000-8000-0000000000c1",
            "resource": {
                "resourceType": "DiagnosticReport",
                "status": "final",
                "code": {"text": "CT"},
            },
            "request": {"method": "POST", "url": "DiagnosticReport"},
        }
    )
    consents = MemoryConsents(
        [
            parse_consent(
                consent((HKID, "K583726A"), RECIPIENT), policy.network, policy.data.purposes
            )
        ]
    )
    decision = policy.decide(bundle, SENDER, RECIPIENT, "referral", consents=consents, now=NOW)
    refused = next(r for r in decision.results if r.rule == "agreement")
    assert (decision.outcome, refused.reason_code) == ("deny", "agreement.category")
    assert decision.bundle_json is None and decision.basis is None
