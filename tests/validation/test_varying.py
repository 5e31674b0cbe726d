"""The varying leaves of a Bundle plan (the names, numbers, dates and fullUrls new in every
message: _construct._classify) are checked by one list validator per primitive type
(_construct._many) rather than a validator call per leaf. A list is accepted exactly when
each of its values is: on every primitive type the models use, and on a feed of fresh
messages, where a varying value made invalid (a bad date, a bad id, a time without its
zone, a blank string, a dangling reference) must stop the plan and give the reference
walk's issues."""

from __future__ import annotations

import copy
import dataclasses
import random
from pathlib import Path
from typing import Any

import orjson
import pytest
from fhir.resources.R4B import get_fhir_model_class

from gateway import Settings
from gateway.errors import Issue
from gateway.pipeline import Converter
from gateway.validation import TRANSACTION_PROFILE, Validator, _construct, _models
from gateway.validation._composed import Plan, _value, leaf_paths

from .conftest import REPO, needs_core

pytestmark = needs_core

# values some primitive type refuses, and values most accept
CANDIDATES = (
    "",
    " ",
    " starts with a space",
    "ends with a space ",
    "two  spaces",
    "\t",
    "\x07",
    "a\x0bb",
    "\x1c",
    "\u00a0",
    "é",
    "not an id!",
    "x" * 70,
    "1959-02-05",
    "1959-02-30",
    "1959-13",
    "2016-12-31T23:59:60Z",
    "2026-06-22T09:00:50",
    "2026-06-22T09:00:50+08:00",
    "2026-06-22T25:00:50+08:00",
    "2026-13-45T25:61:00",
    "0000",
    "urn:uuid:336d6e9e-0165-5b3f-9a38-0ef1661a0b3c",
    "urn:oid:1.2.3",
    "http://example.org/a b",
    "12.5",
    "true",
)
# refused values of a type's own form: a day the month lacks, a time without its zone, an
# hour past 23, an id with spaces and punctuation
LIKELY = ("1959-02-30", "2026-06-22T09:00:50", "2026-06-22T25:00:50+08:00", "not an id!")
TYPES = ("Bundle", "Patient", "ServiceRequest", "Observation", "DiagnosticReport", "Condition")


def _accepts(validator: Any, value: Any) -> bool:
    try:
        validator.validate_python(value)
    except Exception:  # pydantic's, or fhir.resources' own validators'
        return False
    return True


def _adapters() -> list[Any]:
    """Every primitive adapter the models of the gateway's resources check values with."""
    seen: dict[int, Any] = {}
    todo = [get_fhir_model_class(name) for name in TYPES]
    models: set[Any] = set()
    while todo:
        model = todo.pop()
        if model in models:
            continue
        models.add(model)
        for kind, target, ident in _models._fields(model).values():
            if kind == "prim":
                seen[ident] = target
            elif kind == "model":
                todo.append(target)
    return list(seen.values())


def test_a_list_is_accepted_exactly_when_each_value_is() -> None:
    adapters = _adapters()
    assert len(adapters) >= 10
    refusing = 0
    for adapter in adapters:
        many = _construct._many(adapter)
        good = [value for value in CANDIDATES if _accepts(adapter.validator, value)]
        for value in CANDIDATES:
            assert _accepts(many, [value]) == (value in good), (adapter.core_schema, value)
            if value not in good:
                refusing += 1
                # one bad value among good ones, anywhere in the run
                assert not _accepts(many, [*good, value]), (adapter.core_schema, value)
                assert not _accepts(many, [value, *good]), (adapter.core_schema, value)
        assert _accepts(many, good)
        assert _accepts(many, [])
    assert refusing > 20


Bundle = dict[str, Any]


def _json(issues: list[Issue]) -> bytes:
    return orjson.dumps([dataclasses.asdict(i) for i in issues])


def _check(validator: Validator, bundle: Bundle) -> bytes:
    return _json(validator.check_bundle(copy.deepcopy(bundle), True, TRANSACTION_PROFILE))


def _variant(text: bytes, k: int) -> bytes:
    """A fresh message: new dates, identifiers and names, the same shapes."""
    dated = text.replace(b"|20", f"|{19 - k % 10}".encode())
    return dated.replace(b"^^^", f"{k}^^^".encode()).replace(b"|\xe9", f"|{k}\xe9".encode())


def _set(bundle: Bundle, path: tuple[str | int, ...], value: Any) -> Bundle:
    out = copy.deepcopy(bundle)
    node: Any = out
    for step in path[:-1]:
        node = node[step]
    node[path[-1]] = value
    return out


def _plain(bundle: Any) -> Bundle:
    out: Bundle = orjson.loads(orjson.dumps(bundle))
    return out


