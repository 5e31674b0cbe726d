"""Routing reads network.yaml and routes.yaml again when they change, as the policy
does (no restart): a route added, an institution renamed in the network and named so
by a route; all or nothing — an edit that does not load keeps the last good files,
reported once — and a mended file is read."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import pytest

from gateway import Settings
from gateway.delivery import Facts, Outbound
from gateway.store import Store
from tests.conftest import REPO

# 南沙中心医院's internal Holter order (OMG^O19): the demo routes send it nowhere.
HOLTER = Facts(format="hl7v2", message_type="OMG^O19", sender="nsch")
TO_HONG_KONG = """
  - id: holter-to-hong-kong
    description: 南沙的动态心电图医嘱送香港合作医疗中心
    when: {sender: [NSCH], message_type: [OMG^O19]}
    to: [{to}]
    purpose: second-opinion
"""


@pytest.fixture
def files(tmp_path: Path) -> tuple[Path, Path]:
    network, routes = tmp_path / "network.yaml", tmp_path / "routes.yaml"
    network.write_bytes((REPO / "seeds" / "network.yaml").read_bytes())
    routes.write_bytes((REPO / "seeds" / "routes.yaml").read_bytes())
    return network, routes


@pytest.fixture
def outbound(home: Settings, store: Store, files: tuple[Path, Path]) -> Outbound:
    network, routes = files
    made = Outbound(dataclasses.replace(home, network=network, delivery_routes=routes), store)
    made.watch.reload_interval = 0  # look at every use (the default: every 2 s, as the policy)
    return made


def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text(encoding="utf-8")
    assert old in text
    path.write_text(text.replace(old, new, 1), encoding="utf-8")


def test_a_route_added_is_followed_without_a_restart(
    outbound: Outbound, files: tuple[Path, Path]
) -> None:
    assert list(outbound.route(HOLTER).partners) == []
    routes = files[1]
    routes.write_text(
        routes.read_text(encoding="utf-8") + TO_HONG_KONG.replace("{to}", "HKPMC"),
        encoding="utf-8",
    )
    routing = outbound.route(HOLTER)
    assert list(routing.partners) == ["hkpmc"]
    assert routing.partners["hkpmc"].rules == ["holter-to-hong-kong"]


def test_an_institution_renamed_in_the_network_reaches_routing(
    outbound: Outbound, files: tuple[Path, Path]
) -> None:
    """The network and the routes read together: a route naming Hong Kong's partner by
    its new facility code loads only with the network that renames it."""
    network, routes = files
    _edit(network, "facility: HKPMC\n", "facility: HKPMC-HK\n")
    renamed = routes.read_text(encoding="utf-8").replace("[HKPMC]", "[HKPMC-HK]")
    routes.write_text(renamed + TO_HONG_KONG.replace("{to}", "HKPMC-HK"), encoding="utf-8")
    assert list(outbound.route(HOLTER).partners) == ["hkpmc"]
    found = outbound.network.find("HKPMC-HK")
    assert found is not None and found.key == "hkpmc"


def test_a_bad_edit_keeps_the_last_good_files_reported_once(
    outbound: Outbound, files: tuple[Path, Path], caplog: pytest.LogCaptureFixture
) -> None:
    network, routes = files
    good = routes.read_text(encoding="utf-8")
    # All or nothing: a network that drops Nanjing, which the routes still name, loads
    # alone but not with them: neither is taken.
    _edit(network, "  - key: njmu2\n    facility: NJMU2\n", "  - key: njmu3\n    facility: NJMU3\n")
    with caplog.at_level(logging.ERROR, logger="gateway.delivery"):
        assert list(outbound.route(HOLTER).partners) == []
        assert outbound.network.find("NJMU2") is not None  # the last good network
        outbound.route(HOLTER)  # looked at again, unchanged: not reported again
    reported = [r for r in caplog.records if "routing data changed" in r.getMessage()]
    assert len(reported) == 1 and "config.routes" in reported[0].getMessage()
    # Mended (Nanjing back) with a route added: both read.
    _edit(network, "  - key: njmu3\n    facility: NJMU3\n", "  - key: njmu2\n    facility: NJMU2\n")
    routes.write_text(good + TO_HONG_KONG.replace("{to}", "HKPMC"), encoding="utf-8")
    assert list(outbound.route(HOLTER).partners) == ["hkpmc"]
    # A routes file that is not YAML: the last good routes go on.
    routes.write_text("routes: [\n  - id: 半截", encoding="utf-8")
    caplog.clear()
    with caplog.at_level(logging.ERROR, logger="gateway.delivery"):
        assert list(outbound.route(HOLTER).partners) == ["hkpmc"]
        assert list(outbound.route(HOLTER).partners) == ["hkpmc"]
    assert len([r for r in caplog.records if "routing data changed" in r.getMessage()]) == 1
