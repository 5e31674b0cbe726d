"""Streaming batches (issue 18): one large HL7 v2 file converted one message at a time,
DICOM studies converted whole as their files are read, the progress bar counting
records, the garbage collector tuned for a batch."""

from __future__ import annotations

import gc
import io
import json
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway import Converter
from gateway.cli import BatchGC
from gateway.inputs import DicomInput, dicom_batches
from gateway.intake.hl7v2 import parse_message, split_messages, stream_raw_messages
from gateway.progress import Progress
from tests.gateway_cli import run
from tests.golden.dicom.make_studies import LAX2_CHEST, NSCH_KNEE, instance, part10, wang_wei
from tests.intake.dicom._shown import shown

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples" / "hl7v2"
# A GB 18030 referral from Lai'an and a UTF-8 imaging order from Nansha.
LAX2 = (EXAMPLES / "ref_i12_lax2_to_njmu2.hl7").read_bytes()
NSCH = (EXAMPLES / "omi_o23_nsch_ct.hl7").read_bytes()


def _renumbered(data: bytes, k: int) -> bytes:
    """The message with MSH-10 made unique (a new control id: a new output file)."""
    fields = data.split(b"|")
    fields[9] += b"%06d" % k
    return b"|".join(fields)


def _chunks(data: bytes, size: int) -> Iterator[bytes]:
    return (data[i : i + size] for i in range(0, len(data), size))


# -- the splitter --------------------------------------------------------------------------


def _key(raw: object) -> tuple[object, ...]:
    from gateway.intake.hl7v2 import RawMessage

    assert isinstance(raw, RawMessage)
    try:
        controls: object = parse_message(raw).controls
    except Exception as exc:  # the same error either way
        controls = str(exc)
    error = (raw.error.code, str(raw.error)) if raw.error else None
    return (raw.index, raw.line, raw.segments, error, controls)


_EDGES = [
    b"",
    b"\x1a",
    b"junk line\r" + LAX2,
    b"FHS|^~\\&\rBHS|^~\\&\r" + LAX2 * 3 + b"BTS|3\rFTS|1\r",
    LAX2.replace(b"\r", b"\r\n") * 3,
    LAX2.replace(b"\r", b"\n") * 2 + b"\x1a\x1a",
    b"\xef\xbb\xbf" + LAX2 + b"\r\n\xef\xbb\xbf" + NSCH,
    b"\x0b" + LAX2 + b"\x1c\r\x0b" + NSCH + b"\x1c\r",
    b"\r\n \x0b" + LAX2 + b"\x1c\rtrailing text\r\x0b" + NSCH,  # text after a frame, unclosed
    LAX2 + b"PID|\x01bad\r" + NSCH,  # a control byte in one message only
    b"\x00M\x00S\x00H",  # UTF-16
    b"hello\x00world",  # binary
    LAX2 + b"\x1a" + NSCH,
    b"\r\r" + LAX2 + b"\rMSH",
    b"\x0b\x0b" + LAX2,
]


@pytest.mark.parametrize("size", [1, 3, 7, 64, 4096, 1 << 20])
def test_the_stream_splits_as_the_whole_input_does(size: int) -> None:
    files = sorted(EXAMPLES.glob("*.hl7")) + sorted((REPO / "tests").rglob("*.hl7"))
    inputs = [p.read_bytes() for p in files] + _EDGES
    for data in inputs:
        want = [_key(m) for m in split_messages(data)]
        got = [_key(m) for m in stream_raw_messages(_chunks(data, size))]
        assert got == want, data[:40]


def test_the_stream_is_lazy() -> None:
    """The first message comes before the input is read to its end: nothing holds the
    list of every message."""
    read = 0

    def source() -> Iterator[bytes]:
        nonlocal read
        for k in range(1000):
            read += 1
            yield _renumbered(LAX2, k)

    first = next(stream_raw_messages(source()))
    assert first.index == 1 and read < 10


# -- a large HL7 v2 file -------------------------------------------------------------------


