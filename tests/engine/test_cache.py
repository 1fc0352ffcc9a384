"""The prompt cache: snapshots at reusable points, reply reuse, LRU by bytes, disk round trip."""

from __future__ import annotations

import mlx.core as mx
import pytest

from engine import Engine, GenerationRequest, SamplingParams
from engine.cache import PromptCache
from tests.scripted import forced_engine

G = SamplingParams(temperature=0)
SYSTEM = {"role": "system", "content": "You are a helpful assistant in a test."}


def chat(*turns):
    return [SYSTEM, *turns]


def test_next_turn_reuses_prompt_and_reply_tokens(tiny_model):
    eng, script = forced_engine(tiny_model)
    try:
        msgs = chat({"role": "user", "content": "Hello there"})
        req = GenerationRequest(messages=msgs, sampling=G, session="s1")
        reply_ids = script("I think so.\n</think>\n\nThe answer is 42.", req)
        r1 = eng.generate(req)
        assert r1.token_ids == reply_ids and r1.usage.cached_tokens == 0
        p1, _ = eng.encode(req)
        msgs2 = [*msgs, {"role": "assistant", "content": r1.text, "reasoning_content": r1.reasoning},
                 {"role": "user", "content": "And then?"}]  # fmt: skip
        req2 = GenerationRequest(messages=msgs2, sampling=G, session="s1")
        p2, _ = eng.encode(req2)
        assert p2[: len(p1) + len(reply_ids)] == p1 + reply_ids  # the template re-renders exactly
        script("ok\n</think>\n\nThen 43.", req2)
        r2 = eng.generate(req2)
        # Only the new user turn is prefilled: everything up to the end of the reply was cached.
        assert r2.usage.cached_tokens == len(p1) + len(reply_ids)
        assert r2.usage.prompt_tokens - r2.usage.cached_tokens == len(p2) - len(p1) - len(reply_ids)
    finally:
        eng.close()


def test_reply_reuse_refused_when_tokens_differ(tiny_model):
    eng, script = forced_engine(tiny_model)
    try:
        msgs = chat({"role": "user", "content": "Hello there"})
        req = GenerationRequest(messages=msgs, sampling=G)
        script("Hmm.\n</think>\n\nAnswer.", req)
        r1 = eng.generate(req)
        p1, _ = eng.encode(req)
        # The client edits the reply: its tokens no longer match what the model generated.
        edited = [*msgs, {"role": "assistant", "content": "Answer!!", "reasoning_content": r1.reasoning},
                  {"role": "user", "content": "next"}]  # fmt: skip
        req2 = GenerationRequest(messages=edited, sampling=G)
        script("x\n</think>\n\ny", req2)
        r2 = eng.generate(req2)
        im_start = tiny_model.tokenizer.convert_tokens_to_ids("<|im_start|>")
        gen_start = max(i for i, t in enumerate(p1) if t == im_start)
        # Falls back to the snapshot at the start of the previous generation prompt, not zero.
        assert r2.usage.cached_tokens == gen_start
    finally:
        eng.close()


def test_regenerate_resumes_from_generation_start(tiny_model):
    eng, script = forced_engine(tiny_model)
    try:
        req = GenerationRequest(messages=chat({"role": "user", "content": "Hi"}), sampling=G)
        script("a\n</think>\n\nb", req)
        eng.generate(req)
        r = eng.generate(req)  # the same prompt again: its own end cannot be reused (needs logits)
        p, _ = eng.encode(req)
        assert 0 < r.usage.cached_tokens < len(p)
    finally:
        eng.close()


def _conversation(eng, turns, use_cache=True, session="c"):
    msgs = [SYSTEM]
    outs = []
    for i in range(turns):
        msgs.append({"role": "user", "content": f"Question number {i}: why?"})
        r = eng.generate(GenerationRequest(messages=list(msgs), sampling=G, max_tokens=12,
                                           use_cache=use_cache, session=session))  # fmt: skip
        outs.append((r.token_ids, r.usage.cached_tokens))
        msgs.append({"role": "assistant", "content": r.text, "reasoning_content": r.reasoning})
    return outs


def test_greedy_output_identical_with_and_without_cache(tiny_dir):
    eng = Engine.from_path(str(tiny_dir("per_expert")))
    try:
        with_cache = _conversation(eng, 4)
        eng.prompt_cache.clear()
        without = _conversation(eng, 4, use_cache=False)
        assert [t for t, _ in with_cache] == [t for t, _ in without]
        assert all(c > 0 for _, c in with_cache[1:])  # later turns did hit
        assert all(c == 0 for _, c in without)
    finally:
        eng.close()


