"""The conversion pipeline: one declared list of stages, run for every record.

:data:`STAGES` is the one place the order lives: intake → mapping → validation →
serialise, then the places where policy, signing and the outbox will plug in (declared,
not built yet). Each stage has a name (used in logs and in the record's history), a
typed input and output, and the :class:`~gateway.envelope.State` a record reaches when
it passes. ``python -m gateway.stagedoc`` writes the stage table into
docs/architecture.md (a test fails when the two differ).

One :class:`Converter` is built once (it loads and compiles the mappings, the
terminology and the network, and owns its validator) and then converts any number of
inputs. A bad record becomes a :class:`~gateway.envelope.Record` with its issues; an
unexpected exception in one record's stage becomes an ``internal`` issue on that record
(its traceback in the log, without the exception's message); neither stops the others.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Generic, NewType, TypeVar

from .config import Settings
from .envelope import TRANSITIONS, Record, State, Step, dump_json
from .errors import ConfigError, GatewayError, IntakeError, Issue, ValidationError
from .inputs import DicomInput, dicom_batches
from .intake import FORMATS, Unit, detect_format, file_ref
from .intake.cda import check_path as cda_path
from .intake.cda import read_documents
from .intake.dicom import check_path as dicom_path
from .intake.dicom import read_studies
from .intake.hl7v2 import check_path as hl7v2_path
from .intake.hl7v2 import read_messages, stream_messages
from .logs import safe_traceback
from .mapping import Env, MappingSet, Narratives, Terminology
from .metrics import configure_tracing, observe_stage, observe_steps, trace_record, tracing_on
from .network import Network
from .validation import TRANSACTION_PROFILE, Validator

__all__ = [
    "INTERNAL",
    "STAGES",
    "Converter",
    "MappedBundle",
    "RecordFailed",
    "Stage",
    "ValidBundle",
    "dump_json",
    "internal_issue",
    "stage_doc",
    "write_stage_doc",
]

log = logging.getLogger("gateway.pipeline")

# Where each format names the field that picks its mapping (for "unsupported" errors).
_TYPE_FIELD = {
    "hl7v2": "MSH-9",
    "dicom": "(0008,0016) SOPClassUID",
    "cda": "/ClinicalDocument/code",
}

_KIND = {"hl7v2": "message", "dicom": "study", "cda": "document"}  # how errors name records

INTERNAL = "internal"  # the issue code of an unexpected exception in a stage

# What flows between stages. A mapped Bundle may hold frozen values shared with other
# records (the mapping memo, data files): read-only. A record's own, mutable Bundle is
# ``Record.bundle``, parsed from the serialised output.
MappedBundle = NewType("MappedBundle", dict[str, Any])
ValidBundle = NewType("ValidBundle", dict[str, Any])

In = TypeVar("In")
Out = TypeVar("Out")


class RecordFailed(Exception):
    """Raised by a stage that found several problems in its record (not a bug)."""

    def __init__(self, issues: list[Issue]) -> None:
        super().__init__(f"{len(issues)} issues")
        self.issues = issues


@dataclass(frozen=True, slots=True)
class Stage(Generic[In, Out]):
    """One step every record goes through, in :data:`STAGES` order."""

    name: str  # in logs, in Record.history and in internal-error messages
    input: object  # a type (or NewType)
    output: object
    reaches: State | None  # the record's state once the stage passed (None: unchanged)
    summary: str  # one line for docs/architecture.md
    where: str  # the code that does it
    # converter, record, input, trace → output; None: a stage run per routed partner by
    # the outbound path (gateway/delivery/_outbound.py) once the record is stored
    run: Callable[[Converter, Record, In, bool], Out] | None = None


# -- the stages ----------------------------------------------------------------------------


def _intake(conv: Converter, record: Record, unit: Unit, trace: bool) -> Unit:
    """The reader split the input and parsed this record (batch work, timed per record
    in ``_units``); here its outcome is taken over."""
    if unit.error is not None:
        raise unit.error
    if unit.view is None:
        raise IntakeError("unreadable", "the record could not be read")
    if unit.issues:  # most records have none: no generator to make
        record.issues.extend(_named(i, record.label) for i in unit.issues)
    return unit


def _map(conv: Converter, record: Record, unit: Unit, trace: bool) -> MappedBundle:
    seen = len(unit.issues)  # the view may add warnings while the mapping reads it
    view = unit.view
    assert view is not None  # _intake refused a unit without one
    try:
        mapping = conv.mappings[unit.format].for_type(unit.message_type or "")
        if trace:
            view.trace()
        bundle, warnings = mapping.run(view, conv.env, conv.settings.timezone)
        if trace:
            record.unmapped = view.unmapped()
    finally:
        if len(unit.issues) > seen:
            record.issues.extend(_named(i, record.label) for i in unit.issues[seen:])
    if warnings:
        record.issues.extend(_named(w, record.label) for w in warnings)
    conv.narratives.add(bundle, unit.sender)  # Resource.text (dom-6), docs/narrative.md
    return MappedBundle(bundle)


def _validate(conv: Converter, record: Record, bundle: MappedBundle, trace: bool) -> ValidBundle:
    problems = conv.validator.check_bundle(bundle, conv.settings.validate, TRANSACTION_PROFILE)
    if problems:
        raise RecordFailed(problems)
    return ValidBundle(bundle)


def _serialise(conv: Converter, record: Record, bundle: ValidBundle, trace: bool) -> bytes:
    data = dump_json(bundle)
    limit = conv.settings.max_bundle_bytes
    if len(data) > limit:
        raise ValidationError(
            "bundle-too-large",
            f"the Bundle is {len(data):,} bytes, over the limit of {limit:,} "
            "(setting max_bundle_bytes)",
            location="Bundle",
            issue_type="too-costly",
        )
    record.bundle_json = data
    record.mapped = bundle  # read-only: the policy stage reads it instead of parsing data
    return data


STAGES: tuple[Stage[Any, Any], ...] = (
    Stage(
        "intake",
        Unit,
        Unit,
        State.READ,
        "detect the format; split, decode and parse each record into a view "
        "(HL7 v2 terser paths, DICOM study tree, CDA XPath)",
        "gateway/intake/",
        _intake,
    ),
    Stage(
        "mapping",
        Unit,
        MappedBundle,
        State.MAPPED,
        "pick the mapping by the record's type and run it over the view → transaction "
        "Bundle (memoised parts frozen, shared)",
        "gateway/mapping/",
        _map,
    ),
    Stage(
        "validation",
        MappedBundle,
        ValidBundle,
        State.VALIDATED,
        "R4 structure (fhir.resources R4B models, by skeleton); the profile each resource "
        "names in meta.profile, the Bundle's transaction-bundle, else base R4 (cardinality, "
        "fixed/pattern, slicing, bindings, FHIRPath invariants, reference types); "
        "reference integrity",
        "gateway/validation/",
        _validate,
    ),
    Stage(
        "serialise",
        ValidBundle,
        bytes,
        State.CONVERTED,
        "orjson, 2-space indent, stable bytes; size limit (max_bundle_bytes); "
        "`Record.bundle` is parsed back from them: the record's own",
        "gateway/envelope.py",
        _serialise,
    ),
    Stage(
        "policy",
        bytes,
        bytes,
        None,
        "per routed partner, by the outbound path (`PolicyRecords.apply`): allow, remove "
        "or pseudonymise what may not cross the boundary, hold the record until consent "
        "(`held`), or deny it",
        "gateway/policy/",
    ),
    Stage(
        "signing",
        bytes,
        bytes,
        State.SIGNED,
        "per routed partner, by the outbound path, when `signing_rules` names a key: "
        "JWS signature and Provenance (after the partner's report variant)",
        "gateway/signing/",
    ),
    Stage(
        "outbox",
        bytes,
        bytes,
        State.QUEUED,
        "per routed partner, by the outbound path: durable queue per partner; the "
        "deliverer sends it and makes it `delivered` (docs/delivery.md)",
        "gateway/delivery/",
    ),
)


# -- the converter -------------------------------------------------------------------------


class _Broken:
    """A reader that raised: the records it had not yet yielded are lost (its iterator
    is finished); one record stands for them."""

    def __init__(self, index: int, exc: BaseException, ms: float) -> None:
        self.index, self.exc, self.ms = index, exc, ms


AfterStage = Callable[[Stage[Any, Any], Record, Any], None]


class Converter:
    def __init__(self, settings: Settings | None = None) -> None:
        self.settings = settings or Settings.load()
        configure_tracing(self.settings)  # once per process; off: nothing imported
        self.network = Network.load(self.settings.network)
        self.env = Env(Terminology(self.settings.mappings), self.network)
        self.validator = Validator()
        self.narratives = Narratives.load(self.settings.mappings, self.network)
        self.mappings: dict[str, MappingSet] = {}
        for fmt, path_check in _path_checks().items():
            self.mappings[fmt] = MappingSet(
                self.settings.mappings, fmt, self.env, path_check, _TYPE_FIELD[fmt]
            )

    @property
    def hl7v2(self) -> MappingSet:
        return self.mappings["hl7v2"]

    @property
    def message_types(self) -> list[str]:
        return [t for m in self.mappings.values() for t in m.types]

    def convert(
        self,
        data: bytes,
        source: str | None = None,
        fmt: str = "auto",
        trace: bool = False,
        sender: str | None = None,
    ) -> list[Record]:
        return list(self.iter_convert(data, source, fmt, trace, sender))

    def convert_many(self, inputs: Iterable[bytes]) -> Iterator[list[Record]]:
        """``convert(data)`` of each input, in order, the HL7 v2 messages of consecutive
        inputs going through the stages together, stage by stage (see _finish_batch):
        for many small inputs, such as messages kept one by one. Each input is read
        once; its records are logged and measured when its list is handed out."""
        if tracing_on():  # records one after the other, their spans in place (_finish_batch)
            for data in inputs:
                yield self.convert(data)
            return
        held: list[list[tuple[Unit, float]]] = []  # inputs read, not yet converted
        count = 0
        for data in inputs:
            read = self._hl7v2_units(data)
            if read is None:  # not HL7 v2: converted alone
                yield from self._convert_held(held)
                held, count = [], 0
                yield self.convert(data)
                continue
            units, rest = read
            if rest is not None:  # more than a batch, or its reader raised
                yield from self._convert_held(held)
                held, count = [], 0
                # Go on from where the look stopped (the same reader, as convert(data)
                # would read it): every message is read once, at most a batch held.
                yield list(self._stream(itertools.chain(units, rest), "hl7v2", None, False))
                continue
            held.append([(u, ms) for u, ms in units if not isinstance(u, _Broken)])
            count += len(units)
            if count >= _BATCH["hl7v2"]:
                yield from self._convert_held(held)
                held, count = [], 0
        yield from self._convert_held(held)

    def _hl7v2_units(self, data: bytes) -> tuple[list[_Timed], Iterator[_Timed] | None] | None:
        """An HL7 v2 input's first records, read (at most a batch and one): with None
        when that was all of it and its reader did not raise, else with the rest of
        its reader to go on with. None for an input that is not HL7 v2."""
        try:
            kind = detect_format(data)
        except Exception:  # isolation: convert(data) makes it one internal error
            return None
        if kind not in ("hl7v2", "unknown"):  # unknown: the HL7 v2 reader says what is wrong
            return None
        timed = self._units(read_messages(data, network=self.network))
        size = _BATCH["hl7v2"]
        # More than a batch goes batch by batch (instead of holding every record of it,
        # its parsed views, through all the stages), as convert(data) takes it.
        units = list(itertools.islice(timed, size + 1))
        if len(units) > size or any(isinstance(u, _Broken) for u, _ in units):
            return units, timed
        return units, None

    def _convert_held(self, held: list[list[tuple[Unit, float]]]) -> Iterator[list[Record]]:
        if not held:
            return
        flat = [u for units in held for u in units]
        size = _BATCH["hl7v2"]  # inputs add up to less than two batches: at most 32 at once
        starts = range(0, len(flat), size)
        done = [self._finish_batch(flat[n : n + size], None, False) for n in starts]
        records = [(r, d) for d in done for r in d.records]
        start = 0
        for units in held:
            mine = records[start : start + len(units)]
            for record, batch in mine:  # said as its input's list is handed out
                batch.publish(record)
            yield [record for record, _ in mine]
            start += len(units)

    def known_sender(self, facility: str) -> str:
        """The facility code of a sender named by code, key or name; ConfigError when
        the network does not know it (a default sender must give real systems)."""
        inst = self.network.find(facility)
        if inst is None:
            raise ConfigError(
                "unknown-sender",
                f"{facility!r} is not an institution of the network ({self.settings.network})",
            )
        return inst.facility

    def iter_convert(
        self,
        data: bytes,
        source: str | None = None,
        fmt: str = "auto",
        trace: bool = False,
        sender: str | None = None,
    ) -> Iterator[Record]:
        """One Record per message, study or document; never raises for one record's
        fault. ``trace`` also lists, on each Record, the input fields holding data that
        no mapping read (slower: the memo steps aside)."""
        try:
            kind = detect_format(data) if fmt == "auto" else fmt
        except Exception as exc:  # isolation: one input, one internal error
            yield self._broken(_Broken(1, exc, 0.0), source, "unknown")
            return
        if kind == "unknown":
            # The HL7 v2 reader says precisely what is wrong (no MSH, binary data, ...).
            kind = "hl7v2"
        if kind not in FORMATS:
            record = Record(data, source, 1, format=kind)
            supported = ", ".join(FORMATS)
            problem = f"{kind} input is not supported (supported: {supported})"
            record.issues.append(Issue("intake.unsupported-format", problem, record.label))
            record.advance(State.FAILED)
            record.history.append(Step("intake", "failed", 0.0, "intake.unsupported-format"))
            _log_record(record, 0.0)
            yield record
            return
        if kind == "hl7v2":  # what _records does for it, without its generators and _run
            reader = read_messages(data, network=self.network)
            yield from self._stream(self._units(reader), kind, source, trace)
            return
        yield from self._records(kind, [(source or "input", data)], source, trace, sender)

    def iter_convert_stream(
        self, chunks: Iterable[bytes], source: str | None = None, trace: bool = False
    ) -> Iterator[Record]:
        """HL7 v2 given as chunks (a large file read piece by piece): the same Records
        as :meth:`iter_convert` of the joined bytes, made one message at a time, so
        memory does not grow with the input (``gateway convert``)."""
        reader = stream_messages(chunks, network=self.network)
        yield from self._run(reader, "hl7v2", source, trace)

    def convert_files(
        self, items: list[tuple[str, bytes]], trace: bool = False, sender: str | None = None
    ) -> Iterator[Record]:
        """DICOM files of one batch, read together: a study's instances may come in
        many files (a folder, a zip archive, several arguments). ``sender`` (a facility
        code of the network) stands in for studies that do not say who sent them."""
        yield from self._records("dicom", items, None, trace, sender)

    def convert_dicom_inputs(
        self,
        items: list[DicomInput],
        trace: bool = False,
        sender: str | None = None,
        on_read: Callable[[int], None] | None = None,
    ) -> Iterator[Record]:
        """DICOM inputs of one batch, each study converted as soon as its files are read
        and only its files held: :func:`~gateway.inputs.dicom_batches` groups the files
        whole studies at a time (a study's files wherever they are; a file of unknown
        study with its folder). A study met again in a later batch (a file whose header
        changed between the look and the read, or an archive holding an instance of a
        study already converted) is not converted a second time, partly: it fails with
        ``intake.dicom-late-file`` naming the file. ``on_read(n)``: n bytes were read."""
        reader = self._dicom_units(dicom_batches(items), sender, on_read)
        yield from self._run(reader, "dicom", None, trace)

    def _dicom_units(
        self,
        batches: list[list[DicomInput]],
        sender: str | None,
        on_read: Callable[[int], None] | None,
    ) -> Iterator[Unit]:
        limit = self.settings.dicom_max_element_bytes
        done: set[str] = set()  # studies converted by earlier batches
        offset = 0
        for batch in batches:
            loaded = []
            for item in batch:
                data = item.read()
                if on_read is not None:
                    on_read(len(data))
                loaded.append((item.name, data))
            last = 0
            seen: set[str] = set()
            for unit in read_studies(loaded, self.network, sender, max_element_bytes=limit):
                last = unit.index
                unit.index += offset
                study = unit.control_id
                if study is not None and unit.error is None:
                    seen.add(study)
                    if study in done:
                        yield _late(unit, batch)
                        continue
                yield unit
            del loaded  # this batch's bytes go before the next batch's are read
            done |= seen
            offset += last

    def convert_path(self, path: Path, trace: bool = False) -> list[Record]:
        """A file, or a folder of DICOM files (one study spread over files), as the demo
        and the golden files take them."""
        if path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.is_file())
            items = [(str(p.relative_to(path.parent)), p.read_bytes()) for p in files]
            return list(self.convert_files(items, trace=trace))
        return self.convert(path.read_bytes(), source=path.name, trace=trace)

    def _records(
        self,
        kind: str,
        items: list[tuple[str, bytes]],
        source: str | None,
        trace: bool,
        sender: str | None,
    ) -> Iterator[Record]:
        yield from self._run(self._read(kind, items, sender), kind, source, trace)

    def _run(
        self, reader: Iterator[Unit], kind: str, source: str | None, trace: bool
    ) -> Iterator[Record]:
        """The reader's records through the stages, a few at a time (see _BATCH)."""
        return self._stream(self._units(reader), kind, source, trace)

    def _stream(
        self, timed: Iterator[_Timed], kind: str, source: str | None, trace: bool
    ) -> Iterator[Record]:
        """Timed records (``_units``) through the stages, a few at a time (see _BATCH),
        each logged and measured as it is handed out (_Batch.hand_out)."""
        size = 1 if tracing_on() else _BATCH.get(kind, 1)  # tracing: see _finish_batch
        batch: list[tuple[Unit, float]] = []
        for unit, read_ms in timed:
            if isinstance(unit, _Broken):
                # the records before it
                yield from self._finish_batch(batch, source, trace).hand_out()
                batch = []
                yield self._broken(unit, source, kind)
                continue
            batch.append((unit, read_ms))
            if len(batch) >= size:
                yield from self._finish_batch(batch, source, trace).hand_out()
                batch = []
        if batch:
            yield from self._finish_batch(batch, source, trace).hand_out()

    @staticmethod
    def _units(reader: Iterator[Unit]) -> Iterator[_Timed]:
        """The reader's Units, each with the milliseconds the reader took to make it
        (they count in its intake step); an exception inside the reader ends it with
        one ``_Broken``."""
        index = 0
        start = _now()
        try:
            # A for loop rather than next() in a try: no StopIteration raised and caught
            # per input. Nothing here but the reader can raise (no caller throws into
            # this generator; closing it raises GeneratorExit, not an Exception).
            for unit in reader:
                index = unit.index
                yield unit, (_now() - start) * 1000.0  # _ms(start), a call fewer a record
                start = _now()
        except Exception as exc:  # isolation: see _Broken
            yield _Broken(index + 1, exc, _ms(start)), 0.0

    def _read(
        self, kind: str, items: list[tuple[str, bytes]], sender: str | None = None
    ) -> Iterator[Unit]:
        if kind == "hl7v2":
            for _, data in items:
                yield from read_messages(data, network=self.network)
        elif kind == "dicom":
            limit = self.settings.dicom_max_element_bytes
            yield from read_studies(items, self.network, sender, max_element_bytes=limit)
        else:
            for name, data in items:
                yield from read_documents(data, name)

    def _broken(self, broken: _Broken, source: str | None, kind: str) -> Record:
        record = Record(b"", source, broken.index, format=kind, kind=_KIND.get(kind, "message"))
        _internal(record, STAGES[0], broken.exc)
        record.history.append(Step(STAGES[0].name, "failed", broken.ms, INTERNAL))
        _log_record(record, broken.ms)
        return record

    def finish(
        self,
        unit: Unit,
        source: str | None = None,
        trace: bool = False,
        after: AfterStage | None = None,
        read_ms: float = 0.0,
    ) -> Record:
        """Run the built stages of :data:`STAGES` over one read record.

        ``after(stage, record, output)`` is called after each stage that ran, with what
        it handed on (its input when it failed); tests use it to look at, and tamper
        with, each stage's output. ``read_ms`` is the time the reader took to make
        ``unit`` (part of the intake step)."""
        batch = _Batch([], [])
        record = self._finish_one(unit, source, trace, read_ms, batch.faults, after)
        batch.publish(record)
        return record

    def _finish_one(
        self,
        unit: Unit,
        source: str | None,
        trace: bool,
        read_ms: float,
        faults: list[_Fault],
        after: AfterStage | None = None,
    ) -> Record:
        """:meth:`finish` without a word: nothing logged or measured (_Batch.publish)."""
        record = _record(unit, source)
        payload: Any = unit
        stages = STAGES
        for stage in stages:
            if stage.run is None:
                continue  # run per partner by the outbound path, not here
            extra = read_ms if stage is stages[0] else 0.0
            payload = self._stage(stage, record, payload, trace, extra, faults)
            if after is not None:
                after(stage, record, payload)
            if record.state is _FAILED:
                break
        return record

    def _finish_batch(
        self,
        units: list[tuple[Unit, float]],
        source: str | None,
        trace: bool,
    ) -> _Batch:
        """Each stage over every record of ``units`` in turn, then the next stage (each
        record's outcome as if it went alone). Stage by stage rather than record by
        record because a stage's code and data (the mapping's, the validator's) stay in
        the CPU caches across the records of the batch instead of being evicted by the
        other stages between two records: measured on fresh messages, every stage costs
        less (narratives alone: ~34 µs hot, ~90 µs with the caches evicted).

        Nothing is logged or measured here: a consumer may stop after any record (a
        caller that breaks out of its loop), and the records after it, converted ahead
        in this batch, must not be counted as converted. Each record's log lines,
        stage observations and spans are made from its history when it is handed out
        (_Batch.hand_out), which keeps the stage-by-stage speed (the same calls, later)."""
        faults: list[_Fault] = []
        if len(units) == 1 or tracing_on():
            # One message per input (the API, MLLP): nothing to share. Tracing: a
            # record's spans end when it is done (trace_record), so its stages must
            # run back to back, or its spans would be placed after the whole batch
            # (with tracing on, _stream hands batches of one, convert_many inputs alone).
            records = []
            for unit, ms in units:  # a loop, not a list comprehension: one call fewer
                records.append(self._finish_one(unit, source, trace, ms, faults))
            return _Batch(records, faults)
        records = [_record(unit, source) for unit, _ in units]
        payloads: list[Any] = [unit for unit, _ in units]
        live: Iterable[int] = range(len(units))  # the records that have not failed
        for stage in STAGES:
            if stage.run is None:
                continue  # run per partner by the outbound path, not here
            first, failed = stage is STAGES[0], False
            for n in live:
                record = records[n]
                extra = units[n][1] if first else 0.0  # the reader's time: the intake step's
                payloads[n] = self._stage(stage, record, payloads[n], trace, extra, faults)
                failed = failed or record.state is State.FAILED
            if failed:
                live = [n for n in live if records[n].state is not State.FAILED]
        return _Batch(records, faults)

    def _stage(
        self,
        stage: Stage[Any, Any],
        record: Record,
        payload: Any,
        trace: bool,
        extra: float,
        faults: list[_Fault],
    ) -> Any:
        """One stage over one record, taken down in its history and state (``extra`` ms
        added to its time; an unexpected exception's log line kept in ``faults``): its
        output, its input when it failed (the record is then ``failed``). The metric and
        the log lines are made from the history when the record is handed out."""
        assert stage.run is not None  # _finish_batch runs only these
        start = _now()
        try:
            payload = stage.run(self, record, payload, trace)
        except GatewayError as exc:
            record.issues.append(exc.with_record(record.label).issue)
            code: str | None = exc.code
        except RecordFailed as exc:
            record.issues.extend(_named(i, record.label) for i in exc.issues)
            code = exc.issues[0].code if exc.issues else INTERNAL
            if not exc.issues:  # a stage failed without saying why: a bug
                _internal(record, stage, exc, faults)
        except Exception as exc:  # isolation: one record, one internal error
            _internal(record, stage, exc, faults)
            code = INTERNAL
        else:
            code = None
        ms = (_now() - start) * 1000.0 + extra
        if code is None:
            reaches = stage.reaches
            if reaches is not None:
                # Record.advance's check written out (four times a record); it still
                # raises the TransitionError of a move the states do not allow.
                if reaches in TRANSITIONS[record.state]:
                    record.state = reaches
                else:
                    record.advance(reaches)
            record.history.append(_step((stage.name, "ok", ms, None)))
        else:
            if record.state is not State.FAILED:
                record.advance(State.FAILED)
            record.history.append(_step((stage.name, "failed", ms, code)))
        return payload


