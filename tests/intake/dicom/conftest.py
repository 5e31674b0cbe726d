"""Fixtures shared by the DICOM intake tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway import Converter, Settings

REPO = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def decoding(tmp_path_factory: pytest.TempPathFactory) -> Converter:
    """A converter whose network lets Lai'an's mislabelled text be decoded."""
    home = tmp_path_factory.mktemp("decode-home")
    seeds = (REPO / "seeds" / "network.yaml").read_text(encoding="utf-8")
    marker = "    facility: LAX2\n"
    assert marker in seeds
    network = home / "network.yaml"
    network.write_text(seeds.replace(marker, marker + "    charset_mismatch: decode\n"),
                       encoding="utf-8")  # fmt: skip
    return Converter(Settings.load(home=home, env={"GATEWAY_NETWORK": str(network)}))
