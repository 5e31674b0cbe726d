"""A hostile STOW-RS client: parts whose Content-Type lies, a boundary inside an
instance, ten thousand parts, an instance nesting sequences past Python's stack. Each
part gets its own outcome; no part stops the others. Closing delimiter, missing
boundary: test_dicom_stow.py."""

from __future__ import annotations

import io
import json
import struct
import zipfile

from tests.golden.dicom.make_studies import part10, wang_wei

from .test_dicom_stow import (
    BOUNDARY,
    FAILED,
    FAILURE_REASON,
    REFERENCED,
    Api,
    _items,
    _value,
    multipart,
)
from .test_dicom_stow import api as api

CANNOT_UNDERSTAND = 0xC000


def _nest(depth: int) -> bytes:
    opening = struct.pack("<HH2sHI", 0x0009, 0x1010, b"SQ", 0, 0xFFFFFFFF) + struct.pack(
        "<HHI", 0xFFFE, 0xE000, 0xFFFFFFFF
    )
    closing = struct.pack("<HHI", 0xFFFE, 0xE00D, 0) + struct.pack("<HHI", 0xFFFE, 0xE0DD, 0)
    return opening * depth + closing * depth


def test_an_instance_nesting_past_the_stack_fails_alone(api: Api) -> None:
    deep = part10(wang_wei(number=2)) + _nest(5_000)
    response = api.post("/dicomweb/studies", multipart([part10(wang_wei(number=1)), deep]))
    assert response.status_code == 202
    assert len(_items(response, REFERENCED)) == 1
    [failed] = _items(response, FAILED)
    assert _value(failed, FAILURE_REASON) == CANNOT_UNDERSTAND
    assert len(api.intake.pending()) == 1


def test_a_zip_or_dicom_json_labelled_application_dicom_is_not_understood(api: Api) -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("IM1.dcm", part10(wang_wei()))
    as_json = json.dumps(wang_wei().to_json_dict()).encode()
    response = api.post("/dicomweb/studies", multipart([buffer.getvalue(), as_json]))
    assert response.status_code == 409
    reasons = [_value(f, FAILURE_REASON) for f in _items(response, FAILED)]
    assert reasons == [CANNOT_UNDERSTAND, CANNOT_UNDERSTAND]
    assert api.intake.pending() == []


def test_a_boundary_inside_an_instance_cuts_it_and_nothing_cut_is_stored(api: Api) -> None:
    """RFC 2046 forbids the delimiter inside a part; a client that sends it anyway gets
    the cut instance refused, never stored truncated."""
    whole = part10(wang_wei(number=1))
    cut = len(whole) - 40
    smuggled = whole[:cut] + b"\r\n--" + BOUNDARY.encode() + b"\r\n\r\n" + whole[cut:]
    response = api.post("/dicomweb/studies", multipart([smuggled]))
    assert _items(response, REFERENCED) == []
    assert {_value(f, FAILURE_REASON) for f in _items(response, FAILED)} == {CANNOT_UNDERSTAND}
    assert api.intake.pending() == []


def test_ten_thousand_parts_get_ten_thousand_outcomes(api: Api) -> None:
    response = api.post("/dicomweb/studies", multipart([b"x"] * 10_000))
    assert response.status_code == 409
    assert len(_items(response, FAILED)) == 10_000