@pytest.mark.parametrize("name", ["ref_i12_hkpmc_to_nsch.hl7", "orm_o01_lax2_ct.hl7"])
def test_a_varying_value_made_invalid_in_a_fresh_message(tmp_path: Path, name: str) -> None:
    conv = Converter(Settings.load(home=tmp_path, env={}))
    validator = conv.validator
    text = (REPO / "examples" / "hl7v2" / name).read_bytes()
    record = conv.convert(_variant(text, 1))[0]
    assert record.ok, record.issues
    (plan,) = [p for p in validator.bundles.plans.values() if p is not None]
    assert isinstance(plan, Plan) and plan.shape.first is not None
    paths: list[tuple[str | int, ...]] = []
    leaf_paths(record.mapped, (), paths)
    adapter_at = {paths[n]: adapter for n, adapter, _ in plan.shape.first[1]}
    hits = validator.bundles.hits
    fresh = []
    for k in range(2, 7):
        record = conv.convert(_variant(text, k))[0]
        assert record.ok, record.issues
        fresh.append(_plain(record.mapped))
    assert plan.shape.first is None and plan.shape.varying, "the feed's leaves are classified"
    assert validator.bundles.hits > hits, "fresh messages are answered by the plan"

    def values(bundle: Bundle) -> dict[tuple[str | int, ...], Any]:
        found: list[tuple[str | int, ...]] = []
        leaf_paths(bundle, (), found)
        return {path: _value(bundle, path) for path in found}

    before, after = values(fresh[-2]), values(fresh[-1])
    varying = [p for p in after if p in adapter_at and before.get(p) != after[p]]
    assert len(varying) >= 5
    reference = Validator("reference")
    kinds = set()
    for path in varying:
        adapter = adapter_at[path]
        bad = [v for v in CANDIDATES if not _accepts(adapter.validator, v)]
        # a few of them, a value of the type's own form first (a bad day, a bad id...)
        for value in sorted(bad, key=lambda v: v not in LIKELY)[:3]:
            mutated = _set(fresh[-1], path, value)
            content = orjson.dumps(mutated, option=_construct.OPTIONS)
            found = _construct.split(content)
            assert found is not None
            _, leaves, decode = found
            assert not validator.shapes.free_ok(plan.shape, leaves, decode), (path, value)
            want = _check(reference, mutated)
            assert want != b"[]", (path, value)
            assert _check(validator, mutated) == want, (path, value)
            kinds.add(str(adapter.core_schema.get("type")) + str(path[-1]))
        if path[-1] == "reference":
            dangling = _set(fresh[-1], path, "urn:uuid:00000000-0000-0000-0000-000000000000")
            want = _check(reference, dangling)
            assert want != b"[]"
            assert _check(validator, dangling) == want, path
            kinds.add("dangling")
    # a control character in each varying string: the reference's verdict, whatever it is
    for path in varying:
        value = _value(fresh[-1], path)
        mutated = _set(fresh[-1], path, value[:2] + "\x07\x1c" + value[2:])
        assert _check(validator, mutated) == _check(reference, mutated), path
    # the fresh message itself still passes, and from its plan
    hits = validator.bundles.hits
    assert _check(validator, fresh[-1]) == b"[]"
    assert validator.bundles.hits == hits + 1
    assert len(kinds) >= 6 and "dangling" in kinds, kinds
    assert any(kind.startswith("function-wrap") for kind in kinds), "a date, a time"


def _moments(rng: random.Random, count: int) -> list[str]:
    """Dates and times around the edges of each field (a day the month lacks, Feb 29, hour
    24, second 60, long fractions, zones past ±14:00, no zone) and plain ones."""
    out = []
    for _ in range(count):
        years = (999, 1000, 1900, 1959, 2000, 2023, 2024, 2100, 9999, rng.randint(1, 9999))
        year = rng.choice(years)
        day = f"{year:04d}-{rng.randint(0, 13):02d}-{rng.choice((1, 28, 29, 30, 31, 32, 0)):02d}"
        if rng.random() < 0.3:
            out.append(day)
            continue
        time = f"{rng.randint(0, 24):02d}:{rng.randint(0, 60):02d}:{rng.choice((0, 59, 60)):02d}"
        fraction = rng.choice(("", ".5", ".123456", ".1234567", "."))
        zone = rng.choice(("Z", "", "+08:00", "-05:30", "+14:00", "+14:01", "-13:59", "+24:00"))
        out.append(f"{day}T{time}{fraction}{zone}")
    return out


def test_a_full_date_form_is_accepted_by_its_type() -> None:
    """The full forms _construct._Dates accepts without the type's validator are values
    the validator accepts; the others it hands to the validator."""
    dated = [a for a in _adapters() if isinstance(_construct._many(a), _construct._Dates)]
    assert len(dated) == 3  # date, dateTime, instant
    values = _moments(random.Random(18), 20_000)
    for adapter in dated:
        many = _construct._many(adapter)
        sure = [value for value in values if many.sure(value)]
        for value in values:
            accepted = _accepts(adapter.validator, value)
            assert not many.sure(value) or accepted, (adapter.core_schema["schema"], value)
            assert _accepts(many, [value]) == accepted, (adapter.core_schema["schema"], value)
        assert len(sure) > 1_000  # the fast path is taken


def test_a_run_of_dates_is_accepted_as_its_values_are() -> None:
    """A run of several values (_construct._Dates takes one of the common form in one
    search of them joined by NUL) is accepted exactly when each value is: a value with a
    NUL inside, or a day a month may lack, is no reason to take the whole run."""
    dated = [a for a in _adapters() if isinstance(_construct._many(a), _construct._Dates)]
    rng = random.Random(19)
    values = _moments(rng, 4_000)
    joinable = ["2024-02-28", "2024-02-28T10:00:00+08:00"]
    odd = [f"{a}\x00{b}" for a in joinable for b in joinable] + ["2024-02-29", "2023-02-29"]
    for adapter in dated:
        many = _construct._many(adapter)
        for _ in range(1_500):
            if rng.random() < 0.5:  # common values, and now and then an odd one
                run = [rng.choice(joinable) for _ in range(rng.randint(1, 4))]
            else:
                run = rng.sample(values, rng.randint(2, 4))
            if rng.random() < 0.3:
                run[rng.randrange(len(run))] = rng.choice(odd)
            expected = all(_accepts(adapter.validator, value) for value in run)
            assert _accepts(many, run) == expected, (adapter.core_schema["schema"], run)
