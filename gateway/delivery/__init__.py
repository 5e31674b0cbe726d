"""Delivery: the durable outbox of records for partner FHIR servers, and the worker
that sends them (httpx, backoff with jitter, Retry-After, a circuit breaker per
partner, ambiguous sends resolved by asking the partner, order kept per patient).
A stage below the store and the partners; the API and listeners use it, never the
reverse. See docs/delivery.md."""

from ._ask import Verdict, ask, same_content
from ._cli import add_cli
from ._outbox import (
    ACTIVE,
    DUE,
    STATES,
    DeliveryError,
    Outbox,
    OutboxEvent,
    OutboxRecord,
    order_key_of,
)
from ._retry import Breaker, DeliveryConfig, backoff, retry_after
from ._send import KEPT_CHARS, Answer, classify_error, classify_response, send_part
from ._worker import Deliverer

__all__ = [
    "ACTIVE",
    "DUE",
    "KEPT_CHARS",
    "STATES",
    "Answer",
    "Breaker",
    "Deliverer",
    "DeliveryConfig",
    "DeliveryError",
    "Outbox",
    "OutboxEvent",
    "OutboxRecord",
    "Verdict",
    "add_cli",
    "ask",
    "backoff",
    "classify_error",
    "classify_response",
    "order_key_of",
    "retry_after",
    "same_content",
    "send_part",
]
