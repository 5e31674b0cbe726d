"""Listeners: HL7 v2 over MLLP (mllp), beside them the DICOM ones; each stores what
arrives before it acknowledges it (shared: the group-commit writer and the worker
that converts stored messages after the ACK)."""

from ._run import DEFAULT_MLLP_PORT, add_cli, serve_gateway
from .mllp import (
    Ack,
    ClientCertificate,
    MllpServer,
    build_ack,
    frame,
    mllp_running,
    tls_context,
)
from .shared import Processor, StoreWriter

__all__ = [
    "DEFAULT_MLLP_PORT",
    "Ack",
    "ClientCertificate",
    "MllpServer",
    "Processor",
    "StoreWriter",
    "add_cli",
    "build_ack",
    "frame",
    "mllp_running",
    "serve_gateway",
    "tls_context",
]
