"""Property tests of validation by construction per Bundle (gateway/validation/_composed.py):
whatever is done to a Bundle whose shape a validator has met, ``check_bundle`` on the
default path gives the reference walk's issues, issue for issue (code, severity, location,
message) and in order.

The Bundles are every golden Bundle and those of never-seen messages (bench_convert's
``freshen`` of the examples). A validator is warmed on them (each checked three times:
the plan learnt, its verdict remembered, then answered), then hypothesis draws mutations
that keep the Bundle's shape (strings only: invalid values of each FHIR primitive type,
escapes, references retargeted, dangling or conditional, equal fullUrls, codes swapped,
meta.profile, Bundle.type and resourceType changed) and mutations that change it (numbers
and booleans flipped, keys dropped, entries moved). Each mutated Bundle is checked after a
first set of mutations has taught the validator its key, so a verdict remembered under one
key is offered to Bundles whose other values differ: what a plan must see through, and
nothing more. Also: the same shapes with errors only and with warnings, with another
profile argument, two validators interleaved, and the tables filled to their bounds and
emptied. The budget is fixed and derandomized (CI)."""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import itertools
import json
import os
import sys
from collections.abc import Callable, Iterator
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway import Settings
from gateway.errors import Issue
from gateway.pipeline import Converter
from gateway.validation import TRANSACTION_PROFILE, Validator, _composed, _construct
from gateway.validation._composed import leaf_paths

from .conftest import REPO, needs_core
from .test_fast_path import _forget

pytestmark = needs_core

Bundle = dict[str, Any]
Path_ = tuple[str | int, ...]
Mutation = Callable[[Bundle], None]

PROFILES = "https://fhir-gateway.example.org/StructureDefinition/"
MESSAGES = ("ref_i12_hkpmc_to_nsch.hl7", "omg_o19_nsch.hl7", "orm_o01_lax2_ct.hl7")
# invalid values of the FHIR primitive types (and values some invariants read)
BAD = (
    "",
    " ",
    "\t\n",
    "2026-13-45",
    "2026-02-30T10:00:00+08:00",
    "2026-06-11T10:00:00",  # a dateTime with a time but no zone
    "not an id!",
    "a" * 65,  # an id one too long
    "CT  scan",  # a code with a double space
    " leading",
    "http://exa mple.org/x",
    "bad\x07char",
    "y" * 5_000,
    "\U0001f600𠀀 non-BMP",
    'quote " and \\ backslash',
    "\x00nul",
    "\\u0000",
    "line\u2028separator",
    "urn:dicom:uid",
    "urn:oid:1.2.3",
    "1.2.840.10008.1",
    "-1",
    "0",
    "true",
    "Patient?identifier=urn:oid:1.2|x",
    "https://example.org/fhir/Patient/1/_history/2",
)
TYPES = ("transaction", "batch", "document", "message", "collection", "history", "searchset")
RESOURCE_TYPES = ("Patient", "Practitioner", "Organization", "ServiceRequest", "Basic", "Nope")
PROFILE_URLS = (
    "http://hl7.org/fhir/StructureDefinition/ServiceRequest",
    "http://hl7.org/fhir/StructureDefinition/Patient",
    "http://hl7.org/fhir/StructureDefinition/DiagnosticReport",
    "http://hl7.org/fhir/StructureDefinition/ImagingStudy",
    f"{PROFILES}imaging-servicerequest",
    f"{PROFILES}referral-servicerequest",
    f"{PROFILES}diagnosticreport",
    f"{PROFILES}imagingstudy",
    f"{PROFILES}transaction-bundle",
    "https://example.org/no-such-profile",
)


def _json(issues: list[Issue]) -> bytes:
    return orjson.dumps([dataclasses.asdict(i) for i in issues])


def _check(
    validator: Validator, bundle: Bundle, profile: str | None = TRANSACTION_PROFILE
) -> bytes:
    try:
        return _json(validator.check_bundle(copy.deepcopy(bundle), True, profile))
    except (TypeError, AttributeError) as exc:  # check_references on entries not objects
        return f"raises {type(exc).__name__}".encode()


def _golden() -> list[tuple[str, Bundle]]:
    out = []
    for path in sorted(REPO.glob("tests/golden/**/*.expected.json")):
        data = json.loads(path.read_text(encoding="utf-8"))
        for n, item in enumerate(data if isinstance(data, list) else [data]):
            if isinstance(item, dict) and item.get("resourceType") == "Bundle":
                out.append((f"{path.name}#{n}", item))
    return out


