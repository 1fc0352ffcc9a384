"""The running batch's caches: one model call decodes a token for every sequence at once.

The Gated DeltaNet layers' recurrent states are stacked along the batch axis with mlx-lm's own
`ArraysCache` merge/extend/filter/extract (through engine/mlxlm_compat.py). The full-attention
layers keep each sequence's own `KVCache` (`RowKV`): the projections run batched, but rotary
positions, the cache update and attention run per row. So a sequence's KV never moves (no left
padding, no copy on join or leave), an image prompt's M-RoPE offset stays its own, and each row's
attention is computed exactly as it would be alone.
"""

from __future__ import annotations

from typing import Any

import mlx.core as mx
import mlx.nn as nn
from mlx_lm.models.base import scaled_dot_product_attention

from .mlxlm_compat import (
    extend_states,
    extract_state,
    filter_states,
    is_kv_cache,
    merge_states,
    set_lengths,
)


class RowKV:
    """The KV caches of one full-attention layer in a batched call, one per row, with each row's
    rotary delta (an image prompt's M-RoPE shift past its prompt; 0 for text)."""

    per_row = True  # engine/model.py's MRopeAttention hands such a cache the attention itself

    def __init__(self) -> None:
        self.caches: list[Any] = []
        self.deltas: list[int] = []
        self.lengths: list[int] | None = None  # prefilling: each row's real tokens (right padding)

    def make_mask(self, n: int, **kwargs: Any) -> None:
        # Each row's attention builds its own mask (`attend`); decoding one token needs none.
        if n != 1 and self.lengths is None:
            raise ValueError("a batched call decodes one token per sequence")
        return None

    def attend(self, layer: Any, queries: mx.array, keys: mx.array, values: mx.array) -> mx.array:
        """Each row's rotary positions, cache update and attention, as alone: (B, heads, L, dim)."""
        if self.lengths is not None:
            return self._prefill(layer, queries, keys, values)
        offsets = [c.offset + d for c, d in zip(self.caches, self.deltas, strict=True)]
        if isinstance(layer.rope, nn.RoPE) and len(offsets) > 1:
            # One rotation for all rows, each at its own offset: the same numbers as row by row,
            # in two operations instead of two per row (a decode step of a small model is op-bound).
            at = mx.array(offsets, dtype=mx.int32)
            queries, keys = layer.rope(queries, offset=at), layer.rope(keys, offset=at)
            qs, ks, vs = (mx.split(a, len(offsets), axis=0) for a in (queries, keys, values))
        else:
            qs = [layer.rope(queries[i : i + 1], offset=o) for i, o in enumerate(offsets)]
            ks = [layer.rope(keys[i : i + 1], offset=o) for i, o in enumerate(offsets)]
            vs = mx.split(values, len(offsets), axis=0)
        outs = []
        for c, q, k, v in zip(self.caches, qs, ks, vs, strict=True):
            k, v = c.update_and_fetch(k, v)
            outs.append(scaled_dot_product_attention(q, k, v, cache=c, scale=layer.scale, mask=None))
        return mx.concatenate(outs, axis=0)

    def _prefill(self, layer: Any, queries: mx.array, keys: mx.array, values: mx.array) -> mx.array:
        """Several prompts' chunks: each row's first `lengths[i]` positions attend as alone (its
        own causal mask at its own offset); the padding after them comes out as zeros."""
        assert self.lengths is not None
        width = queries.shape[2]
        outs = []
        for i, (c, d, n) in enumerate(zip(self.caches, self.deltas, self.lengths, strict=True)):
            mask = c.make_mask(n, return_array=False, window_size=None)  # before the update, as alone
            q = layer.rope(queries[i : i + 1, :, :n], offset=c.offset + d)
            k = layer.rope(keys[i : i + 1, :, :n], offset=c.offset + d)
            k, v = c.update_and_fetch(k, values[i : i + 1, :, :n])
            out = scaled_dot_product_attention(q, k, v, cache=c, scale=layer.scale, mask=mask)
            outs.append(mx.pad(out, [(0, 0), (0, 0), (0, width - n), (0, 0)]) if n < width else out)
        return mx.concatenate(outs, axis=0)


def prefill_together(model: Any, chunks: list[list[int]], caches: list[list[Any]], n_layers: int) -> None:
    """Feed each prompt chunk into its own sequence's caches in ONE forward (rows right-padded to
    the longest chunk), leaving every cache as if its chunk had been fed alone. Text prompts only:
    rotary positions are each cache's offset. The caches' lists are updated in place."""
    lengths = [len(c) for c in chunks]
    width = max(lengths)
    tokens = mx.array([c + [0] * (width - len(c)) for c in chunks], dtype=mx.uint32)
    layers: list[Any] = []
    for j in range(n_layers):
        col = [cache[j] for cache in caches]
        if is_kv_cache(col[0]):
            kv = RowKV()
            kv.caches, kv.deltas, kv.lengths = col, [0] * len(col), lengths
            layers.append(kv)
        else:
            states = merge_states(col)
            set_lengths(states, lengths)
            layers.append(states)
    model(tokens, cache=layers)
    for j, layer in enumerate(layers):
        if not isinstance(layer, RowKV):
            set_lengths(layer, None)
            for i, cache in enumerate(caches):
                cache[j] = extract_state(layer, i)
    mx.eval([c.state for cache in caches for c in cache[:n_layers]])


class BatchCache:
    """Per layer, a `RowKV` or the stacked recurrent states of the rows, in row order. Cache
    entries past the model's layers (the MTP head's) stay with each row untouched."""

    def __init__(self, n_layers: int) -> None:
        self.n_layers = n_layers
        self.layers: list[Any] = []
        self.extras: list[list[Any]] = []  # per row: its cache entries past the layers

    def __len__(self) -> int:
        return len(self.extras)

    def add(self, cache: list[Any], delta: int = 0) -> None:
        """Append a sequence (its own batch-1 caches, every layer already holding state)."""
        if not self.extras:
            self.layers = [RowKV() if is_kv_cache(c) else None for c in cache[: self.n_layers]]
        for j, c in enumerate(cache[: self.n_layers]):
            layer = self.layers[j]
            if isinstance(layer, RowKV):
                layer.caches.append(c)
                layer.deltas.append(int(delta))
            elif layer is None:
                self.layers[j] = merge_states([c])
            else:
                extend_states(layer, c)
        self.extras.append(list(cache[self.n_layers :]))

    def take(self, i: int) -> list[Any]:
        """Row i's caches as a batch-1 list (for its snapshot or to prefill more tokens into); call
        `keep` afterwards to drop the rows that leave."""
        out = [
            layer.caches[i] if isinstance(layer, RowKV) else extract_state(layer, i) for layer in self.layers
        ]
        return out + self.extras[i]

    def keep(self, rows: list[int]) -> None:
        """Keep only `rows` (indices, in their new order)."""
        if not rows:
            self.layers, self.extras = [], []
            return
        for j, layer in enumerate(self.layers):
            if isinstance(layer, RowKV):
                layer.caches = [layer.caches[r] for r in rows]
                layer.deltas = [layer.deltas[r] for r in rows]
            else:
                filter_states(layer, rows)
                self.layers[j] = layer
        self.extras = [self.extras[r] for r in rows]

    def logits(self, model: Any, tokens: mx.array) -> mx.array:
        """The next-token logits (B, vocab) of every row, fed `tokens` (B,)."""
        return model(tokens[:, None], cache=self.layers)[:, -1, :]
