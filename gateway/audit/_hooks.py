"""The events of the pipeline's steps, made from what each stage already holds (a
``Record``, a policy ``Decision``, a delivery attempt), for the stages to append with
:meth:`AuditLog.record` (or ``record_in`` inside their own transaction).

Where each is called (docs/audit.md, "Hook points: what is wired"): store processing
through ``store_hook`` (passed to ``process_message`` by its callers); the policy's
decisions and consents (gateway/policy/_records.py); signing and each send
(gateway/delivery); the inbound endpoint; operator commands (``record_operator``).
Every stage appends with :meth:`AuditLog.record_guarded`: an audit failure never fails
the record.
"""

from __future__ import annotations

import getpass
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy.engine import Connection

from ..config import Settings
from ..envelope import Record
from ..store import Store
from ._events import (
    BASIS_SYSTEM,
    Subject,
    converted,
    delivery,
    operator_action,
    policy_decision,
    received,
    validation_failed,
)
from ._log import AuditLog

__all__ = [
    "audit_log",
    "basis_of",
    "bundle_subject",
    "decision_event",
    "delivery_event",
    "message_subject",
    "operator",
    "record_events",
    "record_operator",
    "store_hook",
    "subject_of",
]

DEFER = 0.2  # seconds a deferred event waits for a commit to join before its own

StoreHook = Callable[[Connection, int, Sequence[Record]], None]


def audit_log(store: Store, settings: Settings | None = None) -> AuditLog | None:
    """The stages' audit log over ``store``; None when ``audit_enabled`` is off. Its
    appends outside a caller's transaction join the store's next write commit (within
    DEFER seconds: ``AuditLog(defer=)``) rather than paying a commit each."""
    if settings is not None and not settings.audit_enabled:
        return None
    return AuditLog(store, defer=DEFER)


def store_hook(
    log: AuditLog | None, *, channel: str, peer: str | None = None, with_receipt: bool = True
) -> StoreHook | None:
    """What store processing (``process_message(audit=...)``) calls inside the
    transaction that keeps a conversion's outcome: received, then converted or
    validation-failed, for each record of the message (``with_receipt`` False: a
    reprocessed message, received long ago: its outcome only). The store cannot import
    the audit (an earlier stage), so the caller that knows the channel passes this."""
    if log is None:
        return None
    skip = 0 if with_receipt else 1

    def hook(conn: Connection, message_id: int, records: Sequence[Record]) -> None:
        found = [
            e
            for r in records
            for e in record_events(r, channel=channel, peer=peer, message_id=message_id)[skip:]
        ]
        log.record_guarded(conn, *found)

    return hook


def operator() -> str:
    """Who runs a command: the OS account (an operator's events name it)."""
    try:
        return getpass.getuser()
    except (OSError, KeyError):
        return "operator"


def record_operator(
    store: Store,
    settings: Settings,
    action: str,
    message_ids: Iterable[int | None],
    who: str | None = None,
    refused: str | None = None,
) -> None:
    """An operator's action on stored messages (reprocess, retry, replay, release),
    one event per message, in a commit of its own (after the action succeeded).
    ``refused``: the action was tried and refused (its error code and message, which
    name no patient data): the event says so, its outcome a failure (minor)."""
    if not settings.audit_enabled:
        return
    log = AuditLog(store)  # a commit of its own: the command may end right after
    said = action if refused is None else f"{action} refused: {refused}"
    outcome = "success" if refused is None else "minor"
    made = [
        operator_action(said, who or operator(), message_subject(m), outcome=outcome)
        for m in message_ids
    ]
    if made:
        log.record_guarded(None, *made)


def message_subject(message_id: int | None, patient: str | None = None) -> Subject:
    """A stored message (and its patient, when known) as an event's entities."""
    records = (f"{_MESSAGE}|{message_id}",) if message_id is not None else ()
    return Subject(patient, records)


PSEUDONYM = "https://fhir-gateway.example.org/sid/patient-pseudonym"


