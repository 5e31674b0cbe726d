"""The record envelope: one per input record, carried through every stage.

Intake fills in the original bytes, their SHA-256, format, charset and identity;
later stages add the Bundle and issues. Nothing an earlier stage made is dropped.

A record moves through :class:`State`\\ s along :data:`TRANSITIONS` only
(:meth:`Record.advance` raises :class:`TransitionError` otherwise), and keeps the
history of the stages it went through (:class:`Step`: stage, outcome, duration).

Its Bundle is its own: ``bundle_json`` holds the serialised Bundle, and ``bundle`` is
parsed from it on first use, so nothing a stage does to ``record.bundle`` can reach
another record (or the mapping engine's memo of shared values).
"""

from __future__ import annotations

import enum
import hashlib
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import orjson

from .errors import Issue

__all__ = ["TRANSITIONS", "Record", "State", "Step", "TransitionError", "dump_json"]


def dump_json(resource: object) -> bytes:
    """The gateway's one JSON form: UTF-8, 2-space indent, newline-terminated, stable."""
    return orjson.dumps(resource, option=_JSON_OPTIONS)  # the newline by orjson: no copy


_JSON_OPTIONS = orjson.OPT_INDENT_2 | orjson.OPT_APPEND_NEWLINE


class State(enum.Enum):
    """Where a record stands. The first five are built; the rest are the places later
    stages (policy, signing, outbox, delivery) will move records to."""

    RECEIVED = "received"  # its bytes are here, not yet read
    READ = "read"  # intake parsed it into a view
    MAPPED = "mapped"  # a transaction Bundle was made from it
    VALIDATED = "validated"  # the Bundle passed the R4B models and the reference check
    CONVERTED = "converted"  # serialised: bundle_json is the output
    FAILED = "failed"  # an error stopped it; its issues say why
    HELD = "held"  # not built: policy keeps it back (e.g. consent, review)
    SIGNED = "signed"  # not built: signature and Provenance added
    QUEUED = "queued"  # not built: in the outbox, waiting for delivery
    DELIVERED = "delivered"  # not built: the partner accepted it

    # Members are singletons compared by identity: hashing by identity (in C) gives the
    # same dict and set behaviour as Enum's own hash of the name (a Python call), and
    # Record.advance looks states up four times a record.
    __hash__ = object.__hash__


TRANSITIONS: dict[State, frozenset[State]] = {
    State.RECEIVED: frozenset({State.READ, State.FAILED}),
    State.READ: frozenset({State.MAPPED, State.FAILED}),
    State.MAPPED: frozenset({State.VALIDATED, State.FAILED}),
    State.VALIDATED: frozenset({State.CONVERTED, State.FAILED}),
    State.CONVERTED: frozenset({State.HELD, State.SIGNED, State.QUEUED, State.FAILED}),
    State.HELD: frozenset({State.CONVERTED, State.FAILED}),
    State.SIGNED: frozenset({State.QUEUED, State.FAILED}),
    State.QUEUED: frozenset({State.DELIVERED, State.FAILED}),
    State.DELIVERED: frozenset(),
    State.FAILED: frozenset(),
}


class TransitionError(RuntimeError):
    """A stage tried to move a record where its state does not lead (a bug, not bad input)."""


class Step(NamedTuple):
    """One stage a record went through (a tuple: cheap to make, four per record)."""

    stage: str  # the stage's name in the pipeline's stage list
    outcome: str  # "ok" or "failed"
    ms: float  # how long the stage took, in milliseconds
    code: str | None = None  # the first error's code when it failed


@dataclass(slots=True)
class Record:
    raw: bytes
    source: str | None  # file path, "request" for the API, None for stdin
    index: int  # position in its source (1-based)
    line: int = 1
    format: str = "unknown"
    kind: str = "message"  # message (HL7 v2), study (DICOM), document (CDA)
    charset: str | None = None
    control_id: str | None = None
    message_type: str | None = None
    sender: str | None = None
    bundle_json: bytes | None = None  # the serialised Bundle (the output)
    # The validated Bundle bundle_json was made from, as the converter built it: read-only
    # (frozen parts are shared with other records), for a stage that only reads it or
    # copies what it changes (the policy) instead of parsing bundle_json again.
    mapped: dict[str, Any] | None = field(default=None, repr=False, compare=False)
    issues: list[Issue] = field(default_factory=list)
    unmapped: list[str] | None = None  # fields holding data that no mapping read (traced)
    state: State = State.RECEIVED
    history: list[Step] = field(default_factory=list)
    _bundle: dict[str, Any] | None = field(default=None, init=False, repr=False, compare=False)

    @property
    def bundle(self) -> dict[str, Any] | None:
        """The record's own Bundle, parsed from ``bundle_json`` on first use: a stage may
        change it in place without reaching any other record. A stage that changes it
        sets it back (``record.bundle = bundle``) to serialise the change."""
        if self._bundle is None and self.bundle_json is not None:
            self._bundle = orjson.loads(self.bundle_json)
        return self._bundle

    @bundle.setter
    def bundle(self, bundle: dict[str, Any] | None) -> None:
        self._bundle = bundle
        self.bundle_json = None if bundle is None else dump_json(bundle)

    def advance(self, state: State) -> None:
        """Move to ``state``; TransitionError when the current state does not lead there."""
        if state not in TRANSITIONS[self.state]:
            raise TransitionError(
                f"{self.log_id}: a record {self.state.value} cannot become {state.value}"
            )
        self.state = state

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.raw).hexdigest()

    @property
    def ok(self) -> bool:
        return self.bundle_json is not None and not any(
            i.severity in ("error", "fatal") for i in self.issues
        )

    @property
    def label(self) -> str:
        """How errors name the record: its control id when known, else its position."""
        where = f"{self.source}, " if self.source else ""
        if self.control_id:
            return f"{where}{self.kind} {self.control_id}"
        if self.format == "hl7v2" or self.line > 1:
            return f"{where}{self.kind} #{self.index} (line {self.line})"
        return f"{where}{self.kind} #{self.index}"

    @property
    def log_id(self) -> str:
        """How logs name the record: its control id, else its position. Never the source
        (a file name a user chose may name the patient)."""
        if self.control_id:
            return f"{self.kind} {self.control_id}"
        return f"{self.kind} #{self.index}" + (f" (line {self.line})" if self.line > 1 else "")

    @property
    def errors(self) -> list[Issue]:
        return [i for i in self.issues if i.severity in ("error", "fatal")]

    @property
    def warnings(self) -> list[Issue]:
        return [i for i in self.issues if i.severity == "warning"]
