"""deploy/*.service: systemd units whose commands the gateway's CLI accepts as written,
stopped by SIGTERM to the main process (the supervisor drains its workers itself)."""

from __future__ import annotations

import argparse
import shlex

import pytest

from gateway.cli import build_parser
from tests.conftest import REPO

UNITS = sorted((REPO / "deploy").glob("*.service"))


def _service(path: object) -> dict[str, list[str]]:
    """The [Service] section, every value of keys that repeat (Environment=)."""
    found: dict[str, list[str]] = {}
    section = ""
    for line in path.read_text(encoding="utf-8").splitlines():  # type: ignore[attr-defined]
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            section = line
        elif section == "[Service]":
            key, _, value = line.partition("=")
            found.setdefault(key, []).append(value)
    return found


def _subcommands(parser: argparse.ArgumentParser) -> set[str]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return set(action.choices)
    return set()


@pytest.mark.parametrize("unit", UNITS, ids=[u.name for u in UNITS])
def test_unit_commands_parse_and_stop_gracefully(unit: object) -> None:
    service = _service(unit)
    parser = build_parser()
    for key in ("ExecStartPre", "ExecStart"):
        for line in service.get(key, []):
            argv = shlex.split(line.lstrip("-"))
            assert argv[0].endswith("/gateway"), line
            if argv[1] not in _subcommands(parser):
                pytest.skip(f"`gateway {argv[1]}` is not in this build (another change adds it)")
            parser.parse_args(argv[1:])  # exits (SystemExit) on an unknown option
    assert service["KillSignal"] == ["SIGTERM"] and service["KillMode"] == ["mixed"]
    env = dict(v.split("=", 1) for v in service["Environment"])
    assert env["PROMETHEUS_MULTIPROC_DIR"] == "/run/" + service["RuntimeDirectory"][0]
    assert "GATEWAY_HOME" in env


def test_there_is_a_unit_for_the_api() -> None:
    assert [u.name for u in UNITS] == ["gateway-work.service", "gateway.service"]
