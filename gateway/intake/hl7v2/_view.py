"""Terser-path look-ups over a tokenised HL7 v2 message.

Path grammar (1-based everywhere; see docs/mapping-language.md)::

    [/]SEG[(n|*)]-F[(r|*)][.C[.S]]     absolute: segment, occurrence, field, repetition,
                                         component, subcomponent; '/' = whole message
    .C[.S]                               relative to the current node (a repetition or
                                         a component of an enclosing 'each'/'at')

Without '/', a segment is looked up inside the current group (e.g. the segments from
one ORC to the next), so ``OBR-4`` inside ``each: ORC`` is that order's OBR.
"""

from __future__ import annotations

import re
from bisect import bisect_left
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache, partial
from typing import Any, ClassVar, NamedTuple

from ...errors import ConfigError, Issue
from .._controls import CONTROL, SPACED, controls_removed, stripped
from .._identifying import hl7_fields, hl7_identifies, hl7_identifies_where, hl7_text
from ._er7 import Message

__all__ = ["Accessor", "Hl7View", "PathCheck", "Position", "check_path", "components"]

# Indexes are 1-based: 0 is rejected, so a typo such as PID-5.0 fails when mappings load.
_ABS = re.compile(
    r"(/)?([A-Z][A-Z0-9]{2})(?:\(([1-9]\d*|\*)\))?"
    r"(?:-([1-9]\d*)(?:\(([1-9]\d*|\*)\))?(?:\.([1-9]\d*)(?:\.([1-9]\d*))?)?)?\Z"
)
_REL = re.compile(r"\.([1-9]\d*)(?:\.([1-9]\d*))?\Z")
_ALL = -1  # '*' in a compiled path


class Position(NamedTuple):
    """Where the engine stands: a segment group and, inside it, maybe one node.

    Immutable; a named tuple rather than a frozen dataclass, whose constructor costs
    three times as much (a mapping makes a few dozen per message)."""

    start: int
    end: int
    label: str = ""  # terser path of the node or group, for error messages
    text: str | None = None  # the node's raw (escaped) text
    level: int = 0  # 0 = field repetition, 1 = component, 2 = subcomponent


# Position((start, end, label, text, level)) without the named tuple's __new__, a Python
# function: half the cost, for the few dozen nodes a message's mapping selects
_node = partial(tuple.__new__, Position)


@dataclass(frozen=True, slots=True)
class _Path:
    relative: bool
    root: bool = False
    segment: str = ""
    occurrence: int = 0  # 0 = not given: the first for a value, every group for 'each'
    field: int = 0
    repetition: int = 0  # 0 = not given: the first for a value, all for 'each'/'at' lists
    component: int = 0
    sub: int = 0
    star: bool = False  # an occurrence or repetition is '*'
    skip: int = 0  # occurrences before the one named (for bisect)


@lru_cache(maxsize=4096)
def _compile(path: str) -> _Path:
    m = _REL.match(path)
    if m:
        return _Path(True, component=int(m[1]), sub=int(m[2] or 0))
    m = _ABS.match(path)
    if not m:
        raise ConfigError("bad-path", f"{path!r} is not an HL7 v2 terser path (e.g. PID-5(2).1)")
    occ = _ALL if m[3] == "*" else int(m[3] or 0)
    rep = _ALL if m[5] == "*" else int(m[5] or 0)
    comp, sub = int(m[6] or 0), int(m[7] or 0)
    star, skip = _ALL in (occ, rep), max(occ - 1, 0)
    return _Path(False, bool(m[1]), m[2], occ, int(m[4] or 0), rep, comp, sub, star, skip)


def _has_controls(message: Message) -> bool:
    """Whether some value of ``message`` may hold a control character: a stray byte, or
    a hex escape that decodes to one (as :meth:`Hl7View._escape` reads it). Such a
    message is not memoised (see Hl7View)."""
    es = message.separators[3]
    for line in message.lines:
        if CONTROL.search(line):
            return True
        if es + "X" in line:
            for seq in line.split(es)[1::2]:
                if seq[:1] != "X":
                    continue
                try:
                    data = bytes.fromhex(seq[1:])
                except ValueError:
                    continue  # kept as written: no control character
                if CONTROL.search(data.decode("latin-1")):  # control bytes are ASCII
                    return True
    return False


