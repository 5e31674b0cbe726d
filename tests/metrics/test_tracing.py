"""Optional OpenTelemetry tracing (docs/metrics.md, "Tracing"): a stored message's
stages are spans of one trace, whose attributes hold no patient data; with tracing off
opentelemetry is not even imported; a bad setting is a clear ConfigError."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest
import respx
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode
from packaging.requirements import Requirement

from gateway import Converter, Settings
from gateway.delivery import Deliverer, Outbound
from gateway.errors import ConfigError
from gateway.metrics import _tracing
from gateway.processing import process_message
from gateway.store import Incoming, Store, open_store
from tests.conftest import REPO
from tests.delivery.conftest import answer_checks

# GB 18030: 王伟 / WANG^WEI, MRN 0012345, hospital no. J20250043, resident id card number
MESSAGE = REPO / "examples" / "hl7v2" / "ref_i12_lax2_to_njmu2.hl7"
PATIENT_DATA = (
    "王",
    "WANG",
    "0012345",
    "J20250043",
    "341122196604200135",
    "19660420",
    "8613900000001",
    "LAX220260611101500003",  # the control id (MSH-10)
)
CONVERTER_STAGES = ["intake", "mapping", "validation", "serialise"]
NJMU2 = "https://fhir.njmu2.example.cn/fhir/"  # the demo partner the message is routed to


def _answer(request: Any) -> respx.MockResponse:
    """The partner's transaction-response: one 201 per entry sent (the worker takes an
    answer that does not account for every entry as ambiguous)."""
    sent = json.loads(request.content).get("entry") or []
    entries = [{"response": {"status": "201"}} for _ in sent]
    return respx.MockResponse(
        200, json={"resourceType": "Bundle", "type": "transaction-response", "entry": entries}
    )


@pytest.fixture
def spans(tmp_path: Path) -> Iterator[tuple[Settings, InMemorySpanExporter]]:
    settings = Settings.load(home=tmp_path / "home", env={"GATEWAY_TRACING": "console"})
    exporter = InMemorySpanExporter()
    _tracing.configure_tracing(settings, exporter)  # the in-memory exporter, not the console
    try:
        yield settings, exporter
    finally:
        _tracing.reset_tracing()


def _values(span: ReadableSpan) -> list[str]:
    """Every text a span carries: name, attributes, status, events, resource."""
    out = [span.name, str(span.status.description)]
    out += [f"{k}={v}" for k, v in (span.attributes or {}).items()]
    out += [f"{k}={v}" for e in span.events for k, v in (e.attributes or {}).items()]
    out += [f"{k}={v}" for k, v in span.resource.attributes.items()]
    return out


def test_a_stored_message_is_one_trace_of_its_stages_without_patient_data(
    tmp_path: Path, spans: tuple[Settings, InMemorySpanExporter]
) -> None:
    settings, exporter = spans
    store = Store.open(f"sqlite:///{tmp_path / 'store.db'}")
    try:
        receipt = store.receive(Incoming(MESSAGE.read_bytes(), "cli"))
        outcome = process_message(store, Converter(settings), receipt.id)
    finally:
        store.close()
    assert outcome.state == "converted"
    finished = exporter.get_finished_spans()
    assert [s.name for s in finished] == [*CONVERTER_STAGES, "process"]
    trace_id, parent = _tracing.trace_id_of(receipt.id)
    for span in finished:
        assert span.context is not None and span.context.trace_id == trace_id
        assert span.parent is not None and span.parent.span_id == parent
        assert span.attributes is not None
        assert span.attributes["gateway.message_id"] == receipt.id
        assert span.attributes["gateway.stage"] == span.name
        assert span.status.status_code is StatusCode.UNSET
        assert span.start_time is not None and span.end_time is not None
        assert span.start_time <= span.end_time
    assert [s.attributes["gateway.outcome"] for s in finished if s.attributes] == [
        *["ok"] * 4,
        "converted",
    ]
    assert all(s.attributes and s.attributes["gateway.record_index"] == 1 for s in finished[:4])
    assert finished[0].resource.attributes["service.name"] == "fhir-gateway"
    texts = [text for span in finished for text in _values(span)]
    leaked = [(d, t) for t in texts for d in PATIENT_DATA if d.lower() in t.lower()]
    assert leaked == []
    # The span ids differ; the trace id is the message's, in any process of this gateway.
    assert len({s.context.span_id for s in finished if s.context}) == len(finished)


def test_the_outbound_path_and_the_delivery_attempt_join_the_messages_trace(
    tmp_path: Path, spans: tuple[Settings, InMemorySpanExporter]
) -> None:
    settings, exporter = spans
    store = open_store(settings)
    try:
        receipt = store.receive(Incoming(MESSAGE.read_bytes(), "cli"))
        process_message(store, Converter(settings), receipt.id)
        outbound = Outbound(settings, store)
        [placed] = outbound.process(receipt.id).placed
        assert (placed.partner, placed.outcome) == ("njmu2", "queued")
        with respx.mock(assert_all_mocked=True) as partner:
            answer_checks(partner)
            partner.post(NJMU2).mock(side_effect=_answer)
            with Deliverer(outbound.outbox, outbound.partners) as worker:
                worker.run_once()
        assert store.state_of(receipt.id) == "delivered"
    finally:
        store.close()
    finished = exporter.get_finished_spans()
    assert [s.name for s in finished] == [*CONVERTER_STAGES, "process", "outbound", "deliver"]
    assert {s.context.trace_id for s in finished if s.context} == {
        _tracing.trace_id_of(receipt.id)[0]
    }
    outbound_span, deliver = (dict(s.attributes or {}) for s in finished[-2:])
    common = {"gateway.message_id": receipt.id, "gateway.record_index": 1}
    assert outbound_span == {
        **common,
        "gateway.stage": "outbound",
        "gateway.outcome": "queued",
        "gateway.partner": "njmu2",
    }
    assert deliver == {
        **common,
        "gateway.stage": "deliver",
        "gateway.outcome": "delivered",
        "gateway.partner": "njmu2",
    }
    texts = [text for span in finished for text in _values(span)]
    assert [(d, t) for t in texts for d in PATIENT_DATA if d.lower() in t.lower()] == []


def test_the_trace_id_is_the_installations_own() -> None:
    def ids(service: str, institution: str | None) -> tuple[int, int]:
        settings = Settings(
            tracing="console", tracing_service_name=service, institution=institution
        )
        _tracing.configure_tracing(settings, InMemorySpanExporter())
        try:
            return _tracing.trace_id_of(42)
        finally:
            _tracing.reset_tracing()

    assert ids("fhir-gateway", "hkpmc") == ids("fhir-gateway", "hkpmc")  # deterministic
    assert ids("fhir-gateway", "hkpmc") != ids("fhir-gateway", "nsch")
    assert ids("fhir-gateway", "hkpmc") != ids("gw-2", "hkpmc")
    assert 0 < ids("fhir-gateway", None)[0] < 1 << 128


def test_a_failed_record_has_its_error_code_and_an_error_status(
    spans: tuple[Settings, InMemorySpanExporter],
) -> None:
    settings, exporter = spans
    no_msh = "PID|1||0012345^^^LAX2^MR||王^伟\r".encode()
    (record,) = Converter(settings).convert(no_msh)
    assert not record.ok
    [span] = exporter.get_finished_spans()  # it stopped at intake
    assert span.name == "intake" and span.attributes is not None
    assert span.attributes["gateway.outcome"] == "failed"
    assert span.attributes["gateway.error_code"] == record.errors[0].code
    assert "gateway.message_id" not in span.attributes  # not a stored message
    assert span.status.status_code is StatusCode.ERROR
    assert not [t for t in _values(span) for d in ("0012345", "王") if d in t]


def test_with_tracing_off_opentelemetry_is_not_imported(tmp_path: Path) -> None:
    code = (
        "import sys\n"
        "from gateway import Converter, Settings\n"
        "from gateway.processing import process_message\n"
        "from gateway.store import Incoming, Store\n"
        f"data = open({str(MESSAGE)!r}, 'rb').read()\n"
        "settings = Settings.load()\n"
        "assert settings.tracing == 'off'\n"
        "store = Store.open('sqlite:///' + sys.argv[1])\n"
        "receipt = store.receive(Incoming(data, 'cli'))\n"
        "assert process_message(store, Converter(settings), receipt.id).state == 'converted'\n"
        "print(sorted(m for m in sys.modules if m.startswith('opentelemetry')))\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GATEWAY_", "OTEL_"))}
    env["GATEWAY_HOME"] = str(tmp_path / "home")
    done = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "store.db")],
        env=env,
        capture_output=True,
        text=True,
        check=False,
        cwd=REPO,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


@pytest.mark.parametrize(
    ("name", "value", "says"),
    [
        ("GATEWAY_TRACING", "jaeger", "tracing must be off | console | otlp, not 'jaeger'"),
        ("GATEWAY_TRACING_ENDPOINT", "collector:4318", "tracing_endpoint must be an http(s) URL"),
        ("GATEWAY_TRACING_SERVICE_NAME", " ", "tracing_service_name must not be empty"),
    ],
)
def test_a_bad_tracing_setting_is_a_config_error(
    tmp_path: Path, name: str, value: str, says: str
) -> None:
    with pytest.raises(ConfigError) as raised:
        Settings.load(home=tmp_path, env={name: value})
    assert raised.value.code == "config.bad-setting"
    assert says in str(raised.value)


def test_the_tracing_extra_declares_what_tracing_imports() -> None:
    requirements = [Requirement(r) for r in metadata.requires("fhir-gateway") or []]
    extra = {r.name for r in requirements if r.marker and r.marker.evaluate({"extra": "tracing"})}
    assert extra == {
        "opentelemetry-api",
        "opentelemetry-sdk",
        "opentelemetry-exporter-otlp-proto-http",
    }
    owners = metadata.packages_distributions()["opentelemetry"]
    assert {"opentelemetry-api", "opentelemetry-sdk"} <= set(owners)


def test_the_settings_are_read(tmp_path: Path) -> None:
    env = {
        "GATEWAY_TRACING": "OTLP",
        "GATEWAY_TRACING_ENDPOINT": "http://collector.example.internal:4318/v1/traces",
        "GATEWAY_TRACING_SERVICE_NAME": "gw-panyu",
    }
    settings = Settings.load(home=tmp_path, env=env)
    assert settings.tracing == "otlp"
    assert settings.tracing_endpoint == env["GATEWAY_TRACING_ENDPOINT"]
    assert settings.tracing_service_name == "gw-panyu"
    assert Settings.load(home=tmp_path, env={}).tracing == "off"


def test_the_spans_of_records_in_one_batch_are_where_their_stages_ran(
    spans: tuple[Settings, InMemorySpanExporter], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file of several messages (the converter takes them in batches): each record's
    spans end when it is done, so the first record's intake span ends before the second
    record's intake starts, however long that one takes."""
    import dataclasses
    import time

    from gateway import pipeline

    def slow(stage: pipeline.Stage[Any, Any]) -> pipeline.Stage[Any, Any]:
        inner = stage.run
        if stage.name != "intake" or inner is None:
            return stage

        def run(conv: Any, record: Any, payload: Any, trace: bool) -> Any:
            if record.index == 2:
                time.sleep(0.2)  # far longer than the other stages of record 1 take
            return inner(conv, record, payload, trace)

        return dataclasses.replace(stage, run=run)

    settings, exporter = spans
    monkeypatch.setattr(pipeline, "STAGES", tuple(slow(s) for s in pipeline.STAGES))
    data = MESSAGE.read_bytes().strip()
    records = Converter(settings).convert(b"\n".join([data] * 3))
    assert [r.ok for r in records] == [True] * 3
    finished = exporter.get_finished_spans()
    assert [s.name for s in finished] == CONVERTER_STAGES * 3
    by_record = [finished[n : n + 4] for n in range(0, 12, 4)]
    for first, second in itertools.pairwise(by_record):
        assert first[-1].end_time is not None and second[0].start_time is not None
        # one record after the other (1 ms: the spans' clock is not the stages' timer)
        assert first[-1].end_time <= second[0].start_time + 1_000_000
