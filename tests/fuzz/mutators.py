"""Structure-aware mutators, one per fuzzed format, driven by a seeded ``random.Random``.

Each ``mutate(rng, seed, pool)`` returns a new :class:`Case` from ``seed`` (``pool``: all
seeds of the format, for splicing). One to four mutations are stacked; most know the
format (HL7 v2 segments and fields, DICOM elements, zip headers, JSON values, XML
elements) and some are plain byte mutations. Same seed, same sequence of inputs.
"""

from __future__ import annotations

import copy
import json
import random
import struct
import warnings
import zlib
from collections.abc import Callable
from typing import Any

from lxml import etree  # type: ignore[import-untyped]

from .harness import Case, study_zip

Rng = random.Random

# -- bytes -------------------------------------------------------------------------------

_INTERESTING = [0, 1, 0x7F, 0x80, 0xFF, 0x00, 0x0D, 0x0A, 0x1C, 0x0B, 0x5C, 0x7C, 0x5E, 0x7E]
_INT32 = [0, 1, 2, 7, 0x7F, 0x80, 0xFF, 0xFFFF, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFE, 0xFFFFFFFF]


def _bytes(rng: Rng, data: bytes, pool: list[bytes]) -> bytes:
    """One generic byte mutation."""
    b = bytearray(data)
    op = rng.randrange(9)
    if not b:
        return bytes(rng.randbytes(rng.randrange(1, 16)))
    pos = rng.randrange(len(b))
    if op == 0:
        b[pos] ^= 1 << rng.randrange(8)
    elif op == 1:
        b[pos] = rng.choice(_INTERESTING)
    elif op == 2:
        b[pos:pos] = rng.randbytes(rng.randrange(1, 32))
    elif op == 3:
        del b[pos : pos + rng.randrange(1, 64)]
    elif op == 4:
        end = min(len(b), pos + rng.randrange(1, 128))
        b[pos:pos] = b[pos:end] * rng.randrange(1, 8)
    elif op == 5:
        return bytes(b[:pos])  # truncate
    elif op == 6 and pool:
        other = rng.choice(pool)
        cut = rng.randrange(len(other) + 1)
        return bytes(b[:pos]) + other[cut:]  # splice with another seed
    elif op == 7 and len(b) >= 4:
        pos = min(pos, len(b) - 4)
        b[pos : pos + 4] = struct.pack("<I", rng.choice(_INT32))
    else:
        b[pos] = rng.randrange(256)
    return bytes(b)


def _repeat(rng: Rng, long: bool) -> int:
    """How many times to repeat something: mostly few, sometimes many."""
    r = rng.random()
    if r < 0.6:
        return rng.randrange(2, 10)
    if r < 0.9 or not long:
        return rng.randrange(10, 2000)
    return rng.randrange(2000, 60_000)


# -- HL7 v2 ------------------------------------------------------------------------------

_ESCAPES = [
    b"\\X00\\",
    b"\\X\\",
    b"\\XZZ\\",
    b"\\X0\\",
    b"\\",
    b"\\\\",
    b"\\H\\",
    b"\\N\\",
    b"\\.br\\",
    b"\\.sp5\\",
    b"\\.in-3\\",
    b"\\Z99\\",
    b"\\C2842\\",
    b"\\C2D41\\",
    b"\\M2442\\",
    b"\\E\\",
    b"\\F\\\\S\\",
    b"\\X0D0A\\",
    b"\\XE4B8AD\\",
    b"\\XC0AF\\",
    b"\\XFFFE\\",
    b"\\R\\\\T\\",
    b"\\X0000000000000000\\",
    b"\\Cxyz\\",
    b"\\M\\",
    b"\\S",
    b"S\\",
]
_CHARSETS = [
    b"UNICODE UTF-8",
    b"GB 18030-2000",
    b"BIG-5",
    b"8859/1",
    b"ISO IR58",
    b"ISO IR87",
    b"ASCII",
    b"UNICODE",
    b"",
    b"XYZ",
    b"8859/1~GB 18030-2000",
    b"UNICODE UTF-16",
    b"ISO IR6",
    b"8859/15",
    b"KS X 1001",
    b"GB18030",
    b"UTF-8",
]
_TYPES = [
    b"ADT^A01",
    b"ORU^R01",
    b"ORU^R01^ORU_R01",
    b"REF^I12",
    b"REF^I14",
    b"ORM^O01",
    b"OMG^O19",
    b"OMI^O23",
    b"",
    b"^^^",
    b"ORU",
    b"ORU^R01^ORU_R01^x",
    b"REF^I12^REF_I12",
    b"ACK",
]
_VALUES = [
    b"",
    b'""',
    b"20261399",
    b"2026",
    b"99999999999999",
    b"2026-06-17",
    b"00000000",
    b"20260617101500.1234+0800",
    b"2026061710150000000-2400",
    b"20260229",
    b"-1",
    b"1e309",
    b"NaN",
    b"9" * 40,
    b"\x00",
    b"\x1b$B",
    b"\xff\xfe",
    b"\xe4\xb8\xad\xe6\x96\x87",
    "王伟".encode("gb18030"),
    "陳大文".encode("big5"),
    "李四".encode(),
    b"M",
    b"F",
    b"U",
    b"^^^^",
    b"~~~~",
    b"&&&&",
    b"a" * 5000,
    b"\r",
    b"\n",
    b"MSH|^~\\&|",
    b"\x0b",
    b"\x1c\r",
    b"\xef\xbb\xbf",
    b"\xed\xa0\x80",
    b"\xf4\x90\x80\x80",
    b"\xc0\xaf",
]


