"""The gateway's logs: structured, configured by the CLI, and never carrying patient data."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
import yaml

from gateway import Converter, Settings
from gateway.errors import ConfigError, MappingError
from gateway.logs import configure, safe_traceback
from tests.gateway_cli import run

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"


def _names_and_ids_of(node: Any, out: set[str]) -> None:
    """Every name part, name text and identifier value of the patients in ``node`` (seed
    entries or FHIR Patient resources)."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("family", "text") and isinstance(value, str):
                out.add(value)
            elif key == "given":
                out.update([value] if isinstance(value, str) else value)
            elif key in ("resident_id", "hkid", "value") and isinstance(value, str):
                out.add(value)
            elif key == "mrn" and isinstance(value, dict):
                out.update(str(v) for v in value.values())
            else:
                _names_and_ids_of(value, out)
    elif isinstance(node, list):
        for item in node:
            _names_and_ids_of(item, out)


def _patient_data(converter: Converter) -> set[str]:
    found: set[str] = set()
    seeds = yaml.safe_load((REPO / "seeds" / "network.yaml").read_text(encoding="utf-8"))
    for patient in seeds["patients"]:
        _names_and_ids_of({k: patient[k] for k in ("name", "identifiers")}, found)
        hkid = patient["identifiers"].get("hkid")
        if hkid:
            found.add(hkid.replace("(", "").replace(")", ""))  # as HL7 CX-1 carries it
    # the example inputs, as the gateway reads them (every Patient of every Bundle) ...
    inputs = [p for p in (EXAMPLES / "hl7v2").glob("*.hl7")]
    inputs += [p for p in (EXAMPLES / "imaging").iterdir() if p.suffix != ".md"]
    for path in inputs:
        if path.name == "bundles":
            continue
        for record in converter.convert_path(path):
            for entry in (record.bundle or {}).get("entry", []):
                resource = entry["resource"]
                if resource["resourceType"] == "Patient":
                    _names_and_ids_of(
                        {"name": resource.get("name"), "id": resource.get("identifier")}, found
                    )
    # ... and as DICOM holds them
    for path in (EXAMPLES / "imaging").rglob("*.dcm"):
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        found.add(str(ds.PatientID))
        for group in (ds.PatientName.alphabetic, ds.PatientName.ideographic):
            found.update(part for part in group.split("^") if part)
    # Latin name parts short enough to be common words are matched whole-word below.
    return {v for v in found if v and not v.startswith(("http", "urn:"))}


def _json_lines(text: str) -> Iterator[dict[str, Any]]:
    for line in text.splitlines():
        if line.strip():
            yield json.loads(line)


def test_a_full_demo_at_debug_level_logs_no_patient_data(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, converter: Converter
) -> None:
    monkeypatch.setenv("GATEWAY_LOG_LEVEL", "debug")
    monkeypatch.setenv("GATEWAY_LOG_FORMAT", "json")
    proc = run("demo", home=tmp_path / "home")
    assert proc.returncode == 0, proc.stderr.decode()
    logs = proc.stderr.decode("utf-8")
    lines = list(_json_lines(logs))  # every line is one JSON object
    steps = {(line.get("stage"), line.get("outcome")) for line in lines}
    for stage in ("intake", "mapping", "validation", "serialise"):
        assert (stage, "ok") in steps
    assert ("mapping", "failed") in steps  # the broken message of the batch file
    assert all({"time", "level", "logger", "message"} <= line.keys() for line in lines)
    assert any(line.get("record") == "message LAX220260622090500002" for line in lines)

    secrets = _patient_data(converter)
    assert {"王伟", "WANG", "許嘉瑋", "许嘉玮", "0012345", "K583726A", "341122196604200135"} <= (
        secrets
    )
    leaked = sorted(s for s in secrets if s in logs)
    assert leaked == []
    # nor the names of the input files, which a user may have named after the patient
    assert "ref_i12_lax2_to_njmu2" not in logs


def _failing_mapping(converter: Converter, monkeypatch: pytest.MonkeyPatch) -> None:
    from gateway import pipeline

    def explode(*args: Any) -> Any:
        try:
            int("王伟 0012345")
        except ValueError as exc:
            raise KeyError("K583726A") from exc

    stages = tuple(
        s if s.name != "mapping" else __import__("dataclasses").replace(s, run=explode)
        for s in pipeline.STAGES
    )
    monkeypatch.setattr(pipeline, "STAGES", stages)


