"""A partner token file line binds a token to the institution key written there exactly,
never to a spelling the network's look-up folds to it (``ＮＳＣＨ``, the facility code
``NSCH``): the file is a security setting, read by whoever reviews who may send."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway import Settings
from gateway.inbound import InboundError, load_partner_tokens
from gateway.network import Network

from .conftest import NSCH_TOKEN


def _token_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "partner-tokens"
    path.write_text(text, encoding="utf-8")
    path.chmod(0o600)
    return path


@pytest.fixture(scope="module")
def network() -> Network:
    return Network.load(Settings.load(env={}).network)


def test_a_token_line_naming_the_key_exactly_binds_it(tmp_path: Path, network: Network) -> None:
    path = _token_file(tmp_path, f"# 南沙医院\nnsch {NSCH_TOKEN}\n")
    assert load_partner_tokens(path, network) == {NSCH_TOKEN: "nsch"}


@pytest.mark.parametrize("written", ["ｎｓｃｈ", "NSCH", "Nsch", "ＮＳＣＨ"])
def test_a_token_line_naming_a_spelling_of_a_key_is_refused(
    tmp_path: Path, network: Network, written: str
) -> None:
    # the look-up folds (full-width, case) and takes facility codes: each of these found
    # nsch, and the token let its bearer in as nsch
    path = _token_file(tmp_path, f"# partners\n{written} {NSCH_TOKEN}\n")
    with pytest.raises(InboundError) as refused:
        load_partner_tokens(path, network)
    assert refused.value.code == "inbound.config"
    assert refused.value.issue.message == (
        f"{path} line 2: {written!r} is not exactly an institution key: it folds to 'nsch', "
        "the key to write"
    )
    assert NSCH_TOKEN not in refused.value.issue.message


def test_a_token_line_naming_no_institution_is_refused(tmp_path: Path, network: Network) -> None:
    path = _token_file(tmp_path, f"sysu {NSCH_TOKEN}\n")
    with pytest.raises(InboundError) as refused:
        load_partner_tokens(path, network)
    assert "line 1: expected '<institution key> <token>'" in refused.value.issue.message
