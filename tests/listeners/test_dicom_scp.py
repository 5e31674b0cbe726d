"""The C-STORE SCP: pynetdicom's own SCU sends studies; each instance is stored before
its success status, a complete study becomes one message converted exactly as
`gateway convert` converts the same files; unknown AEs are refused, a store failure
is never answered with success, and pixel data is dropped unless configured."""

from __future__ import annotations

import io
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage, Verification  # type: ignore[attr-defined]

from gateway import ConfigError, Converter, Settings
from gateway.cli import main
from gateway.listeners.dicom import DicomIntake, DicomSCP, StudyCompleter
from gateway.store import MessageFilter, Store
from tests.golden.dicom.make_studies import part10, wang_wei

from .dicom_support import (
    NSCH_CTA,
    SCU_AE,
    allow_writes,
    converted,
    dicom_settings,
    intake_for,
    refuse_writes,
    study_files,
)

NSCH_STUDY = "2.16.156.10011.99.1.1.3.20260615.17"


@pytest.fixture
def running(
    tmp_path: Path, converter: Converter, store: Store
) -> Iterator[tuple[DicomSCP, DicomIntake]]:
    settings = dicom_settings(tmp_path)
    intake = intake_for(settings, converter, store)
    scp = DicomSCP(settings, intake).start("127.0.0.1", 0)
    yield scp, intake
    scp.stop()


def _associate(scp: DicomSCP, calling: str = SCU_AE, called: str = "FHIRGATEWAY") -> object:
    ae = AE(ae_title=calling)
    ae.add_requested_context(CTImageStorage)
    ae.add_requested_context(Verification)
    host, port = scp.address
    return ae.associate(host, port, ae_title=called)


def _send(scp: DicomSCP, datasets: list[Dataset]) -> list[Dataset]:
    assoc = _associate(scp)
    assert assoc.is_established  # type: ignore[attr-defined]
    try:
        # as Part 10 files: the SCU takes the transfer syntax from their file meta
        files = [dcmread(io.BytesIO(part10(ds))) for ds in datasets]
        return [assoc.send_c_store(ds) for ds in files]  # type: ignore[attr-defined]
    finally:
        assoc.release()  # type: ignore[attr-defined]


def _pending(store: Store) -> int:
    with store.engine.connect() as conn:
        return int(conn.exec_driver_sql("SELECT count(*) FROM dicom_instances").scalar_one())


def test_a_study_sent_by_pynetdicom_becomes_the_bundle_gateway_convert_makes(
    tmp_path: Path, converter: Converter, store: Store
) -> None:
    settings = dicom_settings(tmp_path, dicom_quiet_seconds="0.3")
    intake = intake_for(settings, converter, store)
    scp = DicomSCP(settings, intake).start("127.0.0.1", 0)
    completer: StudyCompleter | None = None
    try:
        files = study_files(NSCH_CTA)
        statuses = _send(scp, [dcmread(io.BytesIO(data)) for _, data in files])
        assert [s.Status for s in statuses] == [0x0000] * 8
        # Complete by the quiet-period rule: the completer commits it on its own. Started
        # after the sends: on a loaded machine a 0.3 s gap between two C-STOREs is a quiet
        # period, and a study committed in part is not the file's (a CI run met it).
        completer = StudyCompleter(intake, interval=0.05).start()
        deadline = time.monotonic() + 30
        where = MessageFilter(control_id=NSCH_STUDY)
        while time.monotonic() < deadline:
            page = intake.store.find(where)
            if page.items and page.items[0].state != "received":
                break
            time.sleep(0.05)
    finally:
        if completer is not None:
            completer.stop()
        scp.stop()
    messages = intake.store.find(where).items
    assert len(messages) == 1 and messages[0].state == "converted"
    assert messages[0].channel == "dicom" and messages[0].peer is not None
    assert messages[0].peer.startswith(f"{SCU_AE}@127.0.0.1:")  # who sent it, from where
    message = intake.store.get(messages[0].id)
    assert message is not None
    bundle = message.outcomes[-1].output
    assert bundle == converted(converter, files)  # byte for byte
    studies = [
        e["resource"]
        for e in orjson.loads(bundle)["entry"]
        if e["resource"]["resourceType"] == "ImagingStudy"
    ]
    assert len(studies) == 1 and len(studies[0]["series"]) == 3
    assert studies[0]["numberOfInstances"] == 8


