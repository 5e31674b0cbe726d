"""API stage: the FastAPI application."""

from ._app import create_app
from ._auth import TokenSet, load_tokens
from ._server import server_config

__all__ = ["TokenSet", "create_app", "load_tokens", "server_config"]
