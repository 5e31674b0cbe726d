"""`gateway audit transfers` counts individuals, not identifiers: a decision's Patient is
one individual by all its pseudonyms, and decisions whose sets share a pseudonym are one
person. Decisions and counters kept before migration 0013 (no pseudonym sets): each of
their pseudonyms counts alone, joined to a later record's person that names it; their
counter rows are each their own individual."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import orjson
import sqlalchemy as sa

import gateway.policy  # noqa: F401  (its tables join the store's metadata)
from gateway.audit._transfers import render, transfers
from gateway.store import Store

# Keyed pseudonyms as the policy stage writes them (any text here): 王伟's MRN and
# resident ID, 李娜's MRN, 陈大文's HKID.
WANG_MRN, WANG_ID, LI_MRN, CHAN_HKID = "ps-wang-mrn", "ps-wang-id", "ps-li-mrn", "ps-chan-hkid"

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
            _decision(conn, 1, [WANG_MRN, WANG_ID], [[WANG_MRN, WANG_ID]])
            _decision(conn, 2, [WANG_ID], [[WANG_ID]])
            _decision(conn, 3, [LI_MRN], [[LI_MRN]])
            _decision(conn, 4, [LI_MRN, CHAN_HKID], [[LI_MRN], [CHAN_HKID]])
        (row,) = transfers(store, 2026)
        assert (len(row.records), row.individuals) == (4, 3)
        assert row.to_json()["individuals"] == 3
        csv_text = render([row], 2026, "csv")
        assert csv_text.splitlines()[1].endswith(",4,3,0")
    finally:
        store.close()


def test_rows_kept_before_migration_0013(tmp_path: Path) -> None:
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
            _decision(conn, 2, [WANG_MRN, WANG_ID], [[WANG_MRN, WANG_ID]])
        (row,) = transfers(store, 2026)
        assert (len(row.records), row.individuals) == (3, 2)
    finally:
        store.close()
