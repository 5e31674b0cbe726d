"""XPath look-ups over a parsed CDA document: the mapping engine's window on it.

Path conventions (see docs/mapping-cda.md):

* XPath 1.0, evaluated with lxml; each path is compiled once and kept.
* HL7 v3 elements are written without a prefix (``recordTarget/patientRole/id``): the
  reader drops the v3 namespace from element names after checking the root. The
  ``sdtc:`` and ``xsi:`` prefixes name those namespaces (``@xsi:type``).
* A path starting with ``/`` starts at the document (``/ClinicalDocument/code/@code``);
  any other path is relative to the current element (an ``each``/``at`` node).
* ``|`` in a mapping path separates alternatives (the engine tries them in order), so
  an XPath union cannot be written; ``or`` in a predicate does the same job.
* A path with ``*`` in it is read as a list (every match); without, as the first match.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from functools import lru_cache
from typing import Any

from lxml import etree  # type: ignore[import-untyped]  # no lxml-stubs in the venv

from ...errors import ConfigError, MappingError

__all__ = ["NAMESPACES", "CdaView", "Position", "check_path"]

NAMESPACES = {
    "sdtc": "urn:hl7-org:sdtc",
    "xsi": "http://www.w3.org/2001/XMLSchema-instance",
}

# Narrative elements that start a new line of text; <caption> labels what follows it.
_BLOCKS = frozenset({"paragraph", "item", "tr", "list", "table", "thead", "tbody", "tfoot"})
# Attributes that say what kind of thing an element is, not what the document says.
_STRUCTURAL = frozenset(
    {
        "classCode",
        "moodCode",
        "typeCode",
        "determinerCode",
        "contextControlCode",
        "contextConductionInd",
        "inversionInd",
        "negationInd",
        "nullFlavor",
        "codeSystemName",
        "codeSystemVersion",
        "{http://www.w3.org/2001/XMLSchema-instance}type",
        "{http://www.w3.org/2001/XMLSchema-instance}schemaLocation",
        "ID",
        "mediaType",
        "representation",
    }
)
_SKIPPED = frozenset({"typeId", "templateId", "realmCode"})  # conformance markers
_SPACE = re.compile(r"[ \t\r\n]+")
# Control characters other than TAB, LF and CR are not allowed in FHIR strings.
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


class Position:
    """Where the engine stands: one element of the document."""

    __slots__ = ("node",)

    def __init__(self, node: etree._Element) -> None:
        self.node = node

    @property
    def label(self) -> str:
        """The element's XPath location, e.g. ``/ClinicalDocument/recordTarget/...``."""
        return str(self.node.getroottree().getpath(self.node))

    # The memo is off for CDA views; these keep the engine's generic code paths simple.
    text = None
    level = 0


@lru_cache(maxsize=4096)
def _compile(path: str) -> etree.XPath:
    if "hl7:" in path or "cda:" in path:
        raise ConfigError(
            "bad-path",
            f"{path!r}: CDA paths name HL7 v3 elements without a prefix "
            "(recordTarget/patientRole, not hl7:recordTarget/hl7:patientRole)",
        )
    try:
        return etree.XPath(path, namespaces=NAMESPACES, smart_strings=True)
    except etree.XPathSyntaxError as exc:
        raise ConfigError("bad-path", f"{path!r} is not an XPath 1.0 expression: {exc}") from None


# '//' outside a URL literal: libxml2 evaluates '//name[predicate]' by merging one node-set
# per descendant, in time that grows with the square of the document (a 1 MB CDA of 2,400
# sections took 3 s a path); '/descendant::name[predicate]' is linear.
_SLASH_SLASH = re.compile(r"(?<!:)//")


def check_path(path: str) -> None:
    """Raise ConfigError when ``path`` is not a valid CDA mapping path (at load time)."""
    if _SLASH_SLASH.search(path):
        raise ConfigError(
            "bad-path",
            f"{path!r}: write '/descendant::name' instead of '//name' (libxml2 evaluates '//' "
            "followed by a predicate in time quadratic in the document's size)",
        )
    _compile(path)


