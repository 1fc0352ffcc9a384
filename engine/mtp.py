"""Speculative decoding with the checkpoint's own multi-token-prediction (MTP) head.

Qwen3.5/3.6 ship one extra decoder layer (`mtp.*`) trained to predict the token after next. As in
vLLM's `qwen3_5_mtp.py` and SGLang's `qwen3_next_mtp.py`, the head takes the main model's last
hidden state h_i (after its final norm) and the embedding of token t_{i+1}:

    x = fc(concat(pre_fc_norm_embedding(embed(t_{i+1})), pre_fc_norm_hidden(h_i)))

runs one full-attention MoE decoder layer on x at position i (with its own KV cache), applies
`norm`, and the shared lm_head gives the logits of t_{i+2}. Its normed output is the hidden state
of the next, recursive draft.

Decoding drafts K tokens with the head, runs the main model once on [y, d_1..d_K], keeps the drafts
the main model agrees with (greedy: equal to its argmax; sampling: accepted with min(1, p/q), the
first rejection resampled from max(0, p - q)) plus one token of its own, and rolls the cache back:
KV caches are trimmed, and the gated-DeltaNet layers, which cannot be trimmed, record their conv and
recurrent states after every position of the verification (`Model.recording`), so a rejection sets
them to the last accepted position. A model that cannot record them is restored from the references
kept before verification and re-advanced over the accepted tokens.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import mlx.core as mx
import mlx.nn as nn
from mlx_lm.models import qwen3_5
from mlx_lm.models.base import create_attention_mask

from .generate import PREFILL_STEP, Cancelled
from .mlxlm_compat import is_kv_cache
from .model import ImagePrompt, MRopeAttention, PositionStates, _RopeState
from .request import MAX_DRAFT
from .sampling import LogitsProcessor, SamplingParams


class MTPHead(nn.Module):
    """`mtp.*`: fc over [normed embedding; normed hidden], one full-attention MoE layer, norm."""

    def __init__(self, args: Any):
        super().__init__()
        H, eps = args.hidden_size, args.rms_norm_eps
        self.fc = nn.Linear(2 * H, H, bias=False)
        self.pre_fc_norm_embedding = nn.RMSNorm(H, eps=eps)
        self.pre_fc_norm_hidden = nn.RMSNorm(H, eps=eps)
        # layer_idx makes mlx-lm build a full-attention layer (with the sparse MoE MLP).
        layer = qwen3_5.DecoderLayer(args, layer_idx=args.full_attention_interval - 1)
        self._rope = _RopeState()
        layer.self_attn = MRopeAttention(args, self._rope)
        self.layers = [layer]
        self.norm = nn.RMSNorm(H, eps=eps)

    def __call__(self, embeds: mx.array, hidden: mx.array, cache: Any, positions: mx.array) -> mx.array:
        """The head's normed output (B, L, H) for pairs (hidden_i, embed(t_{i+1})) at positions i."""
        x = mx.concatenate([self.pre_fc_norm_embedding(embeds), self.pre_fc_norm_hidden(hidden)], axis=-1)
        x = self.fc(x)
        mask = create_attention_mask(x, cache)
        self._rope.positions = positions
        try:
            x = self.layers[0](x, mask=mask, cache=cache)
        finally:
            self._rope.positions = None
        return self.norm(x)


def attach_head(model: Any, weights: dict[str, mx.array], quantization: Any, predicate: Any):
    """Build the MTP head on `model` from its `mtp.*` weights (quantized like the rest); returns
    the list of problems (missing / unexpected / misshapen keys), empty when it loaded."""
    from mlx.utils import tree_flatten, tree_unflatten

    head = MTPHead(model.language_model.args)
    if quantization is not None:
        nn.quantize(
            head,
            group_size=int(quantization["group_size"]),
            bits=int(quantization["bits"]),
            mode=quantization.get("mode", "affine"),
            class_predicate=predicate,
        )
    expected = dict(tree_flatten(head.parameters()))
    missing = sorted(set(expected) - set(weights))
    unexpected = sorted(set(weights) - set(expected))
    bad = [k for k, v in weights.items() if k in expected and v.shape != expected[k].shape]
    problems = [f"missing {k}" for k in missing[:3]] + [f"unexpected {k}" for k in unexpected[:3]]
    problems += [f"{k} has shape {list(weights[k].shape)}" for k in bad[:3]]
    if problems:
        return problems
    head.update(tree_unflatten(list(weights.items())))
    model["mtp"] = head
    return []


# -- sampling distributions ------------------------------------------------------------------------


