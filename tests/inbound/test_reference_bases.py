"""Absolute references under this gateway's base (``inbound_public_url``/fhir) or the
sending partner's own FHIR base (seeds/partners.yaml) are recognised however that base
is spelled, as RFC 3986 §6.2.2-6.2.3 compare URLs: scheme and host in any case, the
scheme's default port written or not, a trailing slash of the base. They were compared
as text, so ``https://GW.example:443/fhir/Patient/1`` was refused as another server's
(``inbound.external-reference``). Another scheme, host, port or path stays another
server: ``http://`` for an ``https://`` base, ``https://gw.example.evil``,
``https://gw.example/fhirx``."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest

from gateway import Settings
from gateway.inbound._apply import _under, entry_base, read_against, reference_key

from .conftest import NOTHING, counts
from .test_adversarial_references import NSCH_FHIR, _bundle, _send, _stored_subject

OURS = "https://gw.hkpmc.example.hk"  # inbound_public_url in these tests


@pytest.fixture
def settings(hk_settings: Settings) -> Settings:
    return dataclasses.replace(hk_settings, inbound_public_url=OURS)


def _patient(settings: Settings, pki: Path) -> str:
    """``Patient/<id>``: NSCH's patient, stored here by a first Bundle."""
    first = _send(settings, pki, _bundle(f"{NSCH_FHIR}/Patient/p1", 100, with_patient=True))
    assert first.status == 200, first.body
    return next(
        str(e["response"]["location"]).split("/_history")[0]
        for e in first.body["entry"]
        if str(e["response"]["location"]).startswith("Patient/")
    )


def _refused(settings: Settings, answer: Any, before: dict[str, int]) -> None:
    assert answer.status == 422, answer.body
    issue = answer.body["issue"][0]
    assert issue["details"]["coding"][0]["code"] == "inbound.external-reference"
    assert issue["expression"] == ["Bundle.entry[0].resource.subject"]
    assert counts(settings) == before  # nothing of the Bundle stored


@pytest.mark.parametrize(
    "base",
    [
        "https://GW.HKPMC.EXAMPLE.HK/fhir",  # the host in capitals
        "https://Gw.Hkpmc.Example.Hk/fhir",
        "https://gw.hkpmc.example.hk:443/fhir",  # the default port written
        "https://gw.hkpmc.example.hk:/fhir",  # an empty port: the default (§6.2.3)
        "https://gw.hkpmc.example.hk/fhir/",  # the base's trailing slash
    ],
)
def test_this_gateways_base_in_another_spelling_is_ours(
    settings: Settings, pki: Path, base: str
) -> None:
    patient = _patient(settings, pki)
    answer = _send(settings, pki, _bundle(f"{base}/{patient}", 101))
    assert answer.status == 200, answer.body
    assert _stored_subject(settings, answer) == patient  # made relative, as our own


def test_the_setting_in_another_spelling_recognises_ours(settings: Settings, pki: Path) -> None:
    spelled = dataclasses.replace(settings, inbound_public_url="HTTPS://GW.hkpmc.example.hk:443")
    # (the setting's scheme may be in capitals; a reference's is refused before, by the
    # validation: test_the_scheme_in_capitals_is_the_scheme)
    patient = _patient(spelled, pki)
    answer = _send(spelled, pki, _bundle(f"{OURS}/fhir/{patient}", 102))
    assert answer.status == 200, answer.body
    assert _stored_subject(spelled, answer) == patient


@pytest.mark.parametrize(
    "base",
    [
        "http://gw.hkpmc.example.hk/fhir",  # another scheme: another server
        "http://gw.hkpmc.example.hk:443/fhir",
        "https://gw.hkpmc.example.hk.evil/fhir",  # a look-alike host
        "https://evil-gw.hkpmc.example.hk/fhir",
        "https://gw.hkpmc.example.hk@evil.example/fhir",  # user information: evil.example
        "https://gw.hkpmc.example.hk:8443/fhir",  # another port
        "https://gw.hkpmc.example.hk/fhirx",  # beside the base, not under it
        "https://gw.hkpmc.example.hk/FHIR",  # paths are compared as written
        "https://gw.hkpmc.example.hk",  # above it
    ],
)
def test_a_look_alike_of_this_gateways_base_is_refused(
    settings: Settings, pki: Path, base: str
) -> None:
    patient = _patient(settings, pki)
    before = counts(settings)
    _refused(settings, _send(settings, pki, _bundle(f"{base}/{patient}", 103)), before)


@pytest.mark.parametrize(
    "base",
    [
        "https://FHIR.NSCH.EXAMPLE.CN/fhir",
        "https://fhir.nsch.example.cn:443/fhir",
        "https://fhir.nsch.example.cn/fhir/",
    ],
)
def test_the_partners_base_in_another_spelling_is_kept(
    settings: Settings, pki: Path, base: str
) -> None:
    answer = _send(settings, pki, _bundle(f"{base}/Patient/1", 104))
    assert answer.status == 200, answer.body
    assert _stored_subject(settings, answer) == f"{base}/Patient/1"  # kept as sent


