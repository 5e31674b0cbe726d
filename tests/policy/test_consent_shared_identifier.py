"""A consent recorded under an identifier several different people share (a placeholder
HKID a registration desk types for "unknown") names none of them: it never carries a
patient's data across, whether the sharing is seen in the record itself (two Patients
of it, different MRNs, one placeholder) or known from the counters (two individuals
counted apart hold it). The transfer is held with ``consent.ambiguous-patient``, naming
the identifier's system only; a new permitting Consent under such an identifier is
refused at import (``policy.consent-ambiguous-patient``), a withdrawal is still kept."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from gateway.policy import (
    MemoryConsents,
    MemoryCounters,
    Policy,
    PolicyError,
    PolicyRecords,
    parse_consent,
)
from gateway.policy._engine import system_tag
from gateway.store import Store
from tests.store.dbs import BACKENDS, database

from .conftest import HKID, NOW, consent
from .test_individuals import MRN, PLACEHOLDER, patient_with

BASE = "ref_i12_lax2_to_njmu2"
SENDER, RECIPIENT, PURPOSE = "LAX2", "HKPMC", "second-opinion"
WANG, LI, ZHANG = (MRN, "0012345"), (MRN, "0067890"), (MRN, "0024680")


@pytest.fixture(params=BACKENDS)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    """The policy's store on SQLite and on PostgreSQL (when GATEWAY_TEST_DATABASE_URL
    names a server): ``shared()`` is SQL of its own on each (the driver's on SQLite)."""
    with contextlib.contextmanager(database)(request.param, tmp_path) as url:
        opened = Store.open(url)
        try:
            yield opened
        finally:
            opened.close()


def _rule(decision: Any) -> Any:
    return next(r for r in decision.results if r.rule == "consent")


def _assert_ambiguous(decision: Any) -> None:
    held = _rule(decision)
    assert decision.outcome == "hold" and decision.bundle_json is None
    assert held.reason_code == "consent.ambiguous-patient"
    # The system is named, never the identifier's value.
    assert all(HKID in text for text in held.reason.values())
    assert not any(PLACEHOLDER[1] in text for text in held.reason.values())
    assert "several different people share" in held.reason["en"]
    assert "多名不同患者共用" in held.reason["zh-Hans"]
    assert "多名不同病人共用" in held.reason["zh-Hant"]


def _two_sharers(bundle: bytes) -> dict[str, Any]:
    """王伟 and 李娜 in one record: different MRNs, the same placeholder HKID."""
    parsed: dict[str, Any] = orjson.loads(patient_with(bundle, [WANG, PLACEHOLDER], "王", "伟"))
    parsed["entry"].append(
        {
            "fullUrl": "urn:uuid:00000000-0000-4000-8000-0000000000c3",
            "resource": {
                "resourceType": "Patient",
                "identifier": [{"system": s, "value": v} for s, v in (LI, PLACEHOLDER)],
                "name": [{"text": "李娜"}],
            },
            "request": {"method": "POST", "url": "Patient"},
        }
    )
    return parsed


def _memory(policy: Policy, *resources: dict[str, Any]) -> MemoryConsents:
    return MemoryConsents(
        [parse_consent(r, policy.network, policy.data.purposes) for r in resources]
    )


def test_two_patients_of_one_record_sharing_the_consents_identifier_are_held(
    policy: Policy, bundles: dict[str, bytes]
) -> None:
    """One consent under the placeholder: before, it covered both Patients (each holds
    the placeholder) and their data crossed on it. One patient alone with it (nothing
    known shared) still goes on it."""
    on_placeholder = consent(PLACEHOLDER, RECIPIENT, (PURPOSE,), ident="consent-placeholder")
    alone = patient_with(bundles[BASE], [WANG, PLACEHOLDER], "王", "伟")
    decision = policy.decide(
        alone, SENDER, RECIPIENT, PURPOSE, consents=_memory(policy, on_placeholder), now=NOW
    )
    assert decision.allowed and decision.consents == ["consent-placeholder"]
    bundle = _two_sharers(bundles[BASE])
    decision = policy.decide(
        bundle, SENDER, RECIPIENT, PURPOSE, consents=_memory(policy, on_placeholder), now=NOW
    )
    _assert_ambiguous(decision)
    # Each with a consent of their own (by MRN): they cross, on those consents.
    theirs = [
        consent(WANG, RECIPIENT, (PURPOSE,), ident="consent-wang"),
        consent(LI, RECIPIENT, (PURPOSE,), ident="consent-li"),
    ]
    decision = policy.decide(
        bundle,
        SENDER,
        RECIPIENT,
        PURPOSE,
        consents=_memory(policy, on_placeholder, *theirs),
        now=NOW,
    )
    assert decision.allowed and decision.consents == ["consent-wang", "consent-li"]


def test_memory_counters_know_a_shared_pseudonym() -> None:
    counters = MemoryCounters()
    key = (2026, "lax2", "national-standard-contract", "sensitive")
    counters.add(*key, "mrn:wang", "hkid:unknown")
    assert counters.shared(2026, "lax2", ["hkid:unknown", "mrn:wang"]) == set()
    counters.add(*key, "mrn:li", "hkid:unknown")  # a second MRN: another person
    assert counters.shared(2026, "lax2", ["hkid:unknown", "mrn:wang"]) == {"hkid:unknown"}
    assert counters.shared(2027, "lax2", ["hkid:unknown"]) == {"hkid:unknown"}  # last year's
    assert counters.shared(2028, "lax2", ["hkid:unknown"]) == set()
    assert counters.shared(2026, "nsch", ["hkid:unknown"]) == set()  # another sender's


def _apply(records: PolicyRecords, base: bytes, ids: list[tuple[str, str]], name: str) -> Any:
    sent = patient_with(base, ids, name[0], name[1:])
    return records.apply(None, sent, SENDER, RECIPIENT, PURPOSE, now=NOW)


def test_a_consent_under_an_identifier_the_counters_know_shared_covers_no_one(
    store: Store, policy: Policy, bundles: dict[str, bytes]
) -> None:
    """王伟's consent recorded under the placeholder (nothing was known then); 张三
    (own consent by MRN) sent with the placeholder too: two individuals now hold it.
    李娜, sent with the placeholder and no consent of her own, must not cross on 王伟's;
    nor 王伟 himself any more (the consent cannot show whose it is)."""
    records = PolicyRecords(store, policy)
    records.import_consent(
        consent(PLACEHOLDER, RECIPIENT, (PURPOSE,), ident="consent-placeholder"), now=NOW
    )
    records.import_consent(consent(ZHANG, RECIPIENT, (PURPOSE,), ident="consent-zhang"), now=NOW)
    base = bundles[BASE]
    first = _apply(records, base, [WANG, PLACEHOLDER], "王伟")
    assert first.allowed and first.consents == ["consent-placeholder"]
    assert _apply(records, base, [ZHANG, PLACEHOLDER], "张三").allowed
    assert records.count(NOW.year, "lax2", "national-standard-contract", "sensitive") == 2

    _assert_ambiguous(_apply(records, base, [LI, PLACEHOLDER], "李娜"))
    _assert_ambiguous(_apply(records, base, [WANG, PLACEHOLDER], "王伟"))
    # 张三 goes on his own consent (by MRN), the placeholder's not relied on.
    again = _apply(records, base, [ZHANG, PLACEHOLDER], "张三")
    assert again.allowed and again.consents == ["consent-zhang"]
    tagged = f"{system_tag(HKID)}:{records._patient_key('|'.join(PLACEHOLDER))}"
    assert records.shared(NOW.year, "lax2", [tagged]) == {tagged}
    # Another process's records (nothing remembered) know it from the store.
    fresh = PolicyRecords(store, policy)
    _assert_ambiguous(_apply(fresh, base, [LI, PLACEHOLDER], "李娜"))


def test_a_new_consent_under_a_known_shared_identifier_is_refused(
    store: Store, policy: Policy, bundles: dict[str, bytes]
) -> None:
    """Refused at the door (the sender learns why), not kept to be ignored; a
    withdrawal of one kept before the sharing was known is still recorded."""
    records = PolicyRecords(store, policy)
    kept = consent(PLACEHOLDER, RECIPIENT, (PURPOSE,), ident="consent-placeholder")
    records.import_consent(kept, now=NOW)
    for n, (ids, name) in enumerate(((WANG, "王伟"), (LI, "李娜"))):
        records.import_consent(consent(ids, RECIPIENT, (PURPOSE,), ident=f"c-{n}"), now=NOW)
        assert _apply(records, bundles[BASE], [ids, PLACEHOLDER], name).allowed
    new = consent(PLACEHOLDER, RECIPIENT, ("referral",), ident="consent-placeholder-2")
    for fresh in (records, PolicyRecords(store, policy)):
        with pytest.raises(PolicyError) as caught:
            fresh.import_consent(new, now=NOW)
        error = caught.value
        assert error.code == "policy.consent-ambiguous-patient"
        assert error.location == "Consent.patient.identifier"
        assert HKID in str(error) and PLACEHOLDER[1] not in str(error)
    assert [r.id for r in records.list_consents()] == ["consent-placeholder", "c-0", "c-1"]
    # The kept one withdrawn by a new version (status inactive): recorded.
    withdrawn, _ = records.import_consent(dict(kept, status="inactive"), now=NOW)
    assert withdrawn.status == "inactive"
    assert records.list_consents()[0].status == "inactive"


@pytest.mark.parametrize("li_holds", ["as-typed", "respelled"])
def test_a_consent_under_another_spelling_of_a_shared_identifier_covers_no_one(
    policy: Policy, bundles: dict[str, bytes], li_holds: str
) -> None:
    """Two consents under two spellings of the placeholder (one pseudonym: a value is
    read trimmed and upper-cased); 王伟 holds both spellings, 李娜 one of them. Before,
    the spellings were filed under their one pseudonym one over the other, so only one
    was found shared: the other still carried 李娜's data across (whichever spelling the
    set's order put first; 李娜 holds each in turn)."""
    respelled = (HKID, " " + PLACEHOLDER[1].lower())
    bundle = _two_sharers(bundles[BASE])
    patients = [
        e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Patient"
    ]
    wang = next(p for p in patients if "王" in str(p))
    wang["identifier"].append({"system": HKID, "value": respelled[1]})
    li = next(p for p in patients if "李娜" in str(p))
    held = PLACEHOLDER if li_holds == "as-typed" else respelled
    li["identifier"] = [{"system": s, "value": v} for s, v in (LI, held)]
    consents = _memory(
        policy,
        consent(PLACEHOLDER, RECIPIENT, (PURPOSE,), ident="consent-placeholder"),
        consent(respelled, RECIPIENT, (PURPOSE,), ident="consent-respelled"),
    )
    decision = policy.decide(
        orjson.dumps(bundle), SENDER, RECIPIENT, PURPOSE, consents=consents, now=NOW
    )
    _assert_ambiguous(decision)
