"""The policy is an earlier stage than delivery: it imports nothing of gateway.delivery
(not even at call time, as the consent withdrawal's hold once did); delivery plugs the
withdrawal's hold of queued rows into the policy's interface (``UnsentRows``)."""

from __future__ import annotations

import ast
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from gateway.policy import Policy, PolicyError, PolicyRecords
from gateway.store import Incoming, Store
from tests.policy.conftest import HKID, NOW, REPO, consent

POLICY = REPO / "gateway" / "policy"


def _imported(path: Path) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            base = ("." * node.level) + (node.module or "")
            found += [(node.lineno, f"{base}.{a.name}") for a in node.names]
        elif isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
    return found


def test_the_policy_imports_nothing_of_delivery() -> None:
    wrong = [
        f"{path.name}:{line} {name}"
        for path in sorted(POLICY.glob("*.py"))
        for line, name in _imported(path)
        if name.startswith(("..delivery", "gateway.delivery"))
    ]
    assert wrong == []  # before: _records._hold_unsent imported ..delivery.Outbox


class _Holder:
    def __init__(self) -> None:
        self.calls: list[tuple[list[tuple[int, str]], str]] = []

    def hold_unsent(self, conn: Any, pairs: Sequence[tuple[int, str]], reason: str) -> int:
        self.calls.append((list(pairs), reason))
        return len(pairs)


def _allowed(store: Store, records: PolicyRecords, bundles: dict[str, bytes]) -> int:
    """許嘉瑋's referral stored, her consent imported, the transfer allowed: a message
    whose current decision the consent could have allowed."""
    raw = (REPO / "examples" / "hl7v2" / "ref_i12_nsch_to_hkpmc.hl7").read_bytes()
    message = store.receive(Incoming(raw, "cli")).id
    records.import_consent(consent((HKID, "K583726A"), "HKPMC", start="2026-01-01"))
    decision = records.apply(
        message, bundles["ref_i12_nsch_to_hkpmc"], "NSCH", "HKPMC", "referral", now=NOW
    )
    assert decision.allowed
    return message


def test_a_withdrawal_hands_the_queued_transfers_to_the_holder(
    store: Store, policy: Policy, bundles: dict[str, bytes]
) -> None:
    holder = _Holder()
    records = PolicyRecords(store, policy, unsent=holder)
    message = _allowed(store, records, bundles)
    assert records.withdraw("consent-1").status == "inactive"
    assert holder.calls == [
        ([(message, "hkpmc")], "policy.held: consent consent-1 withdrawn before it was sent")
    ]


def test_no_holder_refuses_a_withdrawal_that_would_leave_transfers_to_cross(
    store: Store, policy: Policy, bundles: dict[str, bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A process where gateway.delivery registered nothing: refused, not recorded (the
    gateway's CLI and API always load it)."""
    monkeypatch.setattr("gateway.policy._records._unsent_factory", [])
    records = PolicyRecords(store, policy)
    _allowed(store, records, bundles)
    with pytest.raises(PolicyError) as refused:
        records.withdraw("consent-1")
    assert refused.value.code == "policy.unsent-not-held"
    [kept] = records.list_consents()
    assert kept.status == "active"  # the withdrawal rolled back with it
