"""``gateway messages list|show|prune`` and ``gateway db upgrade`` (``messages
reprocess`` converts, so it is added by gateway/processing.py)."""

from __future__ import annotations

import argparse
import base64
import re
import sys
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import orjson

from ..config import Settings
from ..errors import ConfigError, IntakeError
from ..intake import codec_for
from ._open import open_store, retention
from ._store import STATES, MessageFilter, MessageSummary, StoredMessage, StoreError, utcnow

__all__ = ["add_cli", "add_filters", "decoded", "message_filter", "message_json", "parse_since"]

_RELATIVE = re.compile(r"(\d+)\s*([smhd])\Z")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}


def parse_since(text: str, zone: str = "+08:00") -> datetime:
    """A point in time as the store keeps it (naive UTC) from an ISO 8601 date or time
    (without a zone: the gateway's ``timezone``) or a span back from now (30m, 2h, 7d)."""
    relative = _RELATIVE.match(text.strip())
    if relative:
        return utcnow() - timedelta(**{_UNITS[relative.group(2)]: int(relative.group(1))})
    try:
        when = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise ConfigError(
            "bad-setting",
            f"--since {text!r} is neither an ISO 8601 time (2026-12-01T08:00) nor a span "
            "back from now (30m, 2h, 7d)",
            location="since",
        ) from None
    if when.tzinfo is None:
        sign = -1 if zone.startswith("-") else 1
        hours, _, minutes = zone.lstrip("+-").partition(":")
        offset = timedelta(hours=int(hours or 0), minutes=int(minutes or 0)) * sign
        when = when.replace(tzinfo=timezone(offset) if zone != "Z" else UTC)
    return when.astimezone(UTC).replace(tzinfo=None)


def decoded(message: StoredMessage) -> tuple[str | None, str | None]:
    """(text, codec) of a message's original bytes in its own charset; (None, None)
    when pruned or binary (DICOM)."""
    raw = message.raw
    if raw is None or message.summary.format == "dicom":
        return None, None
    codec = "utf-8"
    if message.summary.charset:
        try:
            codec = codec_for(message.summary.charset, location="MSH-18")
        except IntakeError:
            codec = message.summary.charset
    try:
        return raw.decode(codec, "replace"), codec
    except LookupError:
        return raw.decode("utf-8", "replace"), "utf-8"


def message_json(message: StoredMessage) -> dict[str, Any]:
    """A stored message as the CLI (--json) and the API show it."""
    text, codec = decoded(message)
    out: dict[str, Any] = {**message.summary.to_json(), "patients": message.patients}
    if message.raw is None:
        out["original"] = None
    elif text is not None:
        out["original"] = {"charset": message.summary.charset, "codec": codec, "text": text}
    else:
        out["original"] = {"base64": base64.b64encode(message.raw).decode()}
    out["outcomes"] = [
        {
            "attempt": o.attempt,
            "stage": o.stage,
            "state": o.state,
            "at": o.at.isoformat(timespec="microseconds") + "Z",
            "duration_ms": o.duration_ms,
            "current": o.current,
            "issues": o.issues,
            "output": _output_json(o.output),
        }
        for o in message.outcomes
    ]
    return out


def _output_json(output: bytes | None) -> Any:
    """A stage's output as JSON: one Bundle, or a list of them (one per line)."""
    if output is None:
        return None
    try:
        return orjson.loads(output)
    except orjson.JSONDecodeError:
        return [orjson.loads(line) for line in output.splitlines() if line.strip()]


def message_filter(args: argparse.Namespace, settings: Settings) -> MessageFilter:
    return MessageFilter(
        state=args.state,
        sender=getattr(args, "sender", None),
        message_type=getattr(args, "type", None),
        since=parse_since(args.since, settings.timezone) if args.since else None,
        patient=getattr(args, "patient", None),
        control_id=getattr(args, "control_id", None),
    )


def _line(s: MessageSummary) -> str:
    flags = f" r{s.revision}{'!' if s.flagged else ''}" if s.revision > 1 else ""
    pruned = " (pruned)" if s.pruned_at else ""
    return (
        f"{s.id:>8}  {s.received_at:%Y-%m-%d %H:%M:%S}Z  {s.channel:<5}  {s.state:<9}  "
        f"{s.message_type or '-':<10}  {s.control_id or '-'}  {s.sender or '-'}{flags}{pruned}"
    )


