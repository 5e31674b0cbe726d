"""Validation by construction (gateway/validation/_construct.py) gives the reference
validator's verdict, issue for issue and in the same order (the issue lists compared as
JSON bytes): on every golden Bundle, every Bundle the pipeline makes from the examples
(the mapping's own, frozen parts and all), the official R4 examples, the mutations of the
mutation test, and JSON mutations of the goldens made by the fuzzer's mutator. The
reference path (``GATEWAY_VALIDATION_PATH=reference``) walks everything with no memo."""

from __future__ import annotations

import copy
import dataclasses
import json
import random
from pathlib import Path
from typing import Any

import orjson
import pytest

from gateway import Settings
from gateway.errors import ConfigError, Issue
from gateway.pipeline import Converter
from gateway.validation import TRANSACTION_PROFILE, Validator, _construct, _models
from gateway.validation._models import MODE_VARIABLE
from gateway.validation._profiles import Plans

from ..conftest import compiled
from ..fuzz.mutators import json_one
from .conftest import REPO, golden_bundles, needs_core
from .test_fast_path import Case, _forget, _renumbered, _resource_cases, _slice_item_cases

pytestmark = needs_core

EXAMPLES = REPO.parent / "shared" / "corpus" / "fhir-examples"


def _json(issues: list[Issue]) -> bytes:
    return orjson.dumps([dataclasses.asdict(i) for i in issues])


def _check(validator: Validator, case: Case) -> bytes:
    _, data, profile = case
    data = copy.deepcopy(data) if not isinstance(data, _Mapped) else data.bundle
    try:
        if data.get("resourceType") == "Bundle" and profile is None:
            return _json(validator.check_bundle(data, True, TRANSACTION_PROFILE))
        return _json(validator.validate_resource(data, profile=profile, all_issues=True))
    except (TypeError, AttributeError) as exc:
        # a fuzzed Bundle whose entries are not objects: the reference check of the
        # references fails so (the pipeline's Bundles never are); the same for both paths
        return f"raises {type(exc).__name__}".encode()


def _unordered(verdict: bytes) -> Any:
    return sorted(map(str, json.loads(verdict))) if verdict[:1] == b"[" else verdict


@dataclasses.dataclass
class _Mapped:
    """A Bundle as the mapping stage hands it over (frozen shared parts): not copied."""

    bundle: dict[str, Any]

    def get(self, key: str, default: Any = None) -> Any:
        return self.bundle.get(key, default)


def _pipeline_bundles(tmp: Path) -> list[tuple[str, Any]]:
    """What the mapping stage makes from every example (and a renumbered variant of each
    HL7 v2 message), as the validation stage receives it."""
    conv = Converter(Settings.load(home=tmp, env={}))
    out: list[tuple[str, Any]] = []
    for path in sorted((REPO / "examples").rglob("*")):
        if path.suffix in (".hl7", ".xml") or path.suffix == ".study":
            records = conv.convert_path(path)
        else:
            continue
        for n, record in enumerate(records):
            if record.mapped is not None:
                out.append((f"{path.name}#{n}", _Mapped(record.mapped)))
    for path in sorted((REPO / "examples" / "hl7v2").glob("*.hl7")):
        text = path.read_bytes().replace(b"|20", b"|19")  # other dates: other values
        for n, record in enumerate(conv.convert(text)):
            if record.mapped is not None:
                out.append((f"{path.name}#{n} redated", _Mapped(record.mapped)))
    return out


def _official() -> list[Case]:
    if not EXAMPLES.is_dir():
        return []
    out: list[Case] = []
    for path in sorted(EXAMPLES.glob("*.json")):
        data = json.loads(path.read_text(encoding="utf-8"))
        out.append((path.name, data, data.get("resourceType")))  # as $validate takes them
        if data.get("resourceType") == "Bundle":
            out.append((f"{path.name} as a pipeline Bundle", data, None))
    return out


def _fuzzed(bundles: list[tuple[str, dict[str, Any]]], count: int) -> list[Case]:
    """JSON mutations of the goldens by the fuzzer's mutator (types changed, values
    dropped, duplicated, moved...), one to three stacked, seeded."""
    rng = random.Random(18)
    out: list[Case] = []
    for k in range(count):
        name, bundle = bundles[k % len(bundles)]
        doc = copy.deepcopy(bundle)
        for _ in range(rng.randint(1, 3)):
            doc = json_one(rng, doc)
        try:  # deep nests past the recursion limit: not FHIR any validator is given
            copy.deepcopy(doc)
            orjson.dumps(doc)
        except (RecursionError, TypeError):
            continue
        if isinstance(doc, dict) and doc.get("resourceType") == "Bundle":
            out.append((f"{name} fuzzed #{k}", doc, None))
    return out


