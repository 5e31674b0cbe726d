"""Individuals are people, not identifiers (PIPL / PCPD thresholds count people): one
patient sent with an MRN, then with the MRN and the resident ID, then with the resident
ID alone is ONE individual for the yearly threshold and for the transfer report, which
agree; patients who share an identifier (a placeholder HKID) but differ in another of
one system (their MRNs) are never joined, directly or through a chain; a merge of
individuals counted apart is noted on the decision; and a decision read back shows the
consents it rested on."""

from __future__ import annotations

import dataclasses
from typing import Any

import orjson
import pytest

from gateway import Converter, Settings
from gateway.audit import AuditLog
from gateway.audit._transfers import individuals, join_people, transfers
from gateway.console._data import detail
from gateway.policy import MemoryCounters, Policy, PolicyRecords
from gateway.policy._cli import render_decision
from gateway.processing import process_message
from gateway.store import Incoming, Store

from .conftest import HKID, KEY, NOW, REPO, RESIDENT_ID, consent

MRN = "https://fhir.lax2.example.cn/sid/mrn"
WANG_MRN, WANG_ID = (MRN, "0012345"), (RESIDENT_ID, "341122196604200135")
LI_MRN, LI_ID = (MRN, "0067890"), (RESIDENT_ID, "110101199001011234")
ZHANG_ID = (RESIDENT_ID, "320102198502023456")
# The placeholder a registration desk types for an "unknown" HKID, shared by patients.
PLACEHOLDER = (HKID, "A000000(0)")
INSURANCE = "https://fhir.lax2.example.cn/sid/insurance"
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
    # The merge is noted on the decision, for the data-protection officer: its audit
    # event says two individuals counted apart became one.
    assert decision.notes == [("individuals-joined", "1")]
    events = [orjson.loads(e.canonical) for e in AuditLog(store).rows()]
    details = [
        [d for entity in e.get("entity", []) for d in entity.get("detail", [])] for e in events
    ]
    joined = {"type": "individuals-joined", "valueString": "1"}
    assert [joined in found for found in details].count(True) == 1
    assert joined in details[-1]  # the third decision's event, the last


def test_memory_counters_count_people() -> None:
    counters = MemoryCounters()
    key = (2026, "lax2", BASIS, "sensitive")
    assert counters.add(*key, "mrn:wang-m") == 0
    assert counters.add(*key, "rid:wang-r") == 0
    assert counters.count(*key) == 2
    assert counters.joined(*key, [["mrn:wang-m", "rid:wang-r"]]) == -1  # they are one
    assert counters.joined(*key, [["mrn:li-m", "rid:li-r"]]) == 1
    assert counters.add(*key, "mrn:wang-m", "rid:wang-r") == 1  # one merge
    assert counters.count(*key) == 1 and counters.has(*key, "rid:wang-r")
    # A placeholder HKID 王伟 and 李娜 both carry: their MRNs differ, two people.
    counters.add(*key, "mrn:wang-m", "hkid:unknown")
    assert counters.joined(*key, [["mrn:li-m", "hkid:unknown"]]) == 1
    assert counters.add(*key, "mrn:li-m", "hkid:unknown") == 0
    assert counters.count(*key) == 2


def test_union_of_pseudonym_sets() -> None:
    assert individuals([("a",), ("b",), ("a", "b"), ("c", "d"), ("d",)]) == 2
    assert individuals([]) == 0
    found = join_people([("t:a", "t:x"), ("t:y",)], {"I1": {"t:a"}, "I2": {"t:b"}})
    assert sorted(found) == [(["t:x"], ["I1"]), (["t:y"], [])]


def test_a_shared_identifier_joins_no_two_values_of_one_system() -> None:
    # Three patients, different MRNs, one placeholder HKID: three people.
    placeholder = [("mrn:m1", "hkid:u"), ("mrn:m2", "hkid:u"), ("mrn:m3", "hkid:u")]
    assert individuals(placeholder) == 3
    # A{m1,x}, B{x,y}, C{m2,y}: A and B join, C would give them a second MRN.
    chain = [("mrn:m1", "hkid:x"), ("hkid:x", "ins:y"), ("mrn:m2", "ins:y")]
    assert individuals(chain) == 2
    found = join_people(chain, {})
    assert sorted(found) == [(["hkid:x", "ins:y", "mrn:m1"], []), (["ins:y", "mrn:m2"], [])]
    # The same against individuals counted already: B joins A's, C stays new.
    found = join_people([chain[1], chain[2]], {"A": {"mrn:m1", "hkid:x"}})
    assert sorted(found) == [(["ins:y"], ["A"]), (["ins:y", "mrn:m2"], [])]
    # One Patient's two values of a system are its own: another set of a subset joins.
    assert individuals([("mrn:m1", "mrn:m9"), ("mrn:m9", "hkid:z")]) == 1
    # Untagged (stored before migration 0012): joined only by a pseudonym both hold,
    # never into a conflict: an old set holding a value the other lacks stays apart.
    assert individuals([("a",), ("mrn:a", "hkid:b"), ("b",)]) == 1
    assert individuals([("a", "c"), ("mrn:a", "hkid:b")]) == 2


