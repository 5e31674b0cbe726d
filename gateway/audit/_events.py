"""FHIR AuditEvents for what the gateway does, following IHE Basic Audit Log Patterns
(BALP, IHE ITI.BasicAudit): DICOM audit codes for the event type (DCM 110100
Application Activity, 110106 Export, 110107 Import, 110113 Security Alert, ...), ISO
21089 lifecycle codes as subtypes, BALP's agent roles (110153 Source Role ID, 110152
Destination Role ID), the patient as an ``entity`` of type Person and role Patient
whose ``what`` is a reference, never a name or clinical text.

Every event also carries one gateway subtype (``KIND_SYSTEM``) saying which of the
gateway's event kinds it is, so that the log and the transfer report read it back
without guessing. Builders return plain dicts; :meth:`AuditLog.record` appends them.
"""

from __future__ import annotations

import socket
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

__all__ = [
    "BASIS_EXTENSION",
    "DISCLOSURE",
    "GATEWAY",
    "KINDS",
    "KIND_SYSTEM",
    "PROFILE",
    "Party",
    "Subject",
    "api_read",
    "consent_changed",
    "consent_entity",
    "converted",
    "delivery",
    "event",
    "inbound_receipt",
    "keys_of",
    "operator_action",
    "policy_decision",
    "received",
    "signature_verified",
    "signed",
    "validation_failed",
]

CANONICAL = "https://fhir-gateway.example.org"
PROFILE = f"{CANONICAL}/StructureDefinition/audit-event"
DISCLOSURE = f"{CANONICAL}/StructureDefinition/audit-event-disclosure"  # delivery, inbound
KIND_SYSTEM = f"{CANONICAL}/CodeSystem/audit-event-kind"
BASIS_EXTENSION = f"{CANONICAL}/StructureDefinition/audit-legal-basis"
BASIS_SYSTEM = f"{CANONICAL}/CodeSystem/cross-border-legal-basis"
PURPOSE_SYSTEM = f"{CANONICAL}/CodeSystem/transfer-purpose"
FACILITY = f"{CANONICAL}/sid/hl7-facility"
OPERATOR = f"{CANONICAL}/sid/operator"
DCM = "http://dicom.nema.org/resources/ontology/DCM"
LIFECYCLE = "http://terminology.hl7.org/CodeSystem/iso-21089-lifecycle"
EVENT_TYPE = "http://terminology.hl7.org/CodeSystem/audit-event-type"
REST = "http://hl7.org/fhir/restful-interaction"
OUTCOME = {"success": "0", "minor": "4", "serious": "8", "major": "12"}
ENTITY_TYPE = "http://terminology.hl7.org/CodeSystem/audit-entity-type"
OBJECT_ROLE = "http://terminology.hl7.org/CodeSystem/object-role"
SOURCE_TYPE = "http://terminology.hl7.org/CodeSystem/security-source-type"
NETWORK_TYPE = "http://terminology.hl7.org/CodeSystem/network-type"
PARTICIPATION = "http://terminology.hl7.org/CodeSystem/v3-ParticipationType"
SOURCE_ROLE = (DCM, "110153", "Source Role ID")
DESTINATION_ROLE = (DCM, "110152", "Destination Role ID")
IRCP = (PARTICIPATION, "IRCP", "information recipient")

# kind → (type (system, code, display), action, lifecycle subtype)
KINDS: dict[str, tuple[tuple[str, str, str], str, str]] = {
    "received": ((DCM, "110107", "Import"), "C", "receive"),
    "converted": ((DCM, "110100", "Application Activity"), "E", "transform"),
    "validation-failed": ((DCM, "110100", "Application Activity"), "E", "transform"),
    "policy-decision": ((DCM, "110113", "Security Alert"), "E", "disclose"),
    "signed": ((DCM, "110100", "Application Activity"), "E", "attest"),
    "delivery": ((DCM, "110106", "Export"), "R", "disclose"),
    "inbound": ((DCM, "110107", "Import"), "C", "disclose"),
    "signature-verified": ((DCM, "110100", "Application Activity"), "E", "verify"),
    "consent": ((DCM, "110110", "Patient Record"), "U", "amend"),
    "operator": ((DCM, "110100", "Application Activity"), "E", "access"),
    "api-read": ((EVENT_TYPE, "rest", "Restful Operation"), "R", "access"),
    "audit-export": ((DCM, "110101", "Audit Log Used"), "R", "access"),
}
_LIFECYCLE_DISPLAY = {
    "receive": "Receive Record Lifecycle Event",
    "transform": "Transform/Translate Record Lifecycle Event",
    "disclose": "Disclose Record Lifecycle Event",
    "attest": "Attest Record Lifecycle Event",
    "verify": "Verify Record Lifecycle Event",
    "amend": "Amend (Update) Record Lifecycle Event",
    "access": "Access/View Record Lifecycle Event",
}


