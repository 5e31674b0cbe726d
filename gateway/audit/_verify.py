"""Verification of the audit log: the live log in the store (every leaf recomputed from
its stored event, the tree, every signed head and the consistency between successive
heads) and an exported Bundle offline (the signed head, one inclusion proof per event),
with the certificate alone. Each problem is one line naming the entry (index, event id).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
from cryptography import x509
from cryptography.exceptions import InvalidSignature

from ..signing import SignatureReport, SigningError, TrustStore, canonicalize, check_certificate
from ._events import keys_of
from ._log import AuditLog, SignedHead, verify_head
from ._merkle import EMPTY_ROOT, Frontier, Tree, leaf_hash, verify_consistency

__all__ = ["CertCheck", "Problem", "Verdict", "cert_checker", "verify_log"]

# A JWS header (gateway.signing's, as verify_detached returns it) → what is wrong with its
# signer, if anything.
CertCheck = Callable[[Any], list[str]]


@dataclass(frozen=True, slots=True)
class Problem:
    code: str  # audit.*
    message: str
    index: int | None = None
    event_id: str | None = None

    def line(self) -> str:
        if self.index is None:
            where = f"event {self.event_id}" if self.event_id else "log"
        else:
            where = f"entry {self.index}" + (f" (event {self.event_id})" if self.event_id else "")
        return f"{where}: {self.message} [{self.code}]"


@dataclass
class Verdict:
    source: str
    entries: int = 0
    heads: int = 0
    problems: list[Problem] = field(default_factory=list)
    signers: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def add(
        self, code: str, message: str, index: int | None = None, event: str | None = None
    ) -> None:
        self.problems.append(Problem(code, message, index, event))


def cert_checker(
    certs: Sequence[x509.Certificate] = (), trust: TrustStore | None = None
) -> CertCheck:
    """How a head's signer is trusted: pinned certificates (the signer's own, or a CA
    that issued its chain), and/or a trust store (chain, validity, CRL, key usage)."""

    def check(header: Any) -> list[str]:
        problems: list[str] = []
        if certs and not _pinned(header.chain, certs, header.signing_time):
            problems.append(
                "signed by a certificate that is neither the given one nor issued by it "
                f"({header.chain[0].subject.rfc4514_string()[:80]})"
            )
        if trust is not None:
            report = SignatureReport(1)
            check_certificate(report, header.chain, header.signing_time, trust)
            problems += [c.message for c in report.checks if not c.ok]
        return problems

    return check


def _pinned(
    chain: Sequence[x509.Certificate], certs: Sequence[x509.Certificate], when: dt.datetime
) -> bool:
    leaf = chain[0]
    if not leaf.not_valid_before_utc <= when <= leaf.not_valid_after_utc:
        return False
    if leaf in certs:
        return True
    current = leaf
    for issuer in [*chain[1:], *certs]:
        try:
            current.verify_directly_issued_by(issuer)
        except (ValueError, TypeError, InvalidSignature):
            continue
        if issuer in certs:
            return True
        current = issuer
    return False


def check_head(verdict: Verdict, head: SignedHead, label: str, trusted: CertCheck | None) -> bool:
    """The head's signature and signer; False (with a problem) when it does not hold."""
    try:
        header = verify_head(head)
    except SigningError as exc:
        verdict.add(
            "audit.bad-head", f"{label}: signature refused: {exc.issue.message} [{exc.code}]"
        )
        return False
    signer = header.chain[0].subject.rfc4514_string()
    if signer not in verdict.signers:
        verdict.signers.append(signer)
    for problem in trusted(header) if trusted else []:
        verdict.add("audit.untrusted-head", f"{label}: {problem}")
    return True


def _check_entry(verdict: Verdict, index: int, event_id: str, canonical: bytes, row: Any) -> None:
    """The stored event against its own row: canonical form, id and index columns."""
    try:
        resource = orjson.loads(canonical)
        again = canonicalize(resource)
    except (orjson.JSONDecodeError, SigningError):
        verdict.add("audit.altered", "the stored event is not JSON any more", index, event_id)
        return
    if again != canonical:
        verdict.add(
            "audit.altered", "the stored event is not in RFC 8785 canonical form", index, event_id
        )
    if resource.get("id") != event_id:
        verdict.add(
            "audit.altered", "the event's id is not the one it was logged under", index, event_id
        )
    kind, _, patient, partner = keys_of(resource)
    if (kind[:32], patient, partner) != (row.kind, row.patient, row.partner):
        verdict.add(
            "audit.altered",
            "the look-up columns (kind, patient, partner) disagree with the event",
            index,
            event_id,
        )


