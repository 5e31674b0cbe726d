"""Character sets: names used by senders → Python codecs, and strict decoding.

The table is data (``mappings/charsets/hl7v2.yaml``); this module only applies it.
"""

from __future__ import annotations

import codecs
import re
import unicodedata
from collections.abc import Callable
from functools import lru_cache
from typing import NamedTuple

from ..datafiles import data_dir, load_data_file
from ..errors import IntakeError

__all__ = [
    "MULTI_BYTE",
    "Decoded",
    "charset_name",
    "codec_for",
    "decode_strict",
    "likely_cjk_charset",
    "mislabelled_as",
    "misread_as",
    "reads_as",
    "utf8_suspect",
]


class Decoded(NamedTuple):
    """Decoded text (a tuple: made once a message, cheaper than a frozen dataclass)."""

    text: str
    codec: str
    note: str | None = None  # a warning about how the bytes were decoded
    code: str = "intake.charset-mislabelled"  # the note's error code


def _norm(name: str) -> str:
    return re.sub(r"[\s_\-]+", "", name).upper()


@lru_cache(maxsize=1)
def _table() -> tuple[dict[str, str], dict[str, str], frozenset[str]]:
    raw = load_data_file(data_dir("mappings") / "charsets" / "hl7v2.yaml")
    codecs = {_norm(k): v for k, v in raw["codecs"].items()}
    refused = {_norm(k): v for k, v in raw.get("refused", {}).items()}
    return codecs, refused, frozenset(raw.get("single_byte", []))


# Declared names already resolved (normalising is a regular expression, for every
# message): only names the table knows, and at most _KNOWN_SIZE spellings of them.
_known: dict[str, str] = {}
_KNOWN_SIZE = 64


def codec_for(name: str, *, location: str) -> str:
    """The Python codec for a declared character set name, or a clear error."""
    found = _known.get(name)
    if found is not None:
        return found
    codecs, refused, _ = _table()
    key = _norm(name)
    if key in refused:
        raise IntakeError(
            "charset-unsupported",
            f"character set {name!r} is not supported: {refused[key]}",
            location=location,
        )
    try:
        codec = codecs[key]
    except KeyError:
        known = ", ".join(_table_names())
        raise IntakeError(
            "charset-unknown",
            f"unknown character set {name!r} (known: {known})",
            location=location,
        ) from None
    if len(_known) < _KNOWN_SIZE:
        _known[name] = codec
    return codec


@lru_cache(maxsize=1)
def _table_names() -> tuple[str, ...]:
    raw = load_data_file(data_dir("mappings") / "charsets" / "hl7v2.yaml")
    return tuple(raw["codecs"])


# Multi-byte charsets whose bytes a single-byte declaration (or none) may be hiding, in
# the order tried when the sender's jurisdiction says nothing: UTF-8 first (its byte
# grammar is strict, so valid UTF-8 is rarely an accident), then the mainland's and
# Hong Kong's national charsets.
MULTI_BYTE = ("utf-8", "gb18030", "big5hkscs")


def _is_cjk(ch: str) -> bool:
    code = ord(ch)
    return (
        0x4E00 <= code <= 0x9FFF  # CJK Unified Ideographs
        or 0x3400 <= code <= 0x4DBF  # Extension A
        or 0x3000 <= code <= 0x303F  # CJK punctuation
        or 0xFF00 <= code <= 0xFFEF  # full-width forms
    )


def likely_cjk_charset(data: bytes, prefer: tuple[str, ...] = MULTI_BYTE) -> str | None:
    """The multi-byte codec that ``data`` most likely is, when its non-ASCII bytes decode
    strictly in it to Chinese text; None when no candidate does (the bytes are then
    plausibly what a single-byte charset says they are).

    "Chinese text" means every non-ASCII character decoded is a CJK ideograph, CJK
    punctuation or a full-width form: Latin-1 accents decoded as GB 18030 give rare
    ideographs mixed with other blocks far more often than clean Chinese. ``prefer``
    orders the candidates (a Hong Kong sender's Big5 before GB 18030).
    """
    if data.isascii():
        return None
    for codec in prefer:
        try:
            text = data.decode(codec)
        except UnicodeDecodeError:
            continue
        wide = [ch for ch in text if not ch.isascii()]
        if wide and all(_is_cjk(ch) for ch in wide):
            return codec
    return None