def _apply(records: PolicyRecords, base: bytes, ids: list[tuple[str, str]], name: str) -> Any:
    family, given = name[0], name[1:]
    sent = patient_with(base, ids, family, given)
    return records.apply(None, sent, "LAX2", "HKPMC", "second-opinion", now=NOW)


def _consents(records: PolicyRecords, *idents: tuple[str, str]) -> None:
    for n, ident in enumerate(idents):
        records.import_consent(
            consent(ident, "HKPMC", ("second-opinion",), ident=f"consent-{n}"), now=NOW
        )


def test_patients_sharing_a_placeholder_hkid_are_three_people(
    store: Store, policy: Policy, bundles: dict[str, bytes]
) -> None:
    """Three patients, different MRNs, the same placeholder HKID: 3 in the policy's
    count and in the transfer report (the union-find counted 1)."""
    records = PolicyRecords(store, policy)
    patients = [((MRN, "0012345"), "王伟"), ((MRN, "0067890"), "李娜"), ((MRN, "0024680"), "张三")]
    _consents(records, *(mrn for mrn, _ in patients))
    base = bundles["ref_i12_lax2_to_njmu2"]
    made = [_apply(records, base, [mrn, PLACEHOLDER], name) for mrn, name in patients]
    assert all(d.allowed for d in made)
    assert records.count(NOW.year, "lax2", BASIS, "sensitive") == 3
    row = next(r for r in transfers(store, NOW.year) if r.partner == "hkpmc")
    assert (len(row.records), row.individuals) == (3, 3)
    assert all(not d.notes for d in made)  # nothing was merged
    # 王伟 again by his MRN alone: his individual (nothing of another system).
    assert not _apply(records, base, [(MRN, "0012345")], "王伟").notes
    assert records.count(NOW.year, "lax2", BASIS, "sensitive") == 3
    # Then by his MRN and his real HKID: a second HKID beside the placeholder counted
    # for him, so apart (counted more, the safe side), and joined to no one else.
    _apply(records, base, [(MRN, "0012345"), (HKID, "C668668(E)")], "王伟")
    assert records.count(NOW.year, "lax2", BASIS, "sensitive") == 4


def test_two_patients_of_one_record_sharing_a_placeholder_are_two(
    store: Store, policy: Policy
) -> None:
    """One record, 王伟 and 李娜, different MRNs, one placeholder HKID: two individuals
    counted (each its own id, though both hold the placeholder's row)."""
    where = {"year": 2026, "sender": "lax2", "basis": BASIS, "category": "sensitive"}
    people = [["mrn:wang-m", "hkid:unknown"], ["mrn:li-m", "hkid:unknown"]]
    with store.engine.begin() as conn:
        assert PolicyRecords._count_people(conn, where, people) == 0
    assert PolicyRecords(store, policy).count(2026, "lax2", BASIS, "sensitive") == 2


def test_a_conflict_through_a_chain_joins_no_one(
    store: Store, policy: Policy, bundles: dict[str, bytes]
) -> None:
    """A{MRN m1, HKID x}, B{HKID x, insurance y}, C{MRN m2, insurance y}: B is A's
    person, C is not (joining it would give one individual two MRNs)."""
    records = PolicyRecords(store, policy)
    a, b, c = (
        [(MRN, "0012345"), (HKID, "C668668(E)")],
        [(HKID, "C668668(E)"), (INSURANCE, "F-2026-001")],
        [(MRN, "0067890"), (INSURANCE, "F-2026-001")],
    )
    _consents(records, (MRN, "0012345"), (HKID, "C668668(E)"), (MRN, "0067890"))
    base = bundles["ref_i12_lax2_to_njmu2"]
    for ids, name in ((a, "王伟"), (b, "王伟"), (c, "李娜")):
        assert _apply(records, base, ids, name).allowed
    assert records.count(NOW.year, "lax2", BASIS, "sensitive") == 2
    row = next(r for r in transfers(store, NOW.year) if r.partner == "hkpmc")
    assert row.individuals == 2


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
