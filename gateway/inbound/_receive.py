"""Receiving one Bundle from an authenticated partner (docs/inbound.md), in order:

1. readable: a FHIR Bundle of type transaction or batch (else 400), valid R4 (base
   definitions, by the gateway's validator: structure, cardinality, types, invariants;
   else 422, each issue naming ``Bundle.entry[n].resource.<path>``);
2. in the partner's own name: its identifier's system, the custodian of its Provenance,
   the first (author) signature's certificate name no other institution (else 403);
3. the same Bundle again: the answer given the first time, nothing stored again;
4. signatures: every one verified against the trust store; an unsigned Bundle only
   from a partner in ``inbound_unsigned`` (else 422, the bytes kept as evidence);
5. the inbound policy (``Policy.decide``, sender → this institution): a deny refuses
   (403, the decision's reasons);
6. stored in one transaction with the referral Tasks it starts, committed before the
   answer (a transaction-response or batch-response Bundle).
"""

from __future__ import annotations

import binascii
import functools
import hashlib
import json
import logging
import re
import threading
from base64 import b64decode, urlsafe_b64decode
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
import sqlalchemy as sa
from cryptography import x509
from cryptography.x509.oid import NameOID

from ..audit import PSEUDONYM, Subject, audit_log, bundle_subject, events
from ..config import Settings
from ..errors import GatewayError, Issue, http_status, operation_outcome
from ..network import Institution, Network
from ..signing import duplicate_member, signature_entries, verify_bundle
from ..store import Store, utcnow
from ..validation import Validator
from ._apply import Bases, apply_bundle
from ._auth import PartnerAuth
from ._content import identity_mismatches, misaddressed, mixed_patients
from ._errors import InboundError
from ._referrals import Referrals
from ._resources import Resources
from ._schema import bundles
from ._trust import TrustCache

__all__ = ["Answer", "Inbound"]

log = logging.getLogger("gateway.inbound")
_SENDING_AGENTS = ("custodian", "author", "assembler")
BASE_BUNDLE = "http://hl7.org/fhir/StructureDefinition/Bundle"


@dataclass
class Answer:
    status: int
    body: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)
    replayed: bool = False  # the stored answer to the same Bundle sent before


def _refused(issue: Issue, status: int) -> Answer:
    return Answer(status, operation_outcome([issue]))