def _segments(data: bytes) -> tuple[list[bytes], bytes]:
    sep = b"\r\n" if b"\r\n" in data else (b"\r" if b"\r" in data else b"\n")
    return data.split(sep), sep


def _hl7_one(rng: Rng, data: bytes, pool: list[bytes]) -> bytes:
    segs, sep = _segments(data)
    if not segs:
        return data
    i = rng.randrange(len(segs))
    op = rng.randrange(16)
    if op == 0 and len(segs) > 1:  # swap segments
        j = rng.randrange(len(segs))
        segs[i], segs[j] = segs[j], segs[i]
    elif op == 1:  # duplicate a segment, maybe many times
        segs[i:i] = [segs[i]] * _repeat(rng, long=False)
    elif op == 2 and len(segs) > 1:
        del segs[i]
    elif op == 3:  # truncate a segment
        segs[i] = segs[i][: rng.randrange(len(segs[i]) + 1)]
    elif op == 4 and pool:  # a segment of another message (another patient...)
        other, _ = _segments(rng.choice(pool))
        segs.insert(i, rng.choice(other))
    elif op in (5, 6, 7, 8, 9, 10):  # field level
        segs[i] = _hl7_field(rng, segs[i], op)
    elif op == 11:  # MSH-2 encoding characters
        for k, s in enumerate(segs):
            if s.startswith(b"MSH") and len(s) > 4:
                end = s.find(b"|", 4)
                end = len(s) if end < 0 else end
                enc = rng.choice(
                    [
                        b"^^^^",
                        b"",
                        b"^~\\&#",
                        b"^~\\",
                        b"^",
                        b"\x00\x01\x02\x03",
                        b"|||",
                        b"^~&\\",
                        b"~^\\&",
                        b"^~\\&" * 3,
                    ]
                )
                segs[k] = s[:4] + enc + s[end:]
                break
    elif op == 12:  # MSH-18 charset / MSH-9 type / MSH-1 field separator
        for k, s in enumerate(segs):
            if s.startswith(b"MSH"):
                fields = s.split(b"|")
                which = rng.choice([17, 8, 11, 2, 9])
                while len(fields) <= which:
                    fields.append(b"")
                fields[which] = rng.choice(
                    _CHARSETS if which == 17 else _TYPES if which == 8 else _VALUES
                )
                segs[k] = b"|".join(fields)
                if rng.random() < 0.2:
                    segs[k] = b"MSH" + rng.choice(b"#!^\\\x00\xa1").to_bytes(1, "big") + segs[k][4:]
                break
    elif op == 13:  # framing: MLLP, batch, BOM, line ends
        body = sep.join(segs)
        frame = rng.randrange(6)
        if frame == 0:
            return b"\x0b" + body + b"\x1c\r" + (b"\x0b" + body if rng.random() < 0.5 else b"")
        if frame == 1:
            return b"FHS|^~\\&\rBHS|^~\\&\r" + body + b"\rBTS|1\rFTS|1"
        if frame == 2:
            return b"\xef\xbb\xbf" + body
        if frame == 3:
            return body.replace(sep, rng.choice([b"\r", b"\n", b"\r\n", b"\n\r", b"\x1c"]))
        if frame == 4:
            return body * _repeat(rng, long=False)
        return b"BHS|^~\\&\r" + body
    elif op == 14:  # re-encode the text
        try:
            decoded = sep.join(segs).decode("utf-8")
            codec = rng.choice(["gb18030", "big5", "utf-16", "latin-1", "utf-8-sig", "cp1252"])
            return decoded.encode(codec, "replace")
        except UnicodeDecodeError:
            return sep.join(segs).decode("gb18030", "replace").encode("utf-8")
    else:
        return _bytes(rng, sep.join(segs), pool)
    return sep.join(segs)


def _hl7_field(rng: Rng, seg: bytes, op: int) -> bytes:
    fields = seg.split(b"|")
    if len(fields) < 2:
        return seg + b"|" + rng.choice(_VALUES)
    j = rng.randrange(1, len(fields))
    if op == 5 and len(fields) > 2:
        k = rng.randrange(1, len(fields))
        fields[j], fields[k] = fields[k], fields[j]
    elif op == 6:
        fields[j : j + 1] = [fields[j]] * rng.randrange(2, 5) if rng.random() < 0.5 else []
    elif op == 7:  # insert delimiters or escapes inside a field
        f = fields[j]
        pos = rng.randrange(len(f) + 1)
        ins = (
            rng.choice(_ESCAPES)
            if rng.random() < 0.6
            else rng.choice([b"^", b"~", b"\\", b"&", b"|", b"#"]) * rng.randrange(1, 6)
        )
        fields[j] = f[:pos] + ins + f[pos:]
    elif op == 8:  # huge repetitions / components
        f = fields[j] or b"X"
        delim = rng.choice([b"~", b"^", b"&"])
        fields[j] = delim.join([f] * _repeat(rng, long=True))
    elif op == 9:
        fields[j] = rng.choice(_VALUES)
    else:  # a component of the field set to an odd value
        comps = fields[j].split(b"^")
        c = rng.randrange(len(comps))
        comps[c] = rng.choice(_VALUES + _ESCAPES)
        fields[j] = b"^".join(comps)
    return b"|".join(fields)


def hl7v2(rng: Rng, seed: Case, pool: list[Case]) -> Case:
    datas = [next(iter(c.parts.values())) for c in pool]
    name, data = next(iter(seed.parts.items()))
    for _ in range(rng.randrange(1, 5)):
        data = _hl7_one(rng, data, datas) if rng.random() < 0.85 else _bytes(rng, data, datas)
    return Case(seed.fmt, {name: data})