@lru_cache(maxsize=8)
def charset_name(codec: str) -> str:
    """The MSH-18 name a sender should declare for ``codec`` (``GB 18030-2000``)."""
    raw = load_data_file(data_dir("mappings") / "charsets" / "hl7v2.yaml")
    return next((str(k) for k, v in raw["codecs"].items() if v == codec), codec)


def decode_strict(
    data: bytes,
    codec: str,
    *,
    declared: str,
    location: str,
    mismatch: str = "refuse",
    prefer: tuple[str, ...] = MULTI_BYTE,
    place: Callable[[str], str | None] | None = None,
    claim: str | None = None,
) -> Decoded:
    """Decode ``data``; a byte the codec cannot decode is an error that names its offset.

    A single-byte charset decodes any byte, so GB 18030, Big5 or UTF-8 text mislabelled
    as 8859/1 would silently turn 王 into mojibake; GB 18030 decodes nearly any Big5
    text, and Big5 much GB 2312 text, as mojibake too (許 as 砛). When
    :func:`mislabelled_as` or :func:`misread_as` finds that the bytes are such text,
    ``mismatch`` (the sender's ``charset_mismatch``) decides: ``refuse`` raises
    ``charset-mislabelled``; ``decode`` decodes them as what they are, with a note.
    ``place(text)`` names where the text first leaves ASCII (``PID-5``), and ``claim``
    says where the charset came from (``declared 'BIG-5'`` by default), for the message.
    """
    # _table()[2]: the single-byte codecs, which decode any byte (so can never say the
    # bytes are wrong)
    if codec in _table()[2] and not data.isascii():
        likely = mislabelled_as(data, prefer, codec)
        if likely is not None:
            said = _said(claim, declared) + ", a single-byte charset,"
            return _mislabelled(data, likely, said, "", location, mismatch, place)
    try:
        text = data.decode(codec)
    except UnicodeDecodeError as exc:
        raise _not_valid(data, codec, declared, location, exc.start) from None
    # Only GB 18030 and Big5 have a rival (misread_as says None for any other codec).
    rival = misread_as(data, codec, text) if codec in _RIVAL else None
    if rival is not None:
        why = f" (read as {declared}, they are mostly rare or non-Chinese characters)"
        return _mislabelled(data, rival, _said(claim, declared), why, location, mismatch, place)
    return Decoded(text, codec)


def _not_valid(data: bytes, codec: str, declared: str, location: str, offset: int) -> IntakeError:
    """``charset-mismatch``: a byte ``codec`` cannot decode, named by its offset (not
    the bytes: they may be part of a patient's name). GB 18030 text declared Big5 often
    fails so (许 and 全 have no Big5 reading): when the bytes read cleanly as Chinese
    text in UTF-8 or the rival national charset, the message names it, as
    charset-mislabelled does,
    so the sender is told what to declare (still refused: which reading is right is the
    sender's to say, and the mismatch policy applies to bytes that decode). Bytes
    declared UTF-8 that are not are told the national charset they read in, or both."""
    rival = _RIVAL.get(codec)
    likely = None
    if rival is not None:
        # UTF-8 Chinese first: it has no Big5 reading either, and often a clean GB 18030
        # one (陈美玲 as 闄坁缇庣幉), so a sender told to declare GB 18030 would have its
        # names decoded as that mojibake. Read as UTF-8 it must be Chinese too: short
        # GB 18030 text may be valid UTF-8 by chance (袁^泉 is Ԭ^Ȫ).
        for candidate in ("utf-8", rival):
            if reads_as(data, candidate) is not None:
                likely = candidate
                break
    hint = ""
    if codec == "utf-8" and not _latin_words(data):
        likely, hint = _utf8_hint(data)
    if likely is not None:
        name = charset_name(likely)
        hint = f"; they read as {name} text: the sender should declare {name!r}"
    return IntakeError(
        "charset-mismatch",
        f"bytes are not valid {declared} ({codec}): cannot decode the byte at {offset}{hint}",
        location=location,
        offset=offset,
        **({"likely": charset_name(likely)} if likely is not None else {}),
    )


