"""Qwen3.5/3.6 mixture-of-experts model: mlx-lm's `qwen3_5_moe.Model`, subclassed.

mlx-lm's text path (gated DeltaNet, gated attention, SwitchGLU experts over `gather_qmm`) already
matches transformers, and its sanitize, quant predicate, `shard` and `pipeline` come with it; this
module adds what mlx-lm lacks for Locus: the vision tower (built on the checkpoint's own vision
weights, so one weight copy serves text and images), multimodal rotary positions in the
full-attention layers, per-position linear-attention states for speculative verification, the MTP
head's weights, and the per-expert and vision/MTP key layouts found in the wild.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import mlx.core as mx
import numpy as np
from mlx_lm.models import qwen3_5, qwen3_5_moe
from mlx_lm.models.base import scaled_dot_product_attention
from mlx_lm.models.qwen3_next import Qwen3NextAttention

from .mlxlm_compat import deltanet_steps, is_kv_cache, quantized_kv_cache, rope_frequencies, rope_mscale
from .mrope import apply_rotary, mrope_cos_sin, rope_index, section_axes

if TYPE_CHECKING:
    from .image import PreparedImage, PromptInputs
    from .vision import VisionModel

QWEN_MOE_TYPES = {"qwen3_5_moe", "qwen3_5", "qwen3_5_moe_text", "qwen3_5_text"}

_LAYER_MLP = re.compile(r"^(language_model\.model|mtp)\.layers\.(\d+)\.mlp\.experts\.(.+)$")
# The MTP head's RMSNorms, stored minus one in HF checkpoints as the layers' are (mlx-lm offsets
# those of the layers, and drops the head).
_MTP_NORM_SUFFIXES = (
    "mtp.norm.weight",
    ".pre_fc_norm_embedding.weight",
    ".pre_fc_norm_hidden.weight",
    ".input_layernorm.weight",
    ".post_attention_layernorm.weight",
    ".q_norm.weight",
    ".k_norm.weight",
)


def text_config(config: dict[str, Any]) -> dict[str, Any]:
    """The text model's config: `text_config` when nested, else the top level itself."""
    tc = dict(config.get("text_config") or config)
    tc.setdefault("model_type", config.get("model_type", ""))
    return tc


class _RopeState:
    """Positions for the call in progress, shared by the full-attention layers (not parameters)."""

    def __init__(self) -> None:
        self.positions: mx.array | None = None  # (3, B, L) when the call carries M-RoPE positions
        self.delta = 0  # otherwise position = cache offset + delta


class MRopeAttention(Qwen3NextAttention):
    """mlx-lm's gated attention with Qwen3.5's interleaved multimodal rotary positions.

    Without explicit positions it rotates by `cache.offset + delta` with mlx-lm's own RoPE, which is
    exact for text: all three axes then share one position, and the interleaving drops out.
    """

    def __init__(self, args: Any, state: _RopeState):
        super().__init__(args)
        self._state = state
        rope = args.rope_parameters or {}
        self._rot = int(self.head_dim * args.partial_rotary_factor)
        half = self._rot // 2
        freqs = rope_frequencies(self.rope)  # YaRN computes its own
        if freqs is not None:
            inv = 1.0 / freqs
        else:
            base = float(args.rope_theta)
            inv = 1.0 / (base ** (np.arange(0, self._rot, 2, dtype=np.float32) / self._rot))
        self._inv_freq = mx.array(inv.astype(np.float32))
        self._mscale = rope_mscale(self.rope)
        sections = rope.get("mrope_section") or [half, 0, 0]
        self._axes = mx.array(section_axes(half, sections))

    def __call__(self, x: mx.array, mask: Any = None, cache: Any = None) -> mx.array:
        B, L, _ = x.shape
        q, gate = mx.split(self.q_proj(x).reshape(B, L, self.num_attention_heads, -1), 2, axis=-1)
        gate = gate.reshape(B, L, -1)
        keys, values = self.k_proj(x), self.v_proj(x)
        queries = self.q_norm(q).transpose(0, 2, 1, 3)
        keys = self.k_norm(keys.reshape(B, L, self.num_key_value_heads, -1)).transpose(0, 2, 1, 3)
        values = values.reshape(B, L, self.num_key_value_heads, -1).transpose(0, 2, 1, 3)
        st = self._state
        if getattr(cache, "per_row", False):  # a batched decode step: each row its own KV (engine/batch.py)
            out = cache.attend(self, queries, keys, values)
        else:
            if st.positions is not None:
                cos, sin = mrope_cos_sin(st.positions, self._inv_freq, self._axes)
                queries = apply_rotary(queries, cos, sin, self._mscale)
                keys = apply_rotary(keys, cos, sin, self._mscale)
            else:
                offset = (cache.offset if cache is not None else 0) + st.delta
                queries = self.rope(queries, offset=offset)
                keys = self.rope(keys, offset=offset)
            if cache is not None:
                keys, values = cache.update_and_fetch(keys, values)
            out = scaled_dot_product_attention(
                queries, keys, values, cache=cache, scale=self.scale, mask=mask
            )
        out = out.transpose(0, 2, 1, 3).reshape(B, L, -1)
        return self.o_proj(out * mx.sigmoid(gate))


