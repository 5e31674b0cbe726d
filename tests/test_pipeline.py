"""End-to-end properties of every Bundle the gateway emits."""

from __future__ import annotations

import dataclasses
import itertools
import logging
import re
from pathlib import Path
from typing import Any

import orjson
import pytest
from fhir.resources.R4B.bundle import Bundle

from gateway import Converter, Settings
from gateway.mapping import resource_id, write_rules

REPO = Path(__file__).resolve().parents[1]
SAMPLES = sorted((REPO / "examples" / "hl7v2").glob("*.hl7")) + sorted(
    (REPO / "tests" / "golden" / "hl7v2").glob("*.hl7")
)


def _bundles(converter: Converter, path: Path) -> list[dict[str, Any]]:
    return [r.bundle for r in converter.convert(path.read_bytes()) if r.ok and r.bundle]


def _by_type(bundle: dict[str, Any], rtype: str) -> list[dict[str, Any]]:
    return [e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == rtype]


def _references(node: Any) -> list[str]:
    if isinstance(node, dict):
        found = [node["reference"]] if isinstance(node.get("reference"), str) else []
        return found + [r for v in node.values() for r in _references(v)]
    if isinstance(node, list):
        return [r for v in node for r in _references(v)]
    return []


@pytest.mark.parametrize("path", SAMPLES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_bundle_parses_with_r4b_models_and_references_resolve(
    converter: Converter, path: Path
) -> None:
    bundles = _bundles(converter, path)
    assert bundles, f"{path.name} produced no Bundle"
    for bundle in bundles:
        Bundle.model_validate(bundle)  # raises on any structural error
        urls = {e["fullUrl"] for e in bundle["entry"]}
        refs = _references([e["resource"] for e in bundle["entry"]])
        # Inside the Bundle: literal references to entries. Outside it (the order behind
        # a report, its study): conditional references by business identifier.
        outside = {r for r in refs if r not in urls}
        assert refs and all(re.fullmatch(r"[A-Za-z]+\?identifier=\S+\|\S+", r) for r in outside)


@pytest.mark.parametrize("path", SAMPLES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_converting_twice_gives_byte_identical_output(converter: Converter, path: Path) -> None:
    data = path.read_bytes()
    first = [r.bundle_json for r in converter.convert(data)]
    second = [r.bundle_json for r in converter.convert(data)]
    assert first == second


def test_ids_are_uuid5_of_business_identifiers_and_entries_are_conditional(
    converter: Converter,
) -> None:
    bundle = _bundles(converter, REPO / "examples/hl7v2/ref_i12_lax2_to_njmu2.hl7")[0]
    modes = set()
    for entry in bundle["entry"]:
        resource, request = entry["resource"], entry["request"]
        rtype = resource["resourceType"]
        mode = write_rules().mode(rtype)
        modes.add(mode)
        if mode == "update":  # conditional update: the partner keeps its own id
            assert request["method"] == "PUT" and "id" not in resource
            query = request["url"].removeprefix(f"{rtype}?")
        else:  # conditional create
            assert request["method"] == "POST" and request["url"] == rtype
            query = request["ifNoneExist"]
        system, value = query.removeprefix("identifier=").split("|", 1)
        rid = resource_id(rtype, system, value)
        assert entry["fullUrl"] == f"urn:uuid:{rid}" and resource.get("id", rid) == rid
        assert {"system": system, "value": value}.items() <= next(
            i for i in resource["identifier"] if i["value"] == value
        ).items()
    assert modes == {"create-if-none-exist", "update"}


def test_the_same_referral_from_two_messages_is_the_same_resource(converter: Converter) -> None:
    # The REF^I14 cancels the REF^I12 by quoting the same RF1-6 referral number: the same
    # conditional update, so the partner's referral becomes revoked.
    def referral_entry(name: str) -> dict[str, Any]:
        bundle = _bundles(converter, REPO / "examples/hl7v2" / name)[0]
        return next(e for e in bundle["entry"] if e["resource"]["resourceType"] == "ServiceRequest")

    referral = referral_entry("ref_i12_lax2_to_njmu2.hl7")
    cancel = referral_entry("ref_i14_lax2_cancel.hl7")
    assert referral["fullUrl"] == cancel["fullUrl"]
    assert referral["request"] == cancel["request"]
    assert referral["request"]["method"] == "PUT"
    assert (referral["resource"]["status"], cancel["resource"]["status"]) == ("active", "revoked")


def test_gb18030_referral_keeps_chinese_names_notes_and_diagnoses(converter: Converter) -> None:
    path = REPO / "tests/golden/hl7v2/ref_i12_gb18030.hl7"
    assert b"\xcd\xf5" in path.read_bytes()  # 王 in GB18030: the file really is GB18030
    [record] = converter.convert(path.read_bytes())
    assert record.charset == "gb18030"
    bundle = record.bundle
    assert bundle is not None
    patient = _by_type(bundle, "Patient")[0]
    assert patient["name"][0]["text"] == "王伟"
    assert {"family": "WANG", "given": ["WEI"]}.items() <= patient["name"][1].items()
    condition = _by_type(bundle, "Condition")[0]
    coding = condition["code"]["coding"][0]
    # the display is ICD-10's; the sender's words are the text, zh-Hans a translation
    assert (coding["code"], coding["display"]) == ("I63.9", "Cerebral infarction, unspecified")
    assert condition["code"]["text"] == "脑梗死"
    simplified = coding["_display"]["extension"][0]["extension"]
    assert simplified == [
        {"url": "lang", "valueCode": "zh-Hans"},
        {"url": "content", "valueString": "脑梗死"},
    ]
    notes = _by_type(bundle, "ServiceRequest")[0]["note"]
    assert "介入治疗" in notes[0]["text"]
    # \F\ in the NTE is a literal '|'; \.br\ a line break.
    assert "阿司匹林100mg qd | 阿托伐他汀" in notes[0]["text"]
    assert "\n" in notes[0]["text"]
    practitioners = {p["name"][0]["text"] for p in _by_type(bundle, "Practitioner")}
    assert practitioners == {"赵珅", "刘梅"}  # 珅 is AB 7C in GB18030: '|' as a trail byte


def test_big5_referral_keeps_traditional_chinese(converter: Converter) -> None:
    path = REPO / "tests/golden/hl7v2/ref_i12_big5.hl7"
    assert b"\xb3\x5c" in path.read_bytes()  # 許 in Big5: '\' as a trail byte
    [record] = converter.convert(path.read_bytes())
    assert record.charset == "big5hkscs"
    bundle = record.bundle
    assert bundle is not None
    patient = _by_type(bundle, "Patient")[0]
    assert patient["name"][0]["text"] == "許嘉瑋"
    hkid = next(i for i in patient["identifier"] if i["system"].endswith("/sid/hkid"))
    assert hkid["value"] == "K583726A"
    request = _by_type(bundle, "ServiceRequest")[0]
    assert request["reasonCode"][0]["text"] == "術後病情穩定，轉回南沙跟進（下轉）"
    assert "LDL-C|HDL-C" in request["note"][0]["text"]
    diagnoses = {c["code"]["text"] for c in _by_type(bundle, "Condition")}
    assert "冠狀動脈粥樣硬化性心臟病" in diagnoses


def test_local_exam_code_is_translated_to_loinc_through_the_conceptmap(
    converter: Converter,
) -> None:
    bundle = _bundles(converter, REPO / "tests/golden/hl7v2/orm_o01_two_orders.hl7")[0]
    codes = [r["code"]["coding"] for r in _by_type(bundle, "ServiceRequest")]
    assert [[(c["system"].rsplit("/", 1)[-1], c["code"]) for c in cc] for cc in codes] == [
        [("lax2-99lax2", "CT001"), ("loinc.org", "30799-1")],
        [("lax2-99lax2", "CT002"), ("loinc.org", "29252-4")],
    ]


def test_one_broken_message_does_not_stop_the_batch(converter: Converter) -> None:
    records = converter.convert((REPO / "examples/hl7v2/batch_mixed.hl7").read_bytes())
    assert [r.ok for r in records] == [True, False, True]
    [error] = records[1].errors
    assert error.code == "mapping.no-identity" and error.location == "PID-3"
    assert "PID segment is missing" in error.message
    assert error.record and "LAX220260622090500002" in error.record


def test_bundle_json_is_the_bundle_as_utf8_json(converter: Converter) -> None:
    [record] = converter.convert((REPO / "examples/hl7v2/omi_o23_nsch_ct.hl7").read_bytes())
    assert record.bundle_json is not None
    assert orjson.loads(record.bundle_json) == record.bundle
    assert record.bundle_json.endswith(b"\n") and "許".encode() in record.bundle_json


def test_a_message_that_cannot_be_decoded_is_still_named_by_its_control_id(
    converter: Converter,
) -> None:
    data = b"MSH|^~\\&|A|B|C|D|20260101||REF^I12|CTRL-77|P|2.5|||||CHN|KLINGON\rPID|1\r"
    [record] = converter.convert(data, source="inbox.hl7")
    [error] = record.errors
    assert error.code == "intake.charset-unknown"
    assert error.record == "inbox.hl7, message CTRL-77"


# -- the stage list ----------------------------------------------------------------------


def test_architecture_page_draws_the_stage_list_from_the_code() -> None:
    from gateway.pipeline import DOC_BEGIN, DOC_END, stage_doc

    text = (REPO / "docs" / "architecture.md").read_text(encoding="utf-8")
    drawn = text.split(DOC_BEGIN, 1)[1].split(DOC_END, 1)[0]
    assert drawn == "\n" + stage_doc(), "run: python -m gateway.stagedoc"


def test_built_stages_hand_on_what_the_next_one_takes() -> None:
    from gateway.envelope import TRANSITIONS, State
    from gateway.pipeline import STAGES

    built = [s for s in STAGES if s.run is not None]
    assert [s.name for s in built] == ["intake", "mapping", "validation", "serialise"]
    for before, after in itertools.pairwise(built):
        assert before.output is after.input, (before.name, after.name)
    # each stage's state is reachable from the one before it
    state = State.RECEIVED
    for stage in built:
        assert stage.reaches in TRANSITIONS[state]
        state = stage.reaches
    assert state is State.CONVERTED
    names = [s.name for s in STAGES]
    assert len(set(names)) == len(names)
    assert names[len(built) :] == ["policy", "signing", "outbox"]  # per partner, in order


def test_a_record_keeps_its_state_and_history(converter: Converter) -> None:
    records = converter.convert((REPO / "examples/hl7v2/batch_mixed.hl7").read_bytes())
    from gateway.envelope import State

    good, bad = records[0], records[1]
    assert good.state is State.CONVERTED
    assert [(s.stage, s.outcome, s.code) for s in good.history] == [
        ("intake", "ok", None),
        ("mapping", "ok", None),
        ("validation", "ok", None),
        ("serialise", "ok", None),
    ]
    assert all(s.ms >= 0 for s in good.history)
    assert bad.state is State.FAILED
    assert [(s.stage, s.outcome, s.code) for s in bad.history] == [
        ("intake", "ok", None),
        ("mapping", "failed", "mapping.no-identity"),
    ]


def test_an_illegal_state_transition_raises(converter: Converter) -> None:
    from gateway.envelope import State, TransitionError

    [record] = converter.convert((REPO / "examples/hl7v2/omi_o23_nsch_ct.hl7").read_bytes())
    with pytest.raises(TransitionError):
        record.advance(State.MAPPED)  # converted records do not go back
    record.advance(State.FAILED)
    with pytest.raises(TransitionError):
        record.advance(State.CONVERTED)  # nor do failed ones


# -- records are theirs alone ------------------------------------------------------------

REFERRALS = (
    REPO / "examples/hl7v2/ref_i12_lax2_to_njmu2.hl7",  # GB 18030
    REPO / "examples/hl7v2/ref_i12_nsgp_to_nsch.hl7",
)


def _tamper(node: Any, tally: dict[str, int]) -> None:
    """Change every value inside ``node`` in place: each string, number and boolean in
    every dict and list. A change refused (a frozen shared value) is counted."""

    def changed(value: Any) -> Any:
        if isinstance(value, bool):
            return not value
        if isinstance(value, (int, float)):
            return value + 1
        return f"{value}·tampered"

    if isinstance(node, dict):
        items: Any = list(node.items())
    elif isinstance(node, list):
        items = list(enumerate(node))
    else:
        return
    for key, value in items:
        if isinstance(value, (dict, list)):
            _tamper(value, tally)
            continue
        try:
            node[key] = changed(value)
            tally["changed"] += 1
        except TypeError:
            tally["refused"] += 1


def test_changing_a_records_bundle_changes_no_other_record(settings: Settings) -> None:
    converter = Converter(settings)
    first, second = (p.read_bytes() for p in REFERRALS)
    [a] = converter.convert(first)
    [b] = converter.convert(second)
    before = (a.bundle_json, b.bundle_json)
    tally = {"changed": 0, "refused": 0}
    _tamper(a.bundle, tally)
    assert tally["changed"] > 100 and tally["refused"] == 0  # the record's own Bundle
    assert (converter.convert(first)[0].bundle_json, converter.convert(second)[0].bundle_json) == (
        before
    )


@pytest.mark.parametrize("stage", ["intake", "mapping", "validation", "serialise"])
def test_changing_what_any_stage_hands_on_changes_no_other_record(
    settings: Settings, stage: str
) -> None:
    from gateway.intake.hl7v2 import read_messages

    converter = Converter(settings)
    first, second = (p.read_bytes() for p in REFERRALS)
    before = [converter.convert(d)[0].bundle_json for d in (first, second)]
    tally = {"changed": 0, "refused": 0}

    def tamper(done: Any, record: Any, output: Any) -> None:
        if done.name == stage:
            _tamper(output, tally)  # the stage's output (a Bundle, or bytes / a Unit)
            _tamper(record.bundle, tally)  # the record's own Bundle, once there is one

    [unit] = read_messages(first, converter.network.charset)
    converter.finish(unit, after=tamper)
    if stage in ("mapping", "validation"):
        # the mapped Bundle: built for this record, except the frozen shared parts
        assert tally["changed"] > 50 and tally["refused"] > 50
    if stage == "serialise":
        assert tally["changed"] > 100
    assert [converter.convert(d)[0].bundle_json for d in (second, first)] == before[::-1]


def test_a_frozen_shared_value_refuses_an_edit_loudly(settings: Settings) -> None:
    from gateway.intake.hl7v2 import read_messages

    converter = Converter(settings)
    converter.convert(REFERRALS[0].read_bytes())  # met once before: the memo remembers…
    [unit] = read_messages(REFERRALS[0].read_bytes(), converter.network.charset)
    mapped: list[Any] = []  # …and shares what it remembered
    converter.finish(
        unit, after=lambda s, r, out: mapped.append(out) if s.name == "mapping" else None
    )
    organisations = _by_type(mapped[0], "Organization")
    assert organisations
    with pytest.raises(TypeError, match="shared between records"):
        organisations[0]["name"] = "changed"  # the resource dict is the record's own…
        organisations[0]["identifier"][0]["value"] = "changed"  # …its memoised parts are not


# -- isolation -----------------------------------------------------------------------------


def _failing(stage_name: str, when: Any, message: str) -> tuple[Any, ...]:
    from gateway import pipeline

    def wrap(stage: Any) -> Any:
        if stage.name != stage_name:
            return stage
        inner = stage.run

        def run(conv: Any, record: Any, payload: Any, trace: bool) -> Any:
            if when(record):
                raise ValueError(message)
            return inner(conv, record, payload, trace)

        return dataclasses.replace(stage, run=run)

    return tuple(wrap(s) for s in pipeline.STAGES)


@pytest.mark.parametrize("stage", ["intake", "mapping", "validation", "serialise"])
def test_an_unexpected_exception_fails_only_its_record(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, stage: str
) -> None:
    from gateway import pipeline

    converter = Converter(settings)
    data = (REPO / "examples/hl7v2/batch_mixed.hl7").read_bytes()
    expected = [r.bundle_json for r in converter.convert(data)]
    monkeypatch.setattr(
        pipeline,
        "STAGES",
        _failing(stage, lambda r: r.index == 1, "invalid literal for int(): '王伟'"),
    )
    records = converter.convert(data, source="王伟.hl7")
    assert [r.ok for r in records] == [False, False, True]
    [issue] = records[0].errors
    assert issue.code == "internal" and issue.severity == "error"
    assert issue.message == f"unexpected error in stage {stage}; see the gateway log"
    assert issue.to_fhir()["code"] == "exception"
    assert records[0].history[-1].code == "internal"
    assert records[2].bundle_json == expected[2]


def test_a_reader_that_raises_ends_its_input_with_one_internal_record(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    from gateway import pipeline

    real = pipeline.read_messages

    def reader(data: bytes, *args: Any, **kwargs: Any) -> Any:
        units = real(data, *args, **kwargs)  # the pipeline passes network= by keyword
        yield next(units)
        raise IndexError("list index out of range: 0012345")

    converter = Converter(settings)
    monkeypatch.setattr(pipeline, "read_messages", reader)
    records = converter.convert((REPO / "examples/hl7v2/batch_mixed.hl7").read_bytes())
    assert [r.ok for r in records] == [True, False]
    [issue] = records[1].errors
    assert issue.code == "internal" and "stage intake" in issue.message
    assert records[1].index == 2 and "0012345" not in issue.line()


def test_a_bundle_over_the_size_limit_fails_its_record_only(settings: Settings) -> None:
    small = dataclasses.replace(settings, max_bundle_bytes=21_500)
    converter = Converter(small)
    sizes = {
        p.name: len(Converter(settings).convert(p.read_bytes())[0].bundle_json or b"")
        for p in REFERRALS
    }
    records = [converter.convert(p.read_bytes())[0] for p in REFERRALS]
    for path, record in zip(REFERRALS, records, strict=True):
        if sizes[path.name] > 21_500:
            [error] = record.errors
            assert error.code == "validation.bundle-too-large" and error.location == "Bundle"
            assert f"{sizes[path.name]:,} bytes" in error.message
            assert record.bundle_json is None and record.history[-1].stage == "serialise"
        else:
            assert record.ok
    assert sorted(s > 21_500 for s in sizes.values()) == [False, True]


def test_a_dicom_reader_that_raises_gives_an_internal_record_not_a_traceback(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    from gateway import pipeline

    def reader(items: Any, network: Any, sender: Any) -> Any:
        raise NotImplementedError("unknown VR 'XY' in (0020,0011)")
        yield  # a generator, as the real reader

    monkeypatch.setattr(pipeline, "read_studies", reader)
    [record] = Converter(settings).convert_files([("a.dcm", b"DICM")])
    assert record.kind == "study" and record.errors[0].code == "internal"
    assert record.errors[0].line() == (
        "error: study #1: unexpected error in stage intake; see the gateway log [internal]"
    )


def test_the_memo_shares_a_value_from_its_second_use_on(settings: Settings) -> None:
    from gateway.intake.hl7v2 import read_messages
    from gateway.shared import is_frozen

    converter = Converter(settings)
    data = REFERRALS[0].read_bytes()

    def staff_identifiers() -> list[Any]:
        [unit] = read_messages(data, converter.network.charset)
        out: list[Any] = []
        converter.finish(unit, after=lambda s, r, o: out.append(o) if s.name == "mapping" else None)
        return [o["identifier"] for o in _by_type(out[0], "Practitioner")]

    first = staff_identifiers()  # met once: this record's own, shared with nobody
    assert first and not any(is_frozen(i) for i in first)
    second = staff_identifiers()  # met again: remembered, frozen, shared
    assert all(is_frozen(i) for i in second) and second == first
    third = staff_identifiers()
    assert all(t is s for t, s in zip(third, second, strict=True))


# -- stage by stage ------------------------------------------------------------------------


def _placed(record: Any) -> tuple[Any, ...]:
    """:func:`_outcome` and the record's place: for inputs converted as they came."""
    return (*_outcome(record), record.format, record.index, [i.record for i in record.issues])


def _outcome(record: Any) -> tuple[Any, ...]:
    """What a record must be whether it went through the stages alone or in a batch (its
    index, and the record its issues name, are its place in its own input)."""
    return (
        record.bundle_json,
        record.state,
        record.control_id,
        record.message_type,
        record.unmapped,
        [(i.code, i.location, i.severity, i.message) for i in record.issues],
        [(s.stage, s.outcome, s.code) for s in record.history],
    )


def _batch_sizes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The number of records of each stage-by-stage run from now on (_finish_batch)."""
    from gateway import pipeline

    sizes: list[int] = []
    real = pipeline.Converter._finish_batch

    def spy(self: Converter, units: Any, source: Any, trace: bool) -> Any:
        sizes.append(len(units))
        return real(self, units, source, trace)

    monkeypatch.setattr(pipeline.Converter, "_finish_batch", spy)
    return sizes


def _joined_samples(converter: Converter) -> tuple[bytes, list[bytes]]:
    """Every sample message (including the ones that fail) as separate inputs and as one
    file, so that one input holds more messages than a batch of stages takes."""
    alone = [r.raw for p in SAMPLES for r in converter.convert(p.read_bytes()) if r.raw] * 2
    return b"\n".join(alone), alone


def test_the_messages_of_one_input_convert_as_each_would_alone(settings: Settings) -> None:
    from gateway import pipeline

    converter = Converter(settings)
    joined, alone = _joined_samples(converter)
    assert len(alone) > pipeline._BATCH["hl7v2"]  # two batches at least
    together = converter.convert(joined)
    separate = [r for data in alone for r in converter.convert(data)]
    assert [_outcome(a) for a in together] == [_outcome(b) for b in separate]


@pytest.mark.parametrize("inputs", ["one file", "convert_many"])
def test_the_messages_go_through_the_stages_stage_by_stage(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, inputs: str
) -> None:
    """Each stage over the batch before the next stage (its code and data stay in the
    CPU caches); a record that fails leaves the batch, the others go on."""
    from gateway import pipeline

    seen: list[tuple[str, int]] = []
    controls: list[str | None] = []

    def wrap(stage: Any) -> Any:
        inner = stage.run
        if inner is None:
            return stage

        def run(conv: Any, record: Any, payload: Any, trace: bool) -> Any:
            if record.control_id not in controls:
                controls.append(record.control_id)
            n = controls.index(record.control_id) + 1
            seen.append((stage.name, n))
            if stage.name == "mapping" and n == 2:
                raise ValueError("a bug in one record's mapping")
            return inner(conv, record, payload, trace)

        return dataclasses.replace(stage, run=run)

    monkeypatch.setattr(pipeline, "STAGES", tuple(wrap(s) for s in pipeline.STAGES))
    messages = [
        (REPO / "examples/hl7v2" / name).read_bytes().strip()
        for name in (
            "ref_i12_hkpmc_to_nsch.hl7",
            "ref_i12_lax2_to_njmu2.hl7",
            "ref_i12_nsch_to_hkpmc.hl7",
        )
    ]
    converter = Converter(settings)
    if inputs == "one file":
        records = converter.convert(b"\n".join(messages))
    else:
        records = [r for rs in converter.convert_many(messages) for r in rs]
    assert [r.ok for r in records] == [True, False, True]
    assert records[1].errors[0].code == "internal"
    assert seen == [
        ("intake", 1), ("intake", 2), ("intake", 3),
        ("mapping", 1), ("mapping", 2), ("mapping", 3),
        ("validation", 1), ("validation", 3),
        ("serialise", 1), ("serialise", 3),
    ]  # fmt: skip


def test_convert_many_gives_each_input_what_convert_gives_it(settings: Settings) -> None:
    """Inputs of one message each, a file of several, a CDA document (converted alone),
    an empty and a binary input: the Records convert(data) makes of each, in order."""
    converter = Converter(settings)
    joined, alone = _joined_samples(converter)
    cda = (REPO / "examples" / "imaging" / "lax2-ct-report-local.xml").read_bytes()
    inputs = [*alone[:20], cda, b"", b"\x00\x01binary", joined, *alone[20:]]
    many = list(converter.convert_many(inputs))
    each = [converter.convert(data) for data in inputs]
    assert [len(records) for records in many] == [len(records) for records in each]
    assert [_placed(r) for r in itertools.chain.from_iterable(many)] == [
        _placed(r) for r in itertools.chain.from_iterable(each)
    ]
    assert many[20][0].format == "cda" and many[20][0].ok


def test_convert_many_takes_at_most_a_batch_of_records_through_the_stages(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A large input among small ones: no stage run holds more than a batch of records
    (their parsed views), as when convert() takes the same input."""
    from gateway import pipeline

    converter = Converter(settings)
    joined, alone = _joined_samples(converter)
    sizes = _batch_sizes(monkeypatch)
    inputs = [*alone[:20], joined, *alone[20:]]
    many = list(converter.convert_many(inputs))
    assert max(sizes) <= pipeline._BATCH["hl7v2"] and sum(sizes) == 2 * len(alone)
    assert [[r.bundle_json for r in rs] for rs in many] == [
        [r.bundle_json for r in converter.convert(data)] for data in inputs
    ]


def _failing_in_each_stage(targets: dict[str, bytes]) -> tuple[Any, ...]:
    """The stages, where the record of ``targets["mapping"]`` raises an unexpected
    exception in mapping, and that of ``targets["validation"]`` hands the real validator
    a Bundle whose Patient.birthDate is not a date (the same shape as the valid ones)."""
    from gateway import pipeline

    def wrap(stage: Any) -> Any:
        inner = stage.run
        if stage.name not in ("mapping", "validation"):
            return stage

        def run(conv: Any, record: Any, payload: Any, trace: bool) -> Any:
            if record.raw != targets[stage.name]:
                return inner(conv, record, payload, trace)
            if stage.name == "mapping":
                raise ValueError("invalid literal for int(): '王伟'")
            entries = [
                {**e, "resource": {**e["resource"], "birthDate": "M"}}
                if e["resource"]["resourceType"] == "Patient"
                else e
                for e in payload["entry"]
            ]
            return inner(conv, record, {**payload, "entry": entries}, trace)

        return dataclasses.replace(stage, run=run)

    return tuple(wrap(s) for s in pipeline.STAGES)


@pytest.mark.parametrize("trace", [False, True], ids=["plain", "unmapped"])
def test_records_failing_in_different_stages_of_one_batch_fail_as_alone(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, trace: bool
) -> None:
    """In one batch: a mapping that raises, a Bundle the validator refuses, Bundles over
    max_bundle_bytes (serialise), and messages failing at intake and mapping on their
    own; each record's outcome (with --unmapped: its unmapped fields too) is what it
    gets alone, in input order, with its own index and line."""
    from gateway import pipeline

    converter = Converter(settings)
    _, alone = _joined_samples(converter)
    alone[10:10] = [b"MSH|^~\\&|A\r"]  # intake.msh-truncated
    alone[40:40] = [b"MSH|\r"]  # intake.msh-syntax, in the second batch
    joined = b"\n".join(alone)
    sizes = sorted(len(r.bundle_json) for d in alone for r in converter.convert(d) if r.ok)
    limited = Converter(dataclasses.replace(settings, max_bundle_bytes=sizes[len(sizes) // 2]))
    ok = [d for d in alone if converter.convert(d)[0].ok]
    targets = {"mapping": ok[3], "validation": ok[5]}
    monkeypatch.setattr(pipeline, "STAGES", _failing_in_each_stage(targets))
    together = limited.convert(joined, trace=trace)
    separate = [r for data in alone for r in limited.convert(data, trace=trace)]
    assert [_outcome(a) for a in together] == [_outcome(b) for b in separate]
    assert [r.index for r in together] == list(range(1, len(alone) + 1))
    height = [len(re.split(rb"\r\n|\r|\n", d.rstrip(b"\r\n"))) for d in alone]
    lines = [1] + [1 + n for n in itertools.accumulate(height[:-1])]
    assert [r.line for r in together] == lines
    failed_in = {r.history[-1].stage for r in together if not r.ok}
    assert failed_in == {"intake", "mapping", "validation", "serialise"}
    failures = {(r.errors[0].code, r.history[-1].stage) for r in together if not r.ok}
    assert ("internal", "mapping") in failures
    if trace:
        assert any(r.unmapped for r in together)


@pytest.mark.parametrize("how", ["convert", "stream", "convert_many"])
def test_a_reader_that_raises_after_40_messages_keeps_the_40_and_adds_one_record(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    """The reader raises inside the second batch: the 40 records it made convert as each
    would alone (the 8 of the unfinished batch too), then one internal record (#41)."""
    from gateway import pipeline

    converter = Converter(settings)
    _, alone = _joined_samples(converter)
    alone = alone[:50]
    expected = [_outcome(r) for data in alone[:40] for r in converter.convert(data)]

    def broken(real: Any) -> Any:
        def reader(data: Any, *args: Any, **kwargs: Any) -> Any:
            yield from itertools.islice(real(data, *args, **kwargs), 40)
            raise IndexError("list index out of range: 0012345")

        return reader

    monkeypatch.setattr(pipeline, "read_messages", broken(pipeline.read_messages))
    monkeypatch.setattr(pipeline, "stream_messages", broken(pipeline.stream_messages))
    joined = b"\n".join(alone)
    if how == "convert":
        records = converter.convert(joined)
    elif how == "stream":
        chunks = [joined[n : n + 1000] for n in range(0, len(joined), 1000)]
        records = list(converter.iter_convert_stream(iter(chunks)))
    else:
        [records] = converter.convert_many([joined])
    assert [_outcome(r) for r in records[:40]] == expected
    assert [r.index for r in records] == list(range(1, 42))
    last = records[40]
    assert [(i.code, s.stage) for i in last.errors for s in last.history] == [
        ("internal", "intake")
    ]
    assert "0012345" not in last.errors[0].line()


def test_each_record_logs_and_is_measured_as_alone(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    """Stage by stage: per record, the same DEBUG and INFO lines (stage, outcome, code)
    and one stage-histogram observation per stage it went through, as converting each
    message alone; history timings are per record, non-negative, in stage order."""
    from collections import Counter

    from gateway.metrics import STAGE_SECONDS
    from gateway.metrics._latency import stage_histogram

    def counts() -> Counter[str]:
        return Counter(
            {
                s.labels["stage"]: s.value
                for family in stage_histogram().collect()
                for s in family.samples
                if s.name == f"{STAGE_SECONDS}_count"
            }
        )

    def lines() -> Counter[tuple[Any, ...]]:
        found = Counter(
            (r.record, r.levelname, r.getMessage(), r.stage, r.outcome, r.code)  # type: ignore[attr-defined]
            for r in caplog.records
            if r.name == "gateway.pipeline"
        )
        caplog.clear()
        return found

    converter = Converter(settings)
    joined, alone = _joined_samples(converter)
    caplog.set_level(logging.DEBUG, logger="gateway")
    before = counts()
    lines()
    together = converter.convert(joined)
    between, logged_together = counts(), lines()
    separate = [r for data in alone for r in converter.convert(data)]
    after, logged_alone = counts(), lines()
    assert between - before == after - between
    assert between - before == Counter(s.stage for r in together for s in r.history)
    assert logged_together == logged_alone and logged_together
    assert len([r for r in separate if not r.ok]) > 0  # failing records are in it too
    for record in together:
        assert [s.stage for s in record.history] == [
            "intake", "mapping", "validation", "serialise"
        ][: len(record.history)]  # fmt: skip
        assert all(s.ms >= 0 for s in record.history)


def test_gateway_convert_of_a_file_with_bad_messages_interleaved(
    tmp_path: Path, settings: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    """A file of more than a batch, bad messages between good ones: every good one is
    written, each bad one is one error line naming its message, in input order; exit 1."""
    from gateway.cli import main

    converter = Converter(settings)
    _, alone = _joined_samples(converter)
    good = [d for d in alone if converter.convert(d)[0].ok][:45]
    bad = [b"MSH|\r", b"MSH|^~\\&|A\r", b"MSHX\x00\x01\r"]
    messages = [*good[:5], bad[0], *good[5:33], bad[1], *good[33:], bad[2]]
    source = tmp_path / "mixed.hl7"
    records = converter.convert(b"\n".join(messages), source=str(source))
    expected = [e.line() for r in records for e in r.errors]
    source.write_bytes(b"\n".join(messages))
    out = tmp_path / "out"
    code = main(["--home", str(tmp_path / "home"), "convert", str(source), "-o", f"{out}/", "-q"])
    err = capsys.readouterr().err.splitlines()
    assert code == 1
    assert [line for line in err if line.startswith("error")] == expected
    at = [f"message #{n} (" for n, m in enumerate(messages, 1) if m in bad]
    assert [n in line for n, line in zip(at, expected, strict=True)] == [True] * 3
    assert err[-1].startswith(f"converted {len(good)}, failed 3 (of {len(messages)} records")
    assert len(list(out.iterdir())) == len(good)


def test_a_streamed_file_is_converted_a_batch_at_a_time(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """iter_convert_stream (gateway convert) reads about one batch of messages ahead of
    the record it hands out, and no stage run holds more than a batch of records."""
    from gateway import pipeline

    converter = Converter(settings)
    _, alone = _joined_samples(converter)
    messages = (alone * 4)[:200]
    sizes = _batch_sizes(monkeypatch)
    pulled = 0

    def chunks() -> Any:
        nonlocal pulled
        for message in messages:  # one message a chunk
            pulled += 1
            yield message + b"\r"

    ahead = []
    for record in converter.iter_convert_stream(chunks()):
        ahead.append(pulled - record.index)
    size = pipeline._BATCH["hl7v2"]
    assert len(ahead) == 200 and max(ahead) <= size + 1  # the next message: its end
    assert sizes == [size] * (200 // size) + [200 % size]


def test_peak_memory_of_a_stream_does_not_grow_with_the_file(settings: Settings) -> None:
    """A file of 2,000 messages peaks (tracemalloc) about as high as one of 200."""
    import tracemalloc

    converter = Converter(settings)
    _, alone = _joined_samples(converter)

    def peak(count: int) -> int:
        data = b"\r".join((alone * (count // len(alone) + 1))[:count])
        chunks = [data[n : n + 65536] for n in range(0, len(data), 65536)]
        del data
        tracemalloc.start()
        try:
            base = tracemalloc.get_traced_memory()[0]
            for _ in converter.iter_convert_stream(iter(chunks)):
                pass
            return tracemalloc.get_traced_memory()[1] - base
        finally:
            tracemalloc.stop()

    peak(200)  # warm: caches, compiled plans
    small, large = peak(200), peak(2000)
    assert large < small * 1.5, (small, large)


def test_convert_many_keeps_input_order_across_dicom_cda_and_bad_inputs(
    settings: Settings,
) -> None:
    """HL7 v2 messages held for a batch, then a DICOM file, a CDA document, garbage and
    an empty input between them: each input's Records, in input order, as convert()."""
    converter = Converter(settings)
    _, alone = _joined_samples(converter)
    dicom = (REPO / "examples/imaging/nsch_cta.study/series1/IM0001.dcm").read_bytes()
    cda = (REPO / "examples" / "imaging" / "lax2-ct-report-local.xml").read_bytes()
    inputs = [*alone[:5], dicom, *alone[5:9], cda, alone[9], b"\xff\xfe\x00garbage", b""]
    inputs += [*alone[10:40], dicom]
    many = list(converter.convert_many(inputs))
    each = [converter.convert(data) for data in inputs]
    assert [[_outcome(r) for r in rs] for rs in many] == [[_outcome(r) for r in rs] for rs in each]
    assert [rs[0].format for rs in many][5:12] == ["dicom", *["hl7v2"] * 4, "cda", "hl7v2"]
    assert many[5][0].ok and many[10][0].ok


def _conversions() -> tuple[Any, Any]:
    """What says records were converted: the stage histogram's count per stage (from
    now on) and the INFO ``record ...`` lines of the pipeline in ``caplog``."""
    from collections import Counter

    from gateway.metrics import STAGE_SECONDS
    from gateway.metrics._latency import stage_histogram

    def counts() -> Counter[str]:
        return Counter(
            {
                s.labels["stage"]: s.value
                for family in stage_histogram().collect()
                for s in family.samples
                if s.name == f"{STAGE_SECONDS}_count"
            }
        )

    before = counts()

    def measured() -> Counter[str]:
        return counts() - before

    def logged(caplog: pytest.LogCaptureFixture) -> list[Any]:
        return [
            r.record  # type: ignore[attr-defined]
            for r in caplog.records
            if r.name == "gateway.pipeline" and r.levelno == logging.INFO
        ]

    return measured, logged


def _forty_good(converter: Converter) -> list[bytes]:
    _, alone = _joined_samples(converter)
    good = [d for d in alone if converter.convert(d)[0].ok][:40]
    assert len(good) == 40
    return good


@pytest.mark.parametrize("how", ["convert", "stream", "convert_many"])
def test_a_consumer_that_takes_one_record_sees_one_conversion_logged_and_measured(
    settings: Settings, caplog: pytest.LogCaptureFixture, how: str
) -> None:
    """The stages run 32 records at a time, ahead of the consumer; one that stops after
    the first record (a caller breaking out of its loop) must find one conversion in
    the logs and the metrics, not the 32 of the batch (the others were never handed)."""
    converter = Converter(settings)
    good = _forty_good(converter)
    joined = b"\n".join(good)
    caplog.set_level(logging.DEBUG, logger="gateway")
    caplog.clear()
    measured, logged = _conversions()
    if how == "convert":
        first = next(converter.iter_convert(joined))
    elif how == "stream":
        chunks = [joined[n : n + 1000] for n in range(0, len(joined), 1000)]
        first = next(converter.iter_convert_stream(iter(chunks)))
    else:
        [first] = next(converter.convert_many(good))  # 40 inputs of one message each
    assert first.ok
    stages = ["intake", "mapping", "validation", "serialise"]
    assert measured() == dict.fromkeys(stages, 1)
    assert logged(caplog) == [first.log_id]
    steps = [
        r.stage  # type: ignore[attr-defined]
        for r in caplog.records
        if r.name == "gateway.pipeline" and r.levelno == logging.DEBUG
    ]
    assert steps == stages


def test_a_records_internal_error_is_logged_only_when_it_is_handed_out(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Records after the consumer's last one raised in mapping: no ERROR line for them
    (they were never handed out); taken, a record's ERROR line comes between its stage
    lines, as when it goes alone."""
    from gateway import pipeline

    converter = Converter(settings)
    good = _forty_good(converter)
    failing = _failing("mapping", lambda r: r.index in (3, 4), "a bug: 0012345")
    monkeypatch.setattr(pipeline, "STAGES", failing)
    caplog.set_level(logging.DEBUG, logger="gateway")
    records = converter.iter_convert(b"\n".join(good))
    taken = [next(records), next(records)]
    assert all(r.ok for r in taken)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    third = next(records)
    records.close()  # the fourth, failed too, is never taken
    assert third.errors[0].code == "internal"
    assert len([r for r in caplog.records if r.levelno >= logging.ERROR]) == 1
    mine = [
        (r.levelname, r.getMessage())
        for r in caplog.records
        if getattr(r, "record", None) == third.log_id
    ]
    assert mine == [
        ("DEBUG", "stage ok"),
        ("ERROR", "unexpected error in stage mapping: ValueError"),
        ("DEBUG", "stage failed"),
        ("INFO", "record failed"),
    ]


def test_convert_many_reads_each_message_of_a_large_input_once(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An input of more than a batch (40 messages) among small ones: the HL7 v2 reader
    is asked for each message once (it was asked for the first 33 twice: once to see
    whether the input fits a batch, then again from the start), and the records are
    what convert() gives."""
    from gateway import pipeline

    converter = Converter(settings)
    good = _forty_good(converter)
    inputs = [good[0], b"\n".join(good), good[1]]
    expected = [[_placed(r) for r in converter.convert(data)] for data in inputs]
    reads = 0
    real = pipeline.read_messages

    def counting(data: Any, *args: Any, **kwargs: Any) -> Any:
        nonlocal reads
        for unit in real(data, *args, **kwargs):
            reads += 1
            yield unit

    monkeypatch.setattr(pipeline, "read_messages", counting)
    many = list(converter.convert_many(inputs))
    assert reads == 42
    assert [[_placed(r) for r in rs] for rs in many] == expected
