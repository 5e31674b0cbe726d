"""Individuals are people, not identifiers (PIPL / PCPD thresholds count people): one
patient sent with an MRN, then with the MRN and the resident ID, then with the resident
ID alone is ONE individual for the yearly threshold and for the transfer report, which
agree; and a decision read back shows the consents it rested on."""

from __future__ import annotations

import dataclasses
from typing import Any

import orjson
import pytest

from gateway import Converter, Settings
from gateway.audit._transfers import individuals, join_people, transfers
from gateway.console._data import detail
from gateway.policy import MemoryCounters, Policy, PolicyRecords
from gateway.policy._cli import render_decision
from gateway.processing import process_message
from gateway.store import Incoming, Store

from .conftest import KEY, NOW, REPO, RESIDENT_ID, consent

MRN = "https://fhir.lax2.example.cn/sid/mrn"
WANG_MRN, WANG_ID = (MRN, "0012345"), (RESIDENT_ID, "341122196604200135")
LI_MRN, LI_ID = (MRN, "0067890"), (RESIDENT_ID, "110101199001011234")
ZHANG_ID = (RESIDENT_ID, "320102198502023456")
BASIS = "national-standard-contract"


def patient_with(bundle: bytes, ids: list[tuple[str, str]], family: str, given: str) -> bytes:
    """The LAX2 referral with its Patient as ``ids`` and named ``family given``."""
    parsed: dict[str, Any] = orjson.loads(bundle)
    for entry in parsed["entry"]:
        resource = entry["resource"]
        if resource["resourceType"] == "Patient":
            resource["identifier"] = [{"system": s, "value": v} for s, v in ids]
            resource["name"] = [
                {"use": "official", "text": family + given, "family": family, "given": [given]}
            ]
            entry["request"] = {"method": "POST", "url": "Patient"}
    return orjson.dumps(parsed)


@pytest.fixture
def limited(settings: Settings, policy: Policy) -> Policy:
    """The demo policy with a threshold of two individuals on the mainland basis."""
    bases = {
        k: dataclasses.replace(b, volume_limit=2, volume_warning=2) if k == BASIS else b
        for k, b in policy.data.bases.items()
    }
    return Policy(settings, data=dataclasses.replace(policy.data, bases=bases), key=KEY)


def test_one_patient_with_two_identifiers_is_one_individual(
    store: Store, limited: Policy, bundles: dict[str, bytes]
) -> None:
    records = PolicyRecords(store, limited)
    for ident, name in (
        (WANG_MRN, "wang-mrn"),
        (WANG_ID, "wang-id"),
        (LI_MRN, "li"),
        (ZHANG_ID, "zhang"),
    ):
        records.import_consent(
            consent(ident, "HKPMC", ("second-opinion",), ident=f"consent-{name}"), now=NOW
        )
    base = bundles["ref_i12_lax2_to_njmu2"]
    sent = [
        patient_with(base, [WANG_MRN], "王", "伟"),  # the MRN alone
        patient_with(base, [WANG_MRN, WANG_ID], "王", "伟"),  # both: the same person
        patient_with(base, [WANG_ID], "王", "伟"),  # the resident ID alone
        patient_with(base, [LI_MRN, LI_ID], "李", "娜"),  # a second person, two ids
    ]
    made = [records.apply(None, b, "LAX2", "HKPMC", "second-opinion", now=NOW) for b in sent]
    assert [d.outcome for d in made] == ["allow-with-changes"] * 4
    # Two people: the threshold (2) reached, not passed; a third is refused.
    assert records.count(NOW.year, "lax2", BASIS, "sensitive") == 2
    third = records.apply(
        None, patient_with(base, [ZHANG_ID], "张", "三"), "LAX2", "HKPMC", "second-opinion", now=NOW
    )
    assert third.outcome == "deny"
    assert records.count(NOW.year, "lax2", BASIS, "sensitive") == 2
    # The report counts the same people the threshold did.
    row = next(r for r in transfers(store, NOW.year) if r.partner == "hkpmc")
    assert (row.basis, len(row.records), row.individuals) == (BASIS, 4, 2)
    assert row.to_json()["individuals"] == 2