def _freshen() -> Callable[[str, int], str]:
    """bench_convert's freshen (new identifiers, times, names per message)."""
    sys.path.insert(0, str(REPO / "bench"))
    try:
        from bench_convert import freshen
    finally:
        sys.path.remove(str(REPO / "bench"))
    return freshen  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> list[tuple[str, Bundle]]:
    """Every golden Bundle, and the Bundles of fresh variants of example messages."""
    conv = Converter(Settings.load(home=tmp_path_factory.mktemp("home"), env={}))
    freshen = _freshen()
    out = _golden()
    for name in MESSAGES:
        text = (REPO / "examples" / "hl7v2" / name).read_bytes().decode("utf-8", "surrogateescape")
        for k in (1, 2):
            data = freshen(text, 7_000 + k).encode("utf-8", "surrogateescape")
            record = conv.convert(data)[0]
            assert record.ok and record.mapped is not None, record.issues
            out.append((f"{name} fresh {k}", orjson.loads(orjson.dumps(record.mapped))))
    return out


def _warm(corpus: list[tuple[str, Bundle]], validator: Validator | None = None) -> Validator:
    """A default-path validator that answers each corpus Bundle from its plan."""
    validator = validator or Validator()
    assert validator.mode == "construct"
    for _, bundle in corpus:
        for _ in range(3):
            _check(validator, bundle)
    assert validator.bundles.hits >= len(corpus) // 2
    return validator


@pytest.fixture(scope="module")
def warm(corpus: list[tuple[str, Bundle]]) -> Validator:
    _forget()
    return _warm(corpus)


# -- mutations ---------------------------------------------------------------------------


def _at(node: Any, path: Path_) -> Any:
    for step in path:
        node = node[step]
    return node


def _put(bundle: Bundle, path: Path_, value: Any) -> None:
    _at(bundle, path[:-1])[path[-1]] = value


def _strings(bundle: Bundle) -> list[Path_]:
    paths: list[Path_] = []
    leaf_paths(bundle, (), paths)
    return paths


def _scalars(node: Any, path: Path_, out: list[Path_]) -> None:
    """The paths of the numbers and booleans (which the shape holds)."""
    if isinstance(node, dict):
        for key, value in node.items():
            _scalars(value, (*path, key), out)
    elif isinstance(node, list):
        for n, item in enumerate(node):
            _scalars(item, (*path, n), out)
    elif isinstance(node, (bool, int, float)):
        out.append(path)


def _containers(node: Any, path: Path_, out: list[Path_]) -> None:
    if isinstance(node, (dict, list)):
        out.append(path)
        items = node.items() if isinstance(node, dict) else enumerate(node)
        for key, value in items:
            _containers(value, (*path, key), out)


def _values_by_key(bundle: Bundle) -> dict[str, list[str]]:
    """Each key's string values in the Bundle: the codes of its other elements of that
    name (a valid code of the same ValueSet, often), its systems, its references."""
    out: dict[str, list[str]] = {}
    for path in _strings(bundle):
        key = next((p for p in reversed(path) if isinstance(p, str)), "")
        out.setdefault(key, []).append(_at(bundle, path))
    return out