@lru_cache(maxsize=256)
def _sorted(names: frozenset[str]) -> tuple[str, ...]:
    """A memoised spec's segment names in a stable order (its memo key's), sorted once."""
    return tuple(sorted(names))


@lru_cache(maxsize=32)
def _escapes(separators: str) -> dict[str, str]:
    """What each named escape sequence stands for with these delimiters: made once per
    delimiter set (nearly always ``|^~\\&``), shared by the views, read only."""
    fs, cs, rs, es, ss = tuple(separators)
    return {"F": fs, "S": cs, "T": ss, "R": rs, "E": es, ".br": "\n", ".sp": "\n"}


def components(view: Hl7View, here: Position, n: int) -> list[str | None] | None:
    """What ``view.first('.C', here)`` gives for each C of 1..n (None for an empty one),
    read at once: one call for the dozen components a fragment reads of one node (the
    generated mappings bind it, gateway/mapping/_codegen.py). ``.C.1`` gives the same
    as ``.C`` (a component is read up to its first subcomponent).

    None when the reads must be made one by one: a node that is not a field repetition
    (no node, an empty one, a component), or a view whose values may hold control
    characters (each read removes them with a warning, in the order the mapping reads
    them)."""
    text = here.text
    if not text or here.level or not view._plain:
        return None
    parts = view._components.get(text)
    if parts is None:
        parts = view._components[text] = text.split(view._cs)
    ss, es = view._ss, view._es
    out: list[str | None]
    if ss not in text and es not in text:  # most nodes: each component as it is, stripped
        out = [v if (v := raw.strip()) and v != '""' else None for raw in parts[:n]]
    else:
        out = []
        for raw in parts[:n]:
            if raw and ss in raw:
                raw = raw.split(ss, 1)[0]
            if raw and es in raw:
                raw = view.unescape(raw)
            value = raw.strip()
            out.append(value if value and value != '""' else None)
    if len(out) < n:
        out += [None] * (n - len(out))
    return out


