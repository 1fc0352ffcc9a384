"""The MLX sampler and logits processors that `SamplingParams` (engine/request.py) build."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import mlx.core as mx

# The settings live with the request (engine/request.py, no MLX); still importable from here.
from .request import SamplingParams as SamplingParams

Sampler = Callable[[mx.array], mx.array]
LogitsProcessor = Callable[[mx.array, mx.array], mx.array]


def filter_logits(logits: mx.array, params: SamplingParams) -> mx.array:
    """Temperature, then top-k, then top-p, then min-p (vLLM's and transformers' order); filtered
    tokens get -inf. mlx-lm filters before the temperature, which changes the nucleus at 0.7."""
    logits = logits.astype(mx.float32) / params.temperature
    vocab = logits.shape[-1]
    if 0 < params.top_k < vocab:
        kth = mx.sort(logits, axis=-1)[..., vocab - params.top_k : vocab - params.top_k + 1]
        logits = mx.where(logits < kth, -mx.inf, logits)
    if params.top_p < 1:
        # Keep the smallest set of most likely tokens whose mass reaches top_p.
        order = mx.argsort(-logits, axis=-1)
        probs = mx.softmax(mx.take_along_axis(logits, order, axis=-1), axis=-1)
        before = mx.cumsum(probs, axis=-1) - probs
        # The most likely token always stays, however small top_p is (as in vLLM).
        drop_sorted = (before >= params.top_p) & (mx.arange(vocab) > 0)
        drop = mx.zeros_like(drop_sorted)
        drop = mx.put_along_axis(drop, order, drop_sorted, axis=-1)
        logits = mx.where(drop, -mx.inf, logits)
    if params.min_p > 0:
        probs = mx.softmax(logits, axis=-1)
        floor = params.min_p * probs.max(axis=-1, keepdims=True)
        logits = mx.where(probs < floor, -mx.inf, logits)
    return logits


def make_sampler(params: SamplingParams) -> Sampler:
    """A function from log-probabilities (1, vocab) to the chosen token (1,)."""
    if params.greedy:
        return lambda logprobs: mx.argmax(logprobs, axis=-1)
    return lambda logprobs: mx.random.categorical(filter_logits(logprobs, params))


class _Penalties:
    """Presence/frequency penalties over generated tokens only (the whole output), as vLLM and
    OpenAI define them, and repetition penalty over prompt and output, as transformers does.

    Qwen's recommended presence_penalty 1.5 assumes these semantics: a window that includes the
    prompt would push down the words of the user's own question. Order: repetition, then
    frequency/presence, then (in the sampler) temperature, top-k, top-p, min-p.
    """

    def __init__(self, params: SamplingParams, prompt_len: int):
        self.presence = params.presence_penalty
        self.frequency = params.frequency_penalty
        self.repetition = params.repetition_penalty
        self.prompt_len = prompt_len
        self.counts: mx.array | None = None  # per-token counts of the generated tokens
        self.seen: mx.array | None = None  # 1 where a token occurs in prompt or output
        self.fed = 0  # how much of the history the counts cover

    def __call__(self, history: mx.array, logits: mx.array) -> mx.array:
        vocab = logits.shape[-1]
        if self.counts is None or history.size <= self.fed:  # first call, or a history rolled back
            self.fed = 0
            self.counts = mx.zeros((vocab,), dtype=mx.float32)
            self.seen = mx.zeros((vocab,), dtype=mx.bool_)
        new = history[self.fed :]
        if new.size:
            ids = new.astype(mx.int32)
            self.seen = _mark(self.seen, ids)
            out = new[max(0, self.prompt_len - self.fed) :].astype(mx.int32)
            if out.size:
                self.counts = self.counts.at[out].add(1.0)
            self.fed = history.size
        if self.repetition != 1.0:
            # transformers' RepetitionPenaltyLogitsProcessor: divide positive logits, multiply negative.
            pen = mx.where(logits > 0, logits / self.repetition, logits * self.repetition)
            logits = mx.where(self.seen, pen, logits)
        if self.frequency:
            logits = logits - self.frequency * self.counts
        if self.presence:
            logits = logits - self.presence * (self.counts > 0)
        return logits


def _mark(seen: mx.array, ids: mx.array) -> mx.array:
    flags = mx.zeros(seen.shape, dtype=mx.int32).at[ids].add(1) > 0
    return mx.logical_or(seen, flags)


def make_logits_processors(params: SamplingParams, prompt_len: int = 0) -> list[LogitsProcessor]:
    """Penalties as Qwen's sampling settings assume them (see `_Penalties`); none when all are off.

    `prompt_len` is the number of prompt tokens at the start of the history the processor is given:
    presence and frequency penalties ignore them.
    """
    if not (params.presence_penalty or params.frequency_penalty or params.repetition_penalty != 1.0):
        return []
    return [_Penalties(params, prompt_len)]


def constraint_processors(
    req: Any, tokenizer: Any, *, start: int, reasoning: bool, vocab_size: int, eos_ids: list[int]
) -> list[LogitsProcessor]:
    """The request's constraint (engine/constrain.py) as a stateful processor, or none. Applied
    after the penalties and before sampling: the mask has the last word on which tokens may come.

    `req` is the GenerationRequest, `start` the prompt tokens at the head of the history, and
    `reasoning` whether the output starts inside `<think>` (the constraint then waits for `</think>`).
    """
    from .constrain import make_constraint

    c = make_constraint(
        req, tokenizer, start=start, reasoning=reasoning, vocab_size=vocab_size, eos_ids=eos_ids
    )
    return [c] if c is not None else []
