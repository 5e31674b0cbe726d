"""Partner configuration: the network's defaults under $GATEWAY_HOME/partners.yaml,
errors that name the file, the partner and the key, and ``gateway partners list|set``."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
import yaml

from gateway.cli import main
from gateway.errors import ConfigError
from gateway.network import Network
from gateway.partners import DEFAULT_SCOPE, configured_partners, load_partners
from tests.partners.conftest import NETWORK, MakeSettings


def _load(tmp_path: Path, text: str) -> None:
    path = tmp_path / "partners.yaml"
    path.write_text(text, encoding="utf-8")
    load_partners(path, Network.load(NETWORK))


@pytest.mark.parametrize(
    ("entry", "code", "words"),
    [
        ("fhir_version: R5", "config.partner-fhir-version", "partners.hkpmc.fhir_version: 'R5'"),
        ("fhir_version: 3.0.2", "config.partner-fhir-version", "FHIR R4 (4.0.1) only"),
        ("auth: kerberos", "config.partner-auth", "partners.hkpmc.auth.type: 'kerberos'"),
        ("auth: bearer", "config.partner-auth", "bearer needs token_file or token_env"),
        (
            "auth: {type: none, token_file: t}",
            "config.partner-auth",
            "token_file not used by auth type none",
        ),
        (
            "auth: {type: smart, token_url: ftp://x}",
            "config.partner-auth",
            "auth.token_url: expected an http(s) URL",
        ),
        ("auth: {type: mtls, cert_file: c.pem}", "config.partner-auth", "cert_file and key_file"),
        ("auth: {type: bearer, token: s3cr3t}", "config.partner-secret", "'token' would keep"),
        ("client_secret: s3cr3t", "config.partner-secret", "'client_secret'"),
        ("concurrency: 0", "config.partners", "partners.hkpmc.concurrency"),
        ("rate_limit: fast", "config.partners", "partners.hkpmc.rate_limit"),
        ("base: ftp://x", "config.partners", "partners.hkpmc.base"),
    ],
)
def test_a_bad_partner_setting_is_named_clearly(
    tmp_path: Path, entry: str, code: str, words: str
) -> None:
    text = f"partners:\n  hkpmc:\n    base: https://fhir.hkpmc.example.hk/fhir/R4\n    {entry}\n"
    with pytest.raises(ConfigError) as caught:
        _load(tmp_path, text)
    message = caught.value.issue.message
    assert caught.value.code == code and words in message, message
    assert str(tmp_path / "partners.yaml") in message  # the file is named
    assert "s3cr3t" not in message  # a secret is never repeated


def test_r4_is_accepted_under_its_usual_names(tmp_path: Path) -> None:
    for version in ("R4", "4.0", "4.0.1"):
        text = f"partners: {{hkpmc: {{base: 'https://h/fhir', fhir_version: '{version}'}}}}"
        path = tmp_path / "partners.yaml"
        path.write_text(text, encoding="utf-8")
        assert load_partners(path)["hkpmc"].fhir_version == "R4"


def test_the_network_gives_name_jurisdiction_and_report_variant(
    make_settings: MakeSettings,
) -> None:
    partners = configured_partners(make_settings())
    hkpmc, nsch = partners["hkpmc"], partners["nsch"]
    assert (hkpmc.jurisdiction, hkpmc.report_variant) == ("HK", "zh-Hant-HK+en")
    assert hkpmc.name == "大灣區醫療集團香港合作醫療中心"
    assert (nsch.jurisdiction, nsch.report_variant) == ("CN-GD", "zh-Hans")
    assert (hkpmc.auth.type, hkpmc.concurrency, hkpmc.rate_limit) == ("none", 4, 0.0)


def test_the_home_file_wins_over_the_network_defaults(make_settings: MakeSettings) -> None:
    settings = make_settings()
    settings.home.mkdir(parents=True)
    (settings.home / "partners.yaml").write_text(
        "partners:\n"
        "  hkpmc:\n"
        "    base: https://partner.example.hk/fhir\n"
        "    auth: {type: bearer, token_file: secrets/hkpmc-token}\n"
        "    rate_limit: 2.5\n"
        "  lax2:\n"
        "    base: https://lax2.example.cn/fhir\n",
        encoding="utf-8",
    )
    partners = configured_partners(settings)
    hkpmc = partners["hkpmc"]
    assert hkpmc.base == "https://partner.example.hk/fhir"  # from the home file
    assert (hkpmc.max_entries, hkpmc.write) == (8, "transaction")  # kept from the seeds
    assert hkpmc.auth.token_file == settings.home / "secrets" / "hkpmc-token"  # relative to it
    assert hkpmc.rate_limit == 2.5
    assert partners["njmu2"].base == "https://fhir.njmu2.example.cn/fhir"  # untouched
    assert partners["lax2"].base == "https://lax2.example.cn/fhir"  # added


def test_an_override_naming_no_institution_is_refused_naming_the_home_file(
    make_settings: MakeSettings,
) -> None:
    settings = make_settings()
    settings.home.mkdir(parents=True)
    (settings.home / "partners.yaml").write_text(
        "partners: {nowhere: {base: 'https://x'}}", encoding="utf-8"
    )
    with pytest.raises(ConfigError) as caught:
        configured_partners(settings)
    assert caught.value.code == "config.unknown-partner"
    assert str(settings.home / "partners.yaml") in caught.value.issue.message


def test_smart_defaults_come_from_the_institution_setting(make_settings: MakeSettings) -> None:
    settings = make_settings()
    settings.home.mkdir(parents=True)
    (settings.home / "partners.yaml").write_text(
        "partners: {hkpmc: {auth: smart}}", encoding="utf-8"
    )
    auth = configured_partners(settings)["hkpmc"].auth
    assert (auth.client_id, auth.key, auth.scope) == ("lax2", "lax2", DEFAULT_SCOPE)
    assert auth.signing_keys == settings.signing_keys and auth.token_url is None


def test_an_institution_setting_outside_the_network_is_refused(
    make_settings: MakeSettings,
) -> None:
    with pytest.raises(ConfigError) as caught:
        configured_partners(make_settings(institution="mayo"))
    assert caught.value.code == "config.bad-setting"
    assert "institution: 'mayo'" in caught.value.issue.message


# --- the CLI -----------------------------------------------------------------------------


def test_set_writes_the_home_file_and_list_shows_it(
    home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    token = tmp_path / "token"
    token.write_text("abc\n", encoding="utf-8")
    token.chmod(0o600)  # a secret: owner-only, or it is refused
    url = "https://fhir.hkpmc.example.hk/R4"
    assert main(["partners", "set", "hkpmc", "--url", url, "--auth", "bearer",
                 "--token-file", str(token), "--rate-limit", "5"]) == 0  # fmt: skip
    written = yaml.safe_load((home / "partners.yaml").read_text(encoding="utf-8"))
    assert written == {
        "partners": {
            "hkpmc": {
                "base": url,
                "rate_limit": 5.0,
                "auth": {"type": "bearer", "token_file": str(token)},
            }
        }
    }
    assert not [p for p in home.iterdir() if p.name.startswith(".partners-")]  # no temp left
    capsys.readouterr()
    assert main(["partners", "list", "--json"]) == 0
    listed = {p["id"]: p for p in orjson.loads(capsys.readouterr().out)}
    assert listed["hkpmc"]["endpoint"] == url
    assert listed["hkpmc"]["auth"] == {"type": "bearer", "token_file": str(token)}
    assert listed["hkpmc"]["jurisdiction"] == "HK" and listed["hkpmc"]["max_entries"] == 8
    assert "abc" not in str(listed)  # the token itself is never shown
    assert main(["partners", "list"]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("hkpmc"))
    assert "HK" in line and "bearer" in line and url in line


def test_auth_options_without_auth_change_the_current_auth(home: Path, tmp_path: Path) -> None:
    assert main(["partners", "set", "njmu2", "--auth", "smart", "--scope", "system/*.write"]) == 0
    assert main(["partners", "set", "njmu2", "--token-url", "https://njmu2/token"]) == 0
    written = yaml.safe_load((home / "partners.yaml").read_text(encoding="utf-8"))
    assert written["partners"]["njmu2"]["auth"] == {
        "type": "smart",
        "scope": "system/*.write",
        "token_url": "https://njmu2/token",
    }


def test_set_checks_before_writing(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["partners", "set", "hkpmc", "--url", "https://a.example/fhir"]) == 0
    before = (home / "partners.yaml").read_bytes()
    assert main(["partners", "set", "hkpmc", "--fhir-version", "R5"]) == 2
    assert "config.partner-fhir-version" in capsys.readouterr().err
    assert main(["partners", "set", "hkpmc", "--auth", "bearer"]) == 2  # no token given
    assert main(["partners", "set", "hkpmc", "--auth", "bearer", "--token-file", "/nowhere"]) == 2
    assert main(["partners", "set", "mayo", "--url", "https://mayo.example/fhir"]) == 2
    assert (home / "partners.yaml").read_bytes() == before


def test_a_typo_in_the_overrides_names_the_overrides_not_the_seeds(tmp_path: Path) -> None:
    """`bse:` under nsch in $GATEWAY_HOME/partners.yaml blamed seeds/partners.yaml (where
    nsch's base is): the operator looked for the typo in a file without it."""
    override = tmp_path / "override.yaml"
    override.write_text("partners:\n  nsch:\n    bse: https://x\n", encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_partners(None, Network.load(NETWORK), override=override)
    message = caught.value.issue.message
    assert message.startswith(f"{override}: partners.nsch: unknown keys bse"), message
    assert "did you mean base?" in message


@pytest.mark.parametrize("where", ["override", "network"])
def test_a_yaml_syntax_error_is_one_line_with_file_line_and_column(
    tmp_path: Path, where: str
) -> None:
    """PyYAML's message spans four lines, the bad text and a caret under it."""
    bad = "partners:\n  nsch:\n    base: https://x\n   write: batch\n"
    override = tmp_path / "override.yaml"
    network = tmp_path / "network.yaml"
    network.write_bytes(NETWORK.read_bytes())
    if where == "override":
        override.write_text(bad, encoding="utf-8")
    else:
        network.write_text(NETWORK.read_text(encoding="utf-8") + "  - [\n", encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_partners(None, Network.load(network), override=override)
    message = caught.value.issue.message
    assert caught.value.code == "config.syntax" and "\n" not in message and "^" not in message
    if where == "override":
        assert message.startswith(f"{override}: line 4, column 4: expected <block end>")
    else:
        lines = len(NETWORK.read_text(encoding="utf-8").splitlines())
        assert message.startswith(f"{network}: line {lines + 2}, column 1: ")


def test_a_token_file_that_is_not_there_is_marked_and_checked_first(
    home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A hand-edited token_file that does not exist passed `partners list`, and `partners
    check` reported reachability and the partner's answer before it."""
    home.mkdir(parents=True, exist_ok=True)
    (home / "partners.yaml").write_text(
        "partners:\n  nsch:\n    auth: {type: bearer, token_file: nsch-token}\n",
        encoding="utf-8",
    )
    missing = f"token_file {home / 'nsch-token'}"
    assert main(["partners", "list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[lines.index(next(x for x in lines if x.startswith("nsch "))) + 1].split(
        maxsplit=1
    ) == ["MISSING", missing]
    assert main(["partners", "list", "--json"]) == 0
    listed = {p["id"]: p["missing"] for p in orjson.loads(capsys.readouterr().out)}
    assert listed == {"hkpmc": [], "njmu2": [], "nsch": [missing]}
    assert main(["partners", "check", "nsch"]) == 1  # no request made: the base is not real
    assert capsys.readouterr().out.splitlines() == [
        f"FAIL  nsch  https://fhir.nsch.example.cn/fhir  config: no such file: {missing}"
    ]


def test_a_token_file_others_can_read_is_refused_by_set_and_check(
    home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A bearer token file group or others may read was taken by `partners set` and
    passed `partners check` (which asked the partner with it); the API token file and
    the keys are refused for this. No request is made: the base is not real."""
    token = tmp_path / "nsch-token"
    token.write_text("the-partners-token\n", encoding="utf-8")
    token.chmod(0o644)
    url = "https://fhir.nsch.example.cn/fhir"
    assert main(["partners", "set", "nsch", "--url", url, "--auth", "bearer",
                 "--token-file", str(token)]) == 2  # fmt: skip
    private = f"{token}: the partner token file must be private (chmod 600)"
    assert capsys.readouterr().err.splitlines() == [
        f"error: --token-file: {private} [config.partner-auth]"
    ]
    assert not (home / "partners.yaml").exists()  # nothing written
    home.mkdir(parents=True, exist_ok=True)
    (home / "partners.yaml").write_text(  # a hand edit
        f"partners:\n  nsch:\n    auth: {{type: bearer, token_file: {token}}}\n",
        encoding="utf-8",
    )
    assert main(["partners", "check", "nsch"]) == 1
    assert capsys.readouterr().out.splitlines() == [f"FAIL  nsch  {url}  config: {private}"]


def test_set_and_check_take_the_facility_code_in_any_case(
    home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`partners set NJMU2` wrote a second entry `NJMU2` beside njmu2 (two partners for
    one institution); `partners check NJMU2` said it is not a configured partner."""
    home.mkdir(parents=True, exist_ok=True)
    assert main(["partners", "set", "NJMU2", "--rate-limit", "3"]) == 0
    written = yaml.safe_load((home / "partners.yaml").read_text(encoding="utf-8"))
    assert written == {"partners": {"njmu2": {"rate_limit": 3.0}}}
    capsys.readouterr()
    assert main(["partners", "check", "njmu3"]) == 2
    err = capsys.readouterr().err
    assert "partners check njmu3: no partner" in err and "did you mean njmu2?" in err