@pytest.mark.parametrize("fmt", ["json", "text"])
def test_an_unexpected_error_is_logged_with_its_traceback_but_not_its_message(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, fmt: str
) -> None:
    stream = io.StringIO()
    configure("info", fmt, stream=stream)
    try:
        converter = Converter(settings)
        _failing_mapping(converter, monkeypatch)
        data = (EXAMPLES / "hl7v2" / "ref_i12_lax2_to_njmu2.hl7").read_bytes()
        [record] = converter.convert(data, source="王伟.hl7")
    finally:
        configure("warning", "text")
    logs = stream.getvalue()
    assert record.errors[0].code == "internal"
    assert "Traceback (most recent call last)" in logs and "in explode" in logs
    assert "ValueError" in logs and "KeyError" in logs  # the whole chain, by type
    assert "message withheld" in logs
    for secret in ("王伟", "0012345", "K583726A"):
        assert secret not in logs and secret not in record.errors[0].message
    if fmt == "json":
        [error] = [e for e in _json_lines(logs) if e["level"] == "error"]
        assert error["record"] == "message LAX220260611101500003"
        assert (error["stage"], error["code"]) == ("mapping", "internal")
        [done] = [e for e in _json_lines(logs) if e["level"] == "info"]
        assert done["outcome"] == "failed" and done["code"] == "internal"


def test_safe_traceback_keeps_gateway_messages_and_withholds_others() -> None:
    try:
        try:
            raise MappingError("required", "PID-3 is required but empty", location="PID-3")
        except MappingError:
            raise UnicodeDecodeError("gb18030", "许".encode(), 0, 1, "illegal") from None
    except UnicodeDecodeError as exc:
        text = safe_traceback(exc)
    assert "UnicodeDecodeError: (message withheld" in text and "许" not in text
    assert "MappingError" not in text  # 'from None' hides the context, as Python does
    try:
        raise MappingError("required", "PID-3 is required but empty", location="PID-3")
    except MappingError as exc:
        assert "PID-3 is required but empty [mapping.required]" in safe_traceback(exc)


def test_a_logging_call_with_exc_info_is_formatted_safely() -> None:
    stream = io.StringIO()
    configure("debug", "text", stream=stream)
    try:
        try:
            int("陈志强")
        except ValueError:
            logging.getLogger("gateway.test").exception("while reading")
    finally:
        configure("warning", "text")
    assert "陈志强" not in stream.getvalue() and "ValueError" in stream.getvalue()


def test_log_settings_are_checked(tmp_path: Path) -> None:
    settings = Settings.load(
        home=tmp_path, env={"GATEWAY_LOG_LEVEL": "DEBUG", "GATEWAY_LOG_FORMAT": "json"}
    )
    assert (settings.log_level, settings.log_format) == ("debug", "json")
    assert Settings.load(home=tmp_path, env={}).log_level == "warning"
    with pytest.raises(ConfigError, match="log_format must be one of text, json"):
        Settings.load(home=tmp_path, env={"GATEWAY_LOG_FORMAT": "xml"})
    with pytest.raises(ConfigError, match="max_bundle_bytes must be a number"):
        Settings.load(home=tmp_path, env={"GATEWAY_MAX_BUNDLE_BYTES": "big"})
    (tmp_path / "gateway.toml").write_text("max_bundle_bytes = 1048576\n", encoding="utf-8")
    assert Settings.load(home=tmp_path, env={}).max_bundle_bytes == 1048576


def test_the_cli_logs_one_line_per_record_at_info(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GATEWAY_LOG_LEVEL", "info")
    proc = run("convert", str(EXAMPLES / "hl7v2" / "batch_mixed.hl7"), home=tmp_path)
    lines = [line for line in proc.stderr.decode().splitlines() if " INFO gateway." in line]
    assert len(lines) == 3
    assert "record failed [record=message LAX220260622090500002 stage=mapping" in lines[1]
    assert "code=mapping.no-identity" in lines[1] and "batch_mixed" not in lines[1]
