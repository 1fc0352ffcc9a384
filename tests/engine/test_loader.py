"""The loader: every layout, the HF cache, clear errors for broken checkpoints, memory, convert."""

from __future__ import annotations

import gc
import json
import shutil
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest

from engine import (
    CheckpointInfo,
    InsufficientMemoryError,
    ModelLoadError,
    convert,
    estimate_memory,
    inspect_checkpoint,
    load_model,
)
from engine.loader import TensorInfo, check_memory
from engine.model import text_config
from engine.tiny import QWEN36_TEXT_WIDTHS, TinyConfig, make_config, make_weights

GB = 1024**3
IDS = [3, 77, 140, 9, 250, 31, 402, 18]
LAYOUTS = ["per_expert", "fused", "mlx"]
# Measured ~1.0 for the fused/mlx layouts and 1.07-1.17 for per-expert (experts are read
# per-expert, then stacked); the bound leaves a little headroom.
PEAK_RATIO_BOUND = 1.35


def forward(lm, ids=IDS) -> np.ndarray:
    return np.array(lm.model(mx.array([ids], dtype=mx.uint32))[0].astype(mx.float32))


def vision_key_count() -> int:
    return sum(k.startswith("model.visual.") for k in make_weights(TinyConfig()))


# -- layouts ------------------------------------------------------------------------------------


@pytest.mark.parametrize("layout", LAYOUTS)
def test_every_layout_loads_with_vision_weights(tiny_dir, layout):
    info = inspect_checkpoint(tiny_dir(layout))
    assert info.layout == layout
    assert info.quantization is None
    lm = load_model(tiny_dir(layout))
    assert lm.kind == "qwen3_5_moe"
    assert lm.has_vision_weights
    assert len(lm.model.vision_tower) == vision_key_count()
    assert all(isinstance(v, mx.array) for v in lm.model.vision_tower.values())
    assert lm.eos_token_ids[:2] == [482, 480]  # generation_config's eos ids first
    assert lm.has_chat_template
    logits = forward(lm)
    assert logits.shape == (len(IDS), 512) and np.isfinite(logits).all()


def test_layouts_give_the_same_model(tiny_dir, tiny_model):
    ref = forward(tiny_model)
    for layout in ("fused", "mlx"):
        np.testing.assert_allclose(forward(load_model(tiny_dir(layout))), ref, atol=1e-5)


@pytest.mark.parametrize("bits", [4, 8])
def test_quantized_mlx_checkpoint_inspects_and_loads(tiny_dir, bits):
    info = inspect_checkpoint(tiny_dir("mlx", bits))
    assert info.layout == "mlx"
    assert info.quantization["bits"] == bits
    lm = load_model(tiny_dir("mlx", bits))
    assert len(lm.model.vision_tower) == vision_key_count()
    assert lm.model.language_model.model.layers[0].mlp.switch_mlp.up_proj.bits == bits
    assert np.isfinite(forward(lm)).all()


def test_mtp_head_is_loaded_in_every_layout(tiny_dir):
    info = inspect_checkpoint(tiny_dir("per_expert"))
    mtp = [k for k in info.tensors if k.startswith("mtp.")]
    assert "mtp.fc.weight" in mtp and "mtp.layers.0.mlp.experts.0.up_proj.weight" in mtp
    total = sum(t.nbytes for t in info.tensors.values())
    assert info.weight_bytes == total  # the head is loaded, so its bytes count
    from mlx.utils import tree_flatten

    for layout in ("per_expert", "fused", "mlx"):
        lm = load_model(tiny_dir(layout))
        names = [k for k, _ in tree_flatten(lm.model.parameters())]
        assert "mtp.layers.0.mlp.switch_mlp.up_proj.weight" in names
        assert len(lm.model.make_cache()) == lm.model.language_model.args.num_hidden_layers + 1
    # convert keeps the head
    assert any(k.startswith("mtp.layers.0.") for k in inspect_checkpoint(tiny_dir("mlx")).tensors)


# -- the Hugging Face cache ---------------------------------------------------------------------


