"""Local console users: a login, an argon2id password hash, a role and a language.

Roles are the names API tokens get too: ``operator`` (browse and act), ``auditor``
(browse and the auditor's pages, read-only), ``admin`` (everything). Users live in the
store (migration 0007_console), so every gateway process sharing a database shares them.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from ..errors import GatewayError
from ..store import Store, utcnow
from ._tables import sessions, users

__all__ = [
    "ACTORS",
    "LANGS",
    "ROLES",
    "ConsoleError",
    "User",
    "Users",
]

ROLES = ("operator", "auditor", "admin")
ACTORS = frozenset({"operator", "admin"})  # roles that may change anything
LANGS = ("zh-Hans", "zh-Hant-HK", "en")
MIN_PASSWORD = 10  # characters; a console reaches patient data

# argon2-cffi's defaults are RFC 9106's second recommended profile (argon2id, 64 MiB).
_HASHER = PasswordHasher()
# Verified when a login names no user, so an unknown name costs what a wrong password does.
_DUMMY = _HASHER.hash("not a password of anyone")


class ConsoleError(GatewayError):
    """A console request or command the gateway refuses (unknown user, bad role...)."""

    family = "console"


@dataclass(frozen=True, slots=True)
class User:
    id: int
    name: str
    role: str
    lang: str
    disabled: bool
    created_at: datetime

    @property
    def may_act(self) -> bool:
        return self.role in ACTORS


def _check_role(role: str) -> None:
    if role not in ROLES:
        raise ConsoleError(
            "console.bad-role", f"unknown role {role!r}: one of {', '.join(ROLES)}", location="role"
        )


def _check_password(password: str) -> None:
    if len(password) < MIN_PASSWORD:
        raise ConsoleError(
            "console.weak-password",
            f"a password needs at least {MIN_PASSWORD} characters",
            location="password",
        )


def _user(row: sa.Row[tuple[object, ...]]) -> User:
    return User(int(row.id), row.name, row.role, row.lang, bool(row.disabled), row.created_at)


class Users:
    """The console's users over one store."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._writer = store.engine.execution_options(write=True)

    def add(self, name: str, role: str, password: str, lang: str = "zh-Hans") -> User:
        _check_role(role)
        _check_password(password)
        if lang not in LANGS:
            raise ConsoleError("console.bad-lang", f"unknown language {lang!r}", location="lang")
        if not name or len(name) > 64 or not name.isprintable() or " " in name:
            raise ConsoleError(
                "console.bad-name", "a login is 1 to 64 printable characters without spaces"
            )
        now = utcnow()
        with self._writer.begin() as conn:
            if conn.execute(sa.select(users.c.id).where(users.c.name == name)).first():
                raise ConsoleError("console.user-exists", "a user with that login exists")
            conn.execute(
                users.insert().values(
                    name=name,
                    password_hash=_HASHER.hash(password),
                    role=role,
                    lang=lang,
                    disabled=False,
                    created_at=now,
                    updated_at=now,
                )
            )
        return self.require(name)

    def get(self, name: str) -> User | None:
        with self.store.engine.connect() as conn:
            row = conn.execute(sa.select(users).where(users.c.name == name)).first()
        return _user(row) if row is not None else None

    def by_id(self, user_id: int) -> User | None:
        with self.store.engine.connect() as conn:
            row = conn.execute(sa.select(users).where(users.c.id == user_id)).first()
        return _user(row) if row is not None else None

    def require(self, name: str) -> User:
        found = self.get(name)
        if found is None:
            raise ConsoleError("console.no-user", "no console user with that login")
        return found

    def list(self) -> list[User]:
        with self.store.engine.connect() as conn:
            return [_user(r) for r in conn.execute(sa.select(users).order_by(users.c.name))]

    def authenticate(self, name: str, password: str) -> User | None:
        """The user, when the password is theirs and they are not disabled; None else
        (the same work either way: an unknown login is verified against a dummy hash)."""
        with self.store.engine.connect() as conn:
            row = conn.execute(sa.select(users).where(users.c.name == name)).first()
        stored = row.password_hash if row is not None else _DUMMY
        try:
            _HASHER.verify(stored, password)
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return None
        if row is None or row.disabled:
            return None
        if _HASHER.check_needs_rehash(stored):  # parameters raised since it was set
            self._set(name, password_hash=_HASHER.hash(password))
        return _user(row)

    def passwd(self, name: str, password: str) -> User:
        """A new password; the user's sessions end (whoever knew the old one is out)."""
        _check_password(password)
        user = self.require(name)
        self._set(name, password_hash=_HASHER.hash(password))
        self.end_sessions(user.id)
        return user

    def disable(self, name: str, disabled: bool = True) -> User:
        user = self.require(name)
        self._set(name, disabled=disabled)
        if disabled:
            self.end_sessions(user.id)
        return self.require(name)

    def set_lang(self, user_id: int, lang: str) -> None:
        if lang not in LANGS:
            raise ConsoleError("console.bad-lang", f"unknown language {lang!r}", location="lang")
        with self._writer.begin() as conn:
            conn.execute(
                users.update().where(users.c.id == user_id).values(lang=lang, updated_at=utcnow())
            )

    def end_sessions(self, user_id: int) -> None:
        with self._writer.begin() as conn:
            conn.execute(sessions.delete().where(sessions.c.user_id == user_id))

    def _set(self, name: str, **values: object) -> None:
        with self._writer.begin() as conn:
            conn.execute(
                users.update().where(users.c.name == name).values(**values, updated_at=utcnow())
            )