# -- DICOM Part 10 -----------------------------------------------------------------------

_LONG_VRS = {
    b"OB",
    b"OD",
    b"OF",
    b"OL",
    b"OV",
    b"OW",
    b"SQ",
    b"SV",
    b"UC",
    b"UN",
    b"UR",
    b"UT",
    b"UV",
}
_VRS = [
    b"AE",
    b"AS",
    b"AT",
    b"CS",
    b"DA",
    b"DS",
    b"DT",
    b"FL",
    b"FD",
    b"IS",
    b"LO",
    b"LT",
    b"OB",
    b"OD",
    b"OF",
    b"OL",
    b"OV",
    b"OW",
    b"PN",
    b"SH",
    b"SL",
    b"SQ",
    b"SS",
    b"ST",
    b"SV",
    b"TM",
    b"UC",
    b"UI",
    b"UL",
    b"UN",
    b"UR",
    b"US",
    b"UT",
    b"UV",
    b"ZZ",
    b"XX",
    b"ox",
    b"I\x00",
    b"\x00\x00",
    b"  ",
    b"??",
]
_DICOM_CHARSETS = [
    b"ISO_IR 100",
    b"GB18030",
    b"ISO_IR 192",
    b"GBK",
    b"ISO 2022 IR 58",
    b"\\ISO 2022 IR 58",
    b"ISO 2022 IR 87\\ISO 2022 IR 149",
    b"ISO_IR 6",
    b"BIG5",
    b"garbage",
    b"",
    b"ISO_IR 13",
    b"ISO 2022 IR 6\\ISO 2022 IR 87",
    b"\\\\\\",
    b"ISO_IR 192\\GB18030",
    b"ISO_IR 166",
]
_TRANSFER = [
    b"1.2.840.10008.1.2\x00",
    b"1.2.840.10008.1.2.1\x00",
    b"1.2.840.10008.1.2.2\x00",
    b"1.2.840.10008.1.2.1.99",
    b"1.2.840.10008.1.2.4.50",
    b"1.2.3.4\x00",
    b"",
    b"1.2.840.10008.1.2.5\x00",
]
_DICOM_VALUES = [
    b"",
    b"\x00",
    b"\\" * 50,
    "王^伟=王^偉".encode("gb18030"),
    "王^伟".encode(),
    b"\xff" * 16,
    b"1\\2\\3\\4\\5\\6\\7\\8\\9" * 40,
    b"-2147483649",
    b"1e400",
    b"NaN ",
    b"20261399",
    b"ABC",
    b"\x1b$)A\x0e\xcd\xf5",
    b"\x1b$B\x43\x26",
    b"^^^^^^=^^^^=^^^^",
    b"A" * 70000,
]


# Elements the reader and the mappings read: damage there reaches the most code.
_READ_TAGS = {
    0x00080005,
    0x00080016,
    0x00080018,
    0x00080020,
    0x00080030,
    0x00080050,
    0x00080060,
    0x00080090,
    0x00081030,
    0x0008103E,
    0x00100010,
    0x00100020,
    0x00100030,
    0x00100040,
    0x0020000D,
    0x0020000E,
    0x00200011,
    0x00200013,
    0x00180015,
    0x00080080,
    0x00200010,
}


class _Elem:
    __slots__ = ("end", "len_at", "len_size", "start", "tag", "value_at", "vr")

    def __init__(
        self, start: int, tag: int, vr: bytes, len_at: int, len_size: int, value_at: int, end: int
    ) -> None:
        self.start, self.tag, self.vr = start, tag, vr
        self.len_at, self.len_size, self.value_at, self.end = len_at, len_size, value_at, end


def elements(data: bytes) -> list[_Elem]:
    """Top-level elements of an Explicit VR Little Endian Part 10 file (stops at damage)."""
    out: list[_Elem] = []
    pos = 132 if data[128:132] == b"DICM" else 0
    while pos + 8 <= len(data):
        group, elem = struct.unpack_from("<HH", data, pos)
        vr = data[pos + 4 : pos + 6]
        if vr in _LONG_VRS:
            if pos + 12 > len(data):
                break
            (length,) = struct.unpack_from("<I", data, pos + 8)
            len_at, len_size, value_at = pos + 8, 4, pos + 12
        elif vr.isalpha() and vr.isupper():
            (length,) = struct.unpack_from("<H", data, pos + 6)
            len_at, len_size, value_at = pos + 6, 2, pos + 8
        else:
            break
        if length == 0xFFFFFFFF:
            end = data.find(b"\xfe\xff\xdd\xe0\x00\x00\x00\x00", value_at)
            if end < 0:
                break
            end += 8
        else:
            end = value_at + length
        if end > len(data):
            break
        out.append(_Elem(pos, (group << 16) | elem, vr, len_at, len_size, value_at, end))
        pos = end
    return out


def _header(tag: int, vr: bytes, value: bytes) -> bytes:
    head = struct.pack("<HH", tag >> 16, tag & 0xFFFF) + vr
    if vr in _LONG_VRS:
        return head + b"\0\0" + struct.pack("<I", len(value)) + value
    return head + struct.pack("<H", len(value) & 0xFFFF) + value


def _set_value(data: bytes, e: _Elem, value: bytes) -> bytes:
    if len(value) % 2:
        value += b" "
    if e.len_size == 2 and len(value) > 0xFFFF:
        value = value[:0xFFFE]
    return data[: e.start] + _header(e.tag, e.vr, value) + data[e.end :]