@dataclass(frozen=True, slots=True)
class Party:
    """Who took part: the gateway, a partner institution (facility code), an operator
    (login), a system (a listener, a worker), with where it was on the network."""

    kind: str  # gateway | partner | operator | system
    name: str  # facility code, login or component name; never a patient's
    network: str | None = None  # address, host:port or URL
    requestor: bool = False
    role: tuple[str, str, str] | None = None  # (system, code, display): agent.type
    title: str | None = None  # agent.role as text: an API token's role (auditor, ...)

    def agent(self) -> dict[str, Any]:
        system = {"partner": FACILITY, "operator": OPERATOR}.get(
            self.kind, f"{CANONICAL}/sid/system"
        )
        agent: dict[str, Any] = {}
        if self.role:
            agent["type"] = _concept(*self.role)
        if self.title:
            agent["role"] = [{"text": self.title}]
        agent["who"] = {"identifier": {"system": system, "value": self.name}, "display": self.name}
        agent["requestor"] = self.requestor
        if self.network:
            kind = "5" if "://" in self.network else ("2" if _is_ip(self.network) else "1")
            agent["network"] = {"address": self.network, "type": kind}
        return agent


# The gateway as an agent: its name and host (BALP wants the source's network address).
GATEWAY = Party("gateway", "fhir-gateway", socket.gethostname() or None)


@dataclass(frozen=True, slots=True)
class Subject:
    """What the event is about: the patient (a reference by id or identifier) and the
    records (``Type/id`` references or identifiers such as the message's control id)."""

    patient: str | None = None  # "Patient/<id>" or "system|value"
    records: tuple[str, ...] = ()  # "Bundle/<id>", "message/<store id>", "ServiceRequest/.."
    detail: tuple[tuple[str, str], ...] = ()  # (type, value) pairs: counts, codes; no text

    def entities(self) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = []
        if self.patient:
            patient = self.patient
            if "|" not in patient and "/" not in patient:
                patient = f"Patient/{patient}"  # a bare logical id
            found.append(
                {
                    "what": _reference(patient, "Patient"),
                    "type": _coding(ENTITY_TYPE, "1", "Person"),
                    "role": _coding(OBJECT_ROLE, "1", "Patient"),
                }
            )
        for record in self.records:
            found.append(
                {
                    "what": _reference(record, None),
                    "type": _coding(ENTITY_TYPE, "2", "System Object"),
                    "role": _coding(OBJECT_ROLE, "4", "Domain Resource"),
                }
            )
        if self.detail:
            target = found[-1] if found else None
            if target is None:
                target = {"type": _coding(ENTITY_TYPE, "4", "Other")}
                found.append(target)
            target["detail"] = [{"type": t, "valueString": v} for t, v in self.detail]
        return found


def _is_ip(text: str) -> bool:
    host = text.rsplit(":", 1)[0] if text.count(":") == 1 else text
    return all(p.isdigit() for p in host.split(".")) or ":" in host


def _coding(system: str, code: str, display: str | None = None) -> dict[str, str]:
    out = {"system": system, "code": code}
    if display:
        out["display"] = display
    return out


def _concept(system: str, code: str, display: str | None = None) -> dict[str, Any]:
    return {"coding": [_coding(system, code, display)]}


def _reference(value: str, kind: str | None) -> dict[str, Any]:
    if "|" in value:  # an identifier: system|value
        system, _, ident = value.partition("|")
        ref: dict[str, Any] = {"identifier": {"system": system, "value": ident}}
        if kind:
            ref["type"] = kind
        return ref
    return {"reference": value}


def _instant(when: datetime | None) -> str:
    w = when or datetime.now(UTC)
    w = w.replace(tzinfo=UTC) if w.tzinfo is None else w.astimezone(UTC)  # naive: UTC
    return w.strftime("%Y-%m-%dT%H:%M:%S.") + f"{w.microsecond // 1000:03d}Z"


