"""Whether a DICOM instance may be taken from an authenticated institution: the rule the
MLLP listener applies to MSH-4 (gateway/listeners/mllp.py), for DICOM.

The mapping files a study's MRN under (0010,0021) IssuerOfPatientID, else its qualifiers'
UniversalEntityID, else the sender ((0008,0080) InstitutionName, else the accession
number's issuer), and its accession number under that issuer, else the sender
(mappings/dicom/resources/Patient.yaml, messages/study.yaml). So every one of them that
is given must name the authenticated institution, and one at least must be given: a
study naming another hospital, or one the network does not know, would put a patient's
images under another hospital's numbers or an unregistered namespace.
"""

from __future__ import annotations

import io

from pydicom import config, dcmread
from pydicom.dataset import Dataset

from ...errors import IntakeError
from ...network import Institution, Network
from ._faults import PYDICOM_FAULTS
from ._paths import tag_label
from ._reader import (
    _ACCESSION_ISSUER,
    _CHARSET,
    _INSTITUTION,
    _ISSUER,
    _LOCAL_ID,
    _QUALIFIERS,
    _STUDY,
    _UNIVERSAL_ID,
    _accession_issuer,
    _institution_sent,
    _issuer_uid,
    _sent_text,
    sent_uid,
)

__all__ = ["sender_refusal"]

_FAULTS: tuple[type[Exception], ...] = (IntakeError, *PYDICOM_FAULTS)
# What is read of an instance: only these, never its pixels.
_TAGS = [_CHARSET, _INSTITUTION, _ACCESSION_ISSUER, _ISSUER, _QUALIFIERS, _STUDY]


def sender_refusal(
    data: bytes, own: Institution | None, network: Network, sent_by: str
) -> tuple[str, IntakeError] | None:
    """None when the Part 10 instance ``data`` may be taken from institution ``own``;
    else its Study Instance UID and why not (``intake.dicom-sender-mismatch``, naming the
    study, the tag and both institutions). ``own`` None: the credential names no
    institution. ``sent_by`` says how the sender was authenticated (in the message).
    An instance without a readable Study Instance UID is not judged here (None): the
    intake refuses it (not DICOM, no UID); one whose names cannot be read is refused."""
    config.settings.reading_validation_mode = config.IGNORE  # no values in warnings
    try:
        ds = dcmread(io.BytesIO(data), stop_before_pixels=True, specific_tags=_TAGS)
        study = sent_uid(ds, _STUDY)  # as the intake stores it
    except _FAULTS:
        return None
    if not study:
        return None
    record = f"study {study}"
    try:
        named = _names(ds)
    except _FAULTS:  # a charset pydicom lacks, a damaged sequence: nothing to compare
        where = tag_label(_INSTITUTION)
        return study, _mismatch(record, where, "or an issuer cannot be read: not checked")
    if own is None:
        return study, _mismatch(
            record,
            tag_label(_INSTITUTION),
            f"cannot be checked: {sent_by} names no institution of the network",
        )
    if not named:
        problem = (
            "is empty, and so are its qualifiers, (0008,0080) InstitutionName and the "
            f"accession number's issuer: nothing names whose numbers these are; {sent_by} "
            f"is {_named(own)}"
        )
        return study, _mismatch(record, tag_label(_ISSUER), problem)
    for label, text in named:
        found = _institution_of(text, label, network)
        if found is None:
            problem = f"names {text[:40]!r}, no institution of the network"
        elif found.key != own.key:
            problem = f"names {_named(found)}"
        else:
            continue
        return study, _mismatch(record, label, f"{problem}; {sent_by} is {_named(own)}")
    return None


def _names(ds: Dataset) -> list[tuple[str, str]]:
    """Each element that says whose numbers the study's are, as the mapping reads it,
    with its tag label; only those given."""
    issuer_oid, _type = _issuer_uid(ds)
    local, universal, _ = _accession_issuer(ds)
    found = [
        (tag_label(_ISSUER), _sent_text(ds, _ISSUER)),
        (f"{tag_label(_QUALIFIERS)} {tag_label(_UNIVERSAL_ID)}", issuer_oid),
        (tag_label(_INSTITUTION), _institution_sent(ds)),
        (f"{tag_label(_ACCESSION_ISSUER)} {tag_label(_LOCAL_ID)}", local),
        (f"{tag_label(_ACCESSION_ISSUER)} {tag_label(_UNIVERSAL_ID)}", universal),
    ]
    return [(label, text) for label, text in found if text]


def _institution_of(text: str, label: str, network: Network) -> Institution | None:
    """The institution a value names: by code, key, name or OID (``Network.find``); a
    universal id also by an OID it assigned below its own (``Network.under_oid``)."""
    found = network.find(text)
    if found is None and label.endswith("UniversalEntityID"):
        found = network.under_oid(text)
    return found


def _named(inst: Institution) -> str:
    """An institution in a refusal: its key and facility code (no patient data)."""
    return f"institution {inst.key} ({inst.facility})"


def _mismatch(record: str, where: str, problem: str) -> IntakeError:
    return IntakeError(
        "dicom-sender-mismatch",
        f"{where} {problem}: a study is taken only from the institution its identifiers "
        "name (its MRNs are filed under that institution's identifier systems); the "
        "study was refused whole",
        record=record,
        location=where,
    )