def _dicom_one(rng: Rng, data: bytes, pool: list[bytes]) -> bytes:
    elems = elements(data)
    if not elems or rng.random() < 0.15:
        return _bytes(rng, data, pool)
    read = [x for x in elems if x.tag in _READ_TAGS]
    e = rng.choice(read) if read and rng.random() < 0.5 else rng.choice(elems)
    b = bytearray(data)
    op = rng.randrange(12)
    if op == 0:  # flip the VR (unknown VRs included), sometimes emptying the value too
        b[e.start + 4 : e.start + 6] = rng.choice(_VRS)
        if rng.random() < 0.3:
            b[e.start + 6 : e.start + 8] = b"\0\0"
    elif op == 1:  # the length field
        size = e.len_size
        value = rng.choice(_INT32) if size == 4 else rng.choice([0, 1, 2, 0x7FFF, 0xFFFF, 3])
        if rng.random() < 0.4:
            value = max(0, (e.end - e.value_at) + rng.choice([-2, -1, 1, 2, 100]))
        b[e.len_at : e.len_at + size] = (
            value.to_bytes(size, "little", signed=False)
            if value < (1 << (8 * size))
            else b"\xff" * size
        )
    elif op == 2:  # truncate at or inside an element
        cut = rng.choice([e.start, e.value_at, e.end - 1, rng.randrange(e.start, e.end + 1)])
        return bytes(b[: max(cut, 0)])
    elif op == 3:  # Specific Character Set
        at = next((x for x in elems if x.tag == 0x00080005), None)
        cs = rng.choice(_DICOM_CHARSETS)
        if at is not None:
            return _set_value(data, at, cs)
        first = next((x for x in elems if x.tag >> 16 >= 8), None)
        if first is not None:
            return (
                data[: first.start]
                + _header(0x00080005, b"CS", cs + (b" " if len(cs) % 2 else b""))
                + data[first.start :]
            )
    elif op == 4:  # value of the element
        return _set_value(data, e, rng.choice(_DICOM_VALUES))
    elif op == 5:  # duplicate or delete an element, or move it out of order
        chunk = bytes(b[e.start : e.end])
        del b[e.start : e.end]
        if rng.random() < 0.6:
            near = rng.choice(elems)
            where = near.start if near.start < e.start else max(near.start - len(chunk), 0)
            times = rng.randrange(1, 3) if rng.random() < 0.9 else _repeat(rng, long=False)
            b[where:where] = chunk * (times + (1 if rng.random() < 0.5 else 0))
    elif op == 6:  # transfer syntax
        ts = next((x for x in elems if x.tag == 0x00020010), None)
        if ts is not None:
            return _set_value(data, ts, rng.choice(_TRANSFER))
    elif op == 7:  # a sequence with damaged items, or a private bulk element
        tag = rng.choice([0x00081110, 0x00081115, 0x00400275, 0x00091010, 0x00080005, 0x00100010])
        if rng.random() < 0.5:
            item = b"\xfe\xff\x00\xe0" + struct.pack("<I", rng.choice([0, 8, 0xFFFFFFFF, 1000]))
            payload = item + rng.randbytes(rng.randrange(0, 24))
            blob = (
                struct.pack("<HH", tag >> 16, tag & 0xFFFF)
                + b"SQ\0\0"
                + struct.pack("<I", rng.choice([len(payload), 0xFFFFFFFF, len(payload) + 8]))
                + payload
            )
        else:
            blob = _header(
                tag | 0x1,
                rng.choice([b"OB", b"UN", b"LO", b"UT"]),
                rng.randbytes(rng.randrange(0, 2048)),
            )
        b[e.start : e.start] = blob
    elif op == 8 and pool:  # an element from another file (another patient's name...)
        donor = rng.choice(pool)
        found = elements(donor)
        if found:
            pick = rng.choice(found)
            b[e.start : e.end] = donor[pick.start : pick.end]
    elif op == 9:  # remove the preamble or the DICM marker
        return data[132:] if rng.random() < 0.5 else data[:128] + b"DICN" + data[132:]
    elif op == 10:  # group length wrong
        gl = next((x for x in elems if x.tag == 0x00020000), None)
        if gl is not None and gl.end - gl.value_at == 4:
            b[gl.value_at : gl.end] = struct.pack("<I", rng.choice(_INT32))
    else:
        return _bytes(rng, data, pool)
    return bytes(b)


def dicom_file(rng: Rng, data: bytes, pool: list[bytes]) -> bytes:
    for _ in range(rng.randrange(1, 4)):
        data = _dicom_one(rng, data, pool)
    return data


def dicom(rng: Rng, seed: Case, pool: list[Case]) -> Case:
    files = dict(seed.parts)
    datas = [d for c in pool for d in c.parts.values()]
    names = list(files)
    op = rng.random()
    if op < 0.75 or len(names) == 1:  # one or more files damaged
        for name in rng.sample(names, rng.randrange(1, min(3, len(names)) + 1)):
            files[name] = dicom_file(rng, files[name], datas)
    elif op < 0.85:  # a file dropped or duplicated, or a file of another study mixed in
        name = rng.choice(names)
        if rng.random() < 0.5:
            del files[name]
        else:
            files[name + ".copy"] = files[name] if rng.random() < 0.5 else rng.choice(datas)
    elif op < 0.92:  # only one file
        name = rng.choice(names)
        files = {name: dicom_file(rng, files[name], datas)}
    else:  # odd file names
        name = rng.choice(names)
        files[rng.choice(["", "/", "../x.dcm", "a" * 300, "\u738b.dcm", "x\x00y"])] = files.pop(
            name
        )
    return Case(seed.fmt, files)


