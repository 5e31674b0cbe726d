"""Property-style round trip: random Chinese names survive GB18030 / Big5 → ER7 → parse.

Fixed seed, no extra dependency. Every name is forced to contain characters whose
trail byte is an HL7 delimiter in the target charset, placed right before a delimiter.
"""

from __future__ import annotations

import random

import pytest

from gateway.intake.hl7v2 import Hl7View, parse_message, split_messages

DELIMITER_TRAIL_BYTES = b"|^~\\&"
SEED = 20260611
ROUNDS = 150


def pools(codec: str) -> tuple[list[str], list[str]]:
    """(all round-trippable CJK characters, those whose last byte is a delimiter)."""
    chars = []
    for cp in range(0x4E00, 0x9FA6):
        ch = chr(cp)
        try:
            raw = ch.encode(codec)
        except UnicodeEncodeError:
            continue
        if len(raw) > 1 and raw.decode(codec) == ch:
            chars.append(ch)
    if codec == "gb18030":
        chars += ["𠀀", "𪚥", "㐀"]  # 4-byte GB18030 sequences (CJK Ext B / Ext A)
    tricky = [c for c in chars if c.encode(codec)[-1] in DELIMITER_TRAIL_BYTES]
    return chars, tricky


def random_name(rng: random.Random, chars: list[str], tricky: list[str], size: int) -> str:
    body = [rng.choice(chars) for _ in range(size - 1)]
    return "".join(body) + rng.choice(tricky)  # a trail-byte character last, before a delimiter


@pytest.mark.parametrize(
    ("declared", "codec"), [("GB 18030-2000", "gb18030"), ("BIG-5", "big5hkscs")]
)
def test_random_chinese_names_round_trip(declared: str, codec: str) -> None:
    chars, tricky = pools(codec)
    assert len(tricky) > 100  # 許, 功, 院, 瑋, 東 ... there are many
    rng = random.Random(SEED)
    for n in range(ROUNDS):
        family = random_name(rng, chars, tricky, rng.randint(1, 2))
        given = random_name(rng, chars, tricky, rng.randint(1, 3))
        other = random_name(rng, chars, tricky, rng.randint(1, 3))
        street = random_name(rng, chars, tricky, rng.randint(2, 8))
        note = random_name(rng, chars, tricky, rng.randint(5, 30))
        segments = [
            "MSH|^~\\&|HIS|HKPMC|RIS|NSCH|20260710103000+0800||REF^I12^REF_I12|"
            f"R{n}|P|2.5|||||HKG|{declared}",
            f"PID|1||K{n:06d}^^^HKID^NNHKG||{family}^{given}~{other}^{family}|{other}&{given}"
            f"|||||{street}^^九龍~{street}",
            f"NTE|1|P|{note}",
        ]
        data = "".join(s + "\r" for s in segments).encode(codec)
        [raw] = split_messages(data)
        message = parse_message(raw)
        assert message.charset == codec
        view = Hl7View(message)
        got = [
            view.value(path, view.root)[0]
            for path in (
                "PID-5.1",
                "PID-5.2",
                "PID-5(2).1",
                "PID-5(2).2",
                "PID-6.1.1",
                "PID-6.1.2",
                "PID-11.1",
                "PID-11(2).1",
                "NTE-3",
            )
        ]
        expected = [family, given, other, family, other, given, street, street, note]
        assert got == expected, (n, data)
        assert len(message.segments[1]) == 12
