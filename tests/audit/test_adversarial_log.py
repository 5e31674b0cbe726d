"""Adversarial review of the live log: an insider with write access to the database
changes one column of one row, truncates the log, deletes its heads, or rolls the whole
database back to an old backup. `verify` must name the entry and what is wrong in one
line with no patient data, and never stop with a traceback. (test_log.py covers the
event text altered, a deleted/renumbered/inserted/reordered entry and thorough
rewrites against signed heads; these are the cases it leaves.)"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from gateway.audit import AuditLog, leaf_hash, verify_log
from gateway.audit._events import keys_of
from gateway.audit._merkle import Frontier
from gateway.audit._tables import entries, heads, state
from gateway.signing import Signer, canonicalize
from gateway.store import Store

from .conftest import PATIENTS, transfer_events


def _exec(log: AuditLog, *statements: sa.Executable) -> None:
    with log.engine.begin() as conn:
        for statement in statements:
            conn.execute(statement)


def _lines(log: AuditLog, **options: object) -> list[str]:
    verdict = verify_log(log, **options)  # type: ignore[arg-type]
    assert not verdict.ok
    lines = [p.line() for p in verdict.problems]
    for line in lines:  # never the patient's id
        assert not any(p.split("/")[1] in line for p in PATIENTS)
    return lines


def _row(log: AuditLog, index: int) -> object:
    return next(e for e in log.rows() if e.index == index)


@pytest.fixture
def filled(log: AuditLog) -> AuditLog:
    log.record_many(transfer_events(20))
    return log


def test_a_changed_recorded_column_is_named(filled: AuditLog) -> None:
    """`recorded` is what date searches and `export --since/--until` select by: moved a
    year back, the event drops out of every export of its period. Verify used to say the
    log was intact."""
    entry = _row(filled, 7)
    moved = entry.recorded.replace(year=entry.recorded.year - 1)  # type: ignore[attr-defined]
    _exec(filled, sa.update(entries).where(entries.c.idx == 7).values(recorded=moved))
    lines = _lines(filled)
    assert lines == [
        f"entry 7 (event {entry.event_id}): the recorded column (what date searches and "  # type: ignore[attr-defined]
        "exports select by) disagrees with the event's recorded time [audit.altered]"
    ]


@pytest.mark.parametrize("column", ["leaf_hash", "root"])
def test_one_changed_byte_of_a_hash_column_is_named(filled: AuditLog, column: str) -> None:
    entry = _row(filled, 7)
    value = bytearray(getattr(entry, column))
    value[5] ^= 0x01
    _exec(filled, sa.update(entries).where(entries.c.idx == 7).values({column: bytes(value)}))
    lines = _lines(filled)
    assert len(lines) == 1
    assert lines[0].startswith(f"entry 7 (event {entry.event_id}): ")  # type: ignore[attr-defined]


def test_a_gap_after_an_altered_root_is_still_named_where_it_is(filled: AuditLog) -> None:
    """Two attacks: a root changed at 3, entry 10 deleted. The deletion used to be
    reported as 'the last 1 were deleted' at entry 19."""
    _exec(
        filled,
        sa.update(entries).where(entries.c.idx == 3).values(root=b"\0" * 32),
        sa.delete(entries).where(entries.c.idx == 10),
    )
    lines = _lines(filled)
    assert lines[0].startswith("entry 3 (event ") and lines[0].endswith("[audit.reordered]")
    assert lines[1].startswith("entry 10: entries 10..10 are missing (deleted): the next stored")
    assert len(lines) == 2


def test_truncation_with_the_state_rewritten_is_named_by_a_kept_head(
    filled: AuditLog, signer: Signer
) -> None:
    """The last 3 entries deleted, the state row recomputed and every signed head in the
    database deleted: the log agrees with itself. Only a head kept outside the database
    (an export's, or `sign-head -o`) can tell."""
    kept = filled.sign_head(signer)
    frontier = Frontier()
    for leaf in filled.leaf_hashes(17):
        frontier = frontier.append(leaf)
    _exec(
        filled,
        sa.delete(entries).where(entries.c.idx >= 17),
        sa.update(state).values(size=17, frontier=b"".join(frontier.hashes)),
        sa.delete(heads),
    )
    assert verify_log(filled).ok  # what no log can see by itself
    lines = _lines(filled, checkpoints=[kept])
    assert lines == [
        "log: the kept head (size 20) covers 20 entries, the log holds 17: entries were "
        "deleted or the database was rolled back to an older copy [audit.missing]"
    ]


@pytest.fixture
def sqlite_store(tmp_path: Path) -> Iterator[Store]:
    """SQLite only: its file copy is the backup, and it keeps a value of any type
    (PostgreSQL refuses such a value itself)."""
    opened = Store.open(f"sqlite:///{tmp_path / 'audit.db'}")
    yield opened
    opened.close()


def test_a_rolled_back_database_is_named_by_a_kept_head(
    sqlite_store: Store, signer: Signer, tmp_path: Path
) -> None:
    store = sqlite_store
    database = Path(str(store.engine.url.database))
    log = AuditLog(store)
    log.record_many(transfer_events(8))
    log.sign_head(signer)
    store.engine.dispose()
    shutil.copy(database, tmp_path / "backup.db")
    log.record_many(transfer_events(6))
    kept = log.sign_head(signer)  # handed to the auditor with an export
    store.engine.dispose()
    shutil.copy(tmp_path / "backup.db", database)  # the insider restores last week's copy
    restored = AuditLog(Store.open(f"sqlite:///{database}"))
    assert verify_log(restored).ok
    assert _lines(restored, checkpoints=[kept]) == [
        "log: the kept head (size 14) covers 14 entries, the log holds 8: entries were "
        "deleted or the database was rolled back to an older copy [audit.missing]"
    ]


def test_a_kept_head_of_a_rewritten_history_is_named(filled: AuditLog, signer: Signer) -> None:
    kept = filled.sign_head(signer)
    other = transfer_events(1)[0]
    _exec(filled, sa.delete(heads))

    kind, _, patient, partner = keys_of(other)
    # entry 19 replaced by another event, hashes, roots and state recomputed
    canonical = canonicalize(other)
    leaves = [*filled.leaf_hashes(19), leaf_hash(canonical)]
    frontier = Frontier()
    for leaf in leaves:
        frontier = frontier.append(leaf)
    _exec(
        filled,
        sa.update(entries)
        .where(entries.c.idx == 19)
        .values(
            event_id=other["id"],
            canonical=canonical,
            leaf_hash=leaf_hash(canonical),
            root=frontier.root(),
            kind=kind,
            patient=patient,
            partner=partner,
        ),
        sa.update(state).values(frontier=b"".join(frontier.hashes)),
    )
    lines = _lines(filled, checkpoints=[kept])
    assert lines[-1] == (
        "log: the kept head (size 20): the log's root at that size is not the signed one: "
        "entries before 20 changed after it was signed [audit.rewritten]"
    )


@pytest.mark.parametrize(
    ("statement", "start"),
    [
        ("UPDATE audit_entries SET recorded = 'yesterday' WHERE idx = 7", "entry 7: "),
        ("UPDATE audit_entries SET canonical = CAST(canonical AS TEXT) WHERE idx = 7", "entry 7: "),
        ("UPDATE audit_state SET size = 'twenty'", "log: "),
    ],
)
def test_a_value_of_another_type_is_named_not_a_traceback(
    sqlite_store: Store, statement: str, start: str
) -> None:
    """SQLite keeps whatever type it is given: a row the gateway cannot read is a
    problem named in one line, not a crash of `verify`."""
    log = AuditLog(sqlite_store)
    log.record_many(transfer_events(12))
    _exec(log, sa.text(statement))
    lines = _lines(log)
    assert lines[0].startswith(start) and lines[0].endswith("[audit.altered]")
    assert "cannot be read" in lines[0]


def test_an_entry_moved_to_a_negative_index_is_not_hidden(filled: AuditLog) -> None:
    """Reads start at index 0: a row moved below it was invisible to verify, export and
    search alike, and reported as 'the last 1 were deleted'."""
    entry = _row(filled, 12)
    _exec(filled, sa.update(entries).where(entries.c.idx == 12).values(idx=-12))
    lines = _lines(filled)
    assert lines[0] == (
        f"entry -12 (event {entry.event_id}): a negative index, never given by the log: "  # type: ignore[attr-defined]
        "moved or written outside the gateway [audit.inserted]"
    )
    assert lines[1].startswith("entry 12: entries 12..12 are missing (deleted)")


def test_verify_checkpoint_on_the_command_line(
    tmp_path: Path, pki: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`sign-head -o` keeps a head; after the insider truncated the log and deleted the
    heads, `verify --checkpoint` with that file (or an export) names it, exit 1."""
    from gateway.cli import main
    from gateway.config import Settings
    from gateway.store import open_store

    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("GATEWAY_HOME", str(home))
    monkeypatch.setenv("GATEWAY_AUDIT_KEY", "env:AUDIT")
    monkeypatch.setenv("GATEWAY_SIGNING_KEY_AUDIT", (pki / "nsch" / "key.pem").read_text())
    monkeypatch.setenv("GATEWAY_SIGNING_CERT_AUDIT", (pki / "nsch" / "cert.pem").read_text())
    log = AuditLog(open_store(Settings.load(home)))
    log.record_many(transfer_events(10))
    kept, export = tmp_path / "head.json", tmp_path / "export.json"
    assert main(["audit", "sign-head", "-o", str(kept)]) == 0
    assert main(["audit", "export", "-o", str(export)]) == 0
    cert = str(pki / "nsch" / "cert.pem")
    assert main(["audit", "verify", "--cert", cert, "--checkpoint", str(kept)]) == 0
    _exec(log, sa.delete(entries), sa.delete(state), sa.delete(heads))
    capsys.readouterr()
    assert main(["audit", "verify", "--cert", cert]) == 0  # an empty log agrees with itself
    for checkpoint, size in ((kept, 10), (export, 11)):  # sign-head logs itself
        capsys.readouterr()
        assert main(["audit", "verify", "--cert", cert, "--checkpoint", str(checkpoint)]) == 1
        out = capsys.readouterr().out
        assert f"log: the kept head (size {size}) covers {size} entries, the log holds 0" in out
    (tmp_path / "bad.json").write_text('{"resourceType": "Bundle"}')
    assert main(["audit", "verify", "--checkpoint", str(tmp_path / "bad.json")]) == 2
    assert "--checkpoint" in capsys.readouterr().err


def test_live_verify_without_a_certificate_does_not_vouch_for_forged_heads(
    tmp_path: Path, pki: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The insider rewrites an event, deletes the real heads and signs new ones with a
    key of their own under a certificate naming the gateway. `gateway audit verify`
    with no certificate used to say 'intact, signed by <the gateway>'."""
    from cryptography import x509

    from gateway.cli import main
    from gateway.config import Settings
    from gateway.signing import issue_certificate, new_key
    from gateway.store import open_store

    home = tmp_path / "home"
    home.mkdir()
    for name in list(__import__("os").environ):
        if name.startswith("GATEWAY_") and name != "GATEWAY_HOME":
            monkeypatch.delenv(name)
    monkeypatch.setenv("GATEWAY_HOME", str(home))
    log = AuditLog(open_store(Settings.load(home)))
    log.record_many(transfer_events(10))
    log.sign_head(Signer.load(pki / "nsch" / "key.pem", pki / "nsch" / "cert.pem"))
    rows = list(log.rows())
    frontier = Frontier()
    statements: list[sa.Executable] = [sa.delete(heads)]
    for row in rows:
        canonical = row.canonical.replace(b'"outcome":"0"', b'"outcome":"8"', 1)
        frontier = frontier.append(leaf_hash(canonical))
        statements.append(
            sa.update(entries)
            .where(entries.c.idx == row.index)
            .values(canonical=canonical, leaf_hash=leaf_hash(canonical), root=frontier.root())
        )
    statements.append(sa.update(state).values(frontier=b"".join(frontier.hashes)))
    _exec(log, *statements)
    gateway = x509.load_pem_x509_certificate((pki / "nsch" / "cert.pem").read_bytes())
    key = new_key()
    own = issue_certificate(gateway.subject, key.public_key(), key)  # self-signed
    log.sign_head(Signer.from_key(key, [own]))
    capsys.readouterr()
    assert main(["audit", "verify"]) == 1
    out = capsys.readouterr().out
    assert "log: no certificate given (--cert, --trust or signing_trust): the signer of " in out
    assert "[audit.untrusted-head]" in out
    assert main(["audit", "verify", "--cert", str(pki / "nsch" / "cert.pem")]) == 1
    assert "neither the given one nor issued by it" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("column", "value"), [("patient", PATIENTS[0]), ("partner", "NJMU2"), ("kind", "consent")]
)
def test_a_changed_look_up_column_is_named_by_name_not_value(
    filled: AuditLog, column: str, value: str
) -> None:
    """The patient column moved to another patient: the event drops out of the first
    patient's export. The line names the column, never either patient."""
    entry = _row(filled, 4)
    _exec(filled, sa.update(entries).where(entries.c.idx == 4).values({column: value}))
    assert _lines(filled) == [
        f"entry 4 (event {entry.event_id}): the look-up column {column} disagrees with the "  # type: ignore[attr-defined]
        "event [audit.altered]"
    ]


def test_a_replayed_row_is_named(filled: AuditLog) -> None:
    """An old row copied to the end (a new event_id column, as the unique index wants),
    the state advanced: the copy's event does not carry that id."""
    old = _row(filled, 3)
    frontier = Frontier()
    for leaf in [*filled.leaf_hashes(), old.leaf_hash]:  # type: ignore[attr-defined]
        frontier = frontier.append(leaf)
    _exec(
        filled,
        sa.insert(entries).values(
            idx=20,
            event_id="0d2c6e7a-replay",
            recorded=old.recorded,  # type: ignore[attr-defined]
            kind=old.kind,  # type: ignore[attr-defined]
            patient=old.patient,  # type: ignore[attr-defined]
            partner=old.partner,  # type: ignore[attr-defined]
            canonical=old.canonical,  # type: ignore[attr-defined]
            leaf_hash=old.leaf_hash,  # type: ignore[attr-defined]
            root=frontier.root(),
        ),
        sa.update(state).values(size=21, frontier=b"".join(frontier.hashes)),
    )
    assert _lines(filled) == [
        "entry 20 (event 0d2c6e7a-replay): the event's id is not the one it was logged under "
        "[audit.altered]"
    ]
