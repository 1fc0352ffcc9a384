"""The token-level step generator: prefill in chunks, then decode one token at a time.

Decoding is pipelined like mlx-lm's: the next token's graph is queued with `async_eval` before the
current token is handed to the caller, so Python-side work overlaps the model's compute.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import mlx.core as mx

from .sampling import LogitsProcessor, Sampler

PREFILL_STEP = 2048


class Cancelled(Exception):
    """Raised inside prefill when the request was cancelled between chunks."""


def prefill(
    model: Any,
    tokens: mx.array,
    cache: list[Any],
    *,
    step: int = PREFILL_STEP,
    progress: Callable[[int, int], None] | None = None,
    cancelled: Callable[[], bool] | None = None,
    stream: Any = None,
) -> None:
    """Run `tokens` through the model into `cache`, `step` tokens at a time."""
    total = tokens.shape[0]
    done = 0
    with mx.stream(stream or mx.default_stream(mx.default_device())):
        while done < total:
            if cancelled is not None and cancelled():
                raise Cancelled
            n = min(step, total - done)
            model(tokens[done : done + n][None], cache=cache)
            mx.eval([c.state for c in cache])
            done += n
            if progress is not None:
                progress(done, total)
            mx.clear_cache()


def generate_step(
    model: Any,
    prompt: Sequence[int],
    cache: list[Any],
    *,
    sampler: Sampler,
    logits_processors: Sequence[LogitsProcessor] = (),
    prefill_step: int = PREFILL_STEP,
    progress: Callable[[int, int], None] | None = None,
    cancelled: Callable[[], bool] | None = None,
    stream: Any = None,
    start: int = 0,
    checkpoints: Sequence[int] = (),
    on_checkpoint: Callable[[int], None] | None = None,
    share: Callable[[mx.array], mx.array] | None = None,
) -> Iterator[int]:
    """Yield generated token ids forever (the caller decides when to stop).

    `cache` already holds `prompt[:start]` (from the prompt cache). The rest of the prompt but its
    last token is prefilled in chunks, stopping exactly at each position in `checkpoints` to call
    `on_checkpoint(pos)` (the cache then holds `prompt[:pos]`); the last token produces the first
    logits. `cancelled` is polled between prefill chunks; decode stops when the caller stops.
    When the caller stops after token t, t has been fed to the cache (it holds prompt + tokens).
    `share` maps each sampled token (inside the graph) to the one every process uses (a pipeline).
    """
    if len(prompt) == 0:
        raise ValueError("the prompt is empty")
    if not 0 <= start < len(prompt):
        raise ValueError(f"start {start} must be inside the prompt (length {len(prompt)})")
    stream = stream or mx.default_stream(mx.default_device())
    prompt_arr = mx.array(list(prompt), dtype=mx.uint32)
    history = prompt_arr if logits_processors else None
    total = len(prompt)

    def step(inp: mx.array) -> mx.array:
        with mx.stream(stream):
            logits = model(inp[None], cache=cache)[:, -1, :]
            if logits_processors:
                for proc in logits_processors:
                    logits = proc(history, logits)
            logprobs = logits - mx.logsumexp(logits, axis=-1, keepdims=True)
            y = sampler(logprobs)
            return share(y) if share is not None else y

    stops = sorted({p for p in checkpoints if start < p < total})
    pos = start
    for end in [*stops, total - 1]:
        prefill(
            model,
            prompt_arr[pos:end],
            cache,
            step=prefill_step,
            cancelled=cancelled,
            stream=stream,
            progress=(lambda d, _t, p=pos: progress(p + d, total)) if progress else None,
        )
        pos = end
        if end in stops and on_checkpoint is not None:
            on_checkpoint(end)
    y = step(prompt_arr[-1:])
    mx.async_eval(y)
    n = 0
    try:
        while True:
            if history is not None:
                history = mx.concatenate([history, y])
            next_y = step(y)
            mx.async_eval(next_y)
            if n == 0 and progress is not None:
                mx.eval(y)
                progress(total, total)
            yield int(y.item())
            n += 1
            if n % 256 == 0:
                mx.clear_cache()
            y = next_y
    finally:
        # The look-ahead token may still be computing; never leave work in flight on the stream.
        mx.synchronize(stream)
