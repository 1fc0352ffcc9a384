"""The Qwen3.5/3.6 vision tower in MLX, built on the checkpoint's own vision weights.

Patch embedding (a Conv3d whose stride equals its kernel, so a matrix product over flattened
patches), learned position embeddings resampled bilinearly to the image's patch grid, `depth` blocks
of pre-norm attention with 2D rotary positions (rows and columns) and a GELU MLP, then a merger that
concatenates each 2×2 block of patches and projects it to the text model's width.
"""

from __future__ import annotations

import math
from typing import Any

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from .mrope import apply_rotary

# Vision attention is not causal and covers a whole image: bound the score matrix per chunk of
# queries so that large images never materialize heads × N × N at once.
ATTENTION_CHUNK_BYTES = 512 * 1024**2

_ACTIVATIONS = {
    "gelu_pytorch_tanh": nn.gelu_approx,
    "gelu_new": nn.gelu_approx,
    "gelu": nn.gelu,
    "silu": nn.silu,
    "quick_gelu": nn.gelu_fast_approx,
}


class VisionMLP(nn.Module):
    def __init__(self, dims: int, hidden: int, act: str):
        super().__init__()
        self.linear_fc1 = nn.Linear(dims, hidden)
        self.linear_fc2 = nn.Linear(hidden, dims)
        if act not in _ACTIVATIONS:
            raise ValueError(f"vision hidden_act {act!r} is not supported")
        self.act = _ACTIVATIONS[act]

    def __call__(self, x: mx.array) -> mx.array:
        return self.linear_fc2(self.act(self.linear_fc1(x)))