class Inbound:
    """The inbound stage over one store (thread-safe: share one per process)."""

    def __init__(self, settings: Settings, store: Store, network: Network | None = None) -> None:
        self.settings = settings
        self.store = store
        self.network = network or Network.load(settings.network)
        self.resources = Resources(store)
        self.referrals = Referrals(settings, store, self.network)
        self._lock = threading.Lock()
        self._policy: Any = None
        self.trust = TrustCache(settings)
        self.audit = audit_log(store, settings)
        # Its own validator (the skeletons it learns are inbound shapes), one call at a
        # time: a Validator keeps the Bundle it is walking.
        self.validator = Validator()
        self._validating = threading.Lock()

    def policy(self) -> Any:
        from ..policy import Policy

        with self._lock:
            if self._policy is None:
                self._policy = Policy(self.settings, self.network)
            return self._policy

    # -- the whole flow ---------------------------------------------------------------
    def receive(self, body: bytes, who: PartnerAuth, peer: str | None = None) -> Answer:
        """``peer``: the sender's network address (its audit event names it)."""
        try:
            own = self.referrals.own()
            bundle, canonical = _bundle(body)
            self._check_sender(bundle, who.partner)
        except InboundError as exc:
            log.warning("inbound: a Bundle from %s refused [%s]", who.partner, exc.code)
            return _refused(exc.issue, http_status([exc.issue]))
        invalid = self._validate(bundle)
        if not invalid:  # valid R4: is it one patient's, and addressed here?
            stored = functools.partial(self._stored_patients, partner=who.partner)
            own_base = self._bases(who.partner).own  # its absolute references' local base
            patients = identity_mismatches(bundle) or mixed_patients(bundle, stored, own_base)
            invalid = patients + misaddressed(bundle, own)
        if invalid:
            log.warning("inbound: a Bundle from %s refused [%s]", who.partner, invalid[0].code)
            answer = Answer(422, operation_outcome(invalid))
            self._record(None, self._receipt(bundle, who.partner, peer, answer))
            return answer
        sha = hashlib.sha256(canonical).hexdigest()
        given = bundle.get("identifier")
        ident: dict[str, Any] = given if isinstance(given, dict) else {}
        token = f"{ident.get('system') or ''}|{ident['value']}" if ident.get("value") else None
        dedup = hashlib.sha256(f"{who.partner}|{token or ''}|{sha}".encode()).hexdigest()
        earlier = self._earlier(dedup)
        if earlier is not None:
            return earlier
        refused = self._verify(bundle, who.partner)
        verified = self._verified_events(bundle, who.partner, refused)
        if refused is not None:
            log.warning("inbound: a Bundle from %s refused: its signatures", who.partner)
            self._keep_refused(body, bundle, who, token, sha, refused, verified, peer)
            return refused
        denied = self._decide(bundle, who.partner, own)
        if denied is not None:
            self._record(None, [*verified, *self._receipt(bundle, who.partner, peer, denied)])
            return denied
        return self._store(body, bundle, who, token, sha, dedup, verified, peer)

    # -- the audit trail (in the transaction of what it records; a failure is logged) --
    def _subject(self, bundle: dict[str, Any]) -> Subject:
        """The Bundle and its patient, by the policy's pseudonym of the Patient's first
        identifier (a partner's Bundle has no id of ours yet; no identifier is logged)."""
        from ..policy import pseudonym

        resources = [r for _, r in _resources(bundle)]
        subject = bundle_subject({**bundle, "entry": [{"resource": r} for r in resources]})
        for resource in resources:
            if resource.get("resourceType") != "Patient":
                continue
            for ident in _list(resource.get("identifier")):
                if isinstance(ident, dict) and ident.get("value"):
                    alias = pseudonym(
                        self.policy().key, str(ident.get("system") or ""), str(ident["value"])
                    )
                    return Subject(f"{PSEUDONYM}|{alias}", subject.records)
        return Subject(None, subject.records)

    def _verified_events(
        self, bundle: dict[str, Any], partner: str, refused: Answer | None
    ) -> list[dict[str, Any]]:
        """The signature check's AuditEvent (none for an unsigned Bundle)."""
        if self.audit is None or not (signature_entries(bundle) or bundle.get("signature")):
            return []
        code = _first_code(refused) if refused is not None else None
        return [events.signature_verified(self._subject(bundle), partner, refused is None,
                                          code=code)]  # fmt: skip

    def _receipt(
        self, bundle: dict[str, Any], partner: str, peer: str | None, answer: Answer
    ) -> list[dict[str, Any]]:
        """The receipt's AuditEvent (stored or refused, with the refusal's code); none
        for the stored answer to a Bundle sent before."""
        if self.audit is None or answer.replayed:
            return []
        ok = answer.status < 400
        return [
            events.inbound_receipt(
                partner,
                self._subject(bundle),
                peer=peer,
                outcome="success" if ok else "serious",
                why=None if ok else _first_code(answer),
            )
        ]

    def _record(self, conn: sa.Connection | None, found: list[dict[str, Any]]) -> None:
        """Append ``found`` inside ``conn``'s transaction (under a savepoint: a failed
        append undoes only itself), else in one transaction of their own, committed
        before the answer goes (not deferred: a refusal is answered once it is logged)."""
        if self.audit is None or not found:
            return
        if conn is not None:
            self.audit.record_guarded(conn, *found)
            return
        try:
            with self.store.engine.execution_options(write=True).begin() as own:
                self.audit.record_guarded(own, *found)
        except Exception as exc:  # the audit never fails a request: said, without data
            log.error("inbound: audit events not written (%s)", type(exc).__name__)

    # -- 1: valid R4 -------------------------------------------------------------------
    def _validate(self, bundle: dict[str, Any]) -> list[Issue]:
        """The errors of the Bundle and its entries against the base R4 definitions (a
        partner's resources may claim profiles of its own: their base is what we hold
        them to). A validator fault is one error naming the entry it met, never a crash."""
        plain = _without_profiles(bundle)
        try:
            with self._validating:
                found = self.validator.validate_bundle(plain, profile=BASE_BUNDLE)
            signatures = set(signature_entries(bundle))  # by profile: before it goes
            return [i for i in found if not _untargeted_signature(plain, i, signatures)]
        except Exception:  # the entry it failed on is found below
            log.exception("inbound: the validator failed on a Bundle; checking entry by entry")
        issues: list[Issue] = []
        for n, entry in enumerate(plain.get("entry") or []):
            resource = entry.get("resource") if isinstance(entry, dict) else None
            if not isinstance(resource, dict):
                continue
            where = f"Bundle.entry[{n}].resource"
            try:
                with self._validating:
                    issues += self.validator.validate_resource(resource, where)
            except Exception as exc:  # a fault of the validator: said, not raised
                issues.append(
                    Issue(
                        "inbound.unvalidated",
                        f"{where} could not be validated ({type(exc).__name__}); see the "
                        "gateway log",
                        expression=where,
                    )
                )
        return issues or [
            Issue("inbound.unvalidated", "the Bundle could not be validated; see the gateway log")
        ]

    # -- 2: in whose name -------------------------------------------------------------
    def _stored_patients(self, ids: set[str], partner: str) -> dict[str, dict[str, Any]]:
        """The Patients ``partner`` sent, of these ids: their identifiers name them in
        the one-patient check (:func:`mixed_patients`), read before the Bundle's write
        transaction as the rest of that check is."""
        with self.store.engine.connect() as conn:
            found = self.resources.current_many(conn, {("Patient", i) for i in ids})
        return {i: s.resource for (_, i), s in found.items() if s.partner == partner}

    def _check_sender(self, bundle: dict[str, Any], partner: str) -> None:
        """Read before the Bundle is validated: any element may have any JSON type here
        (a wrong one is left to the validation, next)."""
        ident = bundle.get("identifier")
        named = self.policy().sender_of(bundle) if isinstance(ident, dict) else None
        if named is not None and named != partner:
            raise _wrong_sender("Bundle.identifier.system", named, partner)
        signatures = set(signature_entries(bundle))
        for n, resource in _resources(bundle):
            if resource.get("resourceType") != "Provenance":
                continue
            # a signature Provenance's signer: its certificate is checked below (the
            # first) or by the verification (its Signature.who); any other agent of it,
            # and every agent of any other Provenance, is checked here
            signer = _signer_who(resource) if n in signatures else None
            for k, agent in enumerate(_list(resource.get("agent"))):
                if not isinstance(agent, dict) or _agent_type(agent) not in _SENDING_AGENTS:
                    continue
                for part in ("who", "onBehalfOf"):
                    if part == "who" and signer is not None and agent.get(part) == signer:
                        continue
                    inst = self._institution_of(agent.get(part))
                    if inst is not None and inst.key != partner:
                        where = f"Bundle.entry[{n}].resource.agent[{k}].{part}"
                        raise _wrong_sender(where, inst.key, partner)
        own_tasks = f"{self.referrals.own().base}/sid/referral-task"
        patients = {  # Task.for may name the Bundle's Patient entry
            str(entry["fullUrl"]): entry["resource"]
            for entry in _list(bundle.get("entry"))
            if isinstance(entry, dict) and isinstance(entry.get("resource"), dict)
            and entry["resource"].get("resourceType") == "Patient"
            and isinstance(entry.get("fullUrl"), str)
        }  # fmt: skip
        for n, resource in _resources(bundle):
            if resource.get("resourceType") != "Task":
                continue
            for k, ident in enumerate(_list(resource.get("identifier"))):
                if isinstance(ident, dict) and ident.get("system") == own_tasks:
                    # only this gateway makes its referral Tasks: a partner's one under
                    # that identifier would be listed beside ours as a referral status
                    where = f"Bundle.entry[{n}].resource.identifier[{k}]"
                    raise _wrong_sender(where, "this institution", partner)
            # a status of a referral of ours: only from the partner it was sent to, and
            # only for the patient it was sent for
            where = f"Bundle.entry[{n}].resource"
            self.referrals.check_status_sender(resource, partner, where, patients)
        first = _first_signer(bundle)
        if first is not None:
            where, oid = first  # unreadable (None): the verification says why, next
            inst = self.network.find(f"urn:oid:{oid}") if oid else None
            if oid is not None and (inst is None or inst.key != partner):
                raise _wrong_sender(where, inst.key if inst else "another organisation", partner)

    def _institution_of(self, ref: Any) -> Institution | None:
        if not isinstance(ref, dict):
            return None
        ident = ref.get("identifier")
        if not isinstance(ident, dict):
            return None
        value = str(ident.get("value") or "")
        system = str(ident.get("system") or "")
        if system == "urn:ietf:rfc:3986" and value.startswith("urn:oid:"):
            return self.network.find(value)
        if system.endswith("/sid/hl7-facility"):
            return self.network.institution(value)
        return None

    # -- 3: the same Bundle again -----------------------------------------------------
    def _earlier(self, dedup: str) -> Answer | None:
        with self.store.engine.connect() as conn:
            row = conn.execute(
                sa.select(bundles.c.status, bundles.c.response).where(bundles.c.dedup_key == dedup)
            ).first()
        if row is None:
            return None
        return Answer(int(row.status), orjson.loads(row.response), replayed=True)

    # -- 4: signatures ----------------------------------------------------------------
    def _verify(self, bundle: dict[str, Any], partner: str) -> Answer | None:
        signed = bool(signature_entries(bundle)) or bool(bundle.get("signature"))
        if not signed:
            if partner in self.settings.inbound_unsigned:
                return None
            issue = Issue(
                "inbound.unsigned",
                f"Bundles from {partner} must be signed (it is not in inbound_unsigned)",
                expression="Bundle.signature",
            )
            return _refused(issue, 422)
        try:
            trust = self.trust.trust()  # parsed once, re-read when it changes
        except GatewayError as exc:
            return _refused(exc.issue, 500)
        report = verify_bundle(bundle, trust, "request")
        if report.ok:
            return None
        return Answer(422, operation_outcome([i for i in report.issues() if i.severity == "error"]))

    def _keep_refused(
        self, body: bytes, bundle: dict[str, Any], who: PartnerAuth, token: str | None,
        sha: str, answer: Answer, verified: list[dict[str, Any]], peer: str | None,
    ) -> None:  # fmt: skip
        """A Bundle refused for its signatures: its bytes kept as evidence, never applied
        (no dedup key: sent again after a fix, it is checked again), with the check's
        and the receipt's AuditEvents in the same transaction."""
        try:
            with self.store.engine.execution_options(write=True).begin() as conn:
                conn.execute(
                    bundles.insert().values(
                        received_at=utcnow(), partner=who.partner, auth=who.method,
                        bundle_type=str(bundle.get("type"))[:32], identifier=(token or None),
                        sha256=sha, dedup_key=None, state="refused", status=answer.status,
                        response=orjson.dumps(answer.body), raw=body,
                    )
                )  # fmt: skip
                pruned = self._prune_refused(conn, who.partner)
                overall = self._prune_refused_overall(conn)
                self._record(conn, [*verified, *self._receipt(bundle, who.partner, peer, answer)])
        except Exception:
            self._record(None, verified)  # the check happened, whatever failed after it
            raise
        if pruned:
            log.info(
                "inbound: %d refused Bundle(s) of %s pruned, the oldest first "
                "(inbound_refused_keep %d, inbound_refused_bytes %d)",
                pruned, who.partner, self.settings.inbound_refused_keep,
                self.settings.inbound_refused_bytes,
            )  # fmt: skip
        if overall:  # partner keys and a count only: nothing of the Bundles
            log.warning(
                "inbound: %d refused Bundle(s) of %s pruned, the oldest first across "
                "partners (inbound_refused_total_bytes %d)",
                sum(overall.values()), ", ".join(sorted(overall)),
                self.settings.inbound_refused_total_bytes,
            )  # fmt: skip

    def _prune_refused(self, conn: sa.Connection, partner: str) -> int:
        """Delete the partner's oldest refused Bundles beyond ``inbound_refused_keep``
        rows or ``inbound_refused_bytes`` of kept bytes (the newest always stays): the
        evidence is bounded, or a partner could fill the disk with refusals. Returns how
        many went. A refused Bundle was never applied: nothing refers to its row."""
        c = bundles.c
        rows = conn.execute(
            sa.select(c.id, sa.func.coalesce(sa.func.length(c.raw), 0))
            .where(c.partner == partner, c.state == "refused")
            .order_by(c.id.desc())
        ).all()
        kept = size = 0
        gone: list[int] = []
        for row_id, length in rows:
            size += int(length)
            if kept and (kept >= self.settings.inbound_refused_keep
                         or size > self.settings.inbound_refused_bytes):  # fmt: skip
                gone.append(int(row_id))
            else:
                kept += 1
        if gone:
            conn.execute(bundles.delete().where(c.id.in_(gone)))
        return len(gone)

    def _prune_refused_overall(self, conn: sa.Connection) -> dict[str, int]:
        """Delete the oldest refused Bundles of any partner beyond
        ``inbound_refused_total_bytes`` of kept bytes in all (the newest always stays):
        the per-partner bounds alone let many partners, or many partner names, fill the
        disk. Returns how many went per partner."""
        c = bundles.c
        rows = conn.execute(
            sa.select(c.id, c.partner, sa.func.coalesce(sa.func.length(c.raw), 0))
            .where(c.state == "refused")
            .order_by(c.id.desc())
        ).all()
        size = 0
        gone: list[int] = []
        per_partner: dict[str, int] = {}
        for n, (row_id, partner, length) in enumerate(rows):
            size += int(length)
            if n and size > self.settings.inbound_refused_total_bytes:
                gone.append(int(row_id))
                per_partner[str(partner)] = per_partner.get(str(partner), 0) + 1
        for start in range(0, len(gone), 500):  # bounded IN lists
            conn.execute(bundles.delete().where(c.id.in_(gone[start : start + 500])))
        return per_partner

    # -- 5: policy --------------------------------------------------------------------
    def _decide(self, bundle: dict[str, Any], partner: str, own: Institution) -> Answer | None:
        """The cross-border policy, from the receiving side: a deny (no agreement in
        force, a prohibited category, a party outside the agreement's region) refuses.
        A hold for consent is the sender's to resolve (it holds the patient's consent
        and decided before sending), so it does not refuse here."""
        try:
            decision = self.policy().decide(bundle, partner, own.key)
        except GatewayError as exc:  # a party the agreements do not place, a bad purpose
            log.warning("inbound: a Bundle from %s not decided [%s]", partner, exc.code)
            return _refused(exc.issue, http_status([exc.issue]))
        if decision.outcome != "deny":
            return None
        log.warning("inbound: a Bundle from %s refused by policy", partner)
        return Answer(403, decision.operation_outcome())

    # -- 6: store ---------------------------------------------------------------------
    def _store(
        self, body: bytes, bundle: dict[str, Any], who: PartnerAuth, token: str | None,
        sha: str, dedup: str, verified: list[dict[str, Any]], peer: str | None,
    ) -> Answer:  # fmt: skip
        """One write transaction, one commit: the Bundle's record (its dedup key), its
        entries, the referral Tasks, the answer kept for a resend and the AuditEvents;
        committed before the answer is returned (a 200 means durably stored)."""
        now = utcnow()
        try:
            with self.store.engine.execution_options(write=True).begin() as conn:
                row = conn.execute(
                    bundles.insert()
                    .values(
                        received_at=now, partner=who.partner, auth=who.method,
                        bundle_type=str(bundle.get("type"))[:32], identifier=token,
                        sha256=sha, dedup_key=dedup, state="applied", status=200,
                        response=b"{}", raw=body,
                    )
                    .returning(bundles.c.id)
                ).scalar_one()  # fmt: skip
                applied = apply_bundle(conn, self.resources, bundle, who.partner, int(row), now,
                                       self._bases(who.partner))  # fmt: skip
                self.referrals.on_received(conn, applied.written, who.partner, now)
                conn.execute(
                    bundles.update()
                    .where(bundles.c.id == row)
                    .values(response=orjson.dumps(applied.response))
                )
                answer = Answer(200, applied.response)
                self._record(conn, [*verified, *self._receipt(bundle, who.partner, peer, answer)])
        except InboundError as exc:  # rolled back: nothing of the Bundle is stored
            log.warning("inbound: a Bundle from %s refused [%s]", who.partner, exc.code)
            refused = _refused(exc.issue, http_status([exc.issue]))
            self._record(None, [*verified, *self._receipt(bundle, who.partner, peer, refused)])
            return refused
        except sa.exc.IntegrityError:
            self._record(None, verified)  # the check happened; the receipt is the other's
            earlier = self._earlier(dedup)  # the same Bundle, stored meanwhile by another
            if earlier is None:
                raise
            return earlier
        except Exception:
            self._record(None, verified)  # the check happened, whatever failed after it
            raise
        return answer

    def _bases(self, partner: str) -> Bases:
        """Where the partner's absolute references may point (``_apply.py``): this
        gateway's FHIR base, and the partner's own from the partners file (read only
        when such a reference is met; unreadable: none, so the reference is refused)."""
        public = self.settings.inbound_public_url

        def theirs() -> str | None:
            try:
                found = self.referrals.partners().get(partner)
            except GatewayError as exc:
                log.warning("inbound: the partners file cannot be read [%s]", exc.code)
                return None
            return found.base.rstrip("/") if found is not None and found.base else None

        return Bases(own=f"{public}/fhir" if public else None, partner=theirs)


