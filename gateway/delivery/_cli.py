"""``gateway outbox list|show|stats``: what waits for which partner, and why."""

from __future__ import annotations

import argparse
import sys
from typing import Any

import orjson

from ..config import Settings
from ..store import open_store
from ._outbox import STATES, Outbox

__all__ = ["add_cli"]


def add_cli(sub: Any) -> None:
    """Add ``outbox`` to the gateway command's subparsers."""
    outbox = sub.add_parser("outbox", help="records queued for partner FHIR servers")
    verbs = outbox.add_subparsers(dest="verb", required=True)

    listing = verbs.add_parser("list", help="outbox records, newest first")
    listing.add_argument("--state", choices=STATES)
    listing.add_argument("--partner", help="institution key (seeds/partners.yaml)")
    listing.add_argument("--limit", type=int, default=50)
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(func=cmd_list)

    show = verbs.add_parser(
        "show", help="one record: its state, every transition, the partner's last answer"
    )
    show.add_argument("id", type=int)
    show.add_argument("--json", action="store_true")
    show.set_defaults(func=cmd_show)

    stats = verbs.add_parser(
        "stats", help="per partner: records by state, queue depth, oldest not delivered"
    )
    stats.add_argument("--json", action="store_true")
    stats.set_defaults(func=cmd_stats)


def _json(value: Any) -> None:
    sys.stdout.buffer.write(orjson.dumps(value, option=orjson.OPT_INDENT_2) + b"\n")
    sys.stdout.flush()


def cmd_list(args: argparse.Namespace, settings: Settings) -> int:
    store = open_store(settings)
    try:
        records = Outbox(store).records(args.state, args.partner, args.limit)
    finally:
        store.close()
    if args.json:
        _json([r.to_json() for r in records])
        return 0
    print(f"{'id':>7}  {'partner':<10} {'state':<10} {'part':>5} {'tries':>5}  {'next':<19}  label")
    for r in records:
        part = f"{r.part}/{r.part_count}"
        print(
            f"{r.id:>7}  {r.partner:<10} {r.state:<10} {part:>5} {r.attempts:>5}  "
            f"{r.next_at:%Y-%m-%d %H:%M:%S}  {r.label or '-'}"
        )
    return 0


def cmd_show(args: argparse.Namespace, settings: Settings) -> int:
    store = open_store(settings)
    try:
        outbox = Outbox(store)
        record = outbox.require(args.id)
        events = outbox.events(args.id)
    finally:
        store.close()
    if args.json:
        _json(
            {
                **record.to_json(with_order_key=True),
                "last_response": record.last_response,
                "events": [e.to_json() for e in events],
            }
        )
        return 0
    for name, value in record.to_json(with_order_key=True).items():
        print(f"{name:>12}: {value if value is not None else '-'}")
    print("\n-- transitions")
    for e in events:
        status = f" [{e.status}]" if e.status is not None else ""
        print(
            f"{e.at:%Y-%m-%d %H:%M:%S}Z  {e.from_state or '':>9} → {e.to_state:<9}"
            f" part {e.part}{status}  {e.reason}"
        )
    if record.last_response:
        print("\n-- the partner's last answer")
        print(record.last_response)
    return 0


def cmd_stats(args: argparse.Namespace, settings: Settings) -> int:
    store = open_store(settings)
    try:
        stats = Outbox(store).stats()
    finally:
        store.close()
    if args.json:
        _json(stats)
        return 0
    if not stats:
        print("the outbox is empty")
    for s in stats:
        states = ", ".join(f"{k} {v}" for k, v in sorted(s["states"].items()))
        oldest = (
            f"oldest waiting since {s['oldest_waiting_at']} ({s['oldest_waiting_seconds']:.0f} s)"
            if s["oldest_waiting_at"]
            else "nothing waiting"
        )
        print(f"{s['partner']}: depth {s['depth']}; {oldest}; {states}")
    return 0
