"""FHIR interoperability gateway for Hong Kong and mainland China hospitals.

Pipeline stages live in subpackages (intake, mapping, validation, api); the
:class:`Converter` runs them. See docs/architecture.md.
"""

__version__ = "0.1.0"

from .config import Settings
from .envelope import Record
from .errors import (
    ConfigError,
    GatewayError,
    IntakeError,
    Issue,
    MappingError,
    ValidationError,
    operation_outcome,
)
from .pipeline import Converter, dump_json

__all__ = [
    "ConfigError",
    "Converter",
    "GatewayError",
    "IntakeError",
    "Issue",
    "MappingError",
    "Record",
    "Settings",
    "ValidationError",
    "__version__",
    "dump_json",
    "operation_outcome",
]