class Hl7View:
    """Answers path look-ups for one message; the mapping engine's window on it."""

    kind = "hl7v2"

    # Node text is the whole meaning (with separators and charset): memoisable. Not when
    # a value holds control characters: a memo hit would skip the warning it gives.
    memo = True

    def __init__(self, message: Message) -> None:
        self.message = message
        # The message's tables, one attribute away: every look-up reads them (the
        # message is not changed once tokenised)
        self._segs = message.segments
        self._positions = message.positions
        self._nseg = len(message.segments)
        # Without control characters anywhere (the common case), a value needs no
        # search for them: stripping it is all :meth:`_clean` would do.
        self._plain = not message.controls
        if message.controls and _has_controls(message):
            self.memo = False
        # Warnings found while the mapping reads values (control characters removed);
        # the reader points this at the record's issues.
        self.notes: list[Issue] = []
        self._noted: set[str] = set()  # the locations warned of: one warning each
        self.root = _node((0, self._nseg, "", None, 0))  # Position(0, self._nseg)
        fs, cs, rs, es, ss = tuple(message.separators)
        self._fs, self._cs, self._rs, self._es, self._ss = fs, cs, rs, es, ss
        self._escapes = _escapes(message.separators)
        # (segment index, field) pairs read so far, when tracing what the mapping used
        self.read: set[tuple[int, int]] | None = None
        # Whether it does (an attribute, not a property: the memo asks on every call)
        self.tracing = False
        # What else, beside a node's text, decides what the text means: the memo keys on it.
        self.reading = (message.separators, message.charset)
        self._labels: dict[int, str] = {}
        # A node's components, split once: a fragment reads up to a dozen of one node.
        self._components: dict[str, list[str]] = {}
        # A TAB, LF or ideographic space at an end of an identifying value fails the
        # record (_clean): the values of a message whose identifying fields may hold one
        # are read one by one, as with control characters. Others (nearly all, even with
        # such spaces in names or text) keep the plain reads. Nor memoised: a spec that
        # reads the same node text in a field that is text (CWE at OBR-31, then OBR-4)
        # memoised it trimmed, and a hit would skip the record's error. Asked of a view
        # that holds a hex escape too (message.controls: \X09\ is a TAB).
        if (message.spaces or message.controls) and self._spaced_identifiers():
            self._plain = False
            self.memo = False

    # what reads a node's components at once, for the generated mappings (a ClassVar:
    # compiled with mypyc, an unannotated one is an instance attribute, and the class
    # attribute the generator looks up a descriptor, not the function)
    components: ClassVar[Callable[[Hl7View, Position, int], list[str | None] | None]] = (
        staticmethod(components)
    )

    @staticmethod
    def accessor(method: str, path: str) -> Accessor:
        """The look-up ``view.<method>(path, here)`` as a function of (view, here), with
        ``path`` resolved once: bound as a constant by the generated mappings."""
        return _accessor(method, path)

    def trace(self) -> None:
        """Start recording which fields are read (see :meth:`unmapped`). The header fields
        intake itself uses (type, control id, version, charset) count as read."""
        self.read = {(0, 9), (0, 10), (0, 12), (0, 18)}
        self.tracing = True

    def unmapped(self) -> list[str]:
        """Segments and fields holding data that nothing read, e.g. ``['AL1', 'PID-10']``:
        what a mapping leaves behind. Needs :meth:`trace` before the mapping ran."""
        read = self.read or set()
        touched = {seg for seg, _ in read}
        out = []
        for index, fields in enumerate(self.message.segments):
            name = fields[0]
            label = self._segment_label(name, index)
            if index not in touched:
                if name not in ("MSH",) and any(fields[1:]):
                    out.append(label)
                continue
            first = 3 if name == "MSH" else 1  # MSH-1/2 are the delimiters
            out += [
                f"{label}-{n}"
                for n in range(first, len(fields))
                if fields[n] and (index, n) not in read
            ]
        return out

    def group_key(self, here: Position, segments: frozenset[str]) -> tuple[str, ...] | None:
        """The text of the named segments inside ``here``'s group: all that a spec reading
        only those segments of that group can depend on (the engine memoises on it).
        None for the whole message, where memoising would not pay."""
        if here.start == 0 and here.end == self._nseg:
            return None
        lines = self.message.lines
        names = _sorted(segments)
        if len(names) == 1:  # most specs read one segment of their group
            return tuple([lines[i] for i in self._in_range(names[0], here.start, here.end)])
        return tuple(lines[i] for name in names for i in self._in_range(name, here.start, here.end))

    # -- groups and nodes (for 'each' and 'at') ----------------------------------------
    def select(self, path: str, here: Position) -> list[Position]:
        """Groups for a bare segment name, otherwise the nodes at ``path``."""
        p = _compile(path)
        if p.relative:
            node = self._relative(p, here)
            return [node] if node is not None else []
        if p.field == 0:
            return self._groups(p, here)
        if p.occurrence == _ALL:
            out: list[Position] = []
            for seg_index, seg_label in self._segments(p, here):
                out.extend(self._field_nodes(p, seg_index, seg_label, every=True))
            return out
        # One segment at most (the mappings' common 'at'/'each'): ``_segments`` inlined,
        # without its lists
        found = self._positions.get(p.segment)
        if not found:
            return []
        i = bisect_left(found, 0 if p.root else here.start) + p.skip
        if i >= len(found):
            return []
        idx = found[i]
        if idx >= (self._nseg if p.root else here.end):
            return []
        return self._field_nodes(p, idx, self._segment_label(p.segment, idx), every=True)

    def _groups(self, p: _Path, here: Position) -> list[Position]:
        start, end = (0, self._nseg) if p.root else (here.start, here.end)
        # _in_range inlined, and each label found without a call once made (every 'each'
        # and 'group' of a mapping selects groups)
        every = self._positions.get(p.segment)
        if not every:
            return []
        i = bisect_left(every, start)
        found = every[i : bisect_left(every, end, i)]
        labels = self._labels
        groups = []
        for n, idx in enumerate(found):
            stop = found[n + 1] if n + 1 < len(found) else end
            label = labels.get(idx) or self._segment_label(p.segment, idx)
            groups.append(_node((idx, stop, label, None, 0)))
        if p.occurrence > 0:
            return groups[p.occurrence - 1 : p.occurrence]
        return groups

    # -- leaf values ---------------------------------------------------------------------
    def values(self, path: str, here: Position) -> list[tuple[str, str]]:
        """Every non-empty (value, terser path) at ``path``, unescaped and stripped."""
        p = _compile(path)
        if p.relative:
            node = self._relative(p, here)
            nodes = [node] if node is not None else []
        else:
            nodes = []
            for seg_index, seg_label in self._segments(p, here):
                nodes.extend(self._field_nodes(p, seg_index, seg_label))
        out = []
        for node in nodes:
            raw = node.text or ""
            if node.level == 0 and self._cs in raw:
                raw = raw.split(self._cs, 1)[0]  # a field read whole means its first component
            if node.level <= 1 and self._ss in raw:
                raw = raw.split(self._ss, 1)[0]
            raw = self.unescape(raw)
            value = raw.strip() if self._plain else self._clean(raw, node.label)
            if value and value != '""':  # "" is HL7's explicit null
                out.append((value, node.label))
        return out

    def _clean(
        self, value: str, label: str | None, path: str = "", here: Position | None = None
    ) -> str:
        """``value`` stripped, without control characters (a warning names the field;
        ``""`` when nothing else was there: read as absent); the record's error in an
        identifying field (gateway/intake/_controls.py)."""
        if not CONTROL.search(value):
            out = value.strip()
            if len(out) == len(value) or out == value.strip(" "):
                return out  # nothing taken but padding spaces
            if label is None:
                label = self.label(path, here or self.root)
            return stripped(value, label, self._identifying_value)
        if label is None:
            label = self.label(path, here or self.root)
        return controls_removed(
            value, label, self._identifying_value, self.notes, self._noted, '""'
        )

    def _spaced_identifiers(self) -> bool:
        """Whether an identifying field of the message (or OBX-5 in the OBX naming the
        DICOM study) holds a TAB, a no-break or an ideographic space (EDGE_SPACES), a
        formatting escape (an LF) or a hex escape (``\\X09\\``):
        one look at each, once per message that holds any of them (Message.spaces)."""
        segs, formatting, hex_escape = self._segs, self._es + ".", self._es + "X"
        for name, numbers in hl7_fields().items():
            for idx in self._positions.get(name, ()):
                fields = segs[idx]
                for n in numbers:
                    text = fields[n] if n < len(fields) else ""
                    if text and (formatting in text or hex_escape in text or SPACED.search(text)):
                        label = f"{self._segment_label(name, idx)}-{n}"
                        if self._identifies(label):
                            return True
        return False

    def _identifying_value(self, label: str) -> bool:
        """Whether the value at ``label`` identifies (a control character in it, or white
        space other than spaces at an end, fails the record): in an identifying field,
        but not a name or display text there (mappings/identity-fields.yaml
        ``hl7v2-text``: the provider's name, a code's text; Chinese text is padded with
        U+3000), which is text as anywhere else."""
        return not hl7_text(label) and self._identifies(label)

    def _identifies(self, label: str) -> bool:
        """Whether ``label`` is in an identifying field: listed, or listed for segments
        like its own (OBX-5 of the OBX coded 113014 is a Study Instance UID)."""
        if hl7_identifies(label):
            return True
        where = hl7_identifies_where(label)
        return where is not None and self.first(where[0], self.root) in where[1]

    def first(self, path: str, here: Position) -> str | None:
        """The first non-empty value at ``path`` — ``values(...)[0][0]`` without building
        any terser-path labels (the engine asks for a label only to report an error)."""
        p = _compile(path)
        if p.relative:
            text, level = here.text, here.level
            if text is None:
                return self._relative_text(p, here)
            if level == 0 and not p.sub and text:
                # A component of a field repetition (.5 of a CX): the mappings' most
                # common read, without the general descent
                parts = self._components.get(text)
                if parts is None:
                    parts = self._components[text] = text.split(self._cs)
                if p.component > len(parts):
                    return None
                raw = parts[p.component - 1]
                if not raw:
                    return None
                if self._ss in raw:
                    raw = raw.split(self._ss, 1)[0]
                if self._es in raw:
                    raw = self.unescape(raw)
                value = raw.strip() if self._plain else self._clean(raw, None, path, here)
                return value if value and value != '""' else None
            raw, level = self._parts(text, level, p.component, p.sub)
        else:
            start, end = (0, self._nseg) if p.root else (here.start, here.end)
            if p.star:
                return self._first_slow(path, here)
            found = self._positions.get(p.segment)
            if not found:
                return None
            i = bisect_left(found, start) + p.skip
            if i >= len(found) or found[i] >= end:
                return None
            fields = self._segs[found[i]]
            if self.read is not None:
                self.read.add((found[i], p.field))
            if p.field >= len(fields):
                return None
            raw = fields[p.field]
            if not raw:
                return None
            if p.segment == "MSH" and p.field <= 2:
                return raw
            if p.repetition > 1:
                reps = raw.split(self._rs)
                if p.repetition > len(reps):
                    return None
                raw = reps[p.repetition - 1]
            else:
                cut = raw.find(self._rs)
                if cut >= 0:
                    raw = raw[:cut]
            if p.component and not p.sub:
                # One component of a field (PID-5.1, the mappings' most common absolute
                # read): _parts inlined, without its call and tuple
                parts = self._components.get(raw)
                if parts is None:
                    parts = self._components[raw] = raw.split(self._cs)
                if p.component > len(parts):
                    return None
                raw, level = parts[p.component - 1], 1
            else:
                raw, level = self._parts(raw, 0, p.component, p.sub)
        return _value(self, raw, level, path, here)

    def _parts(self, text: str | None, level: int, component: int, sub: int) -> tuple[str, int]:
        """Descend from a node's text to a component/subcomponent (no labels)."""
        if not component or not text:
            return text or "", level
        if level >= 2:
            return "", level
        if level == 0:
            parts = self._components.get(text)
            if parts is None:
                parts = self._components[text] = text.split(self._cs)
        else:
            parts = text.split(self._ss)
        if component > len(parts):
            return "", level
        text, level = parts[component - 1], level + 1
        if not sub or not text:
            return text, level
        if level >= 2:
            return "", level
        parts = text.split(self._ss)
        if sub > len(parts):
            return "", level
        return parts[sub - 1], level + 1

    def _relative_text(self, p: _Path, here: Position) -> str | None:
        self._relative(p, here)  # raises the ConfigError for a relative path outside a node
        return None

    def _first_slow(self, path: str, here: Position) -> str | None:
        found = self.values(path, here)
        return found[0][0] if found else None

    def value(self, path: str, here: Position) -> tuple[str | None, str]:
        """The first (value, terser path) at ``path``; (None, the path's label) if empty."""
        found = self.values(path, here)
        if found:
            return found[0]
        return None, self.label(path, here)

    def label(self, path: str, here: Position) -> str:
        """The terser path that ``path`` denotes from ``here`` (for error messages)."""
        p = _compile(path)
        if p.relative:
            suffix = f".{p.component}" + (f".{p.sub}" if p.sub else "")
            return (here.label or "") + suffix
        segs = self._segments(p, here)
        base = segs[0][1] if segs else p.segment
        if not segs and p.occurrence > 1:
            base += f"({p.occurrence})"
        out = base + (f"-{p.field}" if p.field else "")
        if p.repetition not in (0, 1, _ALL):
            out += f"({p.repetition})"
        if p.component:
            out += f".{p.component}"
        if p.sub:
            out += f".{p.sub}"
        return out

    # -- internals -------------------------------------------------------------------------
    def _in_range(self, name: str, start: int, end: int) -> list[int]:
        found = self._positions.get(name)
        if not found:
            return []
        i = bisect_left(found, start)
        j = bisect_left(found, end, i)
        return found[i:j]

    def _segment_label(self, name: str, idx: int) -> str:
        label = self._labels.get(idx)
        if label is None:  # bisect, not list.index: messages may hold thousands of segments
            found = self._positions[name]
            label = name if len(found) == 1 else f"{name}({bisect_left(found, idx) + 1})"
            self._labels[idx] = label
        return label

    def _segments(self, p: _Path, here: Position) -> list[tuple[int, str]]:
        start, end = (0, self._nseg) if p.root else (here.start, here.end)
        found = self._in_range(p.segment, start, end)
        if p.occurrence != _ALL:
            occ = p.occurrence or 1
            found = found[occ - 1 : occ]
        return [(i, self._segment_label(p.segment, i)) for i in found]

    def _field_nodes(
        self, p: _Path, seg_index: int, seg_label: str, every: bool = False
    ) -> list[Position]:
        fields = self._segs[seg_index]
        if self.read is not None:
            self.read.add((seg_index, p.field))
        if p.field >= len(fields) or not fields[p.field]:
            return []
        raw = fields[p.field]
        label = f"{seg_label}-{p.field}"
        if p.segment == "MSH" and p.field <= 2:
            return [_node((seg_index, seg_index + 1, label, raw, 2))]
        if p.repetition <= 1 and self._rs not in raw:  # one repetition (most fields)
            node = _node((seg_index, seg_index + 1, label, raw, 0))
            if p.component:
                sub = self._descend(node, p.component, p.sub)
                return [sub] if sub is not None else []
            return [node]
        reps = raw.split(self._rs)
        if p.repetition == _ALL or (p.repetition == 0 and every):
            chosen = list(enumerate(reps, 1))
        elif p.repetition == 0:
            chosen = [(1, reps[0])]
        elif p.repetition <= len(reps):
            chosen = [(p.repetition, reps[p.repetition - 1])]
        else:
            return []
        nodes = []
        for r, text in chosen:
            if not text:
                continue  # an empty repetition: no node (nor any component of it)
            rlabel = label if r == 1 else f"{label}({r})"
            node = _node((seg_index, seg_index + 1, rlabel, text, 0))
            if p.component:
                sub = self._descend(node, p.component, p.sub)
                if sub is not None:
                    nodes.append(sub)
            else:
                nodes.append(node)
        return nodes

    def _relative(self, p: _Path, here: Position) -> Position | None:
        if here.text is None:
            raise ConfigError(
                "bad-path", f"relative path .{p.component} used outside an 'each' or 'at' node"
            )
        return self._descend(here, p.component, p.sub)

    def _descend(self, node: Position, component: int, sub: int) -> Position | None:
        text, level = self._parts(node.text, node.level, component, sub)
        if not text:
            return None
        label = f"{node.label}.{component}" + (f".{sub}" if sub else "")
        return _node((node.start, node.end, label, text, level))

    def unescape(self, text: str) -> str:
        es = self._es
        if not es or es not in text:
            return text
        out: list[str] = []
        i = 0
        while True:
            j = text.find(es, i)
            k = text.find(es, j + 1) if j >= 0 else -1
            if j < 0 or k < 0:
                out.append(text[i:])  # an unterminated escape stays as written
                return "".join(out)
            out.append(text[i:j])
            out.append(self._escape(text[j + 1 : k], text[j : k + 1]))
            i = k + 1

    def _escape(self, seq: str, literal: str) -> str:
        known = self._escapes.get(seq)
        if known is not None:
            return known
        head = seq[:1]
        if head == "X":
            try:
                return bytes.fromhex(seq[1:]).decode(self.message.charset)
            except (ValueError, UnicodeDecodeError):
                return literal
        if head in ("H", "N", "C", "M", "Z") or seq[:3] in (".in", ".ti", ".ce", ".fi", ".nf"):
            return ""  # highlighting, charset switches and formatting: no text of their own
        if seq.startswith((".sp", ".sk")):
            return "\n" if seq.startswith(".sp") else " "
        return literal


