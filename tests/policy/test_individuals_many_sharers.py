"""Counting people when thousands share one identifier (a placeholder HKID typed for
every "unknown" patient): the counts are the same as comparing every set with every
individual holding one of its pseudonyms (the rule of docs/policy.md, "Who is an
individual"), and the work grows with the sets, not with their square — checked by the
number of exact comparisons made, never by time (bench/bench_policy.py measures)."""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Iterable, Mapping

import pytest

from gateway.audit import _transfers
from gateway.audit._transfers import _conflict, _Individual, individuals, join_people


def reference(
    sets: Iterable[Iterable[str]], known: Mapping[str, Iterable[str]]
) -> list[tuple[list[str], list[str]]]:
    """The rule written plainly: each set compared, oldest first, with every living
    individual that holds one of its pseudonyms (quadratic when many share one)."""
    made: dict[_Individual, None] = {}
    holders: dict[str, dict[_Individual, None]] = defaultdict(dict)

    def keep(person: _Individual) -> None:
        made[person] = None
        for value in person.values:
            holders[value][person] = None

    for ident in sorted(known):
        person = _Individual(len(made), known={ident}, old=set(known[ident]))
        person.add(person.old)
        keep(person)
    for items in sets:
        person = _Individual(len(made), new=set(items))
        person.add(person.new)
        sharing = {i: None for v in person.values for i in holders.get(v, ()) if i.alive}
        for other in sorted(sharing, key=lambda i: i.order):
            if other.alive and not _conflict(other.values, person.values):
                older, younger = sorted((other, person), key=lambda i: i.order)
                older.absorb(younger)
                person = older
        keep(person)
    return [(sorted(p.new - p.old), sorted(p.known)) for p in made if p.alive and p.new]


def _counted(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The number of exact comparisons join_people makes (``_conflict`` calls)."""
    calls = [0]
    exact = _transfers._conflict

    def counting(a: dict[str, str], b: dict[str, str]) -> bool:
        calls[0] += 1
        return exact(a, b)

    monkeypatch.setattr(_transfers, "_conflict", counting)
    return calls


def test_three_thousand_patients_sharing_a_placeholder(monkeypatch: pytest.MonkeyPatch) -> None:
    """3,000 patients, each their own MRN, all the placeholder HKID; each sent twice
    (the second time by the MRN alone); 500 of them also by a resident ID; one record
    by the placeholder alone. 3,000 people; the work linear."""
    n = 3000
    sets: list[tuple[str, ...]] = [(f"mrn:m{i}", "hkid:unknown") for i in range(n)]
    sets += [(f"mrn:m{i}",) for i in range(n)]
    sets += [(f"mrn:m{i}", f"rid:r{i}") for i in range(0, n, 6)]
    sets.append(("hkid:unknown",))  # joins the first individual holding it (no conflict)
    calls = _counted(monkeypatch)
    assert individuals(sets) == n
    assert calls[0] < 4 * len(sets)  # comparing with every holder: ~n²/2 = 4.5 million
    found = join_people(sets, {})
    assert found[0] == (["hkid:unknown", "mrn:m0", "rid:r0"], [])
    assert sum(1 for fresh, _ in found if "hkid:unknown" in fresh) == n


def test_against_counted_individuals_holding_the_placeholder(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The counters' case: 3,000 individuals counted already hold the placeholder; a
    new patient with it and a new MRN is a new individual, a known one sent again is
    theirs — without comparing each set with the 3,000."""
    n = 3000
    known = {f"I{i:05d}": {f"mrn:m{i}", "hkid:unknown"} for i in range(n)}
    calls = _counted(monkeypatch)
    found = join_people([("mrn:new", "hkid:unknown"), ("mrn:m42", "hkid:unknown")], known)
    assert found == [([], ["I00042"]), (["hkid:unknown", "mrn:new"], [])]  # known first
    assert calls[0] < 10


@pytest.mark.parametrize("seed", range(200))
def test_the_same_individuals_as_the_plain_rule(seed: int) -> None:
    """Random records over few values and systems (shared values, chains, conflicts,
    untagged pseudonyms of rows older than migration 0012, individuals counted
    already): the same individuals, the same joins, as the rule written plainly."""
    rng = random.Random(seed)
    tags = ["mrn", "hkid", "ins", "rid"]

    def item() -> str:
        tag = rng.choice(tags)
        value = f"{tag}{rng.randrange(5)}"  # a pseudonym belongs to its system
        if seed % 4 == 0 and rng.random() < 0.15:
            return value  # untagged
        if seed % 5 == 0 and rng.random() < 0.1:
            tag = rng.choice(tags)  # two systems' tags on one pseudonym (a collision)
        return f"{tag}:{value}"

    def group() -> tuple[str, ...]:
        return tuple(item() for _ in range(rng.randint(1, 3)))

    known = {f"K{k}": set(group()) for k in range(rng.randrange(6))}
    sets = [group() for _ in range(rng.randint(5, 60))]
    assert join_people(sets, known) == reference(sets, known)