def _clean(text: str) -> str:
    if _CONTROL.search(text):
        text = _CONTROL.sub("", text)
    return text


def element_text(node: etree._Element) -> str:
    """An element's text as a reader sees it: runs of white space collapsed, narrative
    blocks (paragraph, list item, table row, <br/>) on lines of their own, a caption
    followed by ': '."""
    parts: list[str] = []
    _walk(node, parts)
    lines = (_SPACE.sub(" ", line).strip() for line in "".join(parts).split("\n"))
    return _clean("\n".join(line for line in lines if line))


def _walk(node: etree._Element, out: list[str]) -> None:
    # Line breaks in the XML source are white space like any other: only the narrative
    # structure makes lines.
    if node.text:
        out.append(_SPACE.sub(" ", node.text))
    for child in node:
        if not isinstance(child.tag, str):
            continue
        name = etree.QName(child).localname if child.tag.startswith("{") else child.tag
        if name == "br":
            out.append("\n")
        elif name in _BLOCKS:
            out.append("\n")
            _walk(child, out)
            out.append("\n")
        elif name == "caption":
            out.append(" ")
            _walk(child, out)
            out.append(": ")
        elif name == "td" or name == "th":
            out.append(" ")
            _walk(child, out)
            out.append(" ")
        else:
            _walk(child, out)
        if child.tail:
            out.append(_SPACE.sub(" ", child.tail))


# The attributes holding an HL7 v3 datatype's value. CDA R2 data types: a nullFlavor
# and a proper value exclude each other, so on an element with a nullFlavor they are
# no value: <id nullFlavor="MSK" root="(MRN OID)" extension="X"/> is neither MRN "X"
# nor the root-only identifier (the OID itself, the same for every patient). Path
# predicates still see them (id[@root=...]); @codeSystem, @displayName stay values.
_VALUE_ATTRIBUTES = frozenset({"value", "extension", "code", "root"})


def _null(element: etree._Element | None) -> bool:
    return element is not None and bool(element.get("nullFlavor"))


def _value(item: Any) -> str:
    """The string value of one XPath result: an attribute's value, an element's text;
    empty for a value of an element that carries a nullFlavor."""
    if isinstance(item, etree._Element):
        return "" if _null(item) else element_text(item)
    attribute = getattr(item, "is_attribute", False) and item.attrname in _VALUE_ATTRIBUTES
    if attribute and _null(item.getparent()):
        return ""
    if isinstance(item, bool):
        return "true" if item else ""
    if isinstance(item, float):
        return str(int(item)) if item.is_integer() else str(item)
    return _clean(_SPACE.sub(" ", str(item)).strip())