# -- accessors: look-ups resolved when a mapping is compiled --------------------------------
#
# ``view.first(path, here)`` compiles ``path`` (a cached call) and branches on its kind at
# every call; the generated mappings (gateway/mapping/_codegen.py) read some seventy values
# per message. An accessor is that look-up for one path, its kind decided once: a function
# of (view, here) bound as a constant of the generated code. Each gives exactly what the
# view's method gives (tests/intake/test_intake_accessor.py); the rare shapes (a '*', a
# relative path from a component, MSH-1/2) call the method itself.

Accessor = Callable[["Hl7View", Position], Any]


def _accessor(method: str, path: str) -> Accessor:
    """``lambda view, here: getattr(view, method)(path, here)`` for ``method`` 'first' or
    'select', without working out ``path`` again at each call."""
    p = _compile(path)
    if method == "first":
        if p.relative:
            return _relative_first(path, p.component, p.sub)
        if not (p.star or p.field == 0 or (p.segment == "MSH" and p.field <= 2)):
            return _absolute_first(path, p)
        return partial(_call_first, path)
    if method == "select":
        if p.relative or p.occurrence == _ALL:
            return partial(_call_select, path)
        if p.field == 0:
            return partial(_call_groups, p)
        return _field_select(p)
    if (
        method == "texts"
        and not p.relative
        and p.field
        and not (p.segment == "MSH" and p.field <= 2)
    ):
        return partial(_texts, p)
    raise ValueError(f"no accessor for {method!r}")


