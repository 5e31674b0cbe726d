"""``gateway outbox list|show|stats|retry|replay|release|discard``: what waits for which partner,
and why, and a person's decisions; ``gateway send`` (_send_cli.py) and ``gateway route``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any

import orjson

from ..audit import record_operator
from ..config import Settings
from ..errors import ConfigError, GatewayError
from ..store import Store, open_store
from ._outbox import STATES, DeliveryError, Outbox, OutboxRecord

__all__ = ["Detail", "add_cli", "add_outbox_detail"]

# What a later stage knows about an outbox record that delivery cannot (the referral's
# status the partner sent back: gateway/inbound): (name, value) pairs for `outbox show`.
# Registered by that stage, so delivery never imports it.
Detail = Callable[[Settings, Store, OutboxRecord, list[dict[str, Any]]], list[tuple[str, str]]]
_DETAILS: list[Detail] = []


def add_outbox_detail(detail: Detail) -> None:
    """Show ``detail``'s pairs in ``gateway outbox show`` (once, however often added)."""
    if detail not in _DETAILS:
        _DETAILS.append(detail)


def add_cli(sub: Any) -> None:
    """Add ``outbox`` to the gateway command's subparsers."""
    outbox = sub.add_parser("outbox", help="records queued for partner FHIR servers")
    verbs = outbox.add_subparsers(dest="verb", required=True)

    listing = verbs.add_parser("list", help="outbox records, newest first")
    listing.add_argument("--state", choices=STATES)
    listing.add_argument("--partner", help="partner: institution key or facility code, any case")
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

    retry = verbs.add_parser(
        "retry",
        help="queue dead records again from the part that failed (decided again by the policy)",
    )
    which = retry.add_mutually_exclusive_group(required=True)
    which.add_argument("id", type=int, nargs="?", help="the outbox record")
    which.add_argument("--dead", action="store_true", help="every dead record")
    retry.add_argument(
        "--partner", help="with --dead: only this partner's (key or facility code, any case)"
    )
    _decision(retry, cmd_retry)
    replay = verbs.add_parser(
        "replay",
        help="send a delivered record again (a new outbox record, the same parts; decided "
        "again by the policy)",
    )
    replay.add_argument("id", type=int)
    _decision(replay, cmd_replay)
    release = verbs.add_parser(
        "release",
        help="queue a held record (one the policy holds is decided again: needs a consent)",
    )
    release.add_argument("id", type=int)
    _decision(release, cmd_release)
    discard = verbs.add_parser(
        "discard",
        help="give up on a held or dead record for good: never sent (its patient's later "
        "records no longer wait for it)",
    )
    discard.add_argument("id", type=int)
    _decision(discard, cmd_discard)

    from ._send_cli import add_send_cli

    add_send_cli(sub)


def _decision(parser: argparse.ArgumentParser, func: Any) -> None:
    parser.add_argument(
        "--reason", required=True, help="why (kept in the record's transitions, outbox_events)"
    )
    parser.add_argument("--json", action="store_true")
    parser.set_defaults(func=func)


def _done(args: argparse.Namespace, verb: str, rows: list[OutboxRecord]) -> int:
    if args.json:
        _json([r.to_json() for r in rows])
    for r in rows if not args.json else []:
        print(f"{verb} outbox record {r.id} ({r.partner}, {r.label or '-'}): {r.state}")
    if not rows and not args.json:
        print("no outbox record matched")
    return 0


def cmd_retry(args: argparse.Namespace, settings: Settings) -> int:
    """Each row decided again by the policy first (``Outbound.retry``); with ``--dead``
    a row it refuses is named on one line and the others go on (exit 1)."""
    from ._outbound import Outbound

    store = open_store(settings)
    refused = 0
    try:
        outbound = Outbound(settings, store)
        outbox = outbound.outbox
        if args.dead:
            partner = _partner(settings, outbox, args.partner)
            ids = [r.id for r in outbox.records("dead", partner, 1_000_000)]
            dead = [outbox.require(i) for i in reversed(ids)]
            ids = [r.id for r in dead if not (r.last_error or "").startswith("policy.")]
        else:
            ids = [args.id]
        rows = []
        for i in ids:
            try:  # audited either way: a refused retry too (the operator tried)
                rows.append(outbound.act_by("retry", None, i, args.reason))
            except DeliveryError as exc:
                if not args.dead:
                    raise  # one record: the error, exit 2 (gateway/cli.py)
                print(exc.issue.line(), file=sys.stderr)
                refused += 1
    finally:
        store.close()
    done = _done(args, "retried", rows)
    return 1 if refused else done


def cmd_replay(args: argparse.Namespace, settings: Settings) -> int:
    from ._outbound import Outbound

    store = open_store(settings)
    try:
        # audited either way: a refused replay too (the operator tried)
        row = Outbound(settings, store).act_by("replay", None, args.id, args.reason)
    finally:
        store.close()
    return _done(args, "replayed", [row])


def cmd_release(args: argparse.Namespace, settings: Settings) -> int:
    from ._outbound import Outbound

    store = open_store(settings)
    try:
        # audited either way: a refused release too (the operator tried)
        row = Outbound(settings, store).act_by("release", None, args.id, args.reason)
    finally:
        store.close()
    return _done(args, "released", [row])


def cmd_discard(args: argparse.Namespace, settings: Settings) -> int:
    """No policy to ask (nothing leaves): the outbox alone, then the audit event, a
    refused discard's too (the operator tried)."""
    from ._outbound import audit_refused

    store = open_store(settings)
    try:
        outbox = Outbox(store)
        try:
            row = outbox.discard(args.id, args.reason)
        except GatewayError as exc:
            audit_refused(store, settings, outbox, "discard", args.id, None, exc)
            raise
        record_operator(store, settings, "discard", [row.message_id])
    finally:
        store.close()
    return _done(args, "discarded", [row])


def _json(value: Any) -> None:
    sys.stdout.buffer.write(orjson.dumps(value, option=orjson.OPT_INDENT_2) + b"\n")
    sys.stdout.flush()


def _partner(settings: Settings, outbox: Outbox, name: str | None) -> str | None:
    """The outbox's key of the partner ``--partner`` names: a configured partner by key
    or facility code in any case (``NSCH`` lists nsch's rows), or one whose rows are
    still in the outbox (a partner since removed); anything else is refused, never an
    empty list that reads as "nothing waits for it"."""
    from ..network import Network
    from ..partners import configured_partners, partner_key

    if name is None:
        return None
    try:
        return partner_key(name, configured_partners(settings), Network.load(settings.network))
    except ConfigError:
        left = {s["partner"].lower(): s["partner"] for s in outbox.stats()}
        if name.lower() in left:
            return str(left[name.lower()])
        raise


def cmd_list(args: argparse.Namespace, settings: Settings) -> int:
    store = open_store(settings)
    try:
        outbox = Outbox(store)
        records = outbox.records(args.state, _partner(settings, outbox, args.partner), args.limit)
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
        parts = outbox.parts(args.id) if _DETAILS else []
        details = [pair for detail in _DETAILS for pair in detail(settings, store, record, parts)]
    finally:
        store.close()
    if args.json:
        _json(
            {
                **record.to_json(with_order_key=True),
                "details": dict(details),
                "last_response": record.last_response,
                "events": [e.to_json() for e in events],
            }
        )
        return 0
    for name, value in [*record.to_json(with_order_key=True).items(), *details]:
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
        paused = (
            f"; paused until {s['paused_until']} (its Retry-After)" if s["paused_until"] else ""
        )
        print(f"{s['partner']}: depth {s['depth']}; {oldest}; {states}{paused}")
    return 0
