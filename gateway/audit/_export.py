"""Read-back: the log's events (for a patient, a partner, a period) as a FHIR Bundle of
type collection that an auditor verifies offline with the gateway's certificate alone.

The Bundle holds the AuditEvents exactly as logged (their RFC 8785 form hashes to the
leaf) in index order, and first one ``Binary`` (``PROOF_TYPE``) whose data is the JSON
proof document: the signed tree head and one inclusion proof per event (docs/audit.md).
"""

from __future__ import annotations

import datetime as dt
import uuid
from base64 import b64decode, b64encode
from dataclasses import dataclass
from typing import Any

import orjson
import sqlalchemy as sa

from ..signing import SigningError, canonicalize
from ._events import OBJECT_ROLE
from ._log import LOG_ID, AuditError, AuditLog, SignedHead, decode_hash
from ._merkle import leaf_hash, verify_inclusion
from ._tables import entries
from ._verify import CertCheck, Verdict, check_head

__all__ = ["PROOF_TYPE", "ExportFilter", "export_bundle", "load_checkpoint", "verify_export"]

PROOF_TYPE = "application/vnd.fhir-gateway.audit-proof+json"
_SEVERAL = ("api-read", "policy-decision")  # kinds whose events may name several patients


def _ident(what: dict[str, Any]) -> str:
    ident = what.get("identifier") or {}
    return f"{ident.get('system')}|{ident.get('value')}" if ident else ""


@dataclass(frozen=True, slots=True)
class ExportFilter:
    patient: str | None = None  # an id, "Patient/<id>", "system|value" or a value alone
    partner: str | None = None  # institution key or facility code, any case
    since: dt.datetime | None = None  # naive UTC, inclusive
    until: dt.datetime | None = None  # naive UTC, exclusive
    consent: str | None = None  # a Consent id (or Consent/<id>) a decision rests on
    # other names of the same patient: the keyed pseudonym ("system|PSN-…") under which
    # policy decisions and consents name an identifier given as ``patient``
    aliases: tuple[str, ...] = ()

    def _patients(self) -> tuple[str, ...]:
        return (self.patient, *self.aliases) if self.patient else ()

    def where(self) -> Any:
        """The SQL part of the selection (the indexed columns); :meth:`keeps` checks
        what the columns cannot say (a decision's other individuals, its consents)."""
        c = entries.c
        terms = []
        if self.patient:
            terms.append(
                sa.or_(
                    *(
                        term
                        for p in self._patients()
                        for term in (
                            c.patient == p,
                            c.patient == f"Patient/{p}",
                            c.patient.endswith(f"|{p}", autoescape=True),  # a value alone
                        )
                    ),
                    c.kind.in_(_SEVERAL),  # only the first patient is in the column
                )
            )
        if self.consent:
            terms.append(c.kind.in_(("policy-decision", "consent")))
        if self.partner:  # the pipeline logs the key (hkpmc); operators type HKPMC too
            terms.append(sa.func.lower(c.partner) == self.partner.lower())
        if self.since:
            terms.append(c.recorded >= self.since)
        if self.until:
            terms.append(c.recorded < self.until)
        return sa.and_(*terms) if terms else None

    def keeps(self, canonical: bytes) -> bool:
        """Whether a logged event (its canonical JSON) answers the patient and consent
        filters: any of its patient entities (an event naming several patients is
        found by each), any Consent it names."""
        if not self.patient and not self.consent:
            return True
        found = orjson.loads(canonical)
        whats = [
            (e.get("role") or {}, e.get("what") or {})
            for e in found.get("entity") or []
            if isinstance(e, dict)
        ]
        if self.patient:
            names = [
                str(what.get("reference") or _ident(what))
                for role, what in whats
                if role.get("system") == OBJECT_ROLE and role.get("code") == "1"
            ]
            if not any(
                n in (p, f"Patient/{p}") or n.endswith(f"|{p}")
                for p in self._patients()
                for n in names
            ):
                return False
        if self.consent:
            wanted = (
                self.consent if self.consent.startswith("Consent/") else f"Consent/{self.consent}"
            )
            if not any(what.get("reference") == wanted for _, what in whats):
                return False
        return True

    def to_json(self) -> dict[str, str]:
        out = {
            "patient": self.patient,
            "consent": self.consent,
            "partner": self.partner,
            "since": self.since.isoformat() + "Z" if self.since else None,
            "until": self.until.isoformat() + "Z" if self.until else None,
        }
        return {k: v for k, v in out.items() if v}


