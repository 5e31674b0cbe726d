"""Safe XML parsing for CDA documents.

A CDA document comes from outside. XML can make a parser read local files or URLs
(external entities, XXE), fetch a DTD over the network, or expand a few bytes into
gigabytes (billion laughs). A CDA R2 document needs none of that, so any DOCTYPE or
entity declaration is refused before the parser sees the bytes, and the parser itself
runs with entities, DTD loading and network access off in case the check is bypassed.
"""

from __future__ import annotations

import codecs
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
    _refuse_utf8_declared_cjk(data)
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


# Multi-byte Chinese charsets that decode most UTF-8 Chinese without an error: 王伟 in
# UTF-8 read as GB 18030 is 鐜嬩紵. A short name passes libxml2 silently as mojibake.
_CJK_CODECS = frozenset({"gb18030", "gbk", "gb2312", "big5", "big5hkscs", "cp950", "cp936"})
_BOMS = (b"\xef\xbb\xbf", b"\xff\xfe", b"\xfe\xff")


def _codec(name: str | None) -> str | None:
    try:
        return codecs.lookup(name).name if name else None
    except LookupError:
        return None


_DECLARED = re.compile(rb"""^<\?xml[^>]*?\bencoding\s*=\s*["']([A-Za-z0-9._-]{1,40})["']""")


def _refuse_utf8_declared_cjk(data: bytes) -> None:
    """Refuse a document declared GB 18030/GBK/Big5 whose bytes are valid UTF-8 with
    non-ASCII text: UTF-8's byte grammar is strict, so such bytes are UTF-8 (the rule of
    ``_charset.mislabelled_as``), and reading them as declared forwards mojibake."""
    declared = _DECLARED.match(data)
    encoding = declared.group(1).decode("ascii") if declared else None
    if data.startswith(_BOMS) or _codec(encoding) not in _CJK_CODECS or data.isascii():
        return
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return
    where = _first_non_ascii(text)
    raise IntakeError(
        "charset-mislabelled",
        f"declared encoding {encoding!r} in the XML declaration, but the bytes"
        f"{f' of {where}' if where else ''} are UTF-8 text: refused rather than converted "
        'as mojibake. The sender should declare encoding="UTF-8"',
        location=where or "prolog",
        likely="UTF-8",
    )


def _first_non_ascii(text: str) -> str | None:
    """The XPath of the first element whose text or attribute leaves ASCII (the bytes
    re-read as UTF-8), to name the field; None when it is only in a comment."""
    try:
        root = etree.fromstring(text.encode("utf-8"), _utf8_parser())
    except LXML_FAULTS:
        return None
    for element in root.iter():
        if not isinstance(element.tag, str):
            continue
        for name, value in element.attrib.items():
            if not value.isascii():
                return f"{_xpath(element)}/@{etree.QName(name).localname}"
        if not (element.text or "").isascii():
            return _xpath(element)
        parent = element.getparent()
        if parent is not None and not (element.tail or "").isascii():
            return _xpath(parent)
    return None


def _utf8_parser() -> etree.XMLParser:
    return etree.XMLParser(
        encoding="utf-8", resolve_entities=False, no_network=True, load_dtd=False
    )


def _xpath(element: etree._Element) -> str:
    """``/ClinicalDocument/recordTarget/.../name[2]`` in local names (lxml's own paths
    write namespaced steps as ``/*[2]``)."""
    steps = []
    node: etree._Element | None = element
    while node is not None:
        name = etree.QName(node).localname
        parent = node.getparent()
        same = [] if parent is None else [c for c in parent if c.tag == node.tag]
        steps.append(f"{name}[{same.index(node) + 1}]" if len(same) > 1 else name)
        node = parent
    return "/" + "/".join(reversed(steps))


def _drop_v3_namespace(root: etree._Element) -> None:
    cut = len(_V3_PREFIX)
    for element in root.iter(_V3_PREFIX + "*"):
        element.tag = element.tag[cut:]
    etree.cleanup_namespaces(root)
