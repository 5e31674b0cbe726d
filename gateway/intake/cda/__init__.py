"""CDA R2 intake: one XML document → one Unit with an XPath view.

The document type picks the mapping: ``message_type`` is ``CDA^<ClinicalDocument/code/@code>``
(``CDA^18748-4`` for a C-CDA Diagnostic Imaging Report, ``CDA^C0006`` for a mainland
WS/T 500.6 检查报告), so a document type with no mapping is refused by name. Parsing
refuses DOCTYPEs and entity declarations (see _parse.py).
"""

from __future__ import annotations

from collections.abc import Iterator

from ...errors import GatewayError
from .._unit import Unit
from ._parse import LXML_FAULTS, REFUSED, parse_document, refuse_declarations
from ._view import NAMESPACES, CdaView, Position, check_path, element_text

__all__ = [
    "LXML_FAULTS",
    "NAMESPACES",
    "REFUSED",
    "CdaView",
    "Position",
    "check_path",
    "element_text",
    "read_documents",
    "refuse_declarations",
]

# WS/T 500 OID of 医疗卫生机构代码 (the institution's code): in this gateway's network
# the institution's facility code.
_INSTITUTION_CODE = "2.16.156.10011.1.5"
_CUSTODIAN = "custodian/assignedCustodian/representedCustodianOrganization"


def read_documents(data: bytes, name: str) -> Iterator[Unit]:
    """The one document in ``data`` (``name`` is where it came from, for messages)."""
    unit = Unit(raw=data, index=1, format="cda", kind="document")
    try:
        tree = parse_document(data)
    except GatewayError as exc:
        unit.error = exc
        yield unit
        return
    root = tree.getroot()
    unit.charset = tree.docinfo.encoding
    unit.control_id = _document_id(root)
    code = _first(root, "code/@code")
    unit.message_type = f"CDA^{code}" if code else None
    unit.sender = (
        _first(root, f"{_CUSTODIAN}/id[@root='{_INSTITUTION_CODE}']/@extension")
        or _first(root, f"{_CUSTODIAN}/name")
        or _first(root, f"{_CUSTODIAN}/id[not(@extension)]/@root")
    )
    unit.view = CdaView(tree)
    yield unit


def _first(node: object, path: str) -> str | None:
    found = node.xpath(path)  # type: ignore[attr-defined]
    for item in found:
        text = element_text(item) if hasattr(item, "tag") else str(item).strip()
        if text:
            return text
    return None


def _document_id(root: object) -> str | None:
    """ClinicalDocument/id as ``root^extension`` (just the root when it has no extension)."""
    oid, ext = _first(root, "id/@root"), _first(root, "id/@extension")
    if oid and ext:
        return f"{oid}^{ext}"
    return oid or ext