def event(
    kind: str,
    *,
    outcome: str = "success",
    outcome_desc: str | None = None,
    agents: Sequence[Party] = (),
    subject: Subject = Subject(),
    basis: tuple[str, str | None] | None = None,  # (legal basis code, agreement id)
    purpose: str | None = None,  # transfer purpose code (referral, teleradiology, ...)
    subtypes: Sequence[tuple[str, str, str]] = (),
    when: datetime | None = None,
    event_id: str | None = None,
) -> dict[str, Any]:
    """A BALP-shaped AuditEvent of one of ``KINDS``. The gateway is always the source
    (``source.observer``) and an agent; ``outcome_desc`` is a code and a reason that
    names places, never patient data (as every gateway error message)."""
    if kind not in KINDS:
        raise ValueError(f"unknown audit event kind {kind!r} ({', '.join(KINDS)})")
    etype, action, lifecycle = KINDS[kind]
    resource: dict[str, Any] = {
        "resourceType": "AuditEvent",
        "id": event_id or str(uuid.uuid4()),
        "meta": {"profile": [DISCLOSURE if kind in ("delivery", "inbound") else PROFILE]},
    }
    if basis is not None:
        code, agreement = basis
        ext: dict[str, Any] = {
            "url": BASIS_EXTENSION,
            "extension": [{"url": "basis", "valueCoding": _coding(BASIS_SYSTEM, code)}],
        }
        if agreement:
            ext["extension"].append({"url": "agreement", "valueString": agreement})
        resource["extension"] = [ext]
    resource["type"] = _coding(*etype)
    resource["subtype"] = [
        _coding(LIFECYCLE, lifecycle, _LIFECYCLE_DISPLAY[lifecycle]),
        *(_coding(*s) for s in subtypes),
        _coding(KIND_SYSTEM, kind),
    ]
    resource["action"] = action
    resource["recorded"] = _instant(when)
    resource["outcome"] = OUTCOME[outcome]
    if outcome_desc:
        resource["outcomeDesc"] = outcome_desc
    if purpose:
        resource["purposeOfEvent"] = [_concept(PURPOSE_SYSTEM, purpose)]
    gateway = [a for a in agents if a.kind == "gateway"]
    gw = gateway[0] if gateway else GATEWAY
    resource["agent"] = [gw.agent(), *(a.agent() for a in agents if a.kind != "gateway")]
    resource["source"] = {
        "site": gw.name,
        "observer": {
            "identifier": {"system": f"{CANONICAL}/sid/system", "value": gw.name},
            "display": gw.name,
        },
        "type": [_coding(SOURCE_TYPE, "4", "Application Server")],
    }
    entities = subject.entities()
    if entities:
        resource["entity"] = entities
    return resource


def _source(gateway: Party, network: str | None) -> Party:
    return Party("gateway", gateway.name, network or gateway.network, role=SOURCE_ROLE)


def _dest(gateway: Party, network: str | None) -> Party:
    return Party("gateway", gateway.name, network or gateway.network, role=DESTINATION_ROLE)


# -- one helper per event kind ------------------------------------------------------------
def received(
    sender: str,
    subject: Subject,
    *,
    peer: str | None = None,
    channel: str = "mllp",
    gateway: Party = GATEWAY,
    outcome: str = "success",
    why: str | None = None,
    when: datetime | None = None,
) -> dict[str, Any]:
    """A record received from a hospital feed (stored before it is acknowledged)."""
    return event(
        "received",
        outcome=outcome,
        outcome_desc=why,
        subject=subject,
        when=when,
        agents=[
            _dest(gateway, None),
            Party("partner", sender, peer, requestor=True, role=SOURCE_ROLE),
            Party("system", f"listener:{channel}"),
        ],
    )


def converted(
    subject: Subject, *, gateway: Party = GATEWAY, when: datetime | None = None
) -> dict[str, Any]:
    return event("converted", subject=subject, agents=[gateway], when=when)


def validation_failed(
    subject: Subject, code: str, *, gateway: Party = GATEWAY, when: datetime | None = None
) -> dict[str, Any]:
    """``code``: the first error code (``validation.xxx``, ``mapping.xxx``)."""
    return event(
        "validation-failed",
        outcome="serious",
        outcome_desc=code,
        subject=subject,
        agents=[gateway],
        when=when,
    )