def subject_of(record: Record, message_id: int | None = None) -> Subject:
    """The patient (the Bundle's Patient, by its logical id) and the records (the
    Bundle, the stored message) of a record; no value from inside the record but ids."""
    bundle = record.bundle if record.bundle_json else None
    subject = bundle_subject(bundle if isinstance(bundle, dict) else None, message_id)
    detail: tuple[tuple[str, str], ...] = ()
    if record.control_id:
        detail += (("control-id", record.control_id),)
    if record.message_type:
        detail += (("message-type", record.message_type),)
    return Subject(subject.patient, subject.records, detail)


def bundle_subject(bundle: Mapping[str, Any] | None, message_id: int | None = None) -> Subject:
    """The patient (``Patient/<logical id>``, as the converter made it: the same in
    every event of a record, before and after the policy) and records of a Bundle."""
    patient = None
    records: list[str] = []
    if bundle is not None:
        if bundle.get("id"):
            records.append(f"Bundle/{bundle['id']}")
        for entry in bundle.get("entry") or []:
            resource = entry.get("resource") or {}
            if resource.get("resourceType") == "Patient" and resource.get("id"):
                patient = f"Patient/{resource['id']}"
                break
    if message_id is not None:
        records.append(f"{_MESSAGE}|{message_id}")
    return Subject(patient, tuple(records))


def basis_of(bundles: Iterable[Mapping[str, Any]]) -> str | None:
    """The legal basis the policy labelled a Bundle's resources with (meta.security)."""
    for bundle in bundles:
        for entry in bundle.get("entry") or []:
            for label in ((entry.get("resource") or {}).get("meta") or {}).get("security") or []:
                if label.get("system") == BASIS_SYSTEM and label.get("code"):
                    return str(label["code"])
    return None


_MESSAGE = "https://fhir-gateway.example.org/sid/stored-message"


def record_events(
    record: Record,
    *,
    channel: str = "cli",
    peer: str | None = None,
    message_id: int | None = None,
    when: datetime | None = None,
) -> list[dict[str, Any]]:
    """Record received, then converted or failed (the first error's code)."""
    subject = subject_of(record, message_id)
    first = received(record.sender or "unknown", subject, peer=peer, channel=channel, when=when)
    if record.ok:
        return [first, converted(subject, when=when)]
    code = record.errors[0].code if record.errors else "internal"
    return [first, validation_failed(subject, code, when=when)]


def decision_event(decision: Any, subject: Subject, when: datetime | None = None) -> dict[str, Any]:
    """A policy ``Decision`` (gateway/policy): sender, recipient, outcome, basis,
    agreement, purpose; every individual of the record by the policy's pseudonyms (each
    identifier's, so any of them finds the event: the first as the subject, when
    ``subject`` names none); the consents it rests on; the caller's notes (a resend's
    action and parts) as details."""
    people = [f"{PSEUDONYM}|{p}" for p in (decision.individuals or decision.patients)]
    notes = tuple(getattr(decision, "notes", ()) or ())
    patient = subject.patient or (people[0] if people else None)
    subject = Subject(patient, subject.records, (*subject.detail, *notes))
    return policy_decision(
        decision.sender,
        decision.recipient,
        decision.outcome,
        subject,
        basis=decision.basis,
        agreement=decision.agreement,
        purpose=decision.purpose,
        patients=people,
        consents=getattr(decision, "consents", ()) or (),
        when=when or decision.decided_at,
    )


def delivery_event(
    partner: str,
    subject: Subject,
    *,
    url: str | None,
    delivered: bool,
    status: int | None,
    attempt: int,
    basis: str | None,
    agreement: str | None = None,
    purpose: str | None = None,
    when: datetime | None = None,
) -> dict[str, Any]:
    """One send to a partner: success when it was delivered, else a serious failure
    with the partner's HTTP status."""
    return delivery(
        partner,
        subject,
        url=url,
        outcome="success" if delivered else "serious",
        basis=basis,
        agreement=agreement,
        purpose=purpose,
        status=status,
        attempt=attempt,
        when=when,
    )
