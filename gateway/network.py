"""The network: institutions the gateway knows, from ``seeds/network.yaml`` (or the
file configured in ``network``). Institutions give identifier-system bases, names in
several languages, default charsets and addresses.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from .datafiles import load_data_file
from .errors import ConfigError

if TYPE_CHECKING:
    from cryptography import x509

__all__ = [
    "CHARSET_MISMATCH",
    "UNREGISTERED_BASE",
    "Institution",
    "Network",
    "certificate_institution",
    "exact_key_problem",
]

CHARSET_MISMATCH = ("refuse", "decode")

# Base for identifier systems of senders the network does not know: the reserved
# '.invalid' TLD says plainly that the URI was made up by the gateway.
UNREGISTERED_BASE = "https://unregistered.invalid/facility"

# Look-up answers kept per Network, by the text as given (folding is the dear part, and
# a feed names few institutions): cleared when full; longer texts are not kept.
_ANSWERS = 1024
_ANSWERED_LENGTH = 256


@dataclass(frozen=True, slots=True)
class Institution:
    key: str
    facility: str
    base: str
    names: dict[str, str]
    oid: str | None = None
    jurisdiction: str | None = None
    charset: str | None = None
    data: dict[str, Any] = field(default_factory=dict)  # the whole seed entry

    def name(self, *langs: str) -> str | None:
        for lang in (*langs, "zh-Hans", "zh-Hant", "en"):
            if lang in self.names:
                return self.names[lang]
        return None


class Network:
    def __init__(self, institutions: list[Institution], source: Path | None = None) -> None:
        """Index the institutions by code, key, name and OID. A spelling (as each look-up
        folds it) given to two institutions is refused (``config.network-ambiguous``):
        a record from one would otherwise be read under the other's identifier systems
        (its MRNs filed as the other's patients), whichever happened to be listed first."""
        self.source = source
        self._all = tuple(institutions)
        # institution()'s and find()'s answers by the text given (the indexes are read only)
        self._institutions: dict[str, Institution | None] = {}
        self._found: dict[str, Institution | None] = {}
        self._by_facility = _index(institutions, source, "facility code", _facilities)
        self._by_key = _index(institutions, source, "key", lambda i: (_fold(i.key),))
        # DICOM (InstitutionName) and CDA (representedOrganization/name) name their
        # institution rather than give an HL7 facility code.
        self._by_name = _index(institutions, source, "name or alias", _names)
        self._by_oid = _index(institutions, source, "OID", _oids)
        # institution() tries the facility code (folded) before the key, and find()
        # both before the name: a key or name that one of them reads as another
        # institution's code would never find its own.
        for inst in institutions:
            code = self.institution
            _check_shadow(inst, source, "key (read as a facility code)", (inst.key,), code)
            _check_shadow(inst, source, "name (read as a code)", _raw_names(inst), code)
            # find() tries codes, keys and names before OIDs: one of them that is
            # another's OID, bare or as 'urn:oid:…' (as certificates, signers and
            # Provenance name institutions), hides it
            oids = [s for oid in _oids(inst) for s in (oid, f"urn:oid:{oid}")]
            _check_shadow(inst, source, "OID (read as a code or name)", oids, self._find)

    @classmethod
    def load(cls, path: Path) -> Network:
        raw = load_data_file(path)
        if not isinstance(raw, dict) or not isinstance(raw.get("institutions"), list):
            raise ConfigError("network", f"{path}: expected a mapping with an 'institutions' list")
        institutions = []
        for n, entry in enumerate(raw["institutions"], 1):
            names = entry.get("name") if isinstance(entry, dict) else None
            if names is not None and not isinstance(names, dict):
                raise ConfigError(
                    "network", f"{path}: institution #{n}: 'name' must map languages to names"
                )
            for listed in ("alias", "spellings"):
                # one text would be read as a list of its characters: each a name of it
                value = entry.get(listed) if isinstance(entry, dict) else None
                if value is not None and not isinstance(value, list):
                    raise ConfigError(
                        "network", f"{path}: institution #{n}: '{listed}' must be a list of names"
                    )
            try:
                institutions.append(
                    Institution(
                        key=str(_given(entry, "key")),
                        facility=str(_given(entry, "facility")),
                        base=str(_given(entry, "base")).rstrip("/"),
                        # a language left empty ('en:', null) has no name, not 'None'
                        names={
                            str(k): str(v)
                            for k, v in (entry.get("name") or {}).items()
                            if v is not None
                        },
                        oid=_load_oid(path, n, entry),
                        jurisdiction=entry.get("jurisdiction"),
                        charset=entry.get("charset"),
                        data=entry,
                    )
                )
            except (KeyError, TypeError) as exc:
                raise ConfigError(
                    "network", f"{path}: institution #{n} lacks {exc} (key, facility, base)"
                ) from None
        network = cls(institutions, path)
        return network

    def institution(self, facility: str | None) -> Institution | None:
        """An institution by facility code (folded: ``_code``), else by key (folded)."""
        if not facility:
            return None
        try:
            return self._institutions[facility]
        except KeyError:
            found = self._by_facility.get(_code(facility)) or self._by_key.get(_fold(facility))
        _keep(self._institutions, facility, found)
        return found

    def find(self, name_or_code: str | None) -> Institution | None:
        """An institution by facility code, key, OID, name in any language or alias."""
        if not name_or_code:
            return None
        try:
            return self._found[name_or_code]
        except KeyError:
            found = self._find(name_or_code)
        _keep(self._found, name_or_code, found)
        return found

    def _find(self, name_or_code: str) -> Institution | None:
        found = self.institution(name_or_code.strip())
        if found is None:
            found = self._by_name.get(_fold(name_or_code))
        if found is None:
            found = self._by_oid.get(_oid(name_or_code))
        return found

    def under_oid(self, oid: str) -> Institution | None:
        """The institution whose OID arc holds ``oid`` (``urn:oid:`` or bare), below its
        own OID: one it assigned (its MRNs', its staff numbers'); the longest arc wins."""
        bare = oid.removeprefix("urn:oid:")
        arcs = [i for i in self._all if i.oid and bare.startswith(i.oid + ".")]
        return max(arcs, key=lambda i: len(i.oid or "")) if arcs else None

    def base(self, facility: str) -> str:
        """Identifier-system base of a facility: its registered base, else a made-up one."""
        inst = self.institution(facility)
        return inst.base if inst else f"{UNREGISTERED_BASE}/{quote(facility, safe='')}"

    def charset(self, facility: str) -> str | None:
        inst = self.institution(facility)
        return inst.charset if inst else None

    def charset_mismatch(self, facility: str | None) -> str:
        """What to do when a sender's declared single-byte charset (or none) meets bytes
        that are Chinese text in a multi-byte charset: ``refuse`` (the default: mojibake
        is never forwarded) or ``decode`` (as the likely charset, with a warning)."""
        inst = self.institution(facility)
        value = str(inst.data.get("charset_mismatch", "refuse")) if inst else "refuse"
        if value not in CHARSET_MISMATCH:
            raise ConfigError(
                "network",
                f"{self.source}: institution {inst.key if inst else facility!r}: "
                f"charset_mismatch must be one of {', '.join(CHARSET_MISMATCH)}, not {value!r}",
            )
        return value


def certificate_institution(cert: x509.Certificate, network: Network) -> Institution | None:
    """The network institution an *institution* certificate names (its
    organizationIdentifier ``OID:<oid>``, as ``gateway keys init`` issues them); None for
    a person's certificate (serialNumber = staff number) or an unknown organisation.
    Exact: the OID as the network file writes it (``find`` folds, the check does not).
    Here, below every stage that authenticates by certificate (the inbound endpoint,
    the MLLP listener)."""
    from cryptography.x509.oid import NameOID  # only where certificates are read

    subject = cert.subject
    if subject.get_attributes_for_oid(NameOID.SERIAL_NUMBER):
        return None
    found = subject.get_attributes_for_oid(NameOID.ORGANIZATION_IDENTIFIER)
    value = found[0].value if found else None
    if not isinstance(value, str) or not value.startswith("OID:"):
        return None
    oid = value.removeprefix("OID:")
    inst = network.find(f"urn:oid:{oid}")
    return inst if inst is not None and inst.oid == oid else None


def exact_key_problem(key: str, network: Network) -> str | None:
    """Why ``key`` is not an institution's key exactly as the network file writes it, or
    None. The look-up also takes facility codes and folds (``ＮＳＣＨ`` and ``NSCH`` find
    nsch), which suits what senders write in records, not a security file (partner
    tokens, API tokens bound to an institution): whoever reviews which institution a
    token stands for (or greps the file for its key) must read it there."""
    inst = network.institution(key)
    if inst is not None and inst.key == key:
        return None
    found = f": it folds to {inst.key!r}, the key to write" if inst is not None else ""
    return f"{key!r} is not exactly an institution key{found}"


def _fold(text: str) -> str:
    """A name or code as the network compares it (the look-ups and the load-time check
    alike): its compatibility forms as the plain ones (NFKC: the full-width ＮＳＣＨ, ２
    and － that Chinese systems send are NSCH, 2 and -), case folded, runs of white
    space (U+3000 among them) as one space. NFKC keeps scripts apart: a Traditional
    name is not its Simplified spelling (an alias or ``spellings`` entry says so).
    Institutions' names and codes only: never a person's name."""
    return " ".join(unicodedata.normalize("NFKC", text).casefold().split())


def _code(code: str) -> str:
    """A facility code as looked up: folded, upper-cased as network files write codes."""
    return _fold(code).upper()


def _keep(answers: dict[str, Institution | None], text: str, found: Institution | None) -> None:
    if len(text) <= _ANSWERED_LENGTH:
        if len(answers) >= _ANSWERS:
            answers.clear()
        answers[text] = found


def _facilities(inst: Institution) -> tuple[str, ...]:
    return (_code(inst.facility),)


def _oid(text: str) -> str:
    """An OID as looked up and indexed: folded, without its ``urn:oid:`` prefix."""
    return _fold(text).removeprefix("urn:oid:")


def _oids(inst: Institution) -> tuple[str, ...]:
    return (_oid(inst.oid),) if inst.oid else ()


# FHIR's oid type (urn:oid:[0-2](\.(0|[1-9][0-9]*))+): an arc with a leading zero
# (1.2.03) was kept, written out as an OID no FHIR validator accepts, and named no
# institution for a certificate that writes the arc 3
_OID_FORM = re.compile(r"[0-2](?:\.(?:0|[1-9][0-9]*))+")


def _load_oid(path: Path, n: int, entry: dict[str, Any]) -> str | None:
    """An institution's OID as the gateway writes and compares it: bare digits and dots.
    Certificates name it exactly (``OID:1.2.3``) and it is written out as
    ``urn:oid:<oid>``, so one written ``urn:oid:1.2.3`` or in full-width digits named no
    institution: the prefix is removed and the digits folded (NFKC) here, once; anything
    else left is refused, naming the file and the institution."""
    value = entry.get("oid")
    if value is None or value == "":
        return None
    if not isinstance(value, str):  # YAML reads 1.20 as the number 1.2
        raise ConfigError(
            "network",
            f"{path}: institution #{n} ({entry.get('key')}): 'oid' must be text; quote it "
            "(YAML reads an OID such as 1.20 as a number)",
        )
    oid = unicodedata.normalize("NFKC", value).strip()
    if oid[:8].casefold() == "urn:oid:":
        oid = oid[8:].strip()
    if oid and _OID_FORM.fullmatch(oid) is None:
        raise ConfigError(
            "network",
            f"{path}: institution #{n} ({entry.get('key')}): 'oid' {value!r} is not an OID "
            "(arcs of digits separated by dots, the first 0, 1 or 2, none with a leading zero, as "
            "2.16.156.10011.99.1.1, optionally after urn:oid:)",
        )
    return oid or None


def _given(entry: dict[str, Any], field: str) -> Any:
    """A required field of a network entry: left empty (YAML null) is missing, not the
    text 'None' (a facility code NONE that a sender's 'none' would find)."""
    value = entry[field]
    if value is None:
        raise KeyError(field)
    return value


def _raw_names(inst: Institution) -> tuple[str, ...]:
    """Its names in every language, aliases and spellings (other writings of its name that
    find it but are never written out: a Hong Kong name as a mainland sender spells it in
    Simplified), as written in the network file."""
    found_by = (*(inst.data.get("alias") or ()), *(inst.data.get("spellings") or ()))
    return tuple(str(name) for name in (*inst.names.values(), *found_by) if name is not None)


def _names(inst: Institution) -> tuple[str, ...]:
    return tuple(_fold(name) for name in _raw_names(inst))


def _index(
    institutions: list[Institution],
    source: Path | None,
    what: str,
    spellings: Callable[[Institution], Iterable[str]],
) -> dict[str, Institution]:
    """The institutions by each of their (folded) spellings but blank ones; one given to
    two institutions refuses the network file."""
    index: dict[str, Institution] = {}
    for inst in institutions:
        for spelling in spellings(inst):
            if not spelling:  # blank (a language left empty): found by every blank text
                continue
            other = index.setdefault(spelling, inst)
            if other is not inst:
                raise _ambiguous(source, what, spelling, other, inst)
    return index


def _check_shadow(
    inst: Institution,
    source: Path | None,
    what: str,
    spellings: Iterable[str],
    look: Callable[[str], Institution | None],
) -> None:
    """Refuse a spelling of ``inst`` that ``look`` (a look-up, which tries other indexes
    first) reads as another institution's."""
    for spelling in spellings:
        other = look(spelling.strip())
        if other is not None and other is not inst:
            raise _ambiguous(source, what, spelling.strip(), other, inst)


def _ambiguous(
    source: Path | None, what: str, spelling: str, first: Institution, second: Institution
) -> ConfigError:
    return ConfigError(
        "network-ambiguous",
        f"{source or 'network'}: the {what} {spelling!r} (as looked up) names two institutions, "
        f"{first.key} ({first.facility}) and {second.key} ({second.facility}): a record "
        "from one would be read under the other's identifier systems; give each name, "
        "alias, spelling, key, facility code and OID to one institution only",
    )
