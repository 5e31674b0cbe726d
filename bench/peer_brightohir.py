"""Worker for bench_convert.py: times brightohir's HL7 v2 → FHIR R5 conversion.

brightohir is not a dependency of the gateway, so it lives in its own virtual
environment (``bench/.peers/brightohir``, made by ``bench_convert.py --setup-peers``) and
this script runs there, under that environment's Python. It must not import the
gateway. It talks to the benchmark over stdin/stdout, one JSON object per line:

1. in: ``{"messages": [[base64 bytes, codec], ...]}`` → out: one report per message
   (converted? through hl7apy or brightohir's own fallback parser? valid R5 Bundle?)
   and the library versions;
2. in: ``{"run": passes, "subset": [index, ...]}`` → out: ``{"wall": s, "cpu": s, "n": k}``
   for ``passes`` passes over the subset (decode, convert, serialise), repeated until
   the input closes.

What is timed per message: ``bytes.decode(codec)`` then ``V2Converter().convert(text)``
(what ``brightohir.v2_to_r5`` does) then ``json.dumps`` of the Bundle dict. brightohir
does not validate what it returns; validity against the fhir.resources R5 models is
checked once, untimed, and reported.
"""

from __future__ import annotations

import base64
import gc
import json
import sys
import time
from importlib.metadata import version
from typing import Any


def _versions() -> dict[str, str]:
    out: dict[str, str] = {}
    for name in ("brightohir", "hl7apy", "fhir.resources", "pydantic"):
        try:
            out[name] = version(name)
        except Exception:  # pragma: no cover - a missing package is reported as such
            out[name] = "?"
    return out


def _first_error(exc: Exception) -> str:
    """``loc: message`` of a pydantic error's first item, else its first line."""
    errors = getattr(exc, "errors", None)
    if callable(errors):
        try:
            first = errors()[0]
            loc = ".".join(str(p) for p in first.get("loc", ()))
            return f"{loc}: {first.get('msg', '')}"[:120]
        except Exception:
            pass
    return str(exc).splitlines()[0][:120]


def main() -> int:
    from brightohir.convert_v2 import V2Converter  # type: ignore[import-not-found]
    from fhir.resources.bundle import Bundle  # R5 models (fhir.resources' default)

    header = json.loads(sys.stdin.readline())
    messages: list[tuple[bytes, str]] = [
        (base64.b64decode(b64), codec) for b64, codec in header["messages"]
    ]

    reports: list[dict[str, Any]] = []
    for data, codec in messages:
        report: dict[str, Any] = {"ok": False, "hl7apy": False, "valid_r5": False, "error": ""}
        try:
            conv = V2Converter()
            bundle = conv.convert(data.decode(codec))
            json.dumps(bundle, ensure_ascii=False)
            report["ok"] = True
            # brightohir silently falls back to its own minimal parser when hl7apy fails
            report["hl7apy"] = getattr(conv, "_raw_message", None) is not None
            report["resources"] = len(bundle.get("entry", []))
            try:
                Bundle.model_validate(bundle)
                report["valid_r5"] = True
            except Exception as exc:
                report["error"] = _first_error(exc)
        except Exception as exc:
            report["error"] = f"{type(exc).__name__}: {exc}"[:160]
        reports.append(report)
    print(json.dumps({"reports": reports, "versions": _versions()}), flush=True)

    for line in sys.stdin:
        request = json.loads(line)
        subset = [messages[i] for i in request["subset"]]
        passes = int(request["run"])
        gc.collect()
        done = 0
        c0, t0 = time.process_time(), time.perf_counter()
        for _ in range(passes):
            for data, codec in subset:
                bundle = V2Converter().convert(data.decode(codec))
                json.dumps(bundle, ensure_ascii=False).encode("utf-8")
                done += 1
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        print(json.dumps({"wall": wall, "cpu": cpu, "n": done}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
