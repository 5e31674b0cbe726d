"""``gateway send`` end to end against the real partner server (strict mode) — one
line per failed record, each good record delivered once — and a person's decisions:
``gateway outbox retry``, ``replay`` and ``release`` with their reasons kept."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest

from gateway.cli import main
from gateway.delivery import Deliverer, DeliveryConfig, Outbox
from gateway.partners import Partner
from gateway.store import Store
from tests.conftest import REPO
from tests.partner.conftest import PartnerServer
from tests.policy.conftest import HKID, consent

HL7 = REPO / "examples" / "hl7v2"
REFERRAL = "https://fhir.lax2.example.cn/sid/referral|REF20260611001"


@pytest.fixture
def partners(partner: PartnerServer, tmp_path: Path) -> dict[str, Partner]:
    """Every partner of the demo network is the partner server: the operator's override
    file in the test's GATEWAY_HOME (what `gateway partners set` writes) says so."""
    partner.reset()
    keys = ("njmu2", "hkpmc", "nsch")
    lines = ["partners:"]
    for key in keys:
        lines += [
            f"  {key}:",
            f"    base: {partner.base}",
            "    max_entries: 8",
            "    write: transaction",
            "    check_overwrite: false",  # the faults must hit the sends (test_overwrite.py)
        ]
    (tmp_path / "partners.yaml").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return {k: Partner(k, partner.base, max_entries=8, check_overwrite=False) for k in keys}


