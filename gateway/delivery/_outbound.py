"""The outbound path: from a converted message in the store to its outbox rows.

For each record of the message and each partner routing sends it to
(gateway/delivery/_routes.py, or the partners a caller names):

1. **policy** (gateway/policy): allow, allow-with-changes (the minimised Bundle goes),
   hold (a ``held`` outbox row without content waits for a consent: :meth:`Outbound.recheck_held`
   decides again and queues it) or deny (nothing is queued);
2. **report variant** (gateway/reports): a Bundle with a DiagnosticReport becomes the
   variant the partner prefers (``report_variant`` in the network);
3. **signing** (gateway/signing): signed with the key ``signing_rules`` names for the
   sender and record type, when one does;
4. **outbox**: queued with its links (what it provides and needs at the partner).

The message's state follows (``queued``, ``held``, ``denied``...), and a ``route``
outcome in the store keeps, per record, which rules matched and why and what became of
each partner. The same converted record is queued once per partner however often it
is processed (its key is the converted Bundle's hash); a mapping fix that changes it
queues the new content.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import orjson
from sqlalchemy.engine import Connection

from ..audit import audit_log, bundle_subject, events
from ..config import Settings
from ..datafiles import FileWatch, data_dir, load_data_file
from ..errors import ConfigError, GatewayError, Issue
from ..metrics import trace_placed
from ..network import Network
from ..partners import Partner, PartnersWatch
from ..store import StageOutcome, Store, StoreError
from ._outbox import (
    UNKNOWN_PARTNER,
    DeliveryError,
    Outbox,
    OutboxRecord,
    label_of,
    order_key_of,
)
from ._routes import Destination, Facts, Routes, Routing, facts_of
from ._status import AUDIT_UNAVAILABLE, STATUS_HELD, Requeue, StatusReplies
from ._withdrawal import UnsentHold

__all__ = ["Outbound", "OutboundResult", "Placed", "bundles_of"]

log = logging.getLogger("gateway.delivery")
VARIANT_FAILED = "delivery.variant-failed"  # the partner's report variant: not made
# Rows the policy holds and decides again (recheck_held, release): no consent yet, or
# a decision the audit log could not record.
POLICY_HOLDS = ("policy.held", AUDIT_UNAVAILABLE)


@dataclass(frozen=True, slots=True)
class Placed:
    """What became of one record for one partner."""

    record: int  # position in the message (0-based)
    partner: str
    outcome: str  # queued | held | denied | already | failed
    outbox_id: int | None = None
    decision_id: int | None = None
    reason: str = ""
    code: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "record": self.record,
            "partner": self.partner,
            "outcome": self.outcome,
            "outbox_id": self.outbox_id,
            "decision_id": self.decision_id,
            "reason": self.reason,
            "code": self.code,
        }


@dataclass(slots=True)
class OutboundResult:
    message_id: int
    state: str | None = None  # the message's state afterwards
    placed: list[Placed] = field(default_factory=list)
    routings: list[Routing] = field(default_factory=list)  # per record
    labels: list[str | None] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "message_id": self.message_id,
            "state": self.state,
            "records": [
                {
                    "record": n,
                    "label": self.labels[n] if n < len(self.labels) else None,
                    "routing": routing.to_json(),
                    "placed": [p.to_json() for p in self.placed if p.record == n],
                }
                for n, routing in enumerate(self.routings)
            ],
        }


def bundles_of(output: bytes | None) -> list[bytes]:
    """The Bundles of a stored convert outcome: one JSON document, or (several records)
    one per line (gateway/store/_process.py:outcome_of)."""
    if not output:
        return []
    try:
        parsed = orjson.loads(output)
    except orjson.JSONDecodeError:
        return [line for line in output.split(b"\n") if line.strip()]
    return [output] if isinstance(parsed, dict) else []


class Outbound:
    """The outbound path over one store; build once per process (it loads the routes,
    partners, policy and, on first use, the report variants and signing keys).
    Thread-safe: one record at a time."""

    def __init__(
        self,
        settings: Settings,
        store: Store,
        outbox: Outbox | None = None,
        *,
        partners: dict[str, Partner] | None = None,
        routes: Routes | None = None,
    ) -> None:
        from ..policy import Policy, PolicyRecords

        self.settings = settings
        self.store = store
        self.outbox = outbox or Outbox(store)
        self.network = Network.load(settings.network)
        self.institution = _institution(self.network, settings.institution)
        # The partners' files watched too (gateway.partners.PartnersWatch): a partner
        # added or changed (`gateway partners set`) is routed, and sent to, without a
        # restart; the delivery worker of the same service shares the watch. Partners a
        # caller gave are theirs: not watched.
        self.partners_watch: PartnersWatch | None = None
        if partners is None:
            self.partners_watch = PartnersWatch(settings)
            partners = self.partners_watch.partners
        self.partners = partners
        self.routes = routes or Routes.load(self.network, settings.delivery_routes)
        # network.yaml and routes.yaml, watched as the policy watches its files (the same
        # stamps, looked at every ``reload_interval`` seconds): a partner added or an
        # institution renamed reaches routing without a restart, as it reaches the
        # policy. Routes a caller gave are theirs: nothing is watched then.
        routes_file = settings.delivery_routes or data_dir("seeds") / "routes.yaml"
        self.watch = FileWatch(() if routes else (settings.network, routes_file))
        self.audit = audit_log(store, settings)
        self.unsent = UnsentHold(store, self.outbox)
        self.policy = PolicyRecords(
            store,
            Policy(settings, self.network),
            audit=self.audit is not None,
            unsent=self.unsent,
        )
        self.wait = timedelta(seconds=settings.delivery_reference_wait)
        self._lock = threading.RLock()
        self._variants: Any = None
        self._signers: dict[tuple[str | None, str | None], Any] = {}

    def _fresh(self) -> None:
        """Read network.yaml and routes.yaml again when either changed, all or nothing:
        files that do not load (or no longer name this gateway's institution) leave
        routing on the last good ones, reported once per edit (the next look sees the
        same stamps). Unlike the policy, which stops deciding on a broken file, routing
        goes on: every record still passes the policy on its own, current, files.
        The partners follow their own files (:class:`PartnersWatch`, all or nothing)."""
        if self.partners_watch is not None:
            self.partners = self.partners_watch.current()
        if not self.watch.paths or not self.watch.changed():
            return
        load_data_file.cache_clear()  # cached by path: the files changed under it
        try:
            network = Network.load(self.settings.network)
            routes = Routes.load(network, self.watch.paths[1])
            institution = _institution(network, self.settings.institution)
        except ConfigError as exc:
            log.error(
                "routing data changed and does not load: %s; routing goes on with the "
                "network and routes read before",
                exc,
            )
            return
        self.network, self.routes, self.institution = network, routes, institution
        log.info("routing data changed: network and routes read again")

    # -- a message ------------------------------------------------------------------
    def process(self, message_id: int, to: list[str] | None = None) -> OutboundResult:
        """Route (or send to ``to``), decide, sign and queue every record of a
        converted message; record the ``route`` outcome and the message's state."""
        with self._lock:
            self._fresh()
            return self._process(message_id, to)

    def _process(self, message_id: int, to: list[str] | None) -> OutboundResult:
        stored = self.store.get(message_id)
        if stored is None:
            raise StoreError("not-found", f"no message {message_id} in the store")
        result = OutboundResult(message_id)
        convert = next((o for o in stored.outcomes if o.stage == "convert" and o.current), None)
        if convert is None or convert.state != "converted":
            result.state = stored.state
            return result  # nothing converted: nothing goes out
        issues: list[Issue] = []
        summary = stored.summary
        for n, data in enumerate(bundles_of(convert.output)):
            bundle = orjson.loads(data)
            label = label_of(bundle)
            result.labels.append(label)
            facts = facts_of(
                bundle,
                self.network,
                format=summary.format,
                message_type=summary.message_type,
                sender=summary.sender,
                raw=stored.raw,
            )
            routing = self._explicit(to) if to is not None else self.route(facts)
            result.routings.append(routing)
            where = f"record {n + 1}" + (f" ({label})" if label else "")
            issues += _routing_issues(routing, where)
            for dest in routing.partners.values():
                placed = self._place(message_id, n, data, bundle, facts, dest, summary.sender)
                trace_placed(self.settings, message_id, placed)  # when tracing is on
                result.placed.append(placed)
                issues.append(_placed_issue(placed, where))
        state = self._state(result, stored.state)
        self.store.record_outcome(message_id, StageOutcome("route", state, issues=tuple(issues)))
        # A worker may have moved a row meanwhile: the rows have the last word.
        result.state = self.outbox.sync_message(message_id) or state
        return result

    def route(self, facts: Facts) -> Routing:
        with self._lock:
            self._fresh()
            return self.routes.route(facts, self.partners, self.institution)

    def _explicit(self, to: list[str]) -> Routing:
        routing = Routing()
        for name in to:
            inst = self.network.find(name)
            key = inst.key if inst else name
            routing.checked.append(("--to", True, f"named: {name}"))
            if key not in self.partners:
                routing.skipped.append((key, "no FHIR server configured (partners)"))
            else:
                routing.partners.setdefault(key, Destination(key, ["--to"], None, ["named"]))
        return routing

    def _state(self, result: OutboundResult, before: str) -> str:
        rows = [p for p in result.placed if p.outbox_id is not None]
        if rows:
            return "queued"
        if result.placed and all(p.outcome == "denied" for p in result.placed):
            return "denied"
        return "converted" if before in ("outbox", "denied", "held") else before

    # -- one record, one partner ----------------------------------------------------
    def _place(
        self,
        message_id: int,
        n: int,
        data: bytes,
        bundle: dict[str, Any],
        facts: Facts,
        dest: Destination,
        sender: str | None,
    ) -> Placed:
        partner = self.partners[dest.partner]
        dedup = _dedup(partner.key, data)
        found = self.outbox.dedup_row(dedup)
        if found is not None:
            return Placed(n, partner.key, "already", found.id, reason=f"already {found.state}")
        from_key = facts.sender or self.institution
        try:
            if from_key is None:
                raise DeliveryError(
                    "delivery.outbound-failed",
                    "the record names no sender the network knows and no institution is set",
                )
            # The Bundle already parsed, with its stored JSON: the stage parses nothing again.
            decision = self.policy.decide(bundle, from_key, partner.key, dest.purpose, text=data)
            # What follows the decision is computed first (variant, signing); then the
            # decision, the message's policy outcome and the outbox row (or hold) go in ONE
            # transaction: one commit, never a decision kept without its row or the reverse.
            if decision.outcome == "deny":
                self.policy.record(message_id, decision, data)
                why = _rule_reason(decision, "deny")
                return Placed(n, partner.key, "denied", None, decision.id, why, "policy.denied")
            if decision.outcome == "hold":
                why = _rule_reason(decision, "hold")
                held = self.policy.record(
                    message_id,
                    decision,
                    data,
                    lambda conn: self._hold(
                        partner.key,
                        (message_id, n, bundle, dedup),
                        decision.purpose,
                        "policy.held",
                        f"policy.held: {why} (decision {decision.id})",
                        conn,
                        decision.id,
                    ),
                )
                assert held is not None
                return Placed(n, partner.key, "held", held[0], decision.id, why, "policy.held")
            out, notes = self._finish(
                decision.bundle_json or data, partner, facts, sender, message_id
            )
            queued = self.policy.record(
                message_id,
                decision,
                data,
                lambda conn: self.outbox.enqueue(
                    partner,
                    out,
                    message_id=message_id,
                    order_key=order_key_of(bundle),
                    record=n,
                    purpose=decision.purpose,
                    dedup=dedup,
                    links_wait=self.wait,
                    # decision.id: set by then, the decision's row is in the same transaction
                    reason=f"queued: {decision.outcome} (policy decision {decision.id})"
                    + "".join(f"; {note}" for note in notes),
                    conn=conn,
                    decision=decision.id,
                ),
            )
            assert queued is not None
            return Placed(n, partner.key, "queued", queued[0], decision.id, "; ".join(notes))
        except GatewayError as exc:
            if exc.code == AUDIT_UNAVAILABLE:  # fail closed: held until it can be audited
                return self._unaudited(message_id, n, bundle, dedup, partner.key, dest, exc)
            log.warning("message %s record %d for %s: %s", message_id, n + 1, partner.key, exc.code)
            return Placed(n, partner.key, "failed", None, None, exc.issue.message, exc.code)

    def _unaudited(
        self,
        message_id: int,
        n: int,
        bundle: dict[str, Any],
        dedup: str,
        partner: str,
        dest: Destination,
        exc: GatewayError,
    ) -> Placed:
        """A cross-border record allowed, whose decision the audit log could not record
        (nothing of it kept): a held row (``policy.audit-unavailable``), decided again by
        :meth:`recheck_held` once the log is writable. Not even the row kept: failed."""
        log.error("message %s record %d for %s: %s", message_id, n + 1, partner, exc.code)
        why = "its decision could not be recorded in the audit log"
        try:
            held = self._hold(
                partner,
                (message_id, n, bundle, dedup),
                dest.purpose,
                AUDIT_UNAVAILABLE,
                f"{AUDIT_UNAVAILABLE}: {why}; decided again when it is writable",
            )
        except GatewayError as failed:
            return Placed(n, partner, "failed", None, None, failed.issue.message, failed.code)
        return Placed(n, partner, "held", held[0], None, why, AUDIT_UNAVAILABLE)

    def _hold(
        self,
        partner: str,
        record: tuple[int, int, dict[str, Any], str],
        purpose: str | None,
        code: str,
        reason: str,
        conn: Connection | None = None,
        decision: int | None = None,
    ) -> tuple[int, bool]:
        """A held outbox row for ``record`` (message id, record index, its Bundle, dedup
        key): the policy's hold (``decision``) and the unaudited decision's, one way."""
        message_id, n, bundle, dedup = record
        return self.outbox.hold(
            partner,
            message_id=message_id,
            record=n,
            purpose=purpose,
            order_key=order_key_of(bundle),
            label=label_of(bundle),
            dedup=dedup,
            code=code,
            reason=reason,
            conn=conn,
            decision=decision,
        )

    def _finish(
        self,
        data: bytes,
        partner: Partner,
        facts: Facts,
        sender: str | None,
        message_id: int | None = None,
    ) -> tuple[dict[str, Any], list[str]]:
        """The allowed Bundle as the partner gets it: its report variant, signed."""
        notes: list[str] = []
        bundle: dict[str, Any] = orjson.loads(data)
        if _has(bundle, "DiagnosticReport"):
            data, note = self._variant(data, partner)
            if note:
                notes.append(note)
        signer = self._signer(sender, facts.message_type)
        if signer is not None:
            from ..signing import sign_record_bundle

            signed = sign_record_bundle(data, signer)
            # One signature covers the whole Bundle: a partner that takes it in several
            # requests gets it unsigned (as referral statuses: inbound/_referrals.py).
            if partner.write == "transaction" and (
                not partner.max_entries or len(orjson.loads(signed)["entry"]) <= partner.max_entries
            ):
                data = signed
                notes.append(f"signed by {signer.name}")
                if self.audit is not None:
                    subject = bundle_subject(bundle, message_id)
                    self.audit.record_guarded(None, events.signed(subject, signer.name, "author"))
            else:
                notes.append(f"not signed: {partner.key} takes it in several requests")
        return orjson.loads(data), notes

    def _variant(self, data: bytes, partner: Partner) -> tuple[bytes, str | None]:
        from ..pipeline import dump_json
        from ..reports import variants_for

        maker = variants_for(self.settings)
        lang = maker.preferred(partner.key)
        try:
            variant = maker.variant(data, lang)
        except GatewayError as exc:
            return data, f"{VARIANT_FAILED}: {lang} ({exc.code}); sent as converted"
        return dump_json(variant.resource), f"report variant {variant.lang}"

    def _signer(self, sender: str | None, record_type: str | None) -> Any:
        from ..signing import signer_for

        key = (sender, record_type)
        if key not in self._signers:
            self._signers[key] = signer_for(self.settings, sender, record_type)
        return self._signers[key]

    # -- held records ---------------------------------------------------------------
    def recheck_held(self) -> list[OutboxRecord]:
        """Decide again every record the policy holds (after a consent arrived: gateway
        consent import, POST /Consent); those now allowed are queued, those refused
        die. Returns the rows that moved."""
        with self._lock:
            self._fresh()
            held = [
                r
                for r in self.outbox.records(state="held", limit=100_000)
                if r.last_error in POLICY_HOLDS and r.message_id is not None
            ]
            moved = []
            for row in reversed(held):  # oldest first
                try:
                    if self._redecide(row, force=False):
                        moved.append(self.outbox.require(row.id))
                except GatewayError as exc:
                    log.warning("held outbox record %s: %s", row.id, exc.code)
            return moved

    def release(self, row_id: int, reason: str) -> OutboxRecord:
        """``gateway outbox release``: a row the policy holds is decided again (a person
        cannot overrule a missing consent); any other held row is queued again. Such a
        row never crosses on a consent withdrawn while it was held: the withdrawal held
        it for the policy if none of it was sent (``UnsentHold``, the one rule for every
        way back to the queue), so it is decided again here."""
        with self._lock:
            self._fresh()
            row = self.outbox.require(row_id)
            if row.state == "held" and row.last_error == STATUS_HELD:
                # A referral's status the policy held (no message: decided on its parts).
                if not self._replies().release(row, reason):
                    raise DeliveryError(
                        "delivery.not-releasable",
                        f"outbox record {row_id}: the policy still holds this referral "
                        "status (its status_rules do not allow it to this partner)",
                    )
                return self.outbox.require(row_id)
            if row.state == "held" and row.last_error in POLICY_HOLDS:
                if not self._redecide(row, force=True, reason=reason):
                    raise DeliveryError(
                        "delivery.not-releasable",
                        f"outbox record {row_id}: the policy still holds it (no consent in "
                        "force for this purpose and recipient)",
                    )
                return self.outbox.require(row_id)
            if row.message_id is not None and self.outbox.never_sent(row_id):
                return self._release_decided(row, reason)
            # A row with a part sent, or held from ``waiting`` (its last send ambiguous),
            # is released as it is: the partner may hold it (or holds its first parts),
            # and what is there must be completed or checked, not stopped half-way; its
            # parts were decided with the first (the withdrawal leaves these too).
            return self.outbox.release(row_id, reason)

    def act_by(self, action: str, who: str | None, row_id: int, reason: str) -> OutboxRecord:
        """A person's ``release``, ``retry``, ``replay`` or ``discard`` of an outbox row
        (the CLI's and the console's: ``who``, None: the OS account), audited as an
        operator's action either way: done, or refused (``delivery.not-releasable``,
        ``not-retryable``, ``not-replayable``: the policy, deciding again, stops it, or
        the row is not in a state for it; or any other error that left the record as it
        was), then the error raised: an auditor sees that someone tried. The one path
        of the console, and of the CLI's but discard (which needs no policy)."""
        from ..audit import record_operator

        act = {
            "release": self.release,
            "retry": self.retry,
            "replay": self.replay,
            "discard": self.discard,
        }[action]
        try:
            row = act(row_id, reason)
        except GatewayError as exc:
            audit_refused(self.store, self.settings, self.outbox, action, row_id, who, exc)
            raise
        record_operator(self.store, self.settings, action, [row.message_id], who)
        return row

    def return_known(self, row: OutboxRecord, reason: str) -> OutboxRecord:
        """The worker's return of a never-sent row held because its partner was not
        configured, now that it is again (``Outbox.release_known``, the worker's
        ``decide``): decided again first, exactly as a person's release of it is
        (:meth:`_release_decided`): a consent that expired or a rule that changed during
        the hold stops it (held for the policy, ``policy.held``, the rule named; the
        refusal raised). Each move is a compare-and-set on the hold
        (:data:`UNKNOWN_PARTNER`): a row a person moved meanwhile is left as it is."""
        with self._lock:
            self._fresh()
            return self._release_decided(row, reason, held_as=UNKNOWN_PARTNER)

    def _release_decided(
        self, row: OutboxRecord, reason: str, held_as: str | None = None
    ) -> OutboxRecord:
        """A never-sent row delivery held (the overwrite guard, our credentials, a
        partner gone...), released by a person: decided again first, as a retry is
        (a consent expired or an agreement ended while it was held: the decision on
        which it was queued no longer holds), and queued in the new decision's
        transaction when allowed. Not allowed: held for the policy (``policy.held``,
        the reason in its event, as a withdrawal holds it), so that only a decision (a
        new consent: :meth:`recheck_held`) queues it again, and the release is refused
        (``delivery.not-releasable``, naming the rule): the person learns why.
        ``held_as``: each move only while the row is held for that code (the worker's
        return: :meth:`return_known`)."""

        def hold(decision: Any) -> int:
            why = _rule_reason(decision, decision.outcome)
            says = "holds it" if decision.outcome == "hold" else "refuses it"
            self.outbox.move(
                row.id,
                "held",
                "held",
                f"policy.held: release ({reason}) refused: the policy, deciding again, "
                f"{says} ({why}) (it was held: {row.last_error})",
                now=self.outbox.clock(),
                last_error="policy.held",
                held_as=held_as,
            )
            raise DeliveryError(
                "delivery.not-releasable",
                f"outbox record {row.id} cannot be released: the policy, deciding again, "
                f"{says} ({why}); it is now held for the policy (policy.held) and queued "
                "again only when a consent in force allows it",
                location="policy",
            )

        self._again(
            row,
            "release",
            lambda conn, why, parts, decided: self.outbox.release_in(
                conn, row.id, why, parts=parts, held_as=held_as, decision=decided
            ),
            reason,
            refused=hold,
        )
        return self.outbox.require(row.id)

    def _replies(self) -> StatusReplies:
        """Referral status replies, decided by this path's policy (its records)."""
        return StatusReplies(
            self.settings,
            self.store,
            outbox=self.outbox,
            records=self.policy,
            partners=lambda: self.partners,
        )

    def discard(self, row_id: int, reason: str) -> OutboxRecord:
        """``gateway outbox discard`` (and the console's): a held or dead row given up for
        good (:meth:`Outbox.discard`); under the lock, so never while this process's
        :meth:`recheck_held` is deciding the same row."""
        with self._lock:
            return self.outbox.discard(row_id, reason)

    # -- a person's retry and replay: decided again, as a release ------------------------
    def retry(self, row_id: int, reason: str) -> OutboxRecord:
        """``gateway outbox retry``: a dead row queued again from the part that failed,
        only if the policy, deciding again today, allows its record to this partner
        (a consent withdrawn or an agreement ended since it was queued: refused); when
        today's decision changes the record (allow-with-changes), with the parts rebuilt
        from the record under today's minimisation, sent from the first."""
        with self._lock:
            self._fresh()
            row = self.outbox.require(row_id)
            self.outbox.check_requeue(row, "retry")
            self._again(
                row,
                "retry",
                lambda conn, why, parts, decided: self.outbox.retry_in(
                    conn, row_id, why, parts=parts, decision=decided
                ),
                reason,
            )
            return self.outbox.require(row_id)

    def replay(self, row_id: int, reason: str) -> OutboxRecord:
        """``gateway outbox replay``: a delivered row sent again as a new row, only if
        the policy, deciding again today, allows it (as :meth:`retry`): with the same
        parts, or rebuilt under today's minimisation when today's decision changes the
        record."""
        with self._lock:
            self._fresh()
            row = self.outbox.require(row_id)
            self.outbox.check_requeue(row, "replay")
            new_id = self._again(
                row,
                "replay",
                lambda conn, why, parts, decided: self.outbox.replay_in(
                    conn, row_id, why, parts=parts, decision=decided
                ),
                reason,
            )
            return self.outbox.require(new_id)

    def _again(
        self,
        row: OutboxRecord,
        action: str,
        requeue: Requeue,
        reason: str,
        refused: Callable[[Any], int] | None = None,
    ) -> int:
        """Decide ``row``'s record again (the decision a release makes) and, allowed,
        ``requeue`` it in the decision's transaction (the decision kept and audited with
        the row's move, one commit). Allowed with changes today (minimisation): the
        parts are rebuilt from the record as today's decision leaves it (report variant,
        signature), never the stored ones, which may hold what today's rules remove; the
        decision's audit event says which were sent (``resend-parts``). Refused (held:
        no consent in force; denied: no agreement, a rule), or not rebuilt: nothing
        moves or is recorded, and the error says why. A row of no stored message (a
        referral's status, gateway/inbound) is decided again by the status rules when
        it crosses a boundary (:class:`StatusReplies`), else queued again as it is."""
        code, verb = _AGAIN[action]
        if row.message_id is None:  # a referral's status: decided again if it crosses
            return self._replies().again(
                row,
                requeue,
                reason,
                lambda why: DeliveryError(
                    code,
                    f"outbox record {row.id} cannot be {verb}: the policy, deciding again, "
                    f"refuses this referral status ({why})",
                    location="policy",
                ),
            )
        source = self._source(row)
        if source is None:
            raise DeliveryError(
                code,
                f"outbox record {row.id} cannot be {verb}: its record cannot be decided "
                "again (no longer in the store, or no sender the network knows)",
            )
        stored, data, bundle, from_key = source
        decision = self.policy.decide(bundle, from_key, row.partner, row.purpose, text=data)
        if not decision.allowed and refused is not None:
            return refused(decision)
        if not decision.allowed:
            why = _rule_reason(decision, decision.outcome)
            says = "holds it" if decision.outcome == "hold" else "refuses it"
            raise DeliveryError(
                f"{code}",
                f"outbox record {row.id} cannot be {verb}: the policy, deciding again, "
                f"{says} ({why})",
                location="policy",
            )
        parts: list[dict[str, Any]] | None = None
        notes: list[str] = []
        if decision.outcome == "allow-with-changes":
            parts, notes = self._rebuilt(row, stored, bundle, decision, verb)
        decision.notes += [
            ("resend", action),
            ("resend-parts", "stored" if parts is None else "rebuilt"),
        ]

        def queue(conn: Connection) -> tuple[int, bool]:
            note = f"{reason} ({decision.outcome}: policy decision {decision.id}"
            note += "; parts rebuilt under today's minimisation" if parts is not None else ""
            note += "".join(f"; {n}" for n in notes) + ")"
            return requeue(conn, note, parts, decision.id), True

        queued = self.policy.record(row.message_id, decision, data, queue)
        assert queued is not None
        return queued[0]

    def _rebuilt(
        self, row: OutboxRecord, stored: Any, bundle: dict[str, Any], decision: Any, verb: str
    ) -> tuple[list[dict[str, Any]], list[str]]:
        """The parts of ``row``'s record as today's decision leaves it (minimised,
        labelled), made as the outbound path makes them (report variant, signature,
        the partner's split). Not made (the partner is no longer configured, signing
        fails): ``delivery.not-rebuilt``, and nothing is queued: the stored parts,
        minimised under older rules, never go instead."""
        partner = self.partners.get(row.partner)
        why = "its partner is no longer configured (partners)"
        if partner is not None and decision.bundle_json is not None:
            facts = facts_of(
                bundle,
                self.network,
                format=stored.summary.format,
                message_type=stored.summary.message_type,
                sender=stored.summary.sender,
            )
            try:
                out, notes = self._finish(
                    decision.bundle_json, partner, facts, stored.summary.sender, row.message_id
                )
                return partner.split(out), notes
            except GatewayError as exc:
                why = f"making what leaves failed ({exc.code})"
        raise DeliveryError(
            "delivery.not-rebuilt",
            f"outbox record {row.id} cannot be {verb}: today's decision changes the record "
            f"(allow-with-changes) and its parts could not be rebuilt under today's "
            f"minimisation: {why}; the stored parts are not sent instead",
            location="policy",
        )

    def _source(self, row: OutboxRecord) -> tuple[Any, bytes, dict[str, Any], str] | None:
        """The stored message a row's record came from, the record (its JSON and parsed
        Bundle) and its sender's network key: what the policy decides again on."""
        if row.message_id is None or row.record is None:
            return None
        stored = self.store.get(row.message_id)
        convert = (
            next((o for o in stored.outcomes if o.stage == "convert" and o.current), None)
            if stored
            else None
        )
        datas = bundles_of(convert.output if convert else None)
        if stored is None or row.record >= len(datas):
            return None
        data = datas[row.record]
        sender = self.network.find(stored.summary.sender or "") if stored.summary.sender else None
        from_key = sender.key if sender else self.institution
        if from_key is None:
            return None
        return stored, data, orjson.loads(data), from_key

    def _redecide(self, row: OutboxRecord, force: bool, reason: str = "consent") -> bool:
        assert row.message_id is not None and row.record is not None
        source = self._source(row)
        if source is None:
            return False
        stored, data, bundle, from_key = source
        # Decided once (nothing recorded), the variant and signature made, then the
        # decision, the message's policy outcome and the row's move kept in ONE
        # transaction: a decision never kept without its row moved, or the reverse.
        decision = self.policy.decide(bundle, from_key, row.partner, row.purpose, text=data)
        if decision.outcome == "hold":
            return False
        if decision.outcome == "deny":

            def dead(conn: Connection) -> tuple[int, bool]:
                why = _rule_reason(decision, "deny")
                self.outbox.move(
                    row.id,
                    "held",
                    "dead",
                    f"policy.denied: {why} (decision {decision.id})",
                    now=self.outbox.clock(),
                    conn=conn,
                    last_error="policy.denied",
                    decision=decision.id,
                )
                return row.id, False

            self.policy.record(row.message_id, decision, data, dead)
            return True
        partner = self.partners.get(row.partner)
        if partner is None:
            return False
        facts = facts_of(
            bundle,
            self.network,
            format=stored.summary.format,
            message_type=stored.summary.message_type,
            sender=stored.summary.sender,
        )
        out, notes = self._finish(
            decision.bundle_json or data, partner, facts, stored.summary.sender, row.message_id
        )

        def fill(conn: Connection) -> tuple[int, bool]:
            self.outbox.fill(
                row.id,
                partner,
                out,
                f"released ({reason}): {decision.outcome} (policy decision {decision.id})"
                + "".join(f"; {note}" for note in notes),
                links_wait=self.wait,
                conn=conn,
                decision=decision.id,
            )
            return row.id, True

        self.policy.record(row.message_id, decision, data, fill)
        return True


# A person's action that decides again (``Outbound._again``): its error code and verb.
_AGAIN = {
    "retry": ("delivery.not-retryable", "retried"),
    "replay": ("delivery.not-replayable", "replayed"),
    "release": ("delivery.not-releasable", "released"),
}


def _institution(network: Network, name: str | None) -> str | None:
    """The network key of this gateway's institution (setting ``institution``)."""
    if not name:
        return None
    inst = network.find(name)
    if inst is None:
        raise ConfigError(
            "institution", f"institution {name!r} is not an institution of the network"
        )
    return inst.key


def _dedup(partner: str, data: bytes) -> str:
    """One outbox row per partner and converted Bundle (before policy and signing,
    whose output may differ from one run to the next: a signature's time)."""
    return hashlib.sha256(partner.encode() + b"|converted|" + data).hexdigest()


def _has(bundle: dict[str, Any], kind: str) -> bool:
    return any(
        (e.get("resource") or {}).get("resourceType") == kind for e in bundle.get("entry") or []
    )


def _rule_reason(decision: Any, outcome: str) -> str:
    for result in decision.results:
        if result.outcome == outcome:
            return f"{result.rule}: {result.reason['en']}"
    return outcome


def _routing_issues(routing: Routing, where: str) -> list[Issue]:
    issues = [
        Issue(
            "delivery.routed",
            f"{where} → {d.partner}: " + "; ".join(d.why),
            location=f"route.{','.join(d.rules)}",
            severity="information",
        )
        for d in routing.partners.values()
    ]
    issues += [
        Issue("delivery.not-a-partner", f"{where}: not sent to {inst}: {why}", severity="warning")
        for inst, why in routing.skipped
    ]
    if not routing.partners and not routing.skipped:
        issues.append(
            Issue("delivery.no-route", f"{where}: no routing rule matched", severity="information")
        )
    return issues


def _placed_issue(placed: Placed, where: str) -> Issue:
    text = f"{where} for {placed.partner}: {placed.outcome}"
    if placed.outbox_id is not None:
        text += f" (outbox {placed.outbox_id})"
    if placed.reason:
        text += f": {placed.reason}"
    code = placed.code or "delivery.outbound-failed"
    if placed.outcome == "failed":
        return Issue(code, text, location="outbound")
    if placed.outcome in ("held", "denied"):
        return Issue(code, text, location="policy", severity="warning")
    return Issue("delivery.queued", text, location="outbound", severity="information")


def audit_refused(
    store: Store,
    settings: Settings,
    outbox: Outbox,
    action: str,
    row_id: int,
    who: str | None,
    exc: GatewayError,
) -> None:
    """A person's refused action on an outbox row, audited as their attempt (outcome a
    minor failure naming the refusal): an auditor sees that someone tried. A row that
    does not exist had nothing tried on it."""
    from ..audit import record_operator

    tried = outbox.get(row_id)
    if tried is not None:
        refused = f"{exc.code}: {exc.issue.message}"
        record_operator(store, settings, action, [tried.message_id], who, refused)
