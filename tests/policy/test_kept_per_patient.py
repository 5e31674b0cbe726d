"""What the stage keeps between decisions (pass 1 of the minimisation per patient, the
pseudonyms) follows the patient: a new MRN finds it, a new HKID, address or phone does
not — and the values of the new one are searched for and replaced everywhere."""

from __future__ import annotations

from typing import Any

import orjson

from gateway import Settings
from gateway.policy import MemoryConsents, Policy, parse_consent, pseudonym

from .conftest import HKID, KEY, NOW, consent


def _patient(bundle: dict[str, Any]) -> dict[str, Any]:
    entries = bundle["entry"]
    return next(e["resource"] for e in entries if e["resource"]["resourceType"] == "Patient")


def _decide(policy: Policy, bundle: dict[str, Any], hkid: str) -> Any:
    consents = MemoryConsents(
        [parse_consent(consent((HKID, hkid), "HKPMC"), policy.network, policy.data.purposes)]
    )
    text = orjson.dumps(bundle, option=orjson.OPT_INDENT_2) + b"\n"
    decision = policy.decide(bundle, "NSCH", "HKPMC", consents=consents, now=NOW, text=text)
    assert decision.outcome == "allow-with-changes", [r.reason["en"] for r in decision.results]
    return decision


def _quoting(bundle: dict[str, Any], words: str) -> dict[str, Any]:
    out = orjson.loads(orjson.dumps(bundle))
    request = next(
        e["resource"] for e in out["entry"] if e["resource"]["resourceType"] == "ServiceRequest"
    )
    request["note"] = [*request.get("note", []), {"text": words}]
    return out


def test_a_new_mrn_finds_what_was_kept(settings: Settings, bundles: dict[str, bytes]) -> None:
    policy = Policy(settings, key=KEY)
    first = orjson.loads(bundles["ref_i12_nsch_to_hkpmc"])
    _decide(policy, first, "K583726A")
    second = orjson.loads(bundles["ref_i12_nsch_to_hkpmc"])
    mrn = next(i for i in _patient(second)["identifier"] if i["system"].endswith("/mrn"))
    mrn["value"] = "0099999"
    decision = _decide(policy, second, "K583726A")
    assert len(policy._passes) == 1  # the same patient as far as pass 1 goes
    out = _patient(decision.bundle)
    assert {i["value"] for i in out["identifier"]} >= {
        "0099999",
        pseudonym(KEY, HKID, "K583726A"),
    }


def test_a_new_hkid_address_or_phone_is_minimised_anew(
    settings: Settings, bundles: dict[str, bytes]
) -> None:
    policy = Policy(settings, key=KEY)
    source = orjson.loads(bundles["ref_i12_nsch_to_hkpmc"])
    _decide(policy, source, "K583726A")
    changed = orjson.loads(bundles["ref_i12_nsch_to_hkpmc"])
    patient = _patient(changed)
    hkid = next(i for i in patient["identifier"] if i["system"] == HKID)
    hkid["value"] = "M123456(7)"
    patient["address"][0]["line"] = ["新填地街9號"]
    patient["telecom"][0]["value"] = "+85291234567"
    quoted = _quoting(changed, "HKID M 123456 (7)；住 新填地街9號；電話 9123 4567")
    decision = _decide(policy, quoted, "M123456(7)")
    assert len(policy._passes) == 2
    dumped = decision.bundle_json.decode()
    for value in ("M123456", "新填地街9號", "91234567", "9123 4567", "123456 (7)"):
        assert value not in dumped
    assert pseudonym(KEY, HKID, "M123456(7)") in dumped
    assert pseudonym(KEY, HKID, "K583726A") not in dumped
