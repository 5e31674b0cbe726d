"""What every reader hands to the pipeline: one record, read (or failed) at intake.

A reader (HL7 v2, DICOM, CDA) yields Units; the pipeline picks the mapping by
``message_type`` and runs it over ``view``. The view is the format's look-up object
(terser paths, DICOM keywords, XPath) with the interface the mapping engine expects:
``root``, ``select``, ``first``, ``values``, ``label``, ``tracing``/``trace``/``unmapped``
and ``memo`` (whether the engine may memoise fragments by node text).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..errors import GatewayError, Issue

__all__ = ["Unit"]


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
    view: Any = None  # None when intake failed
    error: GatewayError | None = None
    issues: list[Issue] = field(default_factory=list)  # intake warnings
