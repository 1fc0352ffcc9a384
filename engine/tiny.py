"""Tiny random Qwen3.5/3.6-MoE checkpoints, tokenizer and chat template, built in seconds.

Used by `locus --demo` (no real weights can be downloaded everywhere) and by the tests. The weights are
random: the model talks nonsense, but every code path (loader, layouts, MoE experts, linear and full
attention, the template, streaming) runs for real. Only the MTP head is fitted to the model (in about
two seconds), so that speculative decoding both accepts and rejects its drafts.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import numpy as np

Layout = Literal["per_expert", "fused", "mlx"]

# Qwen's special and added tokens, in the order the real tokenizer lists them.
QWEN36_CONTEXT = 262144  # Qwen3.6's max_position_embeddings and model_max_length

SPECIAL_TOKENS: list[tuple[str, bool]] = [
    ("<|endoftext|>", True),
    ("<|im_start|>", True),
    ("<|im_end|>", True),
    ("<|object_ref_start|>", True),
    ("<|object_ref_end|>", True),
    ("<|box_start|>", True),
    ("<|box_end|>", True),
    ("<|quad_start|>", True),
    ("<|quad_end|>", True),
    ("<|vision_start|>", True),
    ("<|vision_end|>", True),
    ("<|vision_pad|>", True),
    ("<|image_pad|>", True),
    ("<|video_pad|>", True),
    ("<tool_call>", False),
    ("</tool_call>", False),
    ("<|fim_prefix|>", True),
    ("<|fim_middle|>", True),
    ("<|fim_suffix|>", True),
    ("<|fim_pad|>", True),
    ("<|repo_name|>", True),
    ("<|file_sep|>", True),
    ("<tool_response>", False),
    ("</tool_response>", False),
    ("<think>", False),
    ("</think>", False),
]

_CORPUS = """<|im_start|>system
You are a helpful assistant.<|im_end|>
<|im_start|>user
Hello, how are you? Tell me about the weather in Paris and the cat on the mat.<|im_end|>
<|im_start|>assistant
<think>
The user greets me. I should answer politely and call a function if needed.
</think>