def _first_code(answer: Answer) -> str | None:
    for issue in answer.body.get("issue") or []:
        for coding in (issue.get("details") or {}).get("coding") or []:
            if coding.get("code"):
                return str(coding["code"])
    return None


def _bundle(body: bytes) -> tuple[dict[str, Any], bytes]:
    """The Bundle and its canonical bytes (sorted keys: the dedup key's content)."""
    try:
        bundle = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise InboundError("inbound.bad-bundle", "the body is not JSON") from None
    if not isinstance(bundle, dict) or bundle.get("resourceType") != "Bundle":
        raise InboundError("inbound.bad-bundle", "the body is not a FHIR Bundle")
    if bundle.get("type") not in ("transaction", "batch"):
        raise InboundError(
            "inbound.bad-bundle",
            "POST /fhir takes a transaction or batch Bundle",
            expression="Bundle.type",
        )
    _check_entries(bundle)
    check_unique_names(body)
    try:
        canonical = orjson.dumps(bundle, option=orjson.OPT_SORT_KEYS)
    except orjson.JSONEncodeError:  # orjson writes 254 levels, reads 1024
        raise _too_deep(bundle) from None
    if b"\\u0000" in canonical:  # orjson's U+0000 (or a text "\\u0000": the walk tells)
        _check_nul(bundle)
    return bundle, canonical


