"""Qwen3.5/3.6 mixture-of-experts model, built on mlx-lm's qwen3_5 layers.

mlx-lm's text path (gated DeltaNet, gated attention, SwitchGLU experts over `gather_qmm`) already
matches transformers; this module adds what mlx-lm lacks for Locus: the vision tower's weights kept
beside the text model (one weight copy for text and images) and key normalization for every
checkpoint layout found in the wild.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

import mlx.core as mx
import mlx.nn as nn
from mlx_lm.models import qwen3_5

QWEN_MOE_TYPES = {"qwen3_5_moe", "qwen3_5", "qwen3_5_moe_text", "qwen3_5_text"}

_LAYER_MLP = re.compile(r"^language_model\.model\.layers\.(\d+)\.mlp\.experts\.(.+)$")
_NORM_SUFFIXES = (
    ".input_layernorm.weight",
    ".post_attention_layernorm.weight",
    "model.norm.weight",
    ".q_norm.weight",
    ".k_norm.weight",
)


def text_config(config: dict[str, Any]) -> dict[str, Any]:
    """The text model's config: `text_config` when nested, else the top level itself."""
    tc = dict(config.get("text_config") or config)
    tc.setdefault("model_type", config.get("model_type", ""))
    return tc


class Model(nn.Module):
    """The text model (`language_model`) plus the vision tower's weights (`vision_tower`)."""

    def __init__(self, config: dict[str, Any]):
        super().__init__()
        self.config = config
        args = qwen3_5.TextModelArgs.from_dict(text_config(config))
        self.args = args
        self.language_model = qwen3_5.TextModel(args)
        # Vision weights stay loaded, flat by name, until the vision tower consumes them.
        self.vision_tower: dict[str, mx.array] = {}

    def __call__(self, inputs: mx.array, cache: Any = None, input_embeddings: Any = None):
        return self.language_model(inputs, cache=cache, input_embeddings=input_embeddings)

    @property
    def layers(self) -> list[nn.Module]:
        return self.language_model.layers

    def make_cache(self) -> list[Any]:
        return self.language_model.make_cache()

    def text_parameter_shapes(self) -> dict[str, tuple[int, ...]]:
        from mlx.utils import tree_flatten

        return {k: tuple(v.shape) for k, v in tree_flatten(self.language_model.parameters())}


def canonical_key(key: str) -> str | None:
    """Map a checkpoint key to Locus's module tree, or None for weights generation never uses."""
    if key.startswith("mtp.") or ".mtp." in key or key.startswith("model.mtp"):
        return None
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


def normalize_weights(
    items: Iterable[tuple[str, mx.array]],
    num_layers: int,
    hf_norms: bool,
    num_experts: int | None = None,
) -> tuple[dict[str, mx.array], dict[str, str]]:
    """Rename keys and turn per-expert / fused expert weights into the stacked switch_mlp layout.

    Returns the weights and, for each, the checkpoint key it came from (for error messages).
    Everything stays lazy: stacking and slicing build graph nodes, nothing is read until evaluated.
    `hf_norms` adds the +1 offset HF's Qwen3.5 RMSNorm stores implicitly and moves conv1d's axis.
    """
    out: dict[str, mx.array] = {}
    origin: dict[str, str] = {}
    per_expert: dict[tuple[int, str], dict[int, tuple[str, mx.array]]] = {}
    for key, value in items:
        ck = canonical_key(key)
        if ck is None:
            continue
        m = _LAYER_MLP.match(ck)
        if m:
            layer, rest = int(m.group(1)), m.group(2)
            base = f"language_model.model.layers.{layer}.mlp.switch_mlp."
            if rest == "gate_up_proj":
                mid = value.shape[-2] // 2
                out[base + "gate_proj.weight"] = value[..., :mid, :]
                out[base + "up_proj.weight"] = value[..., mid:, :]
                origin[base + "gate_proj.weight"] = origin[base + "up_proj.weight"] = key
                continue
            if rest == "down_proj":
                out[base + "down_proj.weight"] = value
                origin[base + "down_proj.weight"] = key
                continue
            pm = re.match(r"^(\d+)\.(gate_proj|up_proj|down_proj)\.weight$", rest)
            if pm:
                per_expert.setdefault((layer, pm.group(2)), {})[int(pm.group(1))] = (key, value)
                continue
            raise WeightError(key, f"unrecognized expert weight {key!r}")
        out[ck] = value
        origin[ck] = key
    for (layer, proj), experts in sorted(per_expert.items()):
        want = num_experts if num_experts is not None else max(experts) + 1
        missing = sorted(set(range(want)) - set(experts))
        first_key = experts[min(experts)][0]
        if missing:
            raise WeightError(
                first_key, f"layer {layer} {proj}: weights of expert(s) {missing[:8]} are missing"
            )
        extra = sorted(set(experts) - set(range(want)))
        if extra:
            raise WeightError(
                experts[extra[0]][0], f"expert {extra[0]} is beyond num_experts={want}"
            )
        shape = experts[0][1].shape
        for e in range(want):
            k, v = experts[e]
            if v.shape != shape:
                raise WeightError(
                    k, f"weight {k!r} has shape {list(v.shape)}, expert 0 has {list(shape)}"
                )
        name = f"language_model.model.layers.{layer}.mlp.switch_mlp.{proj}.weight"
        out[name] = mx.stack([experts[e][1] for e in range(want)])
        origin[name] = first_key
    if hf_norms:
        for k, v in list(out.items()):
            if not k.startswith("language_model."):
                continue
            if k.endswith("conv1d.weight") and v.ndim == 3 and v.shape[-1] != 1:
                out[k] = v.moveaxis(2, 1)
            elif any(k.endswith(s) for s in _NORM_SUFFIXES) and v.ndim == 1:
                out[k] = v + 1.0
    return out, origin
