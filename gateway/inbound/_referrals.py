"""Referral status (issue #13 item 6): a ``Task`` per referral received (focus = the
ServiceRequest); the receiving side accepts, rejects (with a reason in
``statusReason``) or completes it, and each new status goes back to the sending
gateway as a transaction Bundle through the outbox (``Outbox.enqueue``). The sender's
own inbound stores that Task, so both sides list the referral with its status.

The Task that travels carries no patient data but one identifier of the patient (the
sender's own, its MRN): its focus, owner and ``for`` are logical references by
identifier (the referral's identifier, the institution's OID, the patient's), which
mean the same at both ends. The sender's gateway stores it only when ``for`` is the
patient it sent that referral for (``outbox_links`` keeps that patient's identifiers
hashed): a referral number reused for another patient never takes that one's status.
"""

from __future__ import annotations

import builtins
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from ..config import Settings
from ..fhirsystems import identifier_key, system_key
from ..mapping import NAMESPACE
from ..network import Institution, Network
from ..partners import Partner, configured_partners
from ..store import Store, metadata, utcnow
from ._errors import InboundError
from ._resources import Resources, Search, Stored, instant

if TYPE_CHECKING:
    from ..delivery import OutboxRecord, StatusReplies

__all__ = [
    "ACTIONS",
    "REFERRAL_CATEGORY",
    "TASK_STATUSES",
    "Referral",
    "Referrals",
    "is_referral",
    "referral_status_detail",
    "same_patient",
    "same_patients",
    "task_patient_sets",
    "task_patients",
]

REFERRAL_CATEGORY = ("http://snomed.info/sct", "3457005")  # Patient referral
REFERRAL_PROFILE = "https://fhir-gateway.example.org/StructureDefinition/referral-servicerequest"
GATEWAY_SID = "https://fhir-gateway.example.org/sid"
# action → (statuses it may start from, the status it sets)
ACTIONS = {
    "accept": (("requested", "received"), "accepted"),
    "reject": (("requested", "received", "accepted"), "rejected"),
    "complete": (("accepted", "in-progress"), "completed"),
}
# FHIR R4 Task.status (http://hl7.org/fhir/task-status, required binding): what a
# referral's Task can say, so `referrals list --status` can refuse a typo
TASK_STATUSES = (
    "draft",
    "requested",
    "received",
    "accepted",
    "rejected",
    "ready",
    "cancelled",
    "in-progress",
    "on-hold",
    "failed",
    "completed",
    "entered-in-error",
)
_CLOSED = ("completed", "rejected", "cancelled", "failed", "entered-in-error")


def is_referral(resource: dict[str, Any]) -> bool:
    """A ServiceRequest that is a patient referral (category SNOMED CT 3457005, or the
    gateway's referral profile)."""
    if resource.get("resourceType") != "ServiceRequest":
        return False
    profiles = (resource.get("meta") or {}).get("profile") or []
    if REFERRAL_PROFILE in profiles:
        return True
    return any(
        (c.get("system"), c.get("code")) == REFERRAL_CATEGORY
        for cat in resource.get("category") or []
        if isinstance(cat, dict)
        for c in cat.get("coding") or []
        if isinstance(c, dict)
    )


@dataclass(frozen=True, slots=True)
class Referral:
    """A referral as listed: its Task and what it is about."""

    task: Stored
    direction: str  # received (a Task made here) | sent (a partner's Task about ours)
    partner: str | None  # the other institution
    referral: str | None  # the referral's identifier "system|value"

    @property
    def status(self) -> str:
        return str(self.task.resource.get("status"))

    @property
    def reason(self) -> str | None:
        text = (self.task.resource.get("statusReason") or {}).get("text")
        return str(text) if text else None

    def to_json(self) -> dict[str, Any]:
        return {
            "task": self.task.logical_id,
            "version": self.task.version,
            "direction": self.direction,
            "partner": self.partner,
            "referral": self.referral,
            "status": self.status,
            "reason": self.reason,
            "last_updated": instant(self.task.last_updated),
        }


def _focus_identifier(task: dict[str, Any]) -> dict[str, Any] | None:
    ident = (task.get("focus") or {}).get("identifier")
    return ident if isinstance(ident, dict) and ident.get("value") else None