def test_a_record_joining_two_counted_identifiers_merges_them(
    store: Store, policy: Policy, bundles: dict[str, bytes]
) -> None:
    """Counted apart first (the MRN, then the resident ID), then a record naming both:
    the count goes back to one (the union kept in the counter rows)."""
    records = PolicyRecords(store, policy)
    for ident, name in ((WANG_MRN, "mrn"), (WANG_ID, "id")):
        records.import_consent(
            consent(ident, "HKPMC", ("second-opinion",), ident=f"consent-{name}"), now=NOW
        )
    base = bundles["ref_i12_lax2_to_njmu2"]
    for ids in ([WANG_MRN], [WANG_ID]):
        records.apply(
            None, patient_with(base, ids, "王", "伟"), "LAX2", "HKPMC", "second-opinion", now=NOW
        )
    assert records.count(NOW.year, "lax2", BASIS, "sensitive") == 2  # not known to be one yet
    both = patient_with(base, [WANG_MRN, WANG_ID], "王", "伟")
    decision = records.apply(None, both, "LAX2", "HKPMC", "second-opinion", now=NOW)
    assert decision.allowed
    assert records.count(NOW.year, "lax2", BASIS, "sensitive") == 1
    row = next(r for r in transfers(store, NOW.year) if r.partner == "hkpmc")
    assert row.individuals == 1


def test_memory_counters_count_people() -> None:
    counters = MemoryCounters()
    key = (2026, "lax2", BASIS, "sensitive")
    counters.add(*key, "wang-mrn")
    counters.add(*key, "wang-id")
    assert counters.count(*key) == 2
    assert counters.joined(*key, [["wang-mrn", "wang-id"]]) == -1  # they are one
    assert counters.joined(*key, [["li-mrn", "li-id"]]) == 1
    counters.add(*key, "wang-mrn", "wang-id")
    assert counters.count(*key) == 1 and counters.has(*key, "wang-id")


def test_union_of_pseudonym_sets() -> None:
    assert individuals([("a",), ("b",), ("a", "b"), ("c", "d"), ("d",)]) == 2
    assert individuals([]) == 0
    found = join_people([("a", "x"), ("y",)], {"a": "I1", "b": "I2"})
    assert sorted(found) == [(["x"], ["I1"]), (["y"], [])]


def test_a_decision_read_back_shows_its_consents(
    store: Store, converter: Converter, policy: Policy
) -> None:
    records = PolicyRecords(store, policy)
    raw = (REPO / "examples" / "hl7v2" / "ref_i12_lax2_to_njmu2.hl7").read_bytes()
    message = store.receive(Incoming(raw, "cli")).id
    process_message(store, converter, message)
    bundle = store.get(message).outcomes[-1].output  # type: ignore[union-attr]
    assert bundle is not None
    records.import_consent(
        consent(WANG_ID, "HKPMC", ("second-opinion",), ident="consent-wangwei-2026"), now=NOW
    )
    made = records.apply(message, bundle, "LAX2", "HKPMC", "second-opinion", now=NOW)
    assert made.allowed and made.consents == ["consent-wangwei-2026"]
    back = records.get(made.id or 0)
    assert back.consents == ["consent-wangwei-2026"]
    assert back.to_json()["consents"] == ["consent-wangwei-2026"]  # API and --json
    text = render_decision(policy, back)
    assert "所依据的同意书 / consents relied on: consent-wangwei-2026" in text
    assert "341122196604200135" not in text and "0012345" not in text  # ids, no patient
    shown = detail(store, message)
    assert shown is not None
    assert [d["consents"] for d in shown.decisions] == [["consent-wangwei-2026"]]
    assert back.people == made.people and len(made.people) == 1  # one Patient, its ids
