"""Prompt-cache snapshots that share their prefix as content-addressed, reference-counted KV blocks:
sharing across sessions, eviction order, restart from disk, damaged blocks, exact resume, --kv-bits."""

from __future__ import annotations

import mlx.core as mx
import pytest

from engine import Engine, GenerationRequest, SamplingParams
from engine.blocks import BLOCK_SUFFIX
from engine.cache import PromptCache
from engine.memplan import MIN_BUDGET, default_snapshot_budget, kv_bytes_per_token, plan_memory, state_bytes

G = SamplingParams(temperature=0)
B = 8  # tokens per block: small, so that the tiny prompts span many blocks
SYSTEM = {"role": "system", "content": "You are a helpful assistant in a test. " * 6}


def _run(model, ids):
    """A live cache holding `ids` (the model run over them)."""
    c = model.make_cache()
    model(mx.array([ids]), cache=c)
    mx.eval([x for layer in c for x in (layer.state if hasattr(layer, "state") else [])])
    return c


def _next_logits(model, cache, token):
    return model(mx.array([[token]]), cache=cache)[0, -1]


PREFIX = list(range(1, 41))  # five whole blocks


def test_sessions_with_one_prefix_hold_its_blocks_once(tiny_model):
    m = tiny_model.model
    pc = PromptCache(memory_bytes=10**9, block_tokens=B)
    a, b = [*PREFIX, 50, 51, 52], [*PREFIX, 60, 61]
    sa = pc.store("m", a, _run(m, a), session="A")
    used = pc.memory_used
    live_b = _run(m, b)
    sb = pc.store("m", b, live_b, session="B")
    assert len(sa.blocks) == 5 and sa.blocks == sb.blocks
    budget = pc.budget()
    assert budget["blocks"] == 5 and budget["shared_blocks"] == 5
    # The second session adds only what is its own: its tail and its linear-attention state.
    assert pc.memory_used - used == sb.own_bytes < sb.nbytes
    assert pc.memory_used < sa.nbytes + sb.nbytes
    # The budget counts each block once: both fit in exactly what they hold together.
    pc.memory_bytes = pc.memory_used
    assert {s.key for s in pc.snapshots()} == {sa.key, sb.key}
    # Restored from the shared blocks, B continues exactly as its live cache does.
    cache, n = pc.lookup("m", [*b, 70], m.make_cache())
    assert n == len(b)
    assert mx.array_equal(_next_logits(m, cache, 70), _next_logits(m, live_b, 70))


def test_an_image_key_inside_a_block_changes_that_block_and_every_later_one(tiny_model):
    m = tiny_model.model
    pc = PromptCache(memory_bytes=10**9, block_tokens=B)
    c = _run(m, PREFIX)
    one = pc.store("m", PREFIX, c, extra=[(12, "cat")])
    two = pc.store("m", PREFIX, c, extra=[(12, "dog")])
    assert one.blocks[0] == two.blocks[0]  # the image starts in the second block
    assert all(x != y for x, y in zip(one.blocks[1:], two.blocks[1:], strict=True))
    # Same tokens, another image: never resumed from the other's snapshot.
    assert pc.lookup("m", [*PREFIX, 1], m.make_cache(), [(12, "bird")])[1] == 0


def test_eviction_is_lru_and_frees_only_blocks_no_snapshot_holds(tiny_model):
    m = tiny_model.model
    pc = PromptCache(memory_bytes=10**9, block_tokens=B, per_session=10)
    other = list(range(100, 140))
    s_old = pc.store("m", other, _run(m, other), session="A", kind="user")
    s_a = pc.store("m", [*PREFIX, 7], _run(m, [*PREFIX, 7]), session="A", kind="reply")
    s_b = pc.store("m", [*PREFIX, 8], _run(m, [*PREFIX, 8]), session="B", kind="reply")
    assert pc.budget()["blocks"] == 10
    # Just over budget: the oldest snapshot that is nobody's newest turn goes, with its blocks ...
    pc.memory_bytes = pc.memory_used - 1
    assert [s.key for s in pc.snapshots()] == [s_a.key, s_b.key]
    assert not any(pc.blocks.has(k) for k in s_old.blocks)
    # ... but never a block a remaining snapshot needs.
    assert all(pc.blocks.has(k) for k in s_a.blocks) and pc.budget()["blocks"] == 5
    # A hard limit: the least recently used goes next, and the blocks B still holds stay.
    pc.lookup("m", [*PREFIX, 8, 9], m.make_cache())  # B was used last
    before = pc.memory_used
    pc.memory_bytes = before - 1
    assert [s.key for s in pc.snapshots()] == [s_b.key]
    assert before - pc.memory_used == s_a.own_bytes
    assert pc.budget()["blocks"] == 5
    pc.memory_bytes = 1
    assert pc.snapshots() == [] and pc.memory_used == 0 and pc.budget()["blocks"] == 0


