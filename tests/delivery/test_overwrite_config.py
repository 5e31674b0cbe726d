"""The partner setting ``check_overwrite`` (docs/partners.md): on unless a partners file
says ``false``; anything but a boolean refused, naming the file, partner and key; the
network's seeds check every partner."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.errors import ConfigError
from gateway.partners import load_partners

BASE = "https://fhir.hkpmc.example.hk/fhir/R4"


def _partners(tmp_path: Path, extra: str = "", name: str = "partners.yaml") -> Path:
    path = tmp_path / name  # data files are cached by path: one name per content
    path.write_text(f"partners:\n  hkpmc:\n    base: {BASE}\n{extra}", encoding="utf-8")
    return path


def test_the_check_is_on_unless_turned_off(tmp_path: Path) -> None:
    assert load_partners(_partners(tmp_path))["hkpmc"].check_overwrite is True
    off = _partners(tmp_path, "    check_overwrite: false\n", "off.yaml")
    assert load_partners(off)["hkpmc"].check_overwrite is False


def test_the_home_file_turns_it_off_over_the_seeds(tmp_path: Path) -> None:
    seeds = _partners(tmp_path)
    home = tmp_path / "home.yaml"
    home.write_text("partners:\n  hkpmc:\n    check_overwrite: false\n", encoding="utf-8")
    assert load_partners(seeds, override=home)["hkpmc"].check_overwrite is False


@pytest.mark.parametrize("value", ["'no'", "0", "off-ish"])
def test_anything_but_a_boolean_is_refused(tmp_path: Path, value: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_partners(_partners(tmp_path, f"    check_overwrite: {value}\n"))
    message = caught.value.issue.message
    assert caught.value.code == "config.partners"
    assert "partners.hkpmc.check_overwrite: expected true or false" in message, message
    assert str(tmp_path / "partners.yaml") in message


def test_every_seeded_partner_checks() -> None:
    assert all(p.check_overwrite for p in load_partners().values())