def test_storescu_then_gateway_dicom_commit_from_the_command_line(
    tmp_path: Path, converter: Converter, capsys: pytest.CaptureFixture[str]
) -> None:
    """The applications as a site runs them: `gateway dicom listen`, pynetdicom's
    `storescu` app, `gateway dicom commit`."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    (tmp_path / "gateway.toml").write_text(
        f'dicom_port = {port}\ndicom_allowed_aes = ["{SCU_AE}"]\ndicom_quiet_seconds = 3600\n'
    )
    gateway = [sys.executable, "-m", "gateway", "--home", str(tmp_path)]
    listener = subprocess.Popen([*gateway, "dicom", "listen"], stderr=subprocess.PIPE)
    try:
        assert listener.stderr is not None
        banner = listener.stderr.readline().decode()  # printed once the SCP listens
        assert f"on 127.0.0.1:{port}" in banner, banner
        sent = subprocess.run(
            [
                sys.executable,
                "-m",
                "pynetdicom",
                "storescu",
                "127.0.0.1",
                str(port),
                str(NSCH_CTA),
                "-r",
                "-aet",
                SCU_AE,
                "-aec",
                "FHIRGATEWAY",
                "-cx",
            ],
            capture_output=True,
            timeout=60,
            check=False,
        )
        assert sent.returncode == 0, sent.stderr.decode()
        assert b"Failed" not in sent.stderr, sent.stderr.decode()
    finally:
        listener.terminate()
        listener.communicate(timeout=20)  # also closes its stderr pipe
    store = Store.for_home(tmp_path)
    try:
        assert DicomIntake(Settings.load(home=tmp_path, env={}), store).pending() == [NSCH_STUDY]
        # the command in-process: a second interpreter would only add its start-up time
        assert main(["--home", str(tmp_path), "dicom", "commit", NSCH_STUDY, "--json"]) == 0
        result = orjson.loads(capsys.readouterr().out)
        assert (result["instances"], result["ok"]) == (8, True)
        stored = store.get(result["message_id"])
        assert stored is not None
        assert stored.outcomes[-1].output == converted(converter, study_files(NSCH_CTA))
    finally:
        store.close()


def test_c_echo(running: tuple[DicomSCP, DicomIntake]) -> None:
    assoc = _associate(running[0])
    assert assoc.is_established  # type: ignore[attr-defined]
    status = assoc.send_c_echo()  # type: ignore[attr-defined]
    assoc.release()  # type: ignore[attr-defined]
    assert status.Status == 0x0000


@pytest.mark.parametrize(
    ("calling", "called"), [("INTRUDER", "FHIRGATEWAY"), (SCU_AE, "SOMEONEELSE")]
)
def test_unknown_calling_or_called_ae_is_refused_at_association(
    running: tuple[DicomSCP, DicomIntake], calling: str, called: str
) -> None:
    assoc = _associate(running[0], calling, called)
    assert assoc.is_rejected and not assoc.is_established  # type: ignore[attr-defined]
    assert _pending(running[1].store) == 0


def test_no_allowed_aes_is_a_configuration_error(tmp_path: Path, converter: Converter) -> None:
    settings = dicom_settings(tmp_path, dicom_allowed_aes="")
    with pytest.raises(ConfigError, match="dicom_allowed_aes") as caught:
        DicomSCP(settings, intake_for(settings, converter))
    assert caught.value.code == "config.dicom-no-allowed-aes"


def test_a_store_failure_is_answered_with_a_failure_status_never_success(
    running: tuple[DicomSCP, DicomIntake],
) -> None:
    scp, intake = running
    refuse_writes(intake.store)
    ds = wang_wei(series=1, number=1)
    [status] = _send(scp, [ds])
    assert status.Status == 0xA700  # Refused: out of resources
    assert "stored" in status.ErrorComment and "WANG" not in status.ErrorComment
    assert _pending(intake.store) == 0
    allow_writes(intake.store)
    [status] = _send(scp, [ds])  # the sender's retry succeeds, once it is stored
    assert status.Status == 0x0000 and _pending(intake.store) == 1


def test_an_instance_without_study_uid_cannot_be_understood(
    running: tuple[DicomSCP, DicomIntake],
) -> None:
    scp, intake = running
    [status] = _send(scp, [wang_wei(StudyInstanceUID=None)])
    assert status.Status == 0xC000
    assert "StudyInstanceUID" in status.ErrorComment
    assert _pending(intake.store) == 0


def _with_pixels() -> Dataset:
    ds = wang_wei(series=2, number=1, Rows=4, Columns=4, BitsAllocated=16, BitsStored=12)
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.HighBit, ds.PixelRepresentation = 11, 0
    ds.PixelData = bytes(range(32))
    ds["PixelData"].VR = "OW"
    return ds


def _stored(store: Store) -> Dataset:
    with store.engine.connect() as conn:
        data = conn.exec_driver_sql("SELECT data FROM dicom_instances").scalar_one()
    return dcmread(io.BytesIO(data))


def test_pixel_data_is_not_stored_unless_configured(
    running: tuple[DicomSCP, DicomIntake],
) -> None:
    scp, intake = running
    [status] = _send(scp, [_with_pixels()])
    assert status.Status == 0x0000
    kept = _stored(intake.store)
    assert "PixelData" not in kept
    header = dcmread(io.BytesIO(part10(_with_pixels())))
    del header.PixelData
    assert kept == header and kept.Rows == 4  # the header is kept whole


def test_pixel_data_is_stored_when_configured(
    tmp_path: Path, converter: Converter, store: Store
) -> None:
    settings = dicom_settings(tmp_path, dicom_keep_pixels="true")
    intake = intake_for(settings, converter, store)
    scp = DicomSCP(settings, intake).start("127.0.0.1", 0)
    try:
        [status] = _send(scp, [_with_pixels()])
    finally:
        scp.stop()
    assert status.Status == 0x0000
    assert _stored(intake.store).PixelData == bytes(range(32))


def test_settings_for_the_scp(tmp_path: Path) -> None:
    (tmp_path / "gateway.toml").write_text(
        'dicom_port = 11112\ndicom_allowed_aes = ["CT01", "MR02"]\ndicom_keep_pixels = true\n'
    )
    settings = Settings.load(home=tmp_path, env={"GATEWAY_DICOM_QUIET_SECONDS": "90"})
    assert settings.dicom_port == 11112 and settings.dicom_allowed_aes == ("CT01", "MR02")
    assert settings.dicom_keep_pixels and settings.dicom_quiet_seconds == 90.0
    assert settings.dicom_commit_wait_seconds == 10.0  # the default
    waits = Settings.load(home=tmp_path, env={"GATEWAY_DICOM_COMMIT_WAIT_SECONDS": "0"})
    assert waits.dicom_commit_wait_seconds == 0.0
    assert Settings.load(
        home=tmp_path, env={"GATEWAY_DICOM_ALLOWED_AES": "A, B"}
    ).dicom_allowed_aes == ("A", "B")
    for name, value in [
        ("DICOM_AE_TITLE", "A" * 17),
        ("DICOM_ALLOWED_AES", "BAD\\AE"),
        ("DICOM_PORT", "70000"),
        ("DICOM_QUIET_SECONDS", "soon"),
        ("DICOM_KEEP_PIXELS", "maybe"),
        ("DICOM_COMMIT_WAIT_SECONDS", "-1"),
        ("DICOM_COMMIT_WAIT_SECONDS", "nan"),
        ("DICOM_COMMIT_WAIT_SECONDS", "forever"),
    ]:
        with pytest.raises(ConfigError, match=name.lower()):
            Settings.load(home=tmp_path, env={f"GATEWAY_{name}": value})


def test_a_port_already_taken_is_a_clear_configuration_error(
    running: tuple[DicomSCP, DicomIntake], tmp_path: Path, converter: Converter
) -> None:
    host, port = running[0].address
    settings = dicom_settings(tmp_path / "second")
    with pytest.raises(ConfigError, match=f"cannot listen on 127.0.0.1:{port}"):
        DicomSCP(settings, running[1]).start(host, port)