I am fine, thank you! The weather is sunny. def main(): return 0
<tool_call>
<function=get_weather>
<parameter=city>
Paris
</parameter>
</function>
</tool_call>
<tool_response>
{"temperature": 21, "unit": "celsius"}
</tool_response>
import os, sys, json; print("hello world"); for i in range(10): x = i * 2
The quick brown fox jumps over the lazy dog. 0123456789 {}[]()<>=+-*/.,;:!?'"
"""


@dataclass
class TinyConfig:
    """Sizes of a tiny model; the defaults keep every quantizable width a multiple of 64."""

    hidden_size: int = 64
    num_hidden_layers: int = 4
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    head_dim: int = 16
    linear_num_key_heads: int = 2
    linear_num_value_heads: int = 4
    linear_key_head_dim: int = 16
    linear_value_head_dim: int = 16
    num_experts: int = 8
    num_experts_per_tok: int = 2
    moe_intermediate_size: int = 64
    shared_expert_intermediate_size: int = 64
    vocab_size: int = 512
    vision_depth: int = 2
    vision_hidden_size: int = 32
    vision_intermediate_size: int = 64
    vision_num_heads: int = 2
    vision_num_position_embeddings: int = 16
    extra_text_config: dict[str, Any] = field(default_factory=dict)


# Qwen3.6-35B-A3B's text widths (reference config), for TinyConfig(**QWEN36_TEXT_WIDTHS, ...).
QWEN36_TEXT_WIDTHS: dict[str, int] = {
    "hidden_size": 2048,
    "num_attention_heads": 16,
    "num_key_value_heads": 2,
    "head_dim": 256,
    "linear_num_key_heads": 16,
    "linear_num_value_heads": 32,
    "linear_key_head_dim": 128,
    "linear_value_head_dim": 128,
    "num_experts": 256,
    "num_experts_per_tok": 8,
    "moe_intermediate_size": 512,
    "shared_expert_intermediate_size": 512,
    "vocab_size": 248320,
}


TINY_PROCESSOR: dict[str, Any] = {
    "image_processor_type": "Qwen2VLImageProcessor",
    "processor_class": "Qwen3VLProcessor",
    "size": {"shortest_edge": 4096, "longest_edge": 16384},
    "patch_size": 16,
    "temporal_patch_size": 2,
    "merge_size": 2,
    "image_mean": [0.5, 0.5, 0.5],
    "image_std": [0.5, 0.5, 0.5],
    "do_convert_rgb": True,
}


def _special_ids(vocab_size: int) -> dict[str, int]:
    # Special tokens sit at the top of the vocabulary, as in Qwen's tokenizer.
    base = vocab_size - len(SPECIAL_TOKENS) - 6
    return {tok: base + i for i, (tok, _) in enumerate(SPECIAL_TOKENS)}


def make_config(cfg: TinyConfig) -> dict[str, Any]:
    """The checkpoint's config.json, shaped like Qwen3.6-35B-A3B's (HF layout)."""
    ids = _special_ids(cfg.vocab_size)
    rotary = int(cfg.head_dim * 0.25)
    half = rotary // 2
    mrope = [half - 2 * (half // 3), half // 3, half // 3]
    text = {
        "model_type": "qwen3_5_moe_text",
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.hidden_size,
        "num_hidden_layers": cfg.num_hidden_layers,
        "num_attention_heads": cfg.num_attention_heads,
        "num_key_value_heads": cfg.num_key_value_heads,
        "head_dim": cfg.head_dim,
        "hidden_act": "silu",
        # Qwen3.6's own context, so every client's long prompts fit the demo model too.
        "max_position_embeddings": QWEN36_CONTEXT,
        "rms_norm_eps": 1e-6,
        "tie_word_embeddings": False,
        "attention_bias": False,
        "attn_output_gate": True,
        "full_attention_interval": 4,
        "layer_types": [
            "full_attention" if (i + 1) % 4 == 0 else "linear_attention" for i in range(cfg.num_hidden_layers)
        ],
        "linear_conv_kernel_dim": 4,
        "linear_key_head_dim": cfg.linear_key_head_dim,
        "linear_value_head_dim": cfg.linear_value_head_dim,
        "linear_num_key_heads": cfg.linear_num_key_heads,
        "linear_num_value_heads": cfg.linear_num_value_heads,
        "mamba_ssm_dtype": "float32",
        "moe_intermediate_size": cfg.moe_intermediate_size,
        "shared_expert_intermediate_size": cfg.shared_expert_intermediate_size,
        "num_experts": cfg.num_experts,
        "num_experts_per_tok": cfg.num_experts_per_tok,
        "norm_topk_prob": True,
        "mtp_num_hidden_layers": 1,
        "rope_parameters": {
            "rope_type": "default",
            "rope_theta": 10_000_000,
            "partial_rotary_factor": 0.25,
            "mrope_section": mrope,
            "mrope_interleaved": True,
        },
        "bos_token_id": ids["<|endoftext|>"],
        "eos_token_id": ids["<|im_end|>"],
        **cfg.extra_text_config,
    }
    vision = {
        "model_type": "qwen3_5_moe_vision",
        "depth": cfg.vision_depth,
        "hidden_size": cfg.vision_hidden_size,
        "intermediate_size": cfg.vision_intermediate_size,
        "num_heads": cfg.vision_num_heads,
        "hidden_act": "gelu_pytorch_tanh",
        "in_channels": 3,
        "patch_size": 16,
        "temporal_patch_size": 2,
        "spatial_merge_size": 2,
        "out_hidden_size": cfg.hidden_size,
        "num_position_embeddings": cfg.vision_num_position_embeddings,
        "deepstack_visual_indexes": [],
    }
    return {
        "architectures": ["Qwen3_5MoeForConditionalGeneration"],
        "model_type": "qwen3_5_moe",
        "text_config": text,
        "vision_config": vision,
        "image_token_id": ids["<|image_pad|>"],
        "video_token_id": ids["<|video_pad|>"],
        "vision_start_token_id": ids["<|vision_start|>"],
        "vision_end_token_id": ids["<|vision_end|>"],
        "tie_word_embeddings": False,
        "torch_dtype": "float32",
    }


def make_weights(cfg: TinyConfig, seed: int = 0) -> dict[str, np.ndarray]:
    """Random weights with the key names transformers' `save_pretrained` writes (per-expert)."""
    rng = np.random.default_rng(seed)

    def w(*shape: int, scale: float = 0.08) -> np.ndarray:
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    H = cfg.hidden_size
    out: dict[str, np.ndarray] = {}
    p = "model.language_model."
    out[p + "embed_tokens.weight"] = w(cfg.vocab_size, H, scale=0.5)
    out[p + "norm.weight"] = w(H, scale=0.1)
    out["lm_head.weight"] = w(cfg.vocab_size, H, scale=0.2)
    kd = cfg.linear_num_key_heads * cfg.linear_key_head_dim
    vd = cfg.linear_num_value_heads * cfg.linear_value_head_dim
    for i in range(cfg.num_hidden_layers):
        lp = f"{p}layers.{i}."
        out[lp + "input_layernorm.weight"] = w(H, scale=0.1)
        out[lp + "post_attention_layernorm.weight"] = w(H, scale=0.1)
        if (i + 1) % 4 == 0:
            a = lp + "self_attn."
            qd = cfg.num_attention_heads * cfg.head_dim
            kvd = cfg.num_key_value_heads * cfg.head_dim
            out[a + "q_proj.weight"] = w(2 * qd, H)  # query and output gate
            out[a + "k_proj.weight"] = w(kvd, H)
            out[a + "v_proj.weight"] = w(kvd, H)
            out[a + "o_proj.weight"] = w(H, qd)
            out[a + "q_norm.weight"] = w(cfg.head_dim, scale=0.1)
            out[a + "k_norm.weight"] = w(cfg.head_dim, scale=0.1)
        else:
            a = lp + "linear_attn."
            nv = cfg.linear_num_value_heads
            out[a + "in_proj_qkv.weight"] = w(2 * kd + vd, H)
            out[a + "in_proj_z.weight"] = w(vd, H)
            out[a + "in_proj_b.weight"] = w(nv, H)
            out[a + "in_proj_a.weight"] = w(nv, H)
            out[a + "conv1d.weight"] = w(2 * kd + vd, 1, 4, scale=0.3)
            out[a + "dt_bias"] = (1.0 + w(nv, scale=0.1)).astype(np.float32)
            out[a + "A_log"] = np.log(rng.uniform(1, 16, nv)).astype(np.float32)
            out[a + "norm.weight"] = (1.0 + w(cfg.linear_value_head_dim, scale=0.1)).astype(np.float32)
            out[a + "out_proj.weight"] = w(H, vd)
        out.update(_moe_weights(lp + "mlp.", cfg, w))
    # Multi-token-prediction head (engine/mtp.py): drafts tokens for speculative decoding.
    out["mtp.fc.weight"] = w(H, 2 * H)
    out.update(_mtp_weights(cfg, np.random.default_rng(seed + 1)))
    # Vision tower, kept so that one weight copy serves text and images.
    v = "model.visual."
    V, VI = cfg.vision_hidden_size, cfg.vision_intermediate_size
    out[v + "patch_embed.proj.weight"] = w(V, 3, 2, 16, 16, scale=0.02)
    out[v + "patch_embed.proj.bias"] = w(V)
    out[v + "pos_embed.weight"] = w(cfg.vision_num_position_embeddings, V)
    for b in range(cfg.vision_depth):
        bp = f"{v}blocks.{b}."
        out[bp + "norm1.weight"] = 1.0 + w(V, scale=0.1)
        out[bp + "norm1.bias"] = w(V)
        out[bp + "norm2.weight"] = 1.0 + w(V, scale=0.1)
        out[bp + "norm2.bias"] = w(V)
        out[bp + "attn.qkv.weight"] = w(3 * V, V)
        out[bp + "attn.qkv.bias"] = w(3 * V)
        out[bp + "attn.proj.weight"] = w(V, V)
        out[bp + "attn.proj.bias"] = w(V)
        out[bp + "mlp.linear_fc1.weight"] = w(VI, V)
        out[bp + "mlp.linear_fc1.bias"] = w(VI)
        out[bp + "mlp.linear_fc2.weight"] = w(V, VI)
        out[bp + "mlp.linear_fc2.bias"] = w(V)
    M = V * 4
    out[v + "merger.norm.weight"] = 1.0 + w(V, scale=0.1)
    out[v + "merger.norm.bias"] = w(V)
    out[v + "merger.linear_fc1.weight"] = w(M, M)
    out[v + "merger.linear_fc1.bias"] = w(M)
    out[v + "merger.linear_fc2.weight"] = w(H, M)
    out[v + "merger.linear_fc2.bias"] = w(H)
    return {k: np.ascontiguousarray(a, dtype=np.float32) for k, a in out.items()}