@pytest.fixture
def cases(
    test_plans: Plans,
    produced_bundles: list[tuple[str, dict[str, Any]]],
    tmp_path_factory: pytest.TempPathFactory,
) -> list[Case]:
    bundles = [*golden_bundles(), *produced_bundles]
    out: list[Case] = []
    for name, bundle in bundles:
        out.append((name, bundle, None))
        out.append((f"{name}, renumbered", _renumbered(bundle, 5), None))
        for n, entry in enumerate(bundle.get("entry") or []):
            resource = entry.get("resource")
            if isinstance(resource, dict):
                out.append((f"{name} entry {n}", resource, None))
                out += _slice_item_cases(f"{name} entry {n}", resource)
    out += [(n, b, None) for n, b in _pipeline_bundles(tmp_path_factory.mktemp("home"))]
    out += _official()
    out += list(_resource_cases(test_plans, produced_bundles))
    out += _fuzzed(bundles, 300)
    return out


def test_by_construction_agrees_with_the_reference(cases: list[Case]) -> None:
    reference = Validator("reference")
    expected = [_check(reference, case) for case in cases]
    # one validator that has met every case once, so each meets shapes and verdicts its
    # neighbours taught it; then each case twice more (the second time by its own)
    _forget()
    warm = Validator("construct")
    for case in cases:
        _check(warm, case)
    differ = []
    for case, want in zip(cases, expected, strict=True):
        for attempt in (1, 2):
            got = _check(warm, case)
            if got != want:
                differ.append(f"{case[0]} (pass {attempt}):\n  reference {want!r}\n  got {got!r}")
    assert not differ, f"{len(differ)} differ:\n" + "\n".join(differ[:5])
    assert warm.shapes.hits > len(cases), "the comparison must run the by-construction path"
    # and the Bundle path (_composed): a Bundle met before answered whole by its plan
    bundles = sum(case[1].get("resourceType") == "Bundle" and case[2] is None for case in cases)
    assert warm.bundles.hits > bundles // 2, (warm.bundles.hits, bundles)
    assert sum(want != b"[]" for want in expected) > 100, "many cases must fail"
    # the incremental path (GATEWAY_VALIDATION_PATH=incremental) on the same cases: the
    # same issues, but with warnings asked for, a known skeleton's structural warnings
    # come last (so the by-construction path asks the reference path for those)
    _forget()
    incremental = Validator("incremental")
    differ = [
        case[0]
        for case, want in zip(cases, expected, strict=True)
        if _unordered(_check(incremental, case)) != _unordered(want)
    ]
    assert not differ, differ[:5]


@pytest.mark.skipif(
    compiled(_models), reason="wraps Validator's methods: a mypyc-compiled Validator has none"
)
def test_fresh_messages_are_answered_by_construction(tmp_path: Path) -> None:
    """A feed's messages (new identifiers, names, dates, fullUrls) after the first: every
    resource and the Bundle answered from its shape, none walked again."""
    conv = Converter(Settings.load(home=tmp_path, env={}))
    path = REPO / "examples" / "hl7v2" / "ref_i12_hkpmc_to_nsch.hl7"
    text = path.read_bytes()
    first = conv.convert(text)[0]
    assert first.ok

    def variant(k: int) -> bytes:  # new dates and identifiers, the same shapes
        return text.replace(b"|20", f"|{19 - k}".encode()).replace(b"^^^", f"{k}^^^".encode())

    assert conv.convert(variant(0))[0].ok  # its identifiers fill components the first left empty
    validator = conv.validator
    walked: list[str] = []
    for slow in ("_incremental", "_reference_issues"):
        inner = getattr(validator, slow)
        setattr(validator, slow, lambda *a, inner=inner, **k: walked.append("x") or inner(*a, **k))
    before = validator.shapes.hits, validator.bundles.hits
    for k in (1, 2, 3):
        record = conv.convert(variant(k))[0]
        assert record.ok, record.issues
        assert record.bundle_json != first.bundle_json
    assert not walked, "a resource of a known shape was walked"
    # each Bundle answered whole by its plan (_composed), or resource by resource
    parts = len(first.bundle["entry"]) + 1
    by_resource = validator.shapes.hits - before[0]
    assert by_resource + parts * (validator.bundles.hits - before[1]) >= 3 * parts
    assert validator.bundles.hits - before[1] >= 2, "a Bundle of a known shape was taken apart"