_Timed = tuple[Unit | _Broken, float]  # a record as read, with the reader's milliseconds
# An unexpected exception's log line, said when its record is handed out: the record,
# the stage, the exception's type and its safe traceback.
_Fault = tuple[Record, str, str, str]


@dataclass(slots=True)
class _Batch:
    """Records through the stages, not yet handed out: nothing about them logged or
    measured yet. ``publish`` says it for one record (its history, as each stage took
    it down), as the record leaves for its consumer."""

    records: list[Record]
    faults: list[_Fault]

    def hand_out(self) -> Iterator[Record]:
        """The records, each published only when the consumer takes it: a consumer
        that stops never has the records after its last one counted as converted."""
        for record in self.records:
            self.publish(record)
            yield record

    def publish(self, record: Record) -> None:
        """The record's stage observations (gateway_stage_duration_seconds), its DEBUG
        line per stage (after the ERROR line of a stage that raised), its spans and its
        INFO line: what converting it alone would have said, in that order."""
        debug = log.isEnabledFor(logging.DEBUG)
        faults = [f for f in self.faults if f[0] is record] if self.faults else []
        if not (debug or faults):  # the common case: only the stage observations
            observe_steps(record.history)
            _done(record)
            return
        for stage, outcome, ms, code in record.history:
            for fault in faults:
                if fault[1] == stage:
                    _log_fault(record, *fault[1:])
            observe_stage(stage, ms / 1000.0)
            if debug:
                _log_step(record, stage, outcome, code, ms)
        _done(record)


