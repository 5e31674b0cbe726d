"""The delivery worker: picks the outbox rows that are due and sends their parts, one
after the other, each only after the one before was delivered.

One failing record never holds up another patient's: a row that fails is rescheduled
(retrying or waiting) and the loop goes on. Order is the outbox's: a row is due only
when its patient's earlier rows at the same partner are delivered. A partner whose
breaker is open is skipped until its cool-down has passed.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import Any

import httpx
import orjson
from sqlalchemy.exc import SQLAlchemyError

from ..audit import AuditLog, basis_of, bundle_subject, delivery_event, events, message_subject
from ..datafiles import RELOAD_INTERVAL, FileWatch
from ..errors import ConfigError, GatewayError
from ..metrics import CREDENTIALS_REFUSED, NO_TOKEN, observe_stage, trace_attempt
from ..partners import Partner, credential_files
from ..partners import partner_client as partners_client
from ._ask import ask
from ._links import LINK_OTHER_PATIENT, Link, link_fields, link_ref, links_of, resolve_links
from ._outbound import Outbound
from ._outbox import UNKNOWN_PARTNER, Decide, Outbox, OutboxRecord
from ._overwrite import (
    LOCAL,
    OVERWRITE,
    UNCHECKED,
    Write,
    ask_partner,
    local_conflicts,
    refusal,
    writes_of,
)
from ._retry import Breaker, DeliveryConfig, backoff
from ._send import Answer, send_part

__all__ = ["SETTLED", "ClientFactory", "Deliverer", "deliver_rows", "partner_client"]

ClientFactory = Callable[[Partner, DeliveryConfig], httpx.Client]
REFERENCE_TIMEOUT = "delivery.reference-timeout"  # a linked record never came: logical only
# CREDENTIALS_REFUSED (401/403: held, see _send.py) and NO_TOKEN (no token could be had,
# gateway.partners.PartnerAuthError: retried, then held, never dead) are defined once in
# gateway.metrics, whose gauge and the credentials_refused alert count rows by them.
_FIX = "fix its token or certificate (gateway partners check), then: gateway outbox release"


def partner_client(partner: Partner, config: DeliveryConfig) -> httpx.Client:
    """THE one place the worker's HTTP client for a partner is made: pooled keep-alive
    connections (the partner's concurrency), the delivery timeouts, its TLS and its auth
    (bearer, SMART Backend Services, mTLS) and rate limit: gateway.partners."""
    return partners_client(partner, config)


log = logging.getLogger("gateway.delivery")


class Deliverer:
    """Delivers an outbox to its partners. ``clock`` (naive UTC; default: the outbox's)
    and ``rng`` (backoff jitter) are for tests. ``partners_from``: the partners as they
    are now (gateway.partners.PartnersWatch.current), asked before each batch; a
    partner that changed (base URL, auth, TLS...) has its pooled client closed and made
    again, its breaker and what it was found to refuse forgotten."""

    def __init__(
        self,
        outbox: Outbox,
        partners: Mapping[str, Partner],
        config: DeliveryConfig | None = None,
        *,
        clock: Callable[[], datetime] | None = None,
        rng: random.Random | None = None,
        client_factory: ClientFactory = partner_client,
        audit: AuditLog | None = None,
        partners_from: Callable[[], Mapping[str, Partner]] | None = None,
        decide: Decide | None = None,
    ) -> None:
        self.outbox = outbox
        # A never-sent row held for a partner not configured is decided again before it
        # returns to the queue (gateway.delivery.Outbound.return_known); without it,
        # such a row stays held for a person's release (which decides again).
        self.decide = decide
        self.audit = audit  # each send's AuditEvent (gateway.audit.audit_log)
        self.client_factory = client_factory
        self.partners = dict(partners)
        self.partners_from = partners_from
        self._partners_seen: Mapping[str, Partner] = partners  # what partners_from gave last
        self.config = config or DeliveryConfig()
        self.clock = clock or outbox.clock
        self.rng = rng or random.Random()
        self._clients: dict[str, httpx.Client] = {}
        self.breakers: dict[str, Breaker] = {}
        # Partners that refused the overwrite check's batch: asked by plain searches.
        self._no_batch: set[str] = set()
        # Each pooled client's credential files (token, certificate, key, CA), looked at
        # every ``reload_interval`` seconds before a batch (tests: 0, every batch).
        self._credentials: dict[str, FileWatch] = {}
        self.reload_interval = RELOAD_INTERVAL
        # Rows held for a partner not configured are looked at once at the start and
        # after each change of the partners (:meth:`_release_known`), not every batch.
        self._look_for_known = True

    # -- the loop -------------------------------------------------------------------
    def run(self, stop: threading.Event) -> None:
        """Deliver until ``stop`` is set, a batch of ``config.batch`` rows at a time,
        pausing ``poll`` seconds when nothing is due."""
        while not stop.is_set():
            if self.run_once(self.config.batch, stop=stop) == 0:
                stop.wait(self.config.poll)

    def run_once(self, limit: int = 100, stop: threading.Event | None = None) -> int:
        """Claim the due rows (up to ``limit``: :meth:`Outbox.claim_due`) and act on each;
        how many were acted on. Rows of partners whose breaker is open are not even
        claimed, so they never crowd out another partner's rows. Claimed rows not begun
        (stopping, a breaker that opened meanwhile) are released: due again at once."""
        self._follow_partners()
        now = self.clock()
        if self._look_for_known:
            self._release_known(now)
        self.outbox.recover(now)
        self._follow_pauses(now)
        closed_to = [key for key, b in self.breakers.items() if not b.may_try(now)]
        hold = min(self.config.claim_lease, self.config.lease)
        claimed, token = self.outbox.claim_due(now, hold, limit, exclude=closed_to)
        acted = 0
        untouched: list[int] = []  # claimed, never begun: released below
        try:
            for n, record in enumerate(claimed):
                if stop is not None and stop.is_set():
                    untouched.extend(r.id for r in claimed[n:])
                    break  # stopping: the rows not begun are let go, untouched
                try:
                    if self._handle(record, token):
                        acted += 1
                    else:
                        untouched.append(record.id)
                except GatewayError as exc:  # e.g. another worker moved the row: leave it
                    log.warning("outbox record %s: %s", record.id, exc.issue.line())
                except Exception:  # one record's fault never stops the others
                    # A row left sending is asked about once its lease runs out (recover).
                    log.exception("outbox record %s: delivery failed", record.id)
        finally:
            if untouched:
                self.outbox.unclaim(untouched, token)
        return acted

    def _follow_partners(self) -> None:
        """Take the partners ``partners_from`` gives when they changed (a new mapping):
        each partner whose configuration changed, or that is gone, loses its pooled
        client (closed: the next request makes one with the new base URL, auth, TLS),
        its breaker (its failures were the old endpoint's or credentials') and a batch
        refusal remembered. Between batches: no request is in flight then."""
        self._follow_credentials()
        if self.partners_from is None:
            return
        fresh = self.partners_from()
        if fresh is self._partners_seen:
            return
        self._partners_seen = fresh
        for key in {*fresh, *self.partners}:
            if fresh.get(key) == self.partners.get(key):
                continue
            self._forget_client(key)
            self._no_batch.discard(key)
        self.partners = dict(fresh)
        self._look_for_known = True

    def _follow_credentials(self) -> None:
        """A pooled client whose credential files changed since it was made (a token,
        certificate or key replaced in place: gateway.partners.credential_files) is
        closed, and its breaker forgotten (its failures may have been the old
        credentials'): the next request makes the client anew, with the new files, as
        a partners' file change does. Between batches: no request is in flight then."""
        for key, watch in list(self._credentials.items()):
            if watch.changed():
                log.info("partner %s: credential files changed: its client is made again", key)
                self._forget_client(key)

    def _forget_client(self, key: str) -> None:
        client = self._clients.pop(key, None)
        if client is not None:
            client.close()
        self._credentials.pop(key, None)
        self.breakers.pop(key, None)

    def _release_known(self, now: datetime) -> None:
        """Rows held because their partner was not configured, whose partner is again
        (added back to the partners' files, or the worker restarted after it was):
        queued again without a person releasing each (:meth:`Outbox.release_known`;
        a never-sent one decided again first, :attr:`decide`), each move in the row's
        events and as an ``operator`` AuditEvent with the gateway as the only agent (no
        person decided it); a return the policy refused, deciding again, is one too,
        with the refusal as its outcome. Other holds stay held."""
        found = self.outbox.release_known(list(self.partners), now, decide=self.decide)
        for row, refused in found:
            said = f"release: {UNKNOWN_PARTNER}: partner {row.partner} is configured again"
            if refused is None:
                log.info("outbox record %s: partner %s configured again: %s",
                         row.id, row.partner, row.state)  # fmt: skip
            else:
                log.warning("outbox record %s: not released: %s", row.id, refused.issue.line())
                said = f"{said}: refused: {refused.code}: {refused.issue.message}"
            if self.audit is not None:
                self.audit.record_guarded(
                    None,
                    events.event(
                        "operator",
                        outcome="success" if refused is None else "minor",
                        outcome_desc=said,
                        subject=message_subject(row.message_id),
                    ),
                )
        self._look_for_known = False

    def close(self) -> None:
        for client in self._clients.values():
            client.close()
        self._clients.clear()
        self._credentials.clear()

    def __enter__(self) -> Deliverer:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    # -- one record -----------------------------------------------------------------
    def _handle(self, record: OutboxRecord, token: datetime) -> bool:
        """Act on one claimed row (``token``: its claim); False when it was not begun
        (the breaker is open, or the claim is no longer this worker's)."""
        now = self.clock()
        partner = self.partners.get(record.partner)
        if partner is None:
            code = UNKNOWN_PARTNER
            reason = f"{code}: not in the configured partners"
            self.outbox.move(record.id, record.state, "held", reason, now=now, last_error=code)
            return True
        breaker = self.breaker(partner.key)
        if not breaker.allow(now):
            return False  # open: its rows stay due, untouched, until the cool-down ends
        try:
            # Made before the row moves: a client that cannot be made (TLS files half
            # replaced, a certificate renewed before its key) sends nothing, so the row
            # must not look begun (sending, then asked about as an ambiguous send).
            self.client(partner)
        except ConfigError as exc:
            breaker.probing = False  # not sent: the probe is still to come
            log.warning("outbox record %s: not begun: %s", record.id, exc.issue.line())
            return False
        if not self.outbox.renew(record, token, now, self.config.lease):
            breaker.probing = False  # not sent: the probe is still to come
            return False
        parts = self.outbox.parts(record.id)
        part, attempts, state = record.part, record.attempts, record.state
        linked: dict[str, Any] = {}
        note = ""
        writes = writes_of(parts) if part == 0 and state in ("pending", "retrying") else []
        if writes:
            held, note = self._overwrites(record, partner, state, writes, now)
            if held:
                return True  # it would replace another patient's record
        if record.links_until is not None and state in ("pending", "retrying") and part == 0:
            # The first send of a row linked to other records: its references are
            # settled now, once, and kept (a resend sends the same). Retrying with
            # links_until still set: the overwrite check failed before that first send.
            parts, said, refused = self._link(record, parts)
            if refused:  # another patient's record (or no patient to compare): a person
                self.outbox.move(record.id, state, "held", said, now=now, last_error=refused)
                return True
            note = "; ".join(n for n in (note, said) if n)
            linked = {"parts": orjson.dumps(parts), "links_until": None}
        if (
            writes
            and partner.check_overwrite
            and self._asked_overwrite(record, partner, state, writes)
        ):
            return True  # held, or the check had no answer: retried like a failed send
        if state == "waiting":
            resolved = self._resolve(record, partner, parts[part])
            if resolved is None:
                return True
            part, attempts, state = resolved
        while part < len(parts):
            if state != "sending":
                self.outbox.move(
                    record.id,
                    state,
                    "sending",
                    f"sending part {part + 1}/{len(parts)}" + (f"; {note}" if note else ""),
                    now=now,
                    lease=self.config.lease,
                    part=part,
                    **linked,
                )
                state, linked, note = "sending", {}, ""
            attempts += 1
            started = time.perf_counter()
            with self._alive(record.id):
                answer = send_part(
                    self.client(partner), parts[part], self.clock(), self.config.request_deadline
                )
            observe_stage("deliver", time.perf_counter() - started)  # one send, any answer
            trace_attempt(record, answer, now, self.clock)  # when tracing is on
            now = self.clock()
            self._audit(record, partner, parts, answer, attempts)
            self._count(partner, breaker, answer, now)
            if answer.kind != "delivered":
                self._failed(record, part, attempts, answer, now)
                return True
            part, attempts = part + 1, 0
            if part < len(parts):
                self.outbox.move(
                    record.id,
                    "sending",
                    "sending",
                    f"part {part}/{len(parts)} delivered ({answer.reason})",
                    now=now,
                    lease=self.config.lease,
                    status=answer.status,
                    part=part,
                    attempts=0,
                )
        self.outbox.move(
            record.id,
            state,
            "delivered",
            f"all {len(parts)} parts delivered",
            now=now,
            part=len(parts),
            attempts=0,
            last_error=None,
        )
        observe_stage("queue", (now - record.created_at).total_seconds())  # queued → delivered
        return True

    def _resolve(
        self, record: OutboxRecord, partner: Partner, part_bundle: dict[str, object]
    ) -> tuple[int, int, str] | None:
        """Ask the partner about the part of an ambiguous send. (part, attempts, state)
        to go on with, or None when the record was moved (asked later, or held)."""
        breaker = self.breaker(partner.key)
        with self._alive(record.id):
            verdict = ask(self.client(partner), part_bundle)
        now = self.clock()
        part = record.part
        if verdict.found == "unreachable" and self._too_old(record, now):
            # Asked for as long as the record may live and never answered: only a person
            # can tell now whether the partner has it (never sent blindly, never lost).
            breaker.failure(now)
            self.outbox.move(
                record.id,
                "waiting",
                "held",
                f"delivery.unverifiable: the partner never answered the question "
                f"({verdict.reason}), part {part + 1}/{record.part_count}; ask it, then: "
                f"gateway outbox release {record.id}",
                now=now,
                last_error="delivery.unverifiable",
            )
            return None
        if verdict.found == "unreachable":
            breaker.failure(now)
            wait = self._wait(record.attempts + 1, None)
            self.outbox.move(
                record.id,
                "waiting",
                "waiting",
                f"delivery.ambiguous: not asked ({verdict.reason}); ask again in {wait:.1f} s",
                now=now,
                next_at=now + timedelta(seconds=wait),
                attempts=record.attempts + 1,
            )
            return None
        if verdict.found == "refused":
            breaker.failure(now)
            self.outbox.move(
                record.id,
                "waiting",
                "held",
                f"{CREDENTIALS_REFUSED}: partner {record.partner} refused the gateway's "
                f"credentials ({verdict.reason}); {_FIX} {record.id}",
                now=now,
                last_error=CREDENTIALS_REFUSED,
            )
            return None
        breaker.success()
        if verdict.found == "unverifiable":
            self.outbox.move(
                record.id,
                "waiting",
                "held",
                f"delivery.unverifiable: {verdict.reason}",
                now=now,
                last_error="delivery.unverifiable",
            )
            return None
        if verdict.found == "present":
            part += 1
            reason = f"asked: part {part}/{record.part_count} delivered ({verdict.reason})"
            if part == record.part_count:
                self.outbox.move(
                    record.id,
                    "waiting",
                    "delivered",
                    reason,
                    now=now,
                    part=part,
                    attempts=0,
                    last_error=None,
                )
                return None
            self.outbox.move(
                record.id,
                "waiting",
                "sending",
                reason,
                now=now,
                lease=self.config.lease,
                part=part,
                attempts=0,
            )
            return part, 0, "sending"
        if record.attempts >= self.config.max_attempts or self._too_old(record, now):
            # Known absent, so giving up is safe; without it a partner that answers
            # every send ambiguously (200 with an OperationOutcome, HTML, a dropped
            # connection) and applies nothing had the record cycle forever.
            why = "too old" if self._too_old(record, now) else f"{record.attempts} attempts"
            self.outbox.move(
                record.id,
                "waiting",
                "dead",
                f"delivery.gave-up ({why}): asked: {verdict.reason}, part {part + 1}/"
                f"{record.part_count}; last {record.last_error}",
                now=now,
                last_error="delivery.gave-up",
            )
            return None
        reason = f"asked: {verdict.reason}; sending part {part + 1} again"
        self.outbox.move(record.id, "waiting", "sending", reason, now=now, lease=self.config.lease)
        return part, record.attempts, "sending"

    @contextmanager
    def _alive(self, row_id: int) -> Iterator[None]:
        """Keep the row's lease from running out while a request to the partner is in
        flight. The read timeout bounds each read, not the answer: a partner trickling
        its answer (or one slower than a short lease) outlived the lease, and another
        worker took the row as interrupted and sent it again while this one was still
        sending. A worker that dies stops renewing: its lease runs out as before."""
        done = threading.Event()
        every = max(self.config.lease.total_seconds() / 3, 0.01)

        def beat() -> None:
            while not done.wait(every):
                try:
                    self.outbox.keep(row_id, self.clock(), self.config.lease)
                except Exception:  # the store busy or gone: the lease may run out
                    log.exception("outbox record %s: lease not renewed", row_id)

        beating = threading.Thread(target=beat, name=f"lease-{row_id}", daemon=True)
        beating.start()
        try:
            yield
        finally:
            done.set()
            beating.join()

    def _too_old(self, record: OutboxRecord, now: datetime) -> bool:
        return now - record.created_at >= self.config.max_age

    def _failed(
        self,
        record: OutboxRecord,
        part: int,
        attempts: int,
        answer: Answer,
        now: datetime,
        from_state: str = "sending",
    ) -> None:
        where = f"part {part + 1}/{record.part_count}"
        kept: dict[str, Any] = {
            "last_status": answer.status,
            "last_error": answer.code,
            "last_response": answer.body,
            "attempts": attempts,
            "part": part,
        }
        if answer.kind == "dead":
            self.outbox.move(
                record.id,
                from_state,
                "dead",
                f"{answer.code}: {answer.reason}, {where}",
                now=now,
                status=answer.status,
                **kept,
            )
            return
        if answer.kind == "held":
            # Our credentials were refused: nothing was applied and nothing is lost. The
            # row waits for a person to fix the token or certificate, then release it.
            self.outbox.move(
                record.id,
                from_state,
                "held",
                f"{answer.code}: partner {record.partner} refused the gateway's credentials "
                f"(HTTP {answer.status}), {where}; {_FIX} {record.id}",
                now=now,
                status=answer.status,
                **kept,
            )
            return
        if answer.kind == "ambiguous":
            # Never a blind resend: the partner is asked first (gateway/delivery/_ask.py),
            # after a pause that lets a slow partner finish what it received.
            floor = self.config.backoff_base
            if answer.slow:  # asked before it is done, it has nothing yet: a resend
                floor = max(floor, self.config.read_timeout)
            wait = max(floor, self._wait(attempts, None))
            self.outbox.move(
                record.id,
                from_state,
                "waiting",
                f"{answer.code}: {answer.reason}, {where}; ask the partner in {wait:.1f} s",
                now=now,
                status=answer.status,
                next_at=now + timedelta(seconds=wait),
                **kept,
            )
            return
        too_old = self._too_old(record, now)
        if (attempts >= self.config.max_attempts or too_old) and answer.code in NO_TOKEN:
            # Never sent for want of a token: ours to fix, not the record's to die of.
            why = "too old" if too_old else f"{attempts} attempts"
            self.outbox.move(
                record.id,
                from_state,
                "held",
                f"{answer.code}: no credentials for partner {record.partner} ({why}), "
                f"{where}; {_FIX} {record.id}",
                now=now,
                status=answer.status,
                **kept,
            )
            return
        if attempts >= self.config.max_attempts or too_old:
            why = "too old" if too_old else f"{attempts} attempts"
            kept["last_error"] = "delivery.gave-up"
            self.outbox.move(
                record.id,
                from_state,
                "dead",
                f"delivery.gave-up ({why}): last {answer.code}: {answer.reason}, {where}",
                now=now,
                status=answer.status,
                **kept,
            )
            return
        # Never past the record's life: a Retry-After of 10^9 s would park it for decades
        # (neither delivered nor given up); at the end of its life it is tried once more.
        left = (record.created_at + self.config.max_age - now).total_seconds()
        wait = min(self._wait(attempts, answer.wait), max(left, 0.0))
        self.outbox.move(
            record.id,
            from_state,
            "retrying",
            f"{answer.code}: {answer.reason}, {where}; retry in {wait:.1f} s",
            now=now,
            status=answer.status,
            next_at=now + timedelta(seconds=wait),
            **kept,
        )

    def _audit(
        self,
        record: OutboxRecord,
        partner: Partner,
        parts: list[dict[str, Any]],
        answer: Answer,
        attempt: int,
    ) -> None:
        """One send as an AuditEvent, in its own commit (the outbox row moves after it;
        a failed audit write is logged and counted, never fails the delivery)."""
        if self.audit is None:
            return
        # The patient is in one of the parts (a split Bundle): the first that names one.
        subject = next(
            (s for p in parts if (s := bundle_subject(p, record.message_id)).patient),
            bundle_subject(None, record.message_id),
        )
        event = delivery_event(
            partner.key,
            subject,
            url=partner.base,
            delivered=answer.kind == "delivered",
            status=answer.status,
            attempt=attempt,
            basis=basis_of(parts),
            purpose=record.purpose,
        )
        self.audit.record_guarded(None, event)

    def _wait(self, attempt: int, asked: float | None) -> float:
        """Seconds before the next try: what the partner asked (Retry-After), else
        backoff with full jitter."""
        if asked is not None:
            return asked
        return backoff(attempt, self.config.backoff_base, self.config.backoff_cap, self.rng)

    def _count(self, partner: Partner, breaker: Breaker, answer: Answer, now: datetime) -> None:
        """An answer (delivered, or refused: the partner is up) closes the breaker; no
        answer, 5xx, 408 and 429 count as failures, and so does a refusal of our
        credentials: every request would be refused alike, so after a few the partner's
        other rows stay queued (the breaker open) instead of each being held in turn.
        A Retry-After pauses every request to the partner (at most backoff_cap: an
        absurd one must not stop a partner for years), from every worker on the store
        (kept there: :meth:`run_once` reads it before each batch)."""
        if answer.wait is not None:
            until = now + timedelta(seconds=min(answer.wait, self.config.backoff_cap))
            breaker.pause(until)
            self._share_pause(partner, until, now)
        if answer.kind in ("delivered", "dead"):
            breaker.success()
        else:
            breaker.failure(now)

    def _follow_pauses(self, now: datetime) -> None:
        """Take the Retry-After pauses other workers were asked for (the store's
        ``partner_pauses``): their partners' rows are not claimed until then. A pause
        another base URL asked for (the partner has moved since) does not hold."""
        for key, (until, base) in self.outbox.paused_partners(now).items():
            partner = self.partners.get(key)
            if partner is not None and partner.base == base:
                self.breaker(key).pause(until)

    def _share_pause(self, partner: Partner, until: datetime, now: datetime) -> None:
        """Keep a partner's pause for the other workers. Not kept (the store busy or
        gone) only means they learn it from their own next request: this worker's
        pause holds, and the row's own retry time is kept by its move."""
        try:
            self.outbox.pause_partner(partner.key, partner.base, until, now)
        except SQLAlchemyError as exc:
            log.warning("partner %s: its pause not shared (%s)", partner.key, type(exc).__name__)

    # -- per partner ----------------------------------------------------------------
    def breaker(self, key: str) -> Breaker:
        if key not in self.breakers:
            self.breakers[key] = Breaker(
                self.config.breaker_threshold, self.config.breaker_cooldown
            )
        return self.breakers[key]

    def client(self, partner: Partner) -> httpx.Client:
        """The partner's pooled client (keep-alive connections reused across records)."""
        if partner.key not in self._clients:
            # Stamped before the client reads them: a file replaced meanwhile is seen.
            watch = FileWatch(credential_files(partner))
            watch.reload_interval = self.reload_interval
            self._clients[partner.key] = self.client_factory(partner, self.config)
            self._credentials[partner.key] = watch
        return self._clients[partner.key]

    # -- no overwrite of another patient's record (gateway/delivery/_overwrite.py) ------
    def _overwrites(
        self, record: OutboxRecord, partner: Partner, state: str, writes: list[Write], now: datetime
    ) -> tuple[bool, str]:
        """The local guard: hold the row when another row for this partner carried one
        of its updated identifiers for another patient (one indexed query); (held, what
        to say when it goes on). Released by a person since such a hold, with the
        partner's check on, it goes on to that check: the partner says what it holds
        now (the other record may have been corrected there)."""
        refs = {link_ref(w.link) for w in writes if w.link}
        conflicts = local_conflicts(writes, self.outbox.carried_by_others(record.id, refs))
        if not conflicts:
            return False, ""
        if partner.check_overwrite and self.outbox.released_since_overwrite(record.id):
            return False, f"{OVERWRITE}: released by a person: the partner is asked"
        reason = refusal([(w, LOCAL) for w in conflicts], record.id)
        self.outbox.move(record.id, state, "held", reason, now=now, last_error=OVERWRITE)
        return True, ""

    def _asked_overwrite(
        self, record: OutboxRecord, partner: Partner, state: str, writes: list[Write]
    ) -> bool:
        """Ask the partner what each update would replace (one batch of searches). True
        when the row was moved: held (another patient's resource, or our credentials
        refused), or retried with backoff (no readable answer: never written blind)."""
        breaker = self.breaker(partner.key)
        with self._alive(record.id):
            check = ask_partner(
                self.client(partner),
                writes,
                self.clock(),
                partner.max_entries,
                batch=partner.key not in self._no_batch,
                deadline=self.config.request_deadline,
            )
        now = self.clock()
        if check.batch_refused:
            self._no_batch.add(partner.key)
        if check.outcome == "clear":
            return False  # the send follows: its answer is what the breaker counts
        if check.outcome == "held":
            if breaker.probing:  # the half-open probe was answered: the partner is up
                breaker.success()
            reason = refusal(check.refused, record.id)
            self.outbox.move(record.id, state, "held", reason, now=now, last_error=OVERWRITE)
            return True
        # Failed: what a send answered so would mean (retried, held, or dead).
        answer = check.answer or Answer("retry", check.reason, UNCHECKED)
        self._count(partner, breaker, answer, now)
        self._failed(record, 0, record.attempts + 1, answer, now, from_state=state)
        return True

    # -- links at the partner (gateway/delivery/_links.py) ----------------------------
    def _link(
        self, record: OutboxRecord, parts: list[dict[str, Any]]
    ) -> tuple[list[dict[str, Any]], str, str | None]:
        """The parts to send, each logical reference to a record already delivered to
        this partner made conditional (resolved there: linked); what to say; and the
        code to hold the row with when a delivered record providing one of its links is
        not its patient's (the reason is then what to say)."""
        provides: set[Link] = set()
        needs: set[Link] = set()
        for part in parts:
            given, wanted = links_of(part)
            provides |= given
            needs |= wanted
        needs -= provides
        found = self.outbox.delivered_links(record.id, needs)
        refused = {link: code for link, p in found.items() if (code := p.refused())}
        if refused:
            # min: "link-other-patient" sorts before "link-unknown-patient", the graver first
            return parts, self._refusal(record, parts, refused), min(refused.values())
        delivered = set(found)
        parts = resolve_links(parts, delivered)
        missing = needs - delivered
        said = []
        if delivered:
            said.append("linked to " + ", ".join(sorted({k for k, _, _ in delivered})))
        if missing:
            names = ", ".join(sorted({f"{k} ({s})" for k, s, _ in missing}))
            said.append(
                f"{REFERENCE_TIMEOUT}: sent with the logical reference only: {names} "
                "not delivered to this partner in time"
            )
        return parts, "; ".join(said), None

    @staticmethod
    def _refusal(
        record: OutboxRecord, parts: list[dict[str, Any]], refused: Mapping[Link, str]
    ) -> str:
        """The hold's reason: each refused link by code, type, field and identifier
        system (never its value nor anything of the patient)."""
        said = []
        for (kind, system, value), code in sorted(refused.items()):
            fields = ", ".join(link_fields(parts, (kind, system, value))) or "a reference"
            why = (
                "names a record delivered to this partner for another patient (no patient "
                "identifier in common)"
                if code == LINK_OTHER_PATIENT
                else "cannot be checked against the record delivered to this partner: "
                "one of the two names no patient identifier"
            )
            said.append(f"{code}: {fields} identifier ({kind}, system {system}) {why}")
        return (
            "; ".join(said) + "; held, neither linked nor sent unlinked: check the "
            f"identifier at its source, then: gateway outbox release {record.id} "
            "(checked again)"
        )


SETTLED = ("delivered", "dead", "held", "discarded")  # a row no worker will send again


def deliver_rows(
    outbound: Outbound, config: DeliveryConfig, rows: list[int], timeout: float
) -> list[OutboxRecord]:
    """Deliver ``rows`` now, in this process (``gateway send --wait``, the demo), until
    each is settled or ``timeout`` seconds have passed; their rows as they end."""
    outbox = outbound.outbox
    deadline = time.monotonic() + timeout
    with Deliverer(
        outbox,
        outbound.partners,
        config,
        rng=random.Random(),
        audit=outbound.audit,
        decide=outbound.return_known,
    ) as deliverer:
        while time.monotonic() < deadline:
            if all(outbox.require(r).state in SETTLED for r in rows):
                break
            if deliverer.run_once() == 0:
                time.sleep(min(config.poll, 0.2))
    return [outbox.require(r) for r in rows]
