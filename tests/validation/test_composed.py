"""Validation by construction per Bundle (gateway/validation/_composed.py): a Bundle of a
known shape answered whole by its plan gives the reference validator's issues, in order
and at the same locations, after each kind of change a plan must see: a bound value, a
free value its type refuses, a reference retargeted or dangling, an entry added, removed
or moved, a residual invariant broken. Each mutated Bundle is checked three times by a
validator that has learnt the original (the third time from the plan's remembered
verdict), and each mutation changes the reference's verdict: a plan that answered from
what it learnt of the original would fail here."""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

from gateway import Settings
from gateway.errors import Issue
from gateway.pipeline import Converter
from gateway.validation import TRANSACTION_PROFILE, Validator
from gateway.validation._composed import Plan, _value_names, leaf_paths

from .conftest import REPO, needs_core
from .test_fast_path import _forget

pytestmark = needs_core

# values each primitive type's validator may refuse (one of them, for each type met)
BAD_VALUES = ("", " starts with a space", "2026-13-45T25:61:00", "not an id!", "x" * 70, "\t")

Bundle = dict[str, Any]


def _json(issues: list[Issue]) -> bytes:
    return orjson.dumps([dataclasses.asdict(i) for i in issues])


def _check(validator: Validator, bundle: Bundle) -> bytes:
    return _json(validator.check_bundle(copy.deepcopy(bundle), True, TRANSACTION_PROFILE))


def _learnt(bundle: Bundle) -> Validator:
    """A validator that answers ``bundle`` from its plan (learnt, remembered, answered)."""
    _forget()
    validator = Validator("construct")
    for _ in range(3):
        assert _check(validator, bundle) == b"[]"
    assert validator.bundles.hits == 1, "the plan must answer the original"
    return validator


def _agrees(validator: Validator, bundle: Bundle, original: bytes, *, answered: bool) -> None:
    """The mutated ``bundle`` gets the reference's verdict, which is not ``original``'s,
    three times: the third from its plan's memory when ``answered``, else never from a
    plan (a value no key holds: a free value refused, a reference to no entry, equal
    fullUrls)."""
    want = _check(Validator("reference"), bundle)
    assert want != original, "the mutation must change the verdict"
    hits = validator.bundles.hits
    for attempt in (1, 2, 3):
        before = validator.bundles.hits
        assert _check(validator, bundle) == want, f"attempt {attempt}"
    if answered:
        assert validator.bundles.hits == before + 1, "answered by the plan the third time"
    else:
        assert validator.bundles.hits == hits, "a plan answered what no key holds"


def _set(bundle: Bundle, path: tuple[str | int, ...], value: Any) -> Bundle:
    out = copy.deepcopy(bundle)
    node: Any = out
    for step in path[:-1]:
        node = node[step]
    node[path[-1]] = value
    return out


def _renamed(bundle: Bundle, old: str, new: str) -> Bundle:
    """Every string equal to ``old`` (a fullUrl and the references to it) made ``new``."""
    out: Bundle = orjson.loads(orjson.dumps(bundle).replace(orjson.dumps(old), orjson.dumps(new)))
    return out


def _resources(bundle: Bundle) -> list[tuple[int, Bundle]]:
    return [(n, e["resource"]) for n, e in enumerate(bundle["entry"]) if "resource" in e]


def test_a_bound_value_changed(bundles: list[tuple[str, Bundle]]) -> None:
    """A code the profile binds (a resource's status, intent, gender, priority; the
    Bundle's type)."""
    changed = 0
    for _, bundle in bundles:
        validator = _learnt(bundle)
        # (a document or a message: bdl-9 to bdl-12, settled by the type in the key)
        mutations = [_set(bundle, ("type",), kind) for kind in ("batch", "document", "message")]
        for n, resource in _resources(bundle):
            for key in ("status", "intent", "gender", "priority"):
                if isinstance(resource.get(key), str):
                    mutations.append(_set(bundle, ("entry", n, "resource", key), "no-such"))
        for mutated in mutations:
            _agrees(validator, mutated, b"[]", answered=True)
        changed += len(mutations)
    assert changed > 3 * len(bundles)