def _check_nul(bundle: dict[str, Any]) -> None:
    """Refuse U+0000 in a string or a member name, naming its element: FHIR strings
    carry no character below U+0020 but tab, CR and LF (R4 datatypes: string), and
    PostgreSQL's text holds no NUL at all (the store's insert failed: a 500)."""
    found = _first_path(bundle, _holds_nul)
    if found is None:
        return
    where = _element(found[0])
    raise InboundError(
        "inbound.bad-bundle",
        f"{where}: a string holds the character U+0000 (NUL), which FHIR text does not carry",
        expression=where,
    )


def _holds_nul(node: Any, _path: _Path) -> bool:
    if isinstance(node, dict):
        return any("\0" in k or (isinstance(v, str) and "\0" in v) for k, v in node.items())
    return any(isinstance(v, str) and "\0" in v for v in node)


def _check_entries(bundle: dict[str, Any]) -> None:
    """Each entry a JSON object, its resource and request (when given) objects too: the
    validator reads a resource of another JSON type as absent, and every later step
    (policy, audit, apply) reads them as objects."""
    entries = bundle.get("entry")
    if entries is None:
        return
    if not isinstance(entries, list):
        raise InboundError("inbound.bad-bundle", "Bundle.entry is not a list",
                           expression="Bundle.entry")  # fmt: skip
    for n, entry in enumerate(entries):
        where = f"Bundle.entry[{n}]"
        if not isinstance(entry, dict):
            raise InboundError("inbound.bad-entry", f"{where} is not a JSON object",
                               expression=where)  # fmt: skip
        for part in ("resource", "request"):
            if part in entry and not isinstance(entry[part], dict):
                raise InboundError(
                    "inbound.bad-entry",
                    f"{where}.{part} is not a JSON object",
                    expression=f"{where}.{part}",
                )
        if (entry.get("resource") or {}).get("resourceType") == "Bundle":
            # its entries would pass beside every check made on this Bundle's (in whose
            # name, one patient, the policy's categories) and be stored unread
            raise InboundError(
                "inbound.bad-entry",
                f"{where}.resource is a Bundle: send its resources as entries",
                expression=f"{where}.resource",
            )


