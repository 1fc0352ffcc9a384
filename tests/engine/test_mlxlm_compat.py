"""engine/mlxlm_compat.py: each assumption about mlx-lm's private names, checked against the
installed mlx-lm, and no other engine module touching them."""

from __future__ import annotations

import ast
import inspect
import re
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest

from engine import mlxlm_compat as compat
from engine.mrope import apply_rotary, mrope_cos_sin

ENGINE = Path(__file__).resolve().parents[2] / "engine"


@pytest.fixture(scope="module")
def tokenizer(tiny_dir):
    from mlx_lm.tokenizer_utils import load

    return load(tiny_dir("per_expert"))


# -- caches -------------------------------------------------------------------------------------


def test_cache_classes_are_recognised_with_the_attributes_snapshots_use():
    from mlx_lm.models.cache import ArraysCache, ChunkedKVCache, KVCache, RotatingKVCache

    kv, arrays = KVCache(), ArraysCache(size=2)
    assert compat.cache_class_name(kv) == compat.KV_CACHE == type(kv).__name__
    assert compat.cache_class_name(arrays) == compat.ARRAYS_CACHE == type(arrays).__name__
    # engine/cache.py copies exactly these fields
    k = mx.zeros((1, 2, 3, 4))
    kv.update_and_fetch(k, k)
    assert kv.offset == 3 and kv.keys.shape[2] >= 3 and kv.values.shape[2] >= 3
    arrays[0] = k
    assert isinstance(arrays.cache, list) and arrays.cache[0] is k
    # subclasses and other caches keep state a snapshot would lose
    assert compat.cache_class_name(ChunkedKVCache(8)) is None
    assert compat.cache_class_name(RotatingKVCache(8)) is None
    assert compat.cache_class_name(object()) is None


def test_one_test_says_what_is_a_kv_cache(tiny_model):
    from mlx_lm.models.cache import ArraysCache, KVCache, QuantizedKVCache, RotatingKVCache

    for kv in (KVCache(), RotatingKVCache(8), QuantizedKVCache()):
        assert compat.is_kv_cache(kv)  # trimmed by moving the offset (speculative decoding)
    assert not compat.is_kv_cache(ArraysCache(size=2)) and not compat.is_kv_cache(object())
    # It agrees with the classes snapshots copy, on the model's own caches.
    for c in tiny_model.model.make_cache():
        assert compat.is_kv_cache(c) == (compat.cache_class_name(c) == compat.KV_CACHE)
    # No other engine module tells KV caches apart by their attributes or classes.
    for path in ENGINE.glob("*.py"):
        if path.name == "mlxlm_compat.py":
            continue
        text = path.read_text()
        assert 'hasattr(c, "keys")' not in text and "== KV_CACHE" not in text, path.name


def test_locus_model_makes_only_snapshot_caches(tiny_model):
    names = [compat.cache_class_name(c) for c in tiny_model.model.make_cache()]
    assert set(names) == {compat.KV_CACHE, compat.ARRAYS_CACHE}


# -- the streaming detokenizer ------------------------------------------------------------------


def _space_token(tokenizer) -> int:
    for i in range(len(tokenizer.detokenizer.tokenmap)):
        text = tokenizer.decode([i])
        if len(text) > 1 and text[0] == " " and text[1:].isalpha():
            return i
    raise AssertionError("the tiny vocabulary has no word with a leading space")


def _stream(detok, ids: list[int]) -> str:
    detok.reset()
    for i in ids:
        detok.add_token(i)
    detok.finalize()
    return detok.text


def test_detokenizer_keeps_the_leading_space(tokenizer):
    from mlx_lm.tokenizer_utils import BPEStreamingDetokenizer

    tid = _space_token(tokenizer)
    word = tokenizer.decode([tid])
    plain = tokenizer.detokenizer
    assert isinstance(plain, BPEStreamingDetokenizer) and hasattr(plain, "_maybe_trim_space")
    # what the compat function undoes: mlx-lm trims the reply's first space
    assert _stream(plain, [tid]) == word[1:]
    kept = compat.keep_leading_space(tokenizer.detokenizer)
    assert _stream(kept, [tid, tid]) == word + word
    # a fresh detokenizer from the same tokenizer is not affected
    assert _stream(tokenizer.detokenizer, [tid]) == word[1:]


def test_sentencepiece_detokenizer_still_takes_trim_space():
    from mlx_lm.tokenizer_utils import SPMStreamingDetokenizer

    assert "trim_space" in inspect.signature(SPMStreamingDetokenizer.__init__).parameters


# -- the tokenizer's chat template --------------------------------------------------------------


def test_set_chat_template_is_used_by_apply_chat_template(tiny_dir):
    from mlx_lm.tokenizer_utils import load

    tok = load(tiny_dir("per_expert"))
    template = "[{% for m in messages %}{{ m['role'] }}:{{ m['content'] }};{% endfor %}]"
    compat.set_chat_template(tok, template)
    assert tok.chat_template == template
    msgs = [{"role": "user", "content": "hi"}]
    assert tok.apply_chat_template(msgs, tokenize=False) == "[user:hi;]"


# -- model classes --------------------------------------------------------------------------------


def test_model_classes_by_config():
    from mlx_lm.models import llama, qwen3_5_moe

    assert compat.model_classes({"model_type": "llama"}) == (llama.Model, llama.ModelArgs)
    assert compat.model_classes({"model_type": "qwen3_5_moe"})[0] is qwen3_5_moe.Model
    with pytest.raises(ValueError):
        compat.model_classes({"model_type": "no_such_model_type"})


