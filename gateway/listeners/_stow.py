"""DICOMweb STOW-RS pieces that know nothing of HTTP frameworks: the multipart/related
request body (PS3.18 §8.6.1.2, RFC 2387 / RFC 2046 §5.1) and the Store Instances
Response (PS3.18 §10.5.3), a DICOM JSON dataset.

The body is split on its delimiters with ``bytes.find``: the standard library's
``email`` parser gives the same parts but is line-based, about a hundred times slower
on the binary parts of a study (six seconds for 50 MB).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from pydicom.dataset import Dataset

from ..errors import IntakeError

__all__ = [
    "DICOM",
    "Outcome",
    "Part",
    "media_type",
    "response_json",
    "split_multipart",
]

DICOM = "application/dicom"
_PARAM = re.compile(r';\s*([A-Za-z0-9!#$&^_.+-]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^;\s]*)')


@dataclass(frozen=True, slots=True)
class Part:
    """One body part: its media type (lower case, no parameters) and its bytes."""

    content_type: str
    data: bytes


@dataclass(frozen=True, slots=True)
class Outcome:
    """What became of one instance of the request: ``failure`` is None when stored,
    else a PS3.18 Table 10.5.3-2 failure reason (0xA700, 0xC000, ...)."""

    sop_class: str | None
    sop_instance: str | None
    failure: int | None = None


def media_type(header: str) -> tuple[str, dict[str, str]]:
    """A Content-Type header as (type/subtype lower-cased, parameters with names
    lower-cased and quotes removed)."""
    kind, _, rest = header.partition(";")
    params = {}
    for match in _PARAM.finditer(";" + rest):
        value = match.group(2)
        if value.startswith('"'):
            value = re.sub(r"\\(.)", r"\1", value[1:-1])
        params[match.group(1).lower()] = value
    return kind.strip().lower(), params


def split_multipart(body: bytes, boundary: str) -> Iterator[Part]:
    """The parts of a multipart body; IntakeError ``intake.stow-multipart`` when it has
    no opening or closing delimiter or a part has no header/body separator."""
    if not 0 < len(boundary) <= 70:
        raise _bad("the multipart boundary parameter is missing or longer than 70 characters")
    dash = b"--" + boundary.encode("ascii", "replace")
    # The first delimiter may open the body; every later one follows a CRLF (RFC 2046).
    if body.startswith(dash):
        pos = len(dash)
    else:
        first = body.find(b"\r\n" + dash)  # after a preamble
        if first < 0:
            raise _bad("no multipart delimiter matching the boundary parameter")
        pos = first + 2 + len(dash)
    while True:
        if body[pos : pos + 2] == b"--":
            return  # the close delimiter; the epilogue is ignored
        line_end = body.find(b"\r\n", pos)
        if line_end < 0:
            raise _bad("the body ends inside a delimiter line")
        next_delim = body.find(b"\r\n" + dash, line_end)
        if next_delim < 0:
            raise _bad("the body has no closing delimiter (--boundary--)")
        yield _part(body[line_end + 2 : next_delim])
        pos = next_delim + 2 + len(dash)


def _part(raw: bytes) -> Part:
    if raw.startswith(b"\r\n"):  # no headers: the default type is text/plain
        return Part("text/plain", raw[2:])
    head_end = raw.find(b"\r\n\r\n")
    if head_end < 0:
        raise _bad("a body part has no blank line after its headers")
    content_type = "text/plain"
    for line in raw[:head_end].decode("latin-1").split("\r\n"):
        name, _, value = line.partition(":")
        if name.strip().lower() == "content-type":
            content_type = media_type(value)[0]
        elif name.strip().lower() == "content-transfer-encoding" and value.strip().lower() not in (
            "binary",
            "8bit",
            "7bit",
        ):
            raise _bad(f"Content-Transfer-Encoding {value.strip()[:20]!r} is not supported")
    return Part(content_type, raw[head_end + 4 :])


def _bad(problem: str) -> IntakeError:
    return IntakeError("stow-multipart", problem, location="Content-Type")


def response_json(outcomes: list[Outcome]) -> dict[str, Any]:
    """The Store Instances Response (PS3.18 §10.5.3) as DICOM JSON: a
    ReferencedSOPSequence for the instances stored and a FailedSOPSequence, each item
    with its FailureReason, for the others."""
    stored, failed = [], []
    for outcome in outcomes:
        item = Dataset()
        if outcome.sop_class:
            item.ReferencedSOPClassUID = outcome.sop_class
        if outcome.sop_instance:
            item.ReferencedSOPInstanceUID = outcome.sop_instance
        if outcome.failure is None:
            stored.append(item)
        else:
            item.FailureReason = outcome.failure
            failed.append(item)
    response = Dataset()
    if failed:
        response.FailedSOPSequence = failed
    if stored:
        response.ReferencedSOPSequence = stored
    out: dict[str, Any] = response.to_json_dict()
    return out
