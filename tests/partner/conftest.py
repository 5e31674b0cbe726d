"""The partner: ``../shared/partner-fhir`` (Medplum's router behind a loopback server),
started once per test session on a free port with strict conditional references and
atomic transactions, and stopped at the end.

Skips, saying why, when the folder is not beside the checkout or neither node nor npm
is on PATH (its ``start`` installs the rest from the npm registry into
``PARTNER_FHIR_HOME``, by default a cache folder kept between runs).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import REPO

PARTNER_DIR = Path(os.environ.get("PARTNER_FHIR_DIR") or REPO.parent / "shared" / "partner-fhir")


def _cache_home() -> Path:
    if os.environ.get("PARTNER_FHIR_HOME"):
        return Path(os.environ["PARTNER_FHIR_HOME"])
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "fhir-gateway" / "partner-fhir"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PartnerServer:
    """A running partner-fhir instance and an HTTP client for it."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.http = httpx.Client(base_url=base, timeout=120)

    def reset(self) -> None:
        self.http.post("/$reset").raise_for_status()

    def count(self) -> dict[str, int]:
        answer = self.http.get("/$count")
        answer.raise_for_status()
        return dict(answer.json()["types"])

    def post(self, bundle: dict[str, Any]) -> httpx.Response:
        return self.http.post("", json=bundle, headers={"Content-Type": "application/fhir+json"})

    def search(self, query: str) -> list[dict[str, Any]]:
        answer = self.http.get(query)
        answer.raise_for_status()
        return [e["resource"] for e in answer.json().get("entry", [])]


@pytest.fixture(scope="session")
def partner(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PartnerServer]:
    start = PARTNER_DIR / "start"
    if not start.is_file():
        pytest.skip(f"the partner FHIR server is not beside the checkout ({PARTNER_DIR})")
    if not (shutil.which("node") or shutil.which("npm")):
        pytest.skip("neither node nor npm is on PATH: the partner FHIR server cannot be installed")
    home = _cache_home()
    home.mkdir(parents=True, exist_ok=True)
    port = _free_port()
    env = {
        **os.environ,
        "PARTNER_FHIR_HOME": str(home),
        "PARTNER_FHIR_PORT": str(port),
        "PARTNER_FHIR_CONDITIONAL_REFS": "strict",
        "PARTNER_FHIR_TRANSACTIONS": "on",
        "PARTNER_FHIR_VALIDATE": "on",
        "PARTNER_FHIR_MAX_CONDITIONAL_ENTRIES": "8",  # Medplum's own limit
        "PARTNER_FHIR_FAIL": "none",
    }
    env.pop("PARTNER_FHIR_TOKEN", None)
    started = subprocess.run(
        [str(start)], env=env, capture_output=True, text=True, timeout=900, check=False
    )
    if started.returncode != 0:
        pytest.fail(f"partner-fhir did not start:\n{started.stdout}\n{started.stderr}")
    server = PartnerServer(f"http://127.0.0.1:{port}/fhir/R4")
    try:
        yield server
    finally:
        server.http.close()
        subprocess.run(
            [str(PARTNER_DIR / "stop")], env=env, capture_output=True, timeout=60, check=False
        )
