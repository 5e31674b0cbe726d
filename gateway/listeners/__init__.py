"""Listeners: HL7 v2 over MLLP (mllp), beside them the DICOM ones; each stores what
arrives before it acknowledges it (shared: the group-commit writer and the worker
that converts stored messages after the ACK)."""

from .mllp import Ack, MllpServer, build_ack, frame, mllp_running, tls_context
from .shared import Processor, StoreWriter

__all__ = [
    "Ack",
    "MllpServer",
    "Processor",
    "StoreWriter",
    "build_ack",
    "frame",
    "mllp_running",
    "tls_context",
]
