"""A scripted model that replays fixed token ids: for tests of the generation loop, not the model."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import mlx.core as mx


class _Cache:
    def __init__(self) -> None:
        self.offset = 0
        self.fed: list[int] = []  # every token the model was given, in order

    @property
    def state(self) -> list[mx.array]:
        return []


class ScriptedModel:
    """Predicts `script[k]` for the k-th generated token (then the last id forever).

    `prompt_len` must be set to the request's prompt length before it runs; the position in the
    script is the cache offset past the prompt. With `then` = (trigger, ids): once the tokens it
    was given past the prompt end with `trigger` (e.g. `</think>` written by the engine at a
    thinking budget), it predicts `ids` from there instead.
    """

    def __init__(self, script: list[int], vocab_size: int, then: tuple[list[int], list[int]] | None = None):
        self.script = script
        self.vocab_size = vocab_size
        self.prompt_len = 0
        self.calls = 0
        self.then = then

    def make_cache(self) -> list[Any]:
        return [_Cache()]

    def __call__(self, inputs: mx.array, cache: list[Any] | None = None, **_: Any) -> mx.array:
        self.calls += 1
        c = cache[0]
        c.offset += inputs.shape[1]
        script, k = self.script, c.offset - self.prompt_len
        if self.then is not None:
            c.fed.extend(inputs[0].tolist())
            trigger, after = self.then
            n = len(trigger)
            ends = [e for e in range(max(self.prompt_len, n), len(c.fed) + 1) if c.fed[e - n : e] == trigger]
            if ends:
                script, k = after, len(c.fed) - ends[-1]
        k = min(max(k, 0), len(script) - 1)
        logits = mx.full((1, inputs.shape[1], self.vocab_size), -1e9)
        logits[:, -1, script[k]] = 0.0
        return logits


def _then(loaded: Any, then: str | None) -> tuple[list[int], list[int]] | None:
    """ScriptedModel's `then` for an answer written once `</think>\n\n` is in the input."""
    if then is None:
        return None
    tok = loaded.tokenizer
    trigger = tok.encode("</think>\n\n", add_special_tokens=False)
    return trigger, [*tok.encode(then, add_special_tokens=False), loaded.eos_token_ids[0]]


def scripted_engine(loaded: Any, text: str, eos: bool = True, then: str | None = None):
    """An Engine whose model replays `text` (tokenized by the real tokenizer), then eos; `then`:
    what it writes once the engine closes its reasoning (see ScriptedModel)."""
    from engine import Engine

    tok = loaded.tokenizer
    ids = tok.encode(text, add_special_tokens=False)
    if eos:
        ids.append(loaded.eos_token_ids[0])
    vocab = int(loaded.config["text_config"]["vocab_size"])
    model = ScriptedModel(ids, vocab, then=_then(loaded, then))
    return Engine(replace(loaded, model=model)), model


class ForcedModel:
    """The real model (real cache, real compute) with its choices forced to follow `script`.

    Position in the script comes from the attention cache's offset past `prompt_len`, so it stays
    right when a request resumes from a prompt-cache snapshot.
    """

    def __init__(self, model: Any, script: list[int]):
        self.model = model
        self.script = script
        self.prompt_len = 0

    def make_cache(self) -> list[Any]:
        return self.model.make_cache()

    def __call__(self, inputs: mx.array, cache: list[Any] | None = None, **kw: Any) -> mx.array:
        out = self.model(inputs, cache=cache, **kw)
        offset = next(c.offset for c in cache if type(c).__name__ == "KVCache")
        k = min(max(offset - self.prompt_len, 0), len(self.script) - 1)
        forced = mx.full(out.shape[-1:], -1e9)
        forced[self.script[k]] = 0.0
        return mx.concatenate([out[:, :-1], (out[:, -1:] * 0 + forced)], axis=1)


def forced_engine(loaded: Any, prompt_cache: Any = None):
    """An Engine over the real tiny model whose outputs a test sets with `set_script`."""
    from engine import Engine

    model = ForcedModel(loaded.model, [loaded.eos_token_ids[0]])
    eng = Engine(replace(loaded, model=model), prompt_cache=prompt_cache)

    def set_script(text: str, req: Any) -> list[int]:
        ids = [*loaded.tokenizer.encode(text, add_special_tokens=False), loaded.eos_token_ids[0]]
        model.script = ids
        model.prompt_len = len(eng.encode(req)[0])
        return ids

    return eng, set_script