def test_the_switch_selects_the_path(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """GATEWAY_VALIDATION_PATH picks the path of every Validator (each Converter's too);
    both give the same output, byte for byte (tests/golden holds it to the goldens)."""
    golden = sorted((REPO / "tests" / "golden" / "hl7v2").glob("*.hl7"))[:6]
    outputs = {}
    for mode in ("reference", "construct"):
        monkeypatch.setenv(MODE_VARIABLE, mode)
        conv = Converter(Settings.load(home=tmp_path, env={}))
        assert conv.validator.mode == mode
        outputs[mode] = [r.bundle_json for p in golden for r in conv.convert(p.read_bytes())]
    assert outputs["reference"] == outputs["construct"]
    assert sum(data is not None for data in outputs["construct"]) > 5
    monkeypatch.setenv(MODE_VARIABLE, "fastest")
    with pytest.raises(ConfigError) as raised:
        Validator()
    assert raised.value.code == "config.bad-setting"


def test_values_that_never_recur_are_not_remembered(tmp_path: Path) -> None:
    """A feed of new patients: the validator's tables stop growing once the feed's shapes,
    constants and reference data are known; names, numbers and dates of each message (and
    its Patient) are checked but not kept (issue 18: memory independent of the batch)."""
    conv = Converter(Settings.load(home=tmp_path, env={}))
    text = (REPO / "examples" / "hl7v2" / "ref_i12_hkpmc_to_nsch.hl7").read_bytes()

    def variant(k: int) -> bytes:  # new dates, identifiers and names every time
        dated = text.replace(b"|20", f"|{19 - k % 10}".encode())
        return dated.replace(b"^^^", f"{k}^^^".encode()).replace(b"|\xe9", f"|{k}\xe9".encode())

    def sizes() -> tuple[int, ...]:
        shapes, bundles = conv.validator.shapes, conv.validator.bundles
        accepted = sum(len(values) for values in shapes.accepted.values())
        verdicts = sum(len(plan.verdicts) for plan in bundles.plans.values() if plan)
        return accepted, len(shapes.exact), shapes.verdicts, bundles.size, verdicts

    def hits() -> int:
        return conv.validator.shapes.hits + conv.validator.bundles.hits

    for k in range(12):
        assert conv.convert(variant(k))[0].ok
    learnt = sizes()
    before = hits()
    for k in range(12, 60):
        record = conv.convert(variant(k))[0]
        assert record.ok, record.issues
    assert hits() > before, "the feed must be answered by construction"
    assert sizes() == learnt


def test_escapes_are_marked_as_two_replaces_would() -> None:
    """split's one-byte scan for escapes (_unescaped) marks them as the replaces it
    stands for: an escaped backslash first, then an escaped quote; the others kept."""
    rng = random.Random(18)
    for _ in range(2_000):
        value = "".join(rng.choice('\\"a\n\x01é') for _ in range(rng.randint(0, 12)))
        content = orjson.dumps({"k": [value, value + '"']})
        want = content.replace(b"\\\\", b"\x01").replace(b'\\"', b"\x02")
        assert _construct._unescaped(content) == want, value


def test_a_message_sent_twice_first_does_not_make_its_values_steady(tmp_path: Path) -> None:
    """A feed whose first message comes twice (a resend): its values are still found to
    vary by the next message that differs, so each new patient's values are checked
    without being noted as candidates to remember."""
    conv = Converter(Settings.load(home=tmp_path, env={}))
    text = (REPO / "examples" / "hl7v2" / "ref_i12_hkpmc_to_nsch.hl7").read_bytes()

    def variant(k: int) -> bytes:  # new dates, identifiers and names every time
        dated = text.replace(b"|20", f"|{19 - k % 10}".encode())
        return dated.replace(b"^^^", f"{k}^^^".encode()).replace(b"|\xe9", f"|{k}\xe9".encode())

    for k in (0, 0, 1, 2, 3):
        assert conv.convert(variant(k))[0].ok
    noted = len(conv.validator.shapes._once._hashes)
    for k in range(4, 12):
        assert conv.convert(variant(k))[0].ok
    assert len(conv.validator.shapes._once._hashes) == noted
