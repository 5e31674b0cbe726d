"""The few named functions a mapping can call with ``fn:``.

They are generic (no message type appears here): identifier-system URIs, codings with
ConceptMap translations and display translations, institution look-ups, and logical
references to resources of other conversions.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

from ..errors import MappingError
from ..network import Network
from ._terminology import _CJK, SAME_CONCEPT, Terminology, language_of

__all__ = ["CODE_SYSTEM_BASE", "FUNCTIONS", "TRANSLATION_URL", "Env", "local_code_system"]

TRANSLATION_URL = "http://hl7.org/fhir/StructureDefinition/translation"
#: Where every code system the gateway names lives (published in profiles/ as
#: CodeSystem-<id>.json): its own, and the local code lists of senders (docs/terminology.md).
CODE_SYSTEM_BASE = "https://fhir-gateway.example.org/CodeSystem/"
_HL7_TABLE = re.compile(r"HL7(\d{4})\Z", re.IGNORECASE)
_NOT_ID = re.compile(r"[^a-z0-9]+")


def local_code_system(owner: str, name: str) -> str:
    """The canonical URL of an institution's local code list: ``<base>/CodeSystem/
    <owner>-<name>``, lower case, runs of characters other than letters and digits as one
    ``-`` (99LAX2 of LAX2 → lax2-99lax2; 99LOCAL of NSCH → nsch-99local)."""
    ident = _NOT_ID.sub("-", f"{owner}-{name}".lower()).strip("-")[:64]
    return CODE_SYSTEM_BASE + ident


class Env:
    """What functions may consult: the terminology and the network."""

    def __init__(self, terminology: Terminology, network: Network) -> None:
        self.terminology = terminology
        self.network = network
        # identifier_system's answers by its arguments (see _SYSTEMS_SIZE)
        self.systems: dict[tuple[str | None, ...], str | None] = {}

    def code_system(self, mnemonic: str | None, facility: str | None) -> str:
        """URI of a coding system named by an HL7 table 0396 mnemonic (CWE.3)."""
        return self.code_system_of(mnemonic, facility)[0]

    def code_system_of(self, mnemonic: str | None, facility: str | None) -> tuple[str, bool]:
        """(URI, local): the system a mnemonic names, and whether it is an institution's
        local code list (whose displays are the institution's own words)."""
        if mnemonic:
            uri = self.terminology.table("coding-systems").lookup(mnemonic)
            if uri:
                return str(uri), False
            m = _HL7_TABLE.match(mnemonic)
            if m:
                return f"http://terminology.hl7.org/CodeSystem/v2-{m[1]}", False
        # Local codes belong to their owner: 99<FACILITY> names the facility (99LAX2 is
        # Lai'an's code list wherever it travels); L, other 99zzz and names we do not know
        # belong to the sender. Their canonical URL is under the gateway's base.
        local = mnemonic or "local"
        owner = facility or "unknown"
        if local.upper().startswith("99") and self.network.institution(local[2:]):
            owner = local[2:]
        return local_code_system(owner, local), True


# identifier_system's answers kept per Env: a feed's few authorities and facilities give
# every identifier's system (the tables and the network are read only), so each is worked
# out once; cleared when full (short strings, bounded). An argument set that raises is
# not kept: it raises again.
_SYSTEMS_SIZE = 256


def identifier_system(
    env: Env,
    *,
    kind: str | None = None,
    authority: str | None = None,
    authority_oid: str | None = None,
    authority_type: str | None = None,
    facility: str | None = None,
) -> str | None:
    """The system URI of an identifier, in the order documented in docs/identifiers.md."""
    key = (kind, authority, authority_oid, authority_type, facility)
    systems = env.systems
    if key in systems:
        return systems[key]
    found = _identifier_system(env, kind, authority, authority_oid, authority_type, facility)
    if len(systems) >= _SYSTEMS_SIZE:
        systems.clear()
    systems[key] = found
    return found


def _identifier_system(
    env: Env,
    kind: str | None,
    authority: str | None,
    authority_oid: str | None,
    authority_type: str | None,
    facility: str | None,
) -> str | None:
    kind = kind or "id"
    _one_authority(env, authority, authority_oid, authority_type)
    if authority:
        fixed = env.terminology.table("identifier-authorities").lookup(authority)
        if fixed:
            return str(fixed)
        if env.network.institution(authority):
            return f"{env.network.base(authority)}/sid/{kind}"
    if authority_oid and (authority_type or "").upper() == "ISO":
        owned = env.terminology.table("institution-identifier-oids").lookup(authority_oid)
        if isinstance(owned, dict) and env.network.institution(str(owned.get("institution"))):
            return f"{env.network.base(str(owned['institution']))}/sid/{owned['kind']}"
        return f"urn:oid:{authority_oid}"
    if authority:
        return f"{env.network.base(authority)}/sid/{quote(kind, safe='')}"
    if facility:
        return f"{env.network.base(facility)}/sid/{kind}"
    return None


def _one_authority(env: Env, authority: str | None, oid: str | None, oid_type: str | None) -> None:
    """An authority named twice (namespace and ISO OID) must name one institution: the
    namespace is read first, so an OID of another institution beside it would file one
    hospital's number under another's (the same MRN, another patient)."""
    if not (authority and oid and (oid_type or "").upper() == "ISO"):
        return
    named = env.network.institution(authority)
    owned = env.terminology.table("institution-identifier-oids").lookup(oid)
    by_oid = (
        env.network.institution(str(owned.get("institution")))
        if isinstance(owned, dict)
        else env.network.find(oid)
    )
    if named is not None and by_oid is not None and named is not by_oid:
        raise MappingError(
            "authority-conflict",
            "an assigning authority's namespace id (HD.1) and universal id (HD.2) name "
            "two different institutions of the network: whose number it is is unknown",
        )


def _translations(display: str, names: dict[str, str]) -> list[dict[str, Any]]:
    """Translation extensions for the designations in a language other than the display's."""
    own = language_of(display)
    out = []
    for lang, text in sorted(names.items()):
        if lang.split("-")[0] != own and text != display:
            out.append(
                {
                    "url": TRANSLATION_URL,
                    "extension": [
                        {"url": "lang", "valueCode": lang},
                        {"url": "content", "valueString": text},
                    ],
                }
            )
    return out


def _one_coding(env: Env, system: str, code: str, display: str | None) -> dict[str, Any]:
    """A Coding whose display is the code system's: the one the terminology knows, else
    ``display`` when the caller vouches for it (a local code list's own words, a
    ConceptMap target's display), else none. Designations in other languages follow as
    translation extensions."""
    coding: dict[str, Any] = {"system": system, "code": code}
    names = env.terminology.designations(system, code)
    display = env.terminology.display(system, code) or display
    if not display and names:
        display = names.get("en") or next(iter(names.values()))
    if display:
        coding["display"] = display
        ext = _translations(display, names)
        if ext:
            coding["_display"] = {"extension": ext}
    return coding


def coding(
    env: Env,
    *,
    code: str | None = None,
    display: str | None = None,
    system: str | None = None,
    facility: str | None = None,
) -> list[dict[str, Any]]:
    """A Coding, then the codings its ConceptMaps translate it to as the same concept
    (local exam → LOINC; a wider or narrower target is another concept and is left out).

    ``display`` is the text the record wrote beside the code: it is the display only for
    an institution's local code list (the institution's own words); for any other system
    the display is the code system's, or none, and the record's text belongs in
    ``CodeableConcept.text`` (the mappings put it there)."""
    if not code:
        return []
    uri, local = env.code_system_of(system, facility)
    out = [_one_coding(env, uri, code, display if local else None)]
    for target in env.terminology.translate(uri, code):
        if target.relationship in SAME_CONCEPT:
            out.append(_one_coding(env, target.system, target.code, target.display))
    return out


def translate(
    env: Env, *, code: str | None = None, system: str | None = None
) -> dict[str, Any] | None:
    """The one Coding a ConceptMap maps (system, code) to, with its displays in other
    languages: for elements that hold a single Coding (ImagingStudy.series.bodySite).
    Unmapped codes give nothing."""
    if not code or not system:
        return None
    for target in env.terminology.translate(system, code):
        return _one_coding(env, target.system, target.code, target.display)
    return None


def institution(env: Env, *, facility: str | None = None, get: str = "name") -> Any:
    """A field of a registered institution (dotted path into its seed entry), found by
    facility code, key, OID or name (DICOM and CDA name institutions, HL7 v2 codes them)."""
    inst = env.network.find(facility)
    if inst is None:
        return None
    value: Any = inst.data
    for part in get.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value


def script(env: Env, *, text: str | None = None) -> str | None:
    """IDE for text in Chinese characters, ABC otherwise (iso21090 name representation)."""
    if not text:
        return None
    return "IDE" if _CJK.search(text) else "ABC"  # language_of(text) == "zh", no call


def reference_by_identifier(
    env: Env, *, type: str | None = None, identifier: Any = None
) -> dict[str, Any] | None:
    """A logical reference (``Reference.identifier`` with ``type``) to a resource another
    conversion makes: the order behind a study, the study behind a report.

    Never a literal or conditional reference: the target may not be at the partner yet,
    and a strict server fails the whole transaction on a conditional reference that
    matches nothing (R4 http.html#trules). A logical reference needs no resolution; the
    delivery stage may make it literal once it knows the partner holds the target
    (docs/partners.md). An identifier without both system and value names nothing
    (``|LA2H...`` matches no order), so it gives no reference at all."""
    if isinstance(identifier, list):
        identifier = identifier[0] if identifier else None
    if not type or not isinstance(identifier, dict):
        return None
    system, value = identifier.get("system"), identifier.get("value")
    if not system or not value:
        return None
    return {"type": type, "identifier": {"system": system, "value": value}}


FUNCTIONS: dict[str, Callable[..., Any]] = {
    "reference-by-identifier": reference_by_identifier,
    "script": script,
    "identifier-system": identifier_system,
    "coding": coding,
    "translate": translate,
    "institution": institution,
}
