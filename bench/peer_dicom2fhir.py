"""Worker for bench_imaging.py: times dicom2fhir's DICOM → FHIR R4B conversion.

dicom2fhir is not a dependency of the gateway (it pulls in pandas), so it lives in its
own virtual environment (``bench/.peers/dicom2fhir``, made by ``bench_imaging.py
--setup-peers``) and this script runs there, under that environment's Python. It must
not import the gateway. It talks to the benchmark over stdin/stdout, one JSON object per
line, one answer per request:

* ``{"hello": 1}`` → ``{"versions": {...}}``;
* ``{"check": folder}`` → ``{"ok", "valid", "problem", "bundle"}``: one study folder
  converted, its Bundle JSON, and whether that JSON parses back as an R4B Bundle
  (dicom2fhir builds parts of it with ``model_construct``, which skips validation);
* ``{"run": "dicom2fhir" | "pydicom", "studies": [folder, ...]}`` →
  ``{"wall": s, "cpu": s, "n": instances}``.

What is timed, per study folder, for ``dicom2fhir``: ``asyncio.run(from_directory(folder,
config))`` as dicom2fhir's README shows (it lists the folder recursively, reads each
file's preamble, then ``dcmread(stop_before_pixels=True, force=True)`` and
``to_json_dict`` per file, and builds the fhir.resources models), then
``bundle.model_dump_json()``. ``add_instances`` is on so that its ImagingStudy lists
every instance, as the gateway's does. For ``pydicom``: the bare
``dcmread(path, stop_before_pixels=True)`` of every file, the benchmark's floor, here to
show that this environment reads headers as fast as the gateway's.
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import sys
import time
import warnings
from importlib.metadata import version
from pathlib import Path
from typing import Any

CONFIG: dict[str, Any] = {
    "dicom_timezone": "Asia/Shanghai",
    "generator": {
        "imaging_study": {"add_instances": True},  # list instances, as the gateway does
        "observation": {"add_vital_signs": True},  # its default (no weight/size in the data)
    },
}


def _versions() -> dict[str, str]:
    out: dict[str, str] = {}
    for name in ("dicom2fhir", "pydicom", "fhir.resources", "pydantic", "pandas"):
        try:
            out[name] = version(name)
        except Exception:  # pragma: no cover - a missing package is reported as such
            out[name] = "?"
    return out


def _convert(folder: str) -> Any:
    from dicom2fhir.dicom2fhir import from_directory  # type: ignore[import-not-found]

    # from_directory adds its id function to the config it is given: a copy each time.
    return asyncio.run(from_directory(folder, config=json.loads(json.dumps(CONFIG))))


def _instances(bundle: Any) -> int:
    return sum(
        int(e.resource.numberOfInstances or 0)
        for e in bundle.entry or []
        if e.resource.__resource_type__ == "ImagingStudy"
    )


def _check(folder: str) -> dict[str, Any]:
    from fhir.resources.R4B.bundle import Bundle

    try:
        text = _convert(folder).model_dump_json()
    except Exception as exc:
        return {"ok": False, "valid": False, "problem": f"{type(exc).__name__}: {exc}"[:200]}
    try:
        Bundle.model_validate_json(text)
    except Exception as exc:
        first = str(exc).splitlines()
        problem = " ".join(first[:2])[:200] if first else type(exc).__name__
        return {"ok": True, "valid": False, "problem": problem, "bundle": text}
    return {"ok": True, "valid": True, "problem": "", "bundle": text}


def _run(mode: str, studies: list[str]) -> dict[str, Any]:
    from pydicom import dcmread

    if mode == "pydicom":
        files = [p for s in studies for p in sorted(Path(s).rglob("*")) if p.is_file()]
    gc.collect()
    n = 0
    c0, t0 = time.process_time(), time.perf_counter()
    if mode == "dicom2fhir":
        for folder in studies:
            bundle = _convert(folder)
            bundle.model_dump_json()
            n += _instances(bundle)
    else:
        for path in files:
            dcmread(path, stop_before_pixels=True)
        n = len(files)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    return {"wall": wall, "cpu": cpu, "n": n}


def main() -> int:
    # dicom2fhir's per-file warnings (pydantic serialiser warnings on its Device, pydicom's
    # PN length warnings on its stringified names) would otherwise be printed, and timed,
    # hundreds of times a round: run it as a service would, warnings off.
    warnings.simplefilter("ignore")
    logging.basicConfig(level=logging.ERROR)
    logging.getLogger("pydicom").setLevel(logging.ERROR)
    for line in sys.stdin:
        request = json.loads(line)
        try:
            if "hello" in request:
                answer: dict[str, Any] = {"versions": _versions()}
            elif "check" in request:
                answer = _check(request["check"])
            else:
                answer = _run(request["run"], request["studies"])
        except Exception as exc:
            answer = {"error": f"{type(exc).__name__}: {exc}"[:300]}
        print(json.dumps(answer), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
