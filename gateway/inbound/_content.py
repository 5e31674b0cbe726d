"""What a received Bundle is about, checked before it is stored (docs/inbound.md):

* **one patient**: every record a partner sends is one patient's (a converted message,
  a study, a report); its policy decision, its audit events (the receipt names one
  patient) and its consent are that patient's. A Bundle with a second Patient, or a
  resource whose subject is another patient than the Bundle's, is refused: the second
  patient's data would arrive unaudited and undecided.
* **addressed here**: a referral (ServiceRequest, docs/inbound.md "Referral status")
  whose performers name organisations, none of them this institution, is another
  institution's referral (or an unknown target's): this gateway would open a Task for
  a patient it was not asked to see. A referral naming no organisation is taken as
  addressed to the receiver.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from itertools import chain
from typing import Any, NamedTuple
from urllib.parse import parse_qsl, unquote

from ..errors import Issue
from ..fhirsystems import comparable, system_key
from ..network import Institution
from ._apply import entry_base, own_relative, read_relative, reference_key
from ._referrals import is_referral

__all__ = ["StoredPatients", "identity_mismatches", "misaddressed", "mixed_patients"]

# The sender's stored Patients of some ids: id -> the Patient resource (those it has)
StoredPatients = Callable[[set[str]], dict[str, dict[str, Any]]]

# Elements naming the patient a resource is about (the patient compartment's usual ones)
_PATIENT_ELEMENTS = ("subject", "patient", "for", "beneficiary")
_OID_SYSTEM = "urn:ietf:rfc:3986"
# A Patient of this gateway's store, as reference_key spells it (R4 id)
_STORED_PATIENT = re.compile(r"Patient/([A-Za-z0-9\-.]{1,64})")


def _entries(bundle: dict[str, Any]) -> list[tuple[int, str | None, dict[str, Any]]]:
    """(position, fullUrl, resource) of the entries holding a resource."""
    out = []
    for n, entry in enumerate(bundle.get("entry") or []):
        resource = entry.get("resource") if isinstance(entry, dict) else None
        if isinstance(resource, dict):
            full_url = entry.get("fullUrl")
            out.append((n, full_url if isinstance(full_url, str) else None, resource))
    return out


def _tokens(resource: dict[str, Any]) -> list[str]:
    """``system|value`` of each identifier of a resource."""
    return [
        f"{i.get('system') or ''}|{i['value']}"
        for i in resource.get("identifier") or []
        if isinstance(i, dict) and i.get("value")
    ]


# -- one patient ------------------------------------------------------------------------
def mixed_patients(
    bundle: dict[str, Any], stored: StoredPatients | None = None, own: str | None = None
) -> list[Issue]:
    """The issue naming the first entry that brings a second patient, if any.
    ``stored``: the sender's stored Patients, whose identifiers name them here
    (:func:`_stored_aliases`); None: the Bundle alone is read. ``own``: this gateway's
    FHIR base (``Bases.own``), under which an absolute reference is a stored one."""
    entries = _entries(bundle)
    by_url = _by_url(entries)
    readings = {n: _reading(url, own) for n, url, _ in entries}
    patients = [  # a Patient that nothing can name (no fullUrl, id nor identifier) is none
        (n, r)
        for n, url, r in entries
        if r.get("resourceType") == "Patient" and (url or r.get("id") or _tokens(r))
    ]
    if len(patients) > 1:
        where = f"Bundle.entry[{patients[1][0]}].resource"
        return [_mixed(where, "a second Patient")]
    aliases: dict[str, str] = {}
    held: dict[str, set[str]] = {}  # a patient's key -> the identifiers its Patient holds
    if patients:
        n, patient = patients[0]
        names = [f"Patient/{patient['id']}"] if isinstance(patient.get("id"), str) else []
        names += [url for url, (k, _) in by_url.items() if k == n]
        names += _updated(bundle["entry"][n])
        names += _patient_tokens(patient)
        aliases = dict.fromkeys(names, "the Bundle's Patient")
        held["the Bundle's Patient"] = set(_patient_tokens(patient))
    # each resource's other references, walked once for both passes below
    others = {
        n: list(_other_references(resource, f"Bundle.entry[{n}].resource"))
        for n, _, resource in entries
        if resource.get("resourceType") != "Patient"
    }
    _beside_literals(entries, others, by_url, aliases, readings, own)
    if stored is not None:
        _stored_aliases(entries, others, by_url, aliases, held, stored, readings, own)
    seen: str | None = "the Bundle's Patient" if patients else None
    for n, _, resource in entries:
        if resource.get("resourceType") == "Patient":
            continue
        for k, inner in enumerate(_refs(resource.get("contained"))):
            if inner.get("resourceType") != "Patient":
                continue  # a contained Patient is patient data too: whose?
            tokens = _patient_tokens(inner)
            key = next((aliases[t] for t in tokens if t in aliases), None)
            where = f"Bundle.entry[{n}].resource.contained[{k}]"
            if key is not None and _another_value(tokens, held.get(key, set())):
                return [_mixed(where, "a contained Patient holding another patient's identifier")]
            key = key or (tokens[0] if tokens else f"#{inner.get('id')}@{n}")
            if seen is None:
                seen = key
            elif key != seen:
                return [_mixed(where, "a contained Patient of another patient")]
        for path, ref in chain(_subject_references(resource, n), others[n]):
            key = _patient_key(ref, by_url, readings[n], own)
            if key is None:
                continue
            key = aliases.get(key, key)
            if seen is None:
                seen = key
            elif key != seen:
                return [_mixed(path, "a reference to another patient")]
    return []


def _subject_references(resource: dict[str, Any], n: int) -> Iterator[tuple[str, dict[str, Any]]]:
    """(its path, the reference) of each patient element (subject, patient, ...) of entry
    ``n``'s resource, first in the one-patient check."""
    for element in _PATIENT_ELEMENTS:
        value = resource.get(element)
        many = isinstance(value, list)
        for k, ref in enumerate(_refs(value)):
            yield f"Bundle.entry[{n}].resource.{element}" + (f"[{k}]" if many else ""), ref