def verify_log(log: AuditLog, trusted: CertCheck | None = None) -> Verdict:
    """Everything the live log can prove about itself."""
    verdict = Verdict("live log")
    heads = log.heads()
    sizes = {h.tree_size for h in heads}
    frontier = Frontier()
    leaves: list[bytes] = []
    ids: list[str] = []
    roots: dict[int, bytes] = {0: EMPTY_ROOT}
    moved = False
    for entry in log.rows():
        expected = frontier.size
        if entry.index != expected and not moved:
            verdict.add(
                "audit.missing",
                f"entries {expected}..{entry.index - 1} are missing (deleted): the next stored "
                f"entry is {entry.index} (event {entry.event_id})"
                if entry.index > expected
                else "index out of sequence",
                expected,
            )
        leaf = leaf_hash(entry.canonical)
        if leaf != entry.leaf_hash:
            verdict.add(
                "audit.altered",
                "the stored event does not hash to the leaf hash logged with it: it was "
                "changed after it was logged",
                entry.index,
                entry.event_id,
            )
        _check_entry(verdict, entry.index, entry.event_id, entry.canonical, entry)
        frontier = frontier.append(leaf)
        leaves.append(leaf)
        ids.append(entry.event_id)
        root = frontier.root()
        if root != entry.root and not moved and entry.index == expected:
            verdict.add(
                "audit.reordered",
                "the tree of the entries up to here is not the one logged when this entry was "
                "appended: an entry before it or this one was altered, inserted, removed or "
                "moved",
                entry.index,
                entry.event_id,
            )
            moved = True
        if entry.index != expected:
            moved = True
        if frontier.size in sizes:
            roots[frontier.size] = root
    verdict.entries = frontier.size
    size, root = log.current()
    if frontier.size > size:
        verdict.add(
            "audit.inserted",
            f"not counted by the log's state ({size} entries): written outside the gateway",
            size,
            ids[size] if size < len(ids) else None,
        )
    elif frontier.size < size:
        verdict.add(
            "audit.missing",
            f"the log's state counts {size} entries, the table holds {frontier.size}: the last "
            f"{size - frontier.size} were deleted",
            frontier.size,
        )
    elif root != frontier.root():
        verdict.add("audit.altered", "the log's state (frontier) does not give the tree's root")
    _check_heads(verdict, heads, roots, Tree(leaves), trusted)
    return verdict


def _check_heads(
    verdict: Verdict,
    heads: list[SignedHead],
    roots: dict[int, bytes],
    tree: Tree,
    trusted: CertCheck | None,
) -> None:
    verdict.heads = len(heads)
    previous: SignedHead | None = None
    for head in heads:
        label = f"signed head #{head.id} (size {head.tree_size})"
        signed = check_head(verdict, head, label, trusted)
        if head.tree_size > tree.size:
            verdict.add(
                "audit.missing",
                f"{label} covers {head.tree_size} entries, the log holds {tree.size}: entries "
                "were deleted",
            )
        elif roots.get(head.tree_size) != head.root_hash:
            verdict.add(
                "audit.rewritten",
                f"{label}: the log's root at that size is not the signed one: entries before "
                f"{head.tree_size} changed after it was signed",
            )
        if previous is not None and signed:
            _consistent(verdict, previous, head, tree)
        if signed:
            previous = head


def _consistent(verdict: Verdict, old: SignedHead, new: SignedHead, tree: Tree) -> None:
    label = f"signed heads #{old.id} (size {old.tree_size}) and #{new.id} (size {new.tree_size})"
    if new.tree_size < old.tree_size:
        verdict.add("audit.rewritten", f"{label}: the log shrank")
        return
    if new.tree_size > tree.size:
        return  # reported above
    proof = tree.consistency_proof(old.tree_size, new.tree_size)
    if not verify_consistency(old.tree_size, new.tree_size, old.root_hash, new.root_hash, proof):
        verdict.add(
            "audit.inconsistent",
            f"{label}: no consistency proof from the log links them: history was rewritten",
        )