# HL7 v2 records go through the stages this many at a time (Converter._finish_batch):
# small messages, so a batch holds little; a DICOM study or a CDA document is large and
# goes alone (one study held at a time).
_BATCH = {"hl7v2": 32}


def _record(unit: Unit, source: str | None) -> Record:
    return Record(
        unit.raw,
        source,
        unit.index,
        unit.line,
        unit.format,
        unit.kind,
        charset=unit.charset,
        control_id=unit.control_id,
        message_type=unit.message_type,
        sender=unit.sender,
    )


def _done(record: Record) -> None:
    """A record through the stages: its spans (when tracing is on) and its log line."""
    trace_record(record)
    if log.isEnabledFor(logging.INFO):
        _log_record(record, sum([step.ms for step in record.history]))  # all its stages


def _late(unit: Unit, batch: list[DicomInput]) -> Unit:
    """A study met again after it was converted: an error naming the file that brought
    it (the batch's file peeked at as that study, else its first file of unknown study)."""
    culprit = next(
        (i for i in batch if unit.control_id in i.studies.uids),
        next((i for i in batch if not i.studies.whole), batch[0]),
    )
    error = IntakeError(
        "dicom-late-file",
        f"{file_ref(culprit.name)}: holds an instance of a study already converted "
        "earlier in the batch; a study is converted once, whole (convert this file "
        "again together with the study's other files)",
        location="(0020,000D) StudyInstanceUID",
    )
    return Unit(b"", unit.index, "dicom", kind="study", control_id=unit.control_id, error=error)