def _moe_weights(m: str, cfg: TinyConfig, w: Any) -> dict[str, np.ndarray]:
    """One MoE block in the per-expert layout (router, experts, sigmoid-gated shared expert),
    drawn in a fixed order from `w` so the checkpoint stays the same for a seed."""
    H, mi, si = cfg.hidden_size, cfg.moe_intermediate_size, cfg.shared_expert_intermediate_size
    out = {m + "gate.weight": w(cfg.num_experts, H, scale=0.5)}
    for e in range(cfg.num_experts):
        out[f"{m}experts.{e}.gate_proj.weight"] = w(mi, H)
        out[f"{m}experts.{e}.up_proj.weight"] = w(mi, H)
        out[f"{m}experts.{e}.down_proj.weight"] = w(H, mi)
    out[m + "shared_expert.gate_proj.weight"] = w(si, H)
    out[m + "shared_expert.up_proj.weight"] = w(si, H)
    out[m + "shared_expert.down_proj.weight"] = w(H, si)
    out[m + "shared_expert_gate.weight"] = w(1, H)
    return out


def _mtp_weights(cfg: TinyConfig, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """The rest of `mtp.*` as Qwen ships it: norms, one full-attention MoE layer (own generator,
    so the other weights stay what they were)."""

    def w(*shape: int, scale: float = 0.08) -> np.ndarray:
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    H = cfg.hidden_size
    out = {
        f"mtp.{n}.weight": w(H, scale=0.1) for n in ("pre_fc_norm_embedding", "pre_fc_norm_hidden", "norm")
    }
    lp = "mtp.layers.0."
    out[lp + "input_layernorm.weight"] = w(H, scale=0.1)
    out[lp + "post_attention_layernorm.weight"] = w(H, scale=0.1)
    a = lp + "self_attn."
    qd = cfg.num_attention_heads * cfg.head_dim
    kvd = cfg.num_key_value_heads * cfg.head_dim
    out[a + "q_proj.weight"] = w(2 * qd, H)
    out[a + "k_proj.weight"] = w(kvd, H)
    out[a + "v_proj.weight"] = w(kvd, H)
    out[a + "o_proj.weight"] = w(H, qd)
    out[a + "q_norm.weight"] = w(cfg.head_dim, scale=0.1)
    out[a + "k_norm.weight"] = w(cfg.head_dim, scale=0.1)
    out.update(_moe_weights(lp + "mlp.", cfg, w))
    return out


# -- a fitted MTP head -----------------------------------------------------------------------------
# A random head drafts nothing the model accepts, so speculative decoding would only ever take its
# reject path; the head written with the checkpoint is fitted to the main model instead.
MTP_FC_GAIN = 3.0  # fc's output outweighs the head layer's random attention and experts, not drowns them
_FITTED: dict[tuple[str, int], dict[str, np.ndarray]] = {}


def checkpoint_weights(cfg: TinyConfig, seed: int = 0) -> dict[str, np.ndarray]:
    """What `write_checkpoint` writes: `make_weights` with the MTP head fitted (once per process
    for a config and seed; the same arrays every time)."""
    key = (json.dumps(asdict(cfg), sort_keys=True), seed)
    if key not in _FITTED:
        weights = make_weights(cfg, seed)
        weights.update(fit_mtp_head(cfg, weights, seed))
        _FITTED[key] = weights
    return dict(_FITTED[key])


def fit_mtp_head(cfg: TinyConfig, weights: dict[str, np.ndarray], seed: int = 0) -> dict[str, np.ndarray]:
    """`mtp.fc.weight` and `mtp.norm.weight` (HF names) fitted to the main model in `weights`.

    On the model's greedy continuations of random prompts, and on random text, least squares maps
    the head's input pairs (h_i, t_{i+1}) to the model's next hidden state h_{i+1} (before its final
    norm's weight), whose logits are those of t_{i+2}; the head's norm gets the final norm's weight.
    Its attention and MoE layer keep their random weights. A random model's next token is chaotic,
    so the head guesses about one in five: drafts are accepted and rejected.
    """
    import mlx.core as mx

    model = _main_model(cfg, weights)
    seq = _fit_text(model, cfg, np.random.default_rng(seed + 2))
    hidden = model(seq, hidden=True)
    head, embed = model.mtp_head, model.language_model.model.embed_tokens
    pairs = mx.concatenate(
        [head.pre_fc_norm_embedding(embed(seq[:, 1:])), head.pre_fc_norm_hidden(hidden[:, :-1])], axis=-1
    )
    goal = hidden[:, 1:] / model.language_model.model.norm.weight
    x = np.array(pairs, dtype=np.float64).reshape(-1, pairs.shape[-1])
    y = np.array(goal, dtype=np.float64).reshape(-1, goal.shape[-1])
    fc = np.linalg.solve(x.T @ x + 0.1 * np.eye(x.shape[1]), x.T @ y).T * MTP_FC_GAIN
    return {
        "mtp.fc.weight": fc.astype(np.float32),
        "mtp.norm.weight": weights["model.language_model.norm.weight"].copy(),
    }


def _main_model(cfg: TinyConfig, weights: dict[str, np.ndarray]) -> Any:
    """The text model with its MTP head, built in memory from HF-layout weights, as the loader would."""
    import mlx.core as mx
    from mlx.utils import tree_unflatten

    from .model import Model
    from .mtp import attach_head

    model = Model(make_config(cfg))
    sane = model.sanitize({k: mx.array(v) for k, v in weights.items() if not k.startswith("model.visual.")})
    lm = "language_model."
    model.language_model.update(
        tree_unflatten([(k[len(lm) :], v) for k, v in sane.items() if k.startswith(lm)])
    )
    problems = attach_head(model, {k[4:]: v for k, v in sane.items() if k.startswith("mtp.")}, None, None)
    if problems:
        raise RuntimeError(f"tiny MTP head: {problems}")
    model.eval()
    return model


def _fit_text(model: Any, cfg: TinyConfig, rng: np.random.Generator) -> Any:
    """(96, 40) token ids: 32 random prompts of 16 regular tokens with 24 greedy tokens after each
    (what decoding sees), and 64 rows of random tokens (what a sampled reply looks like)."""
    import mlx.core as mx

    regular = min(_special_ids(cfg.vocab_size).values())
    seq = mx.array(rng.integers(0, regular, (32, 16)), dtype=mx.uint32)
    cache = model.make_cache()
    logits = model(seq, cache=cache)[:, -1]
    for _ in range(24):
        tok = mx.argmax(logits, axis=-1).astype(mx.uint32)[:, None]
        seq = mx.concatenate([seq, tok], axis=1)
        logits = model(tok, cache=cache)[:, -1]
    noise = mx.array(rng.integers(0, regular, (64, 40)), dtype=mx.uint32)
    return mx.concatenate([seq, noise])


def fuse_experts(weights: dict[str, np.ndarray], num_layers: int) -> dict[str, np.ndarray]:
    """Per-expert keys → the fused `experts.gate_up_proj` / `experts.down_proj` layout."""
    out = dict(weights)
    prefixes = [f"model.language_model.layers.{i}." for i in range(num_layers)] + ["mtp.layers.0."]
    for lp in prefixes:
        m = lp + "mlp.experts."
        ids = sorted({int(k[len(m) :].split(".")[0]) for k in weights if k.startswith(m)})
        if not ids:
            continue
        gate = [out.pop(f"{m}{e}.gate_proj.weight") for e in ids]
        up = [out.pop(f"{m}{e}.up_proj.weight") for e in ids]
        down = [out.pop(f"{m}{e}.down_proj.weight") for e in ids]
        out[m + "gate_up_proj"] = np.stack(
            [np.concatenate([g, u], 0) for g, u in zip(gate, up, strict=False)]
        )
        out[m + "down_proj"] = np.stack(down)
    return out


def template_text() -> str:
    """The Qwen-format chat template the tiny tokenizer carries."""
    return resources.files("resources").joinpath("templates/qwen3_tiny.jinja").read_text()


def write_tokenizer(path: Path, vocab_size: int = 512) -> None:
    """A byte-level BPE tokenizer with Qwen's special tokens, trained on a small fixed corpus."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    ids = _special_ids(vocab_size)
    n_regular = min(ids.values())
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=n_regular,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
        special_tokens=[],
    )
    tok.train_from_iterator([_CORPUS] * 4, trainer=trainer)
    if tok.get_vocab_size() > n_regular:
        raise RuntimeError("tiny tokenizer vocabulary overflowed")
    # Pad the regular vocabulary so that special ids land exactly where the config says.
    from tokenizers import AddedToken

    while tok.get_vocab_size() < n_regular:
        tok.add_tokens([AddedToken(f"<|unused_{tok.get_vocab_size()}|>", special=True)])
    for text, special in SPECIAL_TOKENS:
        tok.add_tokens([AddedToken(text, special=special, normalized=False)])
    for text, want in ids.items():
        got = tok.token_to_id(text)
        if got != want:
            raise RuntimeError(f"tiny tokenizer: {text} got id {got}, expected {want}")
    path.mkdir(parents=True, exist_ok=True)
    tok.save(str(path / "tokenizer.json"))
    write_tokenizer_config(path, vocab_size)


def write_tokenizer_config(path: Path, vocab_size: int, model_max_length: int = QWEN36_CONTEXT) -> None:
    """tokenizer_config.json (Qwen's special tokens) and the chat template beside tokenizer.json."""
    ids = _special_ids(vocab_size)
    added = {
        str(ids[t]): {
            "content": t,
            "lstrip": False,
            "normalized": False,
            "rstrip": False,
            "single_word": False,
            "special": s,
        }
        for t, s in SPECIAL_TOKENS
    }
    (path / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "tokenizer_class": "Qwen2Tokenizer",
                "added_tokens_decoder": added,
                "bos_token": None,
                "eos_token": "<|im_end|>",
                "pad_token": "<|endoftext|>",
                "unk_token": None,
                "model_max_length": model_max_length,
                "clean_up_tokenization_spaces": False,
                "errors": "replace",
                "split_special_tokens": False,
            },
            indent=2,
        )
    )
    (path / "chat_template.jinja").write_text(template_text())


