"""``gateway referrals list|show|accept|reject|complete|notify`` and ``gateway inbound
token PARTNER`` (docs/inbound.md)."""

from __future__ import annotations

import argparse
import os
import secrets
import sys
from typing import Any

import orjson

from ..config import Settings, private_folder
from ..delivery import add_outbox_detail
from ..network import Network
from ..store import open_store
from ._auth import partner_line
from ._errors import InboundError
from ._referrals import TASK_STATUSES, Referral, Referrals, referral_status_detail

__all__ = ["add_cli"]


def add_cli(sub: Any) -> None:
    """Add ``referrals`` and ``inbound`` to the gateway command's subparsers, and the
    referral's status to ``gateway outbox show``."""
    add_outbox_detail(referral_status_detail)
    referrals = sub.add_parser("referrals", help="referrals received and sent, and their status")
    verbs = referrals.add_subparsers(dest="verb", required=True)
    listing = verbs.add_parser("list", help="referral Tasks: received here and sent from here")
    # choices: a mistyped status (--status requestd) is refused, not an empty list that
    # reads as "no referral waits"
    listing.add_argument("--status", choices=TASK_STATUSES, help="the Task's status")
    listing.add_argument("--direction", choices=("received", "sent"))
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(func=cmd_list)
    show = verbs.add_parser("show", help="one referral's Task (id or referral identifier)")
    show.add_argument("id")
    show.add_argument("--json", action="store_true")
    show.set_defaults(func=cmd_show)
    for action, text in (
        ("accept", "accept a referral received here; the sender is told"),
        ("reject", "reject a referral received here, with a reason; the sender is told"),
        ("complete", "complete an accepted referral; the sender is told"),
    ):
        verb = verbs.add_parser(action, help=text)
        verb.add_argument("id", help="the Task's id or the referral's identifier value")
        verb.add_argument("--reason", required=action == "reject", help="why (statusReason)")
        verb.add_argument("--json", action="store_true")
        verb.set_defaults(func=cmd_act, action=action)
    notify = verbs.add_parser(
        "notify", help="queue the current status for the sender again (after a failure)"
    )
    notify.add_argument("id")
    notify.set_defaults(func=cmd_notify)

    inbound = sub.add_parser("inbound", help="the inbound endpoint's partner credentials")
    inbound_verbs = inbound.add_subparsers(dest="verb", required=True)
    token = inbound_verbs.add_parser(
        "token", help="make a static Bearer token for a partner (printed once, kept 0600)"
    )
    token.add_argument("partner", help="institution key of the network (seeds/network.yaml)")
    token.set_defaults(func=cmd_token)


def _json(value: Any) -> None:
    sys.stdout.buffer.write(orjson.dumps(value, option=orjson.OPT_INDENT_2) + b"\n")
    sys.stdout.flush()


def _line(r: Referral) -> str:
    reason = f"  ({r.reason})" if r.reason else ""
    referral = (r.referral or "").split("|")[-1]
    return (
        f"{r.task.logical_id}  {r.direction:<8} {r.partner or '?':<8} {referral:<20} "
        f"{r.status:<10} {r.task.last_updated:%Y-%m-%d %H:%M:%S}{reason}"
    )


def cmd_list(args: argparse.Namespace, settings: Settings) -> int:
    store = open_store(settings)
    try:
        found = Referrals(settings, store).list(args.status, args.direction)
    finally:
        store.close()
    if args.json:
        _json([r.to_json() for r in found])
        return 0
    print(f"{'task':<36}  {'direction':<8} {'partner':<8} {'referral':<20} {'status':<10} updated")
    for r in found:
        print(_line(r))
    return 0


def cmd_show(args: argparse.Namespace, settings: Settings) -> int:
    store = open_store(settings)
    try:
        found = Referrals(settings, store).get(args.id)
    finally:
        store.close()
    if args.json:
        _json({**found.to_json(), "resource": found.task.resource})
    else:
        print(_line(found))
    return 0


def cmd_act(args: argparse.Namespace, settings: Settings) -> int:
    store = open_store(settings)
    try:
        updated, row, note = Referrals(settings, store).act(args.id, args.action, args.reason)
    finally:
        store.close()
    if args.json:
        _json({**updated.to_json(), "outbox": row, "note": note})
    else:
        print(_line(updated))
        print(note, file=sys.stderr)
    return 0 if row is not None else 1


def cmd_notify(args: argparse.Namespace, settings: Settings) -> int:
    store = open_store(settings)
    try:
        referrals = Referrals(settings, store)
        found = referrals.get(args.id)
        if found.direction != "received":
            raise InboundError(
                "inbound.referral-state", "a referral sent from here: the partner tells its status"
            )
        row, note = referrals.notify(found)
    finally:
        store.close()
    print(note, file=sys.stderr)
    return 0 if row is not None else 1


def _after_last_line(fd: int) -> str:
    """A newline when the file's last line has none (edited by hand): the line appended
    would join it, and the file's rule, unable to read that line, refuses the whole file
    (every partner answered 500)."""
    size = os.fstat(fd).st_size
    return "\n" if size and os.pread(fd, 1, size - 1) != b"\n" else ""


def cmd_token(args: argparse.Namespace, settings: Settings) -> int:
    network = Network.load(settings.network)
    inst = network.institution(args.partner)  # folded: a facility code, ＮＳＣＨ, Nsch
    if inst is None:
        raise InboundError("inbound.config", "the partner is not an institution of the network")
    token = secrets.token_urlsafe(32)
    # the key exactly as the network writes it (the token check takes no other), read
    # back before anything is written
    line = partner_line(inst.key, token, network)
    path = settings.inbound_token_file or settings.secrets_dir / "partner-tokens"
    # made owner-only (0700) when missing, as the API's start makes secrets/: with the
    # default mode others on the host saw which secrets there are
    private_folder(path.parent)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o600)
    with os.fdopen(fd, "a", encoding="utf-8") as out:
        out.write(_after_last_line(fd) + line + "\n")
    print(token)
    print(f"partner token for {inst.key} added to {path}", file=sys.stderr)
    return 0
