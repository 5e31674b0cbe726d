"""Inbound fixtures: the demo PKI, a receiving gateway (GATEWAY_HOME of its own, as the
Hong Kong partner HKPMC) with partner tokens for NSCH and NJMU2, and the golden
NSCH → HKPMC referral (许嘉玮 / 許嘉瑋) signed by NSCH."""

from __future__ import annotations

import datetime as dt
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from joserfc import jwt
from joserfc.jwk import ECKey

from gateway import Converter, Settings
from gateway.api import TokenSet, create_app
from gateway.datafiles import data_dir
from gateway.signing import Signer, make_demo_pki, sign_bundle
from tests.api.test_app import Client

ROOT = Path(__file__).resolve().parents[2]
GOLDEN_REFERRAL = ROOT / "tests" / "golden" / "hl7v2" / "ref_i12_utf8.expected.json"
LOCAL = "local-api-token-0123456789"  # a local system's API token (never a partner's)
NSCH_TOKEN = "nsch-partner-token-0123456789abcdef"
NJMU2_TOKEN = "njmu2-partner-token-0123456789abcdef"
REFERRAL_SYSTEM = "https://fhir.nsch.example.cn/sid/referral"
PUBLIC_URL = "http://gw"  # inbound_public_url: the in-process test client's base URL
TOKEN_URL = f"{PUBLIC_URL}/auth/token"


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("pki")
    make_demo_pki(data_dir("seeds") / "network.yaml", out)
    return out


def signer(pki: Path, who: str) -> Signer:
    return Signer.load(pki / who / "key.pem", pki / who / "cert.pem")


def make_home(home: Path, pki: Path, institution: str, tokens: dict[str, str]) -> Settings:
    (home / "secrets").mkdir(parents=True, exist_ok=True)
    lines = "".join(f"{partner} {token}\n" for partner, token in tokens.items())
    (home / "secrets" / "partner-tokens").write_text("# partner tokens\n" + lines)
    (home / "secrets" / "partner-tokens").chmod(0o600)  # one others may read is refused
    (home / "gateway.toml").write_text(
        f'institution = "{institution}"\nsigning_trust = "{pki / "ca"}"\nsigning_keys = "{pki}"\n'
        f'inbound_public_url = "{PUBLIC_URL}"\n'  # the test client's own: the assertions' aud
    )
    return Settings.load(home=home, env={})


@pytest.fixture
def hk_settings(tmp_path: Path, pki: Path) -> Settings:
    """The receiving gateway: HKPMC, trusting the demo CA."""
    return make_home(tmp_path / "hkpmc", pki, "hkpmc", {"nsch": NSCH_TOKEN, "njmu2": NJMU2_TOKEN})


@pytest.fixture
def client(hk_settings: Settings, converter: Converter) -> Iterator[Client]:
    app = create_app(hk_settings, converter, TokenSet([LOCAL]))
    yield Client(app)
    app.state.fhir.close()


@pytest.fixture(scope="session")
def referral() -> dict[str, Any]:
    bundle: dict[str, Any] = orjson.loads(GOLDEN_REFERRAL.read_bytes())
    return bundle


@pytest.fixture(scope="session")
def signed_referral(referral: dict[str, Any], pki: Path) -> bytes:
    return orjson.dumps(sign_bundle(referral, signer(pki, "nsch"), "author"))


def partner(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}", "Content-Type": "application/fhir+json"}


LOCAL_AUTH = {"Authorization": f"Bearer {LOCAL}"}


def assertion(
    pki: Path,
    key_of: str,
    client_id: str,
    *,
    aud: str = TOKEN_URL,
    exp_in: int = 240,
    jti: str | None = None,
    sub: str | None = None,
) -> str:
    """A SMART client assertion signed with ``key_of``'s key and certificate chain."""
    who = signer(pki, key_of)
    key = ECKey.import_key((pki / key_of / "key.pem").read_bytes())
    now = int(time.time())
    claims = {
        "iss": client_id,
        "sub": sub or client_id,
        "aud": aud,
        "exp": now + exp_in,
        "iat": now,
        "jti": jti or str(uuid.uuid4()),
    }
    header = {"alg": "ES256", "typ": "JWT", "kid": who.kid, "x5c": list(who.x5c)}
    return jwt.encode(header, claims, key)


