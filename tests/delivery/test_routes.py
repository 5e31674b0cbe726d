"""Routing as data: the demo routes (seeds/routes.yaml) send each example record where
its story says, every rule explains itself, and a malformed rule file is refused
naming the rule."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway import Converter, Settings
from gateway.delivery import Facts, Routes, facts_of
from gateway.errors import ConfigError
from gateway.network import Network
from gateway.partners import load_partners
from tests.conftest import REPO

# (example, the partners its record goes to): the two stories of seeds/network.yaml.
DEMO = [
    ("hl7v2/ref_i12_nsgp_to_nsch.hl7", ["nsch"]),  # GP clinic → Nansha
    ("hl7v2/ref_i12_nsch_to_hkpmc.hl7", ["hkpmc"]),  # Nansha → Hong Kong
    ("hl7v2/ref_i12_hkpmc_to_nsch.hl7", ["nsch"]),  # ... and back
    ("hl7v2/ref_i12_lax2_to_njmu2.hl7", ["njmu2"]),  # Lai'an → Nanjing
    ("hl7v2/ref_i14_lax2_cancel.hl7", ["njmu2"]),  # its cancellation follows it
    ("hl7v2/orm_o01_lax2_ct.hl7", ["njmu2"]),  # Lai'an's CT orders to the remote reader
    ("imaging/lax2_ct_head.study", ["njmu2"]),  # ... the study
    ("imaging/lax2-ct-report-local.xml", ["njmu2"]),  # ... the local report
    ("hl7v2/omi_o23_nsch_ct.hl7", ["hkpmc"]),  # Nansha's CTA order to Hong Kong
    ("imaging/nsch_cta.study", ["hkpmc"]),
    ("imaging/oru_r01_nsch_cta_zh.hl7", ["hkpmc"]),
    ("imaging/oru_r01_hkpmc_cta_en.hl7", ["nsch"]),  # the English report, to MSH-6
    ("hl7v2/omg_o19_nsch.hl7", []),  # an internal Holter order: nowhere
]


@pytest.fixture(scope="module")
def network(settings: Settings) -> Network:
    return Network.load(settings.network)


@pytest.fixture(scope="module")
def routes(network: Network) -> Routes:
    return Routes.load(network)


def _facts(converter: Converter, network: Network, name: str) -> Facts:
    [record] = converter.convert_path(REPO / "examples" / name)
    assert record.ok and record.bundle is not None
    return facts_of(
        record.bundle,
        network,
        format=record.format,
        message_type=record.message_type,
        sender=record.sender,
        raw=record.raw,
    )


@pytest.mark.parametrize(("name", "partners"), DEMO)
def test_demo_routes_follow_the_stories(
    converter: Converter, network: Network, routes: Routes, name: str, partners: list[str]
) -> None:
    routing = routes.route(_facts(converter, network, name), load_partners(network=network))
    assert list(routing.partners) == partners
    lines = routing.lines()
    assert len([line for line in lines if line.startswith("rule ")]) == len(routes.routes)
    for partner in partners:  # the line naming the partner says by which rule
        assert any(line.startswith(f"→ {partner} by ") for line in lines), lines


def test_each_rule_says_why_it_matched_or_not(
    converter: Converter, network: Network, routes: Routes
) -> None:
    facts = _facts(converter, network, "imaging/oru_r01_hkpmc_cta_en.hl7")
    assert facts.receiving_facility == "nsch" and facts.receiving_application == "NSCH_RIS"
    assert facts.sender == "hkpmc" and facts.performer == ("nsch",)
    routing = routes.route(facts, ["nsch", "hkpmc"])
    why = {rule: (ok, text) for rule, ok, text in routing.checked}
    assert why["hong-kong-report-back"] == (
        True,
        "sender hkpmc in [hkpmc]; message type ORU^R01 in [ORU^R01]",
    )
    assert why["referral-to-its-target"] == (
        False,
        "message type ORU^R01 not in [REF^I12, REF^I14]",
    )
    assert routing.partners["nsch"].why == [
        "hong-kong-report-back: sender hkpmc in [hkpmc]; message type ORU^R01 in [ORU^R01]"
        " → receiving-facility nsch"
    ]


def test_the_referral_target_comes_from_the_service_request(
    converter: Converter, network: Network
) -> None:
    facts = _facts(converter, network, "hl7v2/ref_i12_nsch_to_hkpmc.hl7")
    assert facts.target == ("hkpmc",) and facts.receiving_facility == "hkpmc"
    report = _facts(converter, network, "imaging/oru_r01_lax2_ct_cobranded.hl7")
    assert report.performer == ("lax2",)  # the exam's hospital, not the Nanjing reader


def test_never_to_itself_nor_to_an_institution_without_a_server(
    converter: Converter, network: Network, routes: Routes
) -> None:
    facts = _facts(converter, network, "hl7v2/ref_i12_lax2_to_njmu2.hl7")
    own = routes.route(facts, ["njmu2"], institution="njmu2")
    assert own.partners == {}
    assert own.skipped == [("njmu2", "rule referral-to-its-target: the gateway's own institution")]
    report = _facts(converter, network, "imaging/oru_r01_lax2_ct_cobranded.hl7")
    nowhere = routes.route(report, load_partners(network=network))  # lax2 has no server
    assert nowhere.partners == {}
    assert nowhere.skipped == [
        ("lax2", "rule co-branded-report-to-performer: no FHIR server configured (partners)")
    ]


def _load(tmp_path: Path, network: Network, text: str) -> Routes:
    path = tmp_path / "routes.yaml"
    path.write_text(text, encoding="utf-8")
    return Routes.load(network, path)


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("routes: [{id: a, when: {sex: M}, to: [nsch]}]", "rule a: unknown condition 'sex'"),
        ("routes: [{id: a, to: [nowhere]}]", "rule a: to: 'nowhere' is not an institution"),
        ("routes: [{id: a, when: {sender: [XX]}, to: [nsch]}]", "when.sender: 'XX' is not"),
        ("routes: [{id: a}]", "rule a: 'to' names no partner"),
        ("routes: [{id: a, to: nsch}, {id: a, to: nsch}]", "rule ids used twice: a"),
        ("routes: [{to: nsch}]", "routes[1]: needs an 'id'"),
        ("routes: [{id: a, to: nsch, then: x}]", "rule a: unknown keys then"),
        ("rules: []", "expected a mapping with a 'routes' list"),
    ],
)
def test_a_malformed_rule_is_refused_naming_it(
    tmp_path: Path, network: Network, text: str, says: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        _load(tmp_path, network, text)
    assert caught.value.code == "config.routes" and says in caught.value.issue.message


def test_patterns_facility_codes_and_keys(tmp_path: Path, network: Network) -> None:
    routes = _load(
        tmp_path,
        network,
        "routes: [{id: a, when: {message_type: 'REF^*', sender: NSGP, receiving_application: "
        "'NSCH_*'}, to: [NSCH, hkpmc]}]",
    )
    facts = Facts("hl7v2", "REF^I12", "nsgp", "nsch", "NSCH_HIS")
    routing = routes.route(facts, ["nsch", "hkpmc"])
    assert list(routing.partners) == ["nsch", "hkpmc"]
    other = Facts("hl7v2", "ORU^R01", "nsgp", "nsch", "NSCH_HIS")
    assert routes.route(other, ["nsch"]).partners == {}


@pytest.mark.parametrize("charset", ["GB18030", "BIG5", "UNICODE UTF-8"])
def test_a_chinese_receiving_facility_is_read_in_the_messages_charset(
    network: Network, charset: str
) -> None:
    """MSH-6 written as the receiving hospital's Chinese name (its alias in the network),
    in GB 18030, Big5 or UTF-8 as MSH-18 declares: read as ASCII with replacement it
    was U+FFFD (no route matched it); split as bytes, Big5's 院 (B0 7C: a '|' trail
    byte) cut the field. Now it names the institution, as intake would read it."""
    codec = {"GB18030": "gb18030", "BIG5": "big5", "UNICODE UTF-8": "utf-8"}[charset]
    name = "南沙中心醫院" if codec == "big5" else "南沙中心医院"
    msh = (
        f"MSH|^~\\&|HKPMC_RIS|HKPMC|影像系統|{name}|20261205080000||ORU^R01^ORU_R01|"
        f"C1|P|2.5.1|||||CHN|{charset}\r"
    )
    raw = msh.encode(codec) + "PID|1||P1^^^HKPMC^MR||陳^大文\r".encode(codec)
    if codec == "big5":
        assert b"\xb0|" in raw  # 院: a trail byte that is the field separator
    facts = facts_of({"resourceType": "Bundle"}, network, format="hl7v2", raw=raw)
    assert facts.receiving_facility == "nsch"
    assert facts.receiving_application == "影像系統"


def test_an_ascii_receiving_facility_is_read_from_the_bytes(network: Network) -> None:
    raw = b"MSH|^~\\&|HKPMC_RIS|HKPMC|NSCH_RIS|NSCH|20261205080000||ORU^R01|C1|P|2.5.1\r"
    facts = facts_of({"resourceType": "Bundle"}, network, format="hl7v2", raw=raw)
    assert (facts.receiving_application, facts.receiving_facility) == ("NSCH_RIS", "nsch")
