"""Shared fixtures: one demo PKI (``keys init``) per session, a signed and a co-signed
copy of the Lai'an/Nanjing co-branded report's Bundle (tests/golden)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import orjson
import pytest

from gateway.datafiles import data_dir
from gateway.signing import Signer, TrustStore, make_demo_pki, sign_bundle

ROOT = Path(__file__).resolve().parents[2]
GOLDEN_COBRANDED = ROOT / "tests" / "golden" / "cda" / "lax2-ct-report-cobranded.expected.json"
WHEN = dt.datetime.now(dt.UTC).replace(microsecond=0) - dt.timedelta(minutes=1)


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("pki")
    make_demo_pki(data_dir("seeds") / "network.yaml", out)
    return out


@pytest.fixture(scope="session")
def trust(pki: Path) -> TrustStore:
    return TrustStore.load(pki / "ca")


def load_signer(pki: Path, who: str) -> Signer:
    return Signer.load(pki / who / "key.pem", pki / who / "cert.pem")


@pytest.fixture(scope="session")
def lax2(pki: Path) -> Signer:
    return load_signer(pki, "lax2")


@pytest.fixture(scope="session")
def xu_jing(pki: Path) -> Signer:
    return load_signer(pki, "njmu2/xu-jing")


@pytest.fixture(scope="session")
def golden() -> dict[str, Any]:
    bundle: dict[str, Any] = orjson.loads(GOLDEN_COBRANDED.read_bytes())
    return bundle


@pytest.fixture(scope="session")
def cosigned(golden: dict[str, Any], lax2: Signer, xu_jing: Signer) -> dict[str, Any]:
    """The performing hospital signs (author), the Nanjing expert co-signs (verification)."""
    first = sign_bundle(golden, lax2, "author", WHEN)
    return sign_bundle(first, xu_jing, "verification", WHEN + dt.timedelta(seconds=30))