class _Scripted(ScriptedModel):
    """ScriptedModel that can take its time per step (a slow prefill or decode)."""

    delay = 0.0

    def __call__(self, inputs: mx.array, cache: list[Any] | None = None, **kw: Any) -> mx.array:
        if self.delay:
            time.sleep(self.delay)
        return super().__call__(inputs, cache, **kw)


class ReplyEngine:
    """Builds an Engine whose model replays scripted replies, one per request (the last repeats).

    Each reply is the raw text after the prompt (e.g. "thought</think>\\n\\nanswer"); `replies` may
    also be a function of the GenerationRequest. `eos=False` makes the model repeat the reply's
    last token until max_tokens or cancel. `then`: what the model writes once the engine itself
    closes the reasoning (a thinking budget). With `prompt_cache`, the real model runs (real
    cache, snapshots in `prompt_cache`) with its choices forced to the replies (ForcedModel).
    """

    def __new__(
        cls,
        loaded: Any,
        replies: list[str] | Callable[[Any], str],
        eos: bool = True,
        delay: float = 0.0,
        then: str | None = None,
        prompt_cache: Any = None,
    ) -> Any:
        from engine import Engine

        tok = loaded.tokenizer
        vocab = int(loaded.config["text_config"]["vocab_size"])
        scripted: Any
        if prompt_cache is not None:
            scripted = ForcedModel(loaded.model, [loaded.eos_token_ids[0]])
        else:
            scripted = _Scripted([loaded.eos_token_ids[0]], vocab, then=_then(loaded, then))
            scripted.delay = delay

        class _Engine(Engine):
            def submit(self, req: Any) -> Any:
                # A PreparedRequest (what the server submits): its request, its prompt's length.
                request = getattr(req, "request", req)
                if callable(self.replies):
                    text = self.replies(request)
                else:
                    text = self.replies.pop(0) if len(self.replies) > 1 else self.replies[0]
                ids = tok.encode(text, add_special_tokens=False)
                if self.eos:
                    ids.append(loaded.eos_token_ids[0])
                scripted.script = ids or [loaded.eos_token_ids[0]]
                # Position in the script counts from the end of this request's prompt.
                n = getattr(req, "prompt_tokens", None)
                scripted.prompt_len = n if n is not None else len(self._encode(request)[0])
                self.requests.append(request)
                handle = super().submit(req)
                self.handles.append(handle)
                return handle

            def prompt_text(self, i: int = -1) -> str:
                """The prompt of the i-th request as the model was given it (prefix included)."""
                return tok.decode(self._encode(self.requests[i])[0])

        eng = _Engine(replace(loaded, model=scripted), prompt_cache=prompt_cache)
        eng.replies = replies if callable(replies) else list(replies)
        eng.eos = eos
        eng.requests = []
        eng.handles = []
        return eng


def batched_reply_engine(loaded: Any, reply: Callable[[Any], str], parallel: int) -> Any:
    """An Engine over the real tiny model that batches up to `parallel` requests (engine/scheduler.py),
    each forced to write its own reply `reply(request)` by a logits processor on its own row.

    `eng.trace` gets (handle id, scheduler step) for every token a request samples, and `eng.runs`
    maps each handle id to its request: which requests shared batched decode steps shows in them.
    """
    from engine import Engine

    tok, eos = loaded.tokenizer, loaded.eos_token_ids[0]

    class _Engine(Engine):
        def _new_run(self, req: Any, handle: Any) -> Any:
            run = super()._new_run(req, handle)
            ids = [*tok.encode(reply(req), add_special_tokens=False), eos]
            own, sched = run.processors, self.scheduler
            self.runs[handle.id] = req

            def processors() -> list[Any]:
                start = len(run.prompt)  # the history a processor gets opens with the prompt

                def force(history: mx.array, logits: mx.array) -> mx.array:
                    k = min(max(history.shape[-1] - start, 0), len(ids) - 1)
                    self.trace.append((handle.id, sched.steps))
                    forced = mx.full(logits.shape, -1e9)
                    forced[..., ids[k]] = 0.0
                    return logits * 0 + forced

                return [*own(), force]

            run.processors = processors
            return run

    eng = _Engine(loaded, parallel=parallel)
    eng.trace, eng.runs = [], {}
    return eng