def _texts(p: _Path, view: Hl7View, here: Position) -> list[str] | None:
    """The values of ``view.values(path, here)`` without their terser paths (a ``*``
    path joined with ``sep``: notes, report text), for an absolute path to a field;
    None when the view's values may hold control characters (removing them warns,
    naming the field) or it records what is read: then values() is the way."""
    if not view._plain or view.read is not None:
        return None
    start, end = (0, view._nseg) if p.root else (here.start, here.end)
    found = view._in_range(p.segment, start, end)
    if p.occurrence != _ALL:
        occ = p.occurrence or 1
        found = found[occ - 1 : occ]
    field, rs, cs, ss, es = p.field, view._rs, view._cs, view._ss, view._es
    out: list[str] = []
    for idx in found:
        fields = view._segs[idx]
        if field >= len(fields) or not fields[field]:
            continue
        reps = fields[field].split(rs)  # as _field_nodes chooses them (values: every=False)
        if p.repetition == 0:
            reps = reps[:1]
        elif p.repetition != _ALL:
            reps = reps[p.repetition - 1 : p.repetition]
        for text in reps:
            if not text:
                continue
            raw, level = view._parts(text, 0, p.component, p.sub) if p.component else (text, 0)
            if not raw:
                continue
            # the tail of values(): the first component and subcomponent, unescaped
            if level == 0 and cs in raw:
                raw = raw.split(cs, 1)[0]
            if level <= 1 and ss in raw:
                raw = raw.split(ss, 1)[0]
            if es in raw:
                raw = view.unescape(raw)
            value = raw.strip()
            if value and value != '""':
                out.append(value)
    return out


