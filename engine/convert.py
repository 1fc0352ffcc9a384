"""Convert an HF Qwen3.5/3.6-MoE checkpoint (any layout) to MLX's stacked, optionally quantized layout.

Streams: the model is built lazily and each output shard is evaluated on its own, so peak memory
stays near one shard plus what it is computed from, not the whole checkpoint.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .errors import ModelLoadError
from .loader import _load_qwen, inspect_checkpoint

_COPY = (
    "tokenizer.json",
    "tokenizer_config.json",
    "chat_template.jinja",
    "vocab.json",
    "merges.txt",
    "generation_config.json",
    "special_tokens_map.json",
    "preprocessor_config.json",
    "video_preprocessor_config.json",
)
_SHARD_BYTES = 4 * 1024**3


def _quantize_predicate(
    quant_predicate: Callable[[str, Any], bool | dict[str, Any]] | None,
    group_size: int,
    per_layer: dict[str, Any],
) -> Callable[[str, Any], bool | dict[str, Any]]:
    """mlx-lm's quant predicate for the model (router and shared-expert gate at 8 bits), on the
    layers that can be quantized; layers given their own settings are recorded in `per_layer`
    under their full path (what the loader and mlx-lm read back from the config)."""

    def predicate(path: str, module: Any) -> bool | dict[str, Any]:
        if not hasattr(module, "to_quantized") or module.weight.shape[-1] % group_size:
            return False
        spec = True if quant_predicate is None else quant_predicate(path, module)
        if isinstance(spec, dict):
            per_layer[path] = spec
        return spec

    return predicate


def convert(
    src: str | Path,
    dst: str | Path,
    *,
    bits: int | None = 4,
    group_size: int = 64,
    progress: Callable[[int, int], None] | None = None,
) -> Path:
    """Write an MLX checkpoint of `src` to `dst`; `bits=None` keeps the weights unquantized."""
    import mlx.core as mx
    import mlx.nn as nn
    from mlx.utils import tree_flatten

    info = inspect_checkpoint(src)
    if not info.is_qwen_moe:
        raise ModelLoadError(
            f"{info.path}: `locus convert` handles Qwen3.5/3.6-MoE checkpoints; for "
            f"{info.model_type!r} use `mlx_lm.convert`"
        )
    if info.quantization is not None:
        raise ModelLoadError(f"{info.path}: already quantized; convert the original weights")
    if bits is not None and bits not in (2, 3, 4, 5, 6, 8):
        raise ModelLoadError(f"--bits must be one of 2, 3, 4, 5, 6, 8 (got {bits})")
    dst = Path(dst)
    if dst.exists() and any(dst.iterdir()):
        raise ModelLoadError(f"{dst} exists and is not empty; choose a new directory")
    model = _load_qwen(info, lazy=True)
    config: dict[str, Any] = json.loads(json.dumps(info.config))
    if bits is not None:
        q = {"group_size": group_size, "bits": bits, "mode": "affine"}
        nn.quantize(
            model,
            group_size=group_size,
            bits=bits,
            class_predicate=_quantize_predicate(model.quant_predicate, group_size, q),
        )
        config["quantization"] = q
        config["quantization_config"] = q
    weights = {"language_model." + k: v for k, v in tree_flatten(model.language_model.parameters())}
    if model.mtp_head is not None:
        weights.update({"mtp." + k: v for k, v in tree_flatten(model.mtp_head.parameters())})
    for k, v in model.vision_tower.items():
        if k == "patch_embed.proj.weight" and v.ndim == 5:
            v = v.transpose(0, 2, 3, 4, 1)  # MLX convolutions are channels-last
        weights["vision_tower." + k] = v
    del model
    dst.mkdir(parents=True, exist_ok=True)
    shards: list[list[str]] = [[]]
    size = 0
    for k in sorted(weights):
        nb = weights[k].nbytes
        if shards[-1] and size + nb > _SHARD_BYTES:
            shards.append([])
            size = 0
        shards[-1].append(k)
        size += nb
    names = [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    if len(shards) == 1:
        names = ["model.safetensors"]
    weight_map: dict[str, str] = {}
    total = 0
    for i, (name, keys) in enumerate(zip(names, shards, strict=False)):
        part = {k: weights.pop(k) for k in keys}
        mx.eval(part)
        total += sum(v.nbytes for v in part.values())
        mx.save_safetensors(str(dst / name), part, metadata={"format": "mlx"})
        weight_map.update({k: name for k in keys})
        del part
        if progress:
            progress(i + 1, len(shards))
    if len(shards) > 1:
        (dst / "model.safetensors.index.json").write_text(
            json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2)
        )
    (dst / "config.json").write_text(json.dumps(config, indent=2))
    for f in _COPY:
        if (info.path / f).exists():
            shutil.copy2(info.path / f, dst / f)
    return dst
