"""Delivery: the durable outbox of records for partner FHIR servers, and the worker
that sends them (httpx, backoff with jitter, Retry-After, a circuit breaker per
partner, ambiguous sends resolved by asking the partner, order kept per patient).
A stage below the store, the partners, the policy, the report variants and signing
(the outbound path runs them: _outbound.py); routing is data (_routes.py). The API,
listeners and CLI use it, never the reverse. See docs/delivery.md."""

from ._ask import Verdict, ask, same_content
from ._cli import Detail, add_cli, add_outbox_detail
from ._links import LINKED_TYPES, link_ref, links_of, patient_ref, resolve_links
from ._outbound import Outbound, OutboundResult, Placed, bundles_of
from ._outbox import (
    ACTIVE,
    DISCARDABLE,
    DUE,
    STATES,
    DeliveryError,
    Outbox,
    OutboxEvent,
    OutboxRecord,
    label_of,
    order_key_of,
)
from ._retry import Breaker, DeliveryConfig, backoff, retry_after
from ._routes import Facts, Route, Routes, Routing, facts_of
from ._send import KEPT_CHARS, Answer, classify_error, classify_response, send_part
from ._service import DeliveryService, unrouted
from ._status import STATUS_HELD, StatusReplies
from ._withdrawal import UnsentHold  # registers the withdrawal's hold with the policy
from ._work_cli import add_cli as add_work_cli
from ._worker import SETTLED, ClientFactory, Deliverer, deliver_rows, partner_client

__all__ = [
    "ACTIVE",
    "DISCARDABLE",
    "DUE",
    "KEPT_CHARS",
    "LINKED_TYPES",
    "SETTLED",
    "STATES",
    "STATUS_HELD",
    "Answer",
    "Breaker",
    "ClientFactory",
    "Deliverer",
    "DeliveryConfig",
    "DeliveryError",
    "DeliveryService",
    "Detail",
    "Facts",
    "Outbound",
    "OutboundResult",
    "Outbox",
    "OutboxEvent",
    "OutboxRecord",
    "Placed",
    "Route",
    "Routes",
    "Routing",
    "StatusReplies",
    "UnsentHold",
    "Verdict",
    "add_cli",
    "add_outbox_detail",
    "add_work_cli",
    "ask",
    "backoff",
    "bundles_of",
    "classify_error",
    "classify_response",
    "deliver_rows",
    "facts_of",
    "label_of",
    "link_ref",
    "links_of",
    "order_key_of",
    "partner_client",
    "patient_ref",
    "resolve_links",
    "retry_after",
    "same_content",
    "send_part",
    "unrouted",
]
