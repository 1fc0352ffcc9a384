"""A minimal pure-Python engine.Backend for window tests (no MLX): replies with fixed text.

Provisional: the lead will unify it with tests/fakebackend.py from another branch.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

from engine import (
    BackendInfo,
    Done,
    GenerationRequest,
    GenerationResult,
    PreparedRequest,
    TextDelta,
    Usage,
)


class FakeHandle:
    def __init__(self, words: list[str], prompt_tokens: int) -> None:
        self.words, self.prompt_tokens = words, prompt_tokens
        self.done: Done | None = None
        self._cancel = threading.Event()

    def cancel(self) -> None:
        self._cancel.set()

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    def events(self, timeout: float | None = None) -> Iterator:
        sent = 0
        for w in self.words:
            if self._cancel.is_set():
                break
            sent += 1
            yield TextDelta(w)
        usage = Usage(self.prompt_tokens, sent, generation_tps=100.0)
        yield usage
        self.done = Done("cancelled" if self._cancel.is_set() else "stop", usage=usage)
        yield self.done

    def result(self) -> GenerationResult:
        text = "".join(e.text for e in self.events() if isinstance(e, TextDelta))
        assert self.done is not None
        return GenerationResult(text, "", [], [], self.done.finish_reason, [], self.done.usage)


class FakeBackend:
    """Answers every request with `reply`, a word at a time; records requests and close()."""

    def __init__(self, reply: str = "Hello from the fake.", *, name: str = "fake-model",
                 context_tokens: int = 4096) -> None:  # fmt: skip
        self.reply = reply
        self._info = BackendInfo(name=name, context_tokens=context_tokens, vocab_size=1000)
        self.requests: list[GenerationRequest] = []
        self.closed = False

    @property
    def info(self) -> BackendInfo:
        return self._info

    def count_tokens(self, request: GenerationRequest) -> int:
        return sum(len(str(m.get("content") or "").split()) for m in request.messages or [])

    def prepare(self, request: GenerationRequest) -> PreparedRequest:
        return PreparedRequest(request, self.count_tokens(request), model_id="fake")

    def submit(self, request: GenerationRequest | PreparedRequest) -> FakeHandle:
        req = request.request if isinstance(request, PreparedRequest) else request
        self.requests.append(req)
        words = [w + " " for w in self.reply.split()]
        return FakeHandle(words, self.count_tokens(req))

    def close(self) -> None:
        self.closed = True
