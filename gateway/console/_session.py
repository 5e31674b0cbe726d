"""Console sessions (server-side rows, the cookie holds a random token), CSRF tokens and
login rate limiting.

- The cookie is ``Secure``, ``HttpOnly``, ``SameSite=Strict``, path ``/console``; its
  token is 256 random bits; the store keeps only its SHA-256. A session ends after
  ``IDLE`` without a request or ``LIFETIME`` after login, at logout, and when its user's
  password changes or the user is disabled.
- Every form POST carries the session's CSRF token (a random value of the session row);
  before login, the login form's token is a double-submit of a pre-login cookie.
- Logins are limited per login name and per client address: ``MAX_FAILURES`` failures in
  ``WINDOW`` block further tries from either until the window has passed (per process).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
from collections import deque
from dataclasses import dataclass
from datetime import timedelta

import sqlalchemy as sa

from ..store import Store, utcnow
from ._tables import sessions, users
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

COOKIE = "gw_console"
PRE_COOKIE = "gw_console_pre"  # before login: the login form's double-submit token
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

    def get(self, token: str | None) -> Session | None:
        """The live session of a cookie's token, its user enabled; None else."""
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
        if now - row.seen_at > _TOUCH:
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
    """Failed logins per key (a login name, a client address) in a sliding window."""

    def __init__(self, max_failures: int = 5, window: float = 300.0) -> None:
        self.max_failures = max_failures
        self.window = window
        self._failures: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def _recent(self, key: str, now: float) -> deque[float]:
        found = self._failures.setdefault(key, deque())
        while found and found[0] <= now - self.window:
            found.popleft()
        return found

    def blocked(self, *keys: str) -> bool:
        now = time.monotonic()
        with self._lock:
            return any(len(self._recent(k, now)) >= self.max_failures for k in keys)

    def failed(self, *keys: str) -> None:
        now = time.monotonic()
        with self._lock:
            for key in keys:
                self._recent(key, now).append(now)
            if len(self._failures) > 10_000:  # a bound: forget keys with no recent failure
                for key in [k for k, v in self._failures.items() if not self._recent(k, now)]:
                    del self._failures[key]

    def succeeded(self, name_key: str) -> None:
        with self._lock:
            self._failures.pop(name_key, None)
