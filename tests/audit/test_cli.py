"""`gateway audit`: sign-head, verify (live and a file), export and transfers, through
the command line, on a GATEWAY_HOME of its own."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import orjson
import pytest
import sqlalchemy as sa

from gateway.audit import AuditLog
from gateway.audit._tables import entries
from gateway.cli import main
from gateway.config import Settings
from gateway.policy._records import decisions
from gateway.store import open_store

from .conftest import AGREEMENT, PATIENTS, transfer_events


@pytest.fixture
def home(tmp_path: Path, pki: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "home"
    folder.mkdir()
    for name in list(__import__("os").environ):
        if name.startswith("GATEWAY_") and name != "GATEWAY_HOME":
            monkeypatch.delenv(name)
    monkeypatch.setenv("GATEWAY_HOME", str(folder))
    monkeypatch.setenv("GATEWAY_AUDIT_KEY", "env:AUDIT")
    monkeypatch.setenv("GATEWAY_SIGNING_KEY_AUDIT", (pki / "nsch" / "key.pem").read_text())
    monkeypatch.setenv("GATEWAY_SIGNING_CERT_AUDIT", (pki / "nsch" / "cert.pem").read_text())
    return folder


def _log(home: Path) -> AuditLog:
    return AuditLog(open_store(Settings.load(home)))


def test_sign_verify_export(home: Path, pki: Path, capsys: pytest.CaptureFixture[str]) -> None:
    log = _log(home)
    log.record_many(transfer_events(12))
    assert main(["audit", "sign-head"]) == 0
    assert "signed tree head #1: size 12" in capsys.readouterr().err
    cert = str(pki / "nsch" / "cert.pem")
    assert main(["audit", "verify", "--cert", cert]) == 0
    out = capsys.readouterr()
    assert out.out == "" and "audit log intact: 13 entries, 1 signed heads" in out.err

    target = home / "wang.json"
    patient_id = PATIENTS[0].split("/")[1]
    assert main(["audit", "export", "--patient", patient_id, "-o", str(target)]) == 0
    assert "exported 4 events under signed head #2 (size 13)" in capsys.readouterr().err
    bundle = orjson.loads(target.read_bytes())
    assert bundle["type"] == "collection" and len(bundle["entry"]) == 5
    assert main(["audit", "verify", str(target), "--cert", cert]) == 0
    assert main(["audit", "verify", str(target), "--cert", str(pki / "hkpmc" / "cert.pem")]) == 1
    assert "[audit.untrusted-head]" in capsys.readouterr().out
    assert main(["audit", "verify", "--json", str(target), "--trust", str(pki / "ca")]) == 0
    result = orjson.loads(capsys.readouterr().out)
    assert result["ok"] and result["entries"] == 4

    with log.engine.begin() as conn:  # the export itself was logged: an operator action
        kinds = conn.execute(sa.select(entries.c.kind).order_by(entries.c.idx)).scalars().all()
        assert kinds[-2:] == ["operator", "audit-export"]  # sign-head, export
        conn.execute(
            sa.update(entries).where(entries.c.idx == 4).values(canonical=b'{"resourceType":"X"}')
        )
    event_id = next(e.event_id for e in log.rows() if e.index == 4)
    assert main(["audit", "verify"]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(f"entry 4 (event {event_id}): the stored event does not hash")
    assert (
        lines[1]
        == f"entry 4 (event {event_id}): the event's id is not the one it was logged under "
        "[audit.altered]"
    )
    assert "live log: 审计日志验证失败 verification FAILED: 14 entries, 2 signed heads" in lines[-2]


def test_sign_head_needs_a_key(
    home: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("GATEWAY_AUDIT_KEY")
    assert main(["audit", "sign-head"]) == 2
    assert "[audit.no-key]" in capsys.readouterr().err


def test_transfers_per_partner_and_basis(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    log = _log(home)
    log.record_many(transfer_events(16))  # 4 successful deliveries, all to NJMU2
    rows = [
        (1, "HKPMC", "allow", "gba-standard-contract", ["p-wang", "p-chan"], True),
        (2, "HKPMC", "allow-with-changes", "gba-standard-contract", ["p-wang"], True),
        (3, "HKPMC", "hold", None, ["p-li"], True),  # held: did not cross
        (4, "NJMU2", "allow", "domestic", ["p-li"], True),
        (5, "HKPMC", "allow", "gba-standard-contract", ["p-old"], False),  # superseded
    ]
    with log.engine.begin() as conn:
        for n, recipient, outcome, basis, patients, current in rows:
            conn.execute(
                sa.insert(decisions).values(
                    message_id=None,
                    decided_at=datetime(2026, 3, n),
                    sender="NSCH",
                    recipient=recipient,
                    purpose="referral",
                    outcome=outcome,
                    basis=basis,
                    agreement=AGREEMENT,
                    rules="[]",
                    changes="[]",
                    patients=orjson.dumps(patients).decode(),
                    current=current,
                )
            )
    assert main(["audit", "transfers", "--year", "2026", "--format", "json"]) == 0
    report = orjson.loads(capsys.readouterr().out)
    got = {
        (r["partner"], r["basis"]): (r["records"], r["individuals"], r["delivered"])
        for r in report["rows"]
    }
    assert got == {
        ("HKPMC", "gba-standard-contract"): (2, 2, 0),
        ("NJMU2", "domestic"): (1, 1, 0),
        ("NJMU2", "gba-standard-contract"): (0, 0, 4),
    }
    hk = next(r for r in report["rows"] if r["partner"] == "HKPMC")
    assert hk["basis_name"]["zh-Hans"] == "粤港澳大湾区个人信息跨境流动标准合同"
    assert main(["audit", "transfers", "--year", "2026", "--format", "csv"]) == 0
    csv_text = capsys.readouterr().out
    assert csv_text.splitlines()[0].startswith("partner_code,basis_code,接收方 / Recipient")
    assert main(["audit", "transfers", "--year", "2025", "--format", "html"]) == 0
    assert "本年度无跨境传输 / No transfers this year" in capsys.readouterr().out


def test_export_finds_a_patient_by_identifier_and_a_partner_by_its_code(
    home: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Decisions name their patient only by the policy's keyed pseudonym and their partner
    by its key (hkpmc): `--patient 'HKID-system|K583726A' --partner HKPMC`, as the help and
    README put it, exported none of them."""
    from gateway.audit import events
    from gateway.audit._events import Subject
    from gateway.audit._hooks import PSEUDONYM
    from gateway.policy import pseudonym

    key = bytes(range(32))
    monkeypatch.setenv("GATEWAY_POLICY_KEY", key.hex())
    hkid = "https://fhir-gateway.example.org/sid/hkid"
    held = Subject(f"{PSEUDONYM}|{pseudonym(key, hkid, 'K583726A')}", ("Bundle/b-1",))
    other = Subject(f"{PSEUDONYM}|{pseudonym(key, hkid, 'Y123456A')}", ("Bundle/b-2",))
    _log(home).record_many(
        [
            events.policy_decision(
                "nsch", "hkpmc", outcome, subject, basis=None, agreement=None, purpose="referral"
            )
            for outcome, subject in (("hold", held), ("allow", other))
        ]
    )
    target = home / "xu.json"
    argv = ["audit", "export", "--patient", f"{hkid}|K583726A", "--partner", "HKPMC"]
    assert main([*argv, "-o", str(target)]) == 0
    assert "exported 1 events" in capsys.readouterr().err
    [event] = [e["resource"] for e in orjson.loads(target.read_bytes())["entry"][1:]]
    assert event["entity"][0]["what"]["identifier"]["value"] == held.patient.split("|")[1]