def _utf8_hint(data: bytes) -> tuple[str | None, str]:
    """What bytes declared UTF-8 that are not read as: (the one charset to declare, or
    None; the hint when there are several readings or none the gateway decodes).

    Short text often reads cleanly in both Chinese national charsets (許嘉瑋 in Big5 is
    GB 18030 text too), and telling a sender the wrong one garbles its names silently:
    one is named only when no other reads. Shift_JIS and EUC-KR lay their characters out
    in GB 18030's byte ranges, so Japanese and Korean names read as clean GB 18030
    ideographs too (山田太郎 as 嶳揷懢榊, 김민준 as the common 辫刮霖): GB 18030 (or Big5)
    is named alone only when the bytes read as neither Japanese nor Korean text; beside
    such a reading it is named only when its ideographs are mostly common ones."""
    found = {c: text for c in ("gb18030", "big5hkscs") if (text := reads_as(data, c)) is not None}
    others = [(language, name) for codec, name, language, plain in _LOOKALIKES
              if plain(data, codec)]  # fmt: skip
    if others:
        found = {c: t for c, t in found.items() if _common_share(t, c) >= _DOUBT}
    if len(found) == 1 and not others:
        return next(iter(found)), ""
    readings = [f"Chinese text in {' or '.join(charset_name(c) for c in found)}"] if found else []
    readings += [f"{language} text in {name}" for language, name in others]
    if not readings:
        return None, ""
    hint = f"; they read as {', or as '.join(readings)}"
    if others:
        hint += f" (the gateway decodes no {' or '.join(n for _, n in others)})"
    if len(found) + len(others) > 1:
        hint += ": the sender should declare which"
    return None, hint


def _japanese(data: bytes, codec: str) -> bool:
    """Whether the bytes read as Japanese text in ``codec``: kana and kanji only, no
    half-width katakana (what GB 2312 and Big5 text turns into: their lead bytes from
    0xA1 are single half-width kana in Shift_JIS)."""
    try:
        text = data.decode(codec)
    except UnicodeDecodeError:
        return False
    wide = [ch for ch in text if not ch.isascii()]
    return bool(wide) and all(
        0x3040 <= ord(ch) <= 0x30FF or (_is_cjk(ch) and not 0xFF61 <= ord(ch) <= 0xFF9F)
        for ch in wide
    )


# Hangul syllables: (initial, vowel, final) in blocks of 588 and 28 from U+AC00. Korean
# names and most words use plain initials and the finals ㄱ ㄴ ㄹ ㅁ ㅂ ㅇ (or none); GB
# 2312 text read as EUC-KR lands anywhere in KS X 1001's 2,350 syllables, 60 % of them
# plain, and often on hanja (陈美玲 as 냈쳄줬, 王伟 as 珙寬).
_TENSE = frozenset({1, 4, 8, 10, 13})  # ㄲ ㄸ ㅃ ㅆ ㅉ
_PLAIN_FINALS = frozenset({0, 1, 4, 8, 16, 17, 21})
_KOREAN = 0.75  # the share of plain syllables from which a reading is Korean text


