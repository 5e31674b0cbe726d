"""``POST /dicomweb/studies/{study}/$commit`` racing another process's commit of the
same study (``serve --workers N``, or the study completer): the loser's answer is the
winner's outcome (200 / 422 with its errors), or 202 ``"state": "converting"`` while
that conversion runs, never a 422 for a study converting fine elsewhere. The other
process is held inside its conversion (HeldConverter), so the race is deterministic.
STOW itself and a plain commit: tests/listeners/test_dicom_stow.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway import Converter
from gateway.api import TokenSet, create_app
from gateway.listeners.dicom import Origin
from gateway.store import Store
from tests.golden.dicom.make_studies import part10, wang_wei
from tests.listeners.dicom_support import (
    NSCH_CTA,
    another_converting,
    dicom_settings,
    intake_for,
    send_again_as_first_sent,
    study_files,
)
from tests.listeners.test_dicom_stow import NSCH_STUDY, TOKEN, Api, multipart
from tests.store.conftest import store, store_url

__all__ = ["store", "store_url"]  # the store fixtures: SQLite, and PostgreSQL when set

LAX2_CHEST = "2.16.156.10011.99.1.4.3.20260610.2"
RESENT = Origin("stow", "127.0.0.1:40002")  # a PACS sending an instance again


def _api(tmp_path: Path, converter: Converter, store: Store, wait: str) -> Api:
    settings = dicom_settings(tmp_path, dicom_commit_wait_seconds=wait)
    app = create_app(settings, converter, TokenSet([TOKEN]))
    intake = app.state.dicom_intake = intake_for(settings, converter, store)
    return Api(app, intake)


def _stow(api: Api, instances: list[bytes]) -> None:
    assert api.post("/dicomweb/studies", multipart(instances)).status_code == 200


@pytest.mark.parametrize("wait", ["0", "0.2"])
def test_commit_while_another_process_converts_the_study_answers_202_converting(
    tmp_path: Path, converter: Converter, store: Store, store_url: str, wait: str
) -> None:
    api = _api(tmp_path, converter, store, wait)
    instances = [data for _, data in study_files(NSCH_CTA)]
    _stow(api, instances)
    settings = api.intake.settings
    with another_converting(settings, store_url, converter, NSCH_STUDY) as results:
        send_again_as_first_sent(api.intake, instances[0], RESENT)
        response = api.post(f"/dicomweb/studies/{NSCH_STUDY}/$commit")
    first = results["other"]
    assert first is not None and first.ok
    assert response.status_code == 202, response.text
    assert response.json() == {
        "study": NSCH_STUDY,
        "message": first.message_id,
        "instances": len(instances),
        "state": "converting",
        "converted": False,
        "errors": [],
    }
    # Once it has ended, the same commit answers its outcome: converted, same message.
    send_again_as_first_sent(api.intake, instances[0], RESENT)
    again = api.post(f"/dicomweb/studies/{NSCH_STUDY}/$commit")
    assert again.status_code == 200, again.text
    assert (again.json()["message"], again.json()["state"]) == (first.message_id, "converted")


def test_commit_waiting_for_another_process_answers_200_when_it_converts(
    tmp_path: Path, converter: Converter, store: Store, store_url: str
) -> None:
    api = _api(tmp_path, converter, store, "60")
    instances = [data for _, data in study_files(NSCH_CTA)]
    _stow(api, instances)
    settings = api.intake.settings
    with another_converting(
        settings, store_url, converter, NSCH_STUDY, release_on_poll=store
    ) as results:  # it ends while this commit waits
        send_again_as_first_sent(api.intake, instances[0], RESENT)
        response = api.post(f"/dicomweb/studies/{NSCH_STUDY}/$commit")
    first = results["other"]
    assert first is not None and first.ok
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["message"], body["state"], body["converted"], body["errors"]) == (
        first.message_id,
        "converted",
        True,
        [],
    )


def test_commit_waiting_for_another_process_answers_422_with_its_errors(
    tmp_path: Path, converter: Converter, store: Store, store_url: str
) -> None:
    api = _api(tmp_path, converter, store, "60")
    # 王伟's chest CT (GB18030) without PatientID: the conversion fails, mapping.no-identity.
    instances = [part10(wang_wei(LAX2_CHEST, 1, n, PatientID=None)) for n in (1, 2)]
    _stow(api, instances)
    settings = api.intake.settings
    with another_converting(
        settings, store_url, converter, LAX2_CHEST, release_on_poll=store
    ) as results:
        send_again_as_first_sent(api.intake, instances[0], RESENT)
        response = api.post(f"/dicomweb/studies/{LAX2_CHEST}/$commit")
    first = results["other"]
    assert first is not None and not first.ok and first.errors
    assert response.status_code == 422, response.text
    body = response.json()
    assert body["errors"] == list(first.errors)  # the other's errors, not none
    assert (body["message"], body["state"], body["converted"]) == (
        first.message_id,
        "failed",
        False,
    )
    assert any(e.startswith("mapping.no-identity: ") for e in body["errors"])
    assert "王" not in response.text and "0012345" not in response.text


def test_commit_after_another_process_took_every_instance_answers_202_not_404(
    tmp_path: Path, converter: Converter, store: Store, store_url: str
) -> None:
    """Nothing is pending (the other took the whole study first), but its conversion
    is under way: that message is the answer, not "nothing of this study is waiting"."""
    api = _api(tmp_path, converter, store, "0.2")
    instances = [data for _, data in study_files(NSCH_CTA)]
    _stow(api, instances)
    settings = api.intake.settings
    with another_converting(settings, store_url, converter, NSCH_STUDY) as results:
        response = api.post(f"/dicomweb/studies/{NSCH_STUDY}/$commit")
    first = results["other"]
    assert first is not None and first.ok
    assert response.status_code == 202, response.text
    assert (response.json()["message"], response.json()["state"]) == (
        first.message_id,
        "converting",
    )
    # Converted now: a later commit answers that conversion, 200 with the same message.
    later = api.post(f"/dicomweb/studies/{NSCH_STUDY}/$commit")
    assert (later.status_code, later.json()["message"]) == (200, first.message_id)
