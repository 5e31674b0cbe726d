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
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson
from sqlalchemy.engine import Connection

from ..audit import audit_log
from ..config import Settings
from ..errors import ConfigError, GatewayError
from ..network import Network
from ..partners import Partner, configured_partners
from ..store import Store
from ._outbox import DeliveryError, Outbox, OutboxRecord
from ._withdrawal import UnsentHold

if TYPE_CHECKING:
    from ..policy import Decision, PolicyRecords

__all__ = ["STATUS_HELD", "Requeue", "StatusReplies"]

log = logging.getLogger("gateway.delivery")
# An outbox row of a referral's status the policy did not allow across a boundary (or
# whose decision the audit log could not keep): held with its parts, not sent.
STATUS_HELD = "policy.status-held"
# A cross-border record whose decision the audit log could not record: held, not sent
# (gateway.policy.AUDIT_UNAVAILABLE: delivery imports the policy only where it decides);
# decided again by recheck_held as a consent hold. _outbound uses this one too.
AUDIT_UNAVAILABLE = "policy.audit-unavailable"
# Events older than migration v0014_event_decisions name their decision in their words
# only (:func:`_reason`): read so, when their ``decision_id`` is not set.
_DECISION = re.compile(r"\(policy decision (\d+)\)")
# A person's retry, replay or release queued in a decision's transaction: (its
# transaction, the event's words, the parts made again or None, the decision's id).
Requeue = Callable[[Connection | None, str, list[dict[str, Any]] | None, int | None], int]


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
        partners: Callable[[], Mapping[str, Partner]] | None = None,
    ) -> None:
        from ..policy import Policy, PolicyRecords

        self.settings = settings
        self.outbox = outbox or Outbox(store)
        # where a held or retried status is made again for (its split, its signature)
        self.partners = partners or (lambda: configured_partners(settings))
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
    ) -> tuple[int, str]:
        """Queue the status ``bundle`` from ``sender`` (this gateway's institution) for
        ``partner``, signed (:meth:`sign`) after the decision: an allowed one's Tasks
        carry its basis and purpose (``meta.security``, as a record's resources do).
        (row id, what became of it: "queued for …" or "held for …", with the decision.)
        The row is found again by the Bundle as made (``dedup``), not as signed: a
        signature's time differs at every signing, and the same status notified again
        must be the same row, never a second one beside a held one."""
        dedup = _dedup(partner, bundle)
        if not self.records.policy.crosses(sender, partner.key):
            row, _ = self.outbox.enqueue(
                partner, self.sign(bundle, partner), label=label, order_key=order_key, dedup=dedup
            )
            return row, f"queued for {partner.key} (outbox {row})"
        decision = self.records.policy.decide_status(bundle, sender, partner.key)
        allowed = decision.allowed
        if allowed:
            bundle = _labelled(bundle, self.records.policy.status_labels(decision))
        out = self.sign(bundle, partner)
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
                decision=None if conn is None else decision.id,  # None: not kept
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
                keep_input=False,  # its row is decided again by status_rules only
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
        (on the status as made, from the parts it keeps); allowed, its parts are made
        again under that decision (:meth:`_rebuilt`: its labels, a new signature) and
        it is queued in the decision's transaction; still refused, nothing moves
        (False). The row stays the same row (its id, its dedup key)."""
        sender = self.settings.institution
        if sender is None:
            raise ConfigError("unknown-sender", "set `institution` to release a referral status")
        bundle = self._made(row)
        decision = self.records.policy.decide_status(bundle, sender, row.partner)
        if not decision.allowed:
            return False
        parts = self._rebuilt(row, bundle, decision, "released")

        def move(conn: Connection) -> tuple[int, bool]:
            now = self.outbox.clock()
            self.outbox.move(
                row.id,
                "held",
                "pending",
                f"release: {reason} ({_reason(decision, 'allow')}; parts made again)",
                now=now,
                conn=conn,
                attempts=0,
                next_at=now,
                last_error=None,
                parts=orjson.dumps(parts),
                part_count=len(parts),
                part=0,
                decision=decision.id,
            )
            return row.id, True

        self.records.record(
            None, decision, orjson.dumps(bundle), move, replaces=self._decisions_of(row)
        )
        return True

    def again(
        self,
        row: OutboxRecord,
        requeue: Requeue,
        reason: str,
        refused: Callable[[str], GatewayError],
    ) -> int:
        """A retry or replay of a row of no stored message (a referral's status): sent
        again only on a decision of today when it crosses a boundary (``requeue`` in
        the decision's transaction, with the parts made again under that decision:
        its labels, a new signature); refused, ``refused(why)`` is raised and nothing
        moves. Within one jurisdiction, or on a gateway with no institution of its own
        (no referral status is made there), queued again as it is."""
        sender = self.settings.institution
        if sender is None or not self.records.policy.crosses(sender, row.partner):
            return requeue(None, reason, None, None)
        bundle = self._made(row)
        decision = self.records.policy.decide_status(bundle, sender, row.partner)
        if not decision.allowed:
            raise refused(_reason(decision, ""))
        parts = self._rebuilt(row, bundle, decision, "retried or replayed")
        queued = self.records.record(
            None,
            decision,
            orjson.dumps(bundle),
            lambda conn: (
                requeue(
                    conn,
                    f"{reason} ({_reason(decision, decision.outcome)}; parts made again)",
                    parts,
                    decision.id,
                ),
                True,
            ),
            replaces=self._decisions_of(row),
        )
        assert queued is not None
        return queued[0]

    def _decisions_of(self, row: OutboxRecord) -> list[int]:
        """The decisions this status was queued, held, released or sent again on, as
        its row's events keep them (``decision_id``): today's decision supersedes them
        (one status, one record in the transfer report, however often it is decided
        again). An event older than migration v0014_event_decisions names it only in
        its reason, which ends with it (:func:`_reason`), after any words of a
        person's: only that last mention is read."""
        found: list[int] = []
        for event in self.outbox.events(row.id):
            if event.decision_id is not None:
                found.append(event.decision_id)
                continue
            named = _DECISION.findall(event.reason or "")
            if named:
                found.append(int(named[-1]))
        return found

    def sign(self, bundle: dict[str, Any], partner: Partner) -> dict[str, Any]:
        """A status as it leaves for ``partner``: signed as the gateway's outbound
        records are (signing_rules, record type ``TASK``), else with the institution's
        own key in signing_keys (keys init's layout), else unsigned. Also unsigned for
        a partner that takes it in several requests (``write: batch``): a signature
        covers the whole Bundle, no part of it, and such a partner is a FHIR server,
        not a gateway that verifies. The one signer of a status, first queued or made
        again (release, retry, replay)."""
        from ..signing import load_signer, sign_bundle, signer_for

        sender = self.settings.institution
        if sender is None:
            return bundle
        own = self.records.policy.institution(sender, "sender")
        signer = signer_for(self.settings, own.facility, "TASK")
        keys = self.settings.signing_keys
        if signer is None and keys is not None and _holds_key(keys / own.key):
            signer = load_signer(self.settings, own.key)
        if signer is None:
            return bundle
        signed = sign_bundle(bundle, signer, "author")
        whole = partner.write == "transaction" and (
            not partner.max_entries or len(signed["entry"]) <= partner.max_entries
        )
        return signed if whole else bundle

    def _rebuilt(
        self, row: OutboxRecord, bundle: dict[str, Any], decision: Decision, verb: str
    ) -> list[dict[str, Any]]:
        """The parts of the status ``bundle`` (as made) under ``decision``: its Tasks
        labelled with its basis and purpose, signed again, split for the partner. The
        parts kept carry the labels (none, when it was held) and the signature of the
        day it was queued: sent so, the partner would get a status that names no
        basis, and the report would count its delivery under none. Not made (the
        partner is no longer configured, signing fails): ``delivery.not-rebuilt``,
        nothing moves."""
        partner = self.partners().get(row.partner)
        why = "its partner is no longer configured (partners)"
        if partner is not None:
            labels = self.records.policy.status_labels(decision)
            try:
                return partner.split(self.sign(_labelled(bundle, labels), partner))
            except GatewayError as exc:
                why = f"making what leaves failed ({exc.code})"
        raise DeliveryError(
            "delivery.not-rebuilt",
            f"outbox record {row.id} cannot be {verb}: its referral status could not be "
            f"made again under today's decision: {why}",
        )

    def _made(self, row: OutboxRecord) -> dict[str, Any]:
        """The status a row keeps as it was made, before it was labelled and signed: its
        parts' entries in one transaction Bundle (the first part's Bundle.id,
        identifier and timestamp, which every part keeps), without the signature's
        Provenance and without the labels a decision gave its Tasks."""
        from ..signing import signature_entries

        parts = self.outbox.parts(row.id)
        top = {k: v for k, v in (parts[0] if parts else {}).items() if k != "signature"}
        entries: list[dict[str, Any]] = []
        for part in parts:
            drop = set(signature_entries(part))
            entries += [_unlabelled(e) for n, e in enumerate(part.get("entry") or [])
                        if n not in drop]  # fmt: skip
        return {**top, "resourceType": "Bundle", "type": "transaction", "entry": entries}


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


def _unlabelled(entry: dict[str, Any]) -> dict[str, Any]:
    """``entry`` without the labels :func:`_labelled` gave its Task (basis, purpose of
    use): the status as made carries none, and a decision of today gives its own."""
    from ..policy import LEGAL_BASIS_SYSTEM, V3_ACT_REASON

    resource = entry.get("resource") if isinstance(entry, dict) else None
    if not isinstance(resource, dict) or resource.get("resourceType") != "Task":
        return entry
    meta = dict(resource.get("meta") or {})
    if "security" not in meta:
        return entry
    kept = [
        label
        for label in meta["security"] or []
        if not isinstance(label, dict)
        or label.get("system") not in (LEGAL_BASIS_SYSTEM, V3_ACT_REASON)
    ]
    if kept:
        meta["security"] = kept
    else:
        meta.pop("security")
    task = {k: v for k, v in resource.items() if k != "meta"}
    return {**entry, "resource": {**task, **({"meta": meta} if meta else {})}}


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


def _holds_key(folder: Path) -> bool:
    """Whether a key folder holds a private key as ``load_signer`` reads one."""
    return any((folder / name).is_file() for name in ("key.p12", "key.pfx", "key.pem"))