class PositionStates:
    """The linear-attention caches' states after each position of one recorded forward (see
    `Model.recording`): speculative decoding keeps those of the accepted positions."""

    def __init__(self) -> None:
        self.entries: list[tuple[Any, list[tuple[mx.array, mx.array]]]] = []

    def covers(self, caches: list[Any]) -> bool:
        """Whether every recurrent (not KV) cache among `caches` was recorded."""
        seen = {id(c) for c, _ in self.entries}
        return all(id(c) in seen for c in caches if not is_kv_cache(c))

    def keep(self, n: int) -> None:
        """Set each recorded cache to its (conv, recurrent) state after the first n positions."""
        for cache, steps in self.entries:
            cache[0], cache[1] = steps[n - 1]


class _StateLog:
    """The recording in progress, shared by the linear-attention layers (not a parameter)."""

    def __init__(self) -> None:
        self.record: PositionStates | None = None


class RecordingDeltaNet(qwen3_5.GatedDeltaNet):
    """mlx-lm's gated DeltaNet that, while a `Model.recording` is open, also keeps its state after
    every position of a single-sequence forward (running the recurrence one position at a time)."""

    def __init__(self, args: Any, log: _StateLog):
        super().__init__(args)
        self._log = log

    def __call__(self, inputs: mx.array, mask: Any = None, cache: Any = None) -> mx.array:
        rec = self._log.record
        if (
            rec is None
            or cache is None
            or mask is not None
            or inputs.shape[0] != 1
            or getattr(cache, "lengths", None) is not None
        ):
            return super().__call__(inputs, mask, cache)
        out, steps = deltanet_steps(self, inputs, cache)
        rec.entries.append((cache, steps))
        return out


class _VisionState:
    """The built vision module and its features by image content hash (LRU), kept out of the
    model's parameter tree."""

    def __init__(self, capacity: int = 16):
        self.module: VisionModel | None = None
        self.capacity = capacity
        self.items: OrderedDict[str, mx.array] = OrderedDict()
        self.computed = 0  # how many times the vision tower ran (for tests and stats)

    def get(self, key: str) -> mx.array | None:
        v = self.items.get(key)
        if v is not None:
            self.items.move_to_end(key)
        return v

    def put(self, key: str, value: mx.array) -> None:
        self.items[key] = value
        self.items.move_to_end(key)
        while len(self.items) > self.capacity:
            self.items.popitem(last=False)


