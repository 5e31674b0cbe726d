"""Bytes declared UTF-8 that are not: the hint names GB 18030 only when they read as
Chinese and as no Japanese or Korean text. Shift_JIS and EUC-KR lay their characters
out in GB 18030's byte ranges, so a Japanese or Korean name reads as clean GB 18030
ideographs (山田太郎 as 嶳揷懢榊, 김민준 as the common 辫刮霖): a sender told to declare
GB 18030 would have its patients' names decoded as Chinese mojibake."""

from __future__ import annotations

import pytest

from tests.intake.test_intake_gb_big5 import fails, message


def _refused(name: str, address: str, source: str) -> str:
    data = message(name, address, "UNICODE UTF-8", facility="NSGP").encode(source)
    with pytest.raises(UnicodeDecodeError) as bad:
        data.decode("utf-8")
    err = fails(data, None)
    assert (err.code, err.location) == ("intake.charset-mismatch", "MSH-18")
    assert err.issue.details["offset"] == bad.value.start
    assert "likely" not in err.issue.details  # no charset to declare is certain
    assert "should declare 'GB 18030-2000'" not in str(err)
    for ch in name + address:  # the bytes are named by offset, never shown
        assert ch == "^" or ch == " " or ch.isascii() or ch not in str(err)
    return str(err)


@pytest.mark.parametrize(
    ("name", "address"),
    [("山田^太郎", "東京都新宿区"), ("佐藤^はなこ", ""), ("鈴木^一郎", "")],
)
def test_shift_jis_text_declared_utf8_is_told_japanese_not_gb18030(name: str, address: str) -> None:
    # Read as GB 18030 these are rare ideographs (GBK's extension rows): not Chinese text
    told = _refused(name, address, "shift_jis")
    assert "they read as Japanese text in Shift_JIS" in told
    assert "the gateway decodes no Shift_JIS" in told
    assert "GB 18030" not in told and "BIG-5" not in told


@pytest.mark.parametrize(
    ("name", "address"),
    [("김^민준", "서울특별시 강남구"), ("박^지훈", ""), ("이^서연", "")],
)
def test_euc_kr_text_declared_utf8_names_korean_beside_chinese(name: str, address: str) -> None:
    # Hangul rows of KS X 1001 are GB 2312's common ideographs, byte for byte: the bytes
    # read as both, and the sender is asked which
    told = _refused(name, address, "euc_kr")
    assert "or as Korean text in EUC-KR (the gateway decodes no EUC-KR)" in told
    assert told.endswith("the sender should declare which [intake.charset-mismatch]")