def export_bundle(log: AuditLog, where: ExportFilter, head: SignedHead) -> dict[str, Any]:
    """The selected events with ``head`` (which must cover them all) and their proofs."""
    selected = [
        e for e in log.rows(where.where()) if e.index < head.tree_size and where.keeps(e.canonical)
    ]
    tree = log.tree(head.tree_size)
    if tree.root() != head.root_hash:
        raise AuditError(
            "audit.tampered",
            f"the log's root at size {head.tree_size} is not the signed head's: run "
            "`gateway audit verify`",
        )
    proofs = [
        {
            "index": e.index,
            "event": e.event_id,
            "leaf_hash": b64encode(e.leaf_hash).decode(),
            "path": [b64encode(p).decode() for p in tree.inclusion_proof(e.index)],
        }
        for e in selected
    ]
    document = {
        "log": LOG_ID,
        "filter": where.to_json(),
        "tree_head": head.to_json(),
        "proofs": proofs,
    }
    binary = {
        "resourceType": "Binary",
        "id": str(uuid.uuid4()),
        "contentType": PROOF_TYPE,
        "data": b64encode(orjson.dumps(document)).decode(),
    }
    return {
        "resourceType": "Bundle",
        "id": str(uuid.uuid4()),
        "type": "collection",
        "timestamp": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "entry": [{"fullUrl": f"urn:uuid:{binary['id']}", "resource": binary}]
        + [{"fullUrl": f"urn:uuid:{e.event_id}", "resource": e.resource()} for e in selected],
    }


def _proof_document(bundle: Any) -> dict[str, Any]:
    if not isinstance(bundle, dict) or bundle.get("resourceType") != "Bundle":
        raise AuditError("audit.bad-export", "not a FHIR Bundle")
    for entry in bundle.get("entry") or []:
        resource = entry.get("resource") if isinstance(entry, dict) else None
        if isinstance(resource, dict) and resource.get("contentType") == PROOF_TYPE:
            try:
                document = orjson.loads(b64decode(str(resource.get("data", ""))))
            except (ValueError, orjson.JSONDecodeError):
                raise AuditError(
                    "audit.bad-export", "the proof Binary is not base64 JSON"
                ) from None
            if not isinstance(document, dict):
                raise AuditError("audit.bad-export", "the proof document is not a JSON object")
            return document
    raise AuditError("audit.bad-export", f"no proof Binary ({PROOF_TYPE}): not an audit export")


def _head(document: dict[str, Any]) -> SignedHead:
    raw = document.get("tree_head")
    if not isinstance(raw, dict) or raw.get("log") != LOG_ID:
        raise AuditError("audit.bad-export", "the proof document has no tree head of this log")
    try:
        size, timestamp, jws = raw["tree_size"], raw["timestamp"], raw["signature"]
        # the numbers as signed, not int() of whatever is there (30.9, "30", true)
        if not all(type(n) is int for n in (size, timestamp)) or not isinstance(jws, str):
            raise TypeError("tree head")
        return SignedHead(
            None, size, decode_hash(raw["root_hash"], "tree_head.root_hash"), timestamp, jws
        )
    except (KeyError, TypeError, ValueError):
        raise AuditError(
            "audit.bad-export", "the tree head lacks size, root, time or signature"
        ) from None


def load_checkpoint(value: Any) -> SignedHead:
    """A head kept outside the database: an export (its proof document's head) or the
    head alone as ``sign-head -o`` writes it. AuditError ``audit.bad-export`` else."""
    if isinstance(value, dict) and value.get("resourceType") == "Bundle":
        return _head(_proof_document(value))
    return _head({"tree_head": value})


