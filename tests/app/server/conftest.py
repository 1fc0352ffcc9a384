"""Fixtures for the API server: a real uvicorn server on port 0 in a thread, over real engines."""

from __future__ import annotations

import contextlib
import time
from dataclasses import replace
from typing import Any

import pytest

from tests.scripted import ScriptedModel


class _Scripted(ScriptedModel):
    """ScriptedModel that can take its time per step (a slow prefill or decode)."""

    delay = 0.0

    def __call__(self, inputs: Any, cache: Any = None, **kw: Any) -> Any:
        if self.delay:
            time.sleep(self.delay)
        return super().__call__(inputs, cache, **kw)


class ReplyEngine:
    """Builds an Engine whose model replays scripted replies, one per request (the last repeats).

    Each reply is the raw text after the prompt (e.g. "thought</think>\n\nanswer"); `eos=False`
    makes the model repeat the reply's last token until max_tokens or cancel.
    """

    def __new__(cls, loaded: Any, replies: list[str], eos: bool = True, delay: float = 0.0) -> Any:
        from engine import Engine

        tok = loaded.tokenizer
        vocab = int(loaded.config["text_config"]["vocab_size"])
        scripted = _Scripted([loaded.eos_token_ids[0]], vocab)
        scripted.delay = delay

        class _Engine(Engine):
            def submit(self, req: Any) -> Any:
                text = self.replies.pop(0) if len(self.replies) > 1 else self.replies[0]
                ids = tok.encode(text, add_special_tokens=False)
                if self.eos:
                    ids.append(loaded.eos_token_ids[0])
                scripted.script = ids or [loaded.eos_token_ids[0]]
                # Position in the script counts from the end of this request's prompt.
                scripted.prompt_len = len(self._encode(req)[0])
                self.requests.append(req)
                handle = super().submit(req)
                self.handles.append(handle)
                return handle

        eng = _Engine(replace(loaded, model=scripted))
        eng.replies = list(replies)
        eng.eos = eos
        eng.requests = []
        eng.handles = []
        return eng


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
    """scripted(*replies, eos=True, delay=0) -> an Engine replaying the replies (see ReplyEngine)."""

    def make(*replies: str, eos: bool = True, delay: float = 0.0) -> Any:
        return ReplyEngine(tiny_model, list(replies), eos=eos, delay=delay)

    return make