class Model(qwen3_5_moe.Model):
    """mlx-lm's Qwen3.5/3.6 MoE model, plus the vision tower's weights and M-RoPE.

    Everything mlx-lm's model has (`language_model.model.layers`, `sanitize`, `shard`, and
    `model.pipeline(group)` for multi-machine pipelining) works unchanged. `vision_tower` stays the
    checkpoint's flat dict of vision arrays (what the loader fills and `convert` writes); the MLX
    vision module is built on those same arrays on first use.
    """

    def __init__(self, config: dict[str, Any]):
        super().__init__(
            qwen3_5_moe.ModelArgs(
                model_type=str(config.get("model_type", "")), text_config=text_config(config)
            )
        )
        self.config = config
        # Hidden from the parameter tree (plain objects): per-call positions, built vision, features.
        self._rope = _RopeState()
        self._states = _StateLog()
        for layer in self.language_model.model.layers:
            if layer.is_linear:
                layer.linear_attn = RecordingDeltaNet(self.language_model.args, self._states)
            else:
                layer.self_attn = MRopeAttention(self.language_model.args, self._rope)
        # Vision weights stay loaded, flat by name; the vision module is built on them lazily.
        self.vision_tower: dict[str, mx.array] = {}
        self._vision = _VisionState()
        self.image_token_id = int(config.get("image_token_id", -1))

    def __call__(
        self,
        inputs: mx.array,
        cache: Any = None,
        input_embeddings: Any = None,
        position_ids: mx.array | None = None,
        rope_delta: int = 0,
        hidden: bool = False,
    ):
        """Logits. `position_ids` (3, B, L) gives M-RoPE positions; else position = offset + delta.

        `hidden=True` returns the last hidden state (after the final norm) instead: what the MTP
        head takes, and `logits(h)` gives the logits without computing them for every position.
        """
        if cache is not None and len(cache) > len(self.layers):
            # Without the MTP head's cache (last): a pipelined mlx-lm model uses cache[-1].
            cache = cache[: len(self.layers)]
        st = self._rope
        st.positions, st.delta = position_ids, int(rope_delta)
        try:
            if hidden:
                return self.language_model.model(inputs, cache, input_embeddings=input_embeddings)
            return super().__call__(inputs, cache=cache, input_embeddings=input_embeddings)
        finally:
            st.positions, st.delta = None, 0

    def logits(self, h: mx.array) -> mx.array:
        """The shared output head applied to hidden states."""
        lm = self.language_model
        if lm.args.tie_word_embeddings:
            return lm.model.embed_tokens.as_linear(h)
        return lm.lm_head(h)

    def text_positions(self, start: int, length: int) -> mx.array:
        """M-RoPE positions (3, 1, length) of text tokens at `start`.. (no images)."""
        return mx.broadcast_to(mx.arange(start, start + length)[None, None], (3, 1, length))

    @contextmanager
    def recording(self) -> Iterator[PositionStates]:
        """While open, each forward's linear-attention layers record their state after every
        position (speculative verification: a rejection then needs no re-advance)."""
        rec = PositionStates()
        self._states.record = rec
        try:
            yield rec
        finally:
            self._states.record = None

    @property
    def mtp_head(self) -> Any:
        """The multi-token-prediction head when the checkpoint has one (engine/mtp.py), else None."""
        return self.get("mtp")

    kv_bits = 0  # bits of the full-attention layers' KV cache (0: 16-bit), set by the loader

    def make_cache(self) -> list[Any]:
        """One cache per layer, plus the MTP head's own KV cache last when it has one (so prompt
        cache snapshots carry it)."""
        cache = super().make_cache()
        if self.kv_bits:  # --kv-bits: the full-attention layers keep quantized keys and values
            cache = [quantized_kv_cache(self.kv_bits) if is_kv_cache(c) else c for c in cache]
        if self.mtp_head is not None:
            from mlx_lm.models.cache import KVCache

            cache.append(KVCache())
        return cache

    def sanitize(
        self, weights: dict[str, mx.array], origin: dict[str, str] | None = None
    ) -> dict[str, mx.array]:
        """Any checkpoint layout's weights under this model's names.

        Per-expert experts are stacked into the `switch_mlp` layout, then mlx-lm's own `sanitize`
        does the rest of the text model (fused experts, HF norm offsets, conv1d axis). Vision
        weights come back flat as `vision_tower.*`; the MTP head's (which mlx-lm drops) as `mtp.*`,
        stacked and offset like the layers. `origin`, when given, receives each returned weight's
        checkpoint key (for error messages). Everything stays lazy.
        """
        origin = {} if origin is None else origin
        renamed: dict[str, mx.array] = {}
        for key, value in weights.items():
            ck = canonical_key(key)
            if ck is not None:
                renamed[ck] = value
                origin[ck] = key
        args = self.language_model.args
        stacked = stack_experts(renamed, args.num_experts or None, origin)
        text = {k: v for k, v in stacked.items() if k.startswith("language_model.")}
        # mlx-lm's test for HF's stored norms, applied to the MTP head's norms too.
        hf_norms = any(k.endswith("conv1d.weight") and v.shape[-1] != 1 for k, v in text.items())
        out = super().sanitize(text)
        if args.tie_word_embeddings:  # mlx-lm looks for it without the language_model. prefix
            out.pop("language_model.lm_head.weight", None)
        for k, v in stacked.items():
            if k.startswith("vision_tower."):
                out[k] = v
            elif k.startswith("mtp."):
                if hf_norms and v.ndim == 1 and k.endswith(_MTP_NORM_SUFFIXES):
                    v = v + 1.0
                out[k] = v
        return out

    # -- images -----------------------------------------------------------------------------------
    @property
    def has_vision(self) -> bool:
        return bool(self.vision_tower) and bool(self.config.get("vision_config"))

    @property
    def vision(self) -> VisionModel:
        """The vision tower as an MLX module (built on first use from `vision_tower`'s arrays)."""
        if self._vision.module is None:
            from .errors import RequestError
            from .vision import VisionModel

            if not self.has_vision:
                raise RequestError(
                    "this checkpoint has no vision tower weights (it was converted text-only), so "
                    "it cannot take images; use a multimodal conversion such as "
                    "mlx-community/Qwen3.6-35B-A3B-4bit or `locus convert` of the original"
                )
            try:
                vm = VisionModel(self.config["vision_config"])
                vm.load_weights_from(
                    self.vision_tower,
                    self.config.get("quantization") or self.config.get("quantization_config"),
                )
            except ValueError as e:
                raise RequestError(f"the checkpoint's vision tower cannot be used: {e}") from e
            self._vision.module = vm
        return self._vision.module

    def image_features(self, image: PreparedImage) -> mx.array:
        """Image token embeddings for one prepared image, computed once per content hash."""
        cache = self._vision
        feats = cache.get(image.hash)
        if feats is None:
            vm = self.vision
            feats = vm(mx.array(image.pixel_values), image.grid)
            mx.eval(feats)
            cache.computed += 1
            cache.put(image.hash, feats)
        return feats

    def with_images(self, inputs: PromptInputs) -> Any:
        """A callable like the model that feeds `inputs`' images and their positions (see
        ImagePrompt); the model itself when the prompt has no images."""
        if not inputs.images:
            return self
        if not self.has_vision:
            self.vision  # noqa: B018 - raises the error that names the problem
        return ImagePrompt(self, inputs)


