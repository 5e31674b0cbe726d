"""`gateway audit transfers` counts individuals, not identifiers: a decision's Patient is
one individual by all its pseudonyms, and decisions whose sets share a pseudonym are one
person — unless that person would hold two different identifiers of one system (a
placeholder HKID several patients carry: each its own). Decisions and counters kept
before migration 0012 (no pseudonym sets, pseudonyms without their system's tag): each
of their pseudonyms counts alone, joined to a later record's person that names it;
their counter rows are each their own individual."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import orjson
import sqlalchemy as sa

import gateway.policy  # noqa: F401  (its tables join the store's metadata)
from gateway.audit._transfers import render, transfers
from gateway.store import Store

# Keyed pseudonyms (any text here): 王伟's MRN and resident ID, 李娜's MRN, 陈大文's
# HKID, 张三's MRN, the placeholder HKID a desk types for an unknown one.
WANG_MRN, WANG_ID, LI_MRN, CHAN_HKID = "ps-wang-mrn", "ps-wang-id", "ps-li-mrn", "ps-chan-hkid"
ZHANG_MRN, UNKNOWN_HKID = "ps-zhang-mrn", "ps-hkid-unknown"


def mrn(p: str) -> str:  # as the policy stage stores them: tagged with their system
    return f"a1b2c3d4:{p}"


def rid(p: str) -> str:
    return f"e5f6a7b8:{p}"


def hkid(p: str) -> str:
    return f"0c0d0e0f:{p}"


_OLD_DECISION = sa.text(
    "INSERT INTO policy_decisions (message_id, decided_at, sender, recipient, purpose, "
    "outcome, basis, agreement, rules, changes, patients, current) VALUES (NULL, :at, "
    "'lax2', 'hkpmc', 'second-opinion', 'allow', 'national-standard-contract', NULL, "
    "'[]', '[]', :patients, :current)"
)
_OLD_COUNTER = sa.text(
    "INSERT INTO policy_counters (year, sender, basis, category, person, first_at) "
    "VALUES (2026, 'lax2', 'national-standard-contract', 'sensitive', :person, :at)"
)


def _decision(conn: sa.Connection, day: int, patients: list[str], people: object) -> None:
    conn.execute(
        sa.text(
            "INSERT INTO policy_decisions (message_id, decided_at, sender, recipient, "
            "purpose, outcome, basis, agreement, rules, changes, patients, current, people) "
            "VALUES (NULL, :at, 'lax2', 'hkpmc', 'second-opinion', 'allow', "
            "'national-standard-contract', NULL, '[]', '[]', :patients, :current, :people)"
        ),
        {
            "at": datetime(2026, 7, day),
            "patients": orjson.dumps(patients).decode(),
            "current": True,
            "people": orjson.dumps(people).decode(),
        },
    )


def test_one_patient_two_identifiers_is_one_individual(tmp_path: Path) -> None:
    store = Store.open(f"sqlite:///{tmp_path / 'gateway.db'}")
    try:
        with store.engine.begin() as conn:
            # 王伟 by MRN and resident ID (one Patient), again by the resident ID alone;
            # 李娜 by her MRN; a record of two patients: 李娜 and 陈大文.
            _decision(conn, 1, [WANG_MRN, WANG_ID], [[mrn(WANG_MRN), rid(WANG_ID)]])
            _decision(conn, 2, [WANG_ID], [[rid(WANG_ID)]])
            _decision(conn, 3, [LI_MRN], [[mrn(LI_MRN)]])
            _decision(conn, 4, [LI_MRN, CHAN_HKID], [[mrn(LI_MRN)], [hkid(CHAN_HKID)]])
        (row,) = transfers(store, 2026)
        assert (len(row.records), row.individuals) == (4, 3)
        assert row.to_json()["individuals"] == 3
        csv_text = render([row], 2026, "csv")
        assert csv_text.splitlines()[1].endswith(",4,3,0")
    finally:
        store.close()


def test_patients_sharing_a_placeholder_are_apart(tmp_path: Path) -> None:
    """王伟, 李娜 and 张三, different MRNs, one placeholder HKID: three people (the
    union through the placeholder made them one); 王伟 again by his MRN alone: his."""
    store = Store.open(f"sqlite:///{tmp_path / 'gateway.db'}")
    try:
        with store.engine.begin() as conn:
            for day, p in enumerate((WANG_MRN, LI_MRN, ZHANG_MRN), start=1):
                _decision(conn, day, [p, UNKNOWN_HKID], [[mrn(p), hkid(UNKNOWN_HKID)]])
            _decision(conn, 4, [WANG_MRN], [[mrn(WANG_MRN)]])
        (row,) = transfers(store, 2026)
        assert (len(row.records), row.individuals) == (4, 3)
        assert render([row], 2026, "csv").splitlines()[1].endswith(",4,3,0")
    finally:
        store.close()


def test_a_conflict_through_a_chain_joins_no_one(tmp_path: Path) -> None:
    """A{MRN m1, HKID x}, B{HKID x, resident ID y}, C{MRN m2, resident ID y}: B joins
    A, C would give that individual a second MRN: two people, not one."""
    store = Store.open(f"sqlite:///{tmp_path / 'gateway.db'}")
    try:
        with store.engine.begin() as conn:
            _decision(conn, 1, [], [[mrn(WANG_MRN), hkid(CHAN_HKID)]])
            _decision(conn, 2, [], [[hkid(CHAN_HKID), rid(WANG_ID)]])
            _decision(conn, 3, [], [[mrn(LI_MRN), rid(WANG_ID)]])
        (row,) = transfers(store, 2026)
        assert (len(row.records), row.individuals) == (3, 2)
    finally:
        store.close()


def test_rows_kept_before_migration_0012(tmp_path: Path) -> None:
    store = Store.open(f"sqlite:///{tmp_path / 'gateway.db'}", upgrade=False)
    try:
        store.upgrade("0011_link_patients")
        with store.engine.begin() as conn:
            at = datetime(2026, 7, 1)
            conn.execute(_OLD_DECISION, {"at": at, "patients": f'["{WANG_MRN}"]', "current": 1})
            conn.execute(_OLD_DECISION, {"at": at, "patients": f'["{LI_MRN}"]', "current": 1})
            conn.execute(_OLD_COUNTER, {"person": WANG_MRN, "at": at})
            conn.execute(_OLD_COUNTER, {"person": LI_MRN, "at": at})
        store.upgrade()
        with store.engine.connect() as conn:
            counted = conn.execute(
                sa.text("SELECT person, individual FROM policy_counters ORDER BY person")
            ).all()
            people = conn.execute(sa.text("SELECT people, consents FROM policy_decisions")).all()
        assert [tuple(r) for r in counted] == [(LI_MRN, LI_MRN), (WANG_MRN, WANG_MRN)]
        assert [tuple(r) for r in people] == [(None, None), (None, None)]
        (row,) = transfers(store, 2026)
        assert row.individuals == 2  # each old pseudonym alone
        with store.engine.begin() as conn:  # 王伟 again, now with both identifiers
            _decision(conn, 2, [WANG_MRN, WANG_ID], [[mrn(WANG_MRN), rid(WANG_ID)]])
        (row,) = transfers(store, 2026)
        assert (len(row.records), row.individuals) == (3, 2)
        with store.engine.begin() as conn:  # an old record of two pseudonyms (not made
            # before 0012, the safe side shown): its system not known, it joins no one
            # who holds a pseudonym it lacks (王伟 by his MRN: his resident ID)
            conn.execute(_OLD_DECISION, {"at": at, "patients": "[]", "current": 1})
            conn.execute(
                sa.text("UPDATE policy_decisions SET people = :p WHERE patients = '[]'"),
                {"p": orjson.dumps([[WANG_MRN, CHAN_HKID]]).decode()},
            )
        (row,) = transfers(store, 2026)
        assert row.individuals == 3
    finally:
        store.close()
