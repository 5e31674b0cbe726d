"""The message store: every message as received (original bytes, SHA-256, channel,
peer, sender), its state, and what each stage made of it; SQLite by default,
PostgreSQL when ``database_url`` names one. See docs/store.md."""

from ._cli import add_cli, decoded, message_json, parse_since
from ._engine import database_url, make_engine
from ._open import open_store, retention
from ._process import AuditHook, current_converter, on_converted, outcome_of, process_message
from ._schema import metadata
from ._store import (
    CHANNELS,
    NEVER_PRUNED,
    STATES,
    DicomInstance,
    Incoming,
    KnownStudy,
    MessageFilter,
    MessageSummary,
    Page,
    Receipt,
    StageOutcome,
    Store,
    StoredMessage,
    StoredOutcome,
    StoreError,
    issue_json,
    study_zip,
    utcnow,
)
from ._studies import LISTENER_CHANNELS, StudyCheck, check_study, listener_message

__all__ = [
    "CHANNELS",
    "LISTENER_CHANNELS",
    "NEVER_PRUNED",
    "STATES",
    "AuditHook",
    "DicomInstance",
    "Incoming",
    "KnownStudy",
    "MessageFilter",
    "MessageSummary",
    "Page",
    "Receipt",
    "StageOutcome",
    "Store",
    "StoreError",
    "StoredMessage",
    "StoredOutcome",
    "StudyCheck",
    "add_cli",
    "check_study",
    "current_converter",
    "database_url",
    "decoded",
    "issue_json",
    "listener_message",
    "make_engine",
    "message_json",
    "metadata",
    "on_converted",
    "open_store",
    "outcome_of",
    "parse_since",
    "process_message",
    "retention",
    "study_zip",
    "utcnow",
]
