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
import sqlalchemy as sa
from cryptography import x509
from cryptography.exceptions import InvalidSignature

from ..signing import SignatureReport, SigningError, TrustStore, canonicalize, check_certificate
from ._events import keys_of
from ._log import AuditError, AuditLog, Entry, SignedHead, _recorded, verify_head
from ._merkle import EMPTY_ROOT, Frontier, Tree, leaf_hash, verify_consistency
from ._tables import entries

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
            # a head's time is vouched for by the consistency proofs to later heads: an
            # audit key that expired since must not make yesterday's heads untrusted
            check_certificate(report, header.chain, header.signing_time, trust, claimed=False)
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
        if not is_ca(issuer):  # a partner's signing certificate issues nothing
            continue
        try:
            current.verify_directly_issued_by(issuer)
        except (ValueError, TypeError, InvalidSignature):
            continue
        if issuer in certs:
            return True
        current = issuer
    return False


def is_ca(cert: x509.Certificate) -> bool:
    """Whether ``cert`` may issue certificates: BasicConstraints cA (RFC 5280 4.2.1.9)."""
    try:
        return bool(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except x509.ExtensionNotFound:
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
    if not isinstance(resource, dict):
        verdict.add("audit.altered", "the stored event is not a JSON object", index, event_id)
        return
    if resource.get("id") != event_id:
        verdict.add(
            "audit.altered", "the event's id is not the one it was logged under", index, event_id
        )
    kind, recorded, patient, partner = keys_of(resource)
    columns = {"kind": (kind[:32], row.kind), "patient": (patient, row.patient)}
    columns["partner"] = (partner, row.partner)
    wrong = [name for name, (said, stored) in columns.items() if said != stored]
    if wrong:  # named, never their values (a patient's id)
        verdict.add(
            "audit.altered",
            f"the look-up column{'s' if len(wrong) > 1 else ''} {', '.join(wrong)} "
            f"disagree{'' if len(wrong) > 1 else 's'} with the event",
            index,
            event_id,
        )
    if not _same_instant(recorded, row.recorded):
        verdict.add(
            "audit.altered",
            "the recorded column (what date searches and exports select by) disagrees with "
            "the event's recorded time",
            index,
            event_id,
        )


def _same_instant(text: str, column: Any) -> bool:
    """Whether the event's ``recorded`` is the instant the column holds (naive UTC)."""
    try:
        when = _recorded(text)
    except AuditError:
        return False
    if isinstance(column, dt.datetime) and column.tzinfo is not None:
        column = column.astimezone(dt.UTC).replace(tzinfo=None)
    return bool(when == column)


@dataclass
class _Walk:
    """What the walk over the stored entries has seen so far."""

    frontier: Frontier = field(default_factory=Frontier)
    leaves: list[bytes] = field(default_factory=list)
    ids: list[str] = field(default_factory=list)
    roots: dict[int, bytes] = field(default_factory=lambda: {0: EMPTY_ROOT})
    last: int = -1  # the last stored index read
    moved: bool = False  # a root already disagreed: the following ones all do


def _walk_entry(verdict: Verdict, walk: _Walk, entry: Entry, sizes: set[int]) -> None:
    if not isinstance(entry.canonical, bytes) or not isinstance(entry.index, int):
        raise TypeError("a column of another type")
    expected = walk.frontier.size
    if entry.index > walk.last + 1:  # a gap is named where it is, whatever came before
        verdict.add(
            "audit.missing",
            f"entries {walk.last + 1}..{entry.index - 1} are missing (deleted): the next "
            f"stored entry is {entry.index} (event {entry.event_id})",
            walk.last + 1,
        )
    walk.last = entry.index
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
    walk.frontier = walk.frontier.append(leaf)
    walk.leaves.append(leaf)
    walk.ids.append(entry.event_id)
    root = walk.frontier.root()
    if root != entry.root and not walk.moved and entry.index == expected:
        verdict.add(
            "audit.reordered",
            "the tree of the entries up to here is not the one logged when this entry was "
            "appended: an entry before it or this one was altered, inserted, removed or "
            "moved",
            entry.index,
            entry.event_id,
        )
        walk.moved = True
    if entry.index != expected:
        walk.moved = True
    if walk.frontier.size in sizes:
        walk.roots[walk.frontier.size] = root


def _negative(verdict: Verdict, log: AuditLog) -> None:
    """Rows below index 0: the log never gives one, and every reader starts at 0."""
    query = sa.select(entries.c.idx, entries.c.event_id).where(entries.c.idx < 0)
    with log.engine.connect() as conn:
        for index, event_id in conn.execute(query.order_by(entries.c.idx)):
            verdict.add(
                "audit.inserted",
                "a negative index, never given by the log: moved or written outside the gateway",
                index,
                event_id,
            )


def verify_log(
    log: AuditLog, trusted: CertCheck | None = None, checkpoints: Sequence[SignedHead] = ()
) -> Verdict:
    """Everything the live log can prove about itself, and against ``checkpoints``:
    heads kept outside the database (an export's, ``sign-head -o``), the only defence
    against a truncated log whose state and heads were rewritten, or a database rolled
    back to an older copy."""
    verdict = Verdict("live log")
    heads = log.heads()
    sizes = {h.tree_size for h in heads} | {c.tree_size for c in checkpoints}
    walk = _Walk()
    _negative(verdict, log)
    try:
        for entry in log.rows():
            _walk_entry(verdict, walk, entry, sizes)
    except (ValueError, TypeError):  # SQLite keeps a value of any type in any column
        index = _unreadable(log, walk.last)
        verdict.add(
            "audit.altered",
            "the stored entry cannot be read as the gateway wrote it (a column holds a value "
            "of another type: changed outside the gateway); verification stops here",
            index,
        )
        return verdict
    verdict.entries = walk.frontier.size
    try:
        size, root = log.current()
        if not isinstance(size, int):
            raise TypeError(size)
    except (ValueError, TypeError):
        verdict.add(
            "audit.altered",
            "the log's state row cannot be read as the gateway wrote it (a value of another "
            "type: changed outside the gateway)",
        )
        return verdict
    _check_state(verdict, walk, size, root)
    tree = Tree(walk.leaves)
    _check_heads(verdict, heads, walk.roots, tree, trusted)
    for kept in checkpoints:
        _check_kept(verdict, kept, walk.roots, tree, trusted)
    return verdict


def _unreadable(log: AuditLog, after: int) -> int | None:
    """The index of the first entry after ``after`` that cannot be read (rows are read
    in chunks: the failing chunk is read again one row at a time)."""
    query = sa.select(entries.c.idx).where(entries.c.idx > after).order_by(entries.c.idx)
    with log.engine.connect() as conn:
        indices = list(conn.execute(query).scalars())
    for index in indices:
        try:
            for entry in log.rows(entries.c.idx == index):
                if not isinstance(entry.canonical, bytes):
                    raise TypeError("canonical")
        except (ValueError, TypeError):
            return index if isinstance(index, int) else None
    return None


def _check_state(verdict: Verdict, walk: _Walk, size: int, root: bytes) -> None:
    if walk.frontier.size > size:
        verdict.add(
            "audit.inserted",
            f"not counted by the log's state ({size} entries): written outside the gateway",
            size,
            walk.ids[size] if size < len(walk.ids) else None,
        )
    elif size > walk.last + 1:
        verdict.add(
            "audit.missing",
            f"the log's state counts {size} entries, the table holds {walk.frontier.size}: "
            f"the last {size - walk.last - 1} were deleted",
            walk.last + 1,
        )
    elif walk.frontier.size == size and root != walk.frontier.root():
        verdict.add("audit.altered", "the log's state (frontier) does not give the tree's root")


def _check_kept(
    verdict: Verdict,
    kept: SignedHead,
    roots: dict[int, bytes],
    tree: Tree,
    trusted: CertCheck | None,
) -> None:
    """A head kept outside the database: signed by the gateway, and the log still holds
    the tree it signed."""
    label = f"the kept head (size {kept.tree_size})"
    check_head(verdict, kept, label, trusted)
    _against_log(
        verdict, kept, label, roots, tree, " or the database was rolled back to an older copy"
    )


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
        _against_log(verdict, head, label, roots, tree)
        if previous is not None and signed:
            _consistent(verdict, previous, head, tree)
        if signed:
            previous = head


def _against_log(
    verdict: Verdict,
    head: SignedHead,
    label: str,
    roots: dict[int, bytes],
    tree: Tree,
    or_else: str = "",
) -> None:
    """The log still holds the tree ``head`` signed: as many entries, the same root."""
    if head.tree_size > tree.size:
        verdict.add(
            "audit.missing",
            f"{label} covers {head.tree_size} entries, the log holds {tree.size}: entries "
            f"were deleted{or_else}",
        )
    elif roots.get(head.tree_size) != head.root_hash:
        verdict.add(
            "audit.rewritten",
            f"{label}: the log's root at that size is not the signed one: entries before "
            f"{head.tree_size} changed after it was signed",
        )


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
