"""``gateway validate``: a HAPI-like summary per file, exit 0 only without errors, one bad
file never stops the others, ``--json`` an OperationOutcome per file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import orjson
import pytest
from fhir.resources.R4B.operationoutcome import OperationOutcome

from gateway.cli import main
from gateway.errors import Issue
from gateway.validate_cli import summary
from tests.gateway_cli import run

REPO = Path(__file__).resolve().parents[1]
GOLDEN = REPO / "tests" / "golden" / "hl7v2" / "omg_o19.expected.json"
# With a narrative: base R4's dom-6 asks for one (a warning once invariants are checked).
PATIENT = {
    "resourceType": "Patient",
    "text": {"status": "generated", "div": '<div xmlns="http://www.w3.org/1999/xhtml">P</div>'},
    "gender": "male",
    "birthDate": "1957-09-03",
}


def _write(folder: Path, name: str, content: Any) -> Path:
    path = folder / name
    path.write_bytes(content if isinstance(content, bytes) else orjson.dumps(content))
    return path


def _validate(tmp_path: Path, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    code = main(["--home", str(tmp_path / "home"), "validate", *args])
    return code, capsys.readouterr().out


def test_a_valid_bundle_exits_0(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out = _validate(tmp_path, capsys, str(GOLDEN))
    assert code == 0
    assert out.startswith(f"{GOLDEN}: 0 errors, ")  # warnings do not fail a file


def test_each_file_is_summarised_and_one_bad_file_stops_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    bad = _write(folder, "a-bad.json", {**PATIENT, "birthDate": "1957-13-45"})
    broken = _write(folder, "b-broken.json", b'{"resourceType": "Patient",\n "gender": }')
    array = _write(folder, "c-array.json", b"[1, 2]")
    good = _write(folder, "d-good.json", PATIENT)
    _write(folder, "notes.txt", b"not looked at")
    missing = tmp_path / "missing.json"
    code, out = _validate(tmp_path, capsys, str(folder), str(missing))
    assert code == 1
    blocks = {line.split(": ")[0]: line for line in out.splitlines() if not line.startswith(" ")}
    assert set(blocks) == {str(p) for p in (bad, broken, array, good, missing)}
    assert blocks[str(good)] == f"{good}: 0 errors, 0 warnings"
    assert blocks[str(bad)] == f"{bad}: 1 error, 0 warnings"
    lines = out.splitlines()
    detail = lines[lines.index(blocks[str(bad)]) + 1]
    assert (
        detail.split()[:2] == ["error", "Patient.birthDate"] and "[validation.structure]" in detail
    )
    after_broken = lines[lines.index(blocks[str(broken)]) + 1]
    assert "not JSON" in after_broken and "line 2, column" in after_broken
    assert "[intake.json]" in after_broken
    assert "[intake.not-a-resource]" in lines[lines.index(blocks[str(array)]) + 1]
    after_missing = lines[lines.index(blocks[str(missing)]) + 1]
    assert "cannot read the file: No such file or directory [intake.file-unreadable]" in (
        after_missing
    )


def test_stdin_and_the_real_command(tmp_path: Path) -> None:
    done = run("validate", "-", home=tmp_path, stdin=orjson.dumps(PATIENT))
    assert done.returncode == 0 and done.stdout == b"<stdin>: 0 errors, 0 warnings\n"
    bad = orjson.dumps({**PATIENT, "gender": 5})
    done = run("validate", "-", home=tmp_path, stdin=bad)
    assert done.returncode == 1 and b"<stdin>: 1 error, 0 warnings" in done.stdout
    assert b"Patient.gender" in done.stdout


def test_json_gives_one_operation_outcome_per_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good = _write(tmp_path, "good.json", PATIENT)
    code, out = _validate(tmp_path, capsys, "--json", str(good))
    assert code == 0
    outcome = json.loads(out)
    OperationOutcome.model_validate(outcome)
    [issue] = outcome["issue"]
    assert issue["severity"] == "information" and issue["code"] == "informational"
    assert issue["details"]["text"].startswith(f"{good}: All OK")

    bad = _write(tmp_path, "bad.json", {**PATIENT, "birthDate": "1957-13-45"})
    code, out = _validate(tmp_path, capsys, "--json", str(good), str(bad))
    assert code == 1
    first, second = (json.loads(line) for line in out.splitlines())
    OperationOutcome.model_validate(second)
    assert first["issue"][0]["severity"] == "information"
    [error] = second["issue"]
    assert error["severity"] == "error" and error["expression"] == ["Patient.birthDate"]
    assert "location" not in error and error["details"]["text"].startswith(str(bad))


def test_a_transaction_bundle_with_a_dangling_reference_is_an_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bundle = orjson.loads(GOLDEN.read_bytes())
    bundle["entry"][-1]["resource"]["subject"] = {"reference": "urn:uuid:nowhere"}
    path = _write(tmp_path, "dangling.json", bundle)
    code, out = _validate(tmp_path, capsys, str(path))
    assert code == 1 and "[validation.dangling-reference]" in out


# Valid R4, but not a referral as the gateway's profile has it (no identifier, code...).
BARE_REFERRAL = {
    "resourceType": "ServiceRequest",
    "status": "active",
    "intent": "order",
    "subject": {"reference": "Patient/1"},
}
REFERRAL = "https://fhir-gateway.example.org/StructureDefinition/referral-servicerequest"


def test_a_profile_is_checked_only_when_asked_for(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _write(tmp_path, "sr.json", BARE_REFERRAL)
    code, text = _validate(tmp_path, capsys, str(path))
    assert code == 0, text
    code, text = _validate(tmp_path, capsys, "--profile", REFERRAL, str(path))
    assert code == 1 and "ServiceRequest.identifier" in text and "validation.cardinality" in text
    claimed = _write(tmp_path, "claimed.json", {**BARE_REFERRAL, "meta": {"profile": [REFERRAL]}})
    code, text = _validate(tmp_path, capsys, str(claimed))
    assert code == 1 and "validation.cardinality" in text


def test_the_summary_counts_and_orders_by_severity() -> None:
    issues = [
        Issue("mapping.value-dropped", "dropped", location="RF1-9", severity="warning"),
        Issue("validation.structure", "bad", location="Patient.gender"),
        Issue("validation.structure", "worse", location="Patient.name"),
    ]
    assert summary("x.json", issues) == [
        "x.json: 2 errors, 1 warning",
        "  error    Patient.gender  bad [validation.structure]",
        "  error    Patient.name  worse [validation.structure]",
        "  warning  RF1-9  dropped [mapping.value-dropped]",
    ]


def test_no_files_is_a_usage_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["--home", str(tmp_path / "home"), "validate", str(empty)]) == 2


def test_a_file_of_several_resources_names_each(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """gateway convert's batch output: a JSON array, or one Bundle per line on stdout."""
    bad = {**PATIENT, "gender": 5}
    array = _write(tmp_path, "array.json", [PATIENT, bad])
    lines = _write(
        tmp_path, "lines.json", orjson.dumps(PATIENT) + b"\n" + orjson.dumps(bad) + b"\n"
    )
    empty = _write(tmp_path, "empty.json", b"[]")
    code, out = _validate(tmp_path, capsys, str(array), str(lines), str(empty))
    assert code == 1
    assert out.splitlines() == [
        f"{array}: 1 error, 0 warnings",
        out.splitlines()[1],
        f"{lines}: 1 error, 0 warnings",
        out.splitlines()[3],
        f"{empty}: 1 error, 0 warnings",
        "  error    -  the file holds no resource [intake.not-a-resource]",
    ]
    for detail in (out.splitlines()[1], out.splitlines()[3]):
        assert detail.split()[:3] == ["error", "#2", "Patient.gender"]


