"""Console sessions (server-side rows, the cookie holds a random token), CSRF tokens and
login rate limiting.

- The cookie is ``__Host-`` prefixed, ``Secure``, ``HttpOnly``, ``SameSite=Strict``, path
  ``/`` (the prefix demands it); its
  token is 256 random bits; the store keeps only its SHA-256. A session ends after
  ``IDLE`` without a request or ``LIFETIME`` after login, at logout, and when its user's
  password changes or the user is disabled.
- Every form POST carries the session's CSRF token (a random value of the session row);
  before login, the login form's token is a double-submit of a pre-login cookie.
- Logins are limited per login name and per client address: while ``max_failures``
  failures fall within the last ``window`` (a sliding window), further tries from either
  are refused. The counts
  are rows of the store, so every API worker process of ``gateway serve --workers N``
  counts the same failures.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa

from ..store import Store, utcnow
from ._tables import logins, sessions, users
from ._users import User

__all__ = [
    "COOKIE",
    "IDLE",
    "LIFETIME",
    "PRE_COOKIE",
    "LoginLimiter",
    "Session",
    "Sessions",
    "same_token",
]

# __Host-: the browser takes these cookies only from this host over HTTPS, Secure, with
# Path=/ and no Domain, so neither a sibling host of the hospital's domain nor a
# machine in the path of a plain-HTTP request can plant one (a planted pre-login token
# would defeat the login form's double submit; a planted session, sign the user in as
# the attacker).
COOKIE = "__Host-gw_console"
PRE_COOKIE = "__Host-gw_console_pre"  # before login: the login form's double-submit token
IDLE = timedelta(minutes=30)
LIFETIME = timedelta(hours=12)
_TOUCH = timedelta(seconds=60)  # seen_at is written at most once a minute per session


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def same_token(given: str | None, expected: str | None) -> bool:
    """Constant-time comparison; an absent token never matches."""
    if not given or not expected:
        return False
    return hmac.compare_digest(given.encode(), expected.encode())


@dataclass(frozen=True, slots=True)
class Session:
    user: User
    csrf: str


class Sessions:
    def __init__(self, store: Store) -> None:
        self.store = store
        self._writer = store.engine.execution_options(write=True)

    def start(self, user: User) -> str:
        """A new session for ``user``; returns the cookie's token."""
        token = secrets.token_urlsafe(32)
        now = utcnow()
        with self._writer.begin() as conn:
            # expired rows of anyone go at each login: the table stays small
            conn.execute(sessions.delete().where(sessions.c.seen_at < now - IDLE))
            conn.execute(
                sessions.insert().values(
                    token_hash=_hash(token),
                    user_id=user.id,
                    csrf=secrets.token_urlsafe(32),
                    created_at=now,
                    seen_at=now,
                )
            )
        return token

    def get(self, token: str | None, touch: bool = True) -> Session | None:
        """The live session of a cookie's token, its user enabled; None else. ``touch``
        false: the request is no sign of the user (the dashboard's own polling), so it
        does not push the idle timeout back."""
        if not token:
            return None
        now = utcnow()
        s, u = sessions.c, users.c
        query = (
            sa.select(
                s.token_hash,
                s.csrf,
                s.created_at.label("started"),
                s.seen_at,
                u.id,
                u.name,
                u.role,
                u.lang,
                u.disabled,
                u.created_at,
            )
            .join(users, u.id == s.user_id)
            .where(s.token_hash == _hash(token))
        )
        with self.store.engine.connect() as conn:
            row = conn.execute(query).first()
        if row is None or row.disabled:
            return None
        if row.seen_at < now - IDLE or row.started < now - LIFETIME:
            self.end(token)
            return None
        if touch and now - row.seen_at > _TOUCH:
            with self._writer.begin() as conn:
                conn.execute(
                    sessions.update().where(s.token_hash == row.token_hash).values(seen_at=now)
                )
        user = User(int(row.id), row.name, row.role, row.lang, False, row.created_at)
        return Session(user, row.csrf)

    def end(self, token: str | None) -> None:
        if token:
            with self._writer.begin() as conn:
                conn.execute(sessions.delete().where(sessions.c.token_hash == _hash(token)))