def _free_leaves(bundle: Bundle) -> list[tuple[tuple[str | int, ...], Any]]:
    """The path and validator of one free leaf per primitive validator of the plan."""
    _forget()
    validator = Validator("construct")
    _check(validator, bundle)
    (plan,) = validator.bundles.plans.values()
    assert isinstance(plan, Plan) and plan.shape.first is not None
    paths: list[tuple[str | int, ...]] = []
    leaf_paths(bundle, (), paths)
    one: dict[int, tuple[tuple[str | int, ...], Any]] = {}
    for n, adapter, ident in plan.shape.first[1]:
        one.setdefault(ident, (paths[n], adapter))
    return list(one.values())


def _refused(adapter: Any) -> str | None:
    for value in BAD_VALUES:
        try:
            adapter.validate_python(value)
        except Exception:  # pydantic's, or fhir.resources' own validators'
            return value
    return None


def test_a_free_value_made_invalid_in_each_primitive_type(
    bundles: list[tuple[str, Bundle]],
) -> None:
    """A value only its primitive type's validator reads (an identifier, a date, a
    name...): the plan checks them all, per validator, over the whole Bundle."""
    types = set()
    for _, bundle in bundles:
        validator = _learnt(bundle)
        for path, adapter in _free_leaves(bundle):
            bad = _refused(adapter)
            if bad is None:
                continue  # a plain string: any value goes
            types.add(str(adapter.core_schema.get("type")) + str(path[-1]))
            _agrees(validator, _set(bundle, path, bad), b"[]", answered=False)
    assert len(types) >= 4, types


def _references(bundle: Bundle) -> list[tuple[str | int, ...]]:
    paths: list[tuple[str | int, ...]] = []
    leaf_paths(bundle, (), paths)
    return [path for path in paths if path[-1] == "reference"]


def test_a_reference_retargeted(bundles: list[tuple[str, Bundle]]) -> None:
    """A reference to an entry of another type (the profiles' target types), or to none."""
    retargeted = 0
    for _, bundle in bundles:
        validator = _learnt(bundle)
        urls = {e["fullUrl"]: e["resource"]["resourceType"] for e in bundle["entry"]}
        reference = Validator("reference")
        for path in _references(bundle):
            old: Any = bundle
            for step in path:
                old = old[step]
            for url, rtype in urls.items():
                mutated = _set(bundle, path, url)
                if rtype == urls.get(old) or _check(reference, mutated) == b"[]":
                    continue  # the same type, or one the profile allows
                _agrees(validator, mutated, b"[]", answered=True)
                retargeted += 1
                break
            dangling = _set(bundle, path, "urn:uuid:00000000-0000-0000-0000-000000000000")
            _agrees(validator, dangling, b"[]", answered=False)
    assert retargeted >= 3


def test_an_entry_added_removed_or_moved(bundles: list[tuple[str, Bundle]]) -> None:
    """Another Bundle shape: the per-resource path, then the new shape's own plan; an
    issue of a moved entry moves with it."""
    for _, bundle in bundles:
        validator = _learnt(bundle)
        entries = bundle["entry"]
        extra = copy.deepcopy(entries[-1])
        extra["fullUrl"] = "urn:uuid:11111111-1111-4111-8111-111111111111"
        extra["resource"]["id"] = "11111111-1111-4111-8111-111111111111"
        referenced = {p for path in _references(bundle) for p in [_at(bundle, path)]}
        kept = [e for e in entries if e["fullUrl"] in referenced]
        n, key = next(
            (n, key)
            for n, resource in _resources(bundle)[:-1]
            for key in ("status", "intent", "gender")
            if key in resource
        )
        broken = _set(bundle, ("entry", n, "resource", key), "no-such")  # a binding issue
        learnt = _learnt_broken(broken)
        original = _check(learnt, broken)
        moved = copy.deepcopy(broken)
        moved["entry"][n], moved["entry"][n + 1] = moved["entry"][n + 1], moved["entry"][n]
        _agrees(learnt, moved, original, answered=True)
        for mutated in (
            {**bundle, "entry": [*entries, extra, copy.deepcopy(extra)]},  # bdl-7
            {**bundle, "entry": kept[:-1] + entries[len(kept) :]},  # a referenced one gone
            {**bundle, "entry": [*entries[:1], entries[1], entries[1], *entries[2:]]},
        ):
            _agrees(validator, mutated, b"[]", answered=False)


def _at(bundle: Bundle, path: tuple[str | int, ...]) -> Any:
    node: Any = bundle
    for step in path:
        node = node[step]
    return node


