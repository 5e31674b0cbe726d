"""DICOMweb STOW-RS: a multipart/related request stores every instance before it is
answered (PS3.18 §10.5 Store Instances Response), an explicit commit converts the study
exactly as `gateway convert` converts the same files, failures are reported per
instance with their FailureReason and never as success."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from gateway import Converter, Settings
from gateway.api import TokenSet, create_app
from gateway.listeners.dicom import DicomIntake, Origin, split_multipart
from gateway.store import MessageFilter, Store, utcnow
from tests.api.test_app import Client
from tests.golden.dicom.make_studies import part10, wang_wei

from .dicom_support import (
    LAX2_HEAD,
    NSCH_CTA,
    converted,
    dicom_settings,
    intake_for,
    refuse_writes,
    stored_bundle,
    study_files,
)

TOKEN = "stow-token-0123456789"
BOUNDARY = "gw-7d3a0c5e"
CONTENT_TYPE = f'multipart/related; type="application/dicom"; boundary={BOUNDARY}'
LAX2_HEAD_STUDY = "2.16.156.10011.99.1.4.3.20260610.1"
NSCH_STUDY = "2.16.156.10011.99.1.1.3.20260615.17"
# DICOM JSON keys of the Store Instances Response
FAILED, REFERENCED = "00081198", "00081199"
SOP_INSTANCE, FAILURE_REASON = "00081155", "00081197"


def multipart(parts: list[bytes], kind: str = "application/dicom") -> bytes:
    body = b"".join(
        b"--" + BOUNDARY.encode() + f"\r\nContent-Type: {kind}\r\n\r\n".encode() + p + b"\r\n"
        for p in parts
    )
    return body + b"--" + BOUNDARY.encode() + b"--\r\n"


class Api:
    """The ASGI app called in-process through httpx."""

    def __init__(self, app: FastAPI, intake: DicomIntake) -> None:
        self.app, self.intake = app, intake

    def post(
        self, url: str, body: bytes = b"", token: str | None = TOKEN, **headers: str
    ) -> httpx.Response:
        sent = {"Content-Type": CONTENT_TYPE, **headers}
        if token:
            sent["Authorization"] = f"Bearer {token}"

        return Client(self.app).post(url, content=body, headers=sent)


def stow_api(tmp_path: Path, converter: Converter, store: Store) -> Api:
    """The API with STOW-RS and its DICOM intake on ``store`` (other test files' too)."""
    settings = dicom_settings(tmp_path)
    app = create_app(settings, converter, TokenSet([TOKEN]))
    intake = app.state.dicom_intake = intake_for(settings, converter, store)
    return Api(app, intake)


@pytest.fixture
def api(tmp_path: Path, converter: Converter, store: Store) -> Api:
    return stow_api(tmp_path, converter, store)


def _items(response: httpx.Response, key: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = response.json().get(key, {}).get("Value", [])
    return items


def _value(item: dict[str, Any], tag: str) -> Any:
    return item[tag]["Value"][0]


def test_a_stow_request_becomes_the_bundle_gateway_convert_makes(
    api: Api, converter: Converter
) -> None:
    files = study_files(LAX2_HEAD)
    response = api.post("/dicomweb/studies", multipart([data for _, data in files]))
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/dicom+json"
    stored = _items(response, REFERENCED)
    assert len(stored) == 8 and FAILED not in response.json()
    assert {_value(i, SOP_INSTANCE) for i in stored} == {
        f"{LAX2_HEAD_STUDY}.{s}.{n}"
        for s, n in [(1, 1), (2, 1), (2, 2), (2, 3), (2, 4), (3, 1), (3, 2), (3, 3)]
    }
    assert api.intake.pending() == [LAX2_HEAD_STUDY]  # stored, waiting for completion

    commit = api.post(f"/dicomweb/studies/{LAX2_HEAD_STUDY}/$commit")
    assert commit.status_code == 200, commit.text
    result = commit.json()
    assert (result["instances"], result["converted"], result["errors"]) == (8, True, [])
    messages = api.intake.store.find(MessageFilter(control_id=LAX2_HEAD_STUDY)).items
    assert [m.id for m in messages] == [result["message"]] and messages[0].channel == "stow"
    message = api.intake.store.get(result["message"])
    assert message is not None
    assert message.outcomes[-1].output == converted(converter, files)  # byte for byte
    assert api.intake.pending() == []
    # Asked again (a client that timed out before the answer): the same answer.
    again = api.post(f"/dicomweb/studies/{LAX2_HEAD_STUDY}/$commit")
    assert (again.status_code, again.json()) == (200, result)


def _worker(settings: Settings, converter: Converter, store_url: str) -> tuple[Api, Store]:
    """Another API worker (or the gateway after a restart) on the same database."""
    store = Store.open(store_url)
    app = create_app(settings, converter, TokenSet([TOKEN]))
    app.state.dicom_intake = intake_for(settings, converter, store)
    return Api(app, app.state.dicom_intake), store


@pytest.mark.parametrize("refused", [False, True], ids=["converted", "failed"])
def test_a_commit_asked_again_in_any_worker_answers_the_first_answer(
    api: Api, converter: Converter, store_url: str, refused: bool
) -> None:
    """200 with the same body for a converted study, 422 with the same errors for a
    refused one, from the worker that converted it and from another; one conversion."""
    if refused:  # 王伟's chest CT without PatientID: mapping.no-identity
        study = "2.16.156.10011.99.1.4.3.20260610.2"
        instances = [part10(wang_wei(study, 1, n, PatientID=None)) for n in (1, 2)]
    else:
        study, instances = NSCH_STUDY, [data for _, data in study_files(NSCH_CTA)]
    assert api.post("/dicomweb/studies", multipart(instances)).status_code == 200
    first = api.post(f"/dicomweb/studies/{study}/$commit")
    assert first.status_code == (422 if refused else 200), first.text
    assert first.json()["instances"] == len(instances)
    assert api.post(f"/dicomweb/studies/{study}/$commit").json() == first.json()
    other, other_store = _worker(api.intake.settings, converter, store_url)
    try:
        again = other.post(f"/dicomweb/studies/{study}/$commit")
    finally:
        other_store.close()
    assert (again.status_code, again.json()) == (first.status_code, first.json())
    assert [m.id for m in api.intake.store.find(MessageFilter(control_id=study)).items] == [
        first.json()["message"]
    ]
    message = api.intake.store.get(first.json()["message"])
    assert message is not None
    assert [o.stage for o in message.outcomes] == ["convert"]  # converted once


def test_a_commit_of_a_study_never_received_is_404(api: Api) -> None:
    assert api.post("/dicomweb/studies", multipart([part10(wang_wei())])).status_code == 200
    response = api.post("/dicomweb/studies/1.2.826.0.1.3680043.99.404/$commit")
    assert response.status_code == 404
    issue = response.json()["issue"][0]
    assert issue["details"]["coding"][0]["code"] == "request.no-pending-study"
    assert "was received" in issue["diagnostics"]


def test_an_instance_of_another_study_than_the_url_names_fails_the_others_are_stored(
    api: Api,
) -> None:
    own = [data for _, data in study_files(LAX2_HEAD)][:2]
    other = study_files(NSCH_CTA)[0][1]
    response = api.post(f"/dicomweb/studies/{LAX2_HEAD_STUDY}", multipart([*own, other]))
    assert response.status_code == 202  # some stored, some failed
    assert len(_items(response, REFERENCED)) == 2
    [failed] = _items(response, FAILED)
    assert _value(failed, FAILURE_REASON) == 0xA900
    assert _value(failed, SOP_INSTANCE) == "2.16.156.10011.99.1.1.3.20260615.17.1.1"
    assert api.intake.pending() == [LAX2_HEAD_STUDY]


def test_a_store_failure_is_a_failure_never_success(api: Api) -> None:
    refuse_writes(api.intake.store)
    response = api.post("/dicomweb/studies", multipart([part10(wang_wei())]))
    assert response.status_code == 503
    assert REFERENCED not in response.json()
    [failed] = _items(response, FAILED)
    assert _value(failed, FAILURE_REASON) == 0xA700  # out of resources
    assert api.intake.pending() == []


def test_parts_that_are_not_dicom_cannot_be_understood(api: Api) -> None:
    response = api.post("/dicomweb/studies", multipart([b"not a DICOM file at all"]))
    assert response.status_code == 409  # nothing stored
    [failed] = _items(response, FAILED)
    assert _value(failed, FAILURE_REASON) == 0xC000
    text = api.post("/dicomweb/studies", multipart([part10(wang_wei())], kind="text/plain"))
    assert _value(_items(text, FAILED)[0], FAILURE_REASON) == 0xC000


def test_a_multi_valued_sop_instance_uid_is_echoed_as_dicom_has_it(api: Api) -> None:
    # Refused (one UID is expected), and echoed as its values (DICOM's 'a\\b'), not as
    # the Python list text "['a', 'b']" that matches nothing the sender holds
    uids = ["2.16.156.10011.99.1.4.3.20260610.2.1.1", "2.16.156.10011.99.1.4.3.20260610.2.1.2"]
    ds = wang_wei()
    ds.SOPInstanceUID = uids
    response = api.post("/dicomweb/studies", multipart([part10(ds)]))
    assert response.status_code == 409  # nothing stored
    [failed] = _items(response, FAILED)
    assert _value(failed, FAILURE_REASON) == 0xC000
    assert failed[SOP_INSTANCE]["Value"] == uids


@pytest.mark.parametrize(
    ("kwargs", "status", "code"),
    [
        ({"token": None}, 401, "security.unauthorized"),
        ({"token": "wrong"}, 401, "security.unauthorized"),
        ({"Content-Type": "application/dicom"}, 415, "request.stow-media-type"),
        (
            {"Content-Type": 'multipart/related; type="application/dicom+json"; boundary=x'},
            415,
            "request.stow-media-type",
        ),
        (
            {"Content-Type": 'multipart/related; type="application/dicom"'},
            400,
            "intake.stow-multipart",
        ),
    ],
)
def test_requests_refused_before_anything_is_stored(
    api: Api, kwargs: dict[str, Any], status: int, code: str
) -> None:
    response = api.post("/dicomweb/studies", multipart([part10(wang_wei())]), **kwargs)
    assert response.status_code == status
    assert response.json()["issue"][0]["details"]["coding"][0]["code"] == code
    assert api.intake.pending() == []


def test_a_body_without_its_closing_delimiter_is_refused(api: Api) -> None:
    body = multipart([part10(wang_wei())])[: -len(BOUNDARY) - 6]
    response = api.post("/dicomweb/studies", body)
    assert response.status_code == 400 and "closing delimiter" in response.text
    assert api.intake.pending() == []


def test_multipart_parts_are_split_exactly() -> None:
    binary = bytes(range(256)) + b"\r\n--gw-7d3a0c5\r\n\r\n" + bytes(range(255, -1, -1))
    body = (
        b"preamble\r\n--"
        + BOUNDARY.encode()
        + b"  \r\ncontent-type: Application/DICOM\r\n\r\n"
        + binary
        + b"\r\n--"
        + BOUNDARY.encode()
        + b"\r\n\r\nplain\r\n--"
        + BOUNDARY.encode()
        + b"--\r\nepilogue"
    )
    first, second = split_multipart(body, BOUNDARY)
    assert (first.content_type, first.data) == ("application/dicom", binary)
    assert (second.content_type, second.data) == ("text/plain", b"plain")


def test_a_study_is_committed_after_its_quiet_period(
    tmp_path: Path, converter: Converter, store: Store
) -> None:
    intake = intake_for(dicom_settings(tmp_path, dicom_quiet_seconds="60"), converter, store)
    files = study_files(NSCH_CTA)
    for _, data in files:
        intake.receive(data, Origin("stow"))
    last = utcnow()
    assert intake.sweep(last + timedelta(seconds=59)) == []  # not quiet long enough yet
    assert intake.pending() == [NSCH_STUDY]
    [result] = intake.sweep(last + timedelta(seconds=61))
    assert (result.instances, result.ok) == (8, True)
    assert stored_bundle(intake.store, result) == converted(converter, files)
    assert intake.sweep(last + timedelta(seconds=600)) == [] and intake.pending() == []
