"""Safe XML parsing for CDA documents.

A CDA document comes from outside. XML can make a parser read local files or URLs
(external entities, XXE), fetch a DTD over the network, or expand a few bytes into
gigabytes (billion laughs). A CDA R2 document needs none of that, so any DOCTYPE or
entity declaration is refused before the parser sees the bytes, and the parser itself
runs with entities, DTD loading and network access off in case the check is bypassed.
"""

from __future__ import annotations

import re

from lxml import etree  # type: ignore[import-untyped]  # no lxml-stubs in the venv

from ...errors import IntakeError

__all__ = ["LXML_FAULTS", "V3", "parse_document"]

V3 = "urn:hl7-org:v3"
# What lxml raises that the CDA reader translates: the base of every lxml error
# (syntax errors get their own message with line and column first).
LXML_FAULTS: tuple[type[Exception], ...] = (etree.Error,)
_V3_PREFIX = "{" + V3 + "}"
REFUSED = "XML with a DOCTYPE/entity declarations is refused (XXE, entity expansion)"

# libxml2 quotes the offending bytes of an encoding error ("Bytes: 0xCD 0xF5"): they may
# be part of a patient's name, so they are cut from messages.
_BYTES = re.compile(r",?\s*Bytes:\s*(0x[0-9A-Fa-f]{2}\s*)+")
# libxml2 ends its messages with ", line L, column C": the error says it once, itself.
_POSITION = re.compile(r",?\s*line \d+, column \d+\s*$")


def _parser() -> etree.XMLParser:
    # A new parser per document: lxml parsers are not safe to share between threads.
    return etree.XMLParser(
        resolve_entities=False,
        no_network=True,
        load_dtd=False,
        dtd_validation=False,
        huge_tree=False,
        remove_comments=True,
        remove_pis=True,
    )


def _prolog_text(data: bytes) -> str:
    """The bytes as text good enough to read the prolog's markup (all ASCII there)."""
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        return data.decode("utf-16", errors="replace")
    if data.startswith(b"<\x00"):
        return data.decode("utf-16-le", errors="replace")
    if data.startswith(b"\x00<"):
        return data.decode("utf-16-be", errors="replace")
    return data.removeprefix(b"\xef\xbb\xbf").decode("latin-1")


def refuse_declarations(data: bytes) -> None:
    """Raise when the prolog (what precedes the root element) holds a DOCTYPE, an entity
    declaration or any other ``<!`` markup that is not a comment."""
    text = _prolog_text(data).lstrip("\ufeff")
    i, n = 0, len(text)
    while i < n:
        while i < n and text[i] in " \t\r\n":
            i += 1
        if text.startswith("<?", i):
            end = text.find("?>", i + 2)
            i = n if end < 0 else end + 2
        elif text.startswith("<!--", i):
            end = text.find("-->", i + 4)
            i = n if end < 0 else end + 3
        elif text.startswith("<!", i):
            raise IntakeError("xml-doctype", REFUSED, location="prolog")
        else:
            return


def parse_document(data: bytes) -> etree._ElementTree:
    """Parse a CDA document: safe, namespace-checked, HL7 v3 namespace dropped from
    element names (mapping paths write ``recordTarget``, not ``hl7:recordTarget``)."""
    refuse_declarations(data)
    try:
        root = etree.fromstring(data, _parser())
    except etree.XMLSyntaxError as exc:
        line, column = exc.position
        problem = _POSITION.sub("", _BYTES.sub("", str(exc.msg or "syntax error")).strip())
        raise IntakeError(
            "xml-syntax",
            f"not well-formed XML: {problem} (line {line}, column {column})",
            location=f"line {line}, column {column}",
            line=line,
            column=column,
        ) from None
    except ValueError as exc:  # e.g. an encoding name libxml2 does not know
        raise IntakeError("xml-syntax", f"not well-formed XML: {exc}") from None
    except LXML_FAULTS as exc:  # any other refusal of libxml2's parser
        raise IntakeError(
            "xml-syntax", f"the XML cannot be parsed ({type(exc).__name__})"
        ) from None
    tree = root.getroottree()
    info = tree.docinfo
    if info.doctype or info.internalDTD is not None or info.externalDTD is not None:
        raise IntakeError("xml-doctype", REFUSED, location="prolog")
    if root.tag != _V3_PREFIX + "ClinicalDocument":
        qname = etree.QName(root)
        space = f" in namespace {qname.namespace}" if qname.namespace else " in no namespace"
        raise IntakeError(
            "not-cda",
            f"the root element is <{qname.localname}>{space}, not a CDA R2 "
            f"<ClinicalDocument> in namespace {V3}",
            location="/" + qname.localname,
        )
    _drop_v3_namespace(root)
    return tree


def _drop_v3_namespace(root: etree._Element) -> None:
    cut = len(_V3_PREFIX)
    for element in root.iter(_V3_PREFIX + "*"):
        element.tag = element.tag[cut:]
    etree.cleanup_namespaces(root)
