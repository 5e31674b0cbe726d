"""The operator console (issue 16): a bilingual web console under ``/console`` of
``gateway serve`` — dashboard, message browser and detail, actions, referrals, alerts,
the auditor's view — with local users (``gateway users``), server-side sessions and
CSRF-protected forms. See docs/console.md."""

from ._cli import add_cli
from ._labels import labels, translate
from ._live import breaker_states, watch_delivery
from ._tables import actions, sessions, users
from ._users import LANGS, ROLES, ConsoleError, User, Users
from ._web import create_console

__all__ = [
    "LANGS",
    "ROLES",
    "ConsoleError",
    "User",
    "Users",
    "actions",
    "add_cli",
    "breaker_states",
    "create_console",
    "labels",
    "sessions",
    "translate",
    "users",
    "watch_delivery",
]
