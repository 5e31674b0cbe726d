"""Settings: file, environment, GATEWAY_HOME isolation, clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway import ConfigError, Settings


def test_defaults_run_on_the_demo_network(tmp_path: Path) -> None:
    settings = Settings.load(home=tmp_path, env={})
    assert settings.network.name == "network.yaml" and settings.network.is_file()
    assert settings.timezone == "+08:00" and settings.validate
    assert settings.out_dir == tmp_path / "out"


def test_file_then_environment(tmp_path: Path) -> None:
    (tmp_path / "gateway.toml").write_text('timezone = "+09:00"\nport = 9000\n')
    settings = Settings.load(home=tmp_path, env={"GATEWAY_PORT": "9100"})
    assert (settings.timezone, settings.port) == ("+09:00", 9100)


def test_gateway_home_from_environment_keeps_two_gateways_apart(tmp_path: Path) -> None:
    a = Settings.load(env={"GATEWAY_HOME": str(tmp_path / "a")})
    b = Settings.load(env={"GATEWAY_HOME": str(tmp_path / "b")})
    assert a.out_dir != b.out_dir and a.secrets_dir.parent == tmp_path / "a"


def test_relative_paths_are_relative_to_home(tmp_path: Path) -> None:
    (tmp_path / "gateway.toml").write_text('network = "my-network.yaml"\n')
    assert Settings.load(home=tmp_path, env={}).network == tmp_path / "my-network.yaml"


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ("colour = 1\n", "unknown settings ['colour']"),
        ("port = [\n", "gateway.toml"),
        ('port = "eighty"\n', "port must be a number"),
        ("port = 70000\n", "port must be 1"),
        ('home = "/elsewhere"\n', "unknown settings ['home']"),  # home is where the file is
        ('timezone = "Asia/Shanghai"\n', "timezone must be an offset"),
        ('validate = "ture"\n', "validate must be true or false"),
    ],
)
def test_bad_configuration_is_a_clear_error(tmp_path: Path, toml: str, message: str) -> None:
    (tmp_path / "gateway.toml").write_text(toml)
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        Settings.load(home=tmp_path, env={})


def test_mllp_connection_limits(tmp_path: Path) -> None:
    """mllp_max_connections and mllp_frame_timeout: defaults, gateway.toml, environment."""
    default = Settings.load(home=tmp_path, env={})
    assert (default.mllp_max_connections, default.mllp_frame_timeout) == (200, 600.0)
    assert default.mllp_idle_timeout == 300.0
    (tmp_path / "gateway.toml").write_text("mllp_max_connections = 50\n")
    env = {"GATEWAY_MLLP_FRAME_TIMEOUT": "120.5"}
    settings = Settings.load(home=tmp_path, env=env)
    assert (settings.mllp_max_connections, settings.mllp_frame_timeout) == (50, 120.5)
    env = {"GATEWAY_MLLP_MAX_CONNECTIONS": "400"}
    assert Settings.load(home=tmp_path, env=env).mllp_max_connections == 400


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("MAX_CONNECTIONS", "0"),
        ("MAX_CONNECTIONS", "2.5"),
        ("MAX_CONNECTIONS", "many"),
        ("FRAME_TIMEOUT", "-1"),
        ("FRAME_TIMEOUT", "0"),
        ("FRAME_TIMEOUT", "ten minutes"),
    ],
)
def test_bad_mllp_limits_are_refused(tmp_path: Path, name: str, value: str) -> None:
    with pytest.raises(ConfigError, match=f"mllp_{name.lower()} must be"):
        Settings.load(home=tmp_path, env={f"GATEWAY_MLLP_{name}": value})


def test_a_bad_value_names_the_file_or_variable_it_came_from(tmp_path: Path) -> None:
    """An operator with a long gateway.toml and a unit file full of GATEWAY_* variables
    must be told which one to fix."""
    (tmp_path / "gateway.toml").write_text('port = "eighty"\n')
    with pytest.raises(ConfigError) as from_file:
        Settings.load(home=tmp_path, env={})
    assert str(from_file.value).startswith(f"error: {tmp_path / 'gateway.toml'}: port must be")
    (tmp_path / "gateway.toml").write_text("port = 8080\n")
    with pytest.raises(ConfigError) as from_env:
        Settings.load(home=tmp_path, env={"GATEWAY_LOG_LEVEL": "verbose"})
    assert str(from_env.value).startswith("error: GATEWAY_LOG_LEVEL: log_level must be one of")


def test_an_unknown_setting_suggests_the_one_meant_not_all_eighty(tmp_path: Path) -> None:
    (tmp_path / "gateway.toml").write_text("prot = 8080\nmlp_port = 2575\n")
    with pytest.raises(ConfigError) as typo:
        Settings.load(home=tmp_path, env={})
    line = str(typo.value)
    assert "'prot': did you mean 'port'?" in line
    assert "'mlp_port': did you mean 'mllp_port'?" in line
    # short, whatever the length of the folder it names (pytest's tmp_path grows)
    assert "delivery_backoff_cap" not in line
    assert len(line.replace(str(tmp_path / "gateway.toml"), "")) < 240


def test_the_secrets_folder_the_gateway_makes_is_owner_only(tmp_path: Path) -> None:
    """$GATEWAY_HOME/secrets, made at the API's first start with its token file, was
    0755: anyone on the host listed which secrets there are. Made 0700 (the pseudonym
    key's first use makes it so too); one that exists is left as it is."""
    from gateway.api import load_tokens
    from gateway.policy import policy_key

    first = Settings.load(home=tmp_path / "a", env={})
    load_tokens(first)
    assert first.secrets_dir.stat().st_mode & 0o777 == 0o700
    second = Settings.load(home=tmp_path / "b", env={})
    policy_key(second, env={})
    assert second.secrets_dir.stat().st_mode & 0o777 == 0o700
    (tmp_path / "c" / "secrets").mkdir(parents=True, mode=0o750)  # the operator's
    third = Settings.load(home=tmp_path / "c", env={})
    load_tokens(third)
    assert third.secrets_dir.stat().st_mode & 0o777 == 0o750
