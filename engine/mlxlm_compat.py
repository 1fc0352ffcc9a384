"""Every use of an mlx-lm name that is not its public API, one small function each.

mlx-lm does not promise these names (leading underscores, classes recognised by name); each has a
test in tests/engine/test_mlxlm_compat.py that fails when mlx-lm changes it, so upgrading mlx-lm
means fixing this one file. Nothing else in engine/ may touch mlx-lm's private names (a test greps).
"""

from __future__ import annotations

from typing import Any

import numpy as np

# The cache classes prompt-cache snapshots know how to copy (engine/cache.py), by the names they are
# stored under: KV caches (keys, values, offset) and recurrent-state caches (a list in `.cache`).
KV_CACHE = "KVCache"
ARRAYS_CACHE = "ArraysCache"
QUANTIZED_KV_CACHE = "QuantizedKVCache"  # --kv-bits: keys and values as (data, scales, biases)


def cache_class_name(cache: Any) -> str | None:
    """`KV_CACHE` or `ARRAYS_CACHE` when `cache` is exactly that mlx-lm class, else None.

    Exact classes, not subclasses: mlx-lm's ChunkedKVCache derives from KVCache but keeps a start
    offset a snapshot would lose.
    """
    from mlx_lm.models.cache import ArraysCache, KVCache, QuantizedKVCache

    t = type(cache)
    if t is KVCache:
        return KV_CACHE
    if t is ArraysCache:
        return ARRAYS_CACHE
    if t is QuantizedKVCache:
        return QUANTIZED_KV_CACHE
    return None


def kv_parts(cache: Any, start: int, end: int) -> list[Any]:
    """The arrays of a KVCache or QuantizedKVCache (`cache_class_name`) for positions [start, end):
    [keys, values], or the quantized (data, scales, biases) of keys then of values."""
    if cache.keys is None:
        return []
    pairs = (cache.keys, cache.values)
    if isinstance(cache.keys, tuple | list):  # quantized: each part is sliced along positions alike
        return [x[..., start:end, :] for part in pairs for x in part]
    return [x[..., start:end, :] for x in pairs]


def set_kv_parts(cache: Any, parts: list[Any], offset: int) -> None:
    """Fill an empty KV cache of `kv_parts`'s kind with `parts` holding `offset` positions."""
    if not parts:
        return
    if len(parts) == 6:
        cache.keys, cache.values = tuple(parts[:3]), tuple(parts[3:])
    else:
        cache.keys, cache.values = parts
    cache.offset = offset


def quantized_kv_cache(bits: int, group_size: int = 64) -> Any:
    """mlx-lm's QuantizedKVCache (its attention takes it through `scaled_dot_product_attention`)."""
    from mlx_lm.models.cache import QuantizedKVCache

    return QuantizedKVCache(group_size=group_size, bits=bits)


def is_kv_cache(cache: Any) -> bool:
    """Whether `cache` keeps keys and values per position (mlx-lm's KVCache family, rotating and
    quantized ones too): it rolls back by trimming its `offset`. The others (ArraysCache) hold a
    recurrent state that must be saved and restored instead. The one test of this in Locus."""
    return hasattr(cache, "keys") and hasattr(cache, "offset")


def keep_leading_space(detokenizer: Any) -> Any:
    """Stop mlx-lm's streaming detokenizer from dropping the reply's leading space.

    mlx-lm trims it (BPE: the private `_maybe_trim_space`; SentencePiece: `trim_space`), but a
    reply may continue text already in the prompt (an assistant prefill, a raw prompt).
    """
    if hasattr(detokenizer, "_maybe_trim_space"):  # BPEStreamingDetokenizer (Qwen)
        detokenizer._maybe_trim_space = lambda text: text
    if hasattr(detokenizer, "trim_space"):  # SPMStreamingDetokenizer
        detokenizer.trim_space = False
    return detokenizer


def set_chat_template(tokenizer: Any, template: str) -> None:
    """Give a loaded mlx-lm tokenizer a chat template (a checkpoint's separate chat_template.jinja).

    mlx-lm's TokenizerWrapper forwards attribute writes it does not define itself to the wrapped
    Hugging Face tokenizer, whose `apply_chat_template` then uses the template.
    """
    tokenizer.chat_template = template


def model_classes(config: dict[str, Any]) -> tuple[type, type]:
    """mlx-lm's (Model, ModelArgs) classes for a config; ValueError when mlx-lm has none."""
    from mlx_lm.utils import _get_classes

    return _get_classes(config)