def test_lru_by_bytes_spares_each_sessions_newest(tiny_model):
    pc = PromptCache(memory_bytes=1)  # everything is over budget
    cache = tiny_model.model.make_cache()
    tiny_model.model(mx.array([[1, 2, 3, 4, 5]]), cache=cache)
    pc.store("m", [1, 2, 3, 4, 5], cache, session="agent")
    cache2 = tiny_model.model.make_cache()
    tiny_model.model(mx.array([[9, 8, 7]]), cache=cache2)
    pc.store("m", [9, 8, 7], cache2, session="sub-agent")
    assert pc.snapshots() == [] and pc.memory_used == 0  # the byte budget is a hard limit ...
    pc2 = PromptCache(memory_bytes=10**9)
    one = pc2.store("m", [1, 2, 3, 4, 5], cache, session="agent")
    pc2.store("m", [9, 8, 7], cache2, session="sub-agent")
    pc2.memory_bytes = 2 * one.nbytes + 1  # room for the newest of each session, not more
    for i in range(5):
        c = tiny_model.model.make_cache()
        tiny_model.model(mx.array([[9, 8, 7, i]]), cache=c)
        pc2.store("m", [9, 8, 7, i], c, session="sub-agent")
    sessions = [s.session for s in pc2.snapshots()]
    assert sessions == [
        "agent",
        "sub-agent",
    ]  # ... but a busy sub-agent never evicts the agent's newest snapshot
    assert pc2.stats.evictions >= 4


def test_disk_round_trip_across_a_fresh_engine(tiny_dir, tmp_path):
    path = str(tiny_dir("per_expert"))
    eng = Engine.from_path(path, prompt_cache=PromptCache(disk_dir=tmp_path))
    first = _conversation(eng, 3)
    eng.close()  # flushes snapshots to disk
    files = list(tmp_path.glob("*.safetensors"))
    assert files
    eng2 = Engine.from_path(path, prompt_cache=PromptCache(disk_dir=tmp_path))
    try:
        # Replay the same conversation: greedy replies rebuild the exact same history.
        again = _conversation(eng2, 4)
        assert [t for t, _ in again[:3]] == [t for t, _ in first]
        assert again[0][1] > 0  # the very first turn after the restart already hit the disk cache
        assert eng2.prompt_cache.stats.disk_reads >= 1
    finally:
        eng2.close()


@pytest.mark.parametrize("damage", ["garbage", "truncate", "rename"])
def test_corrupt_or_foreign_files_are_ignored(tiny_dir, tmp_path, damage):
    path = str(tiny_dir("per_expert"))
    eng = Engine.from_path(path, prompt_cache=PromptCache(disk_dir=tmp_path))
    ref = _conversation(eng, 2)
    eng.close()
    files = sorted(tmp_path.glob("*.locus-cache.safetensors"))
    assert files
    for f in files:
        if damage == "garbage":
            f.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all}")
        elif damage == "truncate":
            f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
        else:
            f.rename(f.with_name("0" * 64 + ".locus-cache.safetensors"))
            break
    pc = PromptCache(disk_dir=tmp_path)
    eng2 = Engine.from_path(path, prompt_cache=pc)
    try:
        again = _conversation(eng2, 2)
        assert [t for t, _ in again] == [t for t, _ in ref]  # never wrong output
        assert pc.stats.rejected_files >= 1
    finally:
        eng2.close()


def test_cancel_mid_prefill_leaves_no_broken_snapshot(tiny_dir):
    eng = Engine.from_path(str(tiny_dir("per_expert")))
    try:
        long = " ".join(f"word{i}" for i in range(550))
        msgs = chat({"role": "user", "content": long})
        h = eng.submit(GenerationRequest(messages=msgs, sampling=G, max_tokens=5))
        for ev in h.events(timeout=120):
            if getattr(ev, "type", "") == "prompt_progress" and 0 < ev.processed < ev.total:
                h.cancel()
        assert h.done.finish_reason == "cancelled"
        # Whatever snapshots exist must be consistent: cached and uncached runs agree.
        r_cached = eng.generate(GenerationRequest(messages=msgs, sampling=G, max_tokens=8))
        r_plain = eng.generate(
            GenerationRequest(messages=msgs, sampling=G, max_tokens=8, use_cache=False)
        )
        assert r_cached.token_ids == r_plain.token_ids
    finally:
        eng.close()
