"""What the console's pages show, read from the store: the dashboard's counts, a
message with every stage's output, the outbox rows of a message with their attempts.

Read-only; the pages never change anything through here (actions: _actions.py).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import orjson
import sqlalchemy as sa

from ..delivery import Outbox, OutboxEvent, OutboxRecord
from ..store import Store, StoredMessage, decoded, metadata, utcnow
from ._tables import actions

__all__ = [
    "BUCKETS",
    "COLUMNS",
    "PARTNER_COLUMNS",
    "Detail",
    "Row",
    "Signature",
    "dashboard",
    "detail",
    "sparkline",
]

_messages = metadata.tables["messages"]
_outbox = metadata.tables["outbox"]
_events = metadata.tables["outbox_events"]
BUCKETS = 12  # the sparkline: 12 buckets of 5 minutes (the last hour)
BUCKET = timedelta(minutes=5)
COLUMNS = ("received", "converted", "failed", "held", "delivered", "dead")
# A partner's row: records queued for it, held, delivered, dead (conversion is not theirs).
PARTNER_COLUMNS = ("received", "held", "delivered", "dead")
# A message's state → the dashboard columns it counts in (received counts every one).
_COUNTS = {
    "converted": ("converted",),
    "outbox": ("converted",),
    "queued": ("converted",),
    "held": ("converted", "held"),
    "delivered": ("converted", "delivered"),
    "dead": ("converted", "dead"),
    "discarded": ("converted",),  # given up by a person: not dead, nothing left to do
    "denied": ("converted",),
    "failed": ("failed",),
    "rejected": ("failed",),
}
_MAX_SHOWN = 512 * 1024  # a stage output larger than this is cut (the CLI shows it all)


@dataclass
class Row:
    """One line of the dashboard: a listener (channel) or a partner."""

    name: str
    hour: dict[str, int] = field(default_factory=lambda: dict.fromkeys(COLUMNS, 0))
    day: dict[str, int] = field(default_factory=lambda: dict.fromkeys(COLUMNS, 0))
    depth: int | None = None
    oldest_seconds: float | None = None
    breaker: str | None = None
    spark: list[int] = field(default_factory=lambda: [0] * BUCKETS)

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "hour": self.hour,
            "day": self.day,
            "depth": self.depth,
            "oldest_seconds": self.oldest_seconds,
            "breaker": self.breaker,
            "spark": self.spark,
        }


def _bucket(at: datetime, now: datetime) -> int | None:
    back = int((now - at) / BUCKET)
    return BUCKETS - 1 - back if 0 <= back < BUCKETS else None


def _listeners(store: Store, now: datetime) -> list[Row]:
    m = _messages.c
    day, hour = now - timedelta(days=1), now - timedelta(hours=1)
    found: dict[str, Row] = {}
    query = (
        sa.select(m.channel, m.state, sa.func.count(), (m.received_at >= hour).label("recent"))
        .where(m.received_at >= day)
        .group_by(m.channel, m.state, sa.literal_column("recent"))
    )
    spark = sa.select(m.channel, m.received_at).where(m.received_at >= hour)
    with store.engine.connect() as conn:
        counts = conn.execute(query).all()
        times = conn.execute(spark).all()
    for channel, state, count, recent in counts:
        row = found.setdefault(channel, Row(channel))
        for window in (row.day, row.hour) if recent else (row.day,):
            window["received"] += int(count)
            for column in _COUNTS.get(state, ()):
                window[column] += int(count)
    for channel, at in times:
        slot = _bucket(at, now)
        if slot is not None:
            found.setdefault(channel, Row(channel)).spark[slot] += 1
    return [found[k] for k in sorted(found)]


def _partners(store: Store, now: datetime, breakers: dict[str, str]) -> list[Row]:
    """Per partner: transitions in the window (queued, held, delivered, dead), the queue
    depth and oldest waiting record, the breaker, and deliveries in the sparkline."""
    e, o = _events.c, _outbox.c
    day, hour = now - timedelta(days=1), now - timedelta(hours=1)
    found: dict[str, Row] = {}
    query = (
        sa.select(o.partner, e.to_state, e.from_state, e.at)
        .select_from(_events.join(_outbox, o.id == e.outbox_id))
        .where(e.at >= day, e.to_state.in_(("pending", "held", "delivered", "dead")))
    )
    with store.engine.connect() as conn:
        moves = conn.execute(query).all()
    column = {"held": "held", "delivered": "delivered", "dead": "dead"}
    for partner, to_state, from_state, at in moves:
        row = found.setdefault(partner, Row(partner))
        name = "received" if from_state is None else column.get(to_state)
        if name is None or (to_state == from_state):  # a replay note, not a transition
            continue
        for window in (row.day, row.hour) if at >= hour else (row.day,):
            window[name] += 1
        if name == "delivered":
            slot = _bucket(at, now)
            if slot is not None:
                row.spark[slot] += 1
    for stats in Outbox(store).stats(now):
        row = found.setdefault(stats["partner"], Row(stats["partner"]))
        row.depth = int(stats["depth"])
        row.oldest_seconds = stats["oldest_waiting_seconds"]
    for partner, state in breakers.items():
        found.setdefault(partner, Row(partner)).breaker = state
    for row in found.values():
        row.depth = row.depth or 0
        row.breaker = row.breaker or breakers.get(row.name)
    return [found[k] for k in sorted(found)]


def dashboard(
    store: Store, breakers: dict[str, str], now: datetime | None = None
) -> dict[str, list[Row]]:
    now = now or utcnow()
    return {"listeners": _listeners(store, now), "partners": _partners(store, now, breakers)}


def sparkline(values: list[int], width: int = 120, height: int = 24) -> str:
    """An inline SVG polyline of ``values`` (numbers only: safe to embed as is)."""
    top = max(values) or 1
    step = width / max(len(values) - 1, 1)
    points = " ".join(
        f"{i * step:.1f},{height - 2 - (v / top) * (height - 4):.1f}" for i, v in enumerate(values)
    )
    return (
        f'<svg class="spark" width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
        f'role="img" aria-hidden="true"><polyline fill="none" stroke="currentColor" '
        f'stroke-width="1.5" points="{points}"/></svg>'
    )


# -- one message --------------------------------------------------------------------------
@dataclass
class Signature:
    where: str  # "Bundle.signature" or "Provenance/<id>"
    who: str
    when: str
    format: str


@dataclass
class Delivery:
    record: OutboxRecord
    events: list[OutboxEvent]
    signatures: list[Signature]


@dataclass
class Detail:
    message: StoredMessage
    text: str | None
    codec: str | None
    outputs: dict[int, str]  # outcome id → its output, pretty JSON (cut when huge)
    decisions: list[dict[str, Any]]
    deliveries: list[Delivery]
    actions: list[dict[str, Any]]


def _pretty(output: bytes | None) -> str | None:
    if output is None:
        return None
    if len(output) > _MAX_SHOWN:
        return output[:_MAX_SHOWN].decode("utf-8", "replace") + "\n…"
    try:
        return orjson.dumps(orjson.loads(output), option=orjson.OPT_INDENT_2).decode()
    except orjson.JSONDecodeError:  # one Bundle per line (a message of several records)
        return output.decode("utf-8", "replace")


def _who(value: Any) -> str:
    if not isinstance(value, dict):
        return "-"
    ident = value.get("identifier") or {}
    return str(value.get("display") or value.get("reference") or ident.get("value") or "-")


def signatures(parts: Iterable[Any]) -> list[Signature]:
    """The signatures an outbox row's parts carry: Bundle.signature and each Provenance
    with a signature (who signed, when, the format), never the signed content."""
    found: list[Signature] = []
    for part in parts:
        bundle = part.get("resource", part) if isinstance(part, dict) else None
        if not isinstance(bundle, dict):
            continue
        sig = bundle.get("signature")
        if isinstance(sig, dict):
            found.append(
                Signature(
                    "Bundle.signature",
                    _who(sig.get("who")),
                    str(sig.get("when", "-")),
                    str(sig.get("sigFormat", "-")),
                )
            )
        for entry in bundle.get("entry") or []:
            res = entry.get("resource") if isinstance(entry, dict) else None
            if not isinstance(res, dict) or res.get("resourceType") != "Provenance":
                continue
            for s in res.get("signature") or []:
                if isinstance(s, dict):
                    found.append(
                        Signature(
                            f"Provenance/{res.get('id', '-')}",
                            _who(s.get("who")),
                            str(s.get("when", "-")),
                            str(s.get("sigFormat", "-")),
                        )
                    )
    return found


def _decisions(store: Store, message_id: int) -> list[dict[str, Any]]:
    table = metadata.tables.get("policy_decisions")
    if table is None:  # the policy stage not loaded in this process
        return []
    c = table.c
    query = (
        sa.select(
            c.id,
            c.decided_at,
            c.recipient,
            c.purpose,
            c.outcome,
            c.basis,
            c.agreement,
            c.rules,
            c.changes,
            c.current,
            c.consents,
        )
        .where(c.message_id == message_id)
        .order_by(c.id)
    )
    with store.engine.connect() as conn:
        rows = conn.execute(query).all()
    return [
        {
            "id": r.id,
            "decided_at": r.decided_at,
            "recipient": r.recipient,
            "purpose": r.purpose,
            "outcome": r.outcome,
            "basis": r.basis,
            "agreement": r.agreement,
            "rules": orjson.loads(r.rules),
            "changes": orjson.loads(r.changes),
            "current": bool(r.current),
            "consents": orjson.loads(r.consents) if r.consents else [],
        }
        for r in rows
    ]


def message_actions(store: Store, message_id: int) -> list[dict[str, Any]]:
    a = actions.c
    query = sa.select(
        a.at, a.user_name, a.action, a.outbox_id, a.reason, a.outcome, a.refusal
    ).where(a.message_id == message_id)
    with store.engine.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(query.order_by(a.id))]


def detail(store: Store, message_id: int) -> Detail | None:
    message = store.get(message_id)
    if message is None:
        return None
    text, codec = decoded(message)
    outbox = Outbox(store)
    deliveries = [
        Delivery(row, outbox.events(row.id), signatures(outbox.parts(row.id)))
        for row in outbox.for_message(message_id)
    ]
    return Detail(
        message,
        text,
        codec,
        {o.id: p for o in message.outcomes if (p := _pretty(o.output)) is not None},
        _decisions(store, message_id),
        deliveries,
        message_actions(store, message_id),
    )