def _cache_offset(cache: Any) -> int:
    """Tokens already in the cache (from the first layer cache that counts them)."""
    if not cache:
        return 0
    for c in cache:
        off = getattr(c, "offset", None)
        if isinstance(off, int):
            return off
    return 0


class ImagePrompt:
    """The model bound to one prompt with images: same call signature as the model.

    Where a call's tokens fall inside the prompt (known from the cache's offset, so chunked prefill
    and prompt-cache resumes just work) it puts the images' features in place of their tokens'
    embeddings and passes the prompt's M-RoPE positions; past the prompt (decoding) it shifts
    positions by the prompt's delta.
    """

    def __init__(self, model: Model, inputs: PromptInputs):
        self.model = model
        self.inputs = inputs
        merge = int(model.config.get("vision_config", {}).get("spatial_merge_size", 2))
        self.positions, self.delta = rope_index(len(inputs.ids), inputs.images, merge)
        self.first_image = min(s.start for s in inputs.images)

    def make_cache(self) -> list[Any]:
        return self.model.make_cache()

    def logits(self, h: mx.array) -> mx.array:
        return self.model.logits(h)

    def recording(self) -> Any:
        return self.model.recording()

    def text_positions(self, start: int, length: int) -> mx.array:
        """M-RoPE positions (3, 1, length) of the tokens at `start`.. of this prompt and reply."""
        n = len(self.inputs.ids)
        idx = np.arange(start, start + length)
        pos = np.where(idx < n, 0, idx + self.delta)
        pos = np.broadcast_to(pos, (3, length)).copy()
        inside = idx < n
        if inside.any():
            pos[:, inside] = self.positions[:, idx[inside]]
        return mx.array(pos)[:, None, :]

    def __call__(self, inputs: mx.array, cache: Any = None, hidden: bool = False, **kw: Any) -> mx.array:
        n = len(self.inputs.ids)
        start = _cache_offset(cache)
        length = inputs.shape[1]
        end = start + length
        if end <= self.first_image:  # text before the first image: plain positions
            return self.model(inputs, cache=cache, hidden=hidden)
        if start >= n:  # decoding past the prompt
            return self.model(inputs, cache=cache, rope_delta=self.delta, hidden=hidden)
        pos = self.positions[:, start : min(end, n)]
        if end > n:
            tail = np.arange(n, end) + self.delta
            pos = np.concatenate([pos, np.broadcast_to(tail, (3, end - n))], axis=1)
        embeds = None
        spans = [
            (s, img)
            for s, img in zip(self.inputs.images, self.inputs.prepared, strict=True)
            if s.start < end and s.end > start
        ]
        if spans:
            text = self.model.language_model.model.embed_tokens(inputs)
            pieces, at = [], start
            for s, img in spans:
                lo, hi = max(s.start, start), min(s.end, end)
                if lo > at:
                    pieces.append(text[:, at - start : lo - start])
                feats = self.model.image_features(img)
                pieces.append(feats[lo - s.start : hi - s.start][None].astype(text.dtype))
                at = hi
            if at < end:
                pieces.append(text[:, at - start :])
            embeds = mx.concatenate(pieces, axis=1)
        return self.model(
            inputs,
            cache=cache,
            input_embeddings=embeds,
            position_ids=mx.array(pos)[:, None, :],
            hidden=hidden,
        )