MAX_DEPTH = 200  # levels of JSON objects and arrays; FHIR resources need a few dozen


def _too_deep(bundle: dict[str, Any]) -> InboundError:
    """The refusal of a Bundle nested deeper than MAX_DEPTH, naming the element under
    which it is (its first path that deep, cut after the resource's element)."""
    found = _first_path(bundle, lambda _, path: len(path) > MAX_DEPTH)
    where = "Bundle" if found is None else _element(found[0])
    return InboundError(
        "inbound.bad-bundle",
        f"{where} is nested more than {MAX_DEPTH} levels deep",
        expression=where,
    )


_Path = tuple[str | int, ...]


def _first_path(root: Any, test: Callable[[Any, _Path], bool]) -> tuple[_Path, Any] | None:
    """(path, node) of a JSON object or array under ``root`` that passes ``test``
    (without recursion: the JSON may be nested deeper than Python recurses)."""
    stack: list[tuple[Any, _Path]] = [(root, ())]
    while stack:
        node, path = stack.pop()
        if test(node, path):
            return path, node
        items = node.items() if isinstance(node, dict) else enumerate(node)
        stack += [(v, (*path, k)) for k, v in items if isinstance(v, (dict, list))]
    return None


def _element(path: _Path) -> str:
    """The element a path inside the Bundle is in: ``Bundle.entry[2].resource.extension``
    (down to a resource's element), ``Bundle.entry[2].request``, ``Bundle.type``."""
    if len(path) >= 3 and path[0] == "entry" and isinstance(path[1], int):
        keep = 4 if path[2] == "resource" else 3
    else:
        keep = 1
    out = "Bundle"
    for key in path[:keep]:
        out += f"[{key}]" if isinstance(key, int) else f".{key}"
    return out