@st.composite
def _keeping(draw: st.DrawFn, bundle: Bundle) -> Mutation:
    """A mutation that keeps the Bundle's shape: one string value changed."""
    paths = _strings(bundle)
    entries = bundle.get("entry") or []
    urls = [e["fullUrl"] for e in entries if isinstance(e, dict) and "fullUrl" in e]
    kind = draw(
        st.sampled_from(
            ("bad", "reference", "fullUrl", "swap", "profile", "type", "resourceType", "code")
        )
    )
    if kind == "reference":
        refs = [p for p in paths if p[-1] == "reference"] or paths
        path = draw(st.sampled_from(refs))
        value = draw(
            st.sampled_from(
                [
                    *urls,
                    "urn:uuid:00000000-0000-4000-8000-000000000000",
                    "Patient?identifier=urn:oid:2.16.840.1.113883.2.4|P1",
                    "ServiceRequest?identifier=x",
                    "Organization/abc",
                    "#contained",
                ]
            )
        )
    elif kind == "fullUrl" and len(urls) > 1:
        n = draw(st.integers(0, len(entries) - 1))
        path, value = ("entry", n, "fullUrl"), draw(st.sampled_from(urls))
        if not isinstance(entries[n], dict) or "fullUrl" not in entries[n]:
            path = draw(st.sampled_from(paths))
    elif kind == "profile":
        profiles = [p for p in paths if len(p) > 2 and p[-3:-1] == ("meta", "profile")]
        path = draw(st.sampled_from(profiles or paths))
        value = draw(st.sampled_from(PROFILE_URLS))
    elif kind == "type" and ("type",) in paths:
        path, value = ("type",), draw(st.sampled_from((*TYPES, "bogus")))
    elif kind == "resourceType":
        types = [p for p in paths if p[-1] == "resourceType" and len(p) == 4]
        path = draw(st.sampled_from(types or paths))
        value = draw(st.sampled_from(RESOURCE_TYPES))
    elif kind in ("swap", "code"):
        path = draw(st.sampled_from(paths))
        if kind == "code":  # a code (or system...) of another element of that name
            key = next((p for p in reversed(path) if isinstance(p, str)), "")
            value = draw(st.sampled_from([*_values_by_key(bundle)[key], "no-such"]))
        else:  # any other string of the Bundle
            value = _at(bundle, draw(st.sampled_from(paths)))
    else:
        path, value = draw(st.sampled_from(paths)), draw(st.sampled_from(BAD))
    return lambda data: _put(data, path, value)


@st.composite
def _changing(draw: st.DrawFn, bundle: Bundle) -> Mutation:
    """A mutation that changes the Bundle's shape."""
    scalars: list[Path_] = []
    _scalars(bundle, (), scalars)
    containers: list[Path_] = []
    _containers(bundle, (), containers)
    kind = draw(st.sampled_from(("scalar", "drop", "duplicate", "entries", "kind")))
    if kind == "scalar" and scalars:
        path = draw(st.sampled_from(scalars))
        old = _at(bundle, path)
        if isinstance(old, bool):
            value: Any = not old
        else:
            value = draw(st.sampled_from((old + 1, -1, 0, 2**31, float(old) + 0.5, str(old))))
        return lambda data: _put(data, path, value)
    if kind == "entries" and len(bundle.get("entry") or []) > 1:
        n = draw(st.integers(0, len(bundle["entry"]) - 2))
        how = draw(st.sampled_from(("swap", "drop", "copy")))

        def entries(data: Bundle) -> None:
            got = data["entry"]
            if how == "swap":
                got[n], got[n + 1] = got[n + 1], got[n]
            elif how == "drop":
                del got[n]
            else:
                got.insert(n, copy.deepcopy(got[n]))

        return entries
    path = draw(st.sampled_from(containers[1:] or containers))
    node = _at(bundle, path)
    if kind == "kind":  # a string or an object where it was something else
        value = draw(st.sampled_from(("x", {}, [], 1, None)))
        return lambda data: _put(data, path, value) if path else None
    if isinstance(node, dict) and node:
        key = draw(st.sampled_from(list(node)))
        return lambda data: _at(data, path).pop(key, None)
    if isinstance(node, list) and node:
        return lambda data: _at(data, path).append(copy.deepcopy(_at(data, path)[0]))
    return lambda data: None


def _apply(bundle: Bundle, mutations: list[Mutation]) -> Bundle:
    out = copy.deepcopy(bundle)
    for mutation in mutations:
        # (a place an earlier mutation removed or made a string: nothing to do)
        with contextlib.suppress(KeyError, IndexError, TypeError, AttributeError):
            mutation(out)
    return out


@st.composite
def _cases(
    draw: st.DrawFn, corpus: list[tuple[str, Bundle]], change: bool
) -> tuple[Bundle, Bundle]:
    """(a Bundle with a first set of mutations, the same with a second set on top)."""
    _, bundle = draw(st.sampled_from(corpus))
    first = draw(st.lists(_keeping(bundle), min_size=0, max_size=2))
    taught = _apply(bundle, first)
    more = _changing(taught) if change else _keeping(taught)
    second = draw(st.lists(more, min_size=1, max_size=2))
    return taught, _apply(taught, second)


