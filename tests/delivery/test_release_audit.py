"""``gateway outbox release`` audited as the operator's action either way: a release the
policy refuses (the record still held, ``delivery.not-releasable``, exit 2) is an
operator AuditEvent too, its outcome a failure naming the refusal, so an auditor sees
that someone tried (tests/console/test_outbox_release.py: the console's, one path)."""

from __future__ import annotations

from typing import Any

import pytest

from gateway import Converter, Settings
from gateway.audit import AuditLog, operator
from gateway.cli import main
from gateway.delivery import Outbound
from gateway.store import Store
from tests._audit_asserts import refused_event
from tests.delivery import conftest as delivery

from .conftest import receive

store = delivery.home_store  # the home's own store: the CLI opens it too


def _events(store: Store, action: str) -> list[dict[str, Any]]:
    found = [e.resource() for e in AuditLog(store).rows()]
    return [e for e in found if (e.get("outcomeDesc") or "").startswith(action)]


# A discard the outbox refuses (a row the policy holds: its hold decision waits with it)
# is the operator's attempt too, as a refused release is.
@pytest.mark.parametrize(
    ("action", "reason", "code"),
    [
        ("release", "the partner asked", "delivery.not-releasable"),
        ("discard", "sent by hand", "delivery.not-discardable"),
    ],
)
def test_a_refused_action_on_the_cli_is_audited(
    home: Settings,
    store: Store,
    converter: Converter,
    outbound: Outbound,
    capsys: pytest.CaptureFixture[str],
    action: str,
    reason: str,
    code: str,
) -> None:
    message = receive(store, converter, "hl7v2/ref_i12_nsch_to_hkpmc.hl7")
    [placed] = outbound.process(message).placed
    assert placed.outcome == "held" and placed.outbox_id is not None  # no consent
    args = ["outbox", action, str(placed.outbox_id), "--reason", reason]
    assert main(["--home", str(home.home), *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"[{code}]" in err[0], err
    assert outbound.outbox.require(placed.outbox_id).state == "held"
    [event] = _events(store, action)  # before: none, the refusal left no trace
    refused_event(event, action, code, operator(), message)
