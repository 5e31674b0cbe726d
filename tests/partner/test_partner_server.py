"""Every Bundle the gateway makes is applied by a strict partner server, in any order,
once and again, and changes arrive (issue 9, first "Done when" line).

The partner is Medplum's router (tests/partner/conftest.py) with conditional references
resolved strictly (no match → the transaction fails), atomic transactions and Medplum's
limit of 8 entries per transaction with conditional entries: each Bundle goes through
the gateway's split for such a partner (gateway/partners/), as the outbox will send it.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest

from gateway import Converter
from gateway.partners import Partner
from tests import outputs
from tests.outputs import GOLDEN, Named, bundles, run_demo_into
from tests.partner.conftest import PartnerServer

MEDPLUM = Partner("partner", "http://127.0.0.1/fhir/R4", max_entries=8, write="transaction")


@pytest.fixture(scope="module")
def demo_out(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return run_demo_into(tmp_path_factory.mktemp("demo-home"))


@pytest.fixture(scope="module")
def every_bundle(demo_out: Path) -> list[Named]:
    """The goldens, examples/ and what `make demo` writes (variants included)."""
    return outputs.every_bundle(demo_out)


def _apply(partner: PartnerServer, name: str, bundle: dict[str, Any]) -> None:
    """Send the Bundle as the gateway's split for this partner says; every part must be
    applied in full (an atomic transaction answers 200 with every entry 200/201)."""
    for n, part in enumerate(MEDPLUM.split(bundle)):
        assert len(part["entry"]) <= MEDPLUM.max_entries
        answer = partner.post(part)
        assert answer.status_code == 200, f"{name} part {n}: {answer.text[:800]}"
        statuses = [e["response"]["status"][:3] for e in answer.json()["entry"]]
        assert all(s in ("200", "201") for s in statuses), f"{name} part {n}: {statuses}"


def _convert(converter: Converter, raw: bytes) -> dict[str, Any]:
    [record] = converter.convert(raw)
    assert record.ok and record.bundle is not None, [i.line() for i in record.issues]
    return dict(record.bundle)


def test_every_bundle_is_applied_in_any_order_once_and_again(
    partner: PartnerServer, every_bundle: list[Named]
) -> None:
    assert len(every_bundle) > 40
    partner.reset()
    first = list(every_bundle)
    random.Random(9).shuffle(first)  # a fixed order unlike the story's, so reruns agree
    for name, bundle in first:
        _apply(partner, name, bundle)
    after_first = partner.count()
    assert after_first["ServiceRequest"] > 0 and after_first["DiagnosticReport"] > 0

    for name, bundle in reversed(every_bundle):  # again, in another order
        _apply(partner, name, bundle)
    assert partner.count() == after_first, "the second round created resources"


def test_a_cancellation_revokes_the_referral_at_the_partner(
    partner: PartnerServer, converter: Converter
) -> None:
    partner.reset()
    referral = _convert(converter, (GOLDEN / "hl7v2" / "ref_i12_gb18030.hl7").read_bytes())
    cancel = _convert(converter, (GOLDEN / "hl7v2" / "ref_i14_cancel.hl7").read_bytes())
    assert len(referral["entry"]) > MEDPLUM.max_entries  # it has to be split
    query = "ServiceRequest?identifier=https://fhir.lax2.example.cn/sid/referral|REF20260611001"

    _apply(partner, "REF^I12", referral)
    assert [r["status"] for r in partner.search(query)] == ["active"]
    _apply(partner, "REF^I14", cancel)
    assert [r["status"] for r in partner.search(query)] == ["revoked"]


def test_a_final_report_replaces_the_preliminary_one(
    partner: PartnerServer, converter: Converter
) -> None:
    partner.reset()
    final = (GOLDEN / "hl7v2" / "oru_r01_chinese.hl7").read_bytes()
    # The same report first sent preliminary: OBR-25 and each OBX-11 say P.
    segments = final.split(b"\r")
    for n, segment in enumerate(segments):
        fields = segment.split(b"|")
        if fields[0] == b"OBR":
            fields[25] = b"P"
        if fields[0] == b"OBX":
            fields[11] = b"P"
        segments[n] = b"|".join(fields)
    preliminary = b"\r".join(segments)
    query = "DiagnosticReport?identifier=https://fhir.nsch.example.cn/sid/report|NSR2026061601"

    _apply(partner, "preliminary", _convert(converter, preliminary))
    assert [r["status"] for r in partner.search(query)] == ["preliminary"]
    _apply(partner, "final", _convert(converter, final))
    assert [r["status"] for r in partner.search(query)] == ["final"]
    findings = (
        "Observation?identifier=https://fhir.nsch.example.cn/sid/report-findings|NSR2026061601"
    )
    assert [r["status"] for r in partner.search(findings)] == ["final"]


def _translations(node: Any) -> int:
    if isinstance(node, dict):
        own = int(node.get("url") == "http://hl7.org/fhir/StructureDefinition/translation")
        return own + sum(_translations(v) for v in node.values())
    if isinstance(node, list):
        return sum(_translations(v) for v in node)
    return 0


def test_the_bilingual_variant_after_the_original_arrives_whole(
    partner: PartnerServer, demo_out: Path
) -> None:
    partner.reset()
    [(_, original)] = bundles(next((demo_out / "oru_r01_nsch_cta_zh").glob("*.json")), "original")
    [(_, variant)] = bundles(demo_out / "variants" / "nsch-cta-for-nsgp.json", "variant")
    [sent] = [
        e["resource"]
        for e in variant["entry"]
        if e["resource"]["resourceType"] == "DiagnosticReport"
        and e["resource"]["identifier"][0]["value"] == "NSR2026061601"
    ]
    assert sent["presentedForm"] and _translations(sent)
    query = "DiagnosticReport?identifier=https://fhir.nsch.example.cn/sid/report|NSR2026061601"

    _apply(partner, "original", original)
    _apply(partner, "variant", variant)
    [stored] = partner.search(query)
    assert _translations(stored) == _translations(sent)

    def forms(report: dict[str, Any]) -> list[tuple[Any, ...]]:
        return [
            (f.get("language"), f["contentType"], f.get("data")) for f in report["presentedForm"]
        ]

    assert forms(stored) == forms(sent) and len(forms(sent)) > 1


def test_without_the_split_the_partner_refuses_a_referral(
    partner: PartnerServer, converter: Converter
) -> None:
    # Why the split exists: Medplum's limit is in force on this partner.
    partner.reset()
    referral = _convert(converter, (GOLDEN / "hl7v2" / "ref_i12_gb18030.hl7").read_bytes())
    answer = partner.post(referral)
    assert answer.status_code == 400 and "too many entries" in answer.text
    assert partner.count() == {}


def test_an_interpreter_in_the_xcn_shape_passes_the_partners_validation(
    partner: PartnerServer, converter: Converter
) -> None:
    # OBR-32 as 2077^戴^奇山: the partner validates every write (ext-1 included)
    partner.reset()
    raw = (GOLDEN / "hl7v2" / "oru_r01_chinese.hl7").read_bytes()
    raw = raw.replace("NS0415&何&慧敏&&&&&&NSCH".encode(), "2077^戴^奇山".encode())
    _apply(partner, "XCN-shaped OBR-32", _convert(converter, raw))
    [stored] = partner.search("Practitioner?identifier=https://fhir.nsch.example.cn/sid/staff|2077")
    assert stored["name"][0]["family"] == "戴"


def test_batches_apply_the_same_as_transactions(
    partner: PartnerServer, every_bundle: list[Named]
) -> None:
    # A partner without atomic transactions: ordered batches of independent entries.
    batch = Partner("partner", "http://127.0.0.1/fhir/R4", max_entries=8, write="batch")
    partner.reset()
    for name, bundle in every_bundle:
        _apply(partner, name, bundle)
    by_transactions = partner.count()
    partner.reset()
    for name, bundle in every_bundle:
        for n, part in enumerate(batch.split(bundle)):
            answer = partner.post(part)
            assert answer.status_code == 200, f"{name} batch {n}: {answer.text[:800]}"
            statuses = [e["response"]["status"][:3] for e in answer.json()["entry"]]
            assert all(s in ("200", "201") for s in statuses), (
                f"{name} batch {n}: {answer.text[:800]}"
            )
    assert partner.count() == by_transactions
