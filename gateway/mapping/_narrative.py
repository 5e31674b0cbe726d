"""Generated narratives: ``Resource.text`` (status ``generated``) for each resource the
gateway makes, so a partner's clinician reads the key facts without a FHIR viewer
(FHIR R4 dom-6: a resource should have a narrative).

What each type shows is data (``mappings/narrative/<Type>.yaml``: rows of a label and
the elements it shows), and so are the labels, in en, zh-Hans and zh-Hant-HK
(``mappings/narrative/labels.yaml``). Labels are English alone, or Chinese then English
where the data is Chinese: the resource's ``language`` says which, else whether it holds
a Chinese character; the script is the resource's language tag's, else the sender's (its
jurisdiction). Values are shown as they are: names are never
converted between scripts and free text is never translated.

Every value is escaped as :func:`html.escape` (``quote=True``) does (the form the policy
stage's minimisation looks for in narratives); the markup itself is a handful of fixed
tags (``div p b table tr th td br``), all in FHIR's allowed XHTML subset (txt-1).
docs/narrative.md says what is shown and why.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from html import escape
from pathlib import Path
from typing import Any

import orjson

from ..datafiles import load_data_file
from ..errors import ConfigError
from ..network import Network
from ..shared import FrozenDict, FrozenList

__all__ = ["Narratives"]

EN = "en"
LANGS = (EN, "zh-Hans", "zh-Hant-HK")  # every label has all three
XHTML = '<div xmlns="http://www.w3.org/1999/xhtml">'
TRANSLATION = "http://hl7.org/fhir/StructureDefinition/translation"
_CJK = re.compile(r"[\u3400-\u9fff\uf900-\ufaff]")  # as mapping.language_of
_UNDECLARED = "(undeclared)"  # a resource without language: the record decides
_MAX_ITEMS = 50  # values shown per row (a study of 2,000 series lists 50 and says so)

Resource = dict[str, Any]
Show = Callable[["_View", Any], list[str]]  # a row's value → its lines of escaped XHTML


@dataclass(frozen=True, slots=True)
class Row:
    label: str  # key in labels.yaml
    paths: tuple[tuple[str, ...], ...]  # first non-empty wins
    show: str  # how: auto (by the value's shape), series
    key: str | None = None  # the one top-level element, when that is all the row reads


_ROW_END = "</td></tr>"
_TABLE_END = "</tbody></table></div>"


@dataclass(frozen=True, slots=True)
class _Plan:
    """A type's narrative in one label language, made once (it depends on nothing else):
    ``div``, generated Python (see _generate) that reads each row's element directly and
    writes its markup (``<tr><th>label</th><td>``, the label escaped, fixed in the code)
    and its value, a string escaped inline, anything else by its shape (_auto)."""

    chinese: str | None  # the labels' language (None: English alone)
    div: Callable[[Resource, _View], str]


# -- the generated div of a plan ---------------------------------------------------------

# _first's test of an empty value (the next path is read); _div's, of a row not shown.
_EMPTY = "(v is None or v == '' or v == [] or v == {})"
_ABSENT = "(v is None or v == '' or v == [])"


def _escaped(var: str) -> list[str]:
    """Lines that escape the string ``var`` in place, as _esc does (most values are plain:
    six tests, no call)."""
    return [
        f"if '&' in {var} or '<' in {var} or '>' in {var} or '\"' in {var} or \"'\" in {var}:",
        f"    {var} = escape({var})",
        f"if '\\n' in {var}:",
        f"    {var} = {var}.replace('\\n', '<br/>')",
    ]


def _generate(
    rows: tuple[Row, ...], heads: list[str], head: str, empty: str
) -> tuple[str, dict[str, Any]]:
    """The source of ``div(r, view)``, the narrative of ``r`` by ``rows`` (``heads``: each
    row's markup up to its value), and the names it uses beyond _GENERATED_USES (paths
    read by _first, show functions). Each row reads its element as the rules say (a
    top-level key directly; the first non-empty of several keys in a loop); a string is
    escaped inline, any other value shown by _auto (or the row's show), so the output is
    what a walk of the rows makes, without a call per row or per string."""
    names: dict[str, Any] = {}
    code = ["def div(r, view):", f"    p = [{head!r}]"]
    for n, (row, markup) in enumerate(zip(rows, heads, strict=True)):
        code += _read(row, n, names)
        code += ["    " + line for line in _show(row, markup, n, names)]
    code += [
        "    if len(p) == 1:",
        f"        return {empty!r}",
        f"    p.append({_TABLE_END!r})",
        "    return ''.join(p)",
    ]
    return "\n".join(code) + "\n", names


def _read(row: Row, n: int, names: dict[str, Any]) -> list[str]:
    """Lines that set ``v`` to the row's value, then the test that it shows."""
    if row.key:
        return [f"    v = r.get({row.key!r})", f"    if v or not {_ABSENT}:"]
    if all(len(path) == 1 for path in row.paths):  # the first non-empty of top-level keys
        keys = tuple(path[0] for path in row.paths)
        return [
            f"    for k in {keys!r}:",
            "        v = r.get(k)",
            f"        if v or not {_EMPTY}:",
            "            break",
            "    else:",
            "        v = None",
            "    if v is not None:",  # _first gives a non-empty value or None
        ]
    names[f"P{n}"] = row.paths
    return [f"    v = _first(r, P{n})", "    if v is not None:"]


def _show(row: Row, markup: str, n: int, names: dict[str, Any]) -> list[str]:
    """Lines that add the row of ``v`` to ``p`` (none when it shows nothing)."""
    shown = [
        "if x:",
        f"    p += ({markup!r}, x[0] if len(x) == 1 else '<br/>'.join(x), {_ROW_END!r})",
    ]
    if row.show != "auto":
        names[f"S{n}"] = _SHOW[row.show]
        return [f"    x = S{n}(view, v)", *("    " + line for line in shown)]
    return [
        "    if type(v) is str:",
        *("        " + line for line in _escaped("v")),
        f"        p += ({markup!r}, v, {_ROW_END!r})",
        "    else:",
        *("        " + line for line in _LINES_V),
        *("        " + line for line in shown),
    ]


# ``x = _auto(view, v)`` for the shapes other than a string: the record's own dicts and
# lists by their exact type, as _auto does, with what _element and _items would do for
# the common ones made here (a reference, a list's items, an Annotation's text alone).
_LINES_V = [
    "if type(v) is dict:",
    "    x = _reference(view, v) if 'reference' in v else _element(view, v)",
    "elif type(v) is list and len(v) <= _MAX_ITEMS:",
    "    x = []",
    "    for i in v:",
    "        if type(i) is not dict:",
    "            x += _auto(view, i)",
    "        elif 'reference' in i:",
    "            x += _reference(view, i)",
    "        elif len(i) == 1 and 'text' in i:",
    "            t = i['text']",
    "            if type(t) is not str:",
    "                t = str(t)",
    *("            " + line for line in _escaped("t")),
    "            x.append(t)",
    "        else:",
    "            x += _element(view, i)",
    "else:",
    "    x = _auto(view, v)",
]


class Narratives:
    """The narrative rules of ``mappings/narrative/``, loaded once per converter."""

    def __init__(self, folder: Path, network: Network) -> None:
        self.network = network
        raw = load_data_file(folder / "labels.yaml")
        where = "narrative/labels.yaml"
        if not isinstance(raw, dict) or not isinstance(raw.get("labels"), dict):
            raise ConfigError("mapping", f"{where}: needs 'labels'")
        self._tags = _str_map(raw.get("languages"), f"{where}: languages")
        self._jurisdictions = _str_map(raw.get("jurisdictions"), f"{where}: jurisdictions")
        self._default_chinese = str(raw.get("default_chinese", "zh-Hans"))
        self._systems = _str_map(raw.get("systems"), f"{where}: systems")
        sep = str(raw.get("separator", " / "))
        labels = {str(k): _texts(v, f"{where}: labels.{k}") for k, v in raw["labels"].items()}
        id_types = {
            str(k): _texts(v, f"{where}: identifier_types.{k}")
            for k, v in (raw.get("identifier_types") or {}).items()
        }
        # One escaped label set per choice: English alone, or each Chinese script + English.
        self._labels: dict[str | None, dict[str, str]] = {}
        self._id_types: dict[str | None, dict[str, str]] = {}
        for chinese in (None, "zh-Hans", "zh-Hant-HK"):
            langs = (chinese, EN) if chinese else (EN,)
            self._labels[chinese] = {
                k: escape(sep.join(v[lang] for lang in langs)) for k, v in labels.items()
            }
            self._id_types[chinese] = {
                k: sep.join(v[lang] for lang in langs) for k, v in id_types.items()
            }
        self._rows: dict[str, tuple[Row, ...]] = {}
        for path in sorted(folder.glob("*.yaml")):
            if path.name != "labels.yaml":
                self._load_type(path, labels)
        # Per type, per label language: its rows' markup and the title (see _Plan).
        self._plans: dict[str, dict[str | None, _Plan]] = {
            rtype: {chinese: self._plan(rtype, rows, chinese) for chinese in self._labels}
            for rtype, rows in self._rows.items()
        }
        self._sender_script: dict[str | None, str] = {}
        # Lines of frozen values (the mapping memo's: codings, staff names recur in every
        # message), by id and label language; the value is kept with them, so its id
        # cannot be reused while the entry lives.
        # One dict per label language, keyed by ints (no key tuple made per look-up).
        self._lines: dict[str | None, dict[int, tuple[Any, list[str]]]] = {}
        # A person's line by the ids of frozen name and identifier lists (see _person).
        self._persons: dict[str | None, dict[tuple[int, int], tuple[Any, Any, str]]] = {}
        # A practitioner role's line by its frozen practitioner reference (see _role).
        self._roles: dict[str | None, dict[int, tuple[Any, ...]]] = {}
        for chinese in self._labels:
            self._lines[chinese], self._persons[chinese] = {}, {}
            self._roles[chinese] = {}

    @classmethod
    def load(cls, mappings: Path, network: Network) -> Narratives:
        return cls(mappings / "narrative", network)

    @property
    def types(self) -> list[str]:
        return sorted(self._rows)

    def _load_type(self, path: Path, labels: dict[str, dict[str, str]]) -> None:
        raw = load_data_file(path)
        where = f"narrative/{path.name}"
        if not isinstance(raw, dict) or not raw.get("resourceType") or not raw.get("rows"):
            raise ConfigError("mapping", f"{where}: needs 'resourceType' and 'rows'")
        rtype = str(raw["resourceType"])
        if rtype not in labels:
            raise ConfigError("mapping", f"{where}: no label {rtype!r} (its title) in labels.yaml")
        rows = []
        for n, spec in enumerate(raw["rows"]):
            if not isinstance(spec, dict) or "label" not in spec or "path" not in spec:
                raise ConfigError("mapping", f"{where}: rows[{n}] needs 'label' and 'path'")
            label, show = str(spec["label"]), str(spec.get("show", "auto"))
            if label not in labels:
                raise ConfigError("mapping", f"{where}: rows[{n}]: no label {label!r}")
            if show not in _SHOW:
                raise ConfigError(
                    "mapping", f"{where}: rows[{n}]: show {show!r}; use one of {', '.join(_SHOW)}"
                )
            paths = spec["path"] if isinstance(spec["path"], list) else [spec["path"]]
            steps = tuple(tuple(str(p).split(".")) for p in paths)
            key = steps[0][0] if len(steps) == 1 and len(steps[0]) == 1 else None
            rows.append(Row(label, steps, show, key))
        self._rows[rtype] = tuple(rows)

    # -- applying -----------------------------------------------------------------------

    def add(self, bundle: dict[str, Any], sender: str | None = None) -> None:
        """Give each entry's resource of a type with rules a generated ``text`` (in place;
        the entry gets a new resource dict, as resources may hold shared frozen values)."""
        by_url: dict[Any, Any] = {}  # every resource, as references resolve them
        todo: list[tuple[dict[str, Any], Resource, dict[str | None, _Plan]]] = []
        for entry in bundle.get("entry") or []:  # one pass: the index and what needs text
            resource = by_url[entry.get("fullUrl")] = entry.get("resource")
            if isinstance(resource, dict):
                plans = self._plans.get(resource.get("resourceType", ""))
                if plans is not None and "text" not in resource:
                    todo.append((entry, resource, plans))
        if not todo:
            return
        view = _View(by_url, self)
        for entry, resource, plans in todo:
            chinese = self._declared(resource)
            if chinese is _UNDECLARED:
                chinese = self._script(sender) if _holds_chinese(resource) else None
            entry["resource"] = _with_text(resource, self._div(resource, plans[chinese], view))

    def render(
        self,
        resource: Resource,
        by_url: dict[Any, Any] | None = None,
        chinese: str | None = None,
    ) -> str:
        """The XHTML div of one resource, with labels in English or ``chinese`` + English
        (its ``language`` decides when it has one); references resolve within ``by_url``."""
        declared = self._declared(resource)
        rtype = str(resource.get("resourceType", ""))
        chosen = chinese if declared is _UNDECLARED else declared
        plans = self._plans.get(rtype)
        if plans is None:  # its title alone (a KeyError when it has no label either)
            return f"{XHTML}<p><b>{self._labels[chosen][rtype]}</b></p></div>"
        return self._div(resource, plans[chosen], _View(by_url or {}, self))

    def _plan(self, rtype: str, rows: tuple[Row, ...], chinese: str | None) -> _Plan:
        labels = self._labels[chinese]
        title = f"{XHTML}<p><b>{labels[rtype]}</b></p>"
        heads = [f"<tr><th>{labels[row.label]}</th><td>" for row in rows]
        source, names = _generate(rows, heads, f"{title}<table><tbody>", f"{title}</div>")
        space: dict[str, Any] = {**_GENERATED_USES, **names}
        exec(compile(source, f"<narrative {rtype} {chinese or EN}>", "exec"), space)
        return _Plan(chinese, space["div"])

    def _div(self, resource: Resource, plan: _Plan, view: _View) -> str:
        """The XHTML of ``resource`` by ``plan``: the view set for its label language."""
        chinese = view.chinese = plan.chinese
        view.id_types = self._id_types[chinese]
        view.lines, view.persons = self._lines[chinese], self._persons[chinese]
        view.roles = self._roles[chinese]
        view.described = view.by_language.setdefault(chinese, {})
        return plan.div(resource, view)

    def _declared(self, resource: Resource) -> str | None:
        """The labels' Chinese variant by the resource's ``language``: None for English,
        _UNDECLARED when it has none."""
        tag = resource.get("language")
        if not isinstance(tag, str) or not tag:
            return _UNDECLARED
        lang = self._tags.get(tag) or self._tags.get(tag.split("-")[0])
        return None if lang in (None, EN) else lang

    def _script(self, sender: str | None) -> str:
        """zh-Hans or zh-Hant-HK, by the sender's jurisdiction (HK: Traditional)."""
        found = self._sender_script.get(sender)
        if found is None:
            inst = self.network.find(sender) if sender else None
            where = (inst.jurisdiction or "") if inst else ""
            found = (
                self._jurisdictions.get(where)
                or self._jurisdictions.get(where.split("-")[0])
                or self._default_chinese
            )
            self._sender_script[sender] = found
        return found


# The UTF-8 lead bytes of U+4000-U+9FFF (CJK Unified Ideographs and most of extension A):
# a byte search (memchr, in C) is ten times faster than a regular expression here.
_CJK_LEADS = tuple(bytes([b]) for b in range(0xE4, 0xEA))


def _holds_chinese(resource: Resource) -> bool:
    """Whether any value of the resource (names, text, displays and their translations)
    holds a Chinese character (U+4000-U+9FFF): a search in each value's JSON (orjson, in
    C) rather than a walk; a shared frozen value (a memoised organisation's name, a
    coding) is searched once (keys are element names: ASCII)."""
    own: list[Any] = []  # the record's own dicts and lists: searched in one dump
    for value in resource.values():
        kind = type(value)
        if kind is str:
            if not value.isascii() and _CJK_TEXT.search(value):
                return True
        elif kind is FrozenDict or kind is FrozenList:
            hit = _HOLDS.get(id(value))
            if hit is None or hit[0] is not value:
                if len(_HOLDS) >= _LINES_SIZE:
                    _HOLDS.clear()
                hit = _HOLDS[id(value)] = (value, _json_holds_chinese(value))
            if hit[1]:
                return True
        elif kind is dict or kind is list:
            own.append(value)
    # A list's JSON is its items' JSON joined by ASCII: one search answers for all of them.
    return bool(own) and _json_holds_chinese(own)


def _json_holds_chinese(value: Any) -> bool:
    data = orjson.dumps(value)
    return not data.isascii() and any(lead in data for lead in _CJK_LEADS)


_CJK_TEXT = re.compile("[\u4000-\u9fff]")  # what the lead bytes above encode
# Frozen values by id, with whether they hold Chinese (the value kept: its id stays its).
_HOLDS: dict[int, tuple[Any, bool]] = {}


# -- values: each becomes one line of escaped XHTML -------------------------------------------


class _View:
    """What rendering values needs: the Bundle's resources by fullUrl, the labels'
    languages, and the lines already made for referenced resources (a patient is named
    in every resource of its record)."""

    def __init__(self, by_url: dict[Any, Any], owner: Narratives) -> None:
        self.by_url = by_url
        self.systems = owner._systems
        self.chinese: str | None = None
        self.id_types: dict[str, str] = {}
        # Lines of referenced resources by fullUrl, per label language (see _div).
        self.by_language: dict[str | None, dict[str, list[str]]] = {}
        self.described: dict[str, list[str]] = {}
        # The renderer's caches for the labels' language (set by Narratives._div).
        self.lines: dict[int, tuple[Any, list[str]]] = {}
        self.persons: dict[tuple[int, int], tuple[Any, Any, str]] = {}
        self.roles: dict[int, tuple[Any, ...]] = {}


def _esc(text: str) -> str:
    """Escaped (html.escape, quote=True); line breaks become <br/>."""
    if "&" in text or "<" in text or ">" in text or '"' in text or "'" in text:
        text = escape(text)
    return text.replace("\n", "<br/>") if "\n" in text else text


_LINES_SIZE = 4096  # frozen values whose lines are kept, per label language; cleared when full


def _auto(view: _View, value: Any) -> list[str]:
    """Any element, by its shape; a frozen value without references (shared between
    records, unchanging) is rendered once per label language."""
    kind = type(value)
    # the record's own values first, by their exact type (what the mapping makes)
    if kind is dict:
        return _element(view, value)
    if kind is str:
        return [_esc(value)]
    if kind is list:
        return _items(view, value)
    if (kind is FrozenDict or kind is FrozenList) and not value.holds_refs:
        key = id(value)
        hit = view.lines.get(key)
        if hit is not None and hit[0] is value:
            return hit[1]
        lines = _shape(view, value)
        if len(view.lines) >= _LINES_SIZE:
            view.lines.clear()
        view.lines[key] = (value, lines)
        return lines
    return _shape(view, value)


def _shape(view: _View, value: Any) -> list[str]:
    """Any element, by its shape (lists: one line per item, at most _MAX_ITEMS)."""
    if isinstance(value, dict):
        return _element(view, value)
    if isinstance(value, list):
        return _items(view, value)
    if isinstance(value, bool):
        return ["true" if value else "false"]
    return [_esc(str(value))]


def _items(view: _View, value: list[Any]) -> list[str]:
    if len(value) == 1:  # most lists (identifiers, categories, notes): the item's lines
        item = value[0]  # as they are (nothing changes returned lines)
        return _element(view, item) if type(item) is dict else _auto(view, item)
    out: list[str] = []
    for item in value if len(value) <= _MAX_ITEMS else value[:_MAX_ITEMS]:
        out += _element(view, item) if type(item) is dict else _auto(view, item)
    if len(value) > _MAX_ITEMS:
        out.append(f"… (+{len(value) - _MAX_ITEMS})")
    return out


def _element(view: _View, value: dict[str, Any]) -> list[str]:
    if "reference" in value:  # first: most are references (with it, text is not alone)
        return _reference(view, value)
    if len(value) == 1 and "text" in value:  # an Annotation as most are: no test below fits
        return [_esc(str(value["text"]))]
    if "coding" in value:
        return _concept(view, value)
    if "code" in value and "system" in value and "value" not in value:
        return [_coding(view, value)]
    if "value" in value and "system" in value and "code" not in value:
        return [_identifier(view, value)]
    if "start" in value or "end" in value:
        return [_esc(f"{value.get('start') or '…'} – {value.get('end') or '…'}")]
    if "family" in value or "given" in value:  # HumanName without text
        return [_esc(_name(value))]
    if "value" in value:  # Quantity
        unit = value.get("unit") or value.get("code") or ""
        return [_esc(f"{value['value']} {unit}".strip())]
    if "text" in value:  # Annotation, a concept or a name with text only
        return [_esc(str(value["text"]))]
    if "display" in value or "identifier" in value:  # a reference without a target
        return _reference(view, value)
    return []


def _concept(view: _View, concept: dict[str, Any]) -> list[str]:
    codings = concept.get("coding") or ()
    out = []
    for coding in codings:
        if isinstance(coding, dict):
            out.append(_coding(view, coding))
    text = concept.get("text")
    if text:  # shown too when no coding displays it
        for coding in codings:
            if isinstance(coding, dict) and text == coding.get("display"):
                break
        else:
            out.insert(0, _esc(str(text)))
    return out


def _coding(view: _View, coding: dict[str, Any]) -> str:
    """display / its translation into the labels' other language (system code)"""
    display = str(coding.get("display") or "")
    other = _translation(coding, view.chinese) if view.chinese and coding.get("_display") else None
    if other:
        head = f"{display} / {other}" if _CJK.search(display) else f"{other} / {display}"
    else:
        head = display
    system = coding.get("system")
    name = view.systems.get(system, "") if isinstance(system, str) else ""
    code = str(coding.get("code") or "")
    tail = f"{name} {code}" if name and code else name or code
    return _esc(f"{head} ({tail})" if head and tail else head or tail)


# translation tags as the terminology files write them today → the label variants
_SCRIPT_OF = {"zh-CN": "zh-Hans", "zh-HK": "zh-Hant-HK", "zh-Hant": "zh-Hant-HK"}


def _translation(coding: dict[str, Any], chinese: str) -> str | None:
    """The display's translation into the other language of the labels (English for a
    Chinese display, ``chinese`` for an English one), from the translation extension."""
    extensions = (coding.get("_display") or {}).get("extension")
    if not extensions:
        return None
    want = EN if _CJK.search(str(coding.get("display") or "")) else chinese
    for ext in extensions:
        if ext.get("url") != TRANSLATION:
            continue
        parts = {e.get("url"): e for e in ext.get("extension") or ()}
        lang = (parts.get("lang") or {}).get("valueCode")
        if lang and _SCRIPT_OF.get(lang, lang) == want:
            content = (parts.get("content") or {}).get("valueString")
            return str(content) if content else None
    return None


def _identifier(view: _View, ident: dict[str, Any]) -> str:
    value = ident.get("value", "")
    if type(value) is not str:
        value = str(value)
    kind = ident.get("type")
    coding = kind.get("coding") if kind else None
    code = coding[0].get("code") if coding else None
    if code:  # its label (v2-0203), else the code itself
        return _esc(f"{view.id_types.get(code) or code} {value}")
    return _esc(value)


def _reference(view: _View, ref: dict[str, Any]) -> list[str]:
    url = ref.get("reference")
    target = view.by_url.get(url) if url else None
    if isinstance(target, dict):
        key = url if type(url) is str else str(url)
        found = view.described.get(key)
        if found is None:
            found = view.described[key] = _described(view, target)
        return found
    if ref.get("display"):
        return [_esc(str(ref["display"]))]
    ident = ref.get("identifier")
    if isinstance(ident, dict) and ident.get("value"):
        return [_identifier(view, ident)]
    return []


def _described(view: _View, target: Resource) -> list[str]:
    """A referenced resource in one line: who (name, identifier) or what (its code)."""
    rtype = target.get("resourceType")
    if rtype == "PractitionerRole":
        return _role(view, target)
    if rtype in ("Patient", "Practitioner", "RelatedPerson"):
        return [_person(view, target)]
    if rtype == "Organization":
        return [_esc(str(target["name"]))] if target.get("name") else []
    code = target.get("code") or target.get("modality")
    return _auto(view, code) if code else []


_ROLES_SIZE = 512  # roles' lines kept, per label language; cleared when full
_ROLE_CHARS = 512  # a longer line is made each time (the memo's bytes stay bounded)
_PERSONS = frozenset({"Patient", "Practitioner", "RelatedPerson"})


def _role(view: _View, role: Resource) -> list[str]:
    """A practitioner role: its practitioner — its organisation. The roles of a feed's
    staff recur in every message, made of the mapping memo's frozen values: their line
    is remembered by the role's practitioner reference and found again when everything
    it was made from is read again (see _role_inputs): another name merged into the
    practitioner, another organisation, a reference that no longer resolves, and the
    line is made anew."""
    practitioner, organization = role.get("practitioner"), role.get("organization")
    inputs = _role_inputs(view, practitioner, organization)
    if inputs is not None:
        known = view.roles.get(id(practitioner))
        if known is not None and _same(known, inputs):
            return known[-1]  # type: ignore[no-any-return]
    lines = _role_lines(view, practitioner, organization)
    if inputs is not None and sum(map(len, lines)) <= _ROLE_CHARS:
        if len(view.roles) >= _ROLES_SIZE:
            view.roles.clear()
        view.roles[id(practitioner)] = (*inputs, lines)  # kept: their ids stay theirs
    return lines


def _role_inputs(view: _View, practitioner: Any, organization: Any) -> tuple[Any, ...] | None:
    """What a role's line is made from, when its two frozen references (the mapping
    memo's: they cannot change in place) resolve to a person whose names and identifiers
    are frozen and to an organisation: the practitioner reference (the memo's key), the
    names, the identifiers, the organisation's name; the line reads nothing else (the
    references' other elements only when one does not resolve). None for any other
    role: made each time."""
    if type(practitioner) is not FrozenDict or type(organization) is not FrozenDict:
        return None
    url, at = practitioner.get("reference"), organization.get("reference")
    person = view.by_url.get(url) if url else None
    org = view.by_url.get(at) if at else None
    if not isinstance(person, dict) or not isinstance(org, dict):
        return None
    names, idents, name = person.get("name"), person.get("identifier"), org.get("name")
    if (
        person.get("resourceType") not in _PERSONS
        or org.get("resourceType") != "Organization"
        or type(names) is not FrozenList
        or not (idents is None or type(idents) is FrozenList)
        or not (name is None or type(name) is str)
    ):
        return None
    return (practitioner, names, idents, name)


def _same(known: tuple[Any, ...], inputs: tuple[Any, ...]) -> bool:
    """The frozen values are the very ones (identity: a value equal to another may show
    differently, 1 and True); the organisation's name an equal string."""
    return (
        known[0] is inputs[0]
        and known[1] is inputs[1]
        and known[2] is inputs[2]
        and known[3] == inputs[3]
    )


def _role_lines(view: _View, practitioner: Any, organization: Any) -> list[str]:
    who = _reference(view, practitioner or {})
    org = _reference(view, organization or {})
    # " — ".join of the first lines of those that have any, without a generator
    if who and org:
        return [f"{who[0]} — {org[0]}"]
    line = who[0] if who else org[0] if org else ""
    return [line] if line else []


def _person(view: _View, person: Resource) -> str:
    """Every name as the data has it (joined with ' / ', never converted), then the
    first identifier in parentheses. Names and identifiers that are frozen shared values
    (a memoised practitioner's) are rendered once per label language."""
    names, idents = person.get("name"), person.get("identifier")
    if type(names) is FrozenList and (idents is None or type(idents) is FrozenList):
        key = (id(names), id(idents))
        hit = view.persons.get(key)
        if hit is not None and hit[0] is names and hit[1] is idents:
            return hit[2]
        line = _person_line(view, names, idents)
        if len(view.persons) >= _LINES_SIZE:
            view.persons.clear()
        view.persons[key] = (names, idents, line)  # kept: their ids stay theirs
        return line
    return _person_line(view, names, idents)


def _person_line(view: _View, names: Any, idents: Any) -> str:
    texts: list[str] = []
    for name in names or ():
        if isinstance(name, dict):
            text = _name(name)
            if text:
                texts.append(text)
    line = _esc(" / ".join(texts))
    for ident in idents or ():
        if isinstance(ident, dict) and ident.get("value"):
            shown = _identifier(view, ident)
            return f"{line} ({shown})" if line else shown
    return line


def _name(name: dict[str, Any]) -> str:
    if name.get("text"):
        return str(name["text"])
    family = str(name.get("family") or "")
    given = " ".join(map(str, name.get("given") or ()))
    joined = family + given
    if not joined.isascii() and _CJK.search(joined):
        return family + given.replace(" ", "")
    return f"{family}, {given}" if family and given else family or given


def _series(view: _View, series: Any) -> list[str]:
    """ImagingStudy.series: number, modality, description, instances (one line each)."""
    out: list[str] = []
    items = series if isinstance(series, list) else [series]
    for s in items[:_MAX_ITEMS]:
        if not isinstance(s, dict):
            continue
        modality = (s.get("modality") or {}).get("code", "")
        head = " ".join(str(p) for p in (f"#{s.get('number', '?')}", modality) if p)
        desc = s.get("description")
        count = s.get("numberOfInstances", len(s.get("instance") or ()))
        out.append(_esc(f"{head} {desc} ({count})" if desc else f"{head} ({count})"))
    if len(items) > _MAX_ITEMS:
        out.append(f"… (+{len(items) - _MAX_ITEMS})")
    return out


_SHOW: dict[str, Show] = {"auto": _auto, "series": _series}


# -- helpers -------------------------------------------------------------------------------


def _first(resource: Resource, paths: tuple[tuple[str, ...], ...]) -> Any:
    for path in paths:
        value: Any = resource
        for step in path:
            value = value.get(step) if isinstance(value, dict) else None
            if value is None:
                break
        if value or not (value is None or value == "" or value == [] or value == {}):
            return value
    return None


# What the generated divs call (see _generate).
_GENERATED_USES: dict[str, Any] = {
    "escape": escape,
    "_auto": _auto,
    "_element": _element,
    "_reference": _reference,
    "_MAX_ITEMS": _MAX_ITEMS,
    "_first": _first,
}


# FHIR's order of a DomainResource's first elements: text goes after these.
_BEFORE_TEXT = ("resourceType", "id", "meta", "implicitRules", "language")


def _with_text(resource: Resource, div: str) -> Resource:
    """``resource`` with ``text`` after its leading elements (as _BEFORE_TEXT orders them),
    the others in their order: updating from ``resource`` sets the leading ones again
    where they already are (the same values) and adds the rest after ``text``, in C."""
    out = {}
    for key in _BEFORE_TEXT:
        if key in resource:
            out[key] = resource[key]
    out["text"] = {"status": "generated", "div": div}
    out.update(resource)
    return out


def _str_map(raw: Any, where: str) -> dict[str, str]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError("mapping", f"{where}: expected a mapping")
    return {str(k): str(v) for k, v in raw.items()}


def _texts(raw: Any, where: str) -> dict[str, str]:
    if not isinstance(raw, dict) or any(not raw.get(lang) for lang in LANGS):
        raise ConfigError("mapping", f"{where}: needs a text for each of {', '.join(LANGS)}")
    return {lang: str(raw[lang]) for lang in LANGS}
