"""Sampling settings, the model card's presets, and the MLX sampler/processors they build."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import mlx.core as mx

from .errors import RequestError


@dataclass(frozen=True)
class SamplingParams:
    """How the next token is chosen. temperature 0 means greedy; top_k 0 and top_p 1 disable them."""

    temperature: float = 1.0
    top_p: float = 0.95
    top_k: int = 20
    min_p: float = 0.0
    presence_penalty: float = 0.0
    repetition_penalty: float = 1.0
    penalty_context: int = 256
    seed: int | None = None

    def validate(self) -> SamplingParams:
        """Raise RequestError naming the first out-of-range value."""
        checks = [
            (self.temperature >= 0, f"temperature must be >= 0 (got {self.temperature})"),
            (0 < self.top_p <= 1, f"top_p must be in (0, 1] (got {self.top_p})"),
            (self.top_k >= 0, f"top_k must be >= 0 (got {self.top_k})"),
            (0 <= self.min_p <= 1, f"min_p must be in [0, 1] (got {self.min_p})"),
            (-2 <= self.presence_penalty <= 2,
             f"presence_penalty must be in [-2, 2] (got {self.presence_penalty})"),
            (self.repetition_penalty > 0,
             f"repetition_penalty must be > 0 (got {self.repetition_penalty})"),
            (self.penalty_context > 0, "penalty_context must be > 0"),
        ]  # fmt: skip
        for ok, msg in checks:
            if not ok:
                raise RequestError(msg)
        return self

    def with_(self, **changes: Any) -> SamplingParams:
        """A copy with the given fields changed; None values are ignored."""
        return replace(self, **{k: v for k, v in changes.items() if v is not None})


# The three profiles of Qwen3.6's model card.
PRESETS: dict[str, SamplingParams] = {
    "thinking": SamplingParams(
        temperature=1.0, top_p=0.95, top_k=20, min_p=0.0, presence_penalty=1.5
    ),
    "coding": SamplingParams(
        temperature=0.6, top_p=0.95, top_k=20, min_p=0.0, presence_penalty=0.0
    ),
    "instruct": SamplingParams(
        temperature=0.7, top_p=0.8, top_k=20, min_p=0.0, presence_penalty=1.5
    ),
}


def preset(name: str) -> SamplingParams:
    """A named preset: thinking (general), coding (precise coding) or instruct (no thinking)."""
    try:
        return PRESETS[name]
    except KeyError:
        raise RequestError(
            f"unknown sampling preset {name!r}; choose one of {sorted(PRESETS)}"
        ) from None


Sampler = Callable[[mx.array], mx.array]
LogitsProcessor = Callable[[mx.array, mx.array], mx.array]


def make_sampler(params: SamplingParams) -> Sampler:
    """A function from log-probabilities (1, vocab) to the chosen token (1,)."""
    from mlx_lm.sample_utils import make_sampler as mlx_make_sampler

    if params.temperature == 0:
        return lambda logprobs: mx.argmax(logprobs, axis=-1)
    return mlx_make_sampler(
        temp=params.temperature,
        top_p=params.top_p if params.top_p < 1 else 0.0,
        min_p=params.min_p,
        top_k=params.top_k,
    )


def make_logits_processors(params: SamplingParams) -> list[LogitsProcessor]:
    """Presence and repetition penalties over the last `penalty_context` tokens."""
    from mlx_lm.sample_utils import make_presence_penalty, make_repetition_penalty

    out: list[LogitsProcessor] = []
    if params.presence_penalty:
        out.append(make_presence_penalty(params.presence_penalty, params.penalty_context))
    if params.repetition_penalty != 1.0:
        out.append(make_repetition_penalty(params.repetition_penalty, params.penalty_context))
    return out
