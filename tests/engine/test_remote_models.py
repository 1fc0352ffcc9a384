"""A model server whose /v1/models fails still serves the model named on the command line."""

from __future__ import annotations

import socket

import pytest

from engine import GenerationRequest
from engine.remote import RemoteBackend, RemoteError
from tests.fakeopenai import Fake, chunk, sse

NAME = "mlx-community/Qwen3.6-35B-A3B-4bit"


@pytest.fixture
def dropping():
    srv = Fake(sse(chunk({"content": "hello"}, "stop")), models="drop")
    yield srv
    srv.close()


def test_a_dropped_models_request_uses_the_model_named(dropping):
    rb = RemoteBackend(dropping.url, model=NAME)
    assert rb.info.name == NAME and rb.info.context_tokens == 0
    req = GenerationRequest(messages=[{"role": "user", "content": "hi"}], max_tokens=8)
    assert rb.generate(req).text == "hello"
    assert dropping.posts()[-1]["model"] == NAME
    assert any(p == "/v1/models" for p, _, _ in dropping.requests)  # it was asked, and failed


def test_without_a_model_named_the_failure_is_reported(dropping):
    with pytest.raises(RemoteError, match="closed the connection"):
        RemoteBackend(dropping.url).info  # noqa: B018


def test_a_server_that_is_not_there_is_reported_even_with_a_model_named():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(RemoteError, match="connection refused"):
        RemoteBackend(f"http://127.0.0.1:{port}/v1", model=NAME).info  # noqa: B018
