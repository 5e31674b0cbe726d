"""Done when: changing any single value anywhere in a signed Bundle fails verification
and names the signature that broke; reordering keys or changing whitespace does not.
An exhaustive walk over every leaf of the co-signed co-branded report."""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from typing import Any

import orjson
import pytest

from gateway.signing import TrustStore, verify_bundle

Path_ = tuple[str | int, ...]


def _leaves(value: Any, path: Path_ = ()) -> Iterator[Path_]:
    if isinstance(value, dict):
        for key, child in value.items():
            yield from _leaves(child, (*path, key))
    elif isinstance(value, list):
        for n, child in enumerate(value):
            yield from _leaves(child, (*path, n))
    else:
        yield path


def _changed(value: Any) -> Any:
    if isinstance(value, bool):
        return not value
    if isinstance(value, (int, float)):
        return value + 1
    if value is None:
        return "x"
    text = str(value)
    # one character changed, length kept (base64 stays base64-shaped)
    last = text[-1:] or "x"
    return text[:-1] + ("A" if last != "A" else "B")


def _set(bundle: Any, path: Path_, value: Any) -> None:
    target = bundle
    for step in path[:-1]:
        target = target[step]
    target[path[-1]] = value


def _signature_positions(bundle: dict[str, Any]) -> list[int]:
    return [
        n for n, e in enumerate(bundle["entry"]) if e["resource"]["resourceType"] == "Provenance"
    ]


def test_every_single_change_fails_and_names_the_signature(
    cosigned: dict[str, Any], trust: TrustStore
) -> None:
    assert verify_bundle(cosigned, trust).ok
    first, second = _signature_positions(cosigned)
    paths = list(_leaves(cosigned))
    assert len(paths) > 150
    for path in paths:
        tampered = copy.deepcopy(cosigned)
        _set(tampered, path, _changed(_get(cosigned, path)))
        report = verify_bundle(tampered, trust)
        where = "/".join(map(str, path))
        assert not report.ok, f"a change at {where} went unnoticed"
        if path == ("resourceType",):
            assert report.problem is not None and "not a FHIR Bundle" in report.problem.message
            continue
        broken = [s for s in report.signatures if not s.ok]
        assert broken, where
        for sig in broken:
            failed = [c for c in sig.checks if not c.ok]
            assert failed[0].message.startswith(f"signature {sig.index} ("), failed[0].message
        # which signatures break: content → both; the first Provenance → both (the
        # second covers it); the second Provenance or Bundle.signature → the second only
        indexes = {s.index for s in broken}
        if path[:2] in (("entry", first), ("entry", second)) and path[3:4] in (
            ("resourceType",),
            ("meta",),
        ):
            continue  # no longer a signature Provenance: the signatures are renumbered
        if path[0] == "signature" or (path[0] == "entry" and path[1] == second):
            assert indexes == {2}, (where, indexes)
        else:
            assert 2 in indexes and (path[0] != "entry" or path[1] != first or 1 in indexes)


def _get(bundle: Any, path: Path_) -> Any:
    for step in path:
        bundle = bundle[step]
    return bundle


def _reordered(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _reordered(value[k]) for k in reversed(list(value))}
    if isinstance(value, list):
        return [_reordered(v) for v in value]
    return value


@pytest.mark.parametrize("indent", [None, 1, 4])
def test_key_order_and_whitespace_do_not_matter(
    cosigned: dict[str, Any], trust: TrustStore, indent: int | None
) -> None:
    text = json.dumps(_reordered(cosigned), indent=indent, ensure_ascii=indent is None)
    report = verify_bundle(orjson.loads(text.encode()), trust)
    assert report.ok, report.failures()
    assert [(s.index, s.role) for s in report.signatures] == [(1, "author"), (2, "verification")]


def test_removing_the_second_signature_leaves_the_first_valid(
    cosigned: dict[str, Any], trust: TrustStore
) -> None:
    first_only = {**cosigned, "entry": cosigned["entry"][:-1]}
    first_only["signature"] = first_only["entry"][-1]["resource"]["signature"][0]
    report = verify_bundle(first_only, trust)
    assert report.ok and len(report.signatures) == 1
