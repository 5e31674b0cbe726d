"""detect_format: which reader an input goes to, from its first bytes."""

from __future__ import annotations

import pytest

from gateway.intake import FORMATS, detect_format

MSH = "MSH|^~\\&|NSGP_HIS|NSGP|NSCH_HIS|NSCH|20260619||REF^I12|C1|P|2.5|||||CHN|UNICODE UTF-8\r"


@pytest.mark.parametrize(
    "data",
    [
        MSH.encode(),
        b"\xef\xbb\xbf" + MSH.encode(),  # UTF-8 BOM
        b"\x0b" + MSH.encode() + b"\x1c\r",  # MLLP frame
        b"\r\n  " + MSH.encode(),  # leading blank lines
        b"FHS|^~\\&|NSGP_HIS\rBHS|^~\\&|NSGP_HIS\r" + MSH.encode(),
        b"BHS|^~\\&|NSGP_HIS\r" + MSH.encode(),
        MSH.encode("gb18030"),
    ],
    ids=["plain", "bom", "mllp", "blank-lines", "fhs", "bhs", "gb18030"],
)
def test_hl7v2(data: bytes) -> None:
    assert detect_format(data) == "hl7v2"


@pytest.mark.parametrize(
    ("data", "kind"),
    [
        (b"\x00" * 128 + b"DICM" + b"\x02\x00\x00\x00UL\x04\x00", "dicom"),
        (b"PK\x03\x04\x14\x00\x00\x00", "dicom"),  # zip archive of DICOM files
        (b'[{"00080018": {"vr": "UI", "Value": ["1.2.3"]}}]', "dicom"),  # DICOM JSON
        (b'\n{ "0020000D" : {"vr": "UI"}}', "dicom"),
        (b'<?xml version="1.0" encoding="UTF-8"?><ClinicalDocument/>', "cda"),
        (b"\xef\xbb\xbf<ClinicalDocument/>", "cda"),
        (b'{"resourceType": "Bundle"}', "json"),
        (b"\n[{}]", "json"),
        (b"\x89PNG\r\n\x1a\n", "unknown"),
        (b"%PDF-1.4\n", "unknown"),
        (b"", "unknown"),
        ("转诊单：王伟".encode(), "unknown"),
    ],
)
def test_other_formats(data: bytes, kind: str) -> None:
    assert detect_format(data) == kind


def test_converted_formats() -> None:
    assert FORMATS == ("hl7v2", "dicom", "cda")
