"""The inbound partner token file is a secret (anyone who reads it can send as any
partner): ``gateway serve`` refused one group or others may read at start-up, but
the file is read again at each change, and an app not started by ``serve`` never
checked it, so one made readable later was used. Now reading it refuses such a file
in the words ``serve`` uses (inbound.config: 500, the gateway's fault, not the
partner's), and ``gateway inbound token`` makes ``secrets/`` owner-only (0700), as
the API's start does."""

from __future__ import annotations

import argparse
import dataclasses
import stat
from pathlib import Path

import pytest
import yaml

from gateway import Settings
from gateway.config import exposed_secrets
from gateway.datafiles import data_dir
from gateway.inbound import InboundError, load_partner_tokens
from gateway.inbound._cli import cmd_token
from gateway.network import Network
from tests.api.test_app import Client

from .conftest import NSCH_TOKEN, counts, partner


def _token_file(settings: Settings) -> Path:
    return settings.inbound_token_file or settings.secrets_dir / "partner-tokens"


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o602], ids=oct)
def test_a_token_file_others_may_read_is_refused_in_serves_words(
    hk_settings: Settings, mode: int
) -> None:
    path = _token_file(hk_settings)
    path.chmod(mode)
    with pytest.raises(InboundError) as refused:
        load_partner_tokens(path, Network.load(hk_settings.network))
    assert refused.value.code == "inbound.config"
    [(setting, why)] = exposed_secrets(hk_settings)  # what `gateway serve` says
    assert refused.value.issue.message == f"{setting}: {why}"
    assert NSCH_TOKEN not in refused.value.issue.message


def test_a_token_file_made_readable_after_it_was_read_is_refused(
    client: Client, hk_settings: Settings
) -> None:
    assert client.get("/fhir/Patient", headers=partner(NSCH_TOKEN)).status_code == 200
    _token_file(hk_settings).chmod(0o644)  # its contents unchanged: only the mode
    before = counts(hk_settings)
    resp = client.get("/fhir/Patient", headers=partner(NSCH_TOKEN))
    assert resp.status_code == 500, resp.text
    [issue] = resp.json()["issue"]
    assert issue["details"]["coding"][0]["code"] == "inbound.config"
    assert counts(hk_settings) == before
    _token_file(hk_settings).chmod(0o600)
    assert client.get("/fhir/Patient", headers=partner(NSCH_TOKEN)).status_code == 200


def test_inbound_token_makes_an_owner_only_secrets_folder(tmp_path: Path) -> None:
    settings = Settings.load(home=tmp_path / "home", env={})
    assert cmd_token(argparse.Namespace(partner="nsch"), settings) == 0
    path = _token_file(settings)
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert set(load_partner_tokens(path, Network.load(settings.network)).values()) == {"nsch"}


def _renamed(tmp_path: Path, key: str) -> Settings:
    """A home whose network names 南沙医院 ``key`` instead of nsch."""
    network = yaml.safe_load((data_dir("seeds") / "network.yaml").read_text(encoding="utf-8"))
    [nsch] = [i for i in network["institutions"] if i["key"] == "nsch"]
    nsch["key"] = key
    home = tmp_path / "home"
    home.mkdir()
    path = home / "network.yaml"
    path.write_text(yaml.safe_dump(network, allow_unicode=True), encoding="utf-8")
    return dataclasses.replace(Settings.load(home=home, env={}), network=path)


@pytest.mark.parametrize("typed", ["nsch", "NSCH", "ＮＳＣＨ", "Nsch"])
def test_inbound_token_writes_the_exact_key_whatever_spelling_is_typed(
    tmp_path: Path, typed: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """The look-up folds what is typed (the facility code, full-width, any case); the
    line written names the key exactly as the network file does: the token check
    accepts nothing else (_exact_key)."""
    settings = Settings.load(home=tmp_path / "home", env={})
    assert cmd_token(argparse.Namespace(partner=typed), settings) == 0
    token = capsys.readouterr().out.strip()
    assert _token_file(settings).read_text(encoding="utf-8") == f"nsch {token}\n"
    assert load_partner_tokens(_token_file(settings), Network.load(settings.network)) == {
        token: "nsch"
    }


@pytest.mark.parametrize("key", ["ns ch", "#nsch", "nsch\u3000"])
def test_inbound_token_refuses_a_key_the_token_file_cannot_hold(
    tmp_path: Path, key: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """An institution key with white space in it, or a leading '#', is no key a
    '<institution key> <token>' line reads back: written, the first made the whole file
    refused (every partner answered 500 inbound.config), the second a comment (the
    printed token never worked). Refused before anything is written."""
    settings = _renamed(tmp_path, key)
    with pytest.raises(InboundError) as refused:
        cmd_token(argparse.Namespace(partner=key), settings)
    assert refused.value.code == "inbound.config"
    assert refused.value.issue.message.startswith(
        f"institution key {key!r} cannot be written to the partner token file"
    )
    assert not _token_file(settings).exists()
    assert capsys.readouterr().out == ""  # no token printed


def test_inbound_token_starts_its_line_after_a_last_line_without_newline(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A token file edited by hand often ends without a newline: the line appended
    joined the last one (``hkpmc <token>nsch <token>``), which the file's rule cannot
    read, so the whole file was refused (every partner answered 500 inbound.config)
    and the printed token never worked."""
    settings = Settings.load(home=tmp_path / "home", env={})
    path = _token_file(settings)
    path.parent.mkdir(mode=0o700, parents=True)
    path.write_text("# 香港伙伴医院\nhkpmc " + "h" * 32, encoding="utf-8")  # no newline
    path.chmod(0o600)
    assert cmd_token(argparse.Namespace(partner="nsch"), settings) == 0
    token = capsys.readouterr().out.strip()
    assert load_partner_tokens(path, Network.load(settings.network)) == {
        "h" * 32: "hkpmc",
        token: "nsch",
    }