def _beside_literals(
    entries: list[tuple[int, str | None, dict[str, Any]]],
    others: dict[int, list[tuple[str, dict[str, Any]]]],
    by_url: dict[str, tuple[int, dict[str, Any]]],
    aliases: dict[str, str],
    readings: dict[int, _Reading | None],
    own: str | None,
) -> None:
    """An identifier written beside a literal patient reference names that patient
    here (``aliases``: its key -> the reference's): a record about ``Patient/<id>``
    with the MRN beside it, asserted by the Patient of that MRN (a logical reference,
    R4 Condition.asserter), was refused as a second patient, as a logical subject of
    one entry beside a literal one of another was. Whether that identifier is the
    Patient's is the identity checks' (another MRN beside it: 422 identity-mismatch);
    one already aliased (the Bundle's Patient entry's) keeps its patient. The literal
    is never renamed by it: another server's ``Patient/X`` with the Bundle patient's
    MRN beside it stays that server's patient (nothing here can check its identifiers;
    it is kept as sent), so beside a reference to the Bundle's patient it is a second
    patient."""
    for n, _, resource in entries:
        if resource.get("resourceType") == "Patient":
            continue
        refs = [ref for name in _PATIENT_ELEMENTS for ref in _refs(resource.get(name))]
        refs += [ref for _, ref in others[n]]
        for ref in refs:
            ident = ref.get("identifier")
            if not isinstance(ref.get("reference"), str) or not isinstance(ident, dict):
                continue
            key = _patient_key({"reference": ref["reference"]}, by_url, readings[n], own)
            if key is not None and ident.get("value"):
                token = _compared(f"{ident.get('system') or ''}|{ident['value']}")
                aliases.setdefault(token, aliases.get(key, key))