def token_form(
    client_assertion: str, scope: str = "system/*.write system/*.read"
) -> dict[str, str]:
    return {
        "grant_type": "client_credentials",
        "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
        "client_assertion": client_assertion,
        "scope": scope,
    }


WHEN = dt.datetime.now(dt.UTC)


def counts(settings: Settings) -> dict[str, int]:
    """Rows of each inbound table in a gateway's store."""
    import sqlalchemy as sa

    from gateway.inbound import bundles, identifiers, resources, tokens
    from gateway.store import open_store

    store = open_store(settings)
    try:
        with store.engine.connect() as conn:
            return {
                t.name: int(conn.execute(sa.select(sa.func.count()).select_from(t)).scalar_one())
                for t in (bundles, resources, identifiers, tokens)
            }
    finally:
        store.close()


NOTHING = {"inbound_bundles": 0, "inbound_resources": 0, "inbound_identifiers": 0}


# The golden referral's patient (许嘉玮 / 許嘉瑋) by NSCH's MRN: the patient a status
# Task names (``for``) and the one the outbox keeps (hashed) for the referral.
MRN = ("https://fhir.nsch.example.cn/sid/mrn", "0098765")
# Another NSCH patient (陈美玲 / 陳美玲) whose referral reused the same number.
OTHER_MRN = ("https://fhir.nsch.example.cn/sid/mrn", "0012345")
NAMES = {MRN: ("许嘉玮", "許嘉瑋"), OTHER_MRN: ("陈美玲", "陳美玲")}


def record_sent(
    settings: Settings,
    to: str,
    referral_id: tuple[str, str],
    patient: tuple[str, str] | None = MRN,
) -> int:
    """The outbox row of a referral (a ServiceRequest with identifier ``referral_id``,
    system and value, for the Patient with identifier ``patient``; None: a referral
    naming no patient) this gateway queued for partner ``to``: the one partner that may
    report its status, for that patient only."""
    from gateway.delivery import Outbox
    from gateway.partners import Partner
    from gateway.store import open_store

    system, value = referral_id
    request = {"method": "PUT", "url": f"ServiceRequest?identifier={system}|{value}"}
    service_request: dict[str, Any] = {
        "resourceType": "ServiceRequest", "status": "active", "intent": "order",
        "identifier": [{"system": system, "value": value}],
    }  # fmt: skip
    entries: list[dict[str, Any]] = []
    if patient is not None:
        url = f"urn:uuid:{uuid.uuid5(uuid.NAMESPACE_URL, '|'.join(patient))}"
        zh, zh_hant = NAMES.get(patient, ("王伟", "王偉"))
        entries.append({
            "fullUrl": url,
            "resource": {"resourceType": "Patient",
                         "identifier": [{"system": patient[0], "value": patient[1]}],
                         "name": [{"text": zh}, {"text": zh_hant}]},
            "request": {"method": "POST", "url": "Patient",
                        "ifNoneExist": f"identifier={patient[0]}|{patient[1]}"},
        })  # fmt: skip
        service_request["subject"] = {"reference": url}
    entries.append({
        "fullUrl": f"urn:uuid:{uuid.uuid5(uuid.NAMESPACE_URL, system + value)}",
        "resource": service_request,
        "request": request,
    })  # fmt: skip
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "identifier": {"system": f"{system}-bundle",
                       "value": f"{value}-{patient[1] if patient else 'none'}"},
        "entry": entries,
    }  # fmt: skip
    store = open_store(settings)
    try:
        row, _ = Outbox(store).enqueue(Partner(to, f"http://{to}-gateway.example/fhir"), bundle)
        return row
    finally:
        store.close()


def kept_by_njmu2(settings: Settings, reference: str = "Patient/p-1") -> None:
    """NJMU2's record about its own ``Patient/p-1`` (applied as its inbound Bundle is:
    its policy agreement does not reach HKPMC)."""
    from gateway.inbound import Resources, apply_bundle
    from gateway.store import open_store, utcnow

    store = open_store(settings)
    try:
        with store.engine.begin() as conn:
            apply_bundle(conn, Resources(store), {
                "resourceType": "Bundle", "type": "transaction",
                "entry": [{"resource": {"resourceType": "Observation", "status": "final",
                                        "code": {"text": "血压"},
                                        "subject": {"reference": reference}},
                           "request": {"method": "POST", "url": "Observation"}}],
            }, "njmu2", None, utcnow())  # fmt: skip
    finally:
        store.close()
