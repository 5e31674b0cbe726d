"""mappings/identity-fields.yaml: which fields' control characters fail the record."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.errors import ConfigError
from gateway.intake import _identifying


def test_the_shipped_list_names_the_patient_order_and_study_identifiers() -> None:
    for label in ("PID-3.1", "PID-3(2).4.1", "PID(2)-3", "ORC-2.1", "RF1-6", "MSH-10"):
        assert _identifying.hl7_identifies(label), label
    for label in ("PID-5.1.1", "OBX(3)-5", "NTE-3", "PID-13(2).4"):
        assert not _identifying.hl7_identifies(label), label
    assert _identifying.dicom_identifies("(0010,0020) PatientID")
    assert _identifying.dicom_identifies(
        "(0008,0051) IssuerOfAccessionNumberSequence[1] > (0040,0032) UniversalEntityID"
    )
    assert not _identifying.dicom_identifies("(0008,1030) StudyDescription")
    assert not _identifying.dicom_identifies(
        "(0040,0032) UniversalEntityID > (0008,1030) StudyDescription"
    )


@pytest.mark.parametrize(
    "text",
    [
        "hl7v2: [PID-3, PID3]\ndicom: []\n",
        "hl7v2: []\ndicom: [PatientIdentifier]\n",
        "x: 1\n",
        # a condition is read in the value's own segment
        "hl7v2: []\ndicom: []\nhl7v2-where: [{field: OBX-5, where: PID-3.1, in: [x]}]\n",
        "hl7v2: []\ndicom: []\nhl7v2-where: [{field: OBX-5, where: OBX-3.1, in: x}]\n",
    ],
)
def test_a_malformed_list_names_the_file_and_what_is_wrong(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: str
) -> None:
    (tmp_path / "identity-fields.yaml").write_text(text, encoding="utf-8")
    monkeypatch.setattr(_identifying, "data_dir", lambda name: tmp_path)
    _identifying._fields.cache_clear()
    try:
        with pytest.raises(ConfigError) as caught:
            _identifying.hl7_identifies("PID-3.1")
        assert caught.value.code == "config.identity-fields"
        assert "identity-fields.yaml" in str(caught.value)
    finally:
        _identifying._fields.cache_clear()