def _call_first(path: str, view: Hl7View, here: Position) -> str | None:
    return view.first(path, here)


def _call_select(path: str, view: Hl7View, here: Position) -> list[Position]:
    return view.select(path, here)


def _call_groups(p: _Path, view: Hl7View, here: Position) -> list[Position]:
    return view._groups(p, here)


def _value(view: Hl7View, raw: str, level: int, path: str, here: Position) -> str | None:
    """The tail of :meth:`Hl7View.first`: the node's text cut to its first component and
    subcomponent, unescaped, cleaned; None when empty."""
    if not raw:
        return None
    if level == 0 and view._cs in raw:
        raw = raw.split(view._cs, 1)[0]
    if level <= 1 and view._ss in raw:
        raw = raw.split(view._ss, 1)[0]
    if view._es in raw:
        raw = view.unescape(raw)
    value = raw.strip() if view._plain else view._clean(raw, None, path, here)
    return value if value and value != '""' else None


def _relative_first(path: str, component: int, sub: int) -> Accessor:
    """``.C`` or ``.C.S`` from a field repetition (the nodes 'each' and 'at' select); from
    any other node, the general walk."""
    index = component - 1

    def component_of(view: Hl7View, here: Position) -> str | None:
        text = here.text
        if not text or here.level:
            return view.first(path, here)  # no node (an error), an empty one, a component
        parts = view._components.get(text)
        if parts is None:
            parts = view._components[text] = text.split(view._cs)
        if component > len(parts):
            return None
        raw = parts[index]
        if not raw:
            return None
        # _value(view, raw, 1, path, here) inlined: the mappings' most common read
        if view._ss in raw:
            raw = raw.split(view._ss, 1)[0]
        if view._es in raw:
            raw = view.unescape(raw)
        value = raw.strip() if view._plain else view._clean(raw, None, path, here)
        return value if value and value != '""' else None

    def subcomponent_of(view: Hl7View, here: Position) -> str | None:
        text = here.text
        if not text or here.level:
            return view.first(path, here)
        parts = view._components.get(text)
        if parts is None:
            parts = view._components[text] = text.split(view._cs)
        if component > len(parts) or not parts[index]:
            return None
        subs = parts[index].split(view._ss)
        return _value(view, subs[sub - 1], 2, path, here) if sub <= len(subs) else None

    return subcomponent_of if sub else component_of