def make_probs(params: SamplingParams) -> Callable[[mx.array], mx.array]:
    """Log-probabilities (N, V) → the distribution Locus's sampler draws from (the same
    temperature → top-k → top-p → min-p filter as `engine.sampling.make_sampler`)."""
    from .sampling import filter_logits

    def probs(logprobs: mx.array) -> mx.array:
        if params.greedy:
            best = mx.argmax(logprobs, axis=-1, keepdims=True)
            return (mx.arange(logprobs.shape[-1]) == best).astype(mx.float32)
        return mx.softmax(filter_logits(logprobs, params), axis=-1)

    return probs


def speculative_accept(p: mx.array, q: mx.array | None, drafts: Sequence[int]) -> tuple[int, int]:
    """Standard speculative sampling over K drafts: (how many are accepted, the next token).

    `p` (K+1, V): the target distributions at each draft and after the last; `q` (K, V): the
    drafter's (None: the drafts were deterministic, q one-hot). Draft j is accepted with
    probability min(1, p_j(d)/q_j(d)); the first rejected one is replaced by a sample of
    normalize(max(0, p_j - q_j)); when all pass, the next token is drawn from p_K. The output is
    then distributed exactly as p (Leviathan et al. 2023, Chen et al. 2023).
    """
    K = len(drafts)
    d = mx.array(list(drafts), dtype=mx.int32) if K else None
    if K:
        pd = mx.take_along_axis(p[:K], d[:, None], axis=1)[:, 0]
        if q is None:
            ratio = pd
        else:
            qd = mx.take_along_axis(q, d[:, None], axis=1)[:, 0]
            ratio = pd / mx.maximum(qd, 1e-30)
        u = mx.random.uniform(shape=(K,))
        ok = (u < ratio).tolist()
        a = next((j for j, good in enumerate(ok) if not good), K)
    else:
        a = 0
    if a == K:
        return K, int(mx.random.categorical(mx.log(p[K])).item())
    if q is None:
        resid = mx.where(mx.arange(p.shape[-1]) == drafts[a], 0, p[a])
    else:
        resid = mx.maximum(p[a] - q[a], 0)
    total = resid.sum()
    if float(total.item()) <= 0:  # p == q at this row: any draw from p is right
        resid, total = p[a], p[a].sum()
    return a, int(mx.random.categorical(mx.log(resid / total)).item())


# -- the decode loop -------------------------------------------------------------------------------


@dataclass
class DraftStats:
    """Counts of one request: tokens drafted and drafts the main model accepted."""

    drafted: int = 0
    accepted: int = 0
    rounds: int = 0


def _save(cache: list[Any]) -> list[Any]:
    # KV caches: their offset (trimmed later); recurrent caches: references to their arrays, which
    # updates replace rather than write into.
    return [c.offset if is_kv_cache(c) else list(c.cache) for c in cache]


def _restore(cache: list[Any], saved: list[Any]) -> None:
    for c, s in zip(cache, saved, strict=True):
        if isinstance(s, int):
            c.offset = min(c.offset, s)
        else:
            c.cache = list(s)


Drafter = Callable[[list[int], int], list[int]]


@dataclass
class _Round:
    """One verification: the block [y, d_1..d_K] fed to the main model at position `pos`."""

    pos: int
    block: list[int]
    accepted: int  # a: drafts the main model agreed with
    next_token: int  # its own token after them
    hidden: mx.array  # (1, K+1, H) main-model hidden states of the block
    states: PositionStates | None  # linear-attention states after each position, when recorded
    saved: list[Any]  # the cache before the block (restore + re-advance without `states`)


