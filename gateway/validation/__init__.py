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

# The profile of the transaction Bundle a conversion makes (profiles/, docs/profiles/);
# the pipeline holds each Bundle to it. Its resources name theirs in meta.profile.
TRANSACTION_PROFILE = "https://fhir-gateway.example.org/StructureDefinition/transaction-bundle"

__all__ = [
    "TRANSACTION_PROFILE",
    "Validator",
    "check_bundle",
    "check_references",
    "reference_values",
    "validate_bundle",
    "validate_resource",
]