def _absolute_first(path: str, p: _Path) -> Accessor:
    """``SEG(n)-F(r)[.C[.S]]`` without '*': the field found by bisect, its repetition, then
    its component (split once per node text, as :meth:`Hl7View.first` does)."""
    segment, field, skip, root = p.segment, p.field, p.skip, p.root
    repetition, component, sub = p.repetition, p.component, p.sub

    def first(view: Hl7View, here: Position) -> str | None:
        found = view._positions.get(segment)
        if not found:
            return None
        i = (0 if root else bisect_left(found, here.start)) + skip
        if i >= len(found) or (not root and found[i] >= here.end):
            return None
        idx = found[i]
        fields = view._segs[idx]
        if view.read is not None:
            view.read.add((idx, field))
        if field >= len(fields) or not fields[field]:
            return None
        raw = fields[field]
        if repetition > 1:
            reps = raw.split(view._rs)
            if repetition > len(reps):
                return None
            raw = reps[repetition - 1]
        else:
            cut = raw.find(view._rs)
            if cut >= 0:
                raw = raw[:cut]
        if component and not sub:
            parts = view._components.get(raw)
            if parts is None:
                parts = view._components[raw] = raw.split(view._cs)
            if component > len(parts):
                return None
            raw = parts[component - 1]
            if not raw:
                return None
            # _value(view, raw, 1, path, here) inlined, as above
            if view._ss in raw:
                raw = raw.split(view._ss, 1)[0]
            if view._es in raw:
                raw = view.unescape(raw)
            value = raw.strip() if view._plain else view._clean(raw, None, path, here)
            return value if value and value != '""' else None
        if not component:
            # a field read whole (PID-8): _value(view, raw, 0, path, here) inlined
            if view._cs in raw:
                raw = raw.split(view._cs, 1)[0]
            if view._ss in raw:
                raw = raw.split(view._ss, 1)[0]
            if view._es in raw:
                raw = view.unescape(raw)
            value = raw.strip() if view._plain else view._clean(raw, None, path, here)
            return value if value and value != '""' else None
        raw, level = view._parts(raw, 0, component, sub)
        return _value(view, raw, level, path, here)

    return first


