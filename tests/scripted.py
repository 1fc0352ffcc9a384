"""A scripted model that replays fixed token ids: for tests of the generation loop, not the model."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import mlx.core as mx


class _Cache:
    def __init__(self) -> None:
        self.offset = 0

    @property
    def state(self) -> list[mx.array]:
        return []


class ScriptedModel:
    """Predicts `script[k]` for the k-th generated token (then the last id forever).

    `prompt_len` must be set to the request's prompt length before it runs; the position in the
    script is the cache offset past the prompt.
    """

    def __init__(self, script: list[int], vocab_size: int):
        self.script = script
        self.vocab_size = vocab_size
        self.prompt_len = 0
        self.calls = 0

    def make_cache(self) -> list[Any]:
        return [_Cache()]

    def __call__(self, inputs: mx.array, cache: list[Any] | None = None, **_: Any) -> mx.array:
        self.calls += 1
        c = cache[0]
        c.offset += inputs.shape[1]
        k = min(max(c.offset - self.prompt_len, 0), len(self.script) - 1)
        logits = mx.full((1, inputs.shape[1], self.vocab_size), -1e9)
        logits[:, -1, self.script[k]] = 0.0
        return logits


def scripted_engine(loaded: Any, text: str, eos: bool = True):
    """An Engine whose model replays `text` (tokenized by the real tokenizer), then eos."""
    from engine import Engine

    tok = loaded.tokenizer
    ids = tok.encode(text, add_special_tokens=False)
    if eos:
        ids.append(loaded.eos_token_ids[0])
    vocab = int(loaded.config["text_config"]["vocab_size"])
    model = ScriptedModel(ids, vocab)
    return Engine(replace(loaded, model=model)), model
