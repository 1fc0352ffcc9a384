"""Locus's local API: Anthropic Messages and OpenAI chat completions over the loaded model.

`create_app(backend, ServerConfig(...))` (backend: an engine.Backend) gives the ASGI app;
`ServerThread` runs it in the background; `locus serve` runs it in the foreground.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .app import create_app
    from .config import DEFAULT_HOST, DEFAULT_PORT, ServerConfig, api_key_from_keyring
    from .errors import APIError
    from .runner import ServerThread, make_server

# Imported on first use, so `locus --help` (which reads the defaults in .config) skips FastAPI
# and the engine.
_WHERE = {
    "create_app": "app",
    "DEFAULT_HOST": "config",
    "DEFAULT_PORT": "config",
    "ServerConfig": "config",
    "api_key_from_keyring": "config",
    "APIError": "errors",
    "ServerThread": "runner",
    "make_server": "runner",
}

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


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
    globals()[name] = value
    return value
