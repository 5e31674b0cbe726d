"""Two imports of one Consent at once (two API workers, PostgreSQL): each is a version
of its own (meta.versionId 2 and 3, never two versions 2, the first overwritten without
a trace). The stored version is read under a row lock in the import's transaction. On
SQLite the write transaction (BEGIN IMMEDIATE) already orders them."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
import sqlalchemy as sa

from gateway.audit import AuditLog
from gateway.policy import ConsentRecord, Policy, PolicyError, PolicyRecords
from gateway.store import Store
from tests.store.dbs import BACKENDS, opened_store

from .conftest import HKID, consent


@pytest.fixture(params=BACKENDS)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    yield from opened_store(request.param, tmp_path)


def test_two_imports_of_one_consent_at_once_are_two_versions(store: Store, policy: Policy) -> None:
    records = PolicyRecords(store, policy)
    first = consent((HKID, "K583726A"), "HKPMC")
    assert records.import_consent(first)[0].version == 1
    other: list[ConsentRecord] = []
    errors: list[BaseException] = []

    def meanwhile() -> None:
        try:
            other.append(PolicyRecords(store, policy).import_consent(first)[0])
        except BaseException as exc:  # reported below
            errors.append(exc)

    racer = threading.Thread(target=meanwhile)

    def on_update(_conn: object, _cursor: object, statement: str, *_: object) -> None:
        # the first import has read the stored version and is about to write its own:
        # the second runs now (with the row locked, it waits for the first to commit)
        writes = statement.lstrip().upper().startswith("UPDATE POLICY_CONSENTS")
        if writes and racer.ident is None:  # once, in the first import only
            racer.start()
            racer.join(2.0)

    sa.event.listen(store.engine, "before_cursor_execute", on_update)
    try:
        mine = records.import_consent(first)[0]
    finally:
        sa.event.remove(store.engine, "before_cursor_execute", on_update)
    racer.join(30.0)
    assert not errors and len(other) == 1, errors
    assert {mine.version, other[0].version} == {2, 3}
    stored = records.list_consents()
    assert [orjson.loads(c.resource)["meta"]["versionId"] for c in stored] == ["3"]


def test_two_imports_with_one_if_match_at_once_one_is_refused(store: Store, policy: Policy) -> None:
    """Both name version 1 in If-Match: the check is made under the row lock, so the
    second sees version 2 and is refused (412), never both stored on one precondition."""
    records = PolicyRecords(store, policy)
    first = consent((HKID, "K583726A"), "HKPMC")
    records.import_consent(first)
    other: list[ConsentRecord] = []
    errors: list[BaseException] = []

    def meanwhile() -> None:
        try:
            other.append(PolicyRecords(store, policy).import_consent(first, if_match=["1"])[0])
        except BaseException as exc:  # reported below
            errors.append(exc)

    racer = threading.Thread(target=meanwhile)

    def on_update(_conn: object, _cursor: object, statement: str, *_: object) -> None:
        writes = statement.lstrip().upper().startswith("UPDATE POLICY_CONSENTS")
        if writes and racer.ident is None:
            racer.start()
            racer.join(2.0)

    sa.event.listen(store.engine, "before_cursor_execute", on_update)
    try:
        mine = records.import_consent(first, if_match=["1"])[0]
    finally:
        sa.event.remove(store.engine, "before_cursor_execute", on_update)
    racer.join(30.0)
    assert mine.version == 2 and other == []
    [refused] = errors
    assert isinstance(refused, PolicyError) and refused.code == "policy.consent-version-conflict"
    assert "version 2 is on file" in str(refused)


def test_withdrawing_twice_is_one_version_and_one_event(store: Store, policy: Policy) -> None:
    """A repeated withdrawal (a retry, the CLI run twice) answers the withdrawn version:
    no version 3, no second consent event."""
    records = PolicyRecords(store, policy)
    records.import_consent(consent((HKID, "K583726A"), "HKPMC"))
    first = records.withdraw("consent-1", operator="dpo")
    events = [e for e in AuditLog(store).rows() if e.kind == "consent"]
    again = records.withdraw("consent-1", operator="dpo")
    assert again == first and again.version == 2 and again.status == "inactive"
    assert [e for e in AuditLog(store).rows() if e.kind == "consent"] == events
    assert [c.version for c in records.list_consents()] == [2]


def test_two_first_imports_of_one_new_consent_at_once(store: Store, policy: Policy) -> None:
    """Two imports of a Consent id not on file, at once (two API workers or CLI runs,
    two connections): neither reads a row to lock, both insert. The one whose insert
    meets the other's committed row (PostgreSQL: the unique key; it failed with an
    IntegrityError, a 500 on the API) is imported again, once, as FHIR's update of the
    version now on file: versions 1 and 2, as when they come one after the other (and as
    on SQLite, where BEGIN IMMEDIATE orders them); exactly one version 1."""
    records = PolicyRecords(store, policy)
    sent = consent((HKID, "K583726A"), "HKPMC")
    other: list[ConsentRecord] = []
    errors: list[BaseException] = []

    def meanwhile() -> None:
        try:
            other.append(PolicyRecords(store, policy).import_consent(sent)[0])
        except BaseException as exc:  # reported below
            errors.append(exc)

    racer = threading.Thread(target=meanwhile)

    def on_insert(_conn: object, _cursor: object, statement: str, *_: object) -> None:
        # the first import found no row and is about to insert one: the second runs now
        # (PostgreSQL: it finds no row either, inserts and commits; SQLite: it waits for
        # the first's write transaction)
        writes = statement.lstrip().upper().startswith("INSERT INTO POLICY_CONSENTS")
        if writes and racer.ident is None:  # once, in the first import only
            racer.start()
            racer.join(2.0)

    sa.event.listen(store.engine, "before_cursor_execute", on_insert)
    try:
        mine = records.import_consent(sent)[0]
    finally:
        sa.event.remove(store.engine, "before_cursor_execute", on_insert)
    racer.join(30.0)
    assert not errors and len(other) == 1, errors
    assert sorted([mine.version, other[0].version]) == [1, 2]
    [stored] = records.list_consents()
    assert stored.version == 2 and stored.id == "consent-1"
    # each version made is recorded: two consent events, one per import
    assert len([e for e in AuditLog(store).rows() if e.kind == "consent"]) == 2
