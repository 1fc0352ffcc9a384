"""Fixtures for the API server: a real uvicorn server on port 0 in a thread, over real engines."""

from __future__ import annotations

import contextlib
from typing import Any

import pytest

from tests.scripted import ReplyEngine


@pytest.fixture
def serve():
    """serve(engine, **ServerConfig fields) -> a started ServerThread on 127.0.0.1, port 0."""
    from app.server import ServerConfig, ServerThread, create_app

    running: list[Any] = []

    def start(engine: Any, **cfg: Any) -> Any:
        cfg.setdefault("port", 0)
        cfg.setdefault("log_level", "warning")
        config = ServerConfig(**cfg)
        srv = ServerThread(create_app(engine, config), config).start()
        running.append(srv)
        return srv

    yield start
    for srv in running:
        with contextlib.suppress(Exception):
            srv.stop()


@pytest.fixture
def scripted(tiny_model):
    """scripted(*replies, eos=True, delay=0, then=None) -> an Engine replaying the replies (see
    ReplyEngine)."""

    def make(*replies: str, eos: bool = True, delay: float = 0.0, then: str | None = None) -> Any:
        return ReplyEngine(tiny_model, list(replies), eos=eos, delay=delay, then=then)

    return make