def check_unique_names(body: bytes) -> None:
    """Refuse an object with a member name twice (I-JSON, RFC 7493 2.3; RFC 8785 signs
    I-JSON): orjson keeps the last value, other readers the first, so the bytes kept as
    evidence would not say which Bundle was signed and stored."""
    found = duplicate_member(body)
    if found is None:
        return
    where = _element((*found[0], found[1]))
    raise InboundError(
        "inbound.bad-bundle",
        f"{where}: an object holds a member name twice (RFC 7493 I-JSON): readers differ "
        "on which value counts, and the signature cannot say",
        expression=where,
    )


def _without_profiles(bundle: dict[str, Any]) -> dict[str, Any]:
    """The Bundle with its resources' ``meta.profile`` left out (shallow copies): each is
    then checked against its base R4 definition, not a profile the gateway may not know
    or a gateway profile a partner's resource names but need not meet."""
    entries = bundle.get("entry")
    if not isinstance(entries, list):
        return bundle
    out: list[Any] = []
    for entry in entries:
        resource = entry.get("resource") if isinstance(entry, dict) else None
        meta = resource.get("meta") if isinstance(resource, dict) else None
        profiles = meta.get("profile") if isinstance(meta, dict) else None
        # anything but a list of canonicals stays, for the validator to name
        if isinstance(profiles, list) and all(isinstance(p, str) for p in profiles):
            assert isinstance(meta, dict) and isinstance(resource, dict)
            rest = {k: v for k, v in meta.items() if k != "profile"}
            plain = {k: v for k, v in resource.items() if k != "meta"}
            if rest:
                plain["meta"] = rest
            entry = {**entry, "resource": plain}
        out.append(entry)
    return {**bundle, "entry": out}