def _stored_aliases(
    entries: list[tuple[int, str | None, dict[str, Any]]],
    others: dict[int, list[tuple[str, dict[str, Any]]]],
    by_url: dict[str, tuple[int, dict[str, Any]]],
    aliases: dict[str, str],
    held: dict[str, set[str]],
    stored: StoredPatients,
    readings: dict[int, _Reading | None],
    own: str | None = None,
) -> None:
    """The identifiers of a stored Patient a record cites by id alone (``Patient/<id>``,
    relative or under this gateway's base ``own``, as the Bundle is applied: this
    gateway's store) name that patient here, as one written beside the
    reference does (:func:`_beside_literals`): a Condition of ``Patient/<id>`` asserted
    by the logical Patient of that patient's MRN was refused as a second patient, the
    check reading nothing stored. Only the sender's own Patients (the reference resolves
    to no other institution's, ``_apply.py``); one id the Bundle's Patient entry has, or
    one no Patient is stored under, says nothing more (an MRN beside the asserter is
    then a second patient, as before). One look-up, only when references to one stored
    Patient that is no entry are met. ``https://<own base>/Patient/<id>`` was not looked
    up, so a partner writing absolute references was refused as sending two patients;
    one under the partner's own base (or any other) names its server's Patient, never
    one stored here: not looked up, nor is a relative one inside an entry whose fullUrl
    is such a server's (:func:`_names`)."""
    ids: set[str] = set()
    for n, _, resource in entries:
        if resource.get("resourceType") == "Patient":
            continue
        refs = [ref for name in _PATIENT_ELEMENTS for ref in _refs(resource.get(name))]
        for ref in [*refs, *(ref for _, ref in others[n])]:
            literal = ref.get("reference")
            if not isinstance(literal, str) or literal in by_url:
                continue
            found = _STORED_PATIENT.fullmatch(_names(literal, readings[n], own)[1])
            if found is not None and f"Patient/{found[1]}" not in aliases:
                ids.add(found[1])
    if len(ids) != 1:  # two ids are two patients, refused below whatever is stored
        return  # (a look-up of 250,000 ids passed the database's bound: 500)
    for ident, patient in stored(ids).items():
        key = f"Patient/{ident}"
        held[key] = set(_patient_tokens(patient))
        for token in held[key]:
            aliases.setdefault(token, key)


def _another_value(tokens: list[str], held: set[str]) -> bool:
    """Whether a contained Patient taken for a patient by one identifier (``tokens``,
    as compared) holds another value of a system that patient's Patient holds: another
    patient's number (``_apply.py`` reads one written beside a reference so). It was
    taken for the patient by its first such identifier, whatever else it held."""
    systems = {token.partition("|")[0] for token in held} - {""}
    return any(t not in held and t.partition("|")[0] in systems for t in tokens)


