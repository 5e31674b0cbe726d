"""Mapping stage: applies the declarative mappings in ``mappings/`` to parsed records.

Other stages use what this ``__all__`` exports (the report variants read the
terminology, ``language_of`` and the translation extension's URL), never the private
modules behind it.
"""

from ._bundle import NAMESPACE, WriteRules, resource_id, search_escape, write_rules
from ._engine import MappingSet, MessageMapping
from ._functions import TRANSLATION_URL, Env
from ._narrative import Narratives
from ._terminology import Terminology, language_of

__all__ = [
    "NAMESPACE",
    "TRANSLATION_URL",
    "Env",
    "MappingSet",
    "MessageMapping",
    "Narratives",
    "Terminology",
    "WriteRules",
    "language_of",
    "resource_id",
    "search_escape",
    "write_rules",
]
