"""``gateway partners check``: against the real partner server (../shared/partner-fhir,
started with a bearer token), and against mocked partners for what that server cannot
show (another FHIR version, no transactions, SMART, a certificate naming another
institution, no answer)."""

from __future__ import annotations

import datetime as dt
import os
import socket
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import orjson
import pytest
import respx

from gateway.cli import main
from gateway.config import Settings
from gateway.delivery import DeliveryConfig, send_part
from gateway.partners import (
    Auth,
    Partner,
    check_partner,
    configured_partners,
    partner_client,
    sent_types,
)
from tests.conftest import REPO
from tests.partner.conftest import PARTNER_DIR, _cache_home, _free_port
from tests.partners.conftest import MakeSettings

TOKEN = "partner-test-token-7f3a"
REFERRAL = REPO / "examples" / "hl7v2" / "bundles" / "ref_i12_lax2_to_njmu2.json"


@dataclass(frozen=True)
class TokenPartner:
    base: str


@pytest.fixture(scope="module")
def token_partner() -> Iterator[TokenPartner]:
    """A partner-fhir instance that wants ``Authorization: Bearer TOKEN``."""
    start = PARTNER_DIR / "start"
    if not start.is_file():
        pytest.skip(f"the partner FHIR server is not beside the checkout ({PARTNER_DIR})")
    home = _cache_home()
    home.mkdir(parents=True, exist_ok=True)
    port = _free_port()
    env = {
        **os.environ,
        "PARTNER_FHIR_HOME": str(home),
        "PARTNER_FHIR_PORT": str(port),
        "PARTNER_FHIR_TOKEN": TOKEN,
        "PARTNER_FHIR_FAIL": "none",
    }
    started = subprocess.run(
        [str(start)], env=env, capture_output=True, text=True, timeout=900, check=False
    )
    if started.returncode != 0:
        pytest.fail(f"partner-fhir did not start:\n{started.stdout}\n{started.stderr}")
    try:
        yield TokenPartner(f"http://127.0.0.1:{port}/fhir/R4")
    finally:
        subprocess.run(
            [str(PARTNER_DIR / "stop")], env=env, capture_output=True, timeout=60, check=False
        )


def _token_file(tmp_path: Path, token: str) -> str:
    path = tmp_path / "partner-token"
    path.write_text(f"# the partner's token for us\n{token}\n", encoding="utf-8")
    path.chmod(0o600)  # a secret: owner-only, or it is refused
    return str(path)