def test_transfers_wants_a_four_digit_year(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`--year 26` was taken as the year 26: an empty report."""
    with pytest.raises(SystemExit) as usage:
        main(["audit", "transfers", "--year", "26"])
    assert usage.value.code == 2
    assert "give the year in four digits (2026), not '26'" in capsys.readouterr().err


def test_sign_head_opens_an_encrypted_key_given_with_its_password(
    home: Path, pki: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`sign-head --key` reads an encrypted key with GATEWAY_SIGNING_PASSWORD, as
    `gateway sign --key` and every key folder do (docs/signing.md): it passed no
    password, so an encrypted key could sign no tree head (signing.key)."""
    from cryptography.hazmat.primitives import serialization

    key = serialization.load_pem_private_key((pki / "nsch" / "key.pem").read_bytes(), None)
    encrypted = tmp_path / "audit-key.pem"
    encrypted.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"head-s3cret"),
        )
    )
    encrypted.chmod(0o600)
    monkeypatch.setenv("GATEWAY_SIGNING_PASSWORD", "head-s3cret")
    _log(home).record_many(transfer_events(3))
    cert = str(pki / "nsch" / "cert.pem")
    assert main(["audit", "sign-head", "--key", str(encrypted), "--cert", cert]) == 0
    assert main(["audit", "verify", "--cert", cert]) == 0