def canonical_key(key: str) -> str | None:
    """Map a checkpoint key to Locus's module tree, or None for weights generation never uses."""
    if key.startswith("mtp.") or ".mtp." in key or key.startswith("model.mtp"):
        return "mtp." + key.split("mtp.", 1)[1]  # the MTP head (engine/mtp.py), any prefix
    for prefix in ("model.visual.", "visual.", "vision_tower.", "model.vision_tower."):
        if key.startswith(prefix):
            return "vision_tower." + key[len(prefix) :]
    if key.startswith("model.language_model."):
        return "language_model.model." + key[len("model.language_model.") :]
    if key.startswith("language_model."):
        return key
    if key.startswith("lm_head."):
        return "language_model." + key
    if key.startswith("model."):
        return "language_model." + key
    return "language_model." + key


class WeightError(ValueError):
    """A checkpoint tensor is wrong; `key` is its name in the checkpoint."""

    def __init__(self, key: str, message: str):
        super().__init__(message)
        self.key = key


def stack_experts(
    weights: dict[str, mx.array], num_experts: int | None, origin: dict[str, str]
) -> dict[str, mx.array]:
    """Per-expert expert weights (`experts.{e}.{proj}.weight`) stacked into `switch_mlp.{proj}`.

    Fused text-layer experts (`experts.gate_up_proj` / `experts.down_proj`) are left for mlx-lm's
    sanitize; the MTP head's, which mlx-lm never sees, are split here the same way. `origin` maps
    each key to its checkpoint key and gains entries for the keys made here (and by mlx-lm).
    """
    out: dict[str, mx.array] = {}
    per_expert: dict[tuple[str, int, str], dict[int, tuple[str, mx.array]]] = {}
    fused: dict[tuple[str, int], set[str]] = {}
    for ck, value in weights.items():
        m = _LAYER_MLP.match(ck)
        if not m:
            out[ck] = value
            continue
        key = origin.get(ck, ck)
        tree, layer, rest = m.group(1), int(m.group(2)), m.group(3)
        base = f"{tree}.layers.{layer}.mlp.switch_mlp."
        if rest in ("gate_up_proj", "down_proj"):
            fused.setdefault((tree, layer), set()).add(rest)
            names = ["down_proj"] if rest == "down_proj" else ["gate_proj", "up_proj"]
            for name in names:
                origin[base + name + ".weight"] = key
            if tree == "mtp" and rest == "gate_up_proj":
                mid = value.shape[-2] // 2
                out[base + "gate_proj.weight"] = value[..., :mid, :]
                out[base + "up_proj.weight"] = value[..., mid:, :]
            elif tree == "mtp":
                out[base + "down_proj.weight"] = value
            else:
                out[ck] = value
            continue
        pm = re.match(r"^(\d+)\.(gate_proj|up_proj|down_proj)\.weight$", rest)
        if pm:
            per_expert.setdefault((tree, layer, pm.group(2)), {})[int(pm.group(1))] = (key, value)
            continue
        raise WeightError(key, f"unrecognized expert weight {key!r}")
    for (tree, layer), have in fused.items():
        if len(have) == 1:
            (present,) = have
            other = "down_proj" if present == "gate_up_proj" else "gate_up_proj"
            key = origin.get(f"{tree}.layers.{layer}.mlp.experts.{present}", present)
            raise WeightError(key, f"layer {layer}: experts.{present} without experts.{other}")
    for (tree, layer, proj), experts in sorted(per_expert.items()):
        want = num_experts if num_experts is not None else max(experts) + 1
        missing = sorted(set(range(want)) - set(experts))
        first_key = experts[min(experts)][0]
        if missing:
            raise WeightError(
                first_key, f"layer {layer} {proj}: weights of expert(s) {missing[:8]} are missing"
            )
        extra = sorted(set(experts) - set(range(want)))
        if extra:
            raise WeightError(experts[extra[0]][0], f"expert {extra[0]} is beyond num_experts={want}")
        shape = experts[0][1].shape
        for e in range(want):
            k, v = experts[e]
            if v.shape != shape:
                raise WeightError(k, f"weight {k!r} has shape {list(v.shape)}, expert 0 has {list(shape)}")
        name = f"{tree}.layers.{layer}.mlp.switch_mlp.{proj}.weight"
        out[name] = mx.stack([experts[e][1] for e in range(want)])
        origin[name] = first_key
    return out


def bind_images(model: Any, inputs: PromptInputs) -> Any:
    """What generation should call for this prompt: the model, or the model bound to its images."""
    if not inputs.images:
        return model
    bind = getattr(model, "with_images", None)
    if bind is None:
        from .errors import RequestError

        raise RequestError("this model cannot take images")
    return bind(inputs)
