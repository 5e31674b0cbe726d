"""Assertions on the audit trail shared by the CLI's and the console's tests: an operator
action the gateway refused is an AuditEvent of its own (tests/delivery/
test_release_audit.py, test_retry_replay_audit.py; tests/console/test_outbox_release.py,
test_outbox_requeue_audit.py), one shape whichever path the operator took."""

from __future__ import annotations

from typing import Any

__all__ = ["refused_event"]


def refused_event(
    event: dict[str, Any], action: str, code: str, who: str, entity: int | None = None
) -> None:
    """``event`` (an AuditEvent resource) records ``who``'s ``action`` (``release``,
    ``retry``, ...) refused with ``code``: outcome 4, a minor failure (tried, refused),
    ``ACTION refused: CODE: why`` as its description, ``who`` its requestor and, when
    given, the stored message ``entity`` what it was about (its only entity)."""
    assert event["outcome"] == "4"  # minor failure: tried, refused
    assert event["outcomeDesc"].startswith(f"{action} refused: {code}: "), event["outcomeDesc"]
    requestor = next(a for a in event["agent"] if a["requestor"])
    assert requestor["who"]["identifier"]["value"] == who
    if entity is not None:
        [what] = event["entity"]
        assert what["what"]["identifier"]["value"] == str(entity)
