"""A subject inside a CDA document's body says that section (or entry) is about another
person than the record target; the mapping files every section under the document's
patient. So a body subject with identifiers of its own, or naming someone else (the
mother 李秀英 in 王伟's report), refuses the document (mapping.several-patients at its
XPath); a fetus without identifiers (C-CDA Fetus Subject Context, DCM 121026: obstetric
reports) and the patient named again stay convertible."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway import Converter

REPO = Path(__file__).resolve().parents[3]
CDA = REPO / "examples/imaging/lax2-ct-report-cobranded.xml"
FINDINGS = "<title>影像学表现</title>"
FETUS = '<code code="121026" codeSystem="1.2.840.10008.2.16.4" displayName="Fetus"/>'
MOTHER = '<code code="MTH" codeSystem="2.16.840.1.113883.5.111" displayName="mother"/>'
SDTC_ID = '<sdtc:id xmlns:sdtc="urn:hl7-org:sdtc" root="2.16.156.10011.1.13" extension="0077777"/>'
SECTION_SUBJECT = "/ClinicalDocument/component/structuredBody/component[2]/section/subject"
SECRETS = ("李秀英", "王伟", "0077777", "0012345")


def _subject(code: str = "", person: str = "") -> str:
    return (
        '<subject typeCode="SBJ"><relatedSubject classCode="PRS">'
        f"{code}<subject>{person}</subject></relatedSubject></subject>"
    )


def _errors(converter: Converter, subject: str) -> list[tuple[str, str | None]]:
    text = CDA.read_text(encoding="utf-8").replace(FINDINGS, FINDINGS + subject, 1)
    [record] = converter.convert(text.encode("utf-8"))
    for issue in record.issues:
        assert not any(secret in issue.line() for secret in SECRETS)
    return [(e.code, e.location) for e in record.errors]


@pytest.mark.parametrize("engine", ["interpreted", "compiled", "ceiling"])
@pytest.mark.parametrize(
    "subject",
    [
        _subject(MOTHER, "<name>李秀英</name>"),  # another name
        _subject(person="<name>李秀英</name>"),  # another name, no code
        _subject(MOTHER),  # someone else, no name: cannot be told to be the patient
        _subject(person=f"<name>王伟</name>{SDTC_ID}"),  # the patient's name, own identifiers
        _subject(FETUS, f"<name>胎儿A</name>{SDTC_ID}"),  # a fetus with identifiers
    ],
    ids=["mother", "other-name", "no-name", "identifiers", "fetus-with-identifiers"],
)
def test_a_body_subject_of_another_person_refuses_the_document(
    engines: dict[str, Converter], engine: str, subject: str
) -> None:
    errors = _errors(engines[engine], subject)
    assert errors == [("mapping.several-patients", SECTION_SUBJECT)]


def test_an_entrys_subject_is_checked_too(converter: Converter) -> None:
    entry = (
        '<entry><observation classCode="OBS" moodCode="EVN">'
        '<code code="DE04.50.131.00" codeSystem="2.16.156.10011.2.2.1"/>'
        f"{_subject(MOTHER, '<name>李秀英</name>')}</observation></entry>"
    )
    location = f"{SECTION_SUBJECT[: -len('/subject')]}/entry/observation/subject"
    assert _errors(converter, entry) == [("mapping.several-patients", location)]


@pytest.mark.parametrize("engine", ["interpreted", "compiled", "ceiling"])
@pytest.mark.parametrize(
    "subject",
    [
        _subject(FETUS, "<name>胎儿A</name>"),  # an obstetric report's fetus, labelled
        _subject(FETUS),
        _subject(person="<name> 王伟 </name>"),  # the patient again
        _subject(person="<name><family>王</family> <given>伟</given></name>"),
    ],
    ids=["fetus", "fetus-unnamed", "the-patient", "the-patient-in-parts"],
)
def test_a_fetus_or_the_patient_again_converts(
    engines: dict[str, Converter], engine: str, subject: str
) -> None:
    assert _errors(engines[engine], subject) == []


FATHER = '<code code="FTH" codeSystem="2.16.840.1.113883.5.111" displayName="father"/>'
ONESELF = '<code code="ONESELF" codeSystem="2.16.840.1.113883.5.111" displayName="self"/>'
MASKED_PATIENT = '<name nullFlavor="MSK"/>'


@pytest.mark.parametrize("engine", ["interpreted", "compiled", "ceiling"])
@pytest.mark.parametrize(
    "subject",
    [
        _subject(FATHER, "<name>王伟</name>"),  # the father, named as his son
        _subject(MOTHER, "<name>王伟</name>"),
    ],
    ids=["father-same-name", "mother-same-name"],
)
def test_a_subject_coded_as_another_person_refuses_whatever_its_name(
    engines: dict[str, Converter], engine: str, subject: str
) -> None:
    # Its code says who it is: a relative sharing the patient's name is not the patient.
    errors = _errors(engines[engine], subject)
    assert errors == [("mapping.several-patients", SECTION_SUBJECT)]


def test_the_patient_coded_as_oneself_converts(converter: Converter) -> None:
    assert _errors(converter, _subject(ONESELF, "<name>王伟</name>")) == []


@pytest.mark.parametrize("engine", ["interpreted", "compiled", "ceiling"])
@pytest.mark.parametrize(
    "person", ['<name nullFlavor="MSK"/>', "<name> </name>"], ids=["masked", "blank"]
)
def test_a_nameless_subject_is_not_the_nameless_patient(
    engines: dict[str, Converter], engine: str, person: str
) -> None:
    # The patient's name masked (a shared document): an unnamed subject (the mother)
    # equals it as text, but no name says who either is.
    text = CDA.read_text(encoding="utf-8").replace("<name>王伟</name>", MASKED_PATIENT, 1)
    text = text.replace(FINDINGS, FINDINGS + _subject(MOTHER, person), 1)
    [record] = engines[engine].convert(text.encode("utf-8"))
    errors = [(e.code, e.location) for e in record.errors]
    assert ("mapping.several-patients", SECTION_SUBJECT) in errors


@pytest.mark.parametrize(
    "person",
    [
        "<name>王偉</name>",
        "<name>WANG Wei</name>",
        "<name><given>伟</given><family>王</family></name>",
    ],
    ids=["traditional", "latin", "given-first"],
)
def test_the_patients_name_written_otherwise_is_not_taken_for_the_patient(
    converter: Converter, person: str
) -> None:
    # Names are compared as written, never script-converted or reordered: 王偉 may be
    # another person than 王伟, so the document is refused (the sender sees why) rather
    # than its section filed under a guess.
    errors = _errors(converter, _subject(person=person))
    assert errors == [("mapping.several-patients", SECTION_SUBJECT)]