# Entries that are not objects, between a bad and a good one: each named by its index.
ODD_ENTRIES = {
    "resourceType": "Bundle",
    "type": "transaction",
    "entry": [
        1,
        "x",
        None,
        {
            "fullUrl": "urn:uuid:6f1c2a9e-5b1d-4c1e-9a63-0d3f3b1c9e01",
            "resource": {**PATIENT, "birthDate": "1957-13-45"},
            "request": {"method": "POST", "url": "Patient"},
        },
        [],
    ],
}


def test_entries_that_are_not_objects_are_one_error_each(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _write(tmp_path, "odd.json", ODD_ENTRIES)
    code, out = _validate(tmp_path, capsys, str(path), str(GOLDEN))
    assert code == 1
    lines = out.splitlines()
    assert lines[0] == f"{path}: 5 errors, 0 warnings"
    where = sorted(line.split()[1] for line in lines[1:6])
    assert where == [
        "Bundle.entry[0]",
        "Bundle.entry[1]",
        "Bundle.entry[2]",
        "Bundle.entry[3].resource.birthDate",  # the real entry keeps its own index
        "Bundle.entry[4]",
    ]
    kinds = {line.split()[1]: line for line in lines[1:6]}
    assert "a number where a BundleEntry" in kinds["Bundle.entry[0]"]
    assert "null where a BundleEntry" in kinds["Bundle.entry[2]"]
    assert lines[6].startswith(f"{GOLDEN}: 0 errors")  # and it goes on


def test_entries_that_are_not_objects_in_the_api_operation_outcome() -> None:
    from gateway.api._validate import validate_request

    issues, status = validate_request(orjson.dumps(ODD_ENTRIES), "Bundle", None)
    assert status == 200
    outcome = orjson.loads(orjson.dumps({"resourceType": "OperationOutcome", "issue": [
        i.to_fhir() for i in issues]}))  # fmt: skip
    OperationOutcome.model_validate(outcome)
    expressions = sorted(e for i in outcome["issue"] for e in i.get("expression", []))
    assert expressions == [
        "Bundle.entry[0]",
        "Bundle.entry[1]",
        "Bundle.entry[2]",
        "Bundle.entry[3].resource.birthDate",
        "Bundle.entry[4]",
    ]
