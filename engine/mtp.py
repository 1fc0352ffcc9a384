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
KV caches are trimmed; the gated-DeltaNet state and conv state cannot be, so they are restored
from the references kept before verification and re-advanced over the accepted tokens.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import mlx.core as mx
import mlx.nn as nn
from mlx_lm.models import qwen3_5
from mlx_lm.models.base import create_attention_mask

from .generate import PREFILL_STEP, Cancelled
from .model import ImagePrompt, MRopeAttention, _RopeState
from .sampling import LogitsProcessor, SamplingParams

MAX_DRAFT = 8


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

    def __call__(
        self, embeds: mx.array, hidden: mx.array, cache: Any, positions: mx.array
    ) -> mx.array:
        """The head's normed output (B, L, H) for pairs (hidden_i, embed(t_{i+1})) at positions i."""
        x = mx.concatenate(
            [self.pre_fc_norm_embedding(embeds), self.pre_fc_norm_hidden(hidden)], axis=-1
        )
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
    return [c.offset if hasattr(c, "offset") and hasattr(c, "keys") else list(c.cache)
            for c in cache]  # fmt: skip


def _restore(cache: list[Any], saved: list[Any]) -> None:
    for c, s in zip(cache, saved, strict=True):
        if isinstance(s, int):
            c.offset = min(c.offset, s)
        else:
            c.cache = list(s)


