"""A referral's status reply, decided by the policy before it crosses a boundary.

gateway/inbound (``Referrals.notify``) makes the status Bundle of a referral received
here (a Task: the referral's number, the patient by the identifier the referral's
sender issued, the owner organisation) for the gateway that sent the referral. Within
one jurisdiction it is queued as it is. Across one, the policy decides it by the
``status_rules`` of mappings/policy/rules.yaml (``Policy.decide_status``): the
decision is kept (``policy_decisions``, its audit event; the transfer report counts
it) with, in the same transaction, its outbox row — ``pending`` when allowed, else
``held`` with its parts and the decision's reason (``policy.status-held``), never sent
until ``gateway outbox release`` decides it again and the policy allows it.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import orjson
from sqlalchemy.engine import Connection

from ..audit import audit_log
from ..config import Settings
from ..errors import ConfigError, GatewayError
from ..network import Network
from ..partners import Partner
from ..store import Store
from ._outbox import Outbox, OutboxRecord
from ._withdrawal import UnsentHold

if TYPE_CHECKING:
    from ..policy import Decision, PolicyRecords

__all__ = ["STATUS_HELD", "StatusReplies"]

log = logging.getLogger("gateway.delivery")
# An outbox row of a referral's status the policy did not allow across a boundary (or
# whose decision the audit log could not keep): held with its parts, not sent.
STATUS_HELD = "policy.status-held"
AUDIT_UNAVAILABLE = "policy.audit-unavailable"


class StatusReplies:
    """Referral status replies over one store: queued, decided across a boundary."""

    def __init__(
        self,
        settings: Settings,
        store: Store,
        *,
        outbox: Outbox | None = None,
        network: Network | None = None,
        records: PolicyRecords | None = None,
    ) -> None:
        from ..policy import Policy, PolicyRecords

        self.settings = settings
        self.outbox = outbox or Outbox(store)
        if records is None:
            records = PolicyRecords(
                store,
                Policy(settings, network or Network.load(settings.network)),
                audit=audit_log(store, settings) is not None,
                unsent=UnsentHold(store, self.outbox),
            )
        self.records = records

    def queue(
        self,
        partner: Partner,
        bundle: dict[str, Any],
        sender: str,
        *,
        label: str | None,
        order_key: str | None,
        finish: Callable[[dict[str, Any]], dict[str, Any]] = lambda bundle: bundle,
    ) -> tuple[int, str]:
        """Queue the status ``bundle`` from ``sender`` (this gateway's institution) for
        ``partner``, made ready to leave by ``finish`` (the sender's signature) after
        the decision: an allowed one's Tasks carry its basis and purpose
        (``meta.security``, as a record's resources do). (row id, what became of it:
        "queued for …" or "held for …", with the decision.)"""
        if not self.records.policy.crosses(sender, partner.key):
            row, _ = self.outbox.enqueue(partner, finish(bundle), label=label, order_key=order_key)
            return row, f"queued for {partner.key} (outbox {row})"
        decision = self.records.policy.decide_status(bundle, sender, partner.key)
        allowed = decision.allowed
        if allowed:
            bundle = _labelled(bundle, self.records.policy.status_labels(decision))
        out = finish(bundle)
        dedup = _dedup(partner, out)
        found = self.outbox.dedup_row(dedup)
        if found is not None:
            return found.id, f"queued for {partner.key} (outbox {found.id}, already {found.state})"

        def insert(conn: Connection | None, held: str | None, reason: str) -> tuple[int, bool]:
            return self.outbox.enqueue(
                partner,
                out,
                label=label,
                order_key=order_key,
                dedup=dedup,
                purpose=decision.purpose,
                held=held,
                reason=reason,
                conn=conn,
            )

        try:
            queued = self.records.record(
                None,
                decision,
                orjson.dumps(bundle),
                lambda conn: insert(
                    conn,
                    None if allowed else STATUS_HELD,
                    _reason(decision, "queued" if allowed else STATUS_HELD),
                ),
            )
        except GatewayError as exc:
            if exc.code != AUDIT_UNAVAILABLE:
                raise
            # Fail closed: not sent on a decision the audit log does not hold.
            log.error("referral status for %s: %s", partner.key, exc.code)
            why = f"{STATUS_HELD}: {AUDIT_UNAVAILABLE}: the decision could not be audited"
            queued = insert(None, STATUS_HELD, why + "; release it when the log is writable")
            return queued[0], f"held for {partner.key}, not sent (outbox {queued[0]}): {why}"
        assert queued is not None
        row = queued[0]
        if allowed:
            return row, (
                f"queued for {partner.key} (outbox {row}; policy decision "
                f"{decision.id}, basis {decision.basis})"
            )
        return row, f"held for {partner.key}, not sent (outbox {row}): {_reason(decision, '')}"

    def release(self, row: OutboxRecord, reason: str) -> bool:
        """``gateway outbox release`` of a status row the policy held: decided again
        (on the parts it keeps, as they would leave); allowed, queued in the decision's
        transaction; still refused, nothing moves (False)."""
        sender = self.settings.institution
        if sender is None:
            raise ConfigError("unknown-sender", "set `institution` to release a referral status")
        bundle = self._bundle_of(row)
        decision = self.records.policy.decide_status(bundle, sender, row.partner)
        if not decision.allowed:
            return False

        def move(conn: Connection) -> tuple[int, bool]:
            now = self.outbox.clock()
            self.outbox.move(
                row.id,
                "held",
                "pending",
                f"release: {reason} ({_reason(decision, 'allow')})",
                now=now,
                conn=conn,
                attempts=0,
                next_at=now,
                last_error=None,
            )
            return row.id, True

        self.records.record(None, decision, orjson.dumps(bundle), move)
        return True

    def again(
        self,
        row: OutboxRecord,
        requeue: Callable[[Connection | None, str], int],
        reason: str,
        refused: Callable[[str], GatewayError],
    ) -> int:
        """A retry or replay of a row of no stored message (a referral's status): sent
        again only on a decision of today when it crosses a boundary (``requeue`` in
        the decision's transaction); refused, ``refused(why)`` is raised and nothing
        moves. Within one jurisdiction, or on a gateway with no institution of its own
        (no referral status is made there), queued again as it is."""
        sender = self.settings.institution
        if sender is None or not self.records.policy.crosses(sender, row.partner):
            return requeue(None, reason)
        bundle = self._bundle_of(row)
        decision = self.records.policy.decide_status(bundle, sender, row.partner)
        if not decision.allowed:
            raise refused(_reason(decision, ""))
        queued = self.records.record(
            None,
            decision,
            orjson.dumps(bundle),
            lambda conn: (requeue(conn, f"{reason} ({_reason(decision, decision.outcome)})"), True),
        )
        assert queued is not None
        return queued[0]

    def _bundle_of(self, row: OutboxRecord) -> dict[str, Any]:
        """The status a row keeps, as it leaves: its parts' entries in one Bundle."""
        parts = self.outbox.parts(row.id)
        return {
            "resourceType": "Bundle",
            "type": "transaction",
            "entry": [e for part in parts for e in part.get("entry") or []],
        }


def _labelled(bundle: dict[str, Any], labels: list[dict[str, str]]) -> dict[str, Any]:
    """A copy of ``bundle`` whose Tasks carry ``labels`` in ``meta.security``."""
    entries = []
    for entry in bundle.get("entry") or []:
        resource = entry.get("resource") or {}
        if resource.get("resourceType") == "Task":
            meta = dict(resource.get("meta") or {})
            meta["security"] = [*(meta.get("security") or []), *labels]
            entry = {**entry, "resource": {**resource, "meta": meta}}
        entries.append(entry)
    return {**bundle, "entry": entries}


def _reason(decision: Decision, head: str) -> str:
    """The outbox event's words: the decision, its basis or the rule that stopped it."""
    if decision.allowed:
        return f"{head}: {decision.outcome} on {decision.basis} (policy decision {decision.id})"
    stopped = next((r for r in decision.results if r.outcome in ("deny", "hold")), None)
    why = f"{stopped.rule}: {stopped.reason['en']}" if stopped else decision.outcome
    return f"{head + ': ' if head else ''}{why} (policy decision {decision.id})"


def _dedup(partner: Partner, bundle: dict[str, Any]) -> str:
    """The key :meth:`Outbox.enqueue` gives a Bundle of its own: the same reply queued
    again (``gateway referrals notify``) is the same row."""
    raw = orjson.dumps(bundle, option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(partner.key.encode() + b"|" + raw).hexdigest()