def policy_decision(
    sender: str,
    recipient: str,
    outcome: str,
    subject: Subject,
    *,
    basis: str | None,
    agreement: str | None,
    purpose: str,
    patients: Sequence[str] = (),
    consents: Sequence[str] = (),
    gateway: Party = GATEWAY,
    when: datetime | None = None,
) -> dict[str, Any]:
    """The policy's decision (allow, allow-with-changes, hold, deny) on one transfer;
    a hold or a deny is a failure outcome (minor, serious) with the decision's outcome
    as its description. ``patients``: more individuals than the subject's (a record of
    several), one patient entity each; ``consents``: the Consent ids the transfer rests
    on, one entity each (``Consent/<id>``, as the consent's own events name it: a
    logical id, no patient data), what the ``consent`` search parameter finds."""
    result = {"allow": "success", "allow-with-changes": "success", "hold": "minor"}.get(
        outcome, "serious"
    )
    made = event(
        "policy-decision",
        outcome=result,
        outcome_desc=outcome,
        subject=subject,
        basis=(basis, agreement) if basis else None,
        purpose=purpose,
        when=when,
        agents=[
            gateway,
            Party("partner", sender, role=SOURCE_ROLE),
            Party("partner", recipient, role=DESTINATION_ROLE),
        ],
    )
    entities = made.setdefault("entity", [])
    extra = [p for p in dict.fromkeys(patients) if p != subject.patient]
    at = 1 if subject.patient else 0  # patients first, as keys_of reads them
    entities[at:at] = [e for p in extra for e in Subject(p).entities()]
    entities += [consent_entity(c) for c in dict.fromkeys(consents)]
    if not entities:
        del made["entity"]
    return made


def consent_entity(consent_id: str) -> dict[str, Any]:
    """A Consent a decision rests on, as an entity: its logical id by reference, the
    basis of a consent-based transfer (BALP AuthZconsent names the Consent so)."""
    return {
        "what": {"reference": f"Consent/{consent_id}"},
        "type": _coding(ENTITY_TYPE, "2", "System Object"),
        "role": _coding(OBJECT_ROLE, "4", "Domain Resource"),
        "detail": [{"type": "basis", "valueString": "consent"}],
    }


def signed(
    subject: Subject,
    signer: str,
    role: str,
    *,
    gateway: Party = GATEWAY,
    when: datetime | None = None,
) -> dict[str, Any]:
    """``signer``: the certificate's subject name (an institution or practitioner)."""
    return event(
        "signed",
        subject=subject,
        when=when,
        outcome_desc=role,
        agents=[gateway, Party("system", signer, role=(PARTICIPATION, "AUT", "author"))],
    )


def delivery(
    recipient: str,
    subject: Subject,
    *,
    url: str | None,
    outcome: str,
    basis: str | None,
    agreement: str | None = None,
    purpose: str | None = None,
    status: int | None = None,
    attempt: int = 1,
    gateway: Party = GATEWAY,
    when: datetime | None = None,
) -> dict[str, Any]:
    """One delivery attempt to a partner and its outcome (BALP PrivacyDisclosure.Source:
    Export, disclose, source and recipient agents with their network)."""
    detail = [("attempt", str(attempt))] + ([("http-status", str(status))] if status else [])
    subj = Subject(subject.patient, subject.records, (*subject.detail, *detail))
    return event(
        "delivery",
        outcome=outcome,
        subject=subj,
        when=when,
        basis=(basis, agreement) if basis else None,
        purpose=purpose,
        subtypes=[(LIFECYCLE, "transmit", "Transmit Record Lifecycle Event")],
        agents=[_source(gateway, None), Party("partner", recipient, url, role=DESTINATION_ROLE)],
    )


def inbound_receipt(
    sender: str,
    subject: Subject,
    *,
    peer: str | None,
    outcome: str = "success",
    why: str | None = None,
    gateway: Party = GATEWAY,
    when: datetime | None = None,
) -> dict[str, Any]:
    """A record a partner sent us (BALP PrivacyDisclosure.Recipient: Import, disclose)."""
    return event(
        "inbound",
        outcome=outcome,
        outcome_desc=why,
        subject=subject,
        when=when,
        agents=[
            _dest(gateway, None),
            Party("partner", sender, peer, requestor=True, role=SOURCE_ROLE),
        ],
    )


