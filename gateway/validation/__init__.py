"""Validation stage: structure (fhir.resources R4B models), the profiles (StructureDefinition
snapshots: cardinality, fixed/pattern, slicing, bindings, FHIRPath invariants, reference
types) and Bundle reference integrity."""

from ._models import (
    Validator,
    check_bundle,
    check_references,
    reference_values,
    validate_bundle,
    validate_resource,
)

__all__ = [
    "Validator",
    "check_bundle",
    "check_references",
    "reference_values",
    "validate_bundle",
    "validate_resource",
]
