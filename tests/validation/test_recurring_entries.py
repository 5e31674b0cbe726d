"""A Bundle split entry by entry (gateway/validation/_composed.py, ``split_entries``): an
entry met before byte for byte is taken from ``Splits`` instead of being split again,
and the Bundle's plan is keyed by its parts' shapes in order. What was learnt from an
entry's bytes is its split alone, never what its references resolve to: those resolve
against the fullUrls of the Bundle at hand. Each test here changes what a recurring
entry means without changing its bytes (its target gone or of another type, its place,
its neighbour), and requires the reference walk's issues, byte for byte."""

from __future__ import annotations

import copy
import random
from typing import Any

import orjson
import pytest

from gateway.validation import Validator, _composed, _construct

from .conftest import needs_core
from .test_composed import (
    Bundle,
    _agrees,
    _at,
    _check,
    _learnt,
    _learnt_broken,
    _references,
    _resources,
    _set,
)

pytestmark = needs_core


def _recurring(validator: Validator, bundle: Bundle) -> int:
    """How many of ``bundle``'s entries ``validator`` knows by their bytes."""
    splits = validator.bundles.splits
    count = 0
    for entry in bundle["entry"]:
        content = orjson.dumps(entry, option=_construct.OPTIONS)
        key = content[: _composed._EDGE] + content[-_composed._EDGE :]
        count += any(known == content for known, _ in splits.known.get(key, ()))
    return count


def test_a_learnt_bundle_recognises_its_entries(bundles: list[tuple[str, Bundle]]) -> None:
    """The premise of the tests below: every entry of a Bundle checked three times is
    known by its bytes (a fresh copy's dicts, the same JSON)."""
    for _, bundle in bundles:
        validator = _learnt(bundle)
        assert _recurring(validator, bundle) == len(bundle["entry"])


def test_a_recurring_entry_whose_target_is_gone(bundles: list[tuple[str, Bundle]]) -> None:
    """The entry a recurring entry references changes its fullUrl (or leaves the Bundle):
    the recurring entry's bytes are the same, its reference now dangles."""
    gone = 0
    for _, bundle in bundles:
        validator = _learnt(bundle)
        urls = [entry["fullUrl"] for entry in bundle["entry"]]
        for path in _references(bundle):
            target = _at(bundle, path)
            if target not in urls or path[1] == urls.index(target):
                continue
            n = urls.index(target)
            moved = _set(bundle, ("entry", n, "fullUrl"), "urn:uuid:" + "0" * 8 + target[17:])
            without = {
                **copy.deepcopy(bundle),
                "entry": bundle["entry"][:n] + bundle["entry"][n + 1 :],
            }
            for mutated in (moved, without):
                assert _recurring(validator, mutated) >= len(mutated["entry"]) - 1
                _agrees(validator, mutated, b"[]", answered=False)
            gone += 1
    assert gone >= 3


def test_a_recurring_entry_whose_target_changes_type(bundles: list[tuple[str, Bundle]]) -> None:
    """Two entries trade fullUrls (their references left as they were): a recurring
    entry's reference now names an entry of another type, which its profile may refuse."""
    traded = 0
    for _, bundle in bundles:
        validator = _learnt(bundle)
        entries = bundle["entry"]
        for a in range(len(entries)):
            for b in range(a + 1, len(entries)):
                mutated = _set(bundle, ("entry", a, "fullUrl"), entries[b]["fullUrl"])
                mutated["entry"][b]["fullUrl"] = entries[a]["fullUrl"]
                if _check(Validator("reference"), mutated) == b"[]":
                    continue  # no reference to either, or the types both allowed
                _agrees(validator, mutated, b"[]", answered=True)
                traded += 1
                if traded % 3 == 0:
                    break  # (a few a Bundle)
    assert traded >= 3