def write_generation_config(path: Path, vocab_size: int) -> None:
    """generation_config.json with Qwen's eos ids and the model card's default sampling."""
    ids = _special_ids(vocab_size)
    (path / "generation_config.json").write_text(
        json.dumps(
            {
                "bos_token_id": ids["<|endoftext|>"],
                "eos_token_id": [ids["<|im_end|>"], ids["<|endoftext|>"]],
                "do_sample": True,
                "temperature": 1.0,
                "top_p": 0.95,
                "top_k": 20,
            }
        )
    )


def write_checkpoint(
    path: str | Path,
    layout: Layout = "per_expert",
    *,
    bits: int | None = None,
    cfg: TinyConfig | None = None,
    seed: int = 0,
    shards: int = 2,
) -> Path:
    """Write a complete tiny checkpoint (config, weights, tokenizer, template) to `path`.

    `per_expert` and `fused` are HF layouts, written in `shards` files with an index; `mlx` is
    the stacked `switch_mlp` layout that mlx-vlm writes, optionally quantized to `bits` (router
    and shared-expert gate at 8 bits). Runs on the MLX worker thread (see engine.on_mlx_thread).
    """
    from .engine import on_mlx_thread

    return on_mlx_thread(
        lambda: _write_checkpoint(path, layout, bits=bits, cfg=cfg, seed=seed, shards=shards)
    )