def cmd_list(args: argparse.Namespace, settings: Settings) -> int:
    store = open_store(settings)
    try:
        page = store.find(message_filter(args, settings), args.limit, args.after)
    finally:
        store.close()
    if args.json:
        body = {"messages": [s.to_json() for s in page.items], "next": page.next}
        sys.stdout.buffer.write(orjson.dumps(body, option=orjson.OPT_INDENT_2) + b"\n")
    else:
        head = f"{'id':>8}  {'received (UTC)':<20}  chan   {'state':<9}  {'type':<10}"
        print(f"{head}  control id  sender")
        for summary in page.items:
            print(_line(summary))
        if page.next:
            print(f"more: --after {page.next}", file=sys.stderr)
    return 0


def cmd_show(args: argparse.Namespace, settings: Settings) -> int:
    store = open_store(settings)
    message = store.get(args.id)
    store.close()
    if message is None:
        raise StoreError("not-found", f"no message {args.id} in the store")
    if args.json:
        sys.stdout.buffer.write(orjson.dumps(message_json(message), option=orjson.OPT_INDENT_2))
        sys.stdout.write("\n")
        return 0
    s = message.summary
    for name, value in s.to_json().items():
        print(f"{name:>13}: {value if value is not None else '-'}")
    print(f"{'patients':>13}: {', '.join(message.patients) or '-'}")
    text, codec = decoded(message)
    if message.raw is None:
        print("\n-- original: pruned (retention); the metadata above is what is left")
    elif text is None:
        print(f"\n-- original: {len(message.raw)} bytes of {s.format} (not text)")
    else:
        print(f"\n-- original, decoded as {codec} (declared: {s.charset or 'none'}):")
        print(text.replace("\r\n", "\n").replace("\r", "\n").rstrip("\n"))
    for o in message.outcomes:
        mark = "current" if o.current else "earlier"
        took = f", {o.duration_ms} ms" if o.duration_ms is not None else ""
        print(f"\n-- {o.stage} #{o.attempt} ({mark}): {o.state} at {o.at:%Y-%m-%d %H:%M:%S}Z{took}")
        for issue in o.issues:
            where = f"{issue['location']}: " if issue.get("location") else ""
            print(f"   {issue['severity']}: {where}{issue['message']} [{issue['code']}]")
        if o.output is not None:
            print(o.output.decode("utf-8", "replace").rstrip("\n"))
    return 0


def cmd_prune(args: argparse.Namespace, settings: Settings) -> int:
    periods = retention(settings)
    store = open_store(settings)
    count = store.prune(periods)
    store.close()
    kept = ", ".join(f"{k} {v.days}d" for k, v in periods.items()) or "nothing configured"
    print(f"pruned {count} messages (retention: {kept}; received, held, queued: never)")
    return 0


def cmd_db_upgrade(args: argparse.Namespace, settings: Settings) -> int:
    store = open_store(settings)
    where = store.engine.url.render_as_string(hide_password=True)
    print(f"database {where} at schema revision {store.revision()}")
    store.close()
    return 0


def add_filters(parser: argparse.ArgumentParser, full: bool = True) -> None:
    # choices: a mistyped state (--state faild) is refused, not an empty list that reads
    # as "nothing failed" (or a reprocess of nothing)
    parser.add_argument("--state", choices=STATES, help="the message's state")
    parser.add_argument("--since", help="received since: ISO time (2026-12-01T08:00) or 30m/2h/7d")
    if full:
        parser.add_argument("--sender", help="sending facility (MSH-4), e.g. LAX2")
        parser.add_argument("--type", help="message type, e.g. ORU^R01")
        parser.add_argument("--patient", help="patient identifier: system|value, or value")
        parser.add_argument("--control-id", help="control id (MSH-10, Study Instance UID)")


def add_cli(sub: Any) -> Any:
    """Add ``messages`` and ``db`` to the gateway command's subparsers; return the
    ``messages`` verbs (``reprocess`` is added to them by gateway/processing.py)."""
    messages = sub.add_parser("messages", help="browse, reprocess and prune stored messages")
    verbs = messages.add_subparsers(dest="verb", required=True)

    listing = verbs.add_parser("list", help="stored messages, newest first, one page")
    add_filters(listing)
    listing.add_argument("--limit", type=int, default=50)
    listing.add_argument("--after", help="the cursor a previous page printed (more: --after N)")
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(func=cmd_list)

    show = verbs.add_parser("show", help="one message: original, each stage's outcome")
    show.add_argument("id", type=int)
    show.add_argument("--json", action="store_true")
    show.set_defaults(func=cmd_show)

    prune = verbs.add_parser("prune", help="drop content past its state's retention")
    prune.set_defaults(func=cmd_prune)

    db = sub.add_parser("db", help="the message store's database")
    db_verbs = db.add_subparsers(dest="verb", required=True)
    upgrade = db_verbs.add_parser("upgrade", help="create or migrate the schema")
    upgrade.set_defaults(func=cmd_db_upgrade)
    return verbs