def test_recurring_entries_beside_a_mutated_one(bundles: list[tuple[str, Bundle]]) -> None:
    """All entries but one recur; that one holds a bound value its profile refuses, or a
    free value its type refuses: the verdict is that entry's, at its place."""
    mutated_count = 0
    for _, bundle in bundles:
        validator = _learnt(bundle)
        for n, resource in _resources(bundle):
            for key, value, answered in (
                ("status", "no-such", True),
                ("status", "", True),  # the same length: "x" for its first letter
                ("gender", "no-such", True),
                ("id", "not an id!", False),
            ):
                if not isinstance(resource.get(key), str):
                    continue
                value = value or "x" + resource[key][1:]
                mutated = _set(bundle, ("entry", n, "resource", key), value)
                assert _recurring(validator, mutated) == len(mutated["entry"]) - 1
                _agrees(validator, mutated, b"[]", answered=answered)
                mutated_count += 1
    assert mutated_count >= 6


def test_the_same_entries_in_another_order(bundles: list[tuple[str, Bundle]]) -> None:
    """A Bundle whose entries are all known by their bytes, in another order: another
    plan, and an issue of an entry at its new place (a key that held the parts but not
    their order would answer the first order's locations)."""
    rng = random.Random(18)
    for _, bundle in bundles:
        n, key = next(
            (n, key)
            for n, resource in _resources(bundle)
            for key in ("status", "intent", "gender")
            if key in resource
        )
        broken = _set(bundle, ("entry", n, "resource", key), "no-such")
        validator = _learnt_broken(broken)
        original = _check(validator, broken)
        for _ in range(3):
            order = list(range(len(broken["entry"])))
            while order.index(n) == n:
                rng.shuffle(order)
            shuffled = {**copy.deepcopy(broken), "entry": [broken["entry"][k] for k in order]}
            assert _recurring(validator, shuffled) == len(shuffled["entry"])
            _agrees(validator, shuffled, original, answered=True)


def _whole(bundle: Bundle) -> tuple[list[bytes], list[str]]:
    found = _construct.split(orjson.dumps(bundle, option=_construct.OPTIONS))
    assert found is not None
    return found[1], [found[2](leaf) for leaf in found[1]]


def test_entry_by_entry_gives_the_whole_split_leaves(bundles: list[tuple[str, Bundle]]) -> None:
    """The leaves split_entries gives (and their strings) are the whole Bundle's split's,
    with escapes in the shell, in a recurring entry or in none; a Bundle whose last key is
    not ``entry`` is not taken (its leaves would come out of order)."""
    odd = ('say "hi"', "back\\slash", 'both \\" of them', "plain")
    for _, bundle in bundles:
        splits = _composed.Splits()
        for value in odd:
            for where in (("identifier", "value"), ("entry", 0, "resource", "id")):
                changed = copy.deepcopy(bundle)
                node: Any = changed
                for step in where[:-1]:
                    node = node[step]
                node[where[-1]] = value
                for _ in range(2):  # split, then known
                    found = _composed.split_entries(changed, splits)
                    assert found is not None
                    _, leaves, decode = found
                    assert (leaves, [decode(leaf) for leaf in leaves]) == _whole(changed)
        first = {"entry": bundle["entry"], **{k: v for k, v in bundle.items() if k != "entry"}}
        assert _composed.split_entries(first, splits) is None


def test_a_bundle_not_ending_in_its_entries(bundles: list[tuple[str, Bundle]]) -> None:
    """Its entries first: the whole Bundle split, and the reference's verdict."""
    for _, bundle in bundles:
        first = {"entry": bundle["entry"], **{k: v for k, v in bundle.items() if k != "entry"}}
        validator = _learnt(first)
        _agrees(validator, _set(first, ("type",), "no-such"), b"[]", answered=True)


def test_the_splits_are_bounded_in_bytes(
    bundles: list[tuple[str, Bundle]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Entries' splits count their bytes, kept the second time met; the table is emptied
    when it would pass its bound."""
    validator = _learnt(bundles[0][1])
    splits = validator.bundles.splits
    learnt = sum(len(content) for bucket in splits.known.values() for content, _ in bucket)
    assert splits.size > 2 * learnt > 0
    limit = splits.size + 1
    monkeypatch.setattr("gateway.validation._composed.MAX_SPLIT_BYTES", limit)
    emptied = False
    for _, bundle in bundles[1:]:
        for _ in range(2):
            before = splits.size
            _check(validator, bundle)
            assert splits.size <= limit
            emptied = emptied or splits.size < before
    assert emptied, "the table must be emptied when full"
