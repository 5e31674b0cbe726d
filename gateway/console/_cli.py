"""``gateway users add|list|passwd|disable``: the console's local users.

Passwords are read from the terminal (twice) or, with ``--password-stdin``, from the
first line of standard input (for scripts); never from the command line, where other
users of the machine could read them."""

from __future__ import annotations

import argparse
import getpass
import sys
from typing import Any

import orjson

from ..config import Settings
from ..store import open_store
from ._users import LANGS, ROLES, ConsoleError, Users

__all__ = ["add_cli"]


def _password(args: argparse.Namespace) -> str:
    if args.password_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    try:
        first = getpass.getpass("password: ")
        again = getpass.getpass("again: ")
    except EOFError:  # no terminal and nothing on stdin (a script, a unit, `< /dev/null`)
        raise ConsoleError(
            "console.weak-password",
            "no password given: standard input ended (in a script: --password-stdin)",
        ) from None
    if again != first:
        raise ConsoleError("console.weak-password", "the two passwords differ")
    return first


def cmd_add(args: argparse.Namespace, settings: Settings) -> int:
    password = _password(args)
    store = open_store(settings)
    try:
        user = Users(store).add(args.name, args.role, password, args.lang)
    finally:
        store.close()
    print(f"added console user {user.name} ({user.role}, {user.lang})")
    return 0


def cmd_list(args: argparse.Namespace, settings: Settings) -> int:
    store = open_store(settings)
    try:
        found = Users(store).list()
    finally:
        store.close()
    rows = [
        {
            "name": u.name,
            "role": u.role,
            "lang": u.lang,
            "disabled": u.disabled,
            "created_at": u.created_at.isoformat(timespec="seconds") + "Z",
        }
        for u in found
    ]
    if args.json:
        sys.stdout.buffer.write(orjson.dumps(rows, option=orjson.OPT_INDENT_2) + b"\n")
        return 0
    for r in rows:
        state = "disabled" if r["disabled"] else "active"
        print(f"{r['name']:<20} {r['role']:<9} {r['lang']:<11} {state:<9} {r['created_at']}")
    if not rows:
        print("no console users (add one: gateway users add NAME --role operator)")
    return 0


def cmd_passwd(args: argparse.Namespace, settings: Settings) -> int:
    password = _password(args)
    store = open_store(settings)
    try:
        user = Users(store).passwd(args.name, password)
    finally:
        store.close()
    print(f"new password for {user.name}; their sessions ended")
    return 0


def cmd_disable(args: argparse.Namespace, settings: Settings) -> int:
    store = open_store(settings)
    try:
        user = Users(store).disable(args.name, not args.enable)
    finally:
        store.close()
    print(f"{user.name}: {'disabled, sessions ended' if user.disabled else 'enabled'}")
    return 0


def add_cli(sub: Any) -> None:
    """Add ``users`` to the gateway command's subparsers."""
    users = sub.add_parser("users", help="the operator console's local users")
    verbs = users.add_subparsers(dest="verb", required=True)

    add = verbs.add_parser("add", help="a new user (asks for the password)")
    add.add_argument("name")
    add.add_argument("--role", choices=ROLES, required=True)
    add.add_argument("--lang", choices=LANGS, default="zh-Hans")
    add.add_argument("--password-stdin", action="store_true", help="read it from stdin")
    add.set_defaults(func=cmd_add)

    listing = verbs.add_parser("list", help="users, roles, languages, disabled or not")
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(func=cmd_list)

    passwd = verbs.add_parser("passwd", help="set a user's password (ends their sessions)")
    passwd.add_argument("name")
    passwd.add_argument("--password-stdin", action="store_true", help="read it from stdin")
    passwd.set_defaults(func=cmd_passwd)

    disable = verbs.add_parser("disable", help="disable a user (ends their sessions)")
    disable.add_argument("name")
    disable.add_argument("--enable", action="store_true", help="enable them again instead")
    disable.set_defaults(func=cmd_disable)
