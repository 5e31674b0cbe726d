"""Migration 0016_inbound_beside: the identifiers written beside a reference to an
unstored ``Patient/<id>`` are looked up in ``inbound_beside`` now, not read record by
record. A store kept at 0015 holds records with none of those rows: the migration fills
them, or a record kept before it (许嘉玮's MRN beside ``Patient/p-1``) would no longer
be held against another patient's (陈美玲's) written beside the same id, nor against a
Patient created under that id without it. On SQLite and PostgreSQL."""

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
from .test_adversarial_referral_subject import _referral_for
from .test_adversarial_unstored_patient import (
    A_MRN,
    CONDITION,
    OTHER_MRN,
    UNSTORED,
    _new_condition,
    _patient_bundle,
)


@pytest.fixture(params=BACKENDS)
def settings_0015(
    request: pytest.FixtureRequest, tmp_path: Path, pki: Path, converter: Converter,
    referral: dict[str, Any],
) -> Iterator[Settings]:  # fmt: skip
    """A gateway whose store, at 0015, keeps NSCH's referral for the unstored
    ``Patient/p-1`` with 许嘉玮's MRN beside the reference (the rows 0015 had: the
    records and their identifiers, nothing in ``inbound_beside``)."""
    for url in database(request.param, tmp_path):
        settings = make_home(tmp_path / "hkpmc", pki, "hkpmc",
                             {"nsch": NSCH_TOKEN, "njmu2": NJMU2_TOKEN})  # fmt: skip
        toml = settings.home / "gateway.toml"
        toml.write_text(toml.read_text() + f'database_url = "{url}"\n')
        settings = Settings.load(home=settings.home, env={})
        app = create_app(settings, converter, TokenSet([LOCAL]))
        try:
            kept = _post(Client(app), _referral_for(referral, UNSTORED, A_MRN, 1), pki)
            assert kept.status_code == 200, kept.text
        finally:
            app.state.fhir.close()
        _downgrade(settings, "0015_console_outcomes")
        yield settings


def _downgrade(settings: Settings, revision: str) -> None:
    store = open_store(settings)
    try:
        config = Config()
        config.set_main_option(
            "script_location", str(Path(gateway.store.__file__).parent / "migrations")
        )
        with store.engine.execution_options(write=True).begin() as conn:
            config.attributes["connection"] = conn
            command.downgrade(config, revision)
        assert store.revision() == revision
        with store.engine.connect() as conn:
            assert "inbound_beside" not in conn.dialect.get_table_names(conn)
            kept = conn.execute(sa.text("SELECT count(*) FROM inbound_resources")).scalar_one()
        assert kept > 0
    finally:
        store.close()


@pytest.fixture
def upgraded(settings_0015: Settings, converter: Converter) -> Iterator[Client]:
    """The same gateway started again: its store upgraded to the head on opening."""
    app = create_app(settings_0015, converter, TokenSet([LOCAL]))
    yield Client(app)
    app.state.fhir.close()


def test_another_mrn_beside_a_reference_kept_before_the_migration_is_refused(
    upgraded: Client, settings_0015: Settings, referral: dict[str, Any], pki: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    caplog.set_level(logging.INFO, logger="gateway")
    bundle = _referral_for(referral, UNSTORED, None, 2)
    _new_condition(bundle, OTHER_MRN)  # 陈美玲's diagnosis, under 许嘉玮's id
    resp = _post(upgraded, bundle, pki)
    where = f"Bundle.entry[{CONDITION}].resource.subject.identifier"
    _refused(resp, "inbound.identity-mismatch", where, caplog)
    store = open_store(settings_0015)
    try:
        assert store.revision() == "0018_partner_pauses"  # the head
    finally:
        store.close()


def test_a_patient_created_without_the_mrn_kept_before_the_migration_is_refused(
    upgraded: Client, pki: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="gateway")
    resp = _post(upgraded, _patient_bundle([OTHER_MRN], "陈美玲", 1), pki)
    _refused(resp, "inbound.identity-mismatch", "Bundle.entry[0].resource.identifier", caplog)


def test_the_same_mrn_after_the_migration_is_stored(
    upgraded: Client, referral: dict[str, Any], pki: Path
) -> None:
    bundle = _referral_for(referral, UNSTORED, None, 2)
    _new_condition(bundle, A_MRN)
    assert _post(upgraded, bundle, pki).status_code == 200
    created = _post(upgraded, _patient_bundle([A_MRN], "许嘉玮", 1), pki)
    assert created.status_code == 200, created.text