class _Speculator:
    """One request's speculative decode: the main model and its caches, the drafter (the MTP head
    or a given function), and the next token `y` at position `pos` (not yet in the main cache)."""

    def __init__(
        self,
        model: Any,
        prompt: Sequence[int],
        cache: list[Any],
        params: SamplingParams,
        draft_tokens: int,
        stats: DraftStats,
        drafter: Drafter | None,
        logits_processors: Sequence[LogitsProcessor],
    ):
        self.K = int(draft_tokens)
        if not 1 <= self.K <= MAX_DRAFT:
            raise ValueError(f"draft_tokens must be in 1..{MAX_DRAFT} (got {self.K})")
        self.model = model
        base = model.model if isinstance(model, ImagePrompt) else model  # (mlx-lm's has .model too)
        self.base = base
        self.head = None if drafter is not None else base.mtp_head
        if drafter is None and self.head is None:
            raise ValueError("this model has no MTP head to draft with")
        self.drafter = drafter
        self.main = cache[:-1] if base.mtp_head is not None else cache
        self.mcache = cache[-1] if base.mtp_head is not None else None
        self.cache = cache
        self.embed = base.language_model.model.embed_tokens
        self.params, self.probs = params, make_probs(params)
        self.greedy = params.greedy
        self.procs = logits_processors
        self.stats = stats
        self.tokens = list(prompt)  # prompt + every token handed out
        self.prompt_arr = mx.array(list(prompt), dtype=mx.uint32)
        self.pos = len(prompt)
        self.y = -1
        self.g: mx.array | None = None  # the head's output that drafts the token after y

    # -- helpers ------------------------------------------------------------------------------

    def run_head(self, h: mx.array, ids: Sequence[int] | mx.array, pos: int) -> mx.array:
        """Pairs (h_i, t_{i+1}) at positions pos.., through the head and its KV cache."""
        ids = mx.array(ids, dtype=mx.uint32) if not isinstance(ids, mx.array) else ids
        L = ids.shape[-1]
        return self.head(self.embed(ids.reshape(1, L)), h, self.mcache, self.model.text_positions(pos, L))

    def process(self, logits: mx.array, seen: list[int] | mx.array) -> mx.array:
        """Penalties see the tokens before each position, as plain decoding's do."""
        if not self.procs:
            return logits
        hist = seen if isinstance(seen, mx.array) else mx.array(seen, dtype=mx.uint32)
        for proc in self.procs:
            logits = proc(hist, logits)
        return logits

    @staticmethod
    def logprobs(logits: mx.array) -> mx.array:
        return logits - mx.logsumexp(logits, axis=-1, keepdims=True)

    # -- the steps ----------------------------------------------------------------------------

    def prefill(
        self,
        start: int,
        checkpoints: Sequence[int],
        on_checkpoint: Callable[[int], None] | None,
        step: int,
        progress: Callable[[int, int], None] | None,
        cancelled: Callable[[], bool] | None,
    ) -> None:
        """The prompt through the main model (and its pairs through the head), then `y`."""
        total, arr = len(self.tokens), self.prompt_arr
        stops = sorted({p for p in checkpoints if start < p < total})
        pos = start
        for end in [*stops, total - 1]:
            while pos < end:
                if cancelled is not None and cancelled():
                    raise Cancelled
                n = min(step, end - pos)
                h = self.model(arr[pos : pos + n][None], cache=self.main, hidden=True)
                if self.head is not None:
                    self.run_head(h, arr[pos + 1 : pos + n + 1], pos)
                mx.eval([c.state for c in self.cache])
                pos += n
                if progress is not None:
                    progress(pos, total)
                mx.clear_cache()
            if end in stops and on_checkpoint is not None:
                on_checkpoint(end)
        h = self.model(arr[-1:][None], cache=self.main, hidden=True)
        lp = self.logprobs(self.process(self.base.logits(h[:, -1, :]), self.tokens))
        if self.greedy:
            self.y = int(mx.argmax(lp, axis=-1).item())
        else:
            self.y = int(mx.random.categorical(mx.log(self.probs(lp))).item())
        if self.head is not None:
            self.g = self.run_head(h, [self.y], total - 1)

    def draft(self) -> tuple[mx.array, list[mx.array]]:
        """The block [y, d_1..d_K] (lazy with the head: drafting and verification are evaluated
        together) and the head's distributions q_j when sampling."""
        K, y = self.K, self.y
        if self.head is None:
            drafted = list(self.drafter([*self.tokens, y], K))[:K]  # type: ignore[misc]
            return mx.array([y, *drafted], dtype=mx.uint32), []
        q_rows: list[mx.array] = []
        parts = [mx.array([y], dtype=mx.uint32)]
        m0, g = self.mcache.offset, self.g
        for r in range(K):
            lq = self.logprobs(self.base.logits(g[:, -1, :]))
            if self.greedy:
                d = mx.argmax(lq, axis=-1)
            else:
                qr = self.probs(lq)
                q_rows.append(qr[0])
                d = mx.random.categorical(mx.log(qr))
            parts.append(d.astype(mx.uint32))
            if r < K - 1:
                g = self.run_head(g[:, -1:, :], parts[-1], self.pos + r)
        self.mcache.trim(self.mcache.offset - m0)  # the drafts' own pairs are redone after
        return mx.concatenate(parts), q_rows

    def verify(self, block_arr: mx.array, q_rows: list[mx.array]) -> _Round:
        """One main-model forward over the block, recording the linear-attention states after
        each position where the model can; decides how many drafts are accepted."""
        K, P = self.K, self.pos
        saved = _save(self.main)
        recording = getattr(self.base, "recording", None)
        with recording() if recording is not None else nullcontext() as states:
            H = self.model(block_arr[None], cache=self.main, hidden=True)
        if states is not None and not states.covers(self.main):
            states = None
        logits = self.base.logits(H)[0]  # (K+1, V)
        if self.procs:
            seen = mx.concatenate([mx.array(self.tokens, dtype=mx.uint32), block_arr])
            rows = [self.process(logits[j : j + 1], seen[: P + 1 + j])[0] for j in range(K + 1)]
            logits = mx.stack(rows)
        lp = self.logprobs(logits)
        if self.greedy:
            best_arr = mx.argmax(lp, axis=-1)
            mx.eval(block_arr, best_arr)
            block, best = block_arr.tolist(), best_arr.tolist()
            a = next((j for j in range(K) if block[1 + j] != best[j]), K)
            nxt = int(best[a])
        else:
            block = block_arr.tolist()
            q = mx.stack(q_rows) if q_rows else None
            a, nxt = speculative_accept(self.probs(lp), q, block[1:])
        self.stats.drafted += K
        self.stats.accepted += a
        self.stats.rounds += 1
        return _Round(P, block, a, nxt, H, states, saved)

    def keep(self, rnd: _Round, n: int) -> None:
        """Leave the main cache holding the tokens before the block and the block's first n:
        the recorded states at position n - 1 and trimmed KV caches, else restore + re-advance."""
        if rnd.states is None:
            _restore(self.main, rnd.saved)
            self.model(mx.array(rnd.block[:n], dtype=mx.uint32)[None], cache=self.main, hidden=True)
            return
        rnd.states.keep(n)
        for c in self.main:
            if is_kv_cache(c):
                c.trim(c.offset - (rnd.pos + n))

    def finish(self, rnd: _Round) -> list[int]:
        """Roll back past the accepted drafts, queue the head's next input; the round's tokens."""
        a = rnd.accepted
        H = rnd.hidden
        if a < self.K:
            self.keep(rnd, a + 1)
            H = H[:, : a + 1]
        if self.head is not None:
            self.g = self.run_head(H, [*rnd.block[1 : a + 1], rnd.next_token], rnd.pos)
            mx.async_eval(self.g)
        else:
            mx.async_eval([c.state for c in self.main])
        self.pos += a + 1
        self.y = rnd.next_token
        return rnd.block[: a + 1]

    def stop_inside(self, rnd: _Round, kept: int) -> None:
        """The caller stopped after `kept` of the round's tokens: take the rest back out."""
        self.keep(rnd, kept)
        if self.mcache is not None:
            self.mcache.trim(rnd.accepted + 1 - kept)
        mx.eval([c.state for c in self.cache])


