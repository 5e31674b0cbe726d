"""The yearly counters when thousands share one identifier (a placeholder HKID): each
decision reads only the counted individuals its record may join — not every individual
holding the placeholder, which made a decision cost as much as the sharers and the
year's counting their square — and counts exactly as reading them all does (checked
against that read, on random records: shared values, chains, conflicts)."""

from __future__ import annotations

import contextlib
import random
import uuid
from collections.abc import Iterator, Sequence
from typing import Any

import pytest
import sqlalchemy as sa

from gateway.policy import _engine, _records
from gateway.policy._records import PolicyRecords, counters
from gateway.store import Store
from tests.store.dbs import database

WHERE = {"year": 2026, "sender": "lax2", "basis": "national-standard-contract", "category": "s"}


@pytest.fixture
def read(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """How many counted individuals each decision's join was given (join_people's
    ``known``), as the counters pass them."""
    sizes: list[int] = []
    join = _records.join_people

    def measured(people: Any, known: Any) -> Any:
        sizes.append(len(known))
        return join(people, known)

    monkeypatch.setattr(_records, "join_people", measured)
    yield sizes


def _count(store: Store, sets: Sequence[Sequence[str]]) -> list[int]:
    with store.engine.begin() as conn:
        return [PolicyRecords._count_people(conn, WHERE, [list(s)]) for s in sets]


def _individuals(store: Store) -> list[tuple[str, ...]]:
    """Each counted individual by its pseudonyms (not by its id: one made new where its
    first pseudonym is another's id gets a random suffix)."""
    held: dict[str, list[str]] = {}
    with store.engine.connect() as conn:
        for r in conn.execute(sa.select(counters.c.individual, counters.c.person)):
            held.setdefault(r.individual, []).append(r.person)
    return sorted(tuple(sorted(p)) for p in held.values())


def test_two_thousand_patients_sharing_a_placeholder(store: Store, read: list[int]) -> None:
    n = 2000
    sets = [(f"mrn:m{i:05d}", "hkid:unknown") for i in range(n)]
    sets += [(f"mrn:m{i:05d}", f"rid:r{i:05d}") for i in range(0, n, 10)]  # some again
    sets += [("hkid:unknown",)]  # the placeholder alone: the first holder's
    assert sum(_count(store, sets)) == 0  # nothing merged
    with store.engine.connect() as conn:
        assert conn.execute(_records._COUNT, WHERE).scalar_one() == n
    people = _individuals(store)
    assert len(people) == n and people[0] == ("hkid:unknown", "mrn:m00000", "rid:r00000")
    assert all("hkid:unknown" in p for p in people)
    # Each decision was given the individuals it could join (its own, if any), never
    # the thousands holding the placeholder — but the last: the placeholder alone may
    # be any of them's (it joins the first).
    # (Up to _FEW rows every holder is read: the first 128 decisions.)
    assert max(read[n:-1]) <= 1 and max(read[:-1]) <= _records._FEW // 2 and read[-1] == n


@pytest.mark.parametrize(
    ("backend", "seed"),
    [("sqlite", seed) for seed in range(30)] + [("postgresql", seed) for seed in range(10)],
)
def test_the_same_counts_as_reading_every_holder(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch, backend: str, seed: int
) -> None:
    """Random records (few values per system: shared ones, chains, conflicts, two
    Patients in one record, untagged rows), counted once reading every individual holding one of a
    record's pseudonyms and once reading only those it may join: the same rows, the
    same merges."""
    rng = random.Random(seed)
    tags = ["mrn", "hkid", "ins"]

    def item(tag: str) -> str:
        value = f"{tag}{rng.randrange(6)}"  # a pseudonym is of one system
        # Every third seed, a few untagged (as rows kept before migration 0012).
        return value if seed % 3 == 0 and rng.random() < 0.08 else f"{tag}:{value}"

    def group() -> list[str]:
        return [item(t) for t in rng.sample(tags, rng.randint(1, 3))]

    records = [[group() for _ in range(rng.choice((1, 1, 2)))] for _ in range(60)]
    results = []
    for few in (10**9, -1):  # every holder read (as before); only the joinable
        monkeypatch.setattr(_records, "_FEW", few)
        monkeypatch.setattr(
            _records, "_KNOWN_CAPPED", _records._KNOWN if few > 0 else _records._KNOWN_CAPPED
        )
        # The random suffix of an id made new (new_individual) made the same: ids
        # order the counted individuals a record is compared with.
        made = iter(uuid.UUID(int=n << 80) for n in range(1, 10**6))
        monkeypatch.setattr(_engine.uuid, "uuid4", made.__next__)
        # On PostgreSQL too: the joinable read's key ranges and set operations are SQL
        # of their own there (a schema per run, dropped after).
        (tmp_path / str(few)).mkdir()
        with contextlib.contextmanager(database)(backend, tmp_path / str(few)) as url:
            store = Store.open(url)
            try:
                with store.engine.begin() as conn:
                    merged = [
                        PolicyRecords._count_people(conn, WHERE, people) for people in records
                    ]
                results.append((merged, _individuals(store)))
            finally:
                store.close()
    assert results[0] == results[1]