class CdaView:
    """Answers XPath look-ups for one CDA document."""

    kind = "cda"

    memo = False  # an element's meaning depends on where it is, not only its text

    def __init__(self, tree: etree._ElementTree) -> None:
        self.tree = tree
        self.root = Position(tree.getroot())
        # What the mapping read, when tracing: whole elements, and single attributes.
        self._read: set[etree._Element] | None = None
        self._read_attrs: set[tuple[etree._Element, str]] = set()
        self._touched: set[etree._Element] = set()

    # -- evaluation --------------------------------------------------------------------
    def _eval(self, path: str, here: Position) -> list[Any]:
        xpath = _compile(path)
        try:
            result = xpath(here.node)
        except etree.XPathError as exc:  # evaluation, an unknown function, a bad result
            raise MappingError(
                "bad-path", f"XPath {path!r} failed: {exc}", location=here.label
            ) from None
        items = result if isinstance(result, list) else [result]
        if self._read is not None:
            self._note(items)
        return items

    def select(self, path: str, here: Position) -> list[Position]:
        """The elements at ``path`` (for 'each', 'at' and 'group')."""
        return [Position(i) for i in self._eval(path, here) if isinstance(i, etree._Element)]

    def first(self, path: str, here: Position) -> str | None:
        for item in self._eval(path, here):
            value = _value(item)
            if value:
                return value
        return None

    def values(self, path: str, here: Position) -> list[tuple[str, str]]:
        out = []
        for item in self._eval(path, here):
            value = _value(item)
            if value:
                out.append((value, self._label_of(item, path, here)))
        return out

    def label(self, path: str, here: Position) -> str:
        """The XPath location ``path`` denotes from ``here`` (for error messages)."""
        try:
            items = _compile(path)(here.node)
        except etree.XPathError:
            items = []
        if isinstance(items, list) and items:
            return self._label_of(items[0], path, here)
        if path.startswith("/"):
            return path
        return f"{here.label}/{path}"

    def _label_of(self, item: Any, path: str, here: Position) -> str:
        if isinstance(item, etree._Element):
            return str(self.tree.getpath(item))
        parent = getattr(item, "getparent", lambda: None)()
        if parent is not None and getattr(item, "is_attribute", False):
            name = str(item.attrname)
            if name.startswith("{"):
                qname = etree.QName(name)
                prefix = next((p for p, ns in NAMESPACES.items() if ns == qname.namespace), "")
                name = f"{prefix}:{qname.localname}" if prefix else qname.localname
            return f"{self.tree.getpath(parent)}/@{name}"
        if parent is not None:
            return f"{self.tree.getpath(parent)}/text()"
        return path if path.startswith("/") else f"{here.label}/{path}"

    # -- tracing ---------------------------------------------------------------------------
    @property
    def tracing(self) -> bool:
        return self._read is not None

    def trace(self) -> None:
        """Start recording what the mapping reads (see :meth:`unmapped`). The header
        elements intake itself uses (id, code) count as read."""
        self._read, self._read_attrs, self._touched = set(), set(), set()
        root = self.tree.getroot()
        self._note(root.xpath("id/@root | id/@extension | code/@code"))

    def _note(self, items: Iterable[Any]) -> None:
        assert self._read is not None
        for item in items:
            if isinstance(item, etree._Element):
                self._read.add(item)
                self._touch(item)
            elif getattr(item, "is_attribute", False):
                parent = item.getparent()
                if parent is not None:
                    self._read_attrs.add((parent, str(item.attrname)))
                    self._touch(parent)
            elif getattr(item, "getparent", None) is not None:
                parent = item.getparent()
                if parent is not None:
                    self._read.add(parent)
                    self._touch(parent)

    def _touch(self, node: etree._Element | None) -> None:
        while node is not None and node not in self._touched:
            self._touched.add(node)
            node = node.getparent()

    def unmapped(self) -> list[str]:
        """XPath locations of elements and attributes holding data that nothing read,
        the shallowest of each unread subtree. Needs :meth:`trace` before the mapping."""
        out: list[str] = []
        if self._read is not None:
            self._unread(self.tree.getroot(), out)
        return out

    def _unread(self, node: etree._Element, out: list[str]) -> None:
        assert self._read is not None
        if node in self._read or node.tag in _SKIPPED:
            return
        if node not in self._touched:
            if _has_data(node):
                out.append(str(self.tree.getpath(node)))
            return
        for name, value in node.attrib.items():
            if name not in _STRUCTURAL and value.strip() and (node, name) not in self._read_attrs:
                out.append(f"{self.tree.getpath(node)}/@{name}")
        if node.text and node.text.strip() and not len(node):
            out.append(f"{self.tree.getpath(node)}/text()")
        for child in node:
            if isinstance(child.tag, str):
                self._unread(child, out)


def _has_data(node: etree._Element) -> bool:
    for element in node.iter():
        if not isinstance(element.tag, str) or element.tag in _SKIPPED:
            continue
        if element.text and element.text.strip():
            return True
        if any(k not in _STRUCTURAL and v.strip() for k, v in element.attrib.items()):
            return True
    return False
