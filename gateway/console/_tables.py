"""The console's tables, on the message store's metadata (migration ``v0007_console``
creates the same; ``v0009_console_shared`` the searches and the sign-in limiter): local
users, server-side sessions, what operators did through the console with their reasons,
and what every API worker process must share (saved searches, failed sign-ins)."""

from __future__ import annotations

import sqlalchemy as sa

from ..store import metadata

__all__ = ["actions", "logins", "searches", "sessions", "users"]

ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

users = sa.Table(
    "console_users",
    metadata,
    sa.Column("id", ID, primary_key=True, autoincrement=True),
    sa.Column("name", sa.String(64), nullable=False, unique=True),  # the login
    sa.Column("password_hash", sa.String(255), nullable=False),  # argon2id, PHC string
    sa.Column("role", sa.String(16), nullable=False),  # operator | auditor | admin
    sa.Column("lang", sa.String(16), nullable=False),  # zh-Hans | zh-Hant-HK | en
    sa.Column("disabled", sa.Boolean(), nullable=False),
    sa.Column("created_at", sa.DateTime(), nullable=False),
    sa.Column("updated_at", sa.DateTime(), nullable=False),
)

# One row per signed-in browser; the cookie holds a random token, the row its SHA-256
# (a copy of the table gives no usable session).
sessions = sa.Table(
    "console_sessions",
    metadata,
    sa.Column("token_hash", sa.String(64), primary_key=True),
    sa.Column("user_id", ID, sa.ForeignKey("console_users.id", ondelete="CASCADE"), nullable=False),
    sa.Column("csrf", sa.String(64), nullable=False),  # the forms' token for this session
    sa.Column("created_at", sa.DateTime(), nullable=False),
    sa.Column("seen_at", sa.DateTime(), nullable=False),  # idle expiry counts from here
)
sa.Index("ix_console_sessions_user", sessions.c.user_id)

# An operator's action in the console (reprocess, retry, release, replay, resolve,
# discard) with the reason they gave, done or refused (the refusal: its code and message);
# the audit log has the same action without the free text.
actions = sa.Table(
    "console_actions",
    metadata,
    sa.Column("id", ID, primary_key=True, autoincrement=True),
    sa.Column("at", sa.DateTime(), nullable=False),
    sa.Column("user_name", sa.String(64), nullable=False),
    sa.Column("action", sa.String(16), nullable=False),
    sa.Column("message_id", ID),
    sa.Column("outbox_id", ID),
    sa.Column("reason", sa.Text(), nullable=False),
    # done | refused; NULL: kept before migration 0015_console_outcomes (all were done)
    sa.Column("outcome", sa.String(16)),
    sa.Column("refusal", sa.Text()),  # refused: "CODE: message" (no patient data)
)
sa.Index("ix_console_actions_message", actions.c.message_id, actions.c.id)

# A search POSTed by a user, kept under an opaque random id (the ``?q=`` of the results'
# URL) so that its criteria, which may hold a patient identifier, never go in a URL; any
# API worker process can read it back. Rows expire and the oldest go beyond a cap.
searches = sa.Table(
    "console_searches",
    metadata,
    sa.Column("id", sa.String(32), primary_key=True),  # random, URL-safe
    sa.Column("user_id", ID, sa.ForeignKey("console_users.id", ondelete="CASCADE"), nullable=False),
    sa.Column("criteria", sa.Text(), nullable=False),  # JSON; may hold patient values: never logged
    sa.Column("created_at", sa.DateTime(), nullable=False),
    sa.Column("expires_at", sa.DateTime(), nullable=False),
)
sa.Index("ix_console_searches_created", searches.c.created_at)

# Failed sign-ins per key (SHA-256 of a login name or a client address), shared by every
# API worker process: a counter row per key and the times of its last failures in slot
# rows, for a sliding window (LoginLimiter in _session.py).
logins = sa.Table(
    "console_login_failures",
    metadata,
    sa.Column("key_hash", sa.String(64), primary_key=True),
    sa.Column("failures", sa.Integer(), nullable=False),
    sa.Column("window_start", sa.DateTime(), nullable=False),
)
sa.Index("ix_console_login_failures_window", logins.c.window_start)
