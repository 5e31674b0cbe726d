"""``gateway outbox discard ID --reason``: a person gives up on a held or dead record for
good. It is never sent afterwards (the worker, retry, release, replay), the move is in
its transitions and in the audit log, its patient's later records stop waiting for it,
and only held or dead records (not one the policy holds) can be discarded."""

from __future__ import annotations

import getpass
import json
import random
from pathlib import Path

import pytest
import respx
import sqlalchemy as sa

from gateway import Settings
from gateway.audit import AuditLog
from gateway.cli import main
from gateway.delivery import Deliverer, DeliveryError, Outbox
from gateway.metrics._store import StoreCollector
from gateway.partners import Partner
from gateway.store import Incoming, Store, open_store
from tests.conftest import REPO
from tests.partner.conftest import PartnerServer

from .conftest import BASE, CONFIG, PARTNER, POST_URL, Clock, bundle, response
from .test_overwrite import CODE, FAST, A, B, _deliver, _patient_name, _studies, _study


def run(capsys: pytest.CaptureFixture[str], home: Path, *args: str) -> tuple[int, str, str]:
    code = main(["--home", str(home), *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_a_record_held_for_another_patients_study_discarded_is_never_sent(
    partner: PartnerServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """李小明's study carries 陳大文's Study UID (held by the overwrite guard); the
    operator decides it must never go: discarded, it stays so whatever runs next, and
    陳大文's study at the partner is untouched."""
    partner.reset()
    target = Partner("partner", partner.base, max_entries=8, check_overwrite=False)
    store = Store.for_home(tmp_path)
    outbox = Outbox(store)
    first = outbox.enqueue(target, _study(A))[0]
    _deliver(outbox, target, [first])
    held = outbox.enqueue(target, _study(B))[0]
    _deliver(outbox, target, [held])
    assert (outbox.require(held).state, outbox.require(held).last_error) == ("held", CODE)
    [before] = _studies(partner)
    store.close()

    code, out, _ = run(
        capsys, tmp_path, "outbox", "discard", str(held), "--reason", "PACS reused the UID"
    )
    assert code == 0 and out.startswith(f"discarded outbox record {held} (partner, ")
    assert out.rstrip().endswith(": discarded")
    code, out, _ = run(capsys, tmp_path, "outbox", "show", str(held), "--json")
    shown = json.loads(out)
    assert (shown["state"], shown["last_error"]) == ("discarded", CODE)  # why it was held
    last = shown["events"][-1]
    assert (last["from"], last["to"], last["reason"]) == (
        "held",
        "discarded",
        "discard: PACS reused the UID",
    )
    code, out, _ = run(capsys, tmp_path, "outbox", "list", "--state", "discarded")
    assert code == 0 and [line.split()[:3] for line in out.splitlines()[1:]] == [
        [str(held), "partner", "discarded"]
    ]

    # The worker never picks it up again.
    store = Store.for_home(tmp_path)
    outbox = Outbox(store)
    with Deliverer(outbox, {target.key: target}, FAST, rng=random.Random(3)) as deliverer:
        assert deliverer.run_once() == 0
    assert outbox.require(held).state == "discarded"
    store.close()
    assert _studies(partner) == [before] and _patient_name(partner, before) == "陳大文"

    # Nor does a person: each refusal is one line naming the record, exit 2.
    for verb, code_name in (
        ("release", "delivery.not-releasable"),
        ("retry", "delivery.not-retryable"),
        ("replay", "delivery.not-replayable"),
        ("discard", "delivery.not-discardable"),
    ):
        code, out, err = run(capsys, tmp_path, "outbox", verb, str(held), "--reason", "again")
        assert code == 2 and out == "" and len(err.splitlines()) == 1, (verb, err)
        assert f"outbox record {held} cannot be" in err and "discarded" in err, err
        assert f"[{code_name}]" in err
    store = Store.for_home(tmp_path)
    assert Outbox(store).require(held).state == "discarded"
    assert [e.to_state for e in Outbox(store).events(held)][-1] == "discarded"
    store.close()

    # Audited as the other decisions are: the operator's action, by the OS account.
    settings = Settings.load(home=tmp_path, env={})
    store = open_store(settings)
    try:
        found = [e.resource() for e in AuditLog(store).rows()]
    finally:
        store.close()
    operator = [e for e in found if e.get("outcomeDesc") == "discard"]
    assert len(operator) == 1
    requestor = next(a for a in operator[0]["agent"] if a["requestor"])
    assert requestor["who"]["identifier"]["value"] == getpass.getuser()


def test_a_discarded_dead_record_no_longer_keeps_its_patients_later_ones_back(
    outbox: Outbox, clock: Clock, partner_api: respx.MockRouter
) -> None:
    """A patient's refused referral keeps the cancellation behind it back; discarded,
    the cancellation goes, and the refused one is not sent again."""
    post = partner_api.post(POST_URL)
    post.side_effect = [
        respx.MockResponse(400, json={"resourceType": "OperationOutcome", "issue": []}),
        respx.MockResponse(200, json=response("200", "200")),
    ]
    refused = outbox.enqueue(PARTNER, bundle("P1", "O1"))[0]
    later = outbox.enqueue(PARTNER, bundle("P1", "O1", status="revoked"))[0]
    with Deliverer(outbox, {"hkpmc": PARTNER}, CONFIG, rng=random.Random(7)) as deliverer:
        deliverer.run_once()
        assert outbox.require(refused).state == "dead"
        clock.advance(60)
        assert deliverer.run_once() == 0  # behind the dead one
        assert outbox.require(later).state == "pending" and post.call_count == 1
        row = outbox.discard(refused, "the referral was withdrawn on paper")
        assert (row.state, row.last_error) == ("discarded", "delivery.partner-rejected")
        assert deliverer.run_once() == 1
        assert deliverer.run_once() == 0
    assert outbox.require(later).state == "delivered"
    assert outbox.require(refused).state == "discarded"
    assert post.call_count == 2  # the discarded record was never sent again
    assert b"revoked" in post.calls[-1].request.content


def _message(store: Store) -> int:
    raw = (REPO / "examples" / "hl7v2" / "ref_i12_lax2_to_njmu2.hl7").read_bytes()
    return store.receive(Incoming(raw, "cli")).id


def _held(outbox: Outbox, message_id: int, code: str, n: int = 0) -> int:
    return outbox.hold(
        "hkpmc",
        message_id=message_id,
        record=n,
        purpose=None,
        order_key=None,
        label=None,
        dedup=f"held-{message_id}-{n}-{code}",
        code=code,
        reason=f"{code}: held for the test",
    )[0]


def test_only_a_held_or_dead_record_the_policy_does_not_hold_can_be_discarded(
    store: Store, outbox: Outbox, partner_api: respx.MockRouter
) -> None:
    partner_api.post(POST_URL).respond(200, json=response("201", "201"))
    delivered = outbox.enqueue(PARTNER, bundle("P1", "O1"))[0]
    with Deliverer(outbox, {"hkpmc": PARTNER}, CONFIG) as deliverer:
        deliverer.run_once()
    queued = outbox.enqueue(PARTNER, bundle("P2", "O2"))[0]
    message = _message(store)
    consent = _held(outbox, message, "policy.held")
    for row, state in ((queued, "pending"), (delivered, "delivered")):
        with pytest.raises(DeliveryError) as refused:
            outbox.discard(row, "no")
        assert refused.value.code == "delivery.not-discardable"
        assert refused.value.issue.message == (
            f"outbox record {row} cannot be discarded: it is {state} "
            "(only a held or dead record can be)"
        )
        assert outbox.require(row).state == state
    with pytest.raises(DeliveryError, match="the policy holds it") as refused:
        outbox.discard(consent, "no")
    assert refused.value.code == "delivery.not-discardable"
    assert outbox.require(consent).state == "held"
    with pytest.raises(DeliveryError) as missing:
        outbox.discard(999, "no")
    assert missing.value.code == "delivery.not-found"


def test_a_discarded_record_counts_as_not_delivered_for_its_message(
    store: Store, outbox: Outbox
) -> None:
    """The message's state follows its rows: held while one is held; its only record
    discarded, it did not reach its partner and nobody has anything left to do: the
    message is discarded (not dead, which waits for a person; nor delivered)."""
    message = _message(store)
    row = _held(outbox, message, "delivery.unverifiable")
    assert store.state_of(message) == "held"
    outbox.discard(row, "the partner confirmed it never wants it")
    assert store.state_of(message) == "discarded"
    # Another record of it dead: that one waits for a person, so the message is dead.
    dead = _held(outbox, message, "delivery.unverifiable", n=1)
    outbox.move(dead, "held", "dead", "refused", now=outbox.clock(), last_error="x")
    assert store.state_of(message) == "dead"
    outbox.discard(dead, "not wanted either")
    assert store.state_of(message) == "discarded"


def test_a_message_whose_record_was_discarded_shows_so_in_the_cli_and_metrics(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = Store.for_home(tmp_path)
    message = _message(store)
    row = _held(Outbox(store), message, "delivery.unverifiable")
    store.close()
    assert run(capsys, tmp_path, "outbox", "discard", str(row), "--reason", "not wanted")[0] == 0
    code, out, _ = run(capsys, tmp_path, "messages", "list", "--state", "discarded", "--json")
    assert code == 0 and [m["id"] for m in json.loads(out)["messages"]] == [message]
    code, out, _ = run(capsys, tmp_path, "messages", "list", "--state", "dead", "--json")
    assert code == 0 and json.loads(out)["messages"] == []
    store = Store.for_home(tmp_path)
    try:
        [family] = [
            f
            for f in StoreCollector(lambda: store, min_interval=0).collect()
            if f.name == "gateway_messages"
        ]
    finally:
        store.close()
    counts = {s.labels["state"]: s.value for s in family.samples}
    assert counts.get("discarded") == 1 and "dead" not in counts


def test_a_discard_racing_a_release_and_a_withdrawal_never_discards_a_policy_hold(
    store: Store, outbox: Outbox, clock: Clock
) -> None:
    """The operator looked at a row held for an unverifiable send; before the discard
    wrote, another process released it and a consent withdrawal held it for the policy
    (held again, now policy.held). The discard decides on the row as it is when it
    writes: refused, the policy's hold (and its decision) stay."""
    message = _message(store)
    row = _held(outbox, message, "delivery.unverifiable")
    fired: list[bool] = []

    def meanwhile() -> None:
        fired.append(True)  # before the discard's write transaction takes its lock
        other = Outbox(store, clock=clock)
        other.release(row, "the partner has nothing")
        other.move(row, "pending", "held", "withdrawn", now=clock.now, last_error="policy.held")

    def on_sqlite(_conn: object, _cursor: object, statement: str, *_: object) -> None:
        if statement == "BEGIN IMMEDIATE" and not fired:  # the discard's write lock, next
            meanwhile()

    def on_postgresql(conn: sa.Connection) -> None:
        if conn.get_execution_options().get("write") and not fired:
            meanwhile()

    sqlite = store.dialect == "sqlite"
    name, hook = ("before_cursor_execute", on_sqlite) if sqlite else ("begin", on_postgresql)
    sa.event.listen(store.engine, name, hook)
    try:
        with pytest.raises(DeliveryError, match="the policy holds it") as refused:
            outbox.discard(row, "never wanted")
    finally:
        sa.event.remove(store.engine, name, hook)
    assert fired and refused.value.code == "delivery.not-discardable"
    assert (outbox.require(row).state, outbox.require(row).last_error) == ("held", "policy.held")


def test_a_discarded_record_never_sent_holds_no_later_update_of_its_identifier(
    outbox: Outbox, clock: Clock, partner_api: respx.MockRouter
) -> None:
    """陳大文's order O1 was held before any send (its partner gone) and given up
    (discarded): it never reached the partner, so 李小明's order reusing O1 goes, even
    with the partner's check off (before, it was held, and held again at each release).
    A discarded order whose send was ambiguous may be at the partner: it still counts."""
    local = Partner("hkpmc", BASE, check_overwrite=False)
    post = partner_api.post(POST_URL).respond(200, json=response("201", "201"))
    never_sent = outbox.enqueue(local, bundle("P1", "O1"))[0]
    outbox.move(
        never_sent, "pending", "held", "gone", now=clock.now, last_error="delivery.unknown-partner"
    )
    outbox.discard(never_sent, "the referral was withdrawn on paper")
    reused = outbox.enqueue(local, bundle("P2", "O1", name="李小明"))[0]
    maybe_sent = outbox.enqueue(local, bundle("P3", "O3"))[0]
    assert outbox.claim(outbox.require(maybe_sent), clock.now, CONFIG.lease)
    outbox.move(maybe_sent, "pending", "sending", "sending", now=clock.now, lease=CONFIG.lease)
    clock.advance(CONFIG.lease.total_seconds())
    assert outbox.recover(clock.now) == 1  # ambiguous: the partner may hold O3 for P3
    outbox.move(
        maybe_sent, "waiting", "held", "unverifiable", now=clock.now, last_error="x.unverifiable"
    )
    outbox.discard(maybe_sent, "nobody could tell")
    reused_too = outbox.enqueue(local, bundle("P4", "O3", name="李小明"))[0]
    with Deliverer(outbox, {"hkpmc": local}, CONFIG, clock=clock) as deliverer:
        deliverer.run_once()
    assert outbox.require(reused).state == "delivered" and post.call_count == 1
    held = outbox.require(reused_too)
    assert (held.state, held.last_error) == ("held", CODE)