def _write_checkpoint(
    path: str | Path, layout: Layout, *, bits: int | None, cfg: TinyConfig | None, seed: int, shards: int
) -> Path:
    import mlx.core as mx

    cfg = cfg or TinyConfig()
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    config = make_config(cfg)
    write_tokenizer(path, cfg.vocab_size)
    write_generation_config(path, cfg.vocab_size)
    # Small pixel bounds keep the tiny model's image prompts short (the real processor uses
    # 65536 to 16777216 pixels); the rest is Qwen3.6's processor config.
    (path / "preprocessor_config.json").write_text(json.dumps(TINY_PROCESSOR, indent=2))
    weights = checkpoint_weights(cfg, seed)
    if layout == "mlx":
        (path / "config.json").write_text(json.dumps(config, indent=2))
        mx.save_safetensors(
            str(path / "model.safetensors"),
            {k: mx.array(v) for k, v in weights.items()},
            metadata={"format": "pt"},
        )
        from .convert import convert

        tmp = path.with_name(path.name + ".hf-src")
        path.rename(tmp)
        try:
            convert(tmp, path, bits=bits)
        finally:
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)
        return path
    if bits is not None:
        raise ValueError("quantized tiny checkpoints use layout='mlx'")
    if layout == "fused":
        weights = fuse_experts(weights, cfg.num_hidden_layers)
    elif layout != "per_expert":
        raise ValueError(f"unknown layout {layout!r}")
    (path / "config.json").write_text(json.dumps(config, indent=2))
    # Shards with an index, as real checkpoints have.
    keys = sorted(weights)
    n = max(1, min(shards, len(keys)))
    cuts = [i * len(keys) // n for i in range(n + 1)]
    parts = {f"model-{i + 1:05d}-of-{n:05d}.safetensors": keys[cuts[i] : cuts[i + 1]] for i in range(n)}
    index = {
        "metadata": {"total_size": int(sum(a.nbytes for a in weights.values()))},
        "weight_map": {},
    }
    for name, ks in parts.items():
        mx.save_safetensors(
            str(path / name), {k: mx.array(weights[k]) for k in ks}, metadata={"format": "pt"}
        )
        index["weight_map"].update({k: name for k in ks})
    (path / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    return path
