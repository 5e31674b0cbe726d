"""A consent import leaves the records the OUTBOUND path holds to that path: it used to
decide them again (``release_held``), record a second decision and set the message to
``outbox`` while its outbox row stayed held until the next ``recheck_held``. Now one
decision per release, and the message's state never apart from its row's."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway import Converter, Settings
from gateway.delivery import Outbound
from gateway.policy import PolicyRecords
from gateway.processing import process_message
from gateway.store import Incoming, Store, open_store

from .conftest import HKID, NOW, REPO, consent

HELD = "imaging/oru_r01_nsch_cta_zh.hl7"  # NSCH → Hong Kong, no consent yet: held
REFERRAL = "hl7v2/ref_i12_nsch_to_hkpmc.hl7"  # held by ``apply`` (no outbox row)


@pytest.fixture
def home(tmp_path: Path) -> Settings:
    return Settings.load(home=tmp_path, env={})


@pytest.fixture
def store(home: Settings) -> Iterator[Store]:
    opened = open_store(home)
    yield opened
    opened.close()


def _receive(store: Store, converter: Converter, name: str) -> int:
    receipt = store.receive(Incoming((REPO / "examples" / name).read_bytes(), "cli"))
    assert process_message(store, converter, receipt.id).state == "converted"
    return receipt.id


def test_a_consent_import_leaves_an_outbox_hold_to_the_outbound_path(
    home: Settings, store: Store, converter: Converter
) -> None:
    outbound = Outbound(home, store)
    message = _receive(store, converter, HELD)
    [placed] = outbound.process(message).placed
    assert placed.outcome == "held" and placed.outbox_id is not None
    decided = [(d.id, d.outcome) for d in outbound.policy.find(message_id=message)]
    assert [o for _, o in decided] == ["hold"]

    # As `gateway consent import` or POST /Consent: a PolicyRecords of their own.
    records = PolicyRecords(store, outbound.policy.policy)
    _, released = records.import_consent(
        consent(
            (HKID, "K583726A"), "HKPMC", ("second-opinion",), start="2026-01-01", end="2099-12-31"
        )
    )
    assert released == []  # the outbox row's hold is the outbound path's to release
    assert [(d.id, d.outcome) for d in outbound.policy.find(message_id=message)] == decided
    row = outbound.outbox.require(placed.outbox_id)
    assert (row.state, store.state_of(message)) == ("held", "held")  # state agrees with row

    [moved] = outbound.recheck_held()
    assert (moved.id, moved.state) == (placed.outbox_id, "pending")
    after = outbound.policy.find(message_id=message)
    assert [d.outcome for d in after] == ["allow-with-changes", "hold"]  # ONE more decision
    assert store.state_of(message) == "queued"


def test_a_consent_import_still_releases_what_apply_held(
    home: Settings, store: Store, converter: Converter
) -> None:
    """Alongside an outbox hold, a record held by ``apply`` (no outbox row) is released
    by the import, once."""
    outbound = Outbound(home, store)
    in_outbox = _receive(store, converter, HELD)
    assert outbound.process(in_outbox).placed[0].outcome == "held"
    records = PolicyRecords(store, outbound.policy.policy)
    applied = _receive(store, converter, REFERRAL)
    bundle = store.get(applied).outcomes[-1].output  # type: ignore[union-attr]
    assert bundle is not None
    assert records.apply(applied, bundle, "NSCH", "HKPMC", now=NOW).outcome == "hold"

    _, released = records.import_consent(
        consent(
            (HKID, "K583726A"),
            "HKPMC",
            ("referral", "second-opinion"),
            start="2026-01-01",
            end="2099-12-31",
        ),
        now=NOW,
    )
    assert [r.message_id for r in released] == [applied]
    assert store.state_of(applied) == "outbox"
    assert store.state_of(in_outbox) == "held"
    assert [d.outcome for d in records.find(message_id=in_outbox)] == ["hold"]