def speculative_step(
    model: Any,
    prompt: Sequence[int],
    cache: list[Any],
    *,
    params: SamplingParams,
    draft_tokens: int,
    stats: DraftStats | None = None,
    drafter: Drafter | None = None,
    logits_processors: Sequence[LogitsProcessor] = (),
    prefill_step: int = PREFILL_STEP,
    progress: Callable[[int, int], None] | None = None,
    cancelled: Callable[[], bool] | None = None,
    stream: Any = None,
    start: int = 0,
    checkpoints: Sequence[int] = (),
    on_checkpoint: Callable[[int], None] | None = None,
) -> Iterator[int]:
    """Like `generate.generate_step`, drafting `draft_tokens` tokens per main-model forward.

    `model` is the Qwen3.5/3.6 Model (or its ImagePrompt) whose `mtp_head` drafts, unless
    `drafter(tokens_so_far, k)` is given (the benchmark's oracle). When the caller stops after
    token t, the main cache holds exactly prompt + tokens through t, as with plain decoding.
    """
    if len(prompt) == 0:
        raise ValueError("the prompt is empty")
    if not 0 <= start < len(prompt):
        raise ValueError(f"start {start} must be inside the prompt (length {len(prompt)})")
    spec = _Speculator(
        model,
        prompt,
        cache,
        params,
        draft_tokens,
        stats if stats is not None else DraftStats(),
        drafter,
        logits_processors,
    )
    stream = stream or mx.default_stream(mx.default_device())
    with mx.stream(stream):
        spec.prefill(start, checkpoints, on_checkpoint, prefill_step, progress, cancelled)
    if progress is not None:
        progress(len(prompt), len(prompt))
    rnd: _Round | None = None
    pending: list[int] = []  # this round's tokens, in the cache, not yet handed out
    try:
        while True:
            with mx.stream(stream):
                rnd = spec.verify(*spec.draft())
                pending = spec.finish(rnd)
            while pending:
                t = pending.pop(0)
                spec.tokens.append(t)
                yield t
            rnd = None
            if spec.stats.rounds % 64 == 0:
                mx.clear_cache()
    finally:
        if pending and rnd is not None:  # stopped inside a round (>= 1 of its tokens handed out)
            with mx.stream(stream):
                spec.stop_inside(rnd, rnd.accepted + 1 - len(pending))
        mx.synchronize(stream)