_TARGET = re.compile(r"Bundle\.entry\[(\d+)\]\.resource\.target")


def _untargeted_signature(bundle: dict[str, Any], issue: Issue, signatures: set[int]) -> bool:
    """A signature Provenance made by an earlier gateway over entries without a fullUrl
    (a batch) came with an empty ``target`` (1..*; signing now names the resources or the
    Bundle): what it covers is the Bundle, which its signature proves (verified next).
    That one issue is not held against it."""
    found = _TARGET.fullmatch(issue.fhirpath or "")
    if found is None or issue.code != "validation.cardinality":
        return False
    n = int(found[1])
    resource = bundle["entry"][n].get("resource")
    return n in signatures and isinstance(resource, dict) and not resource.get("target")


def _wrong_sender(where: str, named: str, partner: str) -> InboundError:
    return InboundError(
        "inbound.wrong-sender",
        f"{where} names {named}, but the request was authenticated as {partner}: a partner "
        "sends only in its own name",
        expression=where,
        issue_type="forbidden",
    )


def _agent_type(agent: dict[str, Any]) -> str | None:
    kind = agent.get("type")
    for coding in _list(kind.get("coding")) if isinstance(kind, dict) else []:
        if isinstance(coding, dict) and coding.get("code"):
            return str(coding["code"])
    return None


