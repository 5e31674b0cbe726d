"""Consents: the patient's separate consent to a transfer, as a FHIR R4 ``Consent``
(scope patient-privacy; patient by identifier; provision: permit, period, purpose,
actor with role IRCP = the recipient; withdrawal: status inactive or rejected)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import date, datetime, time
from typing import Any

import orjson
from pydantic import ValidationError as PydanticError

from ..errors import GatewayError, nul_message, nul_path
from ..network import Network

__all__ = [
    "PURPOSE_SYSTEM",
    "ConsentRecord",
    "MemoryConsents",
    "PolicyError",
    "parse_consent",
    "stamped",
]

PURPOSE_SYSTEM = "https://fhir-gateway.example.org/CodeSystem/transfer-purpose"
V3_ACT_REASON = "http://terminology.hl7.org/CodeSystem/v3-ActReason"
RECIPIENT_ROLE = "IRCP"  # v3 ParticipationType: information recipient
WITHDRAWN = ("inactive", "rejected", "entered-in-error")
# Consent.provision elements that narrow a permit and that the gateway does not evaluate
_RESTRICTIONS = ("data", "dataPeriod", "class", "code", "securityLabel")
_NS = uuid.UUID("6f1c2f4e-8a0b-5d7e-9c3a-2b4d6e8f0a1c")


class PolicyError(GatewayError):
    """A policy request the gateway cannot act on (a bad Consent, an unknown purpose,
    no such decision or consent)."""

    family = "policy"


@dataclass(frozen=True, slots=True)
class ConsentRecord:
    id: str
    patient: str  # "system|value"
    status: str
    purposes: frozenset[str]
    recipients: frozenset[str]  # institution keys
    start: datetime | None
    end: datetime | None
    permit: bool
    resource: bytes

    def in_force(self, now: datetime) -> bool:
        return (
            self.permit
            and self.status == "active"
            and (self.start is None or self.start <= now)
            and (self.end is None or now <= self.end)
        )

    def covers(self, patients: list[str], purpose: str, recipient: str, now: datetime) -> bool:
        return (
            self.patient in patients
            and purpose in self.purposes
            and recipient in self.recipients
            and self.in_force(now)
        )

    @property
    def version(self) -> int:
        """The version the gateway gave this Consent (meta.versionId; 1 for one stored
        before the gateway numbered them)."""
        return _version(orjson.loads(self.resource))

    @property
    def last_updated(self) -> str | None:
        """When the gateway stored this version (meta.lastUpdated, a FHIR instant)."""
        meta = orjson.loads(self.resource).get("meta")
        found = meta.get("lastUpdated") if isinstance(meta, dict) else None
        return found if isinstance(found, str) else None

    def summary(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "status": self.status,
            "purposes": sorted(self.purposes),
            "recipients": sorted(self.recipients),
            "start": self.start.isoformat() if self.start else None,
            "end": self.end.isoformat() if self.end else None,
        }


class MemoryConsents:
    """Consents held in memory (``gateway policy check`` without a store, tests)."""

    def __init__(self, records: list[ConsentRecord] | None = None) -> None:
        self.records = list(records or [])

    def for_patients(self, patients: list[str]) -> list[ConsentRecord]:
        return [r for r in self.records if r.patient in patients]


def parse_consent(
    body: bytes | dict[str, Any], network: Network, purposes: dict[str, dict[str, str]]
) -> ConsentRecord:
    """A Consent resource read and checked; PolicyError ``consent-invalid`` naming the
    element otherwise."""
    from fhir.resources.R4B.consent import Consent  # the R4 Consent structure

    try:
        resource = orjson.loads(body) if isinstance(body, bytes) else body
    except orjson.JSONDecodeError:
        raise _invalid("Consent", "the body is not JSON") from None
    if not isinstance(resource, dict) or resource.get("resourceType") != "Consent":
        raise _invalid("Consent", "not a FHIR Consent resource")
    # before the model: a code's pattern lets NUL through (status "active\0" was kept,
    # and on PostgreSQL its insert failed: a 500)
    if (where := nul_path(resource, "Consent")) is not None:
        raise _invalid(where, nul_message("a string"))
    try:
        Consent.model_validate(resource)
    except PydanticError as exc:
        where = ".".join(str(p) for p in exc.errors()[0]["loc"]) if exc.errors() else ""
        raise _invalid(
            f"Consent.{where}".rstrip("."), "does not follow the R4 Consent structure"
        ) from None
    codes = [c.get("code") for c in (resource.get("scope") or {}).get("coding") or []]
    if "patient-privacy" not in codes:
        raise _invalid("Consent.scope", "the scope must be patient-privacy")
    ident = (resource.get("patient") or {}).get("identifier") or {}
    if not ident.get("system") or not ident.get("value"):
        raise _invalid(
            "Consent.patient.identifier",
            "the patient must be named by identifier (system and value)",
        )
    provision = resource.get("provision") or {}
    if provision.get("provision"):
        # Nested provisions are exceptions to the outer one (R4 Consent.provision.provision,
        # e.g. "permit, but deny this purpose"). They are not evaluated: a Consent holding
        # them is refused rather than read as the outer permit alone.
        raise _invalid(
            "Consent.provision.provision",
            "nested provisions (exceptions) are not supported: send one Consent per "
            "permitted purpose and recipient, without exceptions",
        )
    for element in _RESTRICTIONS:
        if provision.get(element):
            # A restriction the gateway does not evaluate (only these data, classes,
            # codes, labels or period of data): refused rather than read as a permit of
            # everything the purpose and recipient name.
            raise _invalid(
                f"Consent.provision.{element}",
                f"provision.{element} restricts the consent in a way the gateway does not "
                "evaluate: send a Consent by purpose and recipient only",
            )
    found_purposes: set[str] = set()
    for coding in provision.get("purpose") or []:
        if coding.get("system") == PURPOSE_SYSTEM and coding.get("code") in purposes:
            found_purposes.add(str(coding["code"]))
        elif coding.get("system") == V3_ACT_REASON:
            found_purposes |= {k for k, v in purposes.items() if v.get("v3") == coding.get("code")}
    if not found_purposes:
        raise _invalid(
            "Consent.provision.purpose",
            f"no purpose of {PURPOSE_SYSTEM} ({', '.join(purposes)}) or v3 ActReason",
        )
    recipients: set[str] = set()
    for n, actor in enumerate(provision.get("actor") or []):
        roles = [c.get("code") for c in (actor.get("role") or {}).get("coding") or []]
        if RECIPIENT_ROLE not in roles:
            continue
        reference = actor.get("reference") or {}
        who = (reference.get("identifier") or {}).get("value") or reference.get("display")
        inst = network.find(str(who)) if who else None
        if inst is None:
            raise _invalid(
                f"Consent.provision.actor[{n}].reference",
                "the recipient is not an institution of the network "
                "(give its OID or facility code)",
            )
        recipients.add(inst.key)
    if not recipients:
        raise _invalid("Consent.provision.actor", "no actor with role IRCP (the recipient)")
    period = provision.get("period") or {}
    consent_id = str(
        resource.get("id")
        or uuid.uuid5(_NS, orjson.dumps(resource, option=orjson.OPT_SORT_KEYS).decode())
    )
    return ConsentRecord(
        id=consent_id,
        patient=f"{ident['system']}|{ident['value']}",
        status=str(resource.get("status")),
        purposes=frozenset(found_purposes),
        recipients=frozenset(recipients),
        start=_moment(period.get("start"), end=False, where="Consent.provision.period.start"),
        end=_moment(period.get("end"), end=True, where="Consent.provision.period.end"),
        permit=provision.get("type", "permit") == "permit",
        resource=orjson.dumps(resource),
    )


def _version(resource: dict[str, Any]) -> int:
    meta = resource.get("meta")
    found = meta.get("versionId") if isinstance(meta, dict) else None
    return int(found) if isinstance(found, str) and found.isascii() and found.isdigit() else 1


def stamped(resource: dict[str, Any], consent_id: str, version: int, at: datetime) -> bytes:
    """The Consent as the gateway stores it, as a FHIR server does: its id, and
    meta.versionId and meta.lastUpdated (``at``, naive UTC) set whatever the body said;
    the rest of meta (profile, tags) kept."""
    meta = resource.get("meta")
    kept = {k: v for k, v in (meta if isinstance(meta, dict) else {}).items()
            if k not in ("versionId", "lastUpdated")}  # fmt: skip
    stamp = {"versionId": str(version), "lastUpdated": at.isoformat(timespec="milliseconds") + "Z"}
    rest = {k: v for k, v in resource.items() if k not in ("resourceType", "id", "meta")}
    return orjson.dumps(
        {"resourceType": "Consent", "id": consent_id, "meta": {**stamp, **kept}, **rest}
    )


def _moment(value: Any, *, end: bool, where: str) -> datetime | None:
    """A FHIR date or dateTime as naive UTC; a date alone spans its whole day."""
    if not value:
        return None
    text = str(value)
    try:
        if len(text) == 10:
            day = date.fromisoformat(text)
            return datetime.combine(day, time.max if end else time.min)
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise _invalid(where, "give a full date (YYYY-MM-DD) or date and time") from None
    if moment.tzinfo is not None:
        from datetime import UTC

        moment = moment.astimezone(UTC).replace(tzinfo=None)
    return moment


def _invalid(location: str, message: str) -> PolicyError:
    return PolicyError("consent-invalid", message, location=location)
