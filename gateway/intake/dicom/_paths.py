"""The DICOM path grammar of the mappings (docs/mapping-dicom.md), compiled once.

::

    path    := part ('+' part)*                    values joined: StudyDate+StudyTime
    part    := ['/'] (nav | fact | self | attr)     '/' = from the study root
    nav     := 'series' | 'instances'               the levels below the current one
    fact    := '@sender' | '@charset' | '@series-count' | '@instance-count'
    self    := '.' [pn] [suffix]                    the value node of an 'each' / 'at'
    attr    := step ('.' step)* [pn] [suffix]       sequence items are stepped into with '.'
    step    := (Keyword | '(' gggg ',' eeee ')') ['[' n | '*' ']']
    pn      := '.' (Alphabetic | Ideographic | Phonetic) ['.' part] | '.' part
    part    := family | given | middle | prefix | suffix
    suffix  := '@facility'                          the network facility code the value names

A keyword is checked against pydicom's data dictionary when the mappings load, so a
typo is a ConfigError naming it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

from pydicom.datadict import dictionary_VR, keyword_for_tag, tag_for_keyword

from ...errors import ConfigError

__all__ = [
    "ALL",
    "PN_GROUPS",
    "PN_PARTS",
    "Path",
    "Step",
    "check_path",
    "compile_path",
    "tag_label",
]

ALL = -1  # '[*]'
NAVIGATION = frozenset({"series", "instances"})
FACTS = frozenset({"@sender", "@charset", "@series-count", "@instance-count"})
PN_GROUPS = {"Alphabetic": 0, "Ideographic": 1, "Phonetic": 2}
PN_PARTS = {"family": 0, "given": 1, "middle": 2, "prefix": 3, "suffix": 4}

_STEP = re.compile(
    r"(?:([A-Za-z][A-Za-z0-9]*)|\(([0-9A-Fa-f]{4}),([0-9A-Fa-f]{4})\))(?:\[([1-9]\d*|\*)\])?\Z"
)


@dataclass(frozen=True, slots=True)
class Step:
    tag: int
    vr: str  # from the data dictionary ('' for private or unknown tags)
    label: str  # "(0010,0010) PatientName"
    index: int = 0  # 0 = not given (the first), n (1-based) or ALL


@dataclass(frozen=True, slots=True)
class Path:
    text: str
    root: bool = False
    kind: str = "attr"  # attr, nav, fact, self, concat
    name: str = ""  # nav or fact name
    steps: tuple[Step, ...] = ()
    pn_group: int = -1  # -1 = the value as sent (a PN read whole)
    pn_part: int = -1  # -1 = the whole group
    facility: bool = False
    parts: tuple[Path, ...] = ()  # concat
    every: bool = False  # some step says '[*]': values of every instance of the level


def tag_label(tag: int) -> str:
    """'(0010,0010) PatientName': how errors name a DICOM attribute."""
    keyword = keyword_for_tag(tag)
    text = f"({tag >> 16:04X},{tag & 0xFFFF:04X})"
    return f"{text} {keyword}" if keyword else text


def _bad(path: str, why: str) -> ConfigError:
    return ConfigError(
        "bad-path", f"{path!r} is not a DICOM path: {why} (see docs/mapping-dicom.md)"
    )


def _step(path: str, token: str) -> Step:
    m = _STEP.match(token)
    if not m:
        raise _bad(path, f"{token!r} is neither a DICOM keyword nor a tag like (0010,0010)")
    if m[1]:
        tag = tag_for_keyword(m[1])
        if tag is None:
            raise _bad(path, f"{m[1]!r} is not a keyword of the DICOM data dictionary")
    else:
        tag = int(m[2] + m[3], 16)
    try:
        vr = dictionary_VR(tag)
    except KeyError:  # private or retired-unknown: no VR to check against
        vr = ""
    index = 0 if m[4] is None else ALL if m[4] == "*" else int(m[4])
    return Step(tag, vr, tag_label(tag), index)


def _pn(path: str, tokens: list[str]) -> tuple[int, int]:
    """The PN group and part named by the tokens after a PN attribute."""
    group, part = -1, -1
    rest = list(tokens)
    if rest and rest[0] in PN_GROUPS:
        group = PN_GROUPS[rest.pop(0)]
    if rest and rest[0] in PN_PARTS:
        part = PN_PARTS[rest.pop(0)]
        group = max(group, 0)  # a part without a group: of the Alphabetic group
    if rest:
        raise _bad(path, f"{rest[0]!r} is not a person-name group or part")
    return group, part


def _split_tokens(body: str) -> list[str]:
    # Tags hold a comma, never a dot: a plain split on '.' separates the steps.
    return body.split(".")


def _part(path: str, text: str) -> Path:
    root = text.startswith("/")
    body = text[1:] if root else text
    facility = body.endswith("@facility")
    if facility:
        body = body[: -len("@facility")]
    if not body:
        raise _bad(path, "empty")
    if body in NAVIGATION and not facility:
        return Path(text, root, "nav", body)
    if body in FACTS and not facility:
        return Path(text, root, "fact", body)
    if body.startswith("."):
        if root:
            raise _bad(path, "'.' (this value) cannot start from the root")
        group, part = _pn(path, [t for t in body[1:].split(".") if t] if body != "." else [])
        return Path(text, False, "self", pn_group=group, pn_part=part, facility=facility)
    tokens = _split_tokens(body)
    steps: list[Step] = []
    pn: list[str] = []
    for token in tokens:
        if pn or (steps and steps[-1].vr == "PN"):
            pn.append(token)
            continue
        if steps and steps[-1].vr not in ("SQ", ""):
            raise _bad(path, f"{steps[-1].label} is not a sequence, so it has no {token!r}")
        steps.append(_step(path, token))
    group, part = _pn(path, pn) if pn else (-1, -1)
    every = any(s.index == ALL for s in steps)
    return Path(text, root, "attr", "", tuple(steps), group, part, facility, (), every)


@lru_cache(maxsize=4096)
def compile_path(path: str) -> Path:
    text = path.strip()
    if "+" in text:
        parts = tuple(_part(path, p.strip()) for p in text.split("+"))
        if any(p.kind not in ("attr",) for p in parts):
            raise _bad(path, "only attributes can be joined with '+'")
        return Path(text, kind="concat", parts=parts)
    return _part(path, text)


def check_path(path: str) -> None:
    """Raise ConfigError when ``path`` is not a valid DICOM path (mappings load time)."""
    compile_path(path)