def _field_select(p: _Path) -> Accessor:
    """The nodes of one segment's field (``each: PID-3``, ``at: PV1-3``); a field of one
    repetition, selected whole (most), is its own node, without the general descent."""
    segment, field, skip, root = p.segment, p.field, p.skip, p.root
    whole = p.repetition <= 1 and not p.component and not (segment == "MSH" and field <= 2)
    every = p.repetition == 0  # all repetitions (PID-3), not the first alone (PID-3(1))
    suffix = f"-{field}"

    def select(view: Hl7View, here: Position) -> list[Position]:
        found = view._positions.get(segment)
        if not found:
            return []
        i = (0 if root else bisect_left(found, here.start)) + skip
        if i >= len(found) or (not root and found[i] >= here.end):
            return []
        idx = found[i]
        label = view._labels.get(idx) or view._segment_label(segment, idx)
        if whole:
            fields = view._segs[idx]
            if field < len(fields) and fields[field]:
                raw = fields[field]
                if view.read is not None:
                    view.read.add((idx, field))
                if view._rs not in raw:
                    return [_node((idx, idx + 1, label + suffix, raw, 0))]
                if every:  # each repetition, as _field_nodes gives them
                    base = label + suffix
                    return [
                        _node((idx, idx + 1, f"{base}({r})" if r > 1 else base, text, 0))
                        for r, text in enumerate(raw.split(view._rs), 1)
                        if text
                    ]
        return view._field_nodes(p, idx, label, every=True)

    return select


class PathCheck:
    """:func:`check_path`, which also names the view that reads the paths it accepts: the
    mapping compiler asks that view's ``accessor`` for each path (:meth:`Hl7View.accessor`)."""

    def __init__(self, view: type[Hl7View]) -> None:
        self.view = view

    def __call__(self, path: str) -> None:
        """Raise ConfigError when ``path`` is not valid (used when mappings are loaded)."""
        _compile(path)


check_path = PathCheck(Hl7View)