def internal_issue(stage: str, record: str | None = None) -> Issue:
    """The issue standing for an unexpected exception in ``stage``: its message never
    carries the exception's text (it may quote patient data); the log has the
    traceback."""
    return Issue(
        INTERNAL,
        f"unexpected error in stage {stage}; see the gateway log",
        record,
        severity="error",
        details={"issue_type": "exception"},
    )


def _internal(
    record: Record, stage: Stage[Any, Any], exc: BaseException, faults: list[_Fault] | None = None
) -> None:
    """The record fails with an ``internal`` issue; its ERROR line is logged now, or,
    given ``faults``, kept there until the record is handed out (_Batch.publish)."""
    record.issues.append(internal_issue(stage.name, record.label))
    if record.state is not State.FAILED:
        record.advance(State.FAILED)
    fault = (record, stage.name, type(exc).__name__, safe_traceback(exc))
    if faults is None:
        _log_fault(*fault)
    else:
        faults.append(fault)


def _log_fault(record: Record, stage: str, kind: str, traceback: str) -> None:
    log.error(
        "unexpected error in stage %s: %s",
        stage,
        kind,
        extra={
            "record": record.log_id,
            "stage": stage,
            "outcome": "failed",
            "code": INTERNAL,
            "traceback": traceback,
        },
    )


