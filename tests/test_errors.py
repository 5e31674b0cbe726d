"""Issue → OperationOutcome.issue: the source location (terser path, DICOM tag, XPath)
in ``location``, FHIRPath only in ``expression``."""

from __future__ import annotations

from fhir.resources.R4B.operationoutcome import OperationOutcome

from gateway.errors import (
    IntakeError,
    Issue,
    MappingError,
    ValidationError,
    operation_outcome,
)


def test_a_terser_path_is_a_location_not_an_expression() -> None:
    issue = MappingError("required", "RF1-6 is empty", record="message M1", location="RF1-6").issue
    fhir = issue.to_fhir()
    assert fhir["location"] == ["RF1-6"] and "expression" not in fhir
    assert issue.line() == "error: message M1: RF1-6: RF1-6 is empty [mapping.required]"


def test_dicom_tags_and_xpaths_are_locations() -> None:
    for where in ("(0020,0011) SeriesNumber", "/ClinicalDocument/recordTarget"):
        fhir = IntakeError("dicom-bad-value", "bad", location=where).issue.to_fhir()
        assert fhir["location"] == [where] and "expression" not in fhir


def test_validation_issues_locate_fhir_elements_by_fhirpath() -> None:
    path = "Bundle.entry[0].resource.birthDate"
    issue = Issue("validation.structure", "not a date", location=path)
    fhir = issue.to_fhir()
    assert fhir["expression"] == [path] and "location" not in fhir
    assert issue.fhirpath == path and issue.source_location is None
    error = ValidationError("bundle-too-large", "too big", location="Bundle")
    assert error.expression == "Bundle" and "location" not in error.issue.to_fhir()


def test_both_when_the_source_and_the_element_are_known() -> None:
    issue = Issue(
        "mapping.bad-datetime",
        "not a date",
        location="PID-7",
        expression="Bundle.entry[2].resource.birthDate",
    )
    fhir = issue.to_fhir()
    assert fhir["location"] == ["PID-7"]
    assert fhir["expression"] == ["Bundle.entry[2].resource.birthDate"]
    assert "PID-7" in issue.line()  # the CLI names the field the sender can fix


def test_an_expression_alone_is_shown_on_the_cli_line() -> None:
    error = MappingError(
        "report-not-english", "not English", expression="DiagnosticReport.language"
    )
    assert error.issue.location is None and error.expression == "DiagnosticReport.language"
    assert "DiagnosticReport.language: not English" in error.issue.line()
    assert error.issue.to_fhir()["expression"] == ["DiagnosticReport.language"]


def test_the_outcome_is_valid_r4() -> None:
    issues = [
        Issue("intake.charset-mislabelled", "x", "message 1", "MSH-18", "warning"),
        Issue("validation.structure", "y", location="Patient.name[0]"),
    ]
    OperationOutcome.model_validate(operation_outcome(issues))