def _learnt_broken(bundle: Bundle) -> Validator:
    _forget()
    validator = Validator("construct")
    want = _check(Validator("reference"), bundle)
    assert want != b"[]"
    for _ in range(3):
        assert _check(validator, bundle) == want
    assert validator.bundles.hits == 1
    return validator


def _with_url(bundle: Bundle, n: int, change: Callable[[str], str]) -> Bundle:
    """Entry ``n``'s fullUrl changed, with every reference to it."""
    old = bundle["entry"][n]["fullUrl"]
    return _renamed(bundle, old, change(old))


def test_a_residual_invariant_broken(bundles: list[tuple[str, Bundle]]) -> None:
    """Invariants that read free values (fullUrls: bdl-8, gw-bun-1), run on every Bundle
    of the shape; their outcomes are in the key."""
    for _, bundle in bundles:
        validator = _learnt(bundle)
        for n in (0, len(bundle["entry"]) - 1):
            for change in (
                lambda url: url + "/_history/2",  # bdl-8
                lambda url: "https://example.org/fhir/" + url.rsplit(":", 1)[-1],  # gw-bun-1
            ):
                _agrees(validator, _with_url(bundle, n, change), b"[]", answered=True)


def test_a_recurring_feed_is_answered_whole(tmp_path: Path) -> None:
    """Fresh messages of one feed: after the first two, each Bundle answered by one plan
    look-up, with the verdict the reference path gives."""
    conv = Converter(Settings.load(home=tmp_path, env={}))
    text = (REPO / "examples" / "hl7v2" / "ref_i12_hkpmc_to_nsch.hl7").read_bytes()
    reference = Validator("reference")
    for k in range(6):
        data = text.replace(b"|20", f"|{19 - k}".encode()).replace(b"^^^", f"{k}^^^".encode())
        record = conv.convert(data)[0]
        assert record.ok, record.issues
        plain = orjson.loads(orjson.dumps(record.mapped))
        assert _check(reference, plain) == b"[]"
    assert conv.validator.bundles.hits >= 3


@pytest.mark.parametrize(
    ("expression", "values"),
    [
        ("status = 'final' implies (conclusion.exists() or result.exists())", {"status"}),
        ("identifier.where(system = 'x' and value.exists()).exists()", {"identifier", "system"}),
        ("(identifier.count() + name.count()) > 0", set()),
        ("timestamp.hasValue() and fullUrl.startsWith('urn:')", {"fullUrl", "and"}),
        ("value.exists() implies value > 0", {"value", "implies"}),  # read once: read
        ("%resource.code.exists()", None),  # past its node
        ("$this.value.exists()", None),
    ],
)
def test_which_values_an_invariant_reads(expression: str, values: set[str] | None) -> None:
    """A residual invariant is settled by the plan's key when each value it may read is
    bound: the values it reads are all names but the functions and those it only tests
    for presence (the shape holds which elements exist)."""
    found = _value_names(expression)
    assert (None if found is None else found - {"implies", "and", "or"}) == (
        None if values is None else values - {"implies", "and", "or"}
    )