# -- zip ---------------------------------------------------------------------------------

_LOCAL, _CENTRAL, _END = b"PK\x03\x04", b"PK\x01\x02", b"PK\x05\x06"
# (offset in the header, size) of fields worth damaging: version, flags, method, crc,
# sizes, name length, extra length.
_LOCAL_FIELDS = [(4, 2), (6, 2), (8, 2), (14, 4), (18, 4), (22, 4), (26, 2), (28, 2)]
_CENTRAL_FIELDS = [
    (4, 2),
    (6, 2),
    (8, 2),
    (10, 2),
    (16, 4),
    (20, 4),
    (24, 4),
    (28, 2),
    (30, 2),
    (32, 2),
    (42, 4),
]
_END_FIELDS = [(8, 2), (10, 2), (12, 4), (16, 4), (20, 2)]
_ZIP_VALUES_2 = [0, 1, 8, 9, 12, 14, 20, 45, 63, 88, 99, 0x0800, 0x0001, 0x0008, 0x0041, 0xFFFF]
_NAMES = [
    "",
    "/",
    "S1/",
    "../../etc/x.dcm",
    "/abs.dcm",
    "a" * 400,
    "\u738b\u4f1f.dcm",
    "x\x00y.dcm",
    "dup.dcm",
    "dup.dcm",
    "C:\\x.dcm",
    "nested.zip",
    "j.json",
    ".",
    "..",
    "\\",
]


def _zip_structured(rng: Rng, files: list[tuple[str, bytes]], datas: list[bytes]) -> bytes:
    """A zip built from study files with odd member names, contents and methods."""
    members: list[tuple[str, bytes]] = []
    for name, data in files:
        r = rng.random()
        if r < 0.15:
            name = rng.choice(_NAMES)
        if r > 0.8:
            data = dicom_file(rng, data, datas)
        members.append((name, data))
    if rng.random() < 0.2:  # a nested zip, JSON or text member
        kind = rng.randrange(3)
        extra = (
            study_zip(files[:2])
            if kind == 0
            else (b'[{"00080016":{"vr":"UI","Value":["1.2"]}}]' if kind == 1 else b"MSH|^~\\&|\r")
        )
        members.append((rng.choice(["inner.zip", "x.json", "readme.txt", ""]), extra))
    import io
    import zipfile

    buf = io.BytesIO()
    method = rng.choice(
        [zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA]
    )
    with warnings.catch_warnings(), zipfile.ZipFile(buf, "w", method) as archive:
        warnings.simplefilter("ignore")  # duplicate member names are wanted here
        for name, data in members:
            info = zipfile.ZipInfo(name or "x")
            if not name:
                info.filename = ""  # the empty name zipfile itself would not write
            info.compress_type = method
            archive.writestr(info, data)
    return buf.getvalue()


def _zip_headers(rng: Rng, data: bytes) -> bytes:
    b = bytearray(data)
    sig = rng.choice([_LOCAL, _CENTRAL, _CENTRAL, _END])
    spots = []
    at = b.find(sig)
    while at >= 0:
        spots.append(at)
        at = b.find(sig, at + 1)
    if not spots:
        return data
    at = rng.choice(spots)
    fields = _LOCAL_FIELDS if sig == _LOCAL else _CENTRAL_FIELDS if sig == _CENTRAL else _END_FIELDS
    off, size = rng.choice(fields)
    if at + off + size > len(b):
        return data
    if size == 2:
        value = rng.choice(_ZIP_VALUES_2)
    else:
        value = rng.choice(_INT32)
        if rng.random() < 0.3:
            value = struct.unpack_from("<I", b, at + off)[0] + rng.choice([-1, 1, 100, -100])
            value &= 0xFFFFFFFF
    b[at + off : at + off + size] = value.to_bytes(size, "little")
    if sig == _CENTRAL and rng.random() < 0.2 and at + 30 <= len(b):  # the member name itself
        nlen = struct.unpack_from("<H", b, at + 28)[0]
        start = at + 46
        if start + nlen <= len(b) and nlen and at + 30 <= len(b):
            b[start : start + nlen] = bytes(rng.choice(b"\x00/.\\\xff") for _ in range(nlen))
    return bytes(b)


