"""Nothing invalid leaves: a record whose FHIR fails validation is kept, failed, with its
issues (FHIRPath expressions), and no Bundle is written anywhere."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from gateway import Converter, Settings
from gateway.cli import main
from gateway.datafiles import data_dir
from gateway.errors import operation_outcome
from gateway.processing import process_message
from gateway.store import Incoming, Store

REPO = Path(__file__).resolve().parents[1]
REFERRAL = (REPO / "examples" / "hl7v2" / "ref_i12_nsch_to_hkpmc.hl7").read_bytes()


@pytest.fixture
def broken_mappings(tmp_path: Path) -> Path:
    """mappings/ with one mistake the mapping stage cannot see: the patient's sex code
    (PID-8, 'M') written to Patient.birthDate, which FHIR refuses as a date."""
    root = tmp_path / "mappings"
    shutil.copytree(data_dir("mappings"), root)
    patient = root / "hl7v2" / "resources" / "Patient.yaml"
    text = patient.read_text("utf-8")
    assert "birthDate: {path: PID-7, as: date}" in text
    patient.write_text(text.replace("{path: PID-7, as: date}", "{path: PID-8}"), "utf-8")
    return root


def _settings(tmp_path: Path, mappings: Path) -> Settings:
    return Settings.load(home=tmp_path / "home", env={"GATEWAY_MAPPINGS": str(mappings)})


def test_an_invalid_record_fails_with_its_outcome(tmp_path: Path, broken_mappings: Path) -> None:
    (record,) = Converter(_settings(tmp_path, broken_mappings)).convert(REFERRAL, "r.hl7")
    assert not record.ok and record.state.value == "failed"
    assert record.bundle_json is None and record.bundle is None
    assert [s.stage for s in record.history][-1] == "validation"
    [error] = record.errors
    assert error.code == "validation.structure"
    [issue] = operation_outcome(record.errors)["issue"]
    assert issue["expression"][0].endswith(".resource.birthDate") and "location" not in issue


def test_the_store_keeps_it_failed_with_its_issues_and_no_output(
    tmp_path: Path, broken_mappings: Path
) -> None:
    store = Store.open(f"sqlite:///{tmp_path / 'store.db'}")
    try:
        receipt = store.receive(Incoming(REFERRAL, "cli"))
        outcome = process_message(
            store, Converter(_settings(tmp_path, broken_mappings)), receipt.id
        )
        assert outcome.state == "failed" and outcome.output is None
        stored = store.get(receipt.id)
        assert stored is not None and stored.summary.state == "failed"
        assert stored.raw == REFERRAL  # kept, to be reprocessed once the mapping is fixed
        [kept] = stored.outcomes[-1].issues
        assert kept["code"] == "validation.structure" and kept["severity"] == "error"
        assert kept["expression"].endswith(".resource.birthDate")
    finally:
        store.close()


def test_gateway_convert_writes_no_bundle_and_exits_1(
    tmp_path: Path,
    broken_mappings: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("GATEWAY_MAPPINGS", str(broken_mappings))
    source = tmp_path / "r.hl7"
    source.write_bytes(REFERRAL)
    out = tmp_path / "out"
    out.mkdir()
    assert main(["--home", str(tmp_path / "home"), "convert", str(source), "-o", f"{out}/"]) == 1
    assert list(out.iterdir()) == []
    err = capsys.readouterr().err
    assert "[validation.structure]" in err and "converted 0, failed 1" in err