@st.composite
def _three(draw: st.DrawFn, corpus: list[tuple[str, Bundle]]) -> tuple[Bundle, Bundle, Bundle]:
    """Three Bundles of one shape (strings changed only): the one a plan is composed
    from, one whose verdict it remembers, and one the plan may answer with it."""
    _, bundle = draw(st.sampled_from(corpus))
    composed = _apply(bundle, draw(st.lists(_keeping(bundle), max_size=2)))
    taught = _apply(bundle, draw(st.lists(_keeping(bundle), max_size=1)))
    return (
        composed,
        taught,
        _apply(taught, draw(st.lists(_keeping(taught), min_size=1, max_size=2))),
    )


# what the cases compared: reference verdicts empty and not, Bundles a plan answered
SEEN = {"valid": 0, "invalid": 0, "answered": 0}


def _agree(validator: Validator, reference: Validator, *bundles: Bundle) -> None:
    """Each Bundle, in turn, three times by ``validator`` (learnt, remembered, answered):
    the reference's issues every time."""
    for k, bundle in enumerate(bundles):
        want = _check(reference, bundle)
        SEEN["valid" if want == b"[]" else "invalid"] += 1
        for attempt in (1, 2, 3):
            hits = validator.bundles.hits
            got = _check(validator, bundle)
            assert got == want, _differ(bundles[: k + 1], attempt, want, got)
            SEEN["answered"] += validator.bundles.hits - hits


def _differ(bundles: tuple[Bundle, ...], attempt: int, want: bytes, got: bytes) -> str:
    """What the failing Bundle changed from the one before it, and both verdicts."""
    changes = []
    if len(bundles) > 1:
        before, after = _strings(bundles[-2]), _strings(bundles[-1])
        if before == after:
            changes = [
                f"{path}: {_at(bundles[-2], path)!r} -> {_at(bundles[-1], path)!r}"
                for path in after
                if _at(bundles[-2], path) != _at(bundles[-1], path)
            ]
        else:
            changes = ["(another shape)"]
    return f"attempt {attempt}; changed: {changes}\n want {want!r}\n got  {got!r}"


def _compared(before: dict[str, int], cases: int) -> None:
    """Both verdicts were compared, and plans answered, in a fair share of the cases."""
    got = {key: SEEN[key] - before[key] for key in SEEN}
    assert got["valid"] * 10 >= cases and got["invalid"] * 10 >= cases, got
    assert got["answered"] * 10 >= cases, got


# A fixed, derandomized budget for CI; COMPOSED_EXAMPLES=2000 COMPOSED_RANDOM=1 explores
# further (a new seed each run) when the validator changes.
EXAMPLES = int(os.environ.get("COMPOSED_EXAMPLES", "40"))
_SETTINGS = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=not os.environ.get("COMPOSED_RANDOM"),
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def test_shape_kept(corpus: list[tuple[str, Bundle]], warm: Validator) -> None:
    """Strings changed only: the plan of the shape answers, and must see each change."""
    reference = Validator("reference")

    @_SETTINGS
    @given(_cases(corpus, change=False))
    def run(case: tuple[Bundle, Bundle]) -> None:
        _agree(warm, reference, *case)

    before = dict(SEEN)
    run()
    _compared(before, EXAMPLES)