def _zip_crc(rng: Rng, data: bytes) -> bytes:
    """Damage one member's content (its CRC no longer matches), or its CRC."""
    b = bytearray(data)
    at = (
        b.find(_LOCAL, rng.randrange(max(len(b) // 2, 1))) if rng.random() < 0.5 else b.find(_LOCAL)
    )
    if at < 0 or at + 30 > len(b):
        return data
    nlen, xlen = struct.unpack_from("<HH", b, at + 26)
    start = at + 30 + nlen + xlen
    csize = struct.unpack_from("<I", b, at + 18)[0]
    if csize and start + csize <= len(b):
        pos = start + rng.randrange(csize)
        b[pos] ^= 0xFF
    else:
        b[at + 14 : at + 18] = struct.pack("<I", zlib.crc32(rng.randbytes(4)))
    return bytes(b)


def zip_archive(rng: Rng, seed: Case, pool: list[Case], studies: list[Case]) -> Case:
    name, data = next(iter(seed.parts.items()))
    if rng.random() < 0.35 and studies:
        files = list(rng.choice(studies).parts.items())
        datas = [d for c in studies for d in c.parts.values()]
        data = _zip_structured(rng, files, datas)
    for _ in range(rng.randrange(1, 4)):
        r = rng.random()
        if r < 0.45:
            data = _zip_headers(rng, data)
        elif r < 0.7:
            data = _zip_crc(rng, data)
        else:
            data = _bytes(rng, data, [])
    return Case(seed.fmt, {name: data})


# -- JSON --------------------------------------------------------------------------------

_ODD = [
    None,
    True,
    False,
    0,
    -1,
    1.5,
    10**30,
    1e308,
    "",
    "x",
    "王伟",
    [],
    {},
    "\x00",
    "a" * 70000,
    "\ud800",
    "2026-13-45",
    "NaN",
    [None],
    {"": None},
]


MAX_NODES = 200_000  # values in a mutated JSON document, beyond which it grows no more


def _nodes(node: Any, out: list[tuple[Any, Any]]) -> None:
    """(container, key) of every value under node, down to 60 levels (deep nests are fuzzed)."""
    stack = [(node, 0)]
    while stack:
        cur, depth = stack.pop()
        if depth > 60:
            continue
        keys = (
            list(cur) if isinstance(cur, dict) else range(len(cur)) if isinstance(cur, list) else []
        )
        for k in keys:
            out.append((cur, k))
            stack.append((cur[k], depth + 1))


def json_one(
    rng: Rng, doc: Any, extra: Callable[[Rng, Any, list[tuple[Any, Any]]], bool] | None = None
) -> Any:
    try:
        return _json_one(rng, doc, extra)
    except RecursionError:  # copying a deep nest made by an earlier mutation
        return doc


def _json_one(
    rng: Rng, doc: Any, extra: Callable[[Rng, Any, list[tuple[Any, Any]]], bool] | None
) -> Any:
    spots: list[tuple[Any, Any]] = []
    _nodes(doc, spots)
    if not spots:
        return rng.choice(_ODD)
    if extra is not None and rng.random() < 0.4 and extra(rng, doc, spots):
        return doc
    parent, key = rng.choice(spots)
    value = parent[key]
    op = rng.randrange(8)
    if op == 0:  # drop
        del parent[key]
    elif op == 1:  # change the type
        parent[key] = (
            rng.choice(_ODD)
            if rng.random() < 0.6
            else (
                str(value)
                if not isinstance(value, str)
                else [value]
                if rng.random() < 0.5
                else {"value": value}
            )
        )
    elif op == 2 and isinstance(parent, list):  # duplicate an item
        times = rng.randrange(1, 4) if rng.random() < 0.9 else _repeat(rng, long=False)
        # Copies are shared objects: stacked duplications would grow the document
        # exponentially, so they stop at about MAX_NODES values.
        room = max(MAX_NODES - len(spots), 0) // (_count(value) + 1)
        parent[key + 1 : key + 1] = [copy.deepcopy(value)] * min(times, room)
    elif op == 3:  # a value from elsewhere in the document
        p2, k2 = rng.choice(spots)
        try:
            parent[key] = copy.deepcopy(p2[k2])
        except RecursionError:
            parent[key] = None
    elif op == 4 and isinstance(parent, dict):  # rename or add a key
        new = rng.choice(
            ["", "resourceType", "extension", "id", "x" * 50, "王", "_" + str(key), "00000000"]
        )
        parent[new] = parent.pop(key) if rng.random() < 0.5 else rng.choice(_ODD)
    elif op == 5 and isinstance(value, str):  # edit the string
        pos = rng.randrange(len(value) + 1)
        parent[key] = (
            value[:pos]
            + rng.choice(["\x00", "\\", "^", "=", "王", "\u202e", "\n", "&lt;<b>", "\ufffd"])
            * rng.randrange(1, 4)
            + value[pos:]
        )
    elif op == 6:  # deep nesting
        wrapped: Any = value
        for _ in range(rng.choice([2, 10, 100, 900])):
            wrapped = [wrapped]
        parent[key] = wrapped
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        parent[key] = rng.choice(
            [0, -value, value * 10 ** rng.randrange(1, 30), 2**64, -(2**63), 0.1]
        )
    else:
        parent[key] = rng.choice(_ODD)
    return doc


def _count(node: Any, cap: int = MAX_NODES) -> int:
    """How many values are under node (stops counting at cap)."""
    seen, stack = 0, [node]
    while stack and seen < cap:
        cur = stack.pop()
        seen += 1
        if isinstance(cur, dict):
            stack.extend(cur.values())
        elif isinstance(cur, list):
            stack.extend(cur)
    return seen


def dump(rng: Rng, doc: Any) -> bytes:
    ascii_only = rng.random() < 0.3
    try:
        text = json.dumps(doc, ensure_ascii=ascii_only)  # the C encoder: fast on big documents
        if len(text) < 1 << 18 and rng.random() < 0.5:  # indented: the pure-Python encoder
            text = json.dumps(doc, ensure_ascii=ascii_only, indent=rng.choice([1, 2]))
    except (ValueError, RecursionError):
        return b"[]"
    data = text.encode("utf-8", "surrogatepass")
    if rng.random() < 0.05:
        data = b"\xef\xbb\xbf" + data
    return data


def _dicom_json_extra(rng: Rng, doc: Any, spots: list[tuple[Any, Any]]) -> bool:
    """DICOM JSON specific: VRs, Values, PN objects, InlineBinary, BulkDataURI, tags."""
    elems = [
        (p, k) for p, k in spots if isinstance(p, dict) and isinstance(p[k], dict) and "vr" in p[k]
    ]
    if not elems:
        return False
    parent, key = rng.choice(elems)
    elem = parent[key]
    op = rng.randrange(8)
    if op == 0:
        elem["vr"] = rng.choice([v.decode("latin-1") for v in _VRS] + ["", 5, None, "pn"])
    elif op == 1:
        elem["Value"] = rng.choice(
            [
                [],
                [None],
                ["a", 1, {}],
                "str",
                [{"Alphabetic": 5}],
                [{"Ideographic": "王^伟", "Phonetic": None}],
                [1e400 if False else 1e308],
                [{"00100010": {"vr": "PN"}}],
            ]
        )
    elif op == 2:
        elem.pop("Value", None)
        elem["InlineBinary"] = rng.choice(["!!!notbase64", "AAAA", "", "QUJD" * 1000, 5])
    elif op == 3:
        elem.pop("Value", None)
        elem["BulkDataURI"] = rng.choice(["http://example.org/x", "file:///etc/passwd", "", 3])
    elif op == 4:
        new = rng.choice(
            ["0008001", "zzzzzzzz", "00100010", "7FE00010", "FFFEE000", "0020000d", "", "00080005"]
        )
        parent[new] = parent.pop(key)
    elif op == 5:
        parent[key] = rng.choice(
            [None, [], "x", {"vr": "SQ", "Value": [{"00080100": {"vr": "SH", "Value": [5]}}]}]
        )
    elif op == 6:  # Specific Character Set
        parent["00080005"] = {
            "vr": "CS",
            "Value": [rng.choice(_DICOM_CHARSETS).decode("latin-1")] * rng.randrange(1, 3),
        }
    else:
        elem["Value"] = [
            elem.get("Value", ["x"])[0]
            if isinstance(elem.get("Value"), list) and elem.get("Value")
            else "x"
        ] * _repeat(rng, long=True)
    return True


def dicom_json(rng: Rng, seed: Case, pool: list[Case]) -> Case:
    name, data = next(iter(seed.parts.items()))
    if rng.random() < 0.1:
        return Case(seed.fmt, {name: _bytes(rng, data, [])})
    try:
        doc = json.loads(data)
    except ValueError:  # a byte-mutated input kept as a base
        return Case(seed.fmt, {name: _bytes(rng, data, [])})
    for _ in range(rng.randrange(1, 5)):
        doc = json_one(rng, doc, _dicom_json_extra)
    return Case(seed.fmt, {name: dump(rng, doc)})


# -- report variants ---------------------------------------------------------------------

_RESOURCE_TYPES = [
    "Patient",
    "Foo",
    "",
    "Bundle",
    "DiagnosticReport",
    "Observation",
    "Binary",
    "OperationOutcome",
    "patient",
    "ImagingStudy",
    "Practitioner",
]


def _report_extra(rng: Rng, doc: Any, spots: list[tuple[Any, Any]]) -> bool:
    """FHIR specific: resource types, subjects, references, languages, extensions."""
    resources = [p[k] for p, k in spots if isinstance(p[k], dict) and "resourceType" in p[k]]
    if isinstance(doc, dict) and "resourceType" in doc:
        resources.append(doc)
    if not resources:
        return False
    res = rng.choice(resources)
    op = rng.randrange(7)
    if op == 0:
        res["resourceType"] = rng.choice(_RESOURCE_TYPES)
    elif op == 1:  # subject: another patient, a logical reference, a contained one
        res["subject"] = rng.choice(
            [
                {"reference": "Patient/other"},
                {
                    "identifier": {
                        "system": "https://fhir.hkpmc.example.hk/sid/mrn",
                        "value": "0099999",
                    }
                },
                {"reference": "#p1"},
                {"display": "x"},
                {},
                {"reference": "urn:uuid:00000000-0000-4000-8000-000000000000"},
            ]
        )
    elif op == 2:
        res["language"] = rng.choice(["en", "zh", "zh-Hans", "zh-Hant-HK", "xx", "", 5, "zh-CN"])
    elif op == 3:
        res["contained"] = [
            rng.choice([{"resourceType": "Patient", "id": "p1"}, {"resourceType": "Nope"}, {}])
        ]
    elif op == 4:
        res["extension"] = [
            rng.choice(
                [
                    {
                        "url": "https://fhir-gateway.example.org/StructureDefinition/translation-of",
                        "valueIdentifier": {"value": "x"},
                    },
                    {"url": "http://hl7.org/fhir/StructureDefinition/translation"},
                    {"url": ""},
                    {},
                    {"url": "x", "valueString": "a" * 70000},
                ]
            )
        ]
    elif op == 5 and isinstance(doc, dict) and isinstance(doc.get("entry"), list) and doc["entry"]:
        entries = doc["entry"]
        i, j = rng.randrange(len(entries)), rng.randrange(len(entries))
        entries[i], entries[j] = entries[j], entries[i]
        if rng.random() < 0.5:
            del entries[rng.randrange(len(entries))]
    else:
        res["conclusion"] = rng.choice(
            ["", "王" * rng.randrange(1, 70000), "\U0002a6a5", "<script>", "\x00"]
        )
    return True


_LANGS = ["bilingual", "zh-Hans", "zh-Hant-HK", "en", "BILINGUAL", "xx", "", None, "zh-hant-hk"]


def variants(rng: Rng, seed: Case, pool: list[Case]) -> Case:
    parts = dict(seed.parts)
    meta = dict(seed.meta)
    targets = [k for k in parts if rng.random() < 0.7] or [rng.choice(list(parts))]
    for key in targets:
        if rng.random() < 0.08:
            parts[key] = _bytes(rng, parts[key], [])
            continue
        try:
            doc = json.loads(parts[key])
        except ValueError:  # a byte-mutated input kept as a base
            parts[key] = _bytes(rng, parts[key], [])
            continue
        for _ in range(rng.randrange(1, 4)):
            doc = json_one(rng, doc, _report_extra)
        parts[key] = dump(rng, doc)
    r = rng.random()
    if r < 0.2:
        meta["lang"] = rng.choice(_LANGS)
    elif r < 0.25:
        meta["format"] = rng.choice(["json", "html", "pdf", "xml"])
    elif r < 0.28:
        meta["partner"] = rng.choice(["HKPMC", "NSCH", "nobody"])
    return Case(seed.fmt, parts, meta)


# -- CDA ---------------------------------------------------------------------------------

_XML_TEXT = [
    "",
    "王伟",
    "\x00",
    "&amp;&lt;",
    "a" * 70000,
    "20261399",
    "-1",
    "\ufffd",
    "]]>",
    "\u202e",
]
_ATTRS = [
    "code",
    "codeSystem",
    "value",
    "root",
    "extension",
    "displayName",
    "use",
    "nullFlavor",
    "xsi:type",
]


def _cda_tree(rng: Rng, data: bytes) -> bytes | None:
    parser = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False)
    try:
        root = etree.fromstring(data, parser)
    except etree.XMLSyntaxError:
        return None
    nodes = [n for n in root.iter() if isinstance(n.tag, str)]
    n = rng.choice(nodes)
    op = rng.randrange(7)
    parent = n.getparent()
    if op == 0 and parent is not None:
        parent.remove(n)
    elif op == 1 and parent is not None:
        for _ in range(rng.randrange(1, 4) if rng.random() < 0.9 else _repeat(rng, long=False)):
            parent.insert(parent.index(n), copy.deepcopy(n))
    elif op == 2:
        attr = rng.choice(list(n.attrib) or _ATTRS[:1])
        if attr.startswith("xsi:"):
            attr = "{http://www.w3.org/2001/XMLSchema-instance}type"
        try:
            n.set(
                attr,
                rng.choice([*_XML_TEXT[:4], "CD", "ST", "PQ", "2.16.840.1.113883.6.1", "x" * 300]),
            )
        except ValueError:
            return None
    elif op == 3:
        try:
            n.text = rng.choice(_XML_TEXT)
        except ValueError:
            n.text = "x"
    elif op == 4 and parent is not None:  # move an element elsewhere
        other = rng.choice(nodes)
        if n not in other.iterancestors() and other is not n:
            other.append(n)
    elif op == 5:  # change the namespace or the name
        n.tag = rng.choice(
            [
                "{urn:hl7-org:v3}" + rng.choice(["section", "entry", "observation", "x"]),
                "{urn:other}" + etree.QName(n).localname,
                etree.QName(n).localname,
            ]
        )
    else:
        n.set("nullFlavor", rng.choice(["UNK", "NI", "", "XX"]))
    encoding = rng.choice(["UTF-8", "UTF-8", "GB18030", "UTF-16", "Big5", "ISO-8859-1"])
    try:
        return bytes(etree.tostring(root, xml_declaration=rng.random() < 0.8, encoding=encoding))
    except (LookupError, ValueError):
        return bytes(etree.tostring(root))


def _cda_text(rng: Rng, data: bytes) -> bytes:
    op = rng.randrange(5)
    if op == 0:
        doctype = rng.choice(
            [
                b'<!DOCTYPE x [<!ENTITY a "b">]>',
                b"<!DOCTYPE ClinicalDocument>",
                b'<!DOCTYPE x SYSTEM "http://x/">',
            ]
        )
        at = data.find(b"?>")
        return data[: at + 2] + doctype + data[at + 2 :] if at >= 0 else doctype + data
    if op == 1:
        return data.replace(
            b'encoding="UTF-8"',
            rng.choice(
                [
                    b'encoding="GB18030"',
                    b'encoding="nope"',
                    b'encoding="UTF-16"',
                    b'encoding="Big5"',
                ]
            ),
            1,
        )
    if op == 2:
        return data.replace(
            b"urn:hl7-org:v3", rng.choice([b"urn:hl7-org:v2", b"", b"urn:hl7-org:v3 "]), 1
        )
    if op == 3:
        return data[: rng.randrange(len(data) + 1)]
    return (
        b"\xef\xbb\xbf" + data
        if rng.random() < 0.5
        else data.decode("utf-8", "replace").encode("utf-16")
    )


def cda(rng: Rng, seed: Case, pool: list[Case]) -> Case:
    name, data = next(iter(seed.parts.items()))
    datas = [next(iter(c.parts.values())) for c in pool]
    for _ in range(rng.randrange(1, 4)):
        r = rng.random()
        out = _cda_tree(rng, data) if r < 0.7 else None
        if out is None:
            out = _cda_text(rng, data) if r < 0.85 else _bytes(rng, data, datas)
        data = out
    return Case(seed.fmt, {name: data})


def mutator(fmt: str, studies: list[Case]) -> Callable[[Rng, Case, list[Case]], Case]:
    if fmt == "zip":
        return lambda rng, seed, pool: zip_archive(rng, seed, pool, studies)
    return {
        "hl7v2": hl7v2,
        "dicom": dicom,
        "dicomjson": dicom_json,
        "cda": cda,
        "variants": variants,
    }[fmt]