def _log_step(record: Record, stage: str, outcome: str, code: str | None, ms: float) -> None:
    log.debug(
        "stage %s",
        outcome,
        extra={
            "record": record.log_id,
            "stage": stage,
            "outcome": outcome,
            "code": code,
            "ms": round(ms, 3),
        },
    )


def _log_record(record: Record, ms: float) -> None:
    if not log.isEnabledFor(logging.INFO):
        return
    failed = record.state is State.FAILED
    code = record.errors[0].code if failed and record.errors else None
    log.info(
        "record %s",
        record.state.value,
        extra={
            "record": record.log_id,
            "stage": record.history[-1].stage if record.history else None,
            "outcome": record.state.value,
            "code": code,
            "ms": round(ms, 3),
        },
    )


_now = time.perf_counter
_FAILED = State.FAILED

# Step((stage, outcome, ms, code)) without the named tuple's __new__ (a Python function):
# four a record, made in _stage
_step = partial(tuple.__new__, Step)


def _ms(start: float) -> float:
    return (_now() - start) * 1000.0


def _path_checks() -> dict[str, Callable[[str], None]]:
    """Each format's path checker: mapping files are checked against it at load time."""
    return {"hl7v2": hl7v2_path, "dicom": dicom_path, "cda": cda_path}


def _named(issue: Issue, label: str) -> Issue:
    return issue if issue.record else dataclasses.replace(issue, record=label)


