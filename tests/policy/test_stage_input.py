"""The stage decides on the converter's own Bundle (``Record.mapped``, frozen parts shared
with other records) without parsing the JSON again and without changing it; and the
search for original values left anywhere finds them in any letter case the rewriter
would (it is only a filter in front of pass 2: it may give false alarms, never miss)."""

from __future__ import annotations

import re
import sys
from typing import Any

import orjson

from gateway import Converter
from gateway.policy import MemoryConsents, MemoryCounters, Policy, parse_consent
from gateway.policy._minimise import _FOLD_BYTES

from .conftest import HKID, NOW, REPO, consent


def _consents(policy: Policy) -> MemoryConsents:
    return MemoryConsents(
        [parse_consent(consent((HKID, "K583726A"), "HKPMC"), policy.network, policy.data.purposes)]
    )


def test_the_converters_bundle_is_decided_as_its_bytes_and_left_unchanged(
    policy: Policy, converter: Converter
) -> None:
    raw = (REPO / "examples" / "hl7v2" / "ref_i12_nsch_to_hkpmc.hl7").read_bytes()
    record = converter.convert(raw)[0]
    assert record.ok and record.mapped is not None and record.bundle_json is not None
    assert orjson.dumps(record.mapped, option=orjson.OPT_INDENT_2) + b"\n" == record.bundle_json
    consents = _consents(policy)
    mapped = policy.decide(
        record.mapped,
        "NSCH",
        "HKPMC",
        consents=consents,
        counters=MemoryCounters(),
        now=NOW,
        text=record.bundle_json,
    )
    parsed = policy.decide(
        record.bundle_json, "NSCH", "HKPMC", consents=consents, counters=MemoryCounters(), now=NOW
    )
    assert mapped.outcome == parsed.outcome == "allow-with-changes"
    assert mapped.bundle_json == parsed.bundle_json
    assert mapped.to_json() == parsed.to_json()
    assert b"K583726A" not in (mapped.bundle_json or b"K583726A")
    # Not one byte of the converter's Bundle changed (its frozen parts would have raised).
    assert orjson.dumps(record.mapped, option=orjson.OPT_INDENT_2) + b"\n" == record.bundle_json


def _with_ascii_address(bundle: bytes, note: str) -> dict[str, Any]:
    """The Hong Kong referral with an address line in English, quoted in a note."""
    parsed = orjson.loads(bundle)
    for entry in parsed["entry"]:
        resource = entry["resource"]
        if resource["resourceType"] == "Patient":
            resource["address"][0]["line"] = ["Flat 12B, 88 Harbour Road"]
            resource["address"][0].pop("text", None)
        if resource["resourceType"] == "ServiceRequest":
            resource.setdefault("note", []).append({"text": note})
    return parsed


def test_a_value_quoted_in_another_letter_case_is_rewritten(
    policy: Policy, bundles: dict[str, bytes]
) -> None:
    # The rewriter matches ignoring case; the search in front of it did not (an exact
    # byte search), so an upper-cased quote of the address line was left in the note.
    source = _with_ascii_address(
        bundles["ref_i12_nsch_to_hkpmc"], "Home visit: FLAT 12B, 88 HARBOUR ROAD (lift broken)"
    )
    decision = policy.decide(source, "NSCH", "HKPMC", consents=_consents(policy), now=NOW)
    assert decision.bundle_json is not None
    assert b"harbour road" not in decision.bundle_json.lower()
    assert any(c.action == "text-rewritten" for c in decision.changes)


def test_a_note_without_any_value_is_left_as_it_is(
    policy: Policy, bundles: dict[str, bytes]
) -> None:
    note = "Home visit arranged by the family (lift broken)"
    source = _with_ascii_address(bundles["ref_i12_nsch_to_hkpmc"], note)
    decision = policy.decide(source, "NSCH", "HKPMC", consents=_consents(policy), now=NOW)
    assert decision.bundle is not None
    notes = [
        n["text"]
        for e in decision.bundle["entry"]
        for n in e["resource"].get("note", [])
        if isinstance(n, dict)
    ]
    assert note in notes
    assert not any(c.action == "text-rewritten" for c in decision.changes)


def test_the_case_folds_to_ascii_letters_are_all_known() -> None:
    """Every non-ASCII character that re.IGNORECASE matches to an ASCII letter: the
    search treats data holding one as "maybe" (bytes.upper() does not see them)."""
    letters = {c: re.compile(re.escape(c), re.IGNORECASE) for c in "abcdefghijklmnopqrstuvwxyz"}
    found = set()
    for code in range(0x80, sys.maxunicode + 1):
        char = chr(code)
        if char.lower() == char and char.upper() == char and char.casefold() == char:
            continue  # caseless: IGNORECASE matches it to itself only
        if any(pattern.fullmatch(char) for pattern in letters.values()):
            found.add(char.encode())
    assert found == set(_FOLD_BYTES)