def _token(ident: dict[str, Any] | None) -> str | None:
    return f"{ident.get('system') or ''}|{ident['value']}" if ident else None


class Referrals:
    """Tasks of referrals over one store."""

    def __init__(
        self,
        settings: Settings,
        store: Store,
        network: Network | None = None,
        partners: Callable[[], Mapping[str, Partner]] | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.resources = Resources(store)
        self.network = network or Network.load(settings.network)
        # where status updates go: the configured partners (the network's, under the
        # operator's overrides in GATEWAY_HOME)
        self.partners = partners or (lambda: configured_partners(self.settings))
        self._replies: StatusReplies | None = None  # made on the first status sent

    def own(self) -> Institution:
        """This gateway's institution (setting ``institution``)."""
        inst = self.network.institution(self.settings.institution)
        if inst is None:
            raise InboundError(
                "inbound.not-configured",
                "set `institution` (this gateway's institution key in the network) to "
                "receive from partners and answer referrals",
            )
        return inst

    # -- on receipt (inside the inbound transaction) ----------------------------------
    def on_received(
        self, conn: Connection, written: list[Stored], partner: str, now: datetime
    ) -> list[Stored]:
        """A Task for each referral just stored that has none; a cancelled referral
        (ServiceRequest revoked) cancels its open Task. Returns the Tasks written."""
        out = []
        for stored in written:
            if not is_referral(stored.resource):
                continue
            ident = next(iter(stored.resource.get("identifier") or []), None)
            if not isinstance(ident, dict) or not ident.get("value"):
                continue
            task_ident = self._task_identifier(partner, ident)
            found = self.resources.find(  # ours only: a partner's Task may carry our identifier
                conn,
                "Task",
                f"identifier={task_ident['system']}|{task_ident['value']}",
                made_here=True,
            )
            if not found:
                task = self._new_task(stored, ident, task_ident, now)
                out.append(self.resources.write(conn, task, partner=None, now=now)[0])
                continue
            current = self.resources.current(conn, "Task", found[0])
            if current is not None:
                checked = self._checked_subject(conn, stored.resource.get("subject"))
                _same_referral(current.resource, stored.resource, ident, checked)
            revoked = stored.resource.get("status") in ("revoked", "entered-in-error")
            if current is not None and revoked and current.resource.get("status") not in _CLOSED:
                task = {**current.resource, "status": "cancelled", "lastModified": instant(now)}
                out.append(self.resources.write(conn, task, logical_id=found[0], partner=None,
                                                now=now)[0])  # fmt: skip
        return out

    def _checked_subject(self, conn: Connection, subject: Any) -> bool:
        """Whether the identifier beside a stored referral's ``subject`` was compared
        with its Patient when the Bundle was applied (``_apply._check_reference_identity``):
        a ``Patient/<id>`` stored here. One nothing here holds (a Patient/<id> not
        stored, one on the partner's own server) was not: it proves nothing."""
        found = subject.get("reference") if isinstance(subject, dict) else None
        if not isinstance(found, str) or not found.startswith("Patient/"):
            return False
        logical_id = found.removeprefix("Patient/").split("/_history/", 1)[0]
        return (
            "/" not in logical_id
            and self.resources.current(conn, "Patient", logical_id) is not None
        )

    def _task_identifier(self, partner: str, ident: dict[str, Any]) -> dict[str, str]:
        inst = self.network.institution(self.settings.institution)
        base = f"{inst.base}/sid" if inst is not None else GATEWAY_SID
        sender = self.network.institution(partner)
        prefix = sender.facility if sender is not None else partner
        return {"system": f"{base}/referral-task", "value": f"{prefix}-{ident['value']}"}

    def _new_task(
        self, stored: Stored, ident: dict[str, Any], task_ident: dict[str, str], now: datetime
    ) -> dict[str, Any]:
        sr = stored.resource
        task: dict[str, Any] = {
            "resourceType": "Task",
            "identifier": [task_ident],
            "basedOn": [{"reference": stored.reference}],
            "status": "requested",
            "intent": "order",
            "priority": sr.get("priority") if sr.get("priority") in ("routine", "urgent",
                                                                       "asap", "stat") else None,
            "focus": {
                "reference": stored.reference,
                "type": "ServiceRequest",
                "identifier": {"system": ident.get("system"), "value": ident["value"]},
            },
            "for": sr.get("subject"),
            "authoredOn": instant(now),
            "lastModified": instant(now),
            "requester": sr.get("requester"),
        }  # fmt: skip
        inst = self.network.institution(self.settings.institution)
        if inst is not None:
            task["owner"] = _organization(inst)
        return {k: v for k, v in task.items() if v is not None}

    # -- who may report a referral's status --------------------------------------------
    def sent_to(
        self, conn: Connection | None, pairs: set[tuple[str, str]]
    ) -> dict[tuple[str, str, str], tuple[frozenset[str] | None, ...]]:
        """(system, value, partner) of each referral (ServiceRequest identifier ``pairs``)
        the outbox carried to a partner, the one partner that may report its status,
        with the hashed identifiers (delivery's ``patient_ref``) of the patient of each
        outbox row that carried it there (None: not recorded; empty: it named none).
        The outbox keeps both hashed (``outbox_links``): no identifier in the clear."""
        from ..delivery import link_ref  # the outbound side; imported when needed

        refs = {link_ref(("ServiceRequest", system, value)): (system, value)
                for system, value in pairs if system and value}  # fmt: skip
        if not refs:
            return {}
        outbox, links = metadata.tables["outbox"], metadata.tables["outbox_links"]
        query = (
            sa.select(links.c.ref, outbox.c.partner, links.c.patients)
            .join(outbox, outbox.c.id == links.c.outbox_id)
            .where(
                links.c.ref.in_(sorted(refs)),
                links.c.role == "provides",
                links.c.kind == "ServiceRequest",
            )
            .order_by(links.c.id)
        )
        if conn is not None:
            rows = conn.execute(query).all()
        else:
            with self.store.engine.connect() as own:
                rows = own.execute(query).all()
        found: dict[tuple[str, str, str], list[frozenset[str] | None]] = {}
        for row in rows:
            patients = None if row.patients is None else frozenset(str(row.patients).split())
            found.setdefault((*refs[row.ref], str(row.partner)), []).append(patients)
        return {key: tuple(patients) for key, patients in found.items()}

    def check_status_sender(
        self, task: dict[str, Any], partner: str, where: str, bundle_patients: Any = None
    ) -> None:
        """Refuse a partner's Task about a referral of ours (its focus identifier under
        this institution's base, or one the outbox sent) that was not sent to that
        partner (403 ``inbound.wrong-sender``: only the partner a referral went to
        reports its status, or any partner could set what ``referrals list`` shows), or
        whose patient (``Task.for``) is not the referral's (409
        ``inbound.referral-mismatch``: a referral number reused for another patient
        would otherwise take that patient's status). ``where``: the entry
        (``Bundle.entry[n].resource``); ``bundle_patients``: the Bundle's Patient
        entries by fullUrl (``Task.for`` may name one)."""
        focus = task.get("focus")
        ident = focus.get("identifier") if isinstance(focus, dict) else None
        if not isinstance(ident, dict) or not ident.get("value") or not ident.get("system"):
            return
        system, value = str(ident["system"]), str(ident["value"])
        sent = self.sent_to(None, {(system, value)})
        carried = sent.get((system, value, partner))
        if carried is None:
            if not (sent or system.startswith(f"{self.own().base}/")):
                return  # not a referral of ours: a resource like any other
            raise InboundError(
                "inbound.wrong-sender",
                f"{where}.focus names a referral this gateway did not send to {partner}: "
                "only the partner a referral was sent to reports its status",
                expression=f"{where}.focus",
                issue_type="forbidden",
            )
        problem = same_patients(task_patient_sets(task, bundle_patients or {}), carried)
        if problem is not None:
            raise InboundError(
                "inbound.referral-mismatch",
                f"{where}.for {problem}: a status changes only the referral of the patient "
                "it was sent for; nothing is stored",
                expression=f"{where}.for",
            )

    # -- listing ----------------------------------------------------------------------
    def list(self, status: str | None = None, direction: str | None = None) -> list[Referral]:
        where = Search(status=[status] if status else [])
        found: list[Referral] = []
        after = 0
        while True:
            page, nxt = self.resources.search("Task", where, 500, after)
            found += [self._referral(t) for t in page]
            if nxt is None:
                break
            after = nxt
        return [r for r in self._reported(found) if direction in (None, r.direction)]

    def _reported(self, found: builtins.list[Referral]) -> builtins.list[Referral]:
        """``found`` without a partner's Task that is no status of a referral sent to
        that partner (one stored before such Tasks were refused, about a referral this
        gateway never sent, or about another patient than the referral's): it is never
        shown as a referral's status."""
        focus = {_pair(r.referral) for r in found if r.direction == "sent" and r.referral}
        sent = self.sent_to(None, focus)
        return [
            r
            for r in found
            if r.direction == "received"
            or (
                r.referral is not None
                and (carried := sent.get((*_pair(r.referral), str(r.partner)))) is not None
                # a Task of another patient (or naming none) is no status of this referral
                and same_patients(self._patients_of(r.task), carried) is None
            )
        ]

    def _patients_of(self, task: Stored) -> builtins.list[frozenset[str]]:
        """:func:`task_patient_sets` of a stored Task: its ``for`` was made literal on
        receipt (``Patient/id`` of the Patient the partner sent), so read it."""
        ref = task.resource.get("for")
        literal = str(ref.get("reference") or "") if isinstance(ref, dict) else ""
        patient = None
        if literal.startswith("Patient/"):
            patient = self.resources.read("Patient", literal.removeprefix("Patient/"))
        known = {literal: patient.resource} if patient is not None else {}
        return task_patient_sets(task.resource, known)

    def _referral(self, task: Stored) -> Referral:
        ident = _focus_identifier(task.resource)
        if task.partner is not None:
            return Referral(task, "sent", task.partner, _token(ident))
        return Referral(task, "received", self._sender_of(task), _token(ident))

    def _sender_of(self, task: Stored) -> str | None:
        ref = str((task.resource.get("focus") or {}).get("reference") or "")
        if not ref.startswith("ServiceRequest/"):
            return None
        sr = self.resources.read("ServiceRequest", ref.split("/")[1])
        return sr.partner if sr is not None else None

    def get(self, key: str) -> Referral:
        """A referral by its Task's id, or by the referral's identifier value."""
        task = self.resources.read("Task", key)
        if task is None:
            for referral in self.list():
                if (referral.referral or "").split("|")[-1] == key:
                    return referral
            raise InboundError(
                "inbound.referral-not-found",
                "no referral Task with that id, nor a referral with that identifier",
            )
        return self._referral(task)

    # -- acting -----------------------------------------------------------------------
    def act(
        self, key: str, action: str, reason: str | None = None
    ) -> tuple[Referral, int | None, str]:
        """Accept, reject or complete a referral received here: the Task's new version,
        the outbox row that takes the status to the sender (None when it cannot be
        queued) and a sentence saying what happened to the status update."""
        starts, target = ACTIONS[action]
        if action == "reject" and not (reason or "").strip():
            raise InboundError(
                "inbound.reason-required", "a rejection needs a reason (statusReason)"
            )
        referral = self.get(key)
        if referral.direction != "received":
            raise InboundError(
                "inbound.referral-state",
                "this Task is the partner's (a referral sent from here): only the receiving "
                "side changes its status",
            )
        current = referral.task.resource
        if current.get("status") not in starts:
            raise InboundError(
                "inbound.referral-state",
                f"cannot {action} a referral whose Task is {current.get('status')} (from "
                f"{', '.join(starts)})",
            )
        now = utcnow()
        task = {**current, "status": target, "lastModified": instant(now)}
        if action == "reject":
            task["statusReason"] = {"text": str(reason).strip()}
        with self.store.engine.execution_options(write=True).begin() as conn:
            locked = self.resources.current(conn, "Task", referral.task.logical_id)
            if locked is None or locked.version != referral.task.version:
                raise InboundError(
                    "inbound.referral-state", "the Task changed meanwhile: try again"
                )
            stored, _ = self.resources.write(
                conn, task, logical_id=referral.task.logical_id, partner=None, now=now
            )
        updated = Referral(stored, "received", referral.partner, referral.referral)
        row, note = self.notify(updated)
        return updated, row, note

    def notify(self, referral: Referral) -> tuple[int | None, str]:
        """Queue the Task's current status for the gateway that sent the referral
        (again: the outbox keeps one row per identical Bundle). Across a boundary the
        policy decides it first (its ``status_rules``: gateway/delivery/_status.py):
        allowed, queued on its recorded basis; else held in the outbox, not sent."""
        from ..delivery import StatusReplies

        if referral.partner is None:
            return None, "the referral's sender is not known: status kept here only"
        partner = self.partners().get(referral.partner)
        if partner is None:
            return None, (
                f"no partner endpoint for {referral.partner!r} (seeds/partners.yaml): "
                "status kept here only"
            )
        if self._replies is None:
            self._replies = StatusReplies(
                self.settings, self.store, network=self.network, partners=self.partners
            )
        row, note = self._replies.queue(
            partner,
            self.status_bundle(referral.task),
            self.own().key,
            label=f"referral {referral.referral.split('|')[-1] if referral.referral else ''} "
            f"{referral.status}"[:255],
            order_key=f"referral|{referral.referral}"[:255] if referral.referral else None,
        )
        return row, f"status {referral.status} {note}"

    def status_bundle(self, task: Stored) -> dict[str, Any]:
        """The transaction Bundle that carries a Task's status to the referral's sender:
        one conditional update by the Task's identifier, logical references only."""
        own = self.own()
        body = task.resource
        ident = (body.get("identifier") or [{}])[0]
        out: dict[str, Any] = {
            "resourceType": "Task",
            "identifier": [ident],
            "status": body.get("status"),
            "statusReason": body.get("statusReason"),
            "intent": body.get("intent", "order"),
            "focus": {"type": "ServiceRequest", "identifier": _focus_identifier(body)},
            # the patient by one identifier, the sender's own: its gateway matches it
            # against the referral's patient (a number reused for another patient)
            "for": self._patient(task),
            "authoredOn": body.get("authoredOn"),
            "lastModified": body.get("lastModified") or instant(task.last_updated),
            "owner": _organization(own),
        }
        out = {k: v for k, v in out.items() if v is not None}
        key = f"Task|{ident.get('system')}|{ident.get('value')}|{task.version}"
        return {
            "resourceType": "Bundle",
            "id": str(uuid.uuid5(NAMESPACE, f"Bundle|{key}")),
            "identifier": {
                "system": f"{own.base}/sid/referral-status",
                "value": f"{task.logical_id}-{task.version}",
            },
            "type": "transaction",
            "timestamp": instant(task.last_updated),
            "entry": [
                {
                    "fullUrl": f"urn:uuid:{uuid.uuid5(NAMESPACE, key)}",
                    "resource": out,
                    "request": {
                        "method": "PUT",
                        "url": f"Task?identifier={ident.get('system')}|{ident.get('value')}",
                    },
                }
            ],
        }

    def _patient(self, task: Stored) -> dict[str, Any] | None:
        """``Task.for`` of the status that goes back: a logical reference by one
        identifier of the referral's patient (the Patient stored here), the one under
        the sender's identifier base (its MRN) when there is one, else the first: the
        sender already holds it, and no other patient data travels."""
        ref = task.resource.get("for")
        if not isinstance(ref, dict):
            return None
        found: list[Any] = [ref.get("identifier")]
        literal = str(ref.get("reference") or "")
        if literal.startswith("Patient/"):
            patient = self.resources.read("Patient", literal.removeprefix("Patient/"))
            if patient is not None:
                # The Patient the referral was stored for is its patient: an identifier
                # written beside the reference that is none of that Patient's (another
                # patient's number, a mistake) never goes back as the referral's.
                ids = [_pair_of(i) for i in patient.resource.get("identifier") or []]
                found = [i for i in found if _pair_of(i) in ids] + list(
                    patient.resource.get("identifier") or []
                )
        usable = [
            {"system": str(i["system"]), "value": str(i["value"])}
            for i in found
            if isinstance(i, dict) and i.get("system") and i.get("value")
        ]
        sender = self.network.institution(self._sender_of(task) or "")
        base = f"{sender.base}/" if sender is not None else None
        chosen = [i for i in usable if base and i["system"].startswith(base)] or usable
        return {"type": "Patient", "identifier": chosen[0]} if chosen else None


def _pair_of(ident: Any) -> tuple[str, str] | None:
    """An Identifier as (system, value); None when it is no usable one."""
    if not isinstance(ident, dict) or not ident.get("system") or not ident.get("value"):
        return None
    return str(ident["system"]), str(ident["value"])


def _pair(token: str) -> tuple[str, str]:
    """A ``system|value`` token as (system, value)."""
    system, _, value = token.rpartition("|")
    return system, value


def task_patients(task: dict[str, Any], bundle_patients: Mapping[str, Any]) -> frozenset[str]:
    """The hashed identifiers (delivery's ``patient_ref``, as ``outbox_links`` keeps
    them) of the patient a Task is for: ``Task.for`` by identifier (a logical
    reference), by a conditional reference ``Patient?identifier=system|value``, or by
    a reference to a Patient entry of its Bundle (``bundle_patients``, by fullUrl).
    Empty: it names no patient identifier. Any JSON is read (before validation)."""
    return frozenset().union(*task_patient_sets(task, bundle_patients))


def task_patient_sets(
    task: dict[str, Any], bundle_patients: Mapping[str, Any]
) -> list[frozenset[str]]:
    """:func:`task_patients` one set per way ``Task.for`` names a patient (its
    identifier; its reference): each must be the referral's patient, or an identifier
    of that patient beside a reference to another would pass for it."""
    from ..delivery import patient_ref  # the outbound side's hashing, imported when needed

    ref = task.get("for")
    if not isinstance(ref, dict):
        return []
    named: list[list[Any]] = [[ref.get("identifier")]] if "identifier" in ref else []
    literal = ref.get("reference")
    if isinstance(literal, str):
        path, mark, query = literal.partition("?")
        if path == "Patient" and mark and query.startswith("identifier=") and "&" not in query:
            system, _, value = unquote(query.removeprefix("identifier=")).partition("|")
            named.append([{"system": system, "value": value}])
        patient = bundle_patients.get(literal)
        if isinstance(patient, dict):
            ids = patient.get("identifier")
            named.append(ids if isinstance(ids, list) else [])
        elif not (path == "Patient" and mark):
            # Patient/id (or any URL) outside the Bundle: whose it is cannot be seen here,
            # so it names no identifier; beside an identifier it would otherwise pass
            named.append([])
    return [
        frozenset(
            patient_ref(str(i["system"]), str(i["value"]))
            for i in found
            if isinstance(i, dict) and i.get("system") and i.get("value")
        )
        for found in named
    ]


def same_patient(mine: frozenset[str], carried: tuple[frozenset[str] | None, ...]) -> str | None:
    """None when a Task naming patient ``mine`` is about the referral the outbox rows
    ``carried`` sent (each row's patient shares an identifier with it); else what is
    wrong, without patient data. Every row counts: the same referral number sent for
    two patients cannot say whose a status is."""
    if not mine:
        return "names no patient identifier (a logical or conditional reference by identifier)"
    if any(p and not p & mine for p in carried):
        return "names another patient than the referral's"
    if not all(carried):
        return "cannot be matched: the outbox kept no patient identifier for the referral"
    return None


def same_patients(
    named: list[frozenset[str]], carried: tuple[frozenset[str] | None, ...]
) -> str | None:
    """:func:`same_patient` for every patient ``Task.for`` names (its identifier, its
    reference): the first problem, or None."""
    for mine in named or [frozenset()]:
        problem = same_patient(mine, carried)
        if problem is not None:
            return problem
    return None


def _same_referral(
    task: dict[str, Any], sr: dict[str, Any], ident: dict[str, Any], checked: bool
) -> None:
    """The Task found for a referral is that referral's: the same identifier (system and
    value: the Task's own identifier keeps the value only; the system however spelled,
    ``gateway/fhirsystems.py``: as written, the referral resent with ``…/sid/referral/`` was
    "another referral's" and refused) and the same patient. Else the referral would
    change another referral's, or another patient's, Task. ``checked``: the subject's
    identifier was compared with its stored Patient."""
    focus = _focus_identifier(task) or {}
    element = "ServiceRequest.identifier"
    if _referral_key(focus) != _referral_key(ident):
        problem = "another referral's (the identifiers differ in their system)"
    elif _unidentified(task.get("for")) or _unidentified(sr.get("subject")):
        problem = (
            "not shown to be the same patient's: ServiceRequest.subject (or the Task's "
            "for) names none (a display, or an identifier without a system, proves no "
            "patient; send a reference or an identifier with its system)"
        )
        element = "ServiceRequest.subject"
    elif not _same_subject(task.get("for"), sr.get("subject"), checked):
        problem = "the referral of another patient (ServiceRequest.subject differs)"
    else:
        return
    raise InboundError(
        "inbound.referral-mismatch",
        f"the referral's Task is {problem}; nothing is stored",
        expression=element,
    )


def _referral_key(ident: dict[str, Any]) -> tuple[Any, Any]:
    """A referral's identifier as compared: its system as :func:`system_key` has it
    (anything else, none included, as written: no system is not one written ''), its
    value as written."""
    system = ident.get("system")
    return (system_key(system) if isinstance(system, str) else system), ident.get("value")


def _unidentified(ref: Any) -> bool:
    """A Reference that names no patient anything can match: neither a reference nor
    an identifier with a system (``{"display": "陳大文"}``, ``{"identifier": {"value":
    "0098765"}}``). Two equal ones are still no proof: two patients may share a name,
    and a bare number any namespace."""
    return not isinstance(ref, dict) or (_literal(ref) is None and _identifier(ref) is None)


def _same_subject(first: Any, now: Any, checked: bool) -> bool:
    """Whether a resent referral's ``subject`` names the patient its Task is ``for``
    (the first one's subject): when either is literal, the same literal reference (both
    stored resolved, ``Patient/<id>``) — an identifier or display added or changed
    beside it is more about that patient, not another one when it was checked to be
    that Patient's as the Bundle was applied (``checked``:
    ``_apply._check_reference_identity``); beside a reference nothing here can check
    (a Patient not stored here, one on the partner's server) the two identifiers, when
    both are written, must be one (else the referral would name two patients); or, both
    logical, the same identifier with a system (one without a system proves no
    patient). Systems are compared however spelled (``gateway/fhirsystems.py``). The two being
    equal proves nothing by itself: ``{"display": "陳大文"}`` twice is no patient (it
    kept the Task before). Anything else: another patient."""
    if not isinstance(first, dict) or not isinstance(now, dict):
        return False
    literal = [_literal(first), _literal(now)]
    if any(literal):
        if literal[0] is None or literal[0] != literal[1]:
            return False
        written = [_as_written(first), _as_written(now)]
        return checked or None in written or written[0] == written[1]
    token = [_identifier(first), _identifier(now)]
    return token[0] is not None and token[0] == token[1]


def _literal(ref: dict[str, Any]) -> str | None:
    found = ref.get("reference")
    return found.split("/_history/", 1)[0] if isinstance(found, str) and found else None


def _identifier(ref: dict[str, Any]) -> tuple[str, str] | None:
    """A Reference's identifier with a system, as compared; None without one."""
    ident = ref.get("identifier")
    if isinstance(ident, dict) and ident.get("system") and ident.get("value"):
        return identifier_key(ident)
    return None


def _as_written(ref: dict[str, Any]) -> tuple[str, str] | None:
    """A Reference's identifier as compared, '' for no system; None without one."""
    ident = ref.get("identifier")
    if isinstance(ident, dict) and ident.get("value"):
        return identifier_key(ident)
    return None


def _organization(inst: Institution) -> dict[str, Any]:
    ref: dict[str, Any] = {"type": "Organization", "display": inst.name("zh-Hans", "zh-Hant")}
    if inst.oid:
        ref["identifier"] = {"system": "urn:ietf:rfc:3986", "value": f"urn:oid:{inst.oid}"}
    return ref


def referral_status_detail(
    settings: Settings, store: Store, record: OutboxRecord, parts: list[dict[str, Any]]
) -> list[tuple[str, str]]:
    """For ``gateway outbox show``: the status its partner reported back (the Task it
    sent about our referral) for each referral an outbox record carried to it."""
    sent = {
        _token(ident)
        for part in parts
        for entry in part.get("entry") or []
        if is_referral(resource := entry.get("resource") or {})
        for ident in resource.get("identifier") or []
        if isinstance(ident, dict) and ident.get("value")
    }
    if not sent:
        return []
    found = [
        r
        for r in Referrals(settings, store).list(direction="sent")
        if r.partner == record.partner and r.referral in sent
    ]
    if not found:
        return [("referral", f"no status from {record.partner} yet")]
    return [
        ("referral", f"{r.status} at {r.partner}" + (f" ({r.reason})" if r.reason else ""))
        for r in found
    ]
