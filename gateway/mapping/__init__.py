"""Mapping stage: applies the declarative mappings in ``mappings/`` to parsed records."""

from ._bundle import NAMESPACE, resource_id
from ._engine import MappingSet, MessageMapping
from ._functions import Env
from ._terminology import Terminology

__all__ = ["NAMESPACE", "Env", "MappingSet", "MessageMapping", "Terminology", "resource_id"]