@pytest.mark.parametrize(
    "base",
    [
        "http://fhir.nsch.example.cn/fhir",
        "https://fhir.nsch.example.cn.evil/fhir",
        "https://fhir.nsch.example.cn:8443/fhir",
        "https://fhir.nsch.example.cn/fhirx",
        "https://fhir.nsch.example.cn/fhir//other.example",  # a network-path tail
    ],
)
def test_a_look_alike_of_the_partners_base_is_refused(
    settings: Settings, pki: Path, base: str
) -> None:
    before = counts(settings)
    _refused(settings, _send(settings, pki, _bundle(f"{base}/Patient/1", 105)), before)
    assert {k: before[k] for k in NOTHING} == NOTHING


@pytest.mark.parametrize(
    ("ref", "base", "tail"),
    [
        ("HTTPS://GW.HKPMC.EXAMPLE.HK/fhir/Patient/1", f"{OURS}/fhir", "Patient/1"),
        ("Https://gw.hkpmc.example.hk:443/fhir//Patient/1", f"{OURS}/fhir", "Patient/1"),
        (f"{OURS}/fhir/Patient/1", "HTTPS://GW.HKPMC.EXAMPLE.HK:443/fhir", "Patient/1"),
        ("HTTP://GW.HKPMC.EXAMPLE.HK/fhir/Patient/1", f"{OURS}/fhir", None),
    ],
)
def test_the_scheme_in_capitals_is_the_scheme(ref: str, base: str, tail: str | None) -> None:
    """Schemes are case-insensitive (RFC 3986 §3.1). Through ``POST /fhir`` a reference
    ``HTTPS://…`` is refused before this comparison, by the profile validation (which
    reads it as a relative reference to a resource type "HTTPS:"), so the comparison
    itself is checked here."""
    assert _under(ref, base) == tail


@pytest.mark.parametrize(
    ("ref", "key"),
    [
        ("Patient/1", "Patient/1"),  # this gateway's
        ("Patient/1/_history/3", "Patient/1"),
        ("HTTPS://GW.HKPMC.EXAMPLE.HK:443/fhir//Patient/1/_history/3", "Patient/1"),
        # another server's: its URL as servers compare, never this gateway's Patient/1
        ("https://fhir.nsch.example.cn/fhir/Patient/1", "https://fhir.nsch.example.cn/fhir/Patient/1"),
        ("HTTPS://FHIR.NSCH.EXAMPLE.CN:443/fhir//Patient/1/_history/2",
         "https://fhir.nsch.example.cn/fhir/Patient/1"),
        ("http://fhir.nsch.example.cn/fhir/Patient/1", "http://fhir.nsch.example.cn/fhir/Patient/1"),
        ("https://fhir.nsch.example.cn:8443/fhir/Patient/1",
         "https://fhir.nsch.example.cn:8443/fhir/Patient/1"),
        ("https://fhir.nsch.example.cn/FHIR/Patient/1", "https://fhir.nsch.example.cn/FHIR/Patient/1"),
        ("https://gw.hkpmc.example.hk/fhirx/Patient/1", "https://gw.hkpmc.example.hk/fhirx/Patient/1"),
        ("Patient?identifier=x|1", "Patient?identifier=x|1"),  # not a literal: as written
    ],
)  # fmt: skip
def test_a_reference_is_keyed_by_the_resource_it_names(ref: str, key: str) -> None:
    assert reference_key(ref, f"{OURS}/fhir") == key


@pytest.mark.parametrize(
    ("ref", "full_url", "read"),
    [
        ("Patient/1", "https://fhir.nsch.example.cn/fhir/Condition/c", "https://fhir.nsch.example.cn/fhir/Patient/1"),
        ("Patient/1/_history/2", "https://x.example/Condition/c", "https://x.example/Patient/1/_history/2"),
        # in a urn:uuid entry (or none), the receiving server's
        ("Patient/1", "urn:uuid:00000000-0000-4000-8000-000000000000", "Patient/1"),
        ("Patient/1", None, "Patient/1"),
        ("Patient/1", "https://x.example/fhir/Condition", "Patient/1"),  # no [base]/Type/id
        ("Patient?identifier=x|1", "https://x.example/Condition/c", "Patient?identifier=x|1"),
        ("Patient/..", "https://x.example/Condition/c", "Patient/.."),  # refused as written
        ("#p", "https://x.example/Condition/c", "#p"),
    ],
)  # fmt: skip
def test_a_relative_reference_is_read_against_a_server_full_url(
    ref: str, full_url: str | None, read: str
) -> None:
    assert read_against(ref, entry_base(full_url)) == read
