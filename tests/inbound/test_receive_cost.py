"""What one inbound request costs the store, and the cached trust store: a received
Bundle is one commit (its record, entries, referral Task, kept answer and AuditEvents
together), its conditional look-ups one statement; the trust store is parsed once and
parsed again when it changes."""

from __future__ import annotations

import copy
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from gateway import Converter, Settings
from gateway.api import TokenSet, create_app
from gateway.datafiles import data_dir
from gateway.inbound import TrustCache
from gateway.signing import make_demo_pki, sign_bundle
from gateway.store import open_store
from tests.api.test_app import Client

from .conftest import LOCAL, NOTHING, NSCH_TOKEN, counts, partner, signer


class SqlCount:
    """Commits and statements of every engine while it listens."""

    def __init__(self) -> None:
        self.commits = 0
        self.statements: list[str] = []

    def _commit(self, _conn: Any) -> None:
        self.commits += 1

    def _statement(self, _c: Any, _cur: Any, sql: str, *_: Any) -> None:
        self.statements.append(" ".join(sql.split()))

    def __enter__(self) -> SqlCount:
        sa.event.listen(Engine, "commit", self._commit)
        sa.event.listen(Engine, "before_cursor_execute", self._statement)
        return self

    def __exit__(self, *_: Any) -> None:
        sa.event.remove(Engine, "commit", self._commit)
        sa.event.remove(Engine, "before_cursor_execute", self._statement)


def fresh(referral: dict[str, Any], pki: Path) -> bytes:
    """The golden referral under a Bundle identifier of its own, signed by NSCH."""
    bundle = copy.deepcopy(referral)
    bundle["identifier"]["value"] = f"urn:uuid:{uuid.uuid4()}"
    return orjson.dumps(sign_bundle(bundle, signer(pki, "nsch"), "author"))


def audit_kinds(settings: Settings) -> list[str]:
    store = open_store(settings)
    try:
        with store.engine.connect() as conn:
            query = sa.text("SELECT kind FROM audit_entries ORDER BY idx")
            return [str(k) for k in conn.execute(query).scalars()]
    finally:
        store.close()


def test_an_inbound_request_is_one_commit(
    client: Client, hk_settings: Settings, referral: dict[str, Any], pki: Path
) -> None:
    conditional = [
        e
        for e in referral["entry"]
        if e["request"].get("ifNoneExist") or "?" in e["request"]["url"]
    ]
    assert len(conditional) >= 5  # what the batched look-up is about
    local = {"Authorization": f"Bearer {LOCAL}"}
    assert client.get("/fhir/Task", headers=local).json()["entry"] == []  # store opened
    body = fresh(referral, pki)
    with SqlCount() as sql:
        resp = client.post("/fhir", content=body, headers=partner(NSCH_TOKEN))
    assert resp.status_code == 200, resp.text
    # the Bundle's record, its resources, the referral's Task, the answer kept for a
    # resend and both AuditEvents: one transaction, committed before the answer
    assert sql.commits == 1, sql.statements
    lookups = [s for s in sql.statements if s.startswith("SELECT") and "inbound_identifiers" in s]
    assert len(lookups) == 2  # every entry's condition in one statement; the Task's
    assert audit_kinds(hk_settings)[-2:] == ["signature-verified", "inbound"]
    tasks = client.get("/fhir/Task", headers=local).json()
    assert len(tasks["entry"]) == 1
    with SqlCount() as again:  # the same Bundle: the stored answer, nothing written
        assert client.post("/fhir", content=body, headers=partner(NSCH_TOKEN)).json() == resp.json()
    assert again.commits == 0
    # a second referral Bundle (new identifier, same content): matches, one commit
    with SqlCount() as second:
        later = client.post("/fhir", content=fresh(referral, pki), headers=partner(NSCH_TOKEN))
    assert later.status_code == 200 and second.commits == 1


def test_a_refused_transaction_stores_nothing_and_keeps_its_audit_events(
    client: Client, hk_settings: Settings, referral: dict[str, Any], pki: Path
) -> None:
    bundle = copy.deepcopy(referral)
    for entry in bundle["entry"]:
        if entry["resource"]["resourceType"] == "ServiceRequest":
            entry["resource"]["subject"] = {"reference": f"urn:uuid:{uuid.uuid4()}"}
    body = orjson.dumps(sign_bundle(bundle, signer(pki, "nsch"), "author"))
    resp = client.post("/fhir", content=body, headers=partner(NSCH_TOKEN))
    assert resp.status_code == 422
    assert {k: v for k, v in counts(hk_settings).items() if k in NOTHING} == NOTHING
    assert audit_kinds(hk_settings)[-2:] == ["signature-verified", "inbound"]