Drafter = Callable[[list[int], int], list[int]]


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
    K = int(draft_tokens)
    if not 1 <= K <= MAX_DRAFT:
        raise ValueError(f"draft_tokens must be in 1..{MAX_DRAFT} (got {K})")
    base = model.model if isinstance(model, ImagePrompt) else model  # (mlx-lm's has .model too)
    head = None if drafter is not None else base.mtp_head
    if drafter is None and head is None:
        raise ValueError("this model has no MTP head to draft with")
    stats = stats if stats is not None else DraftStats()
    stream = stream or mx.default_stream(mx.default_device())
    main = cache[:-1] if base.mtp_head is not None else cache
    mcache = cache[-1] if base.mtp_head is not None else None
    embed = base.language_model.model.embed_tokens
    probs = make_probs(params)
    greedy = params.greedy
    total = len(prompt)
    tokens = list(prompt)  # prompt + every token handed out
    prompt_arr = mx.array(list(prompt), dtype=mx.uint32)

    def run_head(h: mx.array, ids: Sequence[int] | mx.array, pos: int) -> mx.array:
        # Pairs (h_i, t_{i+1}) at positions pos.., through the head and its KV cache.
        ids = mx.array(ids, dtype=mx.uint32) if not isinstance(ids, mx.array) else ids
        L = ids.shape[-1]
        return head(embed(ids.reshape(1, L)), h, mcache, model.text_positions(pos, L))

    def process(logits: mx.array, seen: list[int] | mx.array) -> mx.array:
        # Penalties see the tokens before each position, as plain decoding's do.
        if not logits_processors:
            return logits
        hist = seen if isinstance(seen, mx.array) else mx.array(seen, dtype=mx.uint32)
        for proc in logits_processors:
            logits = proc(hist, logits)
        return logits

    def logprobs(logits: mx.array) -> mx.array:
        return logits - mx.logsumexp(logits, axis=-1, keepdims=True)

    # -- prefill: the main model, and the head over the prompt's pairs ------------------------
    with mx.stream(stream):
        stops = sorted({p for p in checkpoints if start < p < total})
        pos = start
        for end in [*stops, total - 1]:
            while pos < end:
                if cancelled is not None and cancelled():
                    raise Cancelled
                n = min(prefill_step, end - pos)
                h = model(prompt_arr[pos : pos + n][None], cache=main, hidden=True)
                if head is not None:
                    run_head(h, prompt_arr[pos + 1 : pos + n + 1], pos)
                mx.eval([c.state for c in cache])
                pos += n
                if progress is not None:
                    progress(pos, total)
                mx.clear_cache()
            if end in stops and on_checkpoint is not None:
                on_checkpoint(end)
        h = model(prompt_arr[-1:][None], cache=main, hidden=True)
        lp = logprobs(process(base.logits(h[:, -1, :]), tokens))
        if greedy:
            y = int(mx.argmax(lp, axis=-1).item())
        else:
            y = int(mx.random.categorical(mx.log(probs(lp))).item())
        g = run_head(h, [y], total - 1) if head is not None else None
    if progress is not None:
        progress(total, total)

    P = total  # position of y, the next token to hand out (not yet in the main cache)
    pending: list[int] = []  # this round's tokens, in the cache, not yet handed out
    saved: list[Any] | None = None
    try:
        while True:
            with mx.stream(stream):
                # Draft K tokens (recursively through the head), then verify them in one forward.
                q_rows: list[mx.array] = []
                if head is None:
                    drafted = list(drafter([*tokens, y], K))[:K]  # type: ignore[misc]
                    block_arr = mx.array([y, *drafted], dtype=mx.uint32)
                else:
                    # Drafts stay lazy: drafting and verification are evaluated together.
                    parts = [mx.array([y], dtype=mx.uint32)]
                    m0 = mcache.offset
                    for r in range(K):
                        lq = logprobs(base.logits(g[:, -1, :]))
                        if greedy:
                            d = mx.argmax(lq, axis=-1)
                        else:
                            qr = probs(lq)
                            q_rows.append(qr[0])
                            d = mx.random.categorical(mx.log(qr))
                        parts.append(d.astype(mx.uint32))
                        if r < K - 1:
                            g = run_head(g[:, -1:, :], parts[-1], P + r)
                    mcache.trim(mcache.offset - m0)
                    block_arr = mx.concatenate(parts)
                saved = _save(main)
                H = model(block_arr[None], cache=main, hidden=True)
                logits = base.logits(H)[0]  # (K+1, V)
                if logits_processors:
                    seen = mx.concatenate([mx.array(tokens, dtype=mx.uint32), block_arr])
                    rows = [process(logits[j : j + 1], seen[: P + 1 + j])[0] for j in range(K + 1)]
                    logits = mx.stack(rows)
                lp = logprobs(logits)
                if greedy:
                    best_arr = mx.argmax(lp, axis=-1)
                    mx.eval(block_arr, best_arr)
                    block, best = block_arr.tolist(), best_arr.tolist()
                    drafts = block[1:]
                    a = next((j for j in range(K) if drafts[j] != best[j]), K)
                    nxt = int(best[a])
                else:
                    block = block_arr.tolist()
                    drafts = block[1:]
                    q = mx.stack(q_rows) if q_rows else None
                    a, nxt = speculative_accept(probs(lp), q, drafts)
                stats.drafted += K
                stats.accepted += a
                stats.rounds += 1
                if a < K:  # roll back to y, d_1..d_a
                    _restore(main, saved)
                    model(mx.array(block[: a + 1], dtype=mx.uint32)[None], cache=main, hidden=True)
                    H = H[:, : a + 1]
                if head is not None:
                    g = run_head(H, [*drafts[:a], nxt], P)
                    mx.async_eval(g)
                else:
                    mx.async_eval([c.state for c in main])
            pending = block[: a + 1]
            while pending:
                t = pending.pop(0)
                tokens.append(t)
                yield t
            P += a + 1
            y = nxt
            saved = None
            if stats.rounds % 64 == 0:
                mx.clear_cache()
    finally:
        # Stopped inside a round: take the tokens not handed out back out of the cache.
        if pending and saved is not None:
            with mx.stream(stream):
                kept = a + 1 - len(pending)  # handed out this round: still >= 1
                _restore(main, saved)
                model(mx.array(block[:kept], dtype=mx.uint32)[None], cache=main, hidden=True)
                if mcache is not None:
                    mcache.trim(len(pending))
                mx.eval([c.state for c in cache])
        mx.synchronize(stream)
