"""Multimodal rotary positions (M-RoPE) for prompts that mix text and images.

Every token gets three positions (temporal, height, width). Text tokens use the same value for all
three; an image's tokens share one temporal position and count rows and columns of its merged patch
grid from there; text after an image continues at max(rows, cols) past the image's start. The rotary
frequencies are split among the three axes interleaved (T H W T H W …, sections [11, 11, 10] for
Qwen3.6). When generation continues past the prompt, position = index + delta, where delta is what
the images saved.
"""

from __future__ import annotations

from collections.abc import Sequence

import mlx.core as mx
import numpy as np

from .image import ImageSpan


def rope_index(n_tokens: int, spans: Sequence[ImageSpan], merge_size: int) -> tuple[np.ndarray, int]:
    """Positions (3, n_tokens) int64 for a prompt and its decode delta (next position − n_tokens)."""
    pos = np.zeros((3, n_tokens), dtype=np.int64)
    cur = 0  # next free position
    i = 0  # next token index
    for span in sorted(spans, key=lambda s: s.start):
        if span.start < i or span.end > n_tokens:
            raise ValueError(f"image span {span.start}:{span.end} overlaps or leaves the prompt")
        n_text = span.start - i
        pos[:, i : span.start] = np.arange(cur, cur + n_text)
        cur += n_text
        t, h, w = span.grid
        gh, gw = h // merge_size, w // merge_size
        if t * gh * gw != span.length:
            raise ValueError(f"image grid {span.grid} gives {t * gh * gw} tokens, span has {span.length}")
        tt, hh, ww = np.meshgrid(np.arange(t), np.arange(gh), np.arange(gw), indexing="ij")
        pos[0, span.start : span.end] = tt.reshape(-1) + cur
        pos[1, span.start : span.end] = hh.reshape(-1) + cur
        pos[2, span.start : span.end] = ww.reshape(-1) + cur
        cur += max(gh, gw)
        i = span.end
    pos[:, i:] = np.arange(cur, cur + n_tokens - i)
    cur += n_tokens - i
    return pos, int(cur - n_tokens)


def section_axes(half_dims: int, sections: Sequence[int]) -> np.ndarray:
    """For each rotary frequency, the axis (0 = T, 1 = H, 2 = W) whose position drives it.

    Interleaved layout: frequency j uses H when j % 3 == 1 and j < 3·sections[1], W when j % 3 == 2
    and j < 3·sections[2], T otherwise.
    """
    axes = np.zeros(half_dims, dtype=np.int32)
    for axis, offset in ((1, 1), (2, 2)):
        limit = min(3 * int(sections[axis]), half_dims) if len(sections) > axis else 0
        axes[offset:limit:3] = axis
    return axes


def mrope_cos_sin(positions: mx.array, inv_freq: mx.array, axes: mx.array) -> tuple[mx.array, mx.array]:
    """cos, sin of shape (B, L, 2·F) for positions (3, B, L), in float32."""
    freqs = positions.astype(mx.float32)[..., None] * inv_freq  # (3, B, L, F)
    idx = mx.broadcast_to(axes.reshape(1, 1, 1, -1), (1, *freqs.shape[1:]))
    sel = mx.take_along_axis(freqs, idx.astype(mx.int32), axis=0)[0]  # (B, L, F)
    emb = mx.concatenate([sel, sel], axis=-1)
    return mx.cos(emb), mx.sin(emb)


def apply_rotary(x: mx.array, cos: mx.array, sin: mx.array, scale: float = 1.0) -> mx.array:
    """Rotate the first cos.shape[-1] dims of x (B, heads, L, D) by rotate-half; pass the rest."""
    rot = cos.shape[-1]
    xr = x[..., :rot].astype(mx.float32)
    if scale != 1.0:
        xr = xr * scale
    half = rot // 2
    rotated = mx.concatenate([-xr[..., half:], xr[..., :half]], axis=-1)
    c, s = cos[:, None], sin[:, None]  # broadcast over heads
    out = (xr * c + rotated * s).astype(x.dtype)
    if rot == x.shape[-1]:
        return out
    return mx.concatenate([out, x[..., rot:]], axis=-1)
