"""Locus's local API: Anthropic Messages and OpenAI chat completions over the loaded model.

`create_app(engine, ServerConfig(...))` gives the ASGI app; `ServerThread` runs it in the
background; `locus serve` runs it in the foreground.
"""

from .app import create_app
from .config import DEFAULT_HOST, DEFAULT_PORT, ServerConfig, api_key_from_keyring
from .errors import APIError
from .runner import ServerThread, make_server

__all__ = [
    "DEFAULT_HOST",
    "DEFAULT_PORT",
    "APIError",
    "ServerConfig",
    "ServerThread",
    "api_key_from_keyring",
    "create_app",
    "make_server",
]