@pytest.fixture
def hf_cache(tmp_path, monkeypatch):
    """An empty HF hub cache in tmp_path, used by huggingface_hub (offline)."""
    from huggingface_hub import constants

    cache = tmp_path / "hub"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # huggingface_hub reads the env at import time; point the already-imported module too
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    return cache


def test_uncached_repo_id_raises_naming_the_cache(hf_cache):
    with pytest.raises(ModelLoadError) as e:
        load_model("nobody-org/no-such-model")
    msg = str(e.value)
    assert "nobody-org/no-such-model" in msg
    assert "cache" in msg.lower()


def test_directory_not_found(tmp_path):
    with pytest.raises(ModelLoadError, match="not found"):
        load_model(tmp_path / "nowhere" / "model")


def test_loads_a_repo_id_from_the_hf_cache(hf_cache, tiny_dir, tiny_model):
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = hf_cache / "models--tiny-org--tiny-qwen"
    snap = repo / "snapshots" / commit
    snap.mkdir(parents=True)
    for f in tiny_dir("per_expert").iterdir():
        (snap / f.name).symlink_to(f)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    lm = load_model("tiny-org/tiny-qwen")
    assert lm.path == snap
    assert lm.kind == "qwen3_5_moe"
    assert inspect_checkpoint("tiny-org/tiny-qwen").layout == "per_expert"
    np.testing.assert_array_equal(forward(lm), forward(tiny_model))


# -- broken checkpoints: each a ModelLoadError naming the file and the problem ---------------------

SHARD1 = "model-00001-of-00002.safetensors"
SHARD2 = "model-00002-of-00002.safetensors"


@pytest.fixture
def ckpt(tiny_dir, tmp_path) -> Path:
    """A private copy of the per-expert tiny checkpoint, free to break."""
    return Path(shutil.copytree(tiny_dir("per_expert"), tmp_path / "model"))


def shard_of(path: Path, key: str) -> str:
    return json.loads((path / "model.safetensors.index.json").read_text())["weight_map"][key]


def rewrite_tensor(path: Path, key: str, value: mx.array | None) -> str:
    """Replace (or with None, delete) one tensor in its shard; returns the shard's name."""
    name = shard_of(path, key)
    weights = mx.load(str(path / name))
    assert key in weights
    if value is None:
        del weights[key]
    else:
        weights[key] = value
    mx.save_safetensors(str(path / name), weights, metadata={"format": "pt"})
    return name


def edit_config(path: Path, **changes) -> None:
    config = json.loads((path / "config.json").read_text())
    config.update(changes)
    (path / "config.json").write_text(json.dumps(config))


def load_error(path: Path) -> str:
    with pytest.raises(ModelLoadError) as e:
        load_model(path)
    assert not isinstance(e.value, InsufficientMemoryError)
    return str(e.value)


def test_missing_config(ckpt):
    (ckpt / "config.json").unlink()
    msg = load_error(ckpt)
    assert str(ckpt) in msg and "no config.json" in msg


def test_config_not_json(ckpt):
    (ckpt / "config.json").write_text('{"model_type": "qwen3_5_moe",')
    msg = load_error(ckpt)
    assert str(ckpt / "config.json") in msg and "not valid JSON" in msg


def test_unknown_model_type(ckpt):
    edit_config(ckpt, model_type="foo_bar")
    msg = load_error(ckpt)
    assert "config.json" in msg and "'foo_bar'" in msg and "unknown model_type" in msg


def test_missing_tokenizer(ckpt):
    (ckpt / "tokenizer.json").unlink()
    msg = load_error(ckpt)
    assert str(ckpt) in msg and "no tokenizer" in msg and "tokenizer.json" in msg