@pytest.mark.parametrize("framing", ["plain", "batch", "mllp"])
def test_a_large_file_converts_as_its_messages_one_by_one(
    converter: Converter, framing: str
) -> None:
    messages = [_renumbered(LAX2 if k % 3 else NSCH, k) for k in range(60)]
    messages[17] = b"MSH|^~\\&|A\rPID|1\r"  # a broken one does not stop the batch
    if framing == "mllp":
        data = b"".join(b"\x0b" + m + b"\x1c\r" for m in messages)
    elif framing == "batch":
        data = b"FHS|^~\\&|LAX2\rBHS|^~\\&|LAX2\r" + b"".join(messages) + b"BTS|60\rFTS|1\r"
    else:
        data = b"".join(messages)
    streamed = list(converter.iter_convert_stream(_chunks(data, 997), "big.hl7"))
    one_by_one = [r for m in messages for r in converter.convert(m, "big.hl7")]
    assert len(streamed) == 60 and sum(r.ok for r in streamed) == 59
    assert [r.bundle_json for r in streamed] == [r.bundle_json for r in one_by_one]
    assert [r.control_id for r in streamed] == [r.control_id for r in one_by_one]
    assert [[i.code for i in r.issues] for r in streamed] == [
        [i.code for i in r.issues] for r in one_by_one
    ]
    assert [r.index for r in streamed] == list(range(1, 61))


def test_gateway_convert_streams_a_file_with_progress(converter: Converter, tmp_path: Path) -> None:
    messages = [_renumbered(LAX2, k) for k in range(40)]
    big = tmp_path / "big.hl7"
    big.write_bytes(b"".join(messages))
    proc = run("convert", str(big), "--progress", home=tmp_path)
    assert proc.returncode == 0, proc.stderr.decode()
    lines = proc.stdout.splitlines()
    assert len(lines) == 40
    expected = [r.bundle for m in messages for r in converter.convert(m)]
    assert [json.loads(line) for line in lines] == expected
    bar = proc.stderr.decode().split("\r")[-1]
    assert "40 records, 0 failed" in bar and "1/1 files" in bar and "100%" in bar


# -- progress ------------------------------------------------------------------------------


def test_progress_counts_records_with_rate_and_eta(converter: Converter) -> None:
    out = io.StringIO()
    progress = Progress(2, out, True, total_bytes=1000)
    for record in converter.convert(LAX2 + NSCH):
        progress.record(record)
    progress.read(400)
    line = progress.line()
    assert "2 records, 0 failed" in line and "/s" in line and " 40%" in line
    assert "ETA 0:" in line and "0/2 files" in line
    progress.read(600)
    progress.file_done()
    assert "ETA" not in progress.line() and "100%" in progress.line()


# -- DICOM batches -------------------------------------------------------------------------


def _knee(number: int) -> bytes:
    knee = instance(
        NSCH_KNEE,
        1,
        number,
        PatientID="0098765",
        InstitutionName="南沙中心医院",
        SpecificCharacterSet="ISO_IR 192",
    )
    return part10(knee)


def _interleaved(folder: Path) -> list[DicomInput]:
    """Two studies' files alternating in one folder, the chest's second series last."""
    files = {
        "1.dcm": part10(wang_wei(series=1, number=1)),
        "2.dcm": _knee(1),
        "3.dcm": part10(wang_wei(series=1, number=2)),
        "4.dcm": _knee(2),
        "5.dcm": part10(wang_wei(series=2, number=1)),
    }
    folder.mkdir()
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return [DicomInput(f"{folder.name}/{n}", folder / n) for n in files]


def test_interleaved_studies_are_each_converted_whole(converter: Converter, tmp_path: Path) -> None:
    items = _interleaved(tmp_path / "pacs")
    batches = dicom_batches(items)
    assert [[i.name[-5:] for i in b] for b in batches] == [
        ["1.dcm", "3.dcm", "5.dcm"],
        ["2.dcm", "4.dcm"],
    ]
    streamed = list(converter.convert_dicom_inputs(items))
    together = list(converter.convert_files([(i.name, i.read()) for i in items]))
    assert [r.control_id for r in streamed] == [LAX2_CHEST, NSCH_KNEE]
    assert [r.index for r in streamed] == [1, 2]
    assert [r.bundle_json for r in streamed] == [r.bundle_json for r in together]
    assert all(r.bundle_json for r in streamed)


