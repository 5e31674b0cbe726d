"""A study whose stored instances join two orders (AccessionNumber, its issuer) or name
two senders (InstitutionName) is refused when it is committed, as one naming two
patients is: each instance is stored as it comes (it is a well-formed instance), and
the commit converts nothing, its errors name the tag and the two instances."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from gateway import Converter
from gateway.listeners.dicom import Origin
from gateway.store import Store
from tests.golden.dicom.make_studies import LAX2_CHEST, issuer, part10, wang_wei

from .dicom_support import dicom_settings, intake_for
from .test_dicom_stow import Api, multipart, stow_api

SCU = Origin("dicom", "MODALITY1@127.0.0.1:40000")


@pytest.fixture
def api(tmp_path: Path, converter: Converter, store: Store) -> Api:
    return stow_api(tmp_path, converter, store)


def _instances(changed: dict[str, Any]) -> list[bytes]:
    """王伟's chest CT, five instances; the fourth (UTF-8) with ``changed``."""
    utf8 = {"SpecificCharacterSet": "ISO_IR 192", **changed}
    return [part10(wang_wei(series=1, number=n, **(utf8 if n == 4 else {}))) for n in range(1, 6)]


CASES = {
    "accession": ({"AccessionNumber": "LA2026061000003"}, "(0008,0050) AccessionNumber"),
    "issuer": (
        {"IssuerOfAccessionNumberSequence": issuer("NSCH")},
        "(0008,0051) IssuerOfAccessionNumberSequence[1] > (0040,0031) LocalNamespaceEntityID",
    ),
    "institution": ({"InstitutionName": "南沙中心医院"}, "(0008,0080) InstitutionName"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_c_store_study_that_disagrees_is_refused_at_commit(
    tmp_path: Path, converter: Converter, store: Store, case: str
) -> None:
    changed, location = CASES[case]
    intake = intake_for(dicom_settings(tmp_path), converter, store)
    for data in _instances(changed):
        intake.receive(data, SCU)  # stored: each instance alone is well formed
    result = intake.commit(LAX2_CHEST)
    assert result is not None and result.state == "failed" and result.instances == 5
    [error] = result.errors
    assert error.startswith("intake.dicom-study-mismatch: ") and error.endswith(f"at {location}"), (
        error
    )
    assert "LA2026061000003" not in error and "南沙" not in error
    assert intake.pending() == []


@pytest.mark.parametrize("case", list(CASES))
def test_a_stow_study_that_disagrees_is_refused_at_commit(api: Api, case: str) -> None:
    changed, location = CASES[case]
    assert api.post("/dicomweb/studies", multipart(_instances(changed))).status_code == 200
    commit = api.post(f"/dicomweb/studies/{LAX2_CHEST}/$commit")
    assert commit.status_code == 422, commit.text
    result = commit.json()
    assert result["converted"] is False and result["instances"] == 5
    [error] = result["errors"]
    assert error.startswith("intake.dicom-study-mismatch: ") and location in error, error
