"""Conditional creates and updates race-free on PostgreSQL.

Two requests (two Bundles of one partner, or two partners' resends) carrying the same
resource each look up its condition (``ifNoneExist``, ``PUT Type?identifier=``) in their
own transaction. SQLite serialises write transactions (BEGIN IMMEDIATE), so the second
sees the first's resource; PostgreSQL's READ COMMITTED lets both look before either
commits, and both create it.

Why an advisory lock rather than a unique key: the store cannot say "one resource per
(partner, type, identifier)". Identifiers are kept per *version* (``inbound_identifiers``,
without the partner), a resource may hold several, a plain ``POST`` may legitimately
store a second resource with an identifier already used (FHIR promises one only to a
conditional request), and a condition may also name ``_id``, ``patient`` or ``status``.
So each request takes, before its look-ups, a transaction-scoped advisory lock
(``pg_advisory_xact_lock``, released by the commit or rollback) on a 64-bit hash of
what it may find or create: each condition, each identifier value of the resources it
writes (a plain create racing a conditional one) and each ``Type/id`` it updates. A
second request wanting any of them waits for the first to commit, then finds what the
first stored (and a referral's Task, made once its ServiceRequest is written, is made
once too). Keys are taken in sorted order in one statement, so two requests cannot
deadlock on them (PostgreSQL would detect it anyway). No migration is needed.
"""

from __future__ import annotations

import hashlib
from typing import Any
from urllib.parse import parse_qsl

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from ._resources import parse_identifier

__all__ = ["condition_keys", "lock_bundle"]

_LOCK = sa.text(
    "SELECT pg_advisory_xact_lock(k) FROM unnest(CAST(:keys AS bigint[])) AS k"
).bindparams(sa.bindparam("keys", type_=sa.ARRAY(sa.BigInteger())))


def lock_bundle(conn: Connection, entries: list[Any], partner: str) -> None:
    """Take the locks of everything ``entries`` may find or create, in ``conn``'s
    transaction (PostgreSQL only: nothing to do where writes are serialised)."""
    if conn.dialect.name != "postgresql":
        return
    keys: set[str] = set()
    for entry in entries:
        keys |= entry_keys(entry, partner)
    if keys:
        conn.execute(_LOCK, {"keys": sorted({_number(k) for k in keys})})


def entry_keys(entry: Any, partner: str) -> set[str]:
    """The lock names of one entry (malformed parts are skipped: apply refuses them)."""
    if not isinstance(entry, dict):
        return set()
    given, held = entry.get("request"), entry.get("resource")
    request: dict[str, Any] = given if isinstance(given, dict) else {}
    resource: dict[str, Any] = held if isinstance(held, dict) else {}
    path, _, query = str(request.get("url") or "").partition("?")
    kind = str(resource.get("resourceType") or path.partition("/")[0])
    keys: set[str] = set()
    if request.get("method") == "POST" and request.get("ifNoneExist"):
        keys |= condition_keys(kind, str(request["ifNoneExist"]), partner)
    elif request.get("method") == "PUT":
        if query:
            keys |= condition_keys(kind, query, partner)
        elif path.partition("/")[2]:
            keys.add(f"id|{kind}|{path.partition('/')[2]}")
    idents = resource.get("identifier")
    for ident in idents if isinstance(idents, list) else []:
        if isinstance(ident, dict) and ident.get("value"):
            keys.add(_identifier(partner, kind, str(ident["value"])))
    return keys


def condition_keys(resource_type: str, query: str, partner: str | None) -> set[str]:
    """The lock names of a condition: by identifier value (with or without its system:
    ``identifier=value`` matches any system), by ``_id``, else the whole query."""
    keys: set[str] = set()
    pairs = parse_qsl(query, keep_blank_values=True)
    for name, value in pairs:
        if name == "identifier":
            keys.add(_identifier(partner, resource_type, parse_identifier(value)[1]))
        elif name == "_id":
            keys |= {f"id|{resource_type}|{i}" for i in value.split(",")}
    if not keys:
        keys.add(f"query|{partner or ''}|{resource_type}|{'&'.join(sorted(map('='.join, pairs)))}")
    return keys


def _identifier(partner: str | None, resource_type: str, value: str) -> str:
    return f"identifier|{partner or ''}|{resource_type}|{value}"


def _number(key: str) -> int:
    """A lock name as PostgreSQL's advisory lock key: a signed 64-bit integer."""
    digest = hashlib.sha256(b"gateway.inbound|" + key.encode("utf-8", "surrogatepass")).digest()
    return int.from_bytes(digest[:8], "big", signed=True)