def test_only_one_study_is_held_at_a_time(converter: Converter, tmp_path: Path) -> None:
    """The knee's files are read only once the chest study was converted."""
    items = _interleaved(tmp_path / "pacs")
    read: list[int] = []
    records = converter.convert_dicom_inputs(items, on_read=read.append)
    first = next(records)
    assert first.control_id == LAX2_CHEST and len(read) == 3
    assert [r.control_id for r in records] == [NSCH_KNEE] and len(read) == 5


def test_a_file_of_unknown_study_goes_with_its_folder(converter: Converter, tmp_path: Path) -> None:
    folder = tmp_path / "cd"
    folder.mkdir()
    (folder / "good.dcm").write_bytes(part10(wang_wei()))
    (folder / "broken.dcm").write_bytes(part10(wang_wei(number=2, StudyInstanceUID=None)))
    items = [DicomInput(f"cd/{n}", folder / n) for n in ("broken.dcm", "good.dcm")]
    assert len(dicom_batches(items)) == 1
    [record] = converter.convert_dicom_inputs(items)
    assert record.control_id == LAX2_CHEST and record.bundle is None
    assert [e.code for e in record.errors] == ["intake.dicom-missing-uid"]


def test_a_late_file_of_a_converted_study_is_an_error_naming_it(
    converter: Converter, tmp_path: Path
) -> None:
    """An archive that holds another instance of a study converted earlier by the time
    it is read (it held another study when the batch was planned): the study is not
    converted a second time, partly. (An archive that holds it from the start is read
    with the study's loose files: tests/intake/dicom/test_dicom_batches.py.)"""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "a" / "1.dcm").write_bytes(part10(wang_wei(number=1)))

    def archive(data: bytes) -> None:
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as out:
            out.writestr("IM2.dcm", data)
        (tmp_path / "b" / "late.zip").write_bytes(buf.getvalue())

    archive(_knee(1))
    items = [DicomInput("a/1.dcm", tmp_path / "a" / "1.dcm")]
    items.append(DicomInput("b/late.zip", tmp_path / "b" / "late.zip"))
    records = converter.convert_dicom_inputs(items)
    first = next(records)
    archive(part10(wang_wei(number=2)))  # changed between the look and the read
    [late] = records
    assert first.ok and first.control_id == LAX2_CHEST
    assert late.bundle is None and late.index == 2
    [error] = late.errors
    assert error.code == "intake.dicom-late-file" and "b/late.zip" in shown(
        error.message, [(i.name, i.read()) for i in items]
    )
    assert "王" not in error.message and "WANG" not in error.message


def test_gateway_convert_a_dicom_folder_of_interleaved_studies(tmp_path: Path) -> None:
    _interleaved(tmp_path / "pacs")
    proc = run("convert", str(tmp_path / "pacs"), "-o", f"{tmp_path}/out/", home=tmp_path)
    assert proc.returncode == 0, proc.stderr.decode()
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(
        [f"{LAX2_CHEST}.json", f"{NSCH_KNEE}.json"]
    )
    assert b"(of 2 records in 5 files)" in proc.stderr


# -- garbage collector ---------------------------------------------------------------------


def test_batch_gc_freezes_start_up_and_the_warm_up_records() -> None:
    before = gc.get_threshold()
    try:
        collector = BatchGC()
        frozen = gc.get_freeze_count()
        assert frozen > 0 and not gc.isenabled()  # off while the first record warms up
        assert gc.get_threshold()[0] > before[0]
        warmed = [[] for _ in range(1000)]  # what a first record builds and keeps
        collector.record()
        assert gc.isenabled() and gc.get_freeze_count() >= frozen + 1000
        for _ in range(9):
            collector.record()
        collector.close()
        assert gc.isenabled() and gc.get_threshold() == before
        assert gc.get_freeze_count() == 0  # nothing left frozen for what runs next
        del warmed
    finally:
        gc.enable()
        gc.unfreeze()
        gc.set_threshold(*before)