# -- rotary frequencies -------------------------------------------------------------------------


def test_plain_rope_has_no_frequencies_of_its_own():
    from mlx_lm.models.rope_utils import initialize_rope

    rope = initialize_rope(16, base=10000.0, traditional=False)
    assert isinstance(rope, nn.RoPE)
    assert compat.rope_frequencies(rope) is None and compat.rope_mscale(rope) == 1.0


def test_yarn_frequencies_reproduce_mlx_lm_rotation():
    """What MRopeAttention relies on: rotating by 1/freqs with mscale equals mlx-lm's YaRN rope."""
    from mlx_lm.models.rope_utils import initialize_rope

    dims, L = 16, 12
    yarn = {"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64}
    rope = initialize_rope(dims, 10000.0, False, yarn, max_position_embeddings=256)
    freqs = compat.rope_frequencies(rope)
    assert freqs is not None and freqs.shape == (dims // 2,)
    assert compat.rope_mscale(rope) != 1.0  # factor 4: YaRN scales the rotated dims
    x = mx.random.normal((1, 2, L, 32), key=mx.random.key(0))
    offset = 5
    pos = mx.broadcast_to(mx.arange(offset, offset + L)[None, None], (3, 1, L))
    cos, sin = mrope_cos_sin(pos, mx.array(1.0 / freqs), mx.zeros(dims // 2, dtype=mx.int32))
    got = apply_rotary(x, cos, sin, compat.rope_mscale(rope))
    np.testing.assert_allclose(np.array(got), np.array(rope(x, offset=offset)), atol=1e-4)


# -- gated DeltaNet, one position at a time ------------------------------------------------------


@pytest.mark.parametrize("with_state", [False, True])
def test_deltanet_steps_reproduce_mlx_lm_forward(with_state):
    """`deltanet_steps` mirrors mlx-lm's GatedDeltaNet forward: same output and cache, and each
    position's state is the one mlx-lm reaches after that many tokens."""
    from mlx_lm.models import qwen3_5
    from mlx_lm.models.cache import ArraysCache

    args = qwen3_5.TextModelArgs(
        hidden_size=64,
        linear_num_value_heads=4,
        linear_num_key_heads=2,
        linear_key_head_dim=32,
        linear_value_head_dim=16,
        linear_conv_kernel_dim=4,
        num_attention_heads=4,
    )
    mx.random.seed(1)
    layer = qwen3_5.GatedDeltaNet(args)
    x = mx.random.normal((1, 5, 64))
    prior = mx.random.normal((1, 3, 64))
    caches = [ArraysCache(size=2) for _ in range(3)]
    if with_state:
        for c in caches:
            layer(prior, cache=c)
    want = layer(x, cache=caches[0])
    got, steps = compat.deltanet_steps(layer, x, caches[1])
    assert np.abs(np.array(want) - np.array(got)).max() < 1e-5
    for i in (0, 1):
        assert np.abs(np.array(caches[0][i]) - np.array(caches[1][i])).max() < 1e-5
    assert len(steps) == 5
    for t in range(5):
        layer(x[:, t : t + 1], cache=caches[2])
        for i in (0, 1):
            assert np.abs(np.array(caches[2][i]) - np.array(steps[t][i])).max() < 1e-5


# -- nothing else touches mlx-lm's private names ------------------------------------------------


def _mlx_lm_private_names() -> set[str]:
    """Every `_name` mlx-lm defines: functions, classes, attributes, methods."""
    import mlx_lm

    names: set[str] = set()
    for f in Path(mlx_lm.__file__).parent.rglob("*.py"):
        names.update(re.findall(r"(?:def |class |\.)(_[a-z][A-Za-z0-9_]*)\b", f.read_text()))
    return names


def _own_attributes(tree: ast.AST) -> set[str]:
    """Private attributes an engine module defines itself: `self._x = ...` and its methods."""
    own: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef):
            own |= {n.name for n in node.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}
        elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
            if isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"):
                own.add(node.attr)
    return own


def test_no_engine_module_but_the_compat_module_uses_mlx_lm_private_names():
    private = _mlx_lm_private_names()
    assert {"_maybe_trim_space", "_get_classes", "_tokenizer", "_freqs"} <= private
    engine_own: set[str] = set()
    trees = {}
    for f in sorted(ENGINE.glob("*.py")):
        trees[f] = ast.parse(f.read_text(), str(f))
        engine_own |= _own_attributes(trees[f])
    problems = []
    for f, tree in trees.items():
        if f.name == "mlxlm_compat.py":
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("mlx_lm"):
                problems += [f"{f.name}: imports {a.name}" for a in node.names if a.name.startswith("_")]
            used = None
            if isinstance(node, ast.Attribute):
                used = node.attr
            elif isinstance(node, ast.Constant) and isinstance(node.value, str):
                used = node.value  # getattr(obj, "_name") / hasattr
            if used in private and used not in engine_own:
                problems.append(f"{f.name}:{node.lineno}: {used}")
        text = f.read_text()
        for cls in ("KVCache", "ArraysCache"):  # cache classes recognised by name
            if re.search(rf"[\"']{cls}[\"']", text):
                problems.append(f"{f.name}: names the class {cls} in a string")
    assert not problems, problems
