"""Every Bundle the gateway makes passes three independent FHIR R4 validators (issue 9,
second "Done when" line): HL7's R4 JSON schema, FHIR.js (Lantana) and google-fhir-r4,
run by ../shared/fhir-validate/validate.sh (offline, pinned; .ci/run installs it).
fhir.resources is advisory there and does not count (it refuses valid R4).

None of the three checks invariants; tests/partner (a strict server) and the gateway's
own validator (tests/validation) do.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import orjson
import pytest

from tests import outputs
from tests.conftest import REPO

VALIDATE = REPO.parent / "shared" / "fhir-validate" / "validate.sh"
HOME = Path(os.environ.get("FHIR_VALIDATE_HOME", "/tmp/fhir-validate"))
COUNTED = ("jsonschema", "fhir.js", "google-fhir-r4")


def _available() -> str | None:
    if not VALIDATE.is_file():
        return f"{VALIDATE} is absent (the shared validators sit beside the checkout)"
    if not (HOME / "venv" / "bin" / "python").exists():
        return f"the validators are not installed: bash {VALIDATE.parent / 'install.sh'}"
    return None


pytestmark = pytest.mark.skipif(_available() is not None, reason=str(_available()))


def _run(files: list[Path]) -> tuple[int, str]:
    env = {**os.environ, "FHIR_CHECKS": ",".join(COUNTED), "FHIR_ADVISORY": ""}
    done = subprocess.run(
        ["bash", str(VALIDATE), *map(str, files)],
        capture_output=True,
        text=True,
        env=env,
        timeout=1800,
        check=False,
    )
    return done.returncode, done.stdout + done.stderr


def test_every_output_bundle_passes_the_three_validators(tmp_path: Path) -> None:
    found = outputs.every_bundle(outputs.run_demo_into(tmp_path / "home"))
    assert len(found) > 40
    files, names = [], {}
    for n, (name, bundle) in enumerate(found):
        path = tmp_path / f"bundle-{n:03d}.json"
        path.write_bytes(orjson.dumps(bundle))
        files.append(path)
        names[str(path)] = name
    code, report = _run(files)
    assert code != 2, report  # a set-up problem, not a verdict
    failed = [names.get(p, p) for p in re.findall(r"^(\S+): FAIL", report, re.M)]
    assert code == 0 and not failed, f"{failed}\n{report[-6000:]}"
    assert report.count(": ok (jsonschema, fhir.js, google-fhir-r4)") == len(files)


def test_the_validators_do_refuse_a_broken_bundle(tmp_path: Path) -> None:
    # The check above can fail: a golden Bundle with a date of the wrong kind and a code
    # outside its required binding is refused by each of the three.
    [(_, bundle)] = outputs.bundles(
        outputs.GOLDEN / "hl7v2" / "ref_i12_utf8.expected.json", "ref_i12_utf8"
    )
    patient = next(e for e in bundle["entry"] if e["resource"]["resourceType"] == "Patient")
    patient["resource"]["birthDate"] = 19740601
    patient["resource"]["gender"] = "mann"
    path = tmp_path / "broken.json"
    path.write_bytes(orjson.dumps(bundle))
    code, report = _run([path])
    assert code == 1, report
    failed = re.search(r"failed: ([^;]+);", report)
    assert failed and set(failed.group(1).split(", ")) == set(COUNTED), report