@pytest.fixture
def own_trust(tmp_path: Path, pki: Path) -> Path:
    """A trust store folder of this test's own (a copy of the demo CA's)."""
    folder = tmp_path / "trust"
    folder.mkdir()
    for name in ("cert.pem", "crl.pem"):
        shutil.copy(pki / "ca" / name, folder / name)
    return folder


@pytest.fixture
def trusting(tmp_path: Path, pki: Path, own_trust: Path, converter: Converter) -> Iterator[Client]:
    home = tmp_path / "home"
    (home / "secrets").mkdir(parents=True)
    (home / "secrets" / "partner-tokens").write_text(f"nsch {NSCH_TOKEN}\n")
    (home / "secrets" / "partner-tokens").chmod(0o600)
    (home / "gateway.toml").write_text(
        f'institution = "hkpmc"\nsigning_trust = "{own_trust}"\nsigning_keys = "{pki}"\n'
    )
    app = create_app(Settings.load(home=home, env={}), converter, TokenSet([LOCAL]))
    yield Client(app)
    app.state.fhir.close()


def test_the_trust_store_is_parsed_once_and_again_when_it_changes(
    trusting: Client, own_trust: Path, referral: dict[str, Any], pki: Path, tmp_path: Path
) -> None:
    for _ in range(3):
        resp = trusting.post("/fhir", content=fresh(referral, pki), headers=partner(NSCH_TOKEN))
        assert resp.status_code == 200, resp.text
    cache = trusting.app.state.fhir.inbound().trust
    assert cache.loads == 1
    # another network's CA replaces ours: NSCH's signatures are no longer trusted
    other = tmp_path / "other-pki"
    make_demo_pki(data_dir("seeds") / "network.yaml", other)
    for name in ("cert.pem", "crl.pem"):
        shutil.copy(other / "ca" / name, own_trust / name)
    resp = trusting.post("/fhir", content=fresh(referral, pki), headers=partner(NSCH_TOKEN))
    assert resp.status_code == 422
    assert resp.json()["issue"][0]["details"]["coding"][0]["code"].startswith("signing.")
    assert cache.loads == 2


def test_trust_cache_follows_files_added_and_removed(tmp_path: Path, own_trust: Path) -> None:
    home = tmp_path / "h"
    home.mkdir()
    (home / "gateway.toml").write_text(f'signing_trust = "{own_trust}"\n')
    cache = TrustCache(Settings.load(home=home, env={}))
    first = cache.trust()
    assert first is not None and cache.trust() is first and cache.loads == 1
    (own_trust / "crl.pem").unlink()  # a CRL withdrawn
    again = cache.trust()
    assert again is not first and again is not None and again.crls == [] and cache.loads == 2
    shutil.rmtree(own_trust)  # unreadable: the load's error, every time (nothing cached)
    with pytest.raises(Exception, match="trust store"):
        cache.trust()


def test_a_changed_trust_store_applies_to_proxy_certificates_too(
    tmp_path: Path, pki: Path, own_trust: Path, converter: Converter
) -> None:
    """The authenticator kept the first trust store it loaded for the process's life: a
    CA withdrawn from signing_trust still let its client certificates in."""
    from urllib.parse import quote

    home = tmp_path / "proxied"
    (home / "secrets").mkdir(parents=True)
    (home / "gateway.toml").write_text(
        f'institution = "hkpmc"\nsigning_trust = "{own_trust}"\nsigning_keys = "{pki}"\n'
        'inbound_mtls_header = "X-SSL-Client-Cert"\ninbound_mtls_proxies = ["127.0.0.1"]\n'
    )
    client = Client(create_app(Settings.load(home=home, env={}), converter, TokenSet([LOCAL])))
    cert = quote((pki / "nsch" / "cert.pem").read_text())
    headers = {"X-SSL-Client-Cert": cert, "Content-Type": "application/fhir+json"}
    try:
        # not a Bundle: past authentication (400), not refused by it (401)
        assert client.post("/fhir", content=b"{}", headers=headers).status_code == 400
        other = tmp_path / "other-pki"
        make_demo_pki(data_dir("seeds") / "network.yaml", other)
        for name in ("cert.pem", "crl.pem"):
            shutil.copy(other / "ca" / name, own_trust / name)
        assert client.post("/fhir", content=b"{}", headers=headers).status_code == 401
    finally:
        client.app.state.fhir.close()
