"""Migration 0017_beside_every_reference: ``inbound_beside`` held the identifiers
beside the reference naming whom a record is about only; a store kept at 0016 holds
NSCH's diagnosis of ``Patient/p-1`` whose ``asserter`` (the same id) carries 许嘉玮's
MRN, with no row for it. Filled again for every reference to a Patient, or that
record would not be held against 陈美玲's MRN written beside the same id later, nor
against a Patient created under it without his MRN. On SQLite and PostgreSQL."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.config import Config

import gateway.store
from gateway import Converter, Settings
from gateway.api import TokenSet, create_app
from gateway.store import open_store
from tests.api.test_app import Client
from tests.store.dbs import BACKENDS, database

from .conftest import LOCAL, NJMU2_TOKEN, NSCH_TOKEN, make_home
from .test_adversarial_identity import _post, _refused
from .test_adversarial_second_patient_element import _diagnosis
from .test_adversarial_unstored_patient import (
    A_MRN,
    CONDITION,
    OTHER_MRN,
    UNSTORED,
    _patient_bundle,
)


@pytest.fixture(params=BACKENDS)
def upgraded(
    request: pytest.FixtureRequest, tmp_path: Path, pki: Path, converter: Converter,
    referral: dict[str, Any],
) -> Iterator[Client]:  # fmt: skip
    """A gateway whose store, at 0016, keeps the diagnosis with 许嘉玮's MRN beside its
    asserter alone (0016 wrote no row for it), started again: upgraded on opening."""
    for url in database(request.param, tmp_path):
        settings = make_home(tmp_path / "hkpmc", pki, "hkpmc",
                             {"nsch": NSCH_TOKEN, "njmu2": NJMU2_TOKEN})  # fmt: skip
        toml = settings.home / "gateway.toml"
        toml.write_text(toml.read_text() + f'database_url = "{url}"\n')
        settings = Settings.load(home=settings.home, env={})
        app = create_app(settings, converter, TokenSet([LOCAL]))
        try:
            first = _diagnosis(referral, UNSTORED, None, 1)
            first["entry"][CONDITION]["resource"]["asserter"] = {
                "reference": UNSTORED, "identifier": A_MRN,
            }  # fmt: skip
            kept = _post(Client(app), first, pki)
            assert kept.status_code == 200, kept.text
        finally:
            app.state.fhir.close()
        _as_0016(settings)
        app = create_app(settings, converter, TokenSet([LOCAL]))
        try:
            yield Client(app)
        finally:
            app.state.fhir.close()
        store = open_store(settings)
        try:
            assert store.revision() == "0018_partner_pauses"
        finally:
            store.close()


def _as_0016(settings: Settings) -> None:
    """The store at 0016 as 0016 left it: no row beside an asserter."""
    store = open_store(settings)
    try:
        config = Config()
        config.set_main_option(
            "script_location", str(Path(gateway.store.__file__).parent / "migrations")
        )
        with store.engine.execution_options(write=True).begin() as conn:
            config.attributes["connection"] = conn
            command.downgrade(config, "0016_inbound_beside")
            conn.execute(sa.text("DELETE FROM inbound_beside"))
        assert store.revision() == "0016_inbound_beside"
    finally:
        store.close()


def test_another_mrn_beside_an_id_whose_asserter_was_kept_before_is_refused(
    upgraded: Client, referral: dict[str, Any], pki: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="gateway")
    resp = _post(upgraded, _diagnosis(referral, UNSTORED, OTHER_MRN, 2), pki)
    where = f"Bundle.entry[{CONDITION}].resource.subject.identifier"
    _refused(resp, "inbound.identity-mismatch", where, caplog)
    resp = _post(upgraded, _patient_bundle([OTHER_MRN], "陈美玲", 3), pki)
    _refused(resp, "inbound.identity-mismatch", "Bundle.entry[0].resource.identifier", caplog)
    assert _post(upgraded, _diagnosis(referral, UNSTORED, A_MRN, 4), pki).status_code == 200