def test_a_plan_composed_from_one_bundle_answers_another(
    corpus: list[tuple[str, Bundle]],
) -> None:
    """A new validator per case: its plan composed from one mutant, a verdict learnt from
    a second, offered to a third of the same shape: each as the reference gives it."""
    reference = Validator("reference")

    @settings(_SETTINGS, max_examples=max(1, EXAMPLES // 2))
    @given(_three(corpus))
    def run(case: tuple[Bundle, Bundle, Bundle]) -> None:
        _forget()
        _agree(Validator(), reference, *case)

    before = dict(SEEN)
    run()
    _compared(before, max(1, EXAMPLES // 2))


def test_shape_changed(corpus: list[tuple[str, Bundle]], warm: Validator) -> None:
    """Numbers, booleans, keys, kinds, entries changed: another shape, learnt anew."""
    reference = Validator("reference")

    @_SETTINGS
    @given(_cases(corpus, change=True))
    def run(case: tuple[Bundle, Bundle]) -> None:
        _agree(warm, reference, *case)

    before = dict(SEEN)
    run()
    _compared(before, EXAMPLES)


def test_modes_and_profiles_interleaved(corpus: list[tuple[str, Bundle]], warm: Validator) -> None:
    """The same shapes with errors only (check_bundle) and with warnings (validate_bundle
    with all_issues), and check_bundle with the profile the Bundle declares (None):
    interleaved on one validator, each as the reference gives it."""
    reference = Validator("reference")

    @settings(_SETTINGS, max_examples=max(1, EXAMPLES // 2))
    @given(_cases(corpus, change=False))
    def run(case: tuple[Bundle, Bundle]) -> None:
        for bundle in case:
            for _ in range(2):
                assert _check(warm, bundle) == _check(reference, bundle)
                got = warm.validate_bundle(copy.deepcopy(bundle), all_issues=True)
                want = reference.validate_bundle(copy.deepcopy(bundle), all_issues=True)
                assert _json(got) == _json(want)
                assert _check(warm, bundle, None) == _check(reference, bundle, None)

    run()


def test_two_validators_interleaved(corpus: list[tuple[str, Bundle]]) -> None:
    """Two default-path validators fed the same mutants in turn: neither answers from what
    the other learnt, each gives the reference's issues."""
    _forget()
    one, two = _warm(corpus[::2]), _warm(corpus[1::2])
    reference = Validator("reference")

    @settings(_SETTINGS, max_examples=max(1, EXAMPLES // 2))
    @given(_cases(corpus, change=False))
    def run(case: tuple[Bundle, Bundle]) -> None:
        for bundle in case:
            want = _check(reference, bundle)
            for _ in range(3):
                assert _check(one, bundle) == want
                assert _check(two, bundle) == want

    run()


def test_tables_filled_to_their_bounds(
    corpus: list[tuple[str, Bundle]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Plans, verdicts, shapes and accepted values bounded low, so the tables fill and are
    emptied again and again while mutants come: still the reference's issues."""
    monkeypatch.setattr(_composed, "MAX_BYTES", 60_000)
    monkeypatch.setattr(_construct, "MAX_SHAPES", 40)
    monkeypatch.setattr(_construct, "MAX_VERDICTS", 50)
    monkeypatch.setattr(_construct, "MAX_ACCEPTED_BYTES", 4_000)
    monkeypatch.setattr(_construct, "MAX_EXACT_BYTES", 8_000)
    monkeypatch.setattr(_construct, "MAX_ONCE_BYTES", 2_000)
    _forget()
    validator = _warm(corpus[:6])
    reference = Validator("reference")
    sizes: list[int] = []

    @settings(_SETTINGS, max_examples=max(1, EXAMPLES // 2))
    @given(_cases(corpus, change=False))
    def run(case: tuple[Bundle, Bundle]) -> None:
        for bundle in case:
            want = _check(reference, bundle)
            for _ in range(3):
                assert _check(validator, bundle) == want
                sizes.append(validator.bundles.size)
                assert validator.bundles.size <= _composed.MAX_BYTES

    run()
    assert any(b < a for a, b in itertools.pairwise(sizes)), "never emptied"


# -- regressions -------------------------------------------------------------------------


def _omg() -> Bundle:
    data: Bundle = json.loads((REPO / "tests/golden/hl7v2/omg_o19.expected.json").read_text())
    return data


def _service_request(bundle: Bundle) -> int:
    return next(
        n
        for n, e in enumerate(bundle["entry"])
        if e["resource"]["resourceType"] == "ServiceRequest"
    )


def _variants() -> Iterator[tuple[str, Bundle, Bundle]]:
    """(what changed, the Bundle a plan was composed from, a Bundle of its shape declaring
    the imaging profile whose identifier breaks gw-ord-1 (read by a residual invariant of
    that profile only)."""
    bundle = _omg()
    n = _service_request(bundle)
    bad = copy.deepcopy(bundle)
    bad["entry"][n]["resource"]["identifier"][0]["system"] = "urn:dicom:uid"
    base = copy.deepcopy(bundle)
    base["entry"][n]["resource"]["meta"]["profile"] = [
        "http://hl7.org/fhir/StructureDefinition/ServiceRequest"
    ]
    yield "meta.profile", base, bad
    other = copy.deepcopy(bundle)
    other["entry"][n]["resource"]["meta"]["profile"] = ["https://example.org/no-such-profile"]
    yield "an unknown meta.profile (base R4)", other, bad


@pytest.mark.parametrize("changed", ["meta.profile", "an unknown meta.profile (base R4)"])
def test_a_plan_is_not_used_under_another_profile(changed: str) -> None:
    """A plan composed from a Bundle whose ServiceRequest declared base R4 held the
    identifier free and ran no gw-ord invariant; the same Bundle shape declaring the
    imaging profile (meta.profile, a string: not in the shape) was answered by that plan
    from a verdict remembered for a valid Bundle of that profile, so a Bundle breaking
    gw-ord-1 passed. Each part's profile choice is now part of the plan's key."""
    (_, base, bad), *_ = [v for v in _variants() if v[0] == changed]
    valid = _omg()
    _forget()
    validator = Validator()
    reference = Validator("reference")
    assert _check(reference, base) == b"[]" == _check(reference, valid)
    want = _check(reference, bad)
    assert b"gw-ord-1" in want
    for _ in range(3):
        assert _check(validator, base) == b"[]"  # its plan composed under base R4
    for _ in range(2):
        assert _check(validator, valid) == b"[]"  # a verdict of the imaging profile kept
    assert _check(validator, bad) == want


@pytest.mark.parametrize("by_bundle", [True, False], ids=["composed", "per resource"])
def test_an_empty_reference_is_checked_as_a_string(by_bundle: bool) -> None:
    """A Reference.reference leaf is keyed by what it resolves to, and its value was never
    checked: with an entry's fullUrl made "" (a uri may be empty) and the references to it
    too, each reference still resolved to that entry's type, so the verdict of the valid
    Bundle was given and the empty references ('reference' must be a non-empty string)
    passed. Reference leaves now go through their primitive validator."""
    bundle = _omg()
    url = bundle["entry"][_service_request(bundle)]["resource"]["subject"]["reference"]
    emptied: Bundle = orjson.loads(orjson.dumps(bundle).replace(orjson.dumps(url), b'""'))
    _forget()
    validator = Validator()
    validator.by_bundle = by_bundle
    reference = Validator("reference")
    assert _check(reference, bundle, None) == b"[]"
    for _ in range(3):
        assert _check(validator, bundle, None) == b"[]"
    want = _check(reference, emptied, None)
    assert b"validation.structure" in want
    assert _check(validator, emptied, None) == want


@pytest.mark.parametrize("mode", ["construct", "incremental"])
def test_a_dangling_reference_inside_a_resource_of_unknown_type(mode: str) -> None:
    """A resource of an unknown type is refused without a walk, so the walk collected none
    of its references and check_bundle did not look for dangling ones: the reference
    path's dangling-reference issue was missing (the Bundle failed all the same)."""
    bundle = _omg()
    n = _service_request(bundle)
    resource = bundle["entry"][n]["resource"]
    resource["resourceType"] = "Nope"
    resource["subject"]["reference"] = "urn:uuid:00000000-0000-4000-8000-000000000000"
    want = _check(Validator("reference"), bundle)
    assert b"unknown resourceType" in want and b"dangling-reference" in want
    _forget()
    validator = Validator(mode)
    for _ in range(3):
        assert _check(validator, bundle) == want


def test_the_incremental_walk_keeps_the_reference_order() -> None:
    """A Patient with an address.use outside its required ValueSet and its
    managingOrganization pointing at a Practitioner: the first walk gave the reference's
    order (binding, then reference type); the second, by the known skeleton's value
    program, the reference type first: the program ran its checks grouped by parent path
    (the resource's own elements, then those under address), not in document order. The
    default path falls back to this walk for a verdict it has not met, so check_bundle's
    issues came out of order there too. The program is now a tree run in the resource's
    key order, as the full walk goes."""
    bundle = _omg()
    entries = bundle["entry"]
    n = next(k for k, e in enumerate(entries) if e["resource"]["resourceType"] == "Patient")
    patient = entries[n]["resource"]
    url = patient["managingOrganization"]["reference"]
    target = next(e for e in entries if e["fullUrl"] == url)
    target["resource"]["resourceType"] = "Practitioner"
    patient["address"][0]["use"] = "no-such"
    want = _check(Validator("reference"), bundle)
    _forget()
    validator = Validator("incremental")
    assert [_check(validator, bundle) for _ in range(2)] == [want, want]