def verify_export(bundle: Any, source: str, trusted: CertCheck | None) -> Verdict:
    """An exported Bundle, offline: the head's signature and signer, then each event
    against its inclusion proof, in the order the proofs list them."""
    verdict = Verdict(source)
    try:
        document = _proof_document(bundle)
        head = _head(document)
    except AuditError as exc:
        verdict.add(exc.code, exc.issue.message)
        return verdict
    verdict.heads = 1
    check_head(verdict, head, f"signed head (size {head.tree_size})", trusted)
    proofs = document.get("proofs")
    if not isinstance(proofs, list):
        verdict.add("audit.bad-export", "the proof document lists no proofs")
        return verdict
    events = [
        e["resource"]
        for e in bundle.get("entry") or []
        if isinstance(e, dict)
        and isinstance(e.get("resource"), dict)
        and e["resource"].get("resourceType") == "AuditEvent"
    ]
    verdict.entries = len(events)
    _strangers(verdict, bundle)
    by_id = {str(p.get("event")): (pos, p) for pos, p in enumerate(proofs) if isinstance(p, dict)}
    matched: set[str] = set()
    last = -1
    for n, resource in enumerate(events):
        event_id = str(resource.get("id"))
        found = by_id.get(event_id)
        if found is None or event_id in matched:
            verdict.add(
                "audit.inserted",
                f"the Bundle's event {n + 1} has no inclusion proof: not from the log",
                None,
                event_id,
            )
            continue
        matched.add(event_id)
        pos, proof = found
        _full_url(verdict, bundle, resource, event_id)
        index = proof.get("index")
        if not isinstance(index, int):
            verdict.add("audit.bad-export", f"proof {pos + 1} has no index", None, event_id)
            continue
        if pos < last:
            verdict.add("audit.reordered", "out of log order in the Bundle", index, event_id)
        last = max(last, pos)
        _included(verdict, resource, proof, index, head)
    for proof in proofs:
        if isinstance(proof, dict) and str(proof.get("event")) not in matched:
            index = proof.get("index")
            verdict.add(
                "audit.missing",
                "listed in the proofs, missing from the Bundle (removed)",
                index if isinstance(index, int) else None,
                str(proof.get("event")),
            )
    return verdict


def _strangers(verdict: Verdict, bundle: dict[str, Any]) -> None:
    """Entries that are neither the (first) proof Binary nor an AuditEvent: nothing
    proves them, and an auditor would read them as part of a verified export."""
    proof_seen = False
    for n, entry in enumerate(bundle.get("entry") or [], 1):
        resource = entry.get("resource") if isinstance(entry, dict) else None
        kind = resource.get("resourceType") if isinstance(resource, dict) else None
        if kind == "AuditEvent":
            continue
        if kind == "Binary" and not proof_seen and resource.get("contentType") == PROOF_TYPE:  # type: ignore[union-attr]
            proof_seen = True
            continue
        verdict.add(
            "audit.inserted",
            f"the Bundle's entry {n} (a {str(kind)[:40]}) is neither the proof nor a logged "
            "AuditEvent: not from the log",
        )


def _full_url(
    verdict: Verdict, bundle: dict[str, Any], resource: dict[str, Any], event_id: str
) -> None:
    for entry in bundle.get("entry") or []:
        if isinstance(entry, dict) and entry.get("resource") is resource:
            if entry.get("fullUrl") != f"urn:uuid:{event_id}":
                verdict.add("audit.altered", "its fullUrl is not urn:uuid:<its id>", None, event_id)
            return


def _included(
    verdict: Verdict, resource: dict[str, Any], proof: dict[str, Any], index: int, head: SignedHead
) -> None:
    event_id = str(resource.get("id"))
    try:
        leaf = leaf_hash(canonicalize(resource))
        path = [decode_hash(p, f"the proof of entry {index}") for p in proof.get("path") or []]
    except (SigningError, AuditError) as exc:
        verdict.add("audit.bad-export", exc.issue.message, index, event_id)
        return
    if not verify_inclusion(leaf, index, head.tree_size, path, head.root_hash):
        verdict.add(
            "audit.altered",
            f"not included at this index in the signed tree of {head.tree_size}: the event or "
            "its proof was changed",
            index,
            event_id,
        )
    elif proof.get("leaf_hash") != b64encode(leaf).decode():
        verdict.add(
            "audit.altered",
            "the proof's leaf_hash is not the event's: the event or its proof was changed",
            index,
            event_id,
        )
