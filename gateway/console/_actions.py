"""An operator's actions from the console, through the functions the CLI uses
(``reprocess``; ``Outbound.act_by`` for retry, replay and release, audited there,
refused ones too; ``Outbound.discard``) and audited as the CLI audits them
(``record_operator``, naming the console user). Each needs a reason, kept with the
action (``console_actions``; outbox actions also in ``outbox_events``)."""

from __future__ import annotations

import threading
from collections.abc import Callable

from ..audit import audit_log, record_operator, store_hook
from ..config import Settings
from ..delivery import Outbound
from ..errors import GatewayError
from ..pipeline import Converter
from ..processing import SENDER_REFUSED, reprocess
from ..store import Store, StoreError, utcnow
from ._tables import actions
from ._users import ConsoleError, User

__all__ = ["MESSAGE_ACTIONS", "OUTBOX_ACTIONS", "Actions"]

MESSAGE_ACTIONS = ("reprocess", "resolve")
OUTBOX_ACTIONS = ("retry", "release", "replay", "discard")
MAX_REASON = 1000


def _reason(text: str) -> str:
    reason = " ".join(text.split())
    if not reason:
        raise ConsoleError("console.no-reason", "an action needs a reason", location="reason")
    if len(reason) > MAX_REASON:
        raise ConsoleError(
            "console.no-reason", f"a reason is at most {MAX_REASON} characters", location="reason"
        )
    return reason


class Actions:
    def __init__(
        self,
        settings: Settings,
        store: Callable[[], Store],
        converter: Callable[[], Converter],
        convert_lock: threading.Lock,
    ) -> None:
        self.settings = settings
        self.store = store
        self.converter = converter
        self.convert_lock = convert_lock
        self._outbound: Outbound | None = None  # built at the first outbox action (heavy)
        self._lock = threading.Lock()

    def outbound(self) -> Outbound:
        with self._lock:
            if self._outbound is None:
                self._outbound = Outbound(self.settings, self.store())
            return self._outbound

    def on_message(self, action: str, message_id: int, user: User, reason: str) -> None:
        why = _reason(reason)
        store = self.store()
        if store.state_of(message_id) is None:
            raise StoreError("not-found", f"no message {message_id} in the store")
        if action == "reprocess":
            self._reprocess(store, user, message_id, why)  # audited there
            self._note(store, user, action, message_id, None, why)
        elif action == "resolve":
            self._note(store, user, action, message_id, None, why)
            record_operator(store, self.settings, action, [message_id], who=user.name)
        else:
            raise ConsoleError("console.bad-action", f"unknown action {action!r}")

    def _reprocess(self, store: Store, user: User, message_id: int, why: str) -> None:
        """As `gateway messages reprocess`: the new outcome audited in its transaction,
        then the operator's event; refused (a message refused for its sender), the
        refusal kept with the action and audited, and the error raised."""
        hook = store_hook(audit_log(store, self.settings), channel="console", with_receipt=False)
        try:
            reprocess(
                store,
                self.settings,
                self.converter(),
                message_id,
                hook,
                lock=self.convert_lock,
                who=user.name,
            )
        except StoreError as exc:
            if exc.code == SENDER_REFUSED:
                refusal = f"{exc.code}: {exc.issue.message}"
                self._note(store, user, "reprocess", message_id, None, why, refusal)
            raise

    def on_outbox(self, action: str, row_id: int, user: User, reason: str) -> int | None:
        """Retry, release, replay or discard an outbox row; returns its message's id.
        Refused, it is kept too (``console_actions``, outcome refused, the refusal
        named) and the error raised: the message's history shows who tried what, and
        why it did not happen, as the audit log does (``Outbound.act_by``)."""
        why = _reason(reason)
        store = self.store()
        if action not in OUTBOX_ACTIONS:
            raise ConsoleError("console.bad-action", f"unknown action {action!r}")
        try:
            # each decided again by the policy first (a consent withdrawn, an agreement
            # ended; a discard: nothing leaves, nothing to decide) and audited there, a
            # refused one too (the CLI's path: act_by)
            row = self.outbound().act_by(action, user.name, row_id, why)
        except GatewayError as exc:
            tried = self.outbound().outbox.get(row_id)
            if tried is not None:  # no such record: nothing was tried on one
                refusal = f"{exc.code}: {exc.issue.message}"
                self._note(store, user, action, tried.message_id, row_id, why, refusal)
            raise
        self._note(store, user, action, row.message_id, row_id, why)
        return row.message_id

    @staticmethod
    def _note(
        store: Store,
        user: User,
        action: str,
        message_id: int | None,
        row: int | None,
        why: str,
        refusal: str | None = None,
    ) -> None:
        """Keep the action (``refusal``: it was refused, its error's code and message)."""
        with store.engine.execution_options(write=True).begin() as conn:
            conn.execute(
                actions.insert().values(
                    at=utcnow(),
                    user_name=user.name,
                    action=action,
                    message_id=message_id,
                    outbox_id=row,
                    reason=why,
                    outcome="done" if refusal is None else "refused",
                    refusal=refusal,
                )
            )
