"""Converting a stored message (gateway/processing.py): a message the MLLP listener
refused for its sender is never converted from the store. Before, ``gateway messages
reprocess`` converted it with no sender check and the outbound path routed it: a bulk
reprocess of rejected messages after a charset fix filed 南沙医院's referral, sent by
HKPMC's connection, in NSCH's name. It must come from NSCH's own connection."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from gateway import Converter, Settings
from gateway.audit import AuditLog, operator
from gateway.cli import main
from gateway.errors import registry
from gateway.processing import SENDER_REFUSALS, process_message
from gateway.store import Incoming, MessageFilter, Store, StoreError, utcnow
from tests._audit_asserts import refused_event
from tests._sender_refused import (
    HKPMC_NAME,
    NSCH_NAME,
    REPO,
    home,
    keep,
    keep_three,
    nsch_referral,
)

WHY = {
    "intake.mllp-sender-mismatch": "its MSH-4 does not name the institution whose "
    "certificate sent it",
    "intake.mllp-client-no-institution": "the certificate that sent it names no institution",
    # a DICOM study (tests/listeners/test_dicom_sender.py)
    "intake.dicom-sender-mismatch": "its identifiers do not name the institution whose "
    "API token or certificate sent it",
}


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return home(tmp_path)


@pytest.fixture
def store(settings: Settings) -> Iterator[Store]:
    opened = Store.for_home(settings.home, settings.database_url)
    yield opened
    opened.close()


def _line(message_id: int, code: str) -> str:
    return (
        f"error: message {message_id}: MSH-4: refused when received ({code}: {WHY[code]}), "
        "so never converted: the institution its MSH-4 names must send it over its own "
        "connection [store.sender-refused]"
    )


def _stages(store: Store, message_id: int) -> list[tuple[str, str, bool]]:
    found = store.get(message_id)
    assert found is not None
    return [(o.stage, o.state, o.current) for o in found.outcomes]


def test_the_refusals_are_the_listeners_registered_codes() -> None:
    assert set(SENDER_REFUSALS) == set(WHY)
    assert set(SENDER_REFUSALS) <= set(registry())


def test_a_message_refused_for_its_sender_is_not_converted(
    settings: Settings, store: Store
) -> None:
    kept = keep_three(settings, store)
    converter = Converter(settings)
    for message_id, code in [
        (kept.mismatch, "intake.mllp-sender-mismatch"),
        (kept.no_institution, "intake.mllp-client-no-institution"),
    ]:
        with pytest.raises(StoreError) as refused:
            process_message(store, converter, message_id)
        assert refused.value.issue.line() == _line(message_id, code)
        assert (refused.value.issue.record, refused.value.location) == (
            f"message {message_id}",
            "MSH-4",
        )
        assert store.state_of(message_id) == "rejected"
        assert _stages(store, message_id) == [("intake", "rejected", True)]  # no convert
    # refused for its charset, not its sender: converted again (what reprocessing is for)
    again = process_message(store, converter, kept.mislabelled)
    assert again.stage == "convert" and store.state_of(kept.mislabelled) == again.state


def _run(
    capsys: pytest.CaptureFixture[str], settings: Settings, *args: str
) -> tuple[int, str, str]:
    capsys.readouterr()  # the listener's refusal, logged when an earlier test set up logs
    code = main(["--home", str(settings.home), "messages", "reprocess", *args])
    out, err = capsys.readouterr()
    return code, out, err


def _events(store: Store) -> list[dict[str, object]]:
    found = [e.resource() for e in AuditLog(store).rows()]
    return [e for e in found if str(e.get("outcomeDesc") or "").startswith("reprocess")]


def test_reprocess_by_id_is_refused_in_one_line(
    settings: Settings, store: Store, capsys: pytest.CaptureFixture[str]
) -> None:
    kept = keep_three(settings, store)
    code, out, err = _run(capsys, settings, str(kept.mismatch))
    assert (code, out) == (2, "")
    assert err == _line(kept.mismatch, "intake.mllp-sender-mismatch") + "\n"
    assert _stages(store, kept.mismatch) == [("intake", "rejected", True)]
    [event] = _events(store)  # the attempt is audited: who tried to convert it
    refused_event(event, "reprocess", "store.sender-refused", operator(), kept.mismatch)


def test_bulk_reprocess_skips_and_counts_them(
    settings: Settings, store: Store, capsys: pytest.CaptureFixture[str]
) -> None:
    kept = keep_three(settings, store)
    code, out, err = _run(capsys, settings, "--state", "rejected")
    lines = out.splitlines()
    # oldest first: the first one skipped, the batch went on to the last
    assert lines[0] == f"message {kept.mismatch}: skipped: " + _line(
        kept.mismatch, "intake.mllp-sender-mismatch"
    )
    assert lines[1] == f"message {kept.no_institution}: skipped: " + _line(
        kept.no_institution, "intake.mllp-client-no-institution"
    )
    state = store.state_of(kept.mislabelled)
    assert state in {"converted", "failed"}
    assert lines[2] == f"message {kept.mislabelled}: {state} (attempt 1)"
    assert err.splitlines()[-1] == (
        f"reprocessed 1, failed {int(state == 'failed')}, skipped 2 refused for their "
        "sender when received (store.sender-refused): the institution each one's MSH-4 "
        "names must send it over its own connection"
    )
    assert code == int(state == "failed")  # skips by rule are no failures
    assert store.state_of(kept.mismatch) == store.state_of(kept.no_institution) == "rejected"
    events = _events(store)
    assert [e["outcome"] for e in events] == ["4", "4", "0"]  # two refused, one done


def test_sent_again_by_the_institution_it_names_it_is_converted(
    settings: Settings, store: Store
) -> None:
    """The refusal's remedy: NSCH sends the same bytes over its own connection. The
    store takes them on the same row (the connection that sent them now NSCH's), the
    refusal stays in its history but is no longer current, and it converts."""
    refused = keep(settings, store, nsch_referral(), "HKPMC", "HKPMC-CMS")
    assert keep(settings, store, nsch_referral(), "NSCH", NSCH_NAME) == refused
    row = store.get(refused)
    assert row is not None and row.summary.state == "received"
    assert row.summary.auth_sender == NSCH_NAME
    assert _stages(store, refused) == [("intake", "rejected", False)]
    converted = process_message(store, Converter(settings), refused)
    assert converted.state == "converted"
    again = process_message(store, Converter(settings), refused)  # reprocessed: allowed
    assert (again.state, again.attempt) == ("converted", 2)


def _mislabelled(control_id: str) -> bytes:
    """HKPMC's referral in Big5 declared ISO 8859-1: refused for its charset, not its
    sender (what a bulk reprocess of rejected messages is for)."""
    big5 = (REPO / "examples" / "hl7v2" / "ref_i12_hkpmc_to_nsch.hl7").read_bytes()
    big5 = big5.replace(b"\r\n", b"\r").replace(b"\n", b"\r").replace(b"|AL|NE|", b"|||", 1)
    msh, _, rest = big5.partition(b"\r")
    fields = msh.replace(b"|BIG-5", b"|8859/1").split(b"|")
    fields[9] = control_id.encode()
    return b"|".join(fields) + b"\r" + rest


def test_bulk_reprocess_skips_and_counts_pruned_messages(
    settings: Settings, store: Store, capsys: pytest.CaptureFixture[str]
) -> None:
    """A message whose bytes retention removed stopped the whole batch (its store.pruned
    raised out of the loop): the messages after it were never reprocessed."""
    pruned = keep(settings, store, _mislabelled("OLD1"), "HKPMC", HKPMC_NAME)
    assert store.prune({"rejected": timedelta(0)}, utcnow() + timedelta(seconds=1)) == 1
    after = keep(settings, store, _mislabelled("NEW1"), "HKPMC", HKPMC_NAME)
    code, out, err = _run(capsys, settings, "--state", "rejected")
    lines = out.splitlines()
    why = "its original bytes were removed by retention (retention_days): it cannot be converted"
    line = f"error: message {pruned}: {why} again [store.pruned]"
    assert lines[0] == f"message {pruned}: skipped: {line}"
    state = store.state_of(after)
    assert state in {"converted", "failed"}
    assert lines[1] == f"message {after}: {state} (attempt 1)"  # the batch went on
    assert err.splitlines()[-1] == (
        f"reprocessed 1, failed {int(state == 'failed')}, skipped 1 pruned (store.pruned): "
        "their original bytes were removed by retention (retention_days)"
    )
    assert code == int(state == "failed")
    assert store.state_of(pruned) == "rejected"
    code, _, err = _run(capsys, settings, str(pruned))  # asked by id: its error, exit 2
    assert (code, err) == (2, line + "\n")


def test_bulk_reprocess_exits_1_only_when_a_message_failed(
    settings: Settings, store: Store, capsys: pytest.CaptureFixture[str]
) -> None:
    """An operator's script reads the exit status: 1 must mean a message failed to
    convert. Skips by rule (refused for their sender, pruned) are not failures: before,
    a batch of nothing but skips exited 1, as if something had failed."""
    refused = keep(settings, store, nsch_referral(), "HKPMC", HKPMC_NAME)
    pruned = keep(settings, store, _mislabelled("OLD2"), "HKPMC", HKPMC_NAME)
    assert store.prune({"rejected": timedelta(0)}, utcnow() + timedelta(seconds=1)) == 2
    code, out, err = _run(capsys, settings, "--state", "rejected")
    assert [line.split(": ")[:2] for line in out.splitlines()] == [
        [f"message {refused}", "skipped"],
        [f"message {pruned}", "skipped"],
    ]
    assert err.splitlines()[-1].startswith(
        "reprocessed 0, failed 0, skipped 1 refused for their sender when received "
    )
    assert err.splitlines()[-1].endswith(
        ", skipped 1 pruned (store.pruned): their original "
        "bytes were removed by retention (retention_days)"
    )
    assert code == 0
    # one that fails to convert (still mislabelled): exit 1, the skips as before
    failing = keep(settings, store, _mislabelled("NEW2"), "HKPMC", HKPMC_NAME)
    code, out, err = _run(capsys, settings, "--state", "rejected")
    assert f"message {failing}: failed (attempt 1)" in out.splitlines()
    assert err.splitlines()[-1].startswith("reprocessed 1, failed 1, skipped 1 refused ")
    assert code == 1


@pytest.mark.parametrize(
    "mrn",
    [
        b"0098765\t",  # a TAB at its end: MRN 0098765 to a stripping reader
        "0098765\u3000".encode(),  # an ideographic space, as Chinese systems pad
        b"0098765\\X09\\",  # the TAB escaped
        b"0098765\\X1F\\",  # an escaped unit separator: a control character
    ],
)
def test_a_failed_messages_patients_are_read_as_intake_reads_them(
    settings: Settings, store: Store, mrn: bytes
) -> None:
    """A message that did not convert is found by its PID-3 identifiers. Intake refuses
    ``0098765<TAB>`` in PID-3 (intake.control-characters: it is not MRN 0098765), yet the
    index stripped it and filed the message under patient 0098765, perhaps another
    patient's MRN. An identifier intake refuses is not indexed; the others are."""
    raw = nsch_referral().replace(b"0098765^^^NSCH", mrn + b"^^^NSCH", 1)
    assert raw != nsch_referral()
    receipt = store.receive(Incoming(raw, "cli", sender="NSCH", control_id="PID3"))
    outcome = process_message(store, Converter(settings), receipt.id)
    assert outcome.state == "failed"
    assert "intake.control-characters" in {i["code"] for i in outcome.issues}
    found = store.get(receipt.id)
    assert found is not None and found.patients == ["|K583726A"]
    assert store.find(MessageFilter(patient="0098765")).items == []
