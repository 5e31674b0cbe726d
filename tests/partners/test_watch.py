"""The partners of a running gateway follow their files (PartnersWatch): a partner set
with ``gateway partners set`` (base URL, auth) or added, a partners file appearing
beside the network file; all or nothing — an edit that does not load keeps the partners
read before and is logged once, on one line naming the file — and a mended file is
read."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from gateway.config import Settings
from gateway.datafiles import data_dir
from gateway.partners import PartnersWatch, partner_files, set_partner
from tests.loglines import errors_of

NEW = "https://fhir-new.hkpmc.example.hk/fhir/R4"


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    """A home whose network file is a copy in a folder of its own (no partners file
    beside it yet: the seeds' partners are the network's)."""
    net = tmp_path / "net"
    net.mkdir()
    network = net / "network.yaml"
    network.write_bytes((data_dir("seeds") / "network.yaml").read_bytes())
    home = tmp_path / "home"
    return dataclasses.replace(Settings.load(home=home, env={}), network=network)


@pytest.fixture
def watch(settings: Settings) -> PartnersWatch:
    made = PartnersWatch(settings)
    made.watch.reload_interval = 0  # look at every call (the default: every 2 s, as routing)
    return made


def test_the_watched_files_are_the_network_its_partners_and_the_homes(
    settings: Settings,
) -> None:
    assert partner_files(settings) == (
        settings.network,
        settings.network.parent / "partners.yaml",
        data_dir("seeds") / "partners.yaml",
        settings.home / "partners.yaml",
    )


def test_a_partner_set_or_added_is_read_without_a_restart(
    settings: Settings, watch: PartnersWatch
) -> None:
    before = watch.current()
    assert "nsgp" not in before and before["hkpmc"].base != NEW
    assert watch.current() is before  # unchanged files: the same partners
    set_partner(settings, "hkpmc", {"base": NEW, "auth": {"type": "bearer", "token_env": "T"}})
    after = watch.current()
    assert after is not before
    assert (after["hkpmc"].base, after["hkpmc"].auth.type) == (NEW, "bearer")
    assert after["njmu2"] == before["njmu2"]
    set_partner(settings, "nsgp", {"base": "https://fhir.nsgp.example.cn/fhir"})
    assert watch.current()["nsgp"].base == "https://fhir.nsgp.example.cn/fhir"


def test_a_partners_file_appearing_beside_the_network_replaces_the_seeds(
    settings: Settings, watch: PartnersWatch
) -> None:
    assert set(watch.current()) == {"hkpmc", "njmu2", "nsch"}
    (settings.network.parent / "partners.yaml").write_text(
        "partners:\n  nsgp:\n    base: https://fhir.nsgp.example.cn/fhir\n", encoding="utf-8"
    )
    assert set(watch.current()) == {"nsgp"}


def test_a_broken_edit_keeps_the_partners_read_before_reported_once(
    settings: Settings, watch: PartnersWatch
) -> None:
    set_partner(settings, "hkpmc", {"base": NEW})
    good = watch.current()
    override = settings.home / "partners.yaml"
    text = override.read_text(encoding="utf-8")
    override.write_text(text + "  nsgp: [\n    base: x\n", encoding="utf-8")  # not YAML
    with errors_of("gateway.partners") as lines:
        assert watch.current() is good
        assert watch.current() is good  # looked at again, unchanged: not reported again
    [line] = [text for text in lines if "partners changed" in text]
    assert str(override) in line and "[config.syntax]" in line and "\n" not in line
    # All or nothing: one partner wrong (no base) keeps every partner as it was.
    override.write_text(text + "  nsch:\n    base: ftp://nsch\n", encoding="utf-8")
    with errors_of("gateway.partners") as lines:
        assert watch.current() is good
    [line] = [text for text in lines if "partners changed" in text]
    assert str(override) in line and "expected an http(s) URL" in line
    # Mended: read.
    override.write_text(text + "  nsch:\n    base: https://fhir2.nsch.example.cn/fhir\n")
    assert watch.current()["nsch"].base == "https://fhir2.nsch.example.cn/fhir"
    assert watch.current()["hkpmc"].base == NEW
