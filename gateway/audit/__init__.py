"""The audit trail (docs/audit.md): every significant step as a FHIR AuditEvent (IHE
BALP patterns) in an append-only log that forms an RFC 9162 Merkle tree, with signed
tree heads, inclusion and consistency proofs, offline-verifiable exports and the yearly
cross-border transfer report.

    log = AuditLog(store)
    log.record(events.delivery("HKPMC", Subject("Patient/123", ("Bundle/abc",)),
                               url=..., outcome="success", basis="gba-standard-contract"))
    log.sign_head(signer)          # or periodic(settings)() from the serve loop
"""

from . import _events as events
from ._cli import add_cli, audit_signer, default_checker, open_log, periodic, verify_live
from ._events import GATEWAY, KINDS, PROFILE, Party, Subject
from ._export import PROOF_TYPE, ExportFilter, export_bundle, verify_export
from ._hooks import (
    PSEUDONYM,
    audit_log,
    basis_of,
    bundle_subject,
    decision_event,
    delivery_event,
    message_subject,
    operator,
    record_events,
    record_operator,
    store_hook,
    subject_of,
)
from ._log import (
    LOG_ID,
    Appended,
    AuditError,
    AuditLog,
    AuditWriter,
    Entry,
    SignedHead,
    head_payload,
)
from ._merkle import Frontier, Tree, leaf_hash, node_hash, verify_consistency, verify_inclusion
from ._search import AuditQuery, parse_query, read_event, search_events
from ._transfers import TransferRow, join_people, transfers
from ._verify import Problem, Verdict, cert_checker, verify_log

__all__ = [
    "GATEWAY",
    "KINDS",
    "LOG_ID",
    "PROFILE",
    "PROOF_TYPE",
    "PSEUDONYM",
    "Appended",
    "AuditError",
    "AuditLog",
    "AuditQuery",
    "AuditWriter",
    "Entry",
    "ExportFilter",
    "Frontier",
    "Party",
    "Problem",
    "SignedHead",
    "Subject",
    "TransferRow",
    "Tree",
    "Verdict",
    "add_cli",
    "audit_log",
    "audit_signer",
    "basis_of",
    "bundle_subject",
    "cert_checker",
    "decision_event",
    "default_checker",
    "delivery_event",
    "events",
    "export_bundle",
    "head_payload",
    "join_people",
    "leaf_hash",
    "message_subject",
    "node_hash",
    "open_log",
    "operator",
    "parse_query",
    "periodic",
    "read_event",
    "record_events",
    "record_operator",
    "search_events",
    "store_hook",
    "subject_of",
    "transfers",
    "verify_consistency",
    "verify_export",
    "verify_inclusion",
    "verify_live",
    "verify_log",
]