def run(capsys: pytest.CaptureFixture[str], home: Path, *args: str) -> tuple[int, str, str]:
    code = main(["--home", str(home), *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_send_wait_delivers_each_good_record_once_and_names_each_bad_one(
    partners: dict[str, Partner],
    partner: PartnerServer,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, out, err = run(
        capsys,
        tmp_path,
        "send",
        str(HL7 / "ref_i12_lax2_to_njmu2.hl7"),
        str(HL7 / "batch_mixed.hl7"),
        "--wait",
        "--json",
    )
    assert code == 1  # one message of the batch does not convert
    bad = [line for line in err.splitlines() if line.startswith("error:")]
    assert bad == [
        f"error: {HL7 / 'batch_mixed.hl7'}, message #2: PID-3: no patient identifier: the PID "
        "segment is missing or its PID-3 is empty [mapping.no-identity]"
    ]
    report = json.loads(out)
    assert [(m["message"], m["state"]) for m in report] == [
        (1, "delivered"),
        (1, "delivered"),
        (2, "failed"),
        (3, "delivered"),
    ]
    rows = [row for m in report for row in m.get("outbox", [])]
    assert [(r["partner"], r["state"]) for r in rows] == [("njmu2", "delivered")] * 3
    assert len(partner.search(f"ServiceRequest?identifier={REFERRAL}")) == 1
    # Again: stored once, queued once, nothing more at the partner.
    code, out, _ = run(capsys, tmp_path, "send", str(HL7 / "ref_i12_lax2_to_njmu2.hl7"), "--json")
    assert code == 0
    [again] = json.loads(out)
    assert again["outbound"]["records"][0]["placed"][0]["outcome"] == "already"
    assert len(partner.search(f"ServiceRequest?identifier={REFERRAL}")) == 1


def _deliver(home: Path, partners: dict[str, Partner]) -> None:
    store = Store.for_home(home)
    outbox = Outbox(store)
    config = DeliveryConfig(backoff_base=0.01, backoff_cap=0.05)
    with Deliverer(outbox, partners, config, rng=random.Random(2)) as deliverer:
        for _ in range(20):
            deliverer.run_once()
    store.close()


def _row(capsys: pytest.CaptureFixture[str], home: Path, row: int) -> dict[str, Any]:
    code, out, _ = run(capsys, home, "outbox", "show", str(row), "--json")
    assert code == 0
    found: dict[str, Any] = json.loads(out)
    return found


def test_retry_replay_release_keep_their_reasons(
    partners: dict[str, Partner],
    partner: PartnerServer,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # A partner that refuses the first write: the record dies; a person retries it.
    partner.http.post("/$fault", json={"mode": "400", "count": 1}).raise_for_status()
    code, out, _ = run(
        capsys, tmp_path, "send", str(HL7 / "ref_i12_lax2_to_njmu2.hl7"), "--wait", "--json"
    )
    [sent] = json.loads(out)
    [row] = sent["outbox"]
    assert code == 1 and (row["state"], row["last_error"]) == ("dead", "delivery.partner-rejected")
    code, out, _ = run(
        capsys, tmp_path, "outbox", "retry", "--dead", "--reason", "partner fixed its validator"
    )
    assert code == 0 and f"retried outbox record {row['id']}" in out
    _deliver(tmp_path, partners)
    shown = _row(capsys, tmp_path, row["id"])
    assert shown["state"] == "delivered"
    # decided again first: the new decision named in the transition
    assert any(
        e["reason"].startswith("retry: partner fixed its validator (allow: policy decision ")
        for e in shown["events"]
    )

    # Replay: the partner lost it; the same parts go again as a new record.
    code, out, _ = run(
        capsys,
        tmp_path,
        "outbox",
        "replay",
        str(row["id"]),
        "--reason",
        "restored backup",
        "--json",
    )
    [replay] = json.loads(out)
    assert code == 0 and (replay["replay_of"], replay["state"]) == (row["id"], "pending")
    _deliver(tmp_path, partners)
    assert _row(capsys, tmp_path, replay["id"])["state"] == "delivered"
    assert len(partner.search(f"ServiceRequest?identifier={REFERRAL}")) == 1  # conditional
    reasons = [e["reason"] for e in _row(capsys, tmp_path, row["id"])["events"]]
    assert any(r.startswith(f"replayed as {replay['id']}: restored backup (allow") for r in reasons)
    code, _, err = run(capsys, tmp_path, "outbox", "replay", "999", "--reason", "x")
    assert code == 2 and "[delivery.not-found]" in err

    # Release: held by the policy (no consent) — refused until the consent is in force.
    code, out, _ = run(capsys, tmp_path, "send", str(HL7 / "ref_i12_nsch_to_hkpmc.hl7"), "--json")
    [held] = json.loads(out)
    placed = held["outbound"]["records"][0]["placed"][0]
    assert (held["state"], placed["outcome"]) == ("held", "held")
    code, _, err = run(
        capsys, tmp_path, "outbox", "release", str(placed["outbox_id"]), "--reason", "asked"
    )
    assert code == 2 and "the policy still holds it" in err and "[delivery.not-releasable]" in err
    given = tmp_path / "consent.json"
    given.write_text(
        json.dumps(consent((HKID, "K583726A"), "HKPMC", start="2026-01-01", end="2099-12-31")),
        encoding="utf-8",
    )
    assert run(capsys, tmp_path, "consent", "import", str(given))[0] == 0
    code, out, _ = run(
        capsys,
        tmp_path,
        "outbox",
        "release",
        str(placed["outbox_id"]),
        "--reason",
        "consent signed",
    )
    assert code == 0 and "pending" in out
    _deliver(tmp_path, partners)
    released = _row(capsys, tmp_path, placed["outbox_id"])
    assert released["state"] == "delivered"
    assert any(e["reason"].startswith("released (consent signed)") for e in released["events"])
    # The consent withdrawn: a replay is decided again and refused, one line, exit 2.
    assert run(capsys, tmp_path, "consent", "withdraw", "consent-1")[0] == 0
    code, out, err = run(
        capsys, tmp_path, "outbox", "replay", str(placed["outbox_id"]), "--reason", "lost"
    )
    assert code == 2 and out == "" and len(err.splitlines()) == 1
    assert "the policy, deciding again, holds it" in err and "[delivery.not-replayable]" in err
    code, out, _ = run(capsys, tmp_path, "outbox", "list", "--json")
    assert [r["state"] for r in json.loads(out) if r["replay_of"] == placed["outbox_id"]] == []


def test_retry_dead_names_each_record_the_policy_now_refuses_and_retries_the_others(
    partners: dict[str, Partner],
    partner: PartnerServer,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Two dead records; the Hong Kong one's consent is withdrawn meanwhile: `retry
    --dead` decides each again, names the refused one in one line and retries the
    other (exit 1)."""
    partner.http.post("/$fault", json={"mode": "400", "count": 2}).raise_for_status()
    given = tmp_path / "consent.json"
    given.write_text(
        json.dumps(consent((HKID, "K583726A"), "HKPMC", start="2026-01-01", end="2099-12-31")),
        encoding="utf-8",
    )
    assert run(capsys, tmp_path, "consent", "import", str(given))[0] == 0
    dead = []
    for name in ("ref_i12_lax2_to_njmu2.hl7", "ref_i12_nsch_to_hkpmc.hl7"):
        _, out, _ = run(capsys, tmp_path, "send", str(HL7 / name), "--wait", "--json")
        [row] = json.loads(out)[0]["outbox"]
        assert row["state"] == "dead"
        dead.append(row["id"])
    domestic, hongkong = dead
    assert run(capsys, tmp_path, "consent", "withdraw", "consent-1")[0] == 0
    code, out, err = run(capsys, tmp_path, "outbox", "retry", "--dead", "--reason", "fixed")
    assert code == 1 and out.splitlines()[0].startswith(f"retried outbox record {domestic} ")
    assert len(out.splitlines()) == 1
    [line] = err.splitlines()
    assert f"outbox record {hongkong} cannot be retried" in line
    assert "[delivery.not-retryable]" in line
    assert _row(capsys, tmp_path, hongkong)["state"] == "dead"
    assert _row(capsys, tmp_path, domestic)["state"] == "pending"
