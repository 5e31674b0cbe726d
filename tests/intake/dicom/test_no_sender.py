"""A study with a PatientID but no sender (no InstitutionName, no accession issuer) and
no IssuerOfPatientID: the error says that, and how to name the sender; it does not
claim that PatientID is empty."""

from __future__ import annotations

from typing import Any

from gateway import Converter
from tests.golden.dicom.make_studies import instance, part10

NAME = "王^伟"


def _study(**attrs: Any) -> list[tuple[str, bytes]]:
    values = {"PatientID": "0012345", "PatientName": NAME, "SpecificCharacterSet": "ISO_IR 192"}
    values |= attrs
    return [(f"IM{n}.dcm", part10(instance("2.25.5151", 1, n, **values))) for n in (1, 2)]


def test_no_sender_is_named_with_the_way_to_give_it(converter: Converter) -> None:
    [record] = converter.convert_files(_study())
    [error] = record.errors
    assert error.code == "intake.dicom-no-sender"
    assert error.location == "(0008,0080) InstitutionName"
    assert "--sender" in error.message and "?sender=" in error.message
    assert "PatientID is empty" not in error.message
    assert "0012345" not in error.line() and "王" not in error.line()


def test_the_sender_given_converts_it(converter: Converter) -> None:
    [record] = converter.convert_files(_study(), sender="LAX2")
    assert record.ok, [i.line() for i in record.issues]


def test_an_issuer_of_the_patient_id_is_enough(converter: Converter) -> None:
    [record] = converter.convert_files(_study(IssuerOfPatientID="LAX2"))
    assert record.ok, [i.line() for i in record.issues]


def test_no_patient_id_at_all_is_still_the_mappings_error(converter: Converter) -> None:
    [record] = converter.convert_files(_study(PatientID=None))
    assert record.errors[0].code == "mapping.no-identity"