class LoginLimiter:
    """Failed logins per key (a login name, a client address) in a sliding window: a key
    is blocked while ``max_failures`` of its failures fall within the last ``window``
    seconds, however they are spread (a window fixed at the first failure would let a
    failure just after it reset the count).

    Rows of ``console_login_failures``, each named by a SHA-256 (a typed name may be
    anything, of any length), with no schema of their own:

    - the key's counter, ``_hash(key)``: ``failures`` counts the key's failures since it
      last had none in the window, ``window_start`` is the latest of them;
    - its ``max_failures`` slots, ``_hash(key + "#" + i)``: failure number n writes its
      time into slot ``n % max_failures``, so the slots hold the times of the key's last
      ``max_failures`` failures: all it takes to know whether that many fall within the
      window. Bounded: rows whose time has left the window are deleted.

    The counter's number comes from one atomic statement (INSERT ... ON CONFLICT DO
    UPDATE ... RETURNING): processes failing at once take different slots and never
    lose each other's failures."""

    def __init__(self, store: Store, max_failures: int = 5, window: float = 300.0) -> None:
        self.store = store
        self.max_failures = max_failures
        self.window = timedelta(seconds=window)
        self._writer = store.engine.execution_options(write=True)

    def _slots(self, key: str) -> list[str]:
        return [_hash(f"{key}#{i}") for i in range(self.max_failures)]

    def _recent(self, conn: sa.Connection, keys: Sequence[str], since: datetime) -> int:
        """The most failures one of ``keys`` has after ``since`` (at most max_failures)."""
        owner = {slot: key for key in keys for slot in self._slots(key)}
        f = logins.c
        query = sa.select(f.key_hash).where(f.key_hash.in_(owner), f.window_start > since)
        counts = Counter(owner[h] for h in conn.execute(query).scalars())
        return max(counts.values(), default=0)

    def blocked(self, *keys: str) -> bool:
        with self.store.engine.connect() as conn:
            since = utcnow() - self.window
            return self._recent(conn, keys, since) >= self.max_failures

    def failed(self, *keys: str) -> int:
        """Counts one failure under each key; returns the most failures a key now has in
        the window (at most max_failures: the limiter keeps no more)."""
        now = utcnow()
        start = now - self.window
        f = logins.c
        keys = tuple(sorted(set(keys)))
        with self._writer.begin() as conn:
            # the bound: failures that left the window are forgotten, counters with them
            conn.execute(logins.delete().where(f.window_start <= start))
            insert = _insert_for(conn.dialect.name)
            for key in keys:
                counter = (
                    insert(logins)
                    .values(key_hash=_hash(key), failures=1, window_start=now)
                    .on_conflict_do_update(
                        index_elements=[f.key_hash],
                        set_={"failures": f.failures + 1, "window_start": now},
                    )
                    .returning(f.failures)
                )
                number = int(conn.execute(counter).scalar_one())
                slot = (
                    insert(logins)
                    .values(
                        key_hash=self._slots(key)[number % self.max_failures],
                        failures=number,
                        window_start=now,
                    )
                    .on_conflict_do_update(
                        index_elements=[f.key_hash], set_={"failures": number, "window_start": now}
                    )
                )
                conn.execute(slot)
            return self._recent(conn, keys, start)

    def succeeded(self, name_key: str) -> None:
        hashes = [_hash(name_key), *self._slots(name_key)]
        with self._writer.begin() as conn:
            conn.execute(logins.delete().where(logins.c.key_hash.in_(hashes)))


def _insert_for(dialect: str) -> Callable[..., Any]:
    """The dialect's INSERT with ON CONFLICT (the store runs on SQLite and PostgreSQL)."""
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        return pg_insert
    from sqlalchemy.dialects.sqlite import insert as sqlite_insert

    return sqlite_insert