def test_check_passes_with_the_right_token(
    token_partner: TokenPartner, home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    token = _token_file(tmp_path, TOKEN)
    assert main(["partners", "set", "hkpmc", "--url", token_partner.base,
                 "--auth", "bearer", "--token-file", token]) == 0  # fmt: skip
    capsys.readouterr()
    assert main(["partners", "check", "hkpmc"]) == 0
    out = capsys.readouterr().out.strip()
    assert out.startswith(f"OK    hkpmc  {token_partner.base}  FHIR 4.0.1, transaction, ")
    assert out.endswith("resource types, auth bearer") and "\n" not in out


def test_check_reports_a_wrong_token(
    token_partner: TokenPartner, home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    token = _token_file(tmp_path, "not-the-partners-token")
    assert main(["partners", "set", "hkpmc", "--url", token_partner.base,
                 "--auth", "bearer", "--token-file", token]) == 0  # fmt: skip
    assert main(["partners", "set", "nsch", "--url", token_partner.base]) == 0  # no auth
    assert main(["partners", "set", "njmu2", "--url", token_partner.base,
                 "--auth", "bearer", "--token-file", _token_file(home, TOKEN)]) == 0  # fmt: skip
    capsys.readouterr()
    assert main(["partners", "check", "hkpmc"]) == 1
    line = capsys.readouterr().out.strip()
    assert line == (
        f"FAIL  hkpmc  {token_partner.base}  "
        "auth: the partner refused the bearer credentials (HTTP 401)"
    )
    assert "not-the-partners-token" not in line
    assert main(["partners", "check", "--json"]) == 1
    found = {r["id"]: r for r in orjson.loads(capsys.readouterr().out)}
    assert {k: r["ok"] for k, r in found.items()} == {"hkpmc": False, "njmu2": True, "nsch": False}
    assert [c["name"] for c in found["nsch"]["checks"] if not c["ok"]] == ["auth"]


def test_delivery_sends_with_the_partner_client(
    token_partner: TokenPartner, home: Path, tmp_path: Path
) -> None:
    """delivery's send_part through partner_client: the token-protected partner applies
    a referral, in the parts its 8-entry limit needs."""
    token = _token_file(tmp_path, TOKEN)
    assert main(["partners", "set", "hkpmc", "--url", token_partner.base,
                 "--auth", "bearer", "--token-file", token]) == 0  # fmt: skip
    partner = configured_partners(Settings.load(home))["hkpmc"]
    bundle = orjson.loads(REFERRAL.read_bytes())
    parts = partner.split(bundle)
    assert len(parts) > 1
    with partner_client(partner, DeliveryConfig()) as client:
        answers = [send_part(client, part, dt.datetime(2026, 6, 1)) for part in parts]
    assert [a.kind for a in answers] == ["delivered"] * len(parts)


# --- mocked partners -------------------------------------------------------------------------

BASE = "https://fhir.partner.example.hk/fhir/R4"
TOKEN_URL = "https://auth.partner.example.hk/token"


def _capability(version: str, interactions: list[str], types: list[str]) -> dict[str, object]:
    return {
        "resourceType": "CapabilityStatement",
        "fhirVersion": version,
        "rest": [
            {
                "mode": "server",
                "resource": [{"type": t} for t in types],
                "interaction": [{"code": c} for c in interactions],
            }
        ],
    }


def test_check_names_every_capability_the_partner_lacks(make_settings: MakeSettings) -> None:
    settings = make_settings()
    types = sent_types(settings)
    assert {"Patient", "ServiceRequest", "DiagnosticReport", "ImagingStudy", "Provenance"} <= set(
        types
    )
    offered = [t for t in types if t not in ("ImagingStudy", "Task")]
    with respx.mock(assert_all_mocked=True) as api:
        api.get(f"{BASE}/metadata").respond(200, json=_capability("5.0.0", ["batch"], offered))
        api.get(f"{BASE}/{types[0]}").respond(200, json={"resourceType": "Bundle"})
        report = check_partner(Partner("hkpmc", BASE), settings, types)
    assert not report.ok
    assert report.line() == (
        f"FAIL  hkpmc  {BASE}  fhir-version: serves FHIR 5.0.0; the gateway writes 4.0.x; "
        "writes: its CapabilityStatement has no transaction interaction; "
        "types: not supported: ImagingStudy, Task"
    )


def test_check_reports_no_answer(make_settings: MakeSettings) -> None:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    settings = make_settings(delivery_connect_timeout="2")
    report = check_partner(Partner("hkpmc", f"http://127.0.0.1:{port}/fhir"), settings, ["Patient"])
    assert not report.ok and report.checks[0].name == "reachable"
    assert report.checks[0].detail.startswith("no answer (ConnectError")


def _smart_partner(settings_partner: Partner, client_id: str) -> Partner:
    auth = replace(settings_partner.auth, type="smart", client_id=client_id, token_url=TOKEN_URL)
    return replace(settings_partner, base=BASE, auth=auth)


def test_check_obtains_a_smart_token(make_settings: MakeSettings) -> None:
    settings = make_settings()
    partner = configured_partners(settings)["hkpmc"]
    partner = replace(partner, auth=Auth("smart", key="lax2", signing_keys=settings.signing_keys))
    with respx.mock(assert_all_mocked=True) as api:
        api.get(f"{BASE}/metadata").respond(
            200, json=_capability("4.0.1", ["transaction"], ["Patient"])
        )
        token = api.post(TOKEN_URL).respond(
            200, json={"access_token": "tok", "token_type": "Bearer", "expires_in": 300}
        )
        search = api.get(f"{BASE}/Patient").respond(200, json={"resourceType": "Bundle"})
        report = check_partner(_smart_partner(partner, "lax2"), settings, ["Patient"])
    assert report.ok, report.line()
    assert report.line().endswith("auth smart (token for lax2, 300 s)")
    assert token.call_count == 1  # the search used the token the check obtained
    assert search.calls[0].request.headers["Authorization"] == "Bearer tok"


def test_check_refuses_a_certificate_naming_another_institution(
    make_settings: MakeSettings,
) -> None:
    settings = make_settings()
    partner = replace(
        configured_partners(settings)["hkpmc"],
        auth=Auth("smart", key="lax2", signing_keys=settings.signing_keys),
    )
    with respx.mock(assert_all_mocked=True) as api:
        api.get(f"{BASE}/metadata").respond(
            200, json=_capability("4.0.1", ["transaction"], ["Patient"])
        )
        report = check_partner(_smart_partner(partner, "njmu2"), settings, ["Patient"])
    assert not report.ok
    assert "does not name institution njmu2, the client_id" in report.line()


def test_check_reports_a_token_endpoint_refusal(make_settings: MakeSettings) -> None:
    settings = make_settings()
    partner = replace(
        configured_partners(settings)["hkpmc"],
        auth=Auth("smart", key="lax2", signing_keys=settings.signing_keys),
    )
    with respx.mock(assert_all_mocked=True) as api:
        api.get(f"{BASE}/metadata").respond(
            200, json=_capability("4.0.1", ["transaction"], ["Patient"])
        )
        api.post(TOKEN_URL).respond(401, json={"error": "invalid_client"})
        report = check_partner(_smart_partner(partner, "lax2"), settings, ["Patient"])
    assert "auth: partner hkpmc: the token endpoint" in report.line()
    assert "(HTTP 401 invalid_client)" in report.line()


def test_check_an_unknown_partner_is_a_usage_error(
    home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["partners", "check", "mayo"]) == 2
    assert "config.unknown-partner" in capsys.readouterr().err