def rope_frequencies(rope: Any) -> np.ndarray | None:
    """The rotation frequencies (dims/2,) of an mlx-lm RoPE module that computes its own (YaRN,
    Llama 3, ...: mlx-lm keeps them in the private `_freqs`), or None for plain `nn.RoPE`, which
    derives them from its base. mx.fast.rope rotates pair i by position / freqs[i]."""
    freqs = getattr(rope, "_freqs", None)
    return None if freqs is None else np.asarray(freqs, dtype=np.float32)


def rope_mscale(rope: Any) -> float:
    """The input scale an mlx-lm RoPE applies before rotating (YaRN's mscale), else 1."""
    return float(getattr(rope, "mscale", 1.0))


def deltanet_steps(layer: Any, inputs: Any, cache: Any) -> tuple[Any, list[tuple[Any, Any]]]:
    """mlx-lm's `qwen3_5.GatedDeltaNet` forward over (1, L) inputs (no mask), also returning the
    (conv state, recurrent state) after each of the L positions.

    It mirrors mlx-lm's `__call__` (its projections, conv and `gated_delta_update`, on the module's
    own attributes) but runs the recurrence one position at a time, as decoding does, so that
    speculative decoding can roll back to any position. `cache` ends as mlx-lm's forward leaves it.
    """
    import mlx.core as mx
    import mlx.nn as nn
    from mlx_lm.models.gated_delta import gated_delta_update, normalize_qk

    B, S, _ = inputs.shape
    qkv = layer.in_proj_qkv(inputs)
    z = layer.in_proj_z(inputs).reshape(B, S, layer.num_v_heads, layer.head_v_dim)
    b, a = layer.in_proj_b(inputs), layer.in_proj_a(inputs)
    n_keep = layer.conv_kernel_size - 1
    conv_state = cache[0]
    if conv_state is None:
        conv_state = mx.zeros((B, n_keep, layer.conv_dim), dtype=inputs.dtype)
    conv_input = mx.concatenate([conv_state, qkv], axis=1)
    conv_out = nn.silu(layer.conv1d(conv_input))
    kd = layer.key_dim
    q, k, v = (
        t.reshape(B, S, h, d)
        for t, h, d in zip(
            mx.split(conv_out, [kd, 2 * kd], -1),
            [layer.num_k_heads, layer.num_k_heads, layer.num_v_heads],
            [layer.head_k_dim, layer.head_k_dim, layer.head_v_dim],
            strict=True,
        )
    )
    q, k = normalize_qk(q, k, inv_scale=layer.head_k_dim**-0.5, eps=1e-6)
    state = cache[1]
    ys, steps = [], []
    for t in range(S):
        at = slice(t, t + 1)
        y, state = gated_delta_update(
            q[:, at],
            k[:, at],
            v[:, at],
            a[:, at],
            b[:, at],
            layer.A_log,
            layer.dt_bias,
            state,
            None,
            use_kernel=not layer.training,
        )
        ys.append(y)
        steps.append((mx.contiguous(conv_input[:, t + 1 : t + 1 + n_keep]), state))
    cache[0], cache[1] = steps[-1]
    cache.advance(S)
    out = layer.norm(mx.concatenate(ys, axis=1), z)
    out = layer.out_proj(out.reshape(B, S, -1))
    if layer.sharding_group is not None:
        out = mx.distributed.all_sum(out, group=layer.sharding_group)
    return out, steps


# -- batching: the running batch's recurrent states (engine/batch.py) ------------------------------
# mlx-lm's ArraysCache stacks states along the batch axis for its BatchGenerator; Locus uses the same
# four methods. Each state array must be set (a sequence joins after its first forward).


def merge_states(caches: list[Any]) -> Any:
    """One ArraysCache holding the given batch-1 ArraysCaches' states as rows, in order."""
    from mlx_lm.models.cache import ArraysCache

    return ArraysCache.merge(caches)


def extend_states(batch: Any, cache: Any) -> None:
    """Append a batch-1 ArraysCache's states to `batch` as its last row (in place)."""
    batch.extend(cache)


def filter_states(batch: Any, rows: list[int]) -> None:
    """Keep only `rows` of `batch`, in that order (in place)."""
    import mlx.core as mx

    batch.filter(mx.array(rows, dtype=mx.int32))


def extract_state(batch: Any, row: int) -> Any:
    """Row `row` of `batch` as a batch-1 ArraysCache of its own."""
    return batch.extract(row)


def set_lengths(batch: Any, lengths: list[int] | None) -> None:
    """Right-padded rows of `lengths` real tokens for the next forward of `batch` (an ArraysCache
    from `merge_states`): padded positions leave each row's state alone and its conv state ends at
    its own last token. None: back to decoding (no padding)."""
    if lengths is None:
        batch.finalize()
    else:
        batch.prepare(lengths=lengths)