def _conversation(eng, turns, use_cache=True, session="c"):
    msgs = [SYSTEM]
    outs = []
    for i in range(turns):
        msgs.append({"role": "user", "content": f"Question number {i}: why is that so?"})
        req = GenerationRequest(
            messages=list(msgs), sampling=G, max_tokens=12, use_cache=use_cache, session=session
        )
        r = eng.generate(req)
        outs.append((r.token_ids, r.usage.cached_tokens))
        msgs.append({"role": "assistant", "content": r.text, "reasoning_content": r.reasoning})
    return outs


def _block_files(tmp_path):
    return sorted((tmp_path / "blocks").glob(f"*{BLOCK_SUFFIX}"))


def test_disk_holds_each_block_once_and_survives_a_restart(tiny_dir, tmp_path):
    path = str(tiny_dir("per_expert"))
    eng = Engine.from_path(path, prompt_cache=PromptCache(disk_dir=tmp_path, block_tokens=B))
    first = _conversation(eng, 3)
    pc = eng.prompt_cache
    eng.close()  # flushes snapshots to disk
    snaps = pc.disk_snapshots()  # every one, those evicted during the session included
    files = _block_files(tmp_path)
    held = {k for s in snaps for k in s.blocks}
    assert files and {f.name.removesuffix(BLOCK_SUFFIX) for f in files} == held  # once each
    # What was written is far less than every snapshot's whole prefix.
    assert pc.stats.disk_written_bytes < 0.6 * sum(s.nbytes for s in snaps)
    pc2 = PromptCache(disk_dir=tmp_path, block_tokens=B)
    eng2 = Engine.from_path(path, prompt_cache=pc2)
    try:
        again = _conversation(eng2, 4)
        assert [t for t, _ in again[:3]] == [t for t, _ in first]
        assert again[0][1] > 0 and pc2.stats.disk_reads >= 1  # the first turn resumed from disk
        assert pc2.stats.rejected_files == 0
    finally:
        eng2.close()