class VisionAttention(nn.Module):
    def __init__(self, dims: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dims // num_heads
        self.scale = self.head_dim**-0.5
        self.qkv = nn.Linear(dims, 3 * dims)
        self.proj = nn.Linear(dims, dims)

    def __call__(self, x: mx.array, cos: mx.array, sin: mx.array) -> mx.array:
        n = x.shape[0]
        qkv = self.qkv(x).reshape(n, 3, self.num_heads, self.head_dim).transpose(1, 2, 0, 3)
        q, k, v = qkv[0][None], qkv[1][None], qkv[2][None]  # (1, heads, N, hd)
        q = apply_rotary(q, cos, sin)
        k = apply_rotary(k, cos, sin)
        per_query = self.num_heads * n * 4
        chunk = max(256, ATTENTION_CHUNK_BYTES // per_query)
        if n <= chunk:
            out = mx.fast.scaled_dot_product_attention(q, k, v, scale=self.scale)
        else:
            parts = [
                mx.fast.scaled_dot_product_attention(q[:, :, i : i + chunk], k, v, scale=self.scale)
                for i in range(0, n, chunk)
            ]
            out = mx.concatenate(parts, axis=2)
        out = out[0].transpose(1, 0, 2).reshape(n, -1)
        return self.proj(out)


class VisionBlock(nn.Module):
    def __init__(self, dims: int, hidden: int, num_heads: int, act: str):
        super().__init__()
        self.norm1 = nn.LayerNorm(dims, eps=1e-6)
        self.norm2 = nn.LayerNorm(dims, eps=1e-6)
        self.attn = VisionAttention(dims, num_heads)
        self.mlp = VisionMLP(dims, hidden, act)

    def __call__(self, x: mx.array, cos: mx.array, sin: mx.array) -> mx.array:
        x = x + self.attn(self.norm1(x), cos, sin)
        return x + self.mlp(self.norm2(x))


class PatchMerger(nn.Module):
    def __init__(self, dims: int, out_dims: int, merge_size: int):
        super().__init__()
        self.hidden = dims * merge_size**2
        self.norm = nn.LayerNorm(dims, eps=1e-6)
        self.linear_fc1 = nn.Linear(self.hidden, self.hidden)
        self.linear_fc2 = nn.Linear(self.hidden, out_dims)

    def __call__(self, x: mx.array) -> mx.array:
        x = self.norm(x).reshape(-1, self.hidden)
        return self.linear_fc2(nn.gelu(self.linear_fc1(x)))


class PatchEmbed(nn.Module):
    """Conv3d with stride == kernel, applied as a matrix product over flattened patches."""

    def __init__(self, in_channels: int, temporal: int, patch: int, dims: int):
        super().__init__()
        self.proj = nn.Linear(in_channels * temporal * patch * patch, dims)

    def __call__(self, pixel_values: mx.array) -> mx.array:
        return self.proj(pixel_values.astype(self.proj.weight.dtype))


class VisionModel(nn.Module):
    """Vision tower: pixel patches of one image (merge-block order) → image token embeddings."""

    def __init__(self, config: dict[str, Any]):
        super().__init__()
        c = config
        self.dims = int(c.get("hidden_size", 1152))
        self.num_heads = int(c.get("num_heads", 16))
        self.patch_size = int(c.get("patch_size", 16))
        self.temporal_patch_size = int(c.get("temporal_patch_size", 2))
        self.merge_size = int(c.get("spatial_merge_size", 2))
        self.in_channels = int(c.get("in_channels", 3))
        self.num_position_embeddings = int(c.get("num_position_embeddings", 2304))
        self.side = math.isqrt(self.num_position_embeddings)
        rope = c.get("rope_parameters") or {}
        self.rope_theta = float(rope.get("rope_theta", c.get("rope_theta", 10000.0)))
        if c.get("deepstack_visual_indexes"):
            raise ValueError("vision towers with deepstack mergers are not supported")
        act = str(c.get("hidden_act", "gelu_pytorch_tanh"))
        hidden = int(c.get("intermediate_size", 4304))
        self.patch_embed = PatchEmbed(self.in_channels, self.temporal_patch_size, self.patch_size, self.dims)
        self.pos_embed = nn.Embedding(self.num_position_embeddings, self.dims)
        self.blocks = [
            VisionBlock(self.dims, hidden, self.num_heads, act) for _ in range(int(c.get("depth", 27)))
        ]
        self.merger = PatchMerger(self.dims, int(c.get("out_hidden_size", 2048)), self.merge_size)
        head_dim = self.dims // self.num_heads
        spatial = head_dim // 2
        inv = 1.0 / (self.rope_theta ** (np.arange(0, spatial, 2, dtype=np.float32) / spatial))
        self._inv_freq = inv.astype(np.float32)  # numpy: not a parameter

    # -- weights --------------------------------------------------------------------------------
    def load_weights_from(self, weights: dict[str, mx.array], quantization: Any = None) -> None:
        """Take the checkpoint's vision arrays (HF names, either patch-embedding layout) as parameters.

        The arrays are used as they are (no copy), so text and images share one weight copy; only
        the patch embedding is reshaped to a matrix.
        """
        from mlx.utils import tree_flatten, tree_unflatten

        w = dict(weights)
        key = "patch_embed.proj.weight"
        if key not in w:
            raise ValueError("vision weights have no patch_embed.proj.weight")
        pe = w[key]
        c, t, p = self.in_channels, self.temporal_patch_size, self.patch_size
        if pe.ndim == 5 and tuple(pe.shape[1:]) == (c, t, p, p):
            pe = pe.reshape(pe.shape[0], -1)  # HF / PyTorch layout
        elif pe.ndim == 5 and tuple(pe.shape[1:]) == (t, p, p, c):
            pe = pe.transpose(0, 4, 1, 2, 3).reshape(pe.shape[0], -1)  # MLX channels-last
        elif pe.ndim != 2:
            raise ValueError(
                f"vision patch_embed.proj.weight has shape {list(pe.shape)}, expected "
                f"[{self.dims}, {c}, {t}, {p}, {p}] or [{self.dims}, {t}, {p}, {p}, {c}]"
            )
        w[key] = pe
        if any(k.endswith(".scales") for k in w):
            q = quantization or {}
            group, bits = int(q.get("group_size", 64)), int(q.get("bits", 4))

            def predicate(path: str, module: Any) -> Any:
                if f"{path}.scales" not in w:
                    return False
                spec = q.get(f"vision_tower.{path}")
                return spec if isinstance(spec, dict) else True

            nn.quantize(self, group_size=group, bits=bits, class_predicate=predicate)
        expected = dict(tree_flatten(self.parameters()))
        missing = sorted(set(expected) - set(w))
        if missing:
            raise ValueError(f"vision weights are missing {len(missing)} tensor(s), e.g. {missing[:3]}")
        unexpected = sorted(set(w) - set(expected))
        if unexpected:
            raise ValueError(
                f"vision weights have {len(unexpected)} tensor(s) this config does not use, e.g. "
                f"{unexpected[:3]}"
            )
        for k, v in w.items():
            if tuple(v.shape) != tuple(expected[k].shape):
                raise ValueError(
                    f"vision weight {k!r} has shape {list(v.shape)}, the config implies "
                    f"{list(expected[k].shape)}"
                )
        self.update(tree_unflatten(list(w.items())))
        self.eval()

    # -- geometry ---------------------------------------------------------------------------------
    def _block_order(self, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
        """Row and column of each patch, in merge-block order (the order of the pixel patches)."""
        m = self.merge_size
        rows, cols = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
        shape = (h // m, m, w // m, m)
        return (
            rows.reshape(shape).transpose(0, 2, 1, 3).reshape(-1),
            cols.reshape(shape).transpose(0, 2, 1, 3).reshape(-1),
        )

    def _axis_taps(self, idx: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
        # Bilinear with aligned corners: patch 0 → table row 0, the last patch → the last row.
        side = self.side
        src = idx.astype(np.float32) * np.float32(side - 1) / np.float32(max(size - 1, 1))
        lo = np.floor(src)
        taps = np.stack([lo, lo + 1], axis=1).astype(np.int64)
        weights = np.clip(1 - np.abs(src[:, None] - taps.astype(np.float32)), 0, None)
        return np.clip(taps, 0, side - 1), weights.astype(np.float32)

    def position_embeddings(self, grid: tuple[int, int, int]) -> mx.array:
        """The learned position table resampled to this grid, (t·h·w, dims), merge-block order."""
        t, h, w = grid
        rows, cols = self._block_order(h, w)
        rt, rw = self._axis_taps(rows, h)
        ct, cw = self._axis_taps(cols, w)
        idx = (rt[:, :, None] * self.side + ct[:, None, :]).reshape(-1, 4)
        wts = (rw[:, :, None] * cw[:, None, :]).reshape(-1, 4)
        table = self.pos_embed.weight
        emb = (table[mx.array(idx)] * mx.array(wts)[..., None].astype(table.dtype)).sum(axis=1)
        return mx.tile(emb, (t, 1)) if t > 1 else emb

    def rotary(self, grid: tuple[int, int, int]) -> tuple[mx.array, mx.array]:
        """cos, sin (1, N, head_dim) of the 2D rotary positions (row freqs, then column freqs)."""
        t, h, w = grid
        rows, cols = self._block_order(h, w)
        rows, cols = np.tile(rows, t), np.tile(cols, t)
        inv = mx.array(self._inv_freq)
        fr = mx.array(rows.astype(np.float32))[:, None] * inv
        fc = mx.array(cols.astype(np.float32))[:, None] * inv
        emb = mx.concatenate([fr, fc, fr, fc], axis=-1)[None]
        return mx.cos(emb), mx.sin(emb)

    # -- forward -----------------------------------------------------------------------------------
    def __call__(self, pixel_values: mx.array, grid: tuple[int, int, int]) -> mx.array:
        """Image token embeddings (t·h·w / merge², out_hidden_size) for one image."""
        t, h, w = grid
        if pixel_values.shape[0] != t * h * w:
            raise ValueError(f"{pixel_values.shape[0]} patches do not fill the grid {grid}")
        if h % self.merge_size or w % self.merge_size:
            raise ValueError(f"grid {grid} is not a multiple of the merge size {self.merge_size}")
        x = self.patch_embed(pixel_values)
        x = x + self.position_embeddings(grid).astype(x.dtype)
        cos, sin = self.rotary(grid)
        for block in self.blocks:
            x = block(x, cos, sin)
        return self.merger(x)
