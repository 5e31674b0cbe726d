"""API stage: the FastAPI application."""

from ._app import create_app
from ._auth import TokenSet, load_tokens
from ._server import GRACE, Supervisor, server_config

__all__ = [
    "GRACE",
    "Supervisor",
    "TokenSet",
    "create_app",
    "load_tokens",
    "server_config",
]
