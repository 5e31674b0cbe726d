"""The record envelope: one per input record, carried through every stage.

Intake fills in the original bytes, their SHA-256, format, charset and identity;
later stages add the Bundle and issues. Nothing an earlier stage made is dropped.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

from .errors import Issue

__all__ = ["Record"]


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
    bundle: dict[str, Any] | None = None
    bundle_json: bytes | None = None
    issues: list[Issue] = field(default_factory=list)
    unmapped: list[str] | None = None  # fields holding data that no mapping read (traced)

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
    def errors(self) -> list[Issue]:
        return [i for i in self.issues if i.severity in ("error", "fatal")]

    @property
    def warnings(self) -> list[Issue]:
        return [i for i in self.issues if i.severity == "warning"]