def _other_references(resource: dict[str, Any], path: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """The References of ``resource`` that may name a Patient beyond the elements naming
    whom it is about (its ``asserter``, ``performer``, an evidence ``detail``, a
    contained resource's ``subject``: the patient said so, or was seen): a literal
    one, or a logical one typed ``Patient`` (an untyped identifier there is as likely
    a practitioner's). Checked only by their literal part before, so a record of
    许嘉玮's "asserted by" another patient went by. Contained Patients are compared
    as Patients (:func:`mixed_patients`), not walked."""
    for key, value in resource.items():
        if key in _PATIENT_ELEMENTS and path.endswith(".resource"):
            continue  # compared above, untyped identifiers too
        items = value if isinstance(value, list) else [value]
        for k, item in enumerate(items):
            if not isinstance(item, dict) or item.get("resourceType") == "Patient":
                continue
            where = f"{path}.{key}" + (f"[{k}]" if isinstance(value, list) else "")
            if isinstance(item.get("reference"), str) or (
                item.get("type") == "Patient" and isinstance(item.get("identifier"), dict)
            ):
                yield where, item
            else:
                yield from _other_references(item, where)


# -- one identity per reference ---------------------------------------------------------
def identity_mismatches(bundle: dict[str, Any]) -> list[Issue]:
    """The issue naming the first patient reference whose literal ``reference`` and
    logical ``identifier`` (a Reference may carry both) name different patients, as far
    as the Bundle shows: the ``identifier`` must be one of the Patient entry's the
    reference points at, and one of the same system as a conditional reference's must
    be that one. Identifiers are compared as written (their systems however spelled,
    ``gateway/fhirsystems.py``): one without a system is the entry's only when the entry holds it
    without one too (a bare value cannot say it is that system's).
    :func:`mixed_patients` compares references by their literal part only, so another
    patient's number written beside it would be stored with the record (and go back as
    the patient's in a referral status). The store's Patients are compared
    when the Bundle is applied (``_apply.py``)."""
    entries = _entries(bundle)
    by_url = {url: r for _, url, r in entries if url}
    patients = [(n, r) for n, _, r in entries if r.get("resourceType") == "Patient"]
    named: dict[str, dict[str, Any]] = {}  # Patient/<id> (its id, its PUT url) -> entry
    for n, patient in patients:
        names = [f"Patient/{patient['id']}"] if isinstance(patient.get("id"), str) else []
        names += _updated(bundle["entry"][n])
        named.update(dict.fromkeys(names, patient))
    for n, _, resource in entries:
        # a reference "#id" to a Patient contained in the resource is to that Patient:
        # an identifier beside it compared with nothing was kept with the record
        targets = {**by_url, **_contained(resource)}
        for element in _PATIENT_ELEMENTS:
            many = isinstance(resource.get(element), list)
            for k, ref in enumerate(_refs(resource.get(element))):
                problem = _reference_mismatch(ref, targets, named)
                if problem is None:
                    continue
                where = f"Bundle.entry[{n}].resource.{element}" + (f"[{k}]" if many else "")
                return [identity_mismatch(f"{where}.identifier", problem)]
        # and every other reference to a Patient (an asserter, a contained resource's
        # subject: _other_references), as the Bundle is applied (_apply.py)
        for where, ref in _other_references(resource, f"Bundle.entry[{n}].resource"):
            problem = _reference_mismatch(ref, targets, named)
            if problem is not None:
                return [identity_mismatch(f"{where}.identifier", problem)]
    return []


def _contained(resource: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """``#id`` -> each contained resource of ``resource`` that has an id."""
    return {
        f"#{inner['id']}": inner
        for inner in _refs(resource.get("contained"))
        if isinstance(inner.get("id"), str)
    }


def _reference_mismatch(
    ref: dict[str, Any], by_url: dict[str, dict[str, Any]], named: dict[str, dict[str, Any]]
) -> str | None:
    """What is wrong with a Reference's ``identifier`` beside its ``reference`` (no
    patient data), or None when they agree or the Bundle cannot tell."""
    literal, ident = ref.get("reference"), ref.get("identifier")
    if not isinstance(literal, str) or not isinstance(ident, dict) or not ident.get("value"):
        return None
    [key] = comparable([ident])
    target = by_url.get(literal) or named.get(literal.split("/_history/", 1)[0])
    if target is not None:
        found = target.get("identifier")
        held = comparable(found if isinstance(found, list) else [])
        if target.get("resourceType") == "Patient" and key not in held:
            return "names another patient than the Patient entry its reference points at"
        return None
    path, _, query = literal.partition("?")
    if path == "Patient" and query.startswith("identifier=") and "&" not in query:
        system, _, value = unquote(query.removeprefix("identifier=")).partition("|")
        if system_key(system) == key[0] and value != key[1]:
            return "names another patient than its conditional reference (same system)"
    return None


def identity_mismatch(where: str, problem: str) -> Issue:
    """``inbound.identity-mismatch`` at ``where``: two patients named where one is."""
    return Issue(
        "inbound.identity-mismatch",
        f"{where} {problem}: a record carries one patient's data; nothing is stored",
        expression=where,
    )


def _updated(entry: dict[str, Any]) -> list[str]:
    """``Patient/<id>`` of an entry's ``PUT Patient/<id>`` (the id it is stored under)."""
    request = entry.get("request")
    url = request.get("url") if isinstance(request, dict) else None
    return [url] if isinstance(url, str) and url.startswith("Patient/") else []


def _refs(value: Any) -> list[dict[str, Any]]:
    items = value if isinstance(value, list) else [value]
    return [v for v in items if isinstance(v, dict)]


def _by_url(
    entries: list[tuple[int, str | None, dict[str, Any]]],
) -> dict[str, tuple[int, dict[str, Any]]]:
    """fullUrl -> (position, resource) of the entries that have one, each server URL
    also by :func:`reference_key` (with no base of ours: a fullUrl under this gateway's
    base is that entry, not the stored ``Type/id``, as ``_apply.py`` resolves it), so
    a reference spelling it otherwise (``HTTPS://…``, ``:443``) is that entry."""
    out = {url: (n, r) for n, url, r in entries if url}
    out.update({reference_key(url, None): (n, r) for n, url, r in entries if url and "://" in url})
    return out


class _Reading(NamedTuple):
    """The server base a relative ``Type/id`` of an entry is read against
    (``_apply.entry_base``), worked out once an entry (a fullUrl may be long)."""

    base: str  # as written
    key: str  # as reference_key spells it
    ours: bool  # under this gateway's base: its relative references are ours


_PROBE = "Patient/x"


def _reading(full_url: str | None, own: str | None) -> _Reading | None:
    """How relative references inside the entry at ``full_url`` are read; None: as
    this gateway's (a urn:uuid fullUrl, or none)."""
    base = entry_base(full_url)
    if base is None:
        return None
    probe = f"{base}/{_PROBE}"
    key = reference_key(probe, None).removesuffix(_PROBE)
    return _Reading(base, key, own_relative(probe, own) is not None)


def _names(literal: str, reading: _Reading | None, own: str | None) -> tuple[str, str]:
    """A literal reference of an entry read by ``reading``, as ``_apply.py`` resolves
    it: (the Bundle's entry it is when one has that fullUrl, however spelled; what it
    names otherwise, :func:`reference_key`). A relative ``Type/id`` is read against the
    entry's server (:func:`read_against`): that server's, never this gateway's
    resource of that id, unless that server is this gateway."""
    if reading is not None and read_relative(literal):  # read_against, its key alone
        named = reading.key + reference_key(literal, None)  # ``Type/id``, no _history
        return named, named.removeprefix(reading.key) if reading.ours else named
    entry = reference_key(literal, None) if "://" in literal else literal
    return entry, reference_key(literal, own)


def _patient_key(
    ref: dict[str, Any],
    by_url: dict[str, tuple[int, dict[str, Any]]],
    reading: _Reading | None = None,
    own: str | None = None,
) -> str | None:
    """The patient a Reference of an entry read by ``reading`` names, as a comparable
    key (an entry's aliases map onto one); None when it names no patient (a Group, a
    Device...). A literal one is read as ``_apply.py`` resolves it (:func:`_names`): an
    entry's fullUrl, else ``Patient/<id>`` for this gateway's (``own``: its base), the
    normalised URL for another server's. All were ``Patient/<id>``, so another
    server's Patient X and the Patient X stored here (two patients) were one."""
    literal = ref.get("reference")
    if isinstance(literal, str):
        entry, key = _names(literal, reading, own)
        for name in (literal, entry):  # an entry, however spelled
            if name in by_url:
                return name if by_url[name][1].get("resourceType") == "Patient" else None
        path, mark, query = literal.partition("?")
        if path == "Patient" and query.startswith("identifier=") and "&" not in query:
            return _compared(unquote(query.removeprefix("identifier=")))
        if mark and (path == "Patient" or path.endswith("/Patient")):
            return _conditional_key(query) or None
        return key if key.startswith("Patient/") or "/Patient/" in key else None
    ident = ref.get("identifier")
    if isinstance(ident, dict) and ident.get("value") and ref.get("type") in (None, "Patient"):
        return _compared(f"{ident.get('system') or ''}|{ident['value']}")
    return None


def _patient_tokens(resource: dict[str, Any]) -> list[str]:
    """:func:`_tokens` as the one-patient check compares them (:func:`_compared`)."""
    return [_compared(token) for token in _tokens(resource)]


def _compared(token: str) -> str:
    """``system|value`` with its system as compared (``gateway/fhirsystems.py``): as written,
    ``Patient?identifier=…/sid/mrn/|0098765`` beside the Patient entry holding
    ``…/sid/mrn|0098765`` was "another patient". A bare value stays as it is."""
    system, bar, value = token.partition("|")
    return f"{system_key(system)}|{value}" if bar else token


_MATCHED = {"identifier", "_id", "patient", "status"}  # what Resources.find matches on


def _conditional_key(query: str) -> str:
    """The patient a conditional reference ``Patient?query`` of another form than one
    ``identifier=`` names, as :func:`_patient_key` compares them: by its identifier
    (the one the store matches on), else by its ``_id`` (``Patient/<id>``), else by the
    query itself (no other patient's key). It named none before, so
    ``Patient?_id=<another patient's id>`` (or ``identifier=…&_id=…``, or the same
    under this gateway's base) resolved to another stored patient, unseen. '' for one
    the store cannot match on (no parameter, another one): refused as
    ``inbound.bad-condition`` when resolved, naming the element."""
    pairs = parse_qsl(query, keep_blank_values=True)
    if not pairs or {name for name, _ in pairs} - _MATCHED:
        return ""
    for wanted, key in (("identifier", "{}"), ("_id", "Patient/{}")):
        found = [value for name, value in pairs if name == wanted]
        if found:
            return _compared(found[0]) if wanted == "identifier" else key.format(found[0])
    return f"Patient?{query}"


def _mixed(where: str, what: str) -> Issue:
    return Issue(
        "inbound.mixed-patients",
        f"{where}: {what}: a Bundle is about one patient (its policy decision, consent "
        "and audit events are that patient's); send each patient's records in a Bundle "
        "of their own",
        expression=where,
    )


# -- addressed here ---------------------------------------------------------------------
def misaddressed(bundle: dict[str, Any], own: Institution) -> list[Issue]:
    """An issue for each referral whose performers name organisations, none this one."""
    entries = _entries(bundle)
    by_url = {url: r for _, url, r in entries if url}
    issues = []
    for n, _, resource in entries:
        if not is_referral(resource):
            continue
        named = [  # organisations without an identifier say nothing here
            org
            for ref in _refs(resource.get("performer"))
            for org in _organisations(ref, by_url)
            if org
        ]
        if named and not any(_is_own(org, own) for org in named):
            where = f"Bundle.entry[{n}].resource.performer"
            issues.append(
                Issue(
                    "inbound.wrong-recipient",
                    f"{where}: the referral is addressed to another organisation than "
                    f"{own.key} (this gateway's institution): sent to the wrong gateway?",
                    expression=where,
                )
            )
    return issues


def _organisations(ref: dict[str, Any], by_url: dict[str, dict[str, Any]]) -> list[list[str]]:
    """The identifier tokens of each organisation a performer names: an Organization
    (entry or logical reference), or a PractitionerRole entry's organization."""
    target = by_url.get(str(ref.get("reference")))
    if target is None:
        ident = ref.get("identifier")
        if ref.get("type") == "Organization" and isinstance(ident, dict) and ident.get("value"):
            return [[f"{ident.get('system') or ''}|{ident['value']}"]]
        return []
    if target.get("resourceType") == "Organization":
        return [_tokens(target)]
    if target.get("resourceType") == "PractitionerRole":
        org = target.get("organization")
        return _organisations(org, by_url) if isinstance(org, dict) else []
    return []


def _is_own(tokens: list[str], own: Institution) -> bool:
    mine = {f"{_OID_SYSTEM}|urn:oid:{own.oid}"} if own.oid else set()
    for token in tokens:
        system, _, value = token.partition("|")
        if token in mine or (system.endswith("/sid/hl7-facility") and value == own.facility):
            return True
    return False
