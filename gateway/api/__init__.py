"""API stage: the FastAPI application."""

from ._app import create_app
from ._auth import TokenSet, load_tokens
from ._server import serve, server_config

__all__ = ["TokenSet", "create_app", "load_tokens", "serve", "server_config"]
