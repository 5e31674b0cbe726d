"""profiles/ holds valid FHIR resources, and every gateway-defined identifier system in
the mappings is published there as a NamingSystem."""

from __future__ import annotations

import re

import orjson
import yaml
from fhir.resources.R4B.namingsystem import NamingSystem
from fhir.resources.R4B.structuredefinition import StructureDefinition

from gateway.datafiles import data_dir

OWN_PREFIX = "https://fhir-gateway.example.org/sid/"
EXTENSION_URL = re.compile(r"https://fhir-gateway\.example\.org/StructureDefinition/[A-Za-z-]+")


def test_naming_systems_are_valid_and_cover_the_gateway_systems() -> None:
    published = set()
    for path in sorted(data_dir("profiles").glob("NamingSystem-*.json")):
        ns = NamingSystem.model_validate(orjson.loads(path.read_bytes()))
        published |= {u.value for u in ns.uniqueId}
    table = yaml.safe_load(
        (data_dir("mappings") / "tables" / "identifier-authorities.yaml").read_text()
    )
    own = {uri for uri in table["map"].values() if uri.startswith(OWN_PREFIX)}
    assert own and own <= published


def test_the_gateway_extensions_in_use_are_published() -> None:
    """Every https://fhir-gateway.example.org/StructureDefinition/* URL the mappings and
    report rules write is defined by a valid StructureDefinition in profiles/."""
    defined = set()
    for path in sorted(data_dir("profiles").glob("StructureDefinition-*.json")):
        sd = StructureDefinition.model_validate(orjson.loads(path.read_bytes()))
        defined.add(sd.url)
    used = set()
    for path in sorted(data_dir("mappings").rglob("*.yaml")):
        used |= set(EXTENSION_URL.findall(path.read_text(encoding="utf-8")))
    assert used and used <= defined, sorted(used - defined)