@pytest.mark.parametrize("damage", ["flip", "truncate", "delete"])
def test_damaged_blocks_are_detected_dropped_and_never_used(tiny_dir, tmp_path, damage):
    path = str(tiny_dir("per_expert"))
    eng = Engine.from_path(path, prompt_cache=PromptCache(disk_dir=tmp_path, block_tokens=B))
    ref = _conversation(eng, 2)
    eng.close()
    files = _block_files(tmp_path)
    assert files
    for f in files:
        data = bytearray(f.read_bytes())
        if damage == "flip":  # one byte of the arrays, the header intact: only the checksum sees it
            data[-3] ^= 0x5A
            f.write_bytes(bytes(data))
        elif damage == "truncate":
            f.write_bytes(bytes(data[: len(data) // 2]))
        else:
            f.unlink()
    pc = PromptCache(disk_dir=tmp_path, block_tokens=B)
    eng2 = Engine.from_path(path, prompt_cache=pc)
    try:
        again = _conversation(eng2, 2)
        assert [t for t, _ in again] == [t for t, _ in ref]  # never wrong output
        assert again[0][1] == 0  # nothing was resumed from the damaged prefix
        assert pc.stats.rejected_files >= 1
        if damage != "delete":
            assert pc.blocks.stats.rejected >= 1
            assert sum(f.exists() for f in files) < len(files)  # the damaged ones read were dropped
    finally:
        eng2.close()
    # What went back to disk is whole again: the next process resumes from it, and exactly.
    pc3 = PromptCache(disk_dir=tmp_path, block_tokens=B)
    eng3 = Engine.from_path(path, prompt_cache=pc3)
    try:
        third = _conversation(eng3, 2)
        assert [t for t, _ in third] == [t for t, _ in ref] and third[0][1] > 0
        assert pc3.stats.rejected_files == 0 and pc3.blocks.stats.rejected == 0
    finally:
        eng3.close()


def test_greedy_output_identical_with_and_without_blocks(tiny_dir):
    eng = Engine.from_path(str(tiny_dir("per_expert")), prompt_cache=PromptCache(block_tokens=B))
    try:
        with_cache = _conversation(eng, 4)
        assert eng.prompt_cache.budget()["blocks"] > 0
        eng.prompt_cache.clear()
        without = _conversation(eng, 4, use_cache=False)
        assert [t for t, _ in with_cache] == [t for t, _ in without]
        assert all(c > 0 for _, c in with_cache[1:])
    finally:
        eng.close()


@pytest.fixture(scope="module")
def wide_head_dir(tmp_path_factory):
    """A tiny checkpoint whose head_dim (64) mlx-lm can quantize in groups of 64."""
    from engine.tiny import TinyConfig, write_checkpoint

    return write_checkpoint(tmp_path_factory.mktemp("tiny-hd64") / "model", cfg=TinyConfig(head_dim=64))


def test_kv_bits_8_snapshots_keep_the_quantized_cache(wide_head_dir, tmp_path):
    from mlx_lm.models.cache import QuantizedKVCache

    eng = Engine(prompt_cache=PromptCache(disk_dir=tmp_path, block_tokens=B))
    eng.load(str(wide_head_dir), kv_bits=8)
    try:
        caches = eng.model.model.make_cache()
        assert sum(isinstance(c, QuantizedKVCache) for c in caches) == 1  # the one full-attention layer
        with_cache = _conversation(eng, 3)
        snaps = eng.prompt_cache.snapshots()
        assert snaps and all("QuantizedKVCache" in s.classes for s in snaps)
        blocks = eng.prompt_cache.blocks
        some = blocks.parts(snaps[-1].blocks[0])
        assert len(some[0]) == 6  # keys and values as (data, scales, biases)
        eng.prompt_cache.flush()
        eng.prompt_cache.clear()
        without = _conversation(eng, 3, use_cache=False)
        assert [t for t, _ in with_cache] == [t for t, _ in without]
        # Restart: the quantized blocks come back from disk and resume exactly.
        pc2 = PromptCache(disk_dir=tmp_path, block_tokens=B)
        eng.prompt_cache = pc2
        again = _conversation(eng, 3)
        assert [t for t, _ in again] == [t for t, _ in without] and again[0][1] > 0
    finally:
        eng.close()


def test_kv_bits_8_halves_the_bytes_of_a_block(wide_head_dir):
    from engine import load_model

    ids = list(range(1, 33))
    sizes = {}
    for bits in (None, 8):
        lm = load_model(wide_head_dir, kv_bits=bits)
        pc = PromptCache(memory_bytes=10**9, block_tokens=B)
        s = pc.store("m", ids, _run(lm.model, ids))
        sizes[bits] = pc.blocks.memory_bytes() / len(s.blocks)
        fp = lm.model.language_model.args
        assert fp.head_dim == 64
    # 8-bit data + 16-bit scales and biases per 64 values, against the model's float32 KV here.
    assert sizes[8] / sizes[None] == pytest.approx((1 + 2 * 4 / 64) / 4, rel=0.01)


def test_kv_bits_refuses_what_it_cannot_quantize(tiny_dir):
    from engine import load_model
    from engine.errors import ModelLoadError

    with pytest.raises(ModelLoadError, match="multiple of 64"):
        load_model(tiny_dir("per_expert"), kv_bits=8)  # head_dim 16
    with pytest.raises(ModelLoadError, match="4 or 8"):
        load_model(tiny_dir("per_expert"), kv_bits=3)


# -- the memory plan ----------------------------------------------------------------------------

QWEN36 = {
    "text_config": {
        "num_hidden_layers": 40,
        "full_attention_interval": 4,
        "num_attention_heads": 16,
        "num_key_value_heads": 2,
        "head_dim": 256,
        "linear_num_key_heads": 16,
        "linear_num_value_heads": 32,
        "linear_key_head_dim": 128,
        "linear_value_head_dim": 128,
        "linear_conv_kernel_dim": 4,
    }
}


def test_memory_plan_of_the_real_model():
    # 10 full-attention layers x 2 KV heads x 256 x (K and V) x 2 bytes (issue 29's arithmetic).
    assert kv_bytes_per_token(QWEN36, True) == 20 * 1024
    assert kv_bytes_per_token(QWEN36, True, 8) == 10 * 2 * 256 * 2 * (1 + 4 / 64)
    assert 60 * 1024**2 < state_bytes(QWEN36, True) < 66 * 1024**2  # ~63 MB of Gated DeltaNet state
    GB = 1024**3
    plan = plan_memory(QWEN36, hybrid=True, weights=20 * GB, free=40 * GB, context_tokens=262144)
    assert plan.live_cache_bytes == 262144 * 20 * 1024 + plan.state_bytes
    # Half of what stays free once the live cache and the margin are reserved.
    assert plan.snapshot_budget_bytes == (40 * GB - plan.live_cache_bytes - plan.overhead_bytes) // 2
    fits = plan.context_fits_tokens
    assert fits >= 262144  # the reserved context fits beside the budget it was derived with
    quarter = plan_memory(
        QWEN36, hybrid=True, weights=20 * GB, free=40 * GB, context_tokens=262144, kv_bits=8
    )
    assert quarter.context_fits_tokens > 1.5 * fits
    assert "fits" in plan.summary() and plan.to_dict()["context_fits_tokens"] == fits


def test_default_budget_follows_free_memory(monkeypatch):
    assert default_snapshot_budget(0) == MIN_BUDGET
    assert default_snapshot_budget(10 * 1024**3, 2 * 1024**3) == 4 * 1024**3
    monkeypatch.setenv("LOCUS_MEMORY_LIMIT_GB", "6")
    assert PromptCache().memory_bytes == 3 * 1024**3
    assert PromptCache(memory_bytes=123).memory_bytes == 123  # a user's own budget stays
    pc = PromptCache(memory_bytes=123)
    pc.set_plan(plan_memory(QWEN36, hybrid=True, weights=1, free=8 * 1024**3, context_tokens=1024))
    assert pc.memory_bytes == 123 and pc.budget()["memory_plan"]["context_tokens"] == 1024


def test_a_batch_restores_from_shared_blocks_with_quantized_kv(wide_head_dir):
    eng = Engine(prompt_cache=PromptCache(block_tokens=B))
    eng.load(str(wide_head_dir), kv_bits=8)
    try:
        reqs = [
            GenerationRequest(
                messages=[SYSTEM, {"role": "user", "content": f"Tell me about {w}, at length."}],
                sampling=G,
                max_tokens=12,
            )
            for w in ("cats", "dogs", "birds")
        ]
        alone = [eng.generate(r).token_ids for r in reqs]
        hits = eng.prompt_cache.stats.hits
        handles = [eng.submit(r) for r in reqs]  # one batch, each row resumed from shared blocks
        assert [h.result().token_ids for h in handles] == alone
        assert eng.prompt_cache.stats.hits >= hits + 3
        assert eng.prompt_cache.budget()["shared_blocks"] > 0  # the system prompt's, held once
    finally:
        eng.close()


def test_snapshots_of_the_older_format_are_removed_and_foreign_files_kept(tmp_path):
    import json
    import struct

    def write(name, meta):
        header = json.dumps({"__metadata__": meta}).encode()
        (tmp_path / name).write_bytes(struct.pack("<Q", len(header)) + header)

    write("a.locus-cache.safetensors", {"format": "locus-prompt-cache", "version": "1"})
    write("b.locus-cache.safetensors", {"format": "something-else", "version": "1"})
    pc = PromptCache(disk_dir=tmp_path)
    assert pc.disk_snapshots() == [] and pc.stats.rejected_files == 2
    assert not (tmp_path / "a.locus-cache.safetensors").exists()  # round 2's whole prefixes: gone
    assert (tmp_path / "b.locus-cache.safetensors").exists()  # not ours to delete


def test_kv_parts_round_trip_plain_and_quantized_caches():
    from mlx.utils import tree_flatten
    from mlx_lm.models.cache import KVCache

    from engine.mlxlm_compat import (
        QUANTIZED_KV_CACHE,
        cache_class_name,
        kv_parts,
        quantized_kv_cache,
        set_kv_parts,
    )

    k = mx.random.normal((1, 2, 10, 64))
    for make in (KVCache, lambda: quantized_kv_cache(8)):
        src = make()
        src.update_and_fetch(k, k + 1)
        parts = kv_parts(src, 0, 10)
        assert len(parts) == (6 if cache_class_name(src) == QUANTIZED_KV_CACHE else 2)
        assert all(p.shape[2] == 10 for p in parts)
        # Restored from its first 4 positions and the rest, it attends exactly like the original.
        dst = make()
        head = kv_parts(src, 0, 4)
        tail = kv_parts(src, 4, 10)
        set_kv_parts(dst, [mx.concatenate([a, b], axis=2) for a, b in zip(head, tail, strict=True)], 10)
        q = mx.random.normal((1, 2, 1, 64))
        a, b = src.update_and_fetch(q, q), dst.update_and_fetch(q, q)
        assert dst.offset == src.offset == 11
        assert all(mx.array_equal(x[1], y[1]) for x, y in zip(tree_flatten(a), tree_flatten(b), strict=True))
