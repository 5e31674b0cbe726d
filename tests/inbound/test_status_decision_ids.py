"""A referral status's outbox events keep the policy decision each was made on in a
field of their own (``outbox_events.decision_id``, migration v0014_event_decisions),
and a release supersedes the decisions they name (one status, one record in the
transfer report) by that field; an event older than the migration names its decision
only in its words, and is still read so (gateway/delivery/_status.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa

from gateway import Settings
from gateway.cli import main
from gateway.delivery import Outbox
from gateway.store import metadata, open_store

from .test_status_policy import NSCH, _accept, _agreements, _cli, _policy_dir, _with

_events = metadata.tables["outbox_events"]
_decisions = metadata.tables["policy_decisions"]


def _current(settings: Settings, decision: int) -> bool:
    store = open_store(settings)
    try:
        with store.engine.connect() as conn:
            query = sa.select(_decisions.c.current).where(_decisions.c.id == decision)
            return bool(conn.execute(query).scalar_one())
    finally:
        store.close()


@pytest.mark.parametrize("older", [False, True], ids=["field", "words-of-an-older-event"])
def test_a_released_status_supersedes_the_decision_its_events_keep(
    tmp_path: Path,
    hk_settings: Settings,
    signed_referral: bytes,
    capsys: pytest.CaptureFixture[str],
    older: bool,
) -> None:
    policy = _policy_dir(tmp_path, [{"id": "agreement", "kind": "agreement"}], "continuing-care")
    settings = _with(
        hk_settings,
        f'policy_dir = "{policy}"\npolicy_agreements = "{_agreements(tmp_path)}"\n',
    )
    row, _ = _accept(settings, signed_referral, "nsch", NSCH)
    assert row is not None
    [denied] = [d["id"] for d in _cli(capsys, settings.home, "policy", "decisions", "--json")]
    store = open_store(settings)
    try:
        [held] = Outbox(store).events(row)
        assert (held.to_state, held.decision_id) == ("held", denied)
        if older:  # as kept before the migration: the decision in the words only
            with store.engine.begin() as conn:
                conn.execute(
                    _events.update().where(_events.c.outbox_id == row).values(decision_id=None)
                )
            assert f"(policy decision {denied})" in held.reason
    finally:
        store.close()
    assert _current(settings, denied)
    _policy_dir(tmp_path, [{"id": "return-to-issuer", "kind": "return-to-issuer",
                            "params": {"basis": "return-to-issuer"}}])  # fmt: skip
    release = ["outbox", "release", str(row), "--reason", "the rules mended"]
    assert main(["--home", str(settings.home), *release]) == 0
    capsys.readouterr()
    decided = _cli(capsys, settings.home, "policy", "decisions", "--json")
    [allowed] = [d["id"] for d in decided if d["outcome"] == "allow"]
    shown = _cli(capsys, settings.home, "outbox", "show", str(row), "--json")
    assert (shown["events"][-1]["to"], shown["events"][-1]["decision"]) == ("pending", allowed)
    assert not _current(settings, denied)  # superseded: one status, one record
    assert _current(settings, allowed)