def test_the_plans_are_bounded_in_bytes(
    bundles: list[tuple[str, Bundle]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Plans and verdicts count their bytes (a Bundle shape is a few KB), and the table
    is emptied when it would pass its bound."""
    validator = _learnt(bundles[0][1])
    (((shape, _, _), plan),) = validator.bundles.plans.items()
    assert plan is not None and sum(len(part) for part in shape) > 1_000
    assert validator.bundles.size > sum(len(part) for part in shape) + plan.size
    limit = validator.bundles.size + 1
    monkeypatch.setattr("gateway.validation._composed.MAX_BYTES", limit)
    for _, bundle in bundles[1:]:
        _check(validator, bundle)
        assert validator.bundles.size <= limit
        assert len(validator.bundles.plans) == 1, "the table must be emptied when full"


def test_a_needle_is_looked_for_where_its_invariant_reads(
    bundles: list[tuple[str, Bundle]],
) -> None:
    """bdl-8's text (``/_history/``) is looked for in the values the invariant reads, the
    entries' fullUrls (_composed._haystacks), not in the whole Bundle: in an identifier it
    breaks nothing and the plan still answers; in a fullUrl the reference's issue."""
    for _, bundle in bundles:
        validator = _learnt(bundle)
        (plan,) = [p for p in validator.bundles.plans.values() if p is not None]
        assert plan.needles and None not in plan.needles.values(), "the fullUrls alone"
        places = [
            (n, i)
            for n, resource in _resources(bundle)
            for i, identifier in enumerate(resource.get("identifier", []))
            if isinstance(identifier.get("value"), str)
        ]
        assert places
        for n, i in places[:2]:
            path = ("entry", n, "resource", "identifier", i, "value")
            elsewhere = _set(bundle, path, str(_at(bundle, path)) + "/_history/2")
            assert _check(Validator("reference"), elsewhere) == b"[]"
            for _ in range(3):
                assert _check(validator, elsewhere) == b"[]"
        hits = validator.bundles.hits
        broken = _with_url(bundle, 0, lambda url: url + "/_history/2")
        _agrees(validator, broken, b"[]", answered=True)
        assert validator.bundles.hits > hits


def _observation(bundle: Bundle) -> int:
    (n,) = [n for n, r in _resources(bundle) if r["resourceType"] == "Observation"][:1]
    return n


def _residual_keys(validator: Validator) -> set[str]:
    plans = [p for p in validator.bundles.plans.values() if p is not None]
    return {inv.key for plan in plans for inv, _, _ in plan.residual}


def test_an_invariant_the_shape_settles_is_not_run(tmp_path: Path) -> None:
    """obs-7 (``value.empty() or component.code.where(...).empty()``) holds on every
    Observation without a component: its plan does not run it (_invariants._filtered).
    An Observation whose component appears in the next message and goes again, one whose
    component repeats its code (obs-7 broken): each the reference's verdict, answered by
    its plan the third time."""
    conv = Converter(Settings.load(home=tmp_path, env={}))
    record = conv.convert(
        (REPO / "tests" / "golden" / "hl7v2" / "oru_r01_cobranded.hl7").read_bytes()
    )[0]
    assert record.ok and record.mapped is not None, record.issues
    bundle: Bundle = orjson.loads(orjson.dumps(record.mapped))
    n = _observation(bundle)
    assert "component" not in bundle["entry"][n]["resource"]
    validator = _learnt(bundle)
    assert "obs-7" not in _residual_keys(validator), "settled by the shape"
    code = bundle["entry"][n]["resource"]["code"]
    other = {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]}
    holding = _set(bundle, ("entry", n, "resource", "component"), [{"code": other}])
    broken = _set(bundle, ("entry", n, "resource", "component"), [{"code": code}])
    reference = Validator("reference")
    assert b"obs-7" not in _check(reference, holding)
    assert b"obs-7" in _check(reference, broken)
    for mutated in (holding, bundle, broken, holding):
        want = _check(reference, mutated)
        before = validator.bundles.hits
        for attempt in (1, 2, 3):
            assert _check(validator, mutated) == want, f"attempt {attempt}"
        assert validator.bundles.hits > before, "answered by its plan"
    assert "obs-7" in _residual_keys(validator), "run where a component is"


def _put(bundle: Bundle, n: int, url: str) -> Bundle:
    """Entry ``n`` made a PUT to ``url`` (its ifNoneExist dropped)."""
    out = copy.deepcopy(bundle)
    out["entry"][n]["request"] = {"method": "PUT", "url": url}
    return out


def test_a_conditional_entry_broken(bundles: list[tuple[str, Bundle]]) -> None:
    """gw-bun-2 reads a PUT's URL (a free value, new in each Bundle): a PUT to a URL
    without ``?identifier=`` under the plan learnt from one with it, and a POST that
    lost its ifNoneExist; each outcome is in the key."""
    broken = 0
    for _, bundle in bundles:
        for n, entry in enumerate(bundle["entry"]):
            rtype = entry["resource"]["resourceType"]
            if entry.get("request", {}).get("method") != "POST" or rtype == "Provenance":
                continue
            valid = _put(bundle, n, f"{rtype}?identifier=https://example.org/sid|{n}")
            if _check(Validator("reference"), valid) != b"[]":
                continue
            validator = _learnt(valid)
            for url in (f"{rtype}/{n}", f"{rtype}?name=identifier"):
                _agrees(validator, _put(bundle, n, url), b"[]", answered=True)
            validator = _learnt(bundle)
            del_ifnoneexist = copy.deepcopy(bundle)
            del_ifnoneexist["entry"][n]["request"].pop("ifNoneExist", None)
            if del_ifnoneexist != bundle:
                _agrees(validator, del_ifnoneexist, b"[]", answered=True)
            broken += 1
            break
    assert broken >= 2
