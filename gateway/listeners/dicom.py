"""DICOM listeners: a C-STORE SCP (pynetdicom) and the intake behind it and behind
DICOMweb STOW-RS (``gateway/api/_dicomweb.py``).

    modality ──C-STORE──▶ DicomSCP ─┐
                                    ├─▶ DicomIntake.receive ─▶ store (durable) ─▶ 0x0000 / 200
    PACS ─────STOW-RS───▶ /dicomweb ┘         │
                                              ▼  quiet for dicom_quiet_seconds, or commit
                                   DicomIntake.commit ─▶ one message per study ─▶ Bundle

Every instance is stored, and committed, before the sender hears success; a storage
failure answers 0xA700 (out of resources), an instance that cannot be read 0xC000
(cannot understand). Unless ``dicom_keep_pixels`` is set, pixel data and the other
bulk data elements are removed first: the gateway maps headers, and a study's headers
are a few hundred kilobytes where its pixels are hundreds of megabytes.

A study is complete when no instance of it has arrived for ``dicom_quiet_seconds``
(the :class:`StudyCompleter` thread looks every second or so), or when someone says so:
``gateway dicom commit STUDY_UID`` or ``POST /dicomweb/studies/{study}/$commit``.
Its instances then become one message, converted as ``gateway convert`` converts the
same files. A study is converted whole or not at all: a message lacking instances taken
of the study before (their content pruned since) is refused, ``intake.dicom-partial-study``,
instead of replacing the partner's ImagingStudy with a partial one. A commit of a study
with nothing pending (sent again after a timeout, or racing another caller) answers the
study's last message's outcome from the store, in any process and after a restart, and
converts nothing. See docs/listeners-dicom.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import logging
import signal
import sys
import threading
import time
import weakref
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

import orjson
from pydicom import config, dcmread
from pydicom.datadict import dictionary_VR
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.filewriter import dcmwrite
from pydicom.uid import UID, ExplicitVRLittleEndian

from ..audit import audit_log, store_hook
from ..config import Settings
from ..errors import ConfigError, GatewayError, IntakeError, Issue, nul_message
from ..intake.dicom import check_instance, sender_refusal, sent_uid, uid_problem
from ..network import Institution, Network
from ..pipeline import Converter
from ..processing import process_message
from ..store import (
    LISTENER_CHANNELS,
    DicomInstance,
    Incoming,
    MessageFilter,
    Store,
    listener_message,
    open_store,
)
from ._stow import DICOM, Outcome, Part, media_type, response_json, split_multipart
from .shared import ClientCertificate, client_certificate, server_tls_context

__all__ = [
    "CANNOT_UNDERSTAND",
    "DICOM",
    "NOT_AUTHORIZED",
    "OUT_OF_RESOURCES",
    "SUCCESS",
    "WRONG_STUDY",
    "CommitResult",
    "DicomIntake",
    "DicomSCP",
    "DicomService",
    "Instance",
    "Origin",
    "Outcome",
    "Part",
    "StoreFailure",
    "StudyCompleter",
    "add_cli",
    "iter_outcomes",
    "media_type",
    "open_intake",
    "prepare_instance",
    "refuse_for_sender",
    "response_json",
    "split_multipart",
    "start_dicom",
]

log = logging.getLogger("gateway.dicom")

# Storage Service Class statuses (PS3.4 B.2.3) and STOW-RS failure reasons (PS3.18
# §10.5.3), which share their values.
SUCCESS = 0x0000
OUT_OF_RESOURCES = 0xA700  # the store could not keep the instance
WRONG_STUDY = 0xA900  # STOW to /studies/{study}: an instance of another study
NOT_AUTHORIZED = 0x0124  # (PS3.7 C.4) a study whose identifiers name another sender
CANNOT_UNDERSTAND = 0xC000  # not DICOM, damaged, or without valid UIDs
_STUDY_UID = 0x0020000D

# Bulk data: what PS3.18 sends as BulkDataURIs, and what the gateway does not map.
_BULK_TAGS = frozenset(
    {
        0x7FE00010,  # PixelData
        0x7FE00008,  # FloatPixelData
        0x7FE00009,  # DoubleFloatPixelData
        0x54001010,  # WaveformData
        0x56000020,  # SpectroscopyData
        0x00420011,  # EncapsulatedDocument
        0xFFFCFFFC,  # DataSetTrailingPadding
    }
)
_REPEATING_BULK = (0x60003000, 0x50003000)  # OverlayData (60xx,3000), CurveData (50xx,3000)


@dataclass(frozen=True, slots=True)
class Instance:
    """One received instance, ready for the store: its UIDs and its Part 10 bytes
    (bulk data removed unless configured)."""

    study_uid: str
    series_uid: str
    sop_instance_uid: str
    sop_class_uid: str
    data: bytes
    stripped: bool  # bulk data was removed


@dataclass(frozen=True, slots=True)
class Origin:
    """How an instance came: ``listener`` is ``dicom`` (C-STORE) or ``stow``; ``peer``
    the calling AE title and address (``CT01@10.0.0.5:40112``) or the HTTP client's;
    ``sender`` the facility code of the institution it authenticated as (a bound API
    token, a TLS client certificate), kept on its instances: a later refusal of their
    study for that sender refuses them with it (``Store.refuse_study``)."""

    listener: str
    peer: str | None = None
    sender: str | None = None


@dataclass(frozen=True, slots=True)
class CommitResult:
    """A study taken out of the pending instances: its message and how it converted."""

    study_uid: str
    message_id: int
    instances: int | None  # None once the message's content was pruned (retention_days)
    ok: bool
    duplicate: bool  # the same instances were committed before: that message again
    errors: tuple[str, ...] = ()  # "code: message at location", no patient data
    # A duplicate whose conversion (by another process, or thread) had not ended within
    # dicom_commit_wait_seconds: not a failure, its outcome is still to come.
    converting: bool = False

    @property
    def state(self) -> str:
        """``converted``, ``failed`` or ``converting``."""
        return "converting" if self.converting else "converted" if self.ok else "failed"


class StoreFailure(Exception):
    """The store could not keep an instance (database down, disk full): the sender
    gets 0xA700 and may resend."""


def prepare_instance(data: bytes, keep_pixels: bool = False) -> Instance:
    """A Part 10 file as the store keeps it: bulk data removed unless ``keep_pixels``,
    otherwise the bytes as sent. IntakeError when it is not DICOM or lacks a UID."""
    # pydicom's value validation warns with the offending value: no patient data may
    # reach the logs (the DICOM reader does the same).
    config.settings.reading_validation_mode = config.IGNORE
    try:
        ds = dcmread(io.BytesIO(data))
        uids = {
            "study_uid": _uid(ds, 0x0020000D, "StudyInstanceUID"),
            "series_uid": _uid(ds, 0x0020000E, "SeriesInstanceUID"),
            "sop_instance_uid": _uid(ds, 0x00080018, "SOPInstanceUID"),
            "sop_class_uid": _uid(ds, 0x00080016, "SOPClassUID"),
        }
    except InvalidDicomError:
        raise IntakeError(
            "dicom-not-dicom", "the instance is not a DICOM Part 10 file (no DICM prefix)"
        ) from None
    except (ValueError, EOFError, KeyError, TypeError, OverflowError, RecursionError) as exc:
        raise IntakeError(
            "dicom-unreadable", f"the instance cannot be parsed ({type(exc).__name__})"
        ) from None
    check_instance(data)  # cut short (a boundary inside a STOW part), nested too deep
    if keep_pixels or not _strip(ds):
        return Instance(data=data, stripped=False, **uids)
    syntax = UID(ds.file_meta.get("TransferSyntaxUID", ExplicitVRLittleEndian))
    if syntax.is_encapsulated:
        # The dataset of an encapsulated syntax is Explicit VR Little Endian; without
        # its pixels it is exactly that.
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    out = io.BytesIO()
    dcmwrite(out, ds, enforce_file_format=True)
    return Instance(data=out.getvalue(), stripped=True, **uids)


def _uid(ds: Dataset, tag: int, keyword: str) -> str:
    # As sent (pydicom's UID strips TAB, LF, U+001F ... at both ends): what the study's
    # conversion checks, so that an instance it would refuse is not stored first
    text = sent_uid(ds, tag)
    where = f"({tag >> 16:04X},{tag & 0xFFFF:04X}) {keyword}"
    if not text:
        raise IntakeError("dicom-missing-uid", f"the instance has no {keyword}", location=where)
    if "\0" in text:  # inside the value (padding is stripped): no UID character, and
        # PostgreSQL's text holds no NUL (the store failed: the sender retried for ever)
        raise IntakeError("control-characters", nul_message(f"the {keyword}"), location=where)
    problem = uid_problem(text)
    if problem is not None:  # refused now, as the study's conversion would refuse it
        raise IntakeError("dicom-bad-value", f"{where} {problem}", location=where)
    return text


def _strip(ds: Dataset) -> bool:
    """Remove bulk data elements at every depth; True when something was removed."""
    removed = False
    tags = list(ds.keys())  # iterating a Dataset would parse every element
    for tag in [t for t in tags if _is_bulk(int(t))]:
        del ds[tag]
        removed = True
    for tag in ds.keys():  # noqa: SIM118
        # get_item leaves the element raw: only sequences are parsed, so everything
        # else is written back byte for byte.
        raw = ds.get_item(tag)
        vr = raw.VR if raw is not None and raw.VR else _dictionary_vr(int(tag))
        if vr == "SQ":
            for item in ds[tag].value or []:
                removed = _strip(item) or removed
    return removed


def _dictionary_vr(tag: int) -> str | None:
    try:
        return str(dictionary_VR(tag))
    except KeyError:  # a private or unknown element of an implicit VR dataset
        return None


def _is_bulk(tag: int) -> bool:
    return tag in _BULK_TAGS or (tag & 0xFF00FFFF) in _REPEATING_BULK


class DicomIntake:
    """The one way in for DICOM instances, whichever listener received them, over the
    message store (``dicom_instances`` until a study is complete, then one message)."""

    def __init__(
        self,
        settings: Settings,
        store: Store,
        converter: Converter | None = None,
        lock: threading.Lock | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self._converter = converter
        self._network: Network | None = None
        self._network_lock = threading.Lock()  # not _lock: a conversion holds that long
        self._lock = lock or threading.Lock()  # conversions take turns on one converter
        self._commit_lock = threading.Lock()  # a study is taken once, by one thread
        self._audit = store_hook(audit_log(store, settings), channel="dicom")

    @property
    def converter(self) -> Converter:
        with self._lock:
            if self._converter is None:  # built on first use: the SCP starts at once
                self._converter = Converter(self.settings)
            return self._converter

    @property
    def network(self) -> Network:
        """The network the sender check reads: the converter's once built, else loaded
        (the C-STORE SCP checks senders long before a study is converted)."""
        with self._network_lock:
            if self._network is None:
                built = self._converter
                self._network = built.network if built else Network.load(self.settings.network)
            return self._network

    def sender_refusals(
        self, datas: list[bytes], own: Institution | None, sent_by: str
    ) -> dict[str, IntakeError]:
        """Study Instance UID → why, for each study among the instances ``datas`` whose
        identifiers do not name ``own``, the institution that authenticated itself
        (``intake.dicom-sender-mismatch``; ``own`` None: its credential names none)."""
        refused: dict[str, IntakeError] = {}
        for data in datas:
            found = sender_refusal(data, own, self.network, sent_by)
            if found is not None:
                refused.setdefault(*found)
        return refused

    def keep_refused(
        self,
        study_uid: str,
        datas: list[bytes],
        origin: Origin,
        auth_sender: str | None,
        own: Institution | None,
        refusal: IntakeError,
        pending_only: bool = False,
    ) -> None:
        """Keep a study refused for its sender as one rejected message (its instances
        as a commit holds them, with those the same sender sent of it before and are
        still pending: ``Store.refuse_study``), so that the browser shows it and it is
        never converted from the store (processing.sender_refusal). Its sender is the
        institution that sent it, not the one it names: a commit of the same study (no
        sender) is another row, never this one released. ``pending_only``: kept only
        when that sender has instances of it pending."""
        kept = []
        for data in datas:
            try:
                instance = prepare_instance(data, self.settings.dicom_keep_pixels)
            except IntakeError:  # refused as unreadable either way
                continue
            if instance.study_uid == study_uid:
                name = f"{instance.series_uid}/{instance.sop_instance_uid}.dcm"
                kept.append((name, instance.data))
        incoming = Incoming(
            b"",  # the study's zip: Store.refuse_study
            origin.listener,
            "dicom",
            peer=origin.peer,
            auth_sender=auth_sender,
            sender=own.facility if own is not None else None,
            control_id=study_uid,
            state="rejected",
            issues=(refusal.issue,),
        )
        try:
            self.store.refuse_study(incoming, kept, pending_only)
        except Exception:  # refused either way; the log says the store failed
            log.exception("a DICOM study refused for its sender could not be kept")

    def receive(self, data: bytes, origin: Origin, study_uid: str | None = None) -> Instance:
        """Read, strip and store one instance. IntakeError when it cannot be
        understood (or, with ``study_uid``, belongs to another study); StoreFailure
        when the store cannot keep it. Returns only once it is committed."""
        instance = prepare_instance(data, self.settings.dicom_keep_pixels)
        if study_uid is not None and instance.study_uid != study_uid:
            raise IntakeError(
                "dicom-wrong-study",
                "the instance belongs to another study than the request's URL names",
                location="(0020,000D) StudyInstanceUID",
            )
        row = DicomInstance(
            study_uid=instance.study_uid,
            series_uid=instance.series_uid,
            sop_uid=instance.sop_instance_uid,
            data=instance.data,
            channel=origin.listener,
            peer=origin.peer,
            sender=origin.sender,
        )
        try:
            self.store.add_instance(row)
        except Exception as exc:  # whatever the database raises: never a success status
            log.exception("storing a DICOM instance failed")
            raise StoreFailure(type(exc).__name__) from exc
        return instance

    def commit(self, study_uid: str, wait: float | None = None) -> CommitResult | None:
        """Take the study's pending instances into one message and convert it now.
        With nothing pending (or the same instances taken before), the answer is the
        study's last message: its conversion's outcome as the store keeps it, whoever
        converted it and when (a commit sent again after a timeout, another worker,
        before a restart), never a second conversion. While another caller (a worker's
        ``$commit`` racing the completer) is still converting it, its outcome is awaited
        up to ``wait`` seconds (default ``dicom_commit_wait_seconds``), then the result
        says ``converting``. None when the listeners never received the study."""
        with self._commit_lock:
            receipt = self.store.commit_study(study_uid)
            if receipt is not None and not receipt.duplicate:
                converter = self.converter  # first: building it takes process_message's lock
                # A partial study (instances pruned since an earlier commit) fails
                # there, unconverted: intake.dicom-partial-study.
                outcome = process_message(
                    self.store, converter, receipt.id, self._lock, self._audit
                )
                return self._result(study_uid, receipt.id, outcome.state, outcome.issues, False)
        # Outside the lock: other studies need not wait for this one. A duplicate, or
        # nothing pending: the other took every instance first (SQLite: its writer lock
        # orders the two) and may still be converting them, or the study was converted
        # (or refused) before and this is the same commit asked again.
        taken = receipt.id if receipt is not None else self._last_message(study_uid)
        if taken is None:
            return None
        limit = self.settings.dicom_commit_wait_seconds if wait is None else wait
        state, issues = self._outcome_of(taken, limit)
        return self._result(study_uid, taken, state, issues, True)

    def _result(
        self,
        study_uid: str,
        message_id: int,
        state: str,
        issues: list[dict[str, Any]],
        duplicate: bool,
    ) -> CommitResult:
        found = self.store.raw(message_id)
        members = None  # the instances it holds: unknown once its content was pruned
        if found is not None and found[0] is not None:
            members = len(zipfile.ZipFile(io.BytesIO(found[0])).namelist())
        errors = tuple(
            f"{i['code']}: {i['message']}" + (f" at {i['location']}" if i.get("location") else "")
            for i in issues
            if i.get("severity") in ("error", "fatal")
        )
        converting = state == "received"
        return CommitResult(
            study_uid, message_id, members, state == "converted", duplicate, errors, converting
        )

    def _last_message(self, study_uid: str) -> int | None:
        """The newest message the listeners made of the study (its last commit's),
        whatever its state; None when they never received it (``POST /convert`` of the
        same files is not a commit of it)."""
        found = listener_message(self.store, study_uid)
        return None if found is None else found.id

    def _outcome_of(self, message_id: int, wait: float) -> tuple[str, list[dict[str, Any]]]:
        """The state and issues of a message's conversion, once it has one, polling its
        state (one indexed read) for at most ``wait`` seconds; ``received`` with no
        issues when it has none by then. Reading the message's state before its
        conversion ends would answer a failure the conversion may not have."""
        deadline = time.monotonic() + wait
        pause = 0.02
        while self.store.state_of(message_id) == "received":
            left = deadline - time.monotonic()
            if left <= 0:
                return "received", []
            time.sleep(min(pause, left))
            pause = min(pause * 2, 0.5)  # soon for a quick conversion, cheap for a long one
        stored = self.store.get(message_id)
        # The convert stage's outcome: later stages (policy, delivery) move the message
        # on, and their states are not the conversion's.
        outs = [o for o in stored.outcomes if o.current and o.stage == "convert"] if stored else []
        if not outs:  # no conversion recorded: the message's own state
            return (stored.state if stored else "received"), []
        return outs[-1].state, outs[-1].issues

    def resume(self) -> int:
        """Convert the DICOM messages committed but never converted (the process
        stopped in between); returns how many. Run once when the completer starts."""
        ids = [
            m.id
            for m in self.store.find(MessageFilter(state="received"), limit=1000).items
            if m.format == "dicom" and m.channel in LISTENER_CHANNELS
        ]
        done = 0
        for message_id in sorted(ids):
            converter = self.converter
            with self._commit_lock:
                if self.store.state_of(message_id) == "received":  # not converted meanwhile
                    process_message(self.store, converter, message_id, self._lock, self._audit)
                    done += 1
        return done

    def pending(self) -> list[str]:
        """Studies with instances received and not yet committed."""
        return self.store.quiet_studies(timedelta(0))

    def sweep(self, now: datetime | None = None) -> list[CommitResult]:
        """Commit every study that has been quiet for ``dicom_quiet_seconds`` (by the
        store's clock: naive UTC)."""
        done = []
        quiet = timedelta(seconds=self.settings.dicom_quiet_seconds)
        for study in self.store.quiet_studies(quiet, now):
            # No wait: a study another process is converting must not hold up the others.
            result = self.commit(study, wait=0)
            if result is not None:
                done.append(result)
                log.info(
                    "study committed after its quiet period: message %s, %d instances, %s",
                    result.message_id,
                    result.instances,
                    result.state,
                )
        return done


def open_intake(settings: Settings) -> DicomIntake:
    """The DICOM intake over the configured store."""
    return DicomIntake(settings, open_store(settings))


class StudyCompleter:
    """A daemon thread that commits quiet studies (``DicomIntake.sweep``)."""

    def __init__(self, intake: DicomIntake, interval: float | None = None) -> None:
        self.intake = intake
        quiet = intake.settings.dicom_quiet_seconds
        self.interval = interval if interval is not None else min(max(quiet / 4, 0.05), 1.0)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="dicom-completer", daemon=True)

    def start(self) -> StudyCompleter:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        try:
            self.intake.resume()
        except Exception:
            log.exception("converting DICOM messages left from an earlier run failed")
        while not self._stop.wait(self.interval):
            try:
                self.intake.sweep()
            except Exception:  # a failed sweep is retried at the next tick
                log.exception("committing quiet DICOM studies failed")


class DicomSCP:
    """The C-STORE and C-ECHO SCP (pynetdicom). Calling AE titles not in
    ``dicom_allowed_aes`` are rejected at association (A-ASSOCIATE-RJ, "calling AE
    title not recognised"); ``*`` lets any in. AE titles are not authentication: with
    ``dicom_tls_cert``/``dicom_tls_key`` it speaks TLS only, and with ``dicom_tls_ca``
    clients must present a certificate signed by it, an institution's, and each study
    they send must name that institution (``DicomIntake.sender_refusals``), else its
    instances get 0x0124 (refused: not authorized)."""

    def __init__(self, settings: Settings, intake: DicomIntake) -> None:
        from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts
        from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

        self.settings = settings
        self.intake = intake
        allowed = list(settings.dicom_allowed_aes)
        if not allowed:
            raise ConfigError(
                "dicom-no-allowed-aes",
                "dicom_allowed_aes is empty, so no modality could connect: list the calling "
                "AE titles allowed to send, or '*' for any",
                location="dicom_allowed_aes",
            )
        self.ae = AE(ae_title=settings.dicom_ae_title)
        self.ae.require_called_aet = True  # associations must name this AE
        self.ae.require_calling_aet = [] if "*" in allowed else allowed
        for context in AllStoragePresentationContexts:
            # any transfer syntax: headers are read, pixels never decoded
            assert context.abstract_syntax is not None
            self.ae.add_supported_context(context.abstract_syntax, ALL_TRANSFER_SYNTAXES)
        self.ae.add_supported_context(Verification)
        self._server: Any = None
        self._tls = server_tls_context(settings, "dicom")
        # studies refused per association: logged once, not once per instance
        # (and their refusals: the rest of a refused study is refused too)
        self._refused: weakref.WeakKeyDictionary[Any, dict[str, IntakeError]] = (
            weakref.WeakKeyDictionary()
        )
        self._refused_lock = threading.Lock()

    @property
    def address(self) -> tuple[str, int]:
        host, port = self._server.server_address[:2]
        return str(host), int(port)

    def start(self, host: str | None = None, port: int | None = None) -> DicomSCP:
        """Listen in background threads (port 0: a free port, see ``address``)."""
        from pynetdicom import evt

        handlers: list[Any] = [
            (evt.EVT_C_STORE, self._on_store),
            (evt.EVT_C_ECHO, self._on_echo),
        ]
        where = (host or self.settings.dicom_host, self._port(port))
        try:
            self._server = self.ae.start_server(
                where, block=False, evt_handlers=handlers, ssl_context=self._tls
            )
        except OSError as exc:  # the port is taken, or the address is not this machine's
            raise ConfigError(
                "bad-setting",
                f"the DICOM listener cannot listen on {where[0]}:{where[1]}: {exc.strerror}",
                location="dicom_port",
            ) from None
        return self

    def _port(self, port: int | None) -> int:
        if port is not None:
            return port
        if self.settings.dicom_port is None:
            raise ConfigError("bad-setting", "dicom_port is not set", location="dicom_port")
        return self.settings.dicom_port

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server = None

    def _on_echo(self, event: Any) -> int:
        return SUCCESS

    def _on_store(self, event: Any) -> Dataset | int:
        assoc = event.assoc
        peer = assoc.requestor
        origin = Origin("dicom", f"{str(peer.ae_title).strip()}@{peer.address}:{peer.port}")
        data = event.encoded_dataset(include_meta=True)
        if self._tls is not None and self.settings.dicom_tls_ca is not None:
            client = self._client(assoc)
            own = client.institution
            origin = replace(origin, sender=own.facility if own is not None else None)
            refused = self._not_sender(assoc, client, origin, data)
            if refused is not None:
                return _status(NOT_AUTHORIZED, f"{refused.code}: {refused.location}")
        try:
            self.intake.receive(data, origin)
        except GatewayError as exc:
            log.warning("C-STORE refused: %s", exc.issue.line())
            return _status(CANNOT_UNDERSTAND, f"{exc.code}: {exc.location or exc.issue.message}")
        except StoreFailure:
            return _status(OUT_OF_RESOURCES, "the instance could not be stored; send it again")
        return SUCCESS

    def _refused_before(self, assoc: Any, data: bytes) -> IntakeError | None:
        """The refusal of the instance's study earlier on this association, or None: its
        instances sent after the refused one are refused too (a study whole or not at
        all), not left pending to be converted without it."""
        with self._refused_lock:
            seen = dict(self._refused.get(assoc, {}))
        if not seen:  # the usual case: the instance is not read again
            return None
        try:
            ds = dcmread(io.BytesIO(data), stop_before_pixels=True, specific_tags=[_STUDY_UID])
            study = sent_uid(ds, _STUDY_UID)
        except Exception:  # unreadable: the intake refuses it as it would any
            return None
        return seen.get(study)

    def _client(self, assoc: Any) -> ClientCertificate:
        tls = assoc.dul.socket.socket
        return client_certificate(tls.getpeercert(binary_form=True), self.intake.network)

    def _not_sender(
        self, assoc: Any, client: ClientCertificate, origin: Origin, data: bytes
    ) -> IntakeError | None:
        """Why an instance may not be taken from the institution the association's
        client certificate names, or None; a refused study is logged once per
        association (its UID and both institutions), and what that institution sent of
        it before and is still pending (this association or another) is refused with
        it, kept as rejected (``DicomIntake.keep_refused``), never converted without
        the refused instances."""
        sent_by = f"the sender (TLS client certificate {client.name})"
        refused = self.intake.sender_refusals([data], client.institution, sent_by)
        if not refused:
            return self._refused_before(assoc, data)
        study, why = next(iter(refused.items()))
        with self._refused_lock:
            seen = self._refused.setdefault(assoc, {})
            first = study not in seen
            seen.setdefault(study, why)
        if first:
            log.warning("C-STORE study refused: %s", why.issue.line())
        own = client.institution
        self.intake.keep_refused(study, [data], origin, client.name, own, why, pending_only=True)
        return why


class DicomService:
    """What ``gateway serve`` and ``gateway dicom listen`` run: the study completer and,
    when ``dicom_port`` is set, the C-STORE SCP, over one intake."""

    def __init__(self, settings: Settings, intake: DicomIntake, port: int | None = None) -> None:
        self.intake = intake
        self.scp: DicomSCP | None = None
        if port is not None or settings.dicom_port is not None:
            self.scp = DicomSCP(settings, intake).start(port=port)
        self.completer = StudyCompleter(intake).start()

    def stop(self) -> None:
        if self.scp is not None:
            self.scp.stop()
        self.completer.stop()


def start_dicom(settings: Settings, app: Any = None, port: int | None = None) -> DicomService:
    """Start the DICOM listeners (the SCP on ``port``, else ``dicom_port`` when set);
    with the API's ``app``, STOW-RS shares their intake."""
    intake = open_intake(settings)
    if app is not None:
        app.state.dicom_intake = intake
    service = DicomService(settings, intake, port)
    if service.scp is not None:
        host, port = service.scp.address
        tls = ""
        if settings.dicom_tls_cert and settings.dicom_tls_key:
            tls = " over TLS" + (", client certificates" if settings.dicom_tls_ca else "")
        print(
            f"DICOM C-STORE SCP {settings.dicom_ae_title} on {host}:{port}{tls}; calling AEs: "
            f"{', '.join(settings.dicom_allowed_aes)}",
            file=sys.stderr,
        )
    return service


def add_cli(sub: Any) -> None:
    """``gateway dicom commit | pending | listen``."""
    dicom = sub.add_parser("dicom", help="DICOM listeners: commit studies, list pending ones")
    actions = dicom.add_subparsers(dest="dicom_command", required=True)
    commit = actions.add_parser(
        "commit",
        help="convert a study's received instances now (not after its quiet period)",
        description="Convert a study's received instances now. A study converted (or "
        "refused) before, with nothing new pending, answers that outcome again from the "
        "store; nothing is converted twice.",
        epilog="exit status: 0 converted (now or before), 1 failed (now or before), 2 no "
        "instance of the study was received, 3 another process is still converting it",
    )
    commit.add_argument("study", help="Study Instance UID")
    commit.add_argument("--json", action="store_true", help="the result as JSON")
    commit.set_defaults(func=cmd_commit)
    pending = actions.add_parser("pending", help="studies received and not yet committed")
    pending.set_defaults(func=cmd_pending)
    listen = actions.add_parser(
        "listen", help="run the C-STORE SCP and the study completer (no HTTP API)"
    )
    listen.add_argument("--port", type=int, default=None, help="instead of dicom_port")
    listen.set_defaults(func=cmd_listen)


def cmd_commit(args: argparse.Namespace, settings: Settings) -> int:
    result = open_intake(settings).commit(args.study)
    if result is None:
        print(f"error: no instance of study {args.study} was received", file=sys.stderr)
        return 2
    if args.json:
        print(orjson.dumps(dataclasses.asdict(result) | {"state": result.state}).decode())
    else:
        again = " (the same instances as before)" if result.duplicate else ""
        count = "instances pruned" if result.instances is None else f"{result.instances} instances"
        print(f"message {result.message_id}: {count}, {result.state}{again}")
        for line in result.errors:
            print(f"error: {line}", file=sys.stderr)
    # The same for a study converted before (its outcome again). 3: another process is
    # still converting it; its outcome will be the message's state.
    return 0 if result.ok else 3 if result.converting else 1


def cmd_pending(args: argparse.Namespace, settings: Settings) -> int:
    for study in open_intake(settings).pending():
        print(study)
    return 0


def cmd_listen(args: argparse.Namespace, settings: Settings) -> int:
    service = start_dicom(settings, port=args.port)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        stop.wait()
    except KeyboardInterrupt:
        pass
    finally:
        service.stop()
    return 0


def _status(code: int, comment: str) -> Dataset:
    """A failure status with an Error Comment (LO: 64 characters, no patient data)."""
    status = Dataset()
    status.Status = code
    status.ErrorComment = comment[:64]
    return status


def iter_outcomes(
    intake: DicomIntake, parts: Iterator[Part], origin: Origin, study_uid: str | None
) -> list[Outcome]:
    """Receive every application/dicom part of a STOW-RS request; one Outcome each."""
    outcomes = []
    for part in parts:
        if part.content_type != DICOM:
            outcomes.append(Outcome(None, None, CANNOT_UNDERSTAND))
            continue
        try:
            instance = intake.receive(part.data, origin, study_uid)
        except IntakeError as exc:
            sop = _sop_of(part.data)
            reason = WRONG_STUDY if exc.code == "intake.dicom-wrong-study" else CANNOT_UNDERSTAND
            outcomes.append(Outcome(*sop, reason))
        except StoreFailure:
            outcomes.append(Outcome(*_sop_of(part.data), OUT_OF_RESOURCES))
        else:
            outcomes.append(Outcome(instance.sop_class_uid, instance.sop_instance_uid))
    return outcomes


def refuse_for_sender(
    intake: DicomIntake,
    parts: list[Part],
    origin: Origin,
    auth_sender: str,
    own: Institution | None,
) -> list[Issue]:
    """Why a STOW-RS request from an authenticated institution (an API token bound to
    ``own``) may not be taken: one issue per study whose identifiers do not name ``own``,
    each study kept as a rejected message; empty when every study may be taken. The
    caller refuses the whole request on any: nothing of it is stored, so no study is
    converted partly (its other instances taken, the refused ones not)."""
    datas = [p.data for p in parts if p.content_type == DICOM]
    refused = intake.sender_refusals(datas, own, f"the sender (API token {auth_sender})")
    for study, why in refused.items():
        intake.keep_refused(study, datas, origin, auth_sender, own, why)
        log.warning("STOW-RS study refused: %s", why.issue.line())
    return [why.issue for why in refused.values()]


def _sop_of(data: bytes) -> tuple[str | None, str | None]:
    """The SOP Class and Instance UIDs of a refused part, when it has them, as sent
    (several values joined by '\\', as DICOM encodes them: the response's DICOM JSON
    gives them as its values), so that the sender can tell which instance failed:
    str() of pydicom's value gave the Python list text "['1.2', '3.4']"."""
    try:
        tags = [0x00080016, 0x00080018]
        ds = dcmread(io.BytesIO(data), stop_before_pixels=True, specific_tags=tags)
        return sent_uid(ds, 0x00080016) or None, sent_uid(ds, 0x00080018) or None
    except Exception:
        return None, None