# -- the stage list, drawn into docs/architecture.md ---------------------------------------

DOC_BEGIN = "<!-- stages:begin (generated by `python -m gateway.stagedoc`; do not edit) -->"
DOC_END = "<!-- stages:end -->"


def _type_name(kind: object) -> str:
    return getattr(kind, "__name__", str(kind))


def stage_doc() -> str:
    """The stage list and the record states, as Markdown, from :data:`STAGES` and
    :data:`~gateway.envelope.TRANSITIONS`."""

    built = [s.name for s in STAGES if s.run is not None]
    per_partner = [f"({s.name})" for s in STAGES if s.run is None]
    lines = [
        "```",
        "bytes ─▶ " + " ─▶ ".join(built + per_partner),
        "```",
        "",
        "| # | stage | input → output | record state after | code | what it does |",
        "|---|---|---|---|---|---|",
    ]
    for n, s in enumerate(STAGES, 1):
        name = s.name if s.run is not None else f"{s.name} (per partner)"
        where = f"`{s.where}`" if s.where != "-" else "—"
        lines.append(
            f"| {n} | {name} | `{_type_name(s.input)}` → `{_type_name(s.output)}` "
            f"| {f'`{s.reaches.value}`' if s.reaches else 'unchanged'} | {where} "
            f"| {s.summary} |"
        )
    lines += [
        "",
        "Record states and the moves allowed between them (`Record.advance` raises "
        "`TransitionError` for any other):",
        "",
        "| state | may become |",
        "|---|---|",
    ]
    for state, targets in TRANSITIONS.items():
        nxt = ", ".join(f"`{t.value}`" for t in sorted(targets, key=_state_order)) or "—"
        lines.append(f"| `{state.value}` | {nxt} |")
    return "\n".join(lines) + "\n"


def _state_order(state: State) -> int:
    return list(State).index(state)


def write_stage_doc(path: Path) -> bool:
    """Put :func:`stage_doc` between the markers of ``path``; True when it changed."""
    text = path.read_text(encoding="utf-8")
    head, _, rest = text.partition(DOC_BEGIN)
    _, _, tail = rest.partition(DOC_END)
    if DOC_BEGIN not in text or DOC_END not in rest:
        raise ValueError(f"{path}: the markers {DOC_BEGIN!r} … {DOC_END!r} are missing")
    new = f"{head}{DOC_BEGIN}\n{stage_doc()}{DOC_END}{tail}"
    if new != text:
        path.write_text(new, encoding="utf-8")
    return new != text