def _list(value: Any) -> list[Any]:
    """``value`` when it is a JSON array, else nothing (an unvalidated Bundle's element
    of the wrong type: the validation names it)."""
    return value if isinstance(value, list) else []


def _resources(bundle: dict[str, Any]) -> list[tuple[int, dict[str, Any]]]:
    """(position, resource) of the Bundle's entries that hold a JSON object."""
    out = []
    for n, entry in enumerate(_list(bundle.get("entry"))):
        resource = entry.get("resource") if isinstance(entry, dict) else None
        if isinstance(resource, dict):
            out.append((n, resource))
    return out


def _signer_who(provenance: dict[str, Any]) -> Any:
    """``signature[0].who`` of a signature Provenance (None when it has none)."""
    found = _list(provenance.get("signature"))
    return found[0].get("who") if found and isinstance(found[0], dict) else None


def _first_signer(bundle: dict[str, Any]) -> tuple[str, str | None] | None:
    """(where, organisation OID of its certificate) of the Bundle's first signature —
    the author's; co-signers after it may be of other institutions."""
    positions = signature_entries(bundle)
    if positions:
        where = f"Bundle.entry[{positions[0]}].resource.signature[0]"
        sig = ((bundle["entry"][positions[0]]["resource"].get("signature")) or [None])[0]
    elif isinstance(bundle.get("signature"), dict):
        where, sig = "Bundle.signature", bundle["signature"]
    else:
        return None
    return where, _signer_oid(sig)


def _signer_oid(sig: Any) -> str | None:
    """The organizationIdentifier OID of a JWS signature's x5c[0], unverified (the
    signature is verified next): enough to refuse another institution's name early."""
    try:
        jws = b64decode(str(sig.get("data", "")), validate=True).decode("ascii")
        head = jws.split(".", 1)[0]
        header = json.loads(urlsafe_b64decode(head + "=" * (-len(head) % 4)))
        cert = x509.load_der_x509_certificate(b64decode(header["x5c"][0]))
    except (AttributeError, binascii.Error, UnicodeDecodeError, ValueError, KeyError,
            IndexError, TypeError):  # fmt: skip
        return None
    found = cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_IDENTIFIER)
    value = found[0].value if found else None
    return value.removeprefix("OID:") if isinstance(value, str) else None
