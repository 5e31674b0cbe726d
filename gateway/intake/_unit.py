"""What every reader hands to the pipeline: one record, read (or failed) at intake.

A reader (HL7 v2, DICOM, CDA) yields Units; the pipeline picks the mapping by
``message_type`` and runs it over ``view``. The view is the format's look-up object
(terser paths, DICOM keywords, XPath): :class:`RecordView` is everything the mapping
engine may use of it, and every reader's view satisfies it (checked by mypy where the
readers build their Units).
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Any, Protocol

from ..errors import GatewayError, Issue

__all__ = ["MemoView", "RecordView", "Unit"]

# A position inside a record (a segment group or field, a DICOM node, an XML element):
# opaque to the mapping engine, which only hands it back to the view that made it.
Position = Any


class RecordView(Protocol):
    """What the mapping engine reads a record through; paths follow the format's grammar
    (HL7 v2 terser paths, DICOM keywords and tags, XPath), relative to ``here``."""

    kind: str  # hl7v2, dicom, cda
    # Whether fragments may be memoised by node text (MemoView); DICOM and XML nodes
    # have no cheap stable text, so their views say False.
    memo: bool
    root: Position  # where every mapping starts

    def select(self, path: str, here: Position) -> list[Position]:
        """The positions ``path`` names (for ``each`` and groups)."""

    def first(self, path: str, here: Position) -> str | None:
        """The first non-empty value at ``path``, unescaped and decoded; None if absent."""

    def values(self, path: str, here: Position) -> list[tuple[str, str]]:
        """Every non-empty value at ``path`` with the label of where it was found."""

    def label(self, path: str, here: Position) -> str:
        """How an error names ``path`` at ``here`` (``PID-3(2).4``, ``(0020,0011)``, an
        XPath): the field, never its value."""

    @property
    def tracing(self) -> bool:
        """Whether reads are being recorded (``gateway convert --unmapped``)."""

    def trace(self) -> None:
        """Start recording which fields the mapping reads."""

    def unmapped(self) -> list[str]:
        """Labels of fields holding data that no read touched (while tracing)."""


class MemoView(RecordView, Protocol):
    """A view whose nodes' text is their whole meaning, given ``reading``: the engine may
    memoise pure fragments by it (``memo`` is True). Nodes have ``text`` and ``level``."""

    reading: Hashable  # what else decides what a text means: delimiters, charset

    def group_key(self, here: Position, segments: frozenset[str]) -> tuple[str, ...] | None:
        """The text of the named segments of ``here``'s group (None: not memoisable)."""


@dataclass(slots=True)
class Unit:
    raw: bytes  # the record's own bytes (kept on the Record; hashed for the audit trail)
    index: int  # 1-based position in its input
    format: str  # hl7v2, dicom, cda
    line: int = 1
    kind: str = "message"  # how errors name it: message, study, document
    control_id: str | None = None  # its id: MSH-10, Study Instance UID, document id
    message_type: str | None = None  # picks the mapping: ORU^R01, dicom-study, ...
    sender: str | None = None
    charset: str | None = None
    view: RecordView | None = None  # None when intake failed
    error: GatewayError | None = None
    issues: list[Issue] = field(default_factory=list)  # intake warnings