def test_truncated_shard(ckpt):
    f = ckpt / SHARD2
    data = f.read_bytes()
    f.write_bytes(data[: len(data) // 2])
    msg = load_error(ckpt)
    assert SHARD2 in msg and "truncated" in msg


@pytest.mark.parametrize(
    "garbage",
    [
        b"\x07\x1f\x99garbage that is not a safetensors file" * 40,
        b"\x20\x00\x00\x00\x00\x00\x00\x00" + b"{this is not json at all, really}" + b"\0" * 64,
        b"\x02\x00\x00\x00\x00\x00\x00\x00" + b"[]" + b"\0" * 64,
        b"\x01\x02",
    ],
    ids=["bad-length", "bad-json", "not-an-object", "tiny-file"],
)
def test_garbage_safetensors_header(ckpt, garbage):
    (ckpt / SHARD1).write_bytes(garbage)
    msg = load_error(ckpt)
    assert SHARD1 in msg
    assert any(w in msg for w in ("safetensors", "header", "truncated"))


def test_index_lists_a_missing_shard(ckpt):
    (ckpt / SHARD2).unlink()
    msg = load_error(ckpt)
    assert str(ckpt) in msg and SHARD2 in msg and "missing" in msg


def test_unsupported_quantization_config(ckpt):
    edit_config(ckpt, quantization_config={"quant_method": "fp8"})
    msg = load_error(ckpt)
    assert str(ckpt) in msg and "'fp8'" in msg and "not supported" in msg


def _grown(path: Path, key: str) -> mx.array:
    shape = mx.load(str(path / shard_of(path, key)))[key].shape
    return mx.zeros((shape[0] + 1, *shape[1:]))


@pytest.mark.parametrize(
    "key",
    [
        "model.language_model.layers.0.linear_attn.in_proj_a.weight",
        "model.language_model.embed_tokens.weight",
        "model.language_model.layers.3.self_attn.q_norm.weight",
        "lm_head.weight",
        "model.language_model.norm.weight",
        "model.language_model.layers.1.mlp.experts.3.up_proj.weight",
    ],
)
def test_weight_with_wrong_shape(ckpt, key):
    shard = rewrite_tensor(ckpt, key, _grown(ckpt, key))
    msg = load_error(ckpt)
    assert shard in msg, msg
    short = key.removeprefix("model.language_model.")
    assert short in msg, msg
    assert "shape" in msg


def test_wrong_shape_of_lm_head_in_the_last_shard_names_that_shard(ckpt):
    """Real checkpoints often keep lm_head in the last shard."""
    key = "lm_head.weight"
    bad = _grown(ckpt, key)
    rewrite_tensor(ckpt, key, None)
    last = mx.load(str(ckpt / SHARD2))
    last[key] = bad
    mx.save_safetensors(str(ckpt / SHARD2), last, metadata={"format": "pt"})
    index = json.loads((ckpt / "model.safetensors.index.json").read_text())
    index["weight_map"][key] = SHARD2
    (ckpt / "model.safetensors.index.json").write_text(json.dumps(index))
    assert inspect_checkpoint(ckpt).tensors[key].file == SHARD2
    msg = load_error(ckpt)
    assert "'lm_head.weight' has shape [513, 64]" in msg
    assert SHARD2 in msg, msg


def test_missing_weight(ckpt):
    rewrite_tensor(ckpt, "model.language_model.layers.2.linear_attn.out_proj.weight", None)
    msg = load_error(ckpt)
    assert str(ckpt) in msg and "missing" in msg
    assert "layers.2.linear_attn.out_proj.weight" in msg


@pytest.mark.parametrize(
    "expert",
    [
        0,
        3,
        7,
    ],
)
def test_missing_expert(ckpt, expert):
    for proj in ("gate_proj", "up_proj", "down_proj"):
        rewrite_tensor(ckpt, f"model.language_model.layers.1.mlp.experts.{expert}.{proj}.weight", None)
    msg = load_error(ckpt)
    assert str(ckpt) in msg, msg
    assert "layer 1" in msg and "expert" in msg and f"[{expert}]" in msg, msg


@pytest.fixture
def fused_ckpt(tiny_dir, tmp_path) -> Path:
    """A private copy of the fused tiny checkpoint, free to break."""
    return Path(shutil.copytree(tiny_dir("fused"), tmp_path / "model"))


def test_fused_experts_without_their_down_projection(fused_ckpt):
    key = "model.language_model.layers.1.mlp.experts.gate_up_proj"
    rewrite_tensor(fused_ckpt, "model.language_model.layers.1.mlp.experts.down_proj", None)
    msg = load_error(fused_ckpt)
    assert shard_of(fused_ckpt, key) in msg, msg
    assert "layer 1" in msg and "experts.gate_up_proj without experts.down_proj" in msg, msg


def test_fused_experts_of_the_wrong_shape_name_the_checkpoint_key(fused_ckpt):
    """mlx-lm splits gate_up_proj into two weights; an error names the tensor in the file."""
    key = "model.language_model.layers.2.mlp.experts.gate_up_proj"
    shard = rewrite_tensor(fused_ckpt, key, _grown(fused_ckpt, key)[:, :-2])
    msg = load_error(fused_ckpt)
    assert shard in msg and repr(key) in msg and "shape" in msg, msg


# -- memory -------------------------------------------------------------------------------------


def test_insufficient_memory_is_refused_with_figures(tiny_dir, monkeypatch):
    monkeypatch.setenv("LOCUS_MEMORY_LIMIT_GB", "0.001")
    path = tiny_dir("per_expert")
    with pytest.raises(InsufficientMemoryError) as e:
        load_model(path)
    err = e.value
    assert err.available == int(0.001 * GB)
    assert err.needed == estimate_memory(inspect_checkpoint(path)).total
    msg = str(err)
    assert f"needs about {err.needed / GB:.1f} GB" in msg
    assert f"only {err.available / GB:.1f} GB is available" in msg
    # memory_check=False skips the check
    lm = load_model(path, memory_check=False)
    assert np.isfinite(forward(lm)).all()


def test_memory_limit_env_is_honored_when_large_enough(tiny_dir, monkeypatch):
    monkeypatch.setenv("LOCUS_MEMORY_LIMIT_GB", "4")
    assert load_model(tiny_dir("mlx", 4)).kind == "qwen3_5_moe"


def qwen36_info(tmp_path: Path) -> CheckpointInfo:
    """Qwen3.6-35B-A3B's real sizes, with ~20 GiB of (header-only) 16-bit tensors."""
    cfg = TinyConfig(**QWEN36_TEXT_WIDTHS, num_hidden_layers=40)
    shape = (256, 512, 2048)  # 512 MiB at bf16, one per layer: 20 GiB
    tensors = {
        f"model.language_model.layers.{i}.mlp.experts.gate_up_proj": TensorInfo(
            "model.safetensors", "BF16", shape, int(np.prod(shape)) * 2
        )
        for i in range(40)
    }
    tensors["mtp.fc.weight"] = TensorInfo("model.safetensors", "BF16", (2048, 4096), 2048 * 4096 * 2)
    return CheckpointInfo(tmp_path, make_config(cfg), [], tensors, "fused", None)


def test_estimate_memory_for_qwen36_sizes(tmp_path, monkeypatch):
    info = qwen36_info(tmp_path)
    assert info.is_qwen_moe
    ctx = 32_768
    est = estimate_memory(info, ctx)
    assert est.weights == 20 * GB  # a lone mtp.fc (no head layer) is not loaded, not counted
    # 10 full-attention layers x (K, V) x 2 KV heads x 256 dims x 2 bytes per token
    kv = 10 * 2 * 2 * 256 * 2 * ctx
    assert kv == 640 * 1024**2
    # 30 DeltaNet layers: fp32 state 32 heads x 128 x 128, plus a bf16 conv state of 3 steps
    conv_dim = 2 * 16 * 128 + 32 * 128
    state = 30 * (32 * 128 * 128 * 4 + 3 * conv_dim * 2)
    assert est.cache == kv + state
    assert est.overhead == GB  # weights / 20
    assert est.total == 20 * GB + kv + state + GB
    # the KV part grows linearly with the context; the recurrent state does not
    assert estimate_memory(info, 2 * ctx).cache - est.cache == kv
    monkeypatch.setenv("LOCUS_MEMORY_LIMIT_GB", "21.5")
    with pytest.raises(InsufficientMemoryError, match=r"needs about 21\.7 GB") as e:
        check_memory(info, ctx)
    assert e.value.needed == est.total and e.value.available == int(21.5 * GB)
    assert "only 21.5 GB is available" in str(e.value)
    monkeypatch.setenv("LOCUS_MEMORY_LIMIT_GB", "24")
    assert check_memory(info, ctx).total == est.total


def test_peak_memory_while_loading_stays_near_the_checkpoint(tiny_dir):
    path = tiny_dir("per_expert")
    weight_bytes = inspect_checkpoint(path).weight_bytes
    gc.collect()  # free earlier tests' models now, not in the middle of the measurement
    mx.clear_cache()
    base = mx.get_active_memory()
    mx.reset_peak_memory()
    lm = load_model(path)
    peak = mx.get_peak_memory() - base
    ratio = peak / weight_bytes
    print(f"load peak {peak} B for {weight_bytes} B of weights: ratio {ratio:.3f}")
    assert mx.get_active_memory() - base >= weight_bytes  # everything really was read
    assert ratio <= PEAK_RATIO_BOUND
    del lm


# -- convert ------------------------------------------------------------------------------------

COPIED = (
    "tokenizer.json",
    "tokenizer_config.json",
    "chat_template.jinja",
    "generation_config.json",
)


def test_convert_to_4_bit(tiny_dir, tmp_path):
    out = convert(tiny_dir("per_expert"), tmp_path / "q4", bits=4)
    assert out == tmp_path / "q4"
    config = json.loads((out / "config.json").read_text())
    q = config["quantization"]
    assert q["bits"] == 4 and q["group_size"] == 64
    assert q["language_model.model.layers.0.mlp.gate"] == {"group_size": 64, "bits": 8}
    assert config["quantization_config"] == q
    for f in COPIED:
        assert (out / f).read_bytes() == (tiny_dir("per_expert") / f).read_bytes(), f
    info = inspect_checkpoint(out)
    assert info.layout == "mlx"
    assert info.weight_bytes < inspect_checkpoint(tiny_dir("per_expert")).weight_bytes / 3
    lm = load_model(out)
    assert lm.has_chat_template and len(lm.model.vision_tower) == vision_key_count()
    logits = forward(lm)
    assert np.isfinite(logits).all()
    # same model as the tiny 4-bit checkpoint written by the fixture
    np.testing.assert_allclose(logits, forward(load_model(tiny_dir("mlx", 4))), atol=1e-5)


def test_convert_refuses_a_non_empty_directory(tiny_dir, tmp_path):
    dst = tmp_path / "busy"
    dst.mkdir()
    (dst / "notes.txt").write_text("keep me")
    with pytest.raises(ModelLoadError, match="not empty"):
        convert(tiny_dir("per_expert"), dst, bits=4)
    assert sorted(p.name for p in dst.iterdir()) == ["notes.txt"]


def test_convert_unquantized_round_trips(tiny_dir, tiny_model, tmp_path):
    out = convert(tiny_dir("per_expert"), tmp_path / "fp", bits=None)
    config = json.loads((out / "config.json").read_text())
    assert "quantization" not in config and "quantization_config" not in config
    info = inspect_checkpoint(out)
    assert info.layout == "mlx" and info.quantization is None
    lm = load_model(out)
    np.testing.assert_allclose(forward(lm), forward(tiny_model), atol=1e-6, rtol=0)


# -- other architectures through mlx-lm ---------------------------------------------------------


def test_other_architecture_loads_through_mlx_lm(tiny_dir, tmp_path):
    from mlx.utils import tree_flatten
    from mlx_lm.models import llama

    config = {
        "model_type": "llama",
        "hidden_size": 64,
        "num_hidden_layers": 2,
        "intermediate_size": 128,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "rms_norm_eps": 1e-5,
        "vocab_size": 512,
        "max_position_embeddings": 4096,
        "tie_word_embeddings": False,
    }
    mx.random.seed(0)
    ref = llama.Model(llama.ModelArgs.from_dict(config))
    weights = dict(tree_flatten(ref.parameters()))
    mx.eval(weights)
    out = tmp_path / "tiny-llama"
    out.mkdir()
    mx.save_safetensors(str(out / "model.safetensors"), weights, metadata={"format": "mlx"})
    (out / "config.json").write_text(json.dumps(config))
    for f in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        shutil.copy(tiny_dir("per_expert") / f, out / f)

    info = inspect_checkpoint(out)
    assert info.layout == "other" and not info.is_qwen_moe
    lm = load_model(out)
    assert lm.kind == "mlx_lm"
    assert not lm.has_vision_weights
    assert 482 in lm.eos_token_ids  # the tokenizer's eos
    got = forward(lm)
    assert got.shape == (len(IDS), 512)
    want = np.array(ref(mx.array([IDS], dtype=mx.uint32))[0])
    np.testing.assert_allclose(got, want, atol=1e-6, rtol=0)


def _edit_text_config(path: Path, **changes) -> None:
    config = json.loads((path / "config.json").read_text())
    config["text_config"].update(changes)
    (path / "config.json").write_text(json.dumps(config))


@pytest.mark.parametrize(
    "change, want",
    [
        ({"text_config": [1, 2]}, "text_config must be a JSON object, not a list"),
        ({"text_config": "qwen"}, "text_config must be a JSON object, not a string"),
        ({"vision_config": 3}, "vision_config must be a JSON object, not a number"),
        ({"model_type": ["qwen3_5_moe"]}, "model_type must be a string"),
    ],
)
def test_config_of_the_wrong_shape_is_one_clear_line(ckpt, change, want):
    edit_config(ckpt, **change)
    msg = load_error(ckpt)
    assert want in msg and str(ckpt / "config.json") in msg and "\n" not in msg


@pytest.mark.parametrize(
    "field, value, want",
    [
        ("vocab_size", 10**12, "vocab_size = 1000000000000 is out of range"),
        ("num_attention_heads", 0, "num_attention_heads = 0 is out of range"),
        ("num_key_value_heads", 0, "num_key_value_heads = 0 is out of range"),
        ("hidden_size", "64", "hidden_size must be a whole number, not a string"),
        ("num_hidden_layers", 2.5, "num_hidden_layers must be a whole number, not a fraction"),
        ("num_experts", True, "num_experts must be a whole number, not true/false"),
    ],
)
def test_config_values_that_cannot_be_a_model_are_one_clear_line(ckpt, field, value, want):
    _edit_text_config(ckpt, **{field: value})
    msg = load_error(ckpt)
    assert want in msg and "\n" not in msg and "tokenizer" not in msg


def test_config_rejected_by_transformers_is_not_blamed_on_the_tokenizer(ckpt):
    _edit_text_config(ckpt, num_hidden_layers=3)  # layer_types lists 4
    msg = load_error(ckpt)
    assert "config.json" in msg and "\n" not in msg and "tokenizer cannot be loaded" not in msg


def test_llama_config_over_qwen_weights_is_one_line(ckpt):
    (ckpt / "config.json").write_text(
        json.dumps(
            {
                "model_type": "llama",
                "hidden_size": 64,
                "num_hidden_layers": 2,
                "intermediate_size": 128,
                "num_attention_heads": 4,
                "num_key_value_heads": 2,
                "rms_norm_eps": 1e-5,
                "vocab_size": 512,
                "max_position_embeddings": 4096,
            }
        )
    )
    msg = load_error(ckpt)
    assert "\n" not in msg and len(msg) < 400, msg
    assert "'llama'" in msg and "do not match" in msg and "qwen3_5_moe" in msg


def test_memory_check_reserves_the_capped_context(tmp_path, monkeypatch):
    # --context above max_position_embeddings is served as the maximum, so reserve only that (issue 31).
    info = qwen36_info(tmp_path)
    most = text_config(info.config)["max_position_embeddings"]
    est = estimate_memory(info, most)
    assert estimate_memory(info, 1_000_000).total == est.total
    monkeypatch.setenv("LOCUS_MEMORY_LIMIT_GB", str(est.total / GB + 0.1))
    assert check_memory(info, 1_000_000).context_tokens == most
