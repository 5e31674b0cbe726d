"""One host and port form (gateway/fhirsystems.py, host_key) for the two RFC 3986
comparisons of the inbound stage: identifier systems (system_key: lenient, compared,
never refused) and the FHIR bases an absolute reference is read against (_apply._server:
refuses user information and an unreadable port). Each keeps what it refused; both
drop the scheme's default port (one table), zero-padding, and keep an IPv6 literal in
its brackets, so that ``[::1]:8080`` and ``[::1:8080]`` stay two servers."""

from __future__ import annotations

import pytest

from gateway.fhirsystems import DEFAULT_PORTS, host_key, system_key
from gateway.inbound._apply import _under

MRN = "https://fhir.nsch.example.cn/sid/mrn"


@pytest.mark.parametrize(
    ("scheme", "host", "port", "expected"),
    [
        ("https", "gw", None, "gw"),
        ("https", "gw", 443, "gw"),
        ("http", "gw", 443, "gw:443"),  # https's default is not http's
        ("http", "gw", 80, "gw"),
        ("https", "gw", 0, "gw:0"),
        ("https", "::1", 8080, "[::1]:8080"),  # urlsplit's hostname, bracketed again
        ("https", "[::1]", 443, "[::1]"),
        ("https", "::1:8080", None, "[::1:8080]"),
    ],
)
def test_host_key(scheme: str, host: str, port: int | None, expected: str) -> None:
    assert host_key(scheme, host, port) == expected
    assert DEFAULT_PORTS == {"http": 80, "https": 443}


@pytest.mark.parametrize(
    ("one", "other"),
    [
        ("https://[2001:DB8::1]:443/sid/mrn", "https://[2001:db8::1]/sid/mrn"),
        ("HTTPS://FHIR.NSCH.EXAMPLE.CN:0443/sid/mrn", MRN),  # upper case, zero-padded
        ("https://fhir.nsch.example.cn:08080/sid/mrn", "https://fhir.nsch.example.cn:8080/sid/mrn"),
        ("https://op@FHIR.NSCH.EXAMPLE.CN:443/sid/mrn", "https://op@fhir.nsch.example.cn/sid/mrn"),
    ],
)
def test_one_system_however_its_host_is_written(one: str, other: str) -> None:
    assert system_key(one) == system_key(other)


@pytest.mark.parametrize(
    ("one", "other"),
    [
        ("https://[::1]:8080/sid/mrn", "https://[::1:8080]/sid/mrn"),
        ("http://fhir.nsch.example.cn:443/sid/mrn", "http://fhir.nsch.example.cn/sid/mrn"),
        ("https://Op@fhir.nsch.example.cn/sid/mrn", "https://op@fhir.nsch.example.cn/sid/mrn"),
        ("https://fhir.nsch.example.cn:0/sid/mrn", MRN),
    ],
)
def test_other_systems_stay_other(one: str, other: str) -> None:
    assert system_key(one) != system_key(other)


def test_an_unreadable_port_is_compared_in_a_system_not_refused() -> None:
    assert system_key("HTTPS://FHIR.NSCH.EXAMPLE.CN:x/sid/mrn") == (
        "https://fhir.nsch.example.cn:x/sid/mrn"
    )


@pytest.mark.parametrize(
    ("ref", "base"),
    [
        ("https://[2001:DB8::1]:443/fhir/Patient/1", "https://[2001:db8::1]/fhir"),
        ("HTTPS://GW.EXAMPLE.HK:0443/fhir/Patient/1", "https://gw.example.hk/fhir"),
        ("https://gw.example.hk/fhir/Patient/1", "https://GW.example.hk:443/fhir/"),
        ("http://[::1]:080/fhir/Patient/1", "http://[::1]/fhir"),
    ],
)
def test_a_reference_under_the_base_however_its_server_is_written(ref: str, base: str) -> None:
    assert _under(ref, base) == "Patient/1"


@pytest.mark.parametrize(
    ("ref", "base"),
    [
        ("https://[::1]:8080/fhir/Patient/1", "https://[::1:8080]/fhir"),
        ("https://gw@gw.example.hk/fhir/Patient/1", "https://gw.example.hk/fhir"),  # user info
        ("https://gw.example.hk/fhir/Patient/1", "https://gw@gw.example.hk/fhir"),
        ("http://gw.example.hk:443/fhir/Patient/1", "http://gw.example.hk/fhir"),
        ("https://gw.example.hk:x/fhir/Patient/1", "https://gw.example.hk/fhir"),  # no port
        ("https://gw.example.hk:65536/fhir/Patient/1", "https://gw.example.hk:65536/fhir"),
        ("https://[fe80::1%25ETH0]/fhir/Patient/1", "https://[fe80::1%25eth0]/fhir"),  # zone
        ("ftp://gw.example.hk/fhir/Patient/1", "ftp://gw.example.hk/fhir"),
        # a tab or line break in the server: no URI (RFC 3986), which urlsplit read as
        # the base's server with it dropped (own_relative took it for this gateway's)
        ("https://gw.exam\tple.hk/fhir/Patient/1", "https://gw.example.hk/fhir"),
        ("https://gw.example.hk\n/fhir/Patient/1", "https://gw.example.hk/fhir"),
        ("https://gw.example.hk:44\r3/fhir/Patient/1", "https://gw.example.hk/fhir"),
        ("https://gw.example.hk/fhir/Patient/1", "https://gw.exam\tple.hk/fhir"),
    ],
)
def test_a_reference_elsewhere_or_unreadable_is_not_under_the_base(ref: str, base: str) -> None:
    assert _under(ref, base) is None