def signature_verified(
    subject: Subject,
    signer: str,
    ok: bool,
    *,
    code: str | None = None,
    gateway: Party = GATEWAY,
    when: datetime | None = None,
) -> dict[str, Any]:
    return event(
        "signature-verified",
        outcome="success" if ok else "serious",
        outcome_desc=code,
        subject=subject,
        when=when,
        agents=[gateway, Party("system", signer, role=(PARTICIPATION, "AUT", "author"))],
    )


def consent_changed(
    patient: str,
    consent_id: str,
    status: str,
    *,
    operator: str | None,
    gateway: Party = GATEWAY,
    when: datetime | None = None,
) -> dict[str, Any]:
    agents = [gateway] + ([Party("operator", operator, requestor=True)] if operator else [])
    return event(
        "consent",
        outcome_desc=status,
        agents=agents,
        when=when,
        subject=Subject(patient, (f"Consent/{consent_id}",)),
    )


def operator_action(
    action: str,
    operator: str,
    subject: Subject,
    *,
    network: str | None = None,
    gateway: Party = GATEWAY,
    outcome: str = "success",
    when: datetime | None = None,
) -> dict[str, Any]:
    """An operator's action: reprocess, retry, release, export, sign-head, ..."""
    return event(
        "operator",
        outcome=outcome,
        outcome_desc=action,
        subject=subject,
        when=when,
        agents=[
            gateway,
            Party(
                "operator",
                operator,
                network,
                requestor=True,
                role=IRCP,
            ),
        ],
    )


def api_read(
    client: str | Party,
    user: str | None,
    subject: Subject,
    *,
    interaction: str = "read",
    network: str | None = None,
    server: str | None = None,
    outcome: str = "success",
    role: str | None = None,
    query: str | None = None,
    patients: Sequence[str] = (),
    gateway: Party = GATEWAY,
    when: datetime | None = None,
) -> dict[str, Any]:
    """An API read or search of patient data (BALP PatientRead / PatientQuery: client
    110152, server 110153, user IRCP requestor with its ``role``). ``client`` a name (an
    API token's) or a Party (a partner reading what it sent); ``patients``: more patients
    than the subject's, one entity each (a search's); ``query``: the request's method,
    path and parameters, as a Query entity's detail (the profile forbids
    ``entity.query``): references and codes, never clinical content."""
    if isinstance(client, str):
        client = Party("system", client, network, role=DESTINATION_ROLE)
    agents = [Party("gateway", gateway.name, server, role=SOURCE_ROLE), client]
    if user:
        agents.append(Party("operator", user, requestor=True, role=IRCP, title=role))
    made = event(
        "api-read",
        outcome=outcome,
        subject=subject,
        agents=agents,
        when=when,
        subtypes=[(REST, interaction, interaction)],
    )
    extra = [p for p in dict.fromkeys(patients) if p != subject.patient]
    entities = made.setdefault("entity", [])
    at = 1 if subject.patient else 0  # patients first, as keys_of reads them
    entities[at:at] = [e for p in extra for e in Subject(p).entities()]
    if query:
        entities.append(
            {
                "type": _coding(ENTITY_TYPE, "2", "System Object"),
                "role": _coding(OBJECT_ROLE, "24", "Query"),
                "detail": [{"type": "query", "valueString": query[:2000]}],
            }
        )
    if not entities:
        del made["entity"]
    return made


# -- reading events back ------------------------------------------------------------------
def keys_of(resource: dict[str, Any]) -> tuple[str, str, str | None, str | None]:
    """(kind, recorded, patient, partner) of an AuditEvent: what the log indexes it by."""
    kind = next(
        (s.get("code") for s in resource.get("subtype") or [] if s.get("system") == KIND_SYSTEM),
        None,
    )
    patient = None
    for entity in resource.get("entity") or []:
        roles = [entity.get("role") or {}]
        if any(r.get("system") == OBJECT_ROLE and r.get("code") == "1" for r in roles):
            what = entity.get("what") or {}
            ident = what.get("identifier") or {}
            patient = what.get("reference") or (
                f"{ident.get('system')}|{ident.get('value')}" if ident else None
            )
            break
    partner = None
    for agent in resource.get("agent") or []:
        ident = (agent.get("who") or {}).get("identifier") or {}
        if ident.get("system") == FACILITY:
            partner = ident.get("value")
            if any(c.get("code") == "110152" for c in (agent.get("type") or {}).get("coding", [])):
                break  # the recipient names the partner of a transfer
    return str(kind or "unknown"), str(resource.get("recorded", "")), patient, partner