def _korean(data: bytes, codec: str) -> bool:
    """Whether the bytes read as Korean text in ``codec``: hangul syllables only (beside
    ASCII and CJK punctuation), mostly plain ones."""
    try:
        text = data.decode(codec)
    except UnicodeDecodeError:
        return False
    wide = [ord(ch) - 0xAC00 for ch in text if not ch.isascii() and not 0x3000 <= ord(ch) <= 0x303F]
    if not wide or not all(0 <= c <= 11171 for c in wide):
        return False
    plain = sum(1 for c in wide if c // 588 not in _TENSE and c % 28 in _PLAIN_FINALS)
    return plain >= _KOREAN * len(wide)


# National charsets of other scripts whose bytes GB 18030 (and Big5) read as ideographs:
# (codec, name, language, whether the bytes read as that language's text)
_LOOKALIKES: tuple[tuple[str, str, str, Callable[[bytes, str], bool]], ...] = (
    ("shift_jis", "Shift_JIS", "Japanese", _japanese),
    ("euc_kr", "EUC-KR", "Korean", _korean),
)


def _latin_words(data: bytes) -> bool:
    """Whether the bytes read as words in 8859/1: two accents a letter apart read as two
    ideographs side by side (Hélène as H閘鑞e in GB 18030), which no Chinese charset is
    to be named for. 8859/1 reads the accented letters of 8859/2 and /15 as letters too;
    8859/2 itself would take 1 in 80 Big5 names for words (±F as ąF), 8859/1 1 in 2,000."""
    return _plausible(data, "latin-1")


def _said(claim: str | None, declared: str) -> str:
    """Where the charset came from, for a message about it (made only when one is)."""
    return claim or f"declared {declared!r}"


def _mislabelled(
    data: bytes,
    likely: str,
    said: str,
    why: str,
    location: str,
    mismatch: str,
    place: Callable[[str], str | None] | None,
) -> Decoded:
    """``said``: where the charset came from (``declared '8859/1', a single-byte
    charset,``); ``why``: what speaks against it, when that is not its kind."""
    text = data.decode(likely)  # mislabelled_as and misread_as checked that it decodes
    where = place(text) if place else None
    name = charset_name(likely)
    what = f"the bytes{f' of {where}' if where else ''} are {name} text{why}"
    if mismatch == "decode":
        return Decoded(text, likely, f"{said} but {what}; decoded as {name}")
    raise IntakeError(
        "charset-mislabelled",
        f"{said} but {what}: refused rather than forwarded as mojibake. The sender should "
        f"declare {name!r}; or set charset_mismatch: decode for this sender in the network",
        location=location,
        likely=name,
    )


def mislabelled_as(
    data: bytes, prefer: tuple[str, ...] = MULTI_BYTE, declared: str | None = None
) -> str | None:
    """The multi-byte codec that non-ASCII bytes declared single-byte really are, or None
    when they are plausibly what the single-byte charset says. ``declared``, the declared
    codec when one is, lets text that reads as words in it pass (:func:`_plausible`).

    Valid UTF-8 with any non-ASCII character is UTF-8: its byte grammar is strict, and
    Latin text only passes it with sequences such as 'Ã©' that no name holds. GB 18030
    and Big5 must pass :func:`likely_cjk_charset` *and* read as Chinese in context
    (:func:`_reads_as_chinese`): a Latin-1 accent and the ASCII letter after it often
    form one ideograph (GONÇALVES, São, Françoise), glued to the letters around it.
    """
    if data.isascii():
        return None
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        pass
    else:
        return "utf-8"
    if declared is not None and _plausible(data, declared):
        return None
    best: tuple[float, str] | None = None
    for codec in prefer:
        if codec != "utf-8" and likely_cjk_charset(data, (codec,)) == codec:
            text = data.decode(codec)
            if _reads_as_chinese(text):
                share = _common_share(text, codec)
                if best is None or share > best[0]:  # ties: the sender's preferred order
                    best = (share, codec)
    return best[1] if best else None


# The "frequently used" ideographs of each national charset, by lead and trail byte
# ranges: GB 2312 level 1 (B0A1-D7FE) and Big5 level 1 (A440-C67E). GB 2312 text read
# as Big5 mostly lands in Big5 level 2 and Big5 text read as GB 18030 outside GB 2312,
# so the share of common characters tells the two apart where both decode.
_COMMON = {
    "gb18030": lambda b: 0xB0 <= b[0] <= 0xD7 and b[1] >= 0xA1,
    "big5hkscs": lambda b: (0xA4 <= b[0] <= 0xC5) or (b[0] == 0xC6 and b[1] <= 0x7E),
}


def _common_share(text: str, codec: str) -> float:
    wide, common = _common_count(text, codec)
    return common / wide if wide else 0.0


def _common_count(text: str, codec: str) -> tuple[int, int]:
    """(non-ASCII characters of ``text``, how many of them are among ``codec``'s
    frequently used ideographs)."""
    wide = [ch.encode(codec) for ch in text if not ch.isascii()]
    common = _COMMON.get(codec)
    if common is None:
        return len(wide), 0
    return len(wide), sum(1 for b in wide if len(b) == 2 and common(b))


def _reads_as_chinese(text: str) -> bool:
    """Whether some ideograph stands as Chinese does: next to another one, or apart from
    ASCII letters and digits (a name component between delimiters, 王^伟). Latin-1
    accents read as GB 18030 or Big5 give lone ideographs inside Latin words."""
    last = len(text) - 1
    for i, ch in enumerate(text):
        if ch.isascii() or not _is_cjk(ch):
            continue
        before = text[i - 1] if i else " "
        after = text[i + 1] if i < last else " "
        if not after.isascii() or not before.isascii():
            return True
        if not (before.isalnum() or after.isalnum()):
            return True
    return False


_LATIN = frozenset(
    codecs.lookup(name).name
    for name in ("latin-1", "iso8859-2", "iso8859-3", "iso8859-4", "iso8859-9", "iso8859-15")
)
_WORD = re.compile(r"[^\W\d_]+")


def _plausible(data: bytes, codec: str) -> bool:
    """Whether the bytes read as ordinary words in a single-byte charset: its letters
    only and, in a Latin script, no word made of accented letters alone. A Latin-1
    accent and the letter after it can form an ideograph, and two of them side by side
    look like Chinese (Jérôme); ``Íõ``, the GB 18030 王, is no word."""
    try:
        text = data.decode(codec)
    except (UnicodeDecodeError, LookupError):
        return False
    if any(not ch.isalpha() for ch in text if not ch.isascii()):
        return False
    if codecs.lookup(codec).name not in _LATIN:
        return True
    return all(any(c.isascii() for c in word) for word in _WORD.findall(text))


# -- GB 18030 and Big5 mistaken for each other ---------------------------------------------

# Each national charset and the one its bytes are mistaken for: GB 18030 decodes nearly
# any Big5 byte pair, and much GB 2312 text decodes as Big5, so neither fails to decode.
_RIVAL = {"gb18030": "big5hkscs", "big5hkscs": "gb18030"}
# Below this share of common characters a reading is doubtful; at or above _SURE it is
# how real text reads (names with a rare character come to 0.5 in a two-character name).
_DOUBT = 0.6
_SURE = 0.75
# How many characters must speak against the declared reading (common in the other's
# reading and not in it, or odd in it): a short name, some of whose characters are rare,
# must never be enough (GB 18030 董祎 reads as two common Big5 ideographs). At three,
# about 1 in 400 strings of three random rare GB 18030 or Big5 ideographs was flagged; at
# four, none of them and at most 6 in 20,000 of four or six (none of 12,000 generated
# real-looking names at either setting).
_EVIDENCE = 4


class _Tally(NamedTuple):
    wide: int  # non-ASCII characters
    common: int  # of them, among the charset's frequently used ideographs
    odd: int  # of them, in scripts Chinese text does not hold (kana, Cyrillic, boxes)


def _odd(ch: str) -> bool:
    """A character that the other charset's Chinese text turns into, and real Chinese
    text does not hold: kana, bopomofo, Cyrillic, box drawing, and private-use code
    points (GB 18030's user-defined areas, where many Big5 characters land)."""
    code = ord(ch)
    return (
        0x3040 <= code <= 0x30FF  # kana
        or 0x3100 <= code <= 0x312F  # bopomofo
        or 0x0400 <= code <= 0x04FF  # Cyrillic
        or 0x2500 <= code <= 0x259F  # box drawing and blocks
        or 0xE000 <= code <= 0xF8FF  # private use
    )


# CJK text of any plane (HKSCS names hold Extension B ideographs, 𠵱): what
# :func:`_is_cjk` takes, the Extensions B-G, compatibility ideographs and radicals.
_IDEOGRAPHS = (
    "\u3000-\u303f\u3400-\u4dbf\u4e00-\u9fff\uff00-\uffef\uf900-\ufaff"
    "\u2e80-\u2fdf\U00020000-\U0003134f"
)
_IDEOGRAPH = re.compile(f"[{_IDEOGRAPHS}]")
# A non-ASCII character that is none of them (one search at C speed).
_NOT_IDEOGRAPH = re.compile(f"[^\x00-\x7f{_IDEOGRAPHS}]")


def _tally(text: str, codec: str) -> _Tally:
    wide, common = _common_count(text, codec)
    return _Tally(wide, common, sum(1 for ch in text if not ch.isascii() and _odd(ch)))


def misread_as(data: bytes, codec: str, text: str) -> str | None:
    """The rival national charset (Big5 for GB 18030, GB 18030 for Big5) when ``data``,
    declared ``codec`` and decoded in it as ``text``, is far more likely the rival's text;
    else None.

    Neither charset fails on the other's bytes often enough to tell them apart, so the
    readings are compared. The rival's must be clean Chinese (ideographs and punctuation
    only, read as Chinese in context) with mostly frequently used ideographs; the
    declared one must have few of them (or characters no Chinese text holds), and enough
    characters must say so: a two-character name with one rare character, or a message
    whose readings are both plausible, keeps its declared charset."""
    rival = _RIVAL.get(codec)
    if rival is None or data.isascii():
        return None
    try:
        other = data.decode(rival)
    except UnicodeDecodeError:
        return None
    if _NOT_IDEOGRAPH.search(other):  # Big5 read as GB 18030 mostly stops here (kana, PUA)
        return None
    theirs, ours = _tally(other, rival), _tally(text, codec)
    if theirs.wide == 0 or ours.wide == 0 or theirs.common < _SURE * theirs.wide:
        return None
    if ours.common >= _DOUBT * ours.wide and ours.odd == 0:
        return None
    if theirs.common - ours.common + ours.odd < _EVIDENCE:
        return None
    return rival if _reads_as_chinese(other) else None


# -- GB 18030 or Big5 bytes that happen to be valid UTF-8 ------------------------------------

# Scripts (the first word of a character's Unicode name) that GB 18030 bytes read as
# UTF-8 fall into: two-byte UTF-8 sequences cover U+0080..U+07FF.
_SCRIPTS = frozenset(
    [
        "LATIN",
        "GREEK",
        "CYRILLIC",
        "ARMENIAN",
        "HEBREW",
        "ARABIC",
        "SYRIAC",
        "THAANA",
        "NKO",
        "SAMARITAN",
        "MANDAIC",
        "COPTIC",
        "MODIFIER",
        "COMBINING",
    ]
)
_RUN = re.compile(r"[^\x00-\x7f]+")


def _mixed_scripts(text: str) -> bool:
    """Whether a run of non-ASCII characters mixes scripts, as no word does: GB 18030
    志强 read as UTF-8 is a Hebrew maqaf and a Latin ǿ side by side."""
    for run in _RUN.findall(text):
        scripts = {unicodedata.name(ch, "?").split(" ", 1)[0] for ch in run} & _SCRIPTS
        if len(scripts) > 1:
            return True
    return False


def utf8_suspect(text: str) -> bool:
    """Whether UTF-8 ``text`` may be GB 18030 or Big5 bytes that happen to be valid
    UTF-8 (short Chinese texts often are: 志强 in GB 18030): no ideograph, and a run of
    characters mixing scripts. Cheap, so a sender's default is looked up only then."""
    return not _IDEOGRAPH.search(text) and _mixed_scripts(text)


def reads_as(data: bytes, codec: str) -> str | None:
    """``data`` decoded in ``codec`` when that reading is clean Chinese text (see
    :func:`likely_cjk_charset`, :func:`_reads_as_chinese`), else None."""
    if likely_cjk_charset(data, (codec,)) != codec:
        return None
    text = data.decode(codec)
    return text if _reads_as_chinese(text) else None
