"""The prompt cache: snapshots at reusable points, reply reuse, LRU by bytes, disk round trip."""

from __future__ import annotations

import dataclasses

import mlx.core as mx
import pytest

from engine import Engine, GenerationRequest, SamplingParams
from engine.cache import PromptCache
from engine.literal import encode as encode_prompt
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
        msgs2 = [
            *msgs,
            {"role": "assistant", "content": r1.text, "reasoning_content": r1.reasoning},
            {"role": "user", "content": "And then?"},
        ]
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
        edited = [
            *msgs,
            {"role": "assistant", "content": "Answer!!", "reasoning_content": r1.reasoning},
            {"role": "user", "content": "next"},
        ]
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
        r = eng.generate(
            GenerationRequest(
                messages=list(msgs), sampling=G, max_tokens=12, use_cache=use_cache, session=session
            )
        )
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
        r_plain = eng.generate(GenerationRequest(messages=msgs, sampling=G, max_tokens=8, use_cache=False))
        assert r_cached.token_ids == r_plain.token_ids
    finally:
        eng.close()


# -- round 2: message boundaries, replies spliced back, byte budget --------------------------

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "run",
            "description": "Run a shell command.",
            "parameters": {
                "type": "object",
                "properties": {"command": {"type": "string"}, "cwd": {"type": "string"}},
                "required": ["command"],
            },
        },
    }
]


def _starts(tokenizer, ids, role):
    im = tokenizer.convert_tokens_to_ids("<|im_start|>")
    first = tokenizer.encode(role, add_special_tokens=False)[0]
    return [i for i in range(len(ids) - 1) if ids[i] == im and ids[i + 1] == first]


def test_new_session_resumes_after_system_and_tools(tiny_model):
    eng, script = forced_engine(tiny_model)
    try:
        req = GenerationRequest(
            messages=chat({"role": "user", "content": "Fix the bug."}),
            tools=TOOLS,
            sampling=G,
            session="agent-1",
        )
        script("ok\n</think>\n\ndone", req)
        r1 = eng.generate(req)
        p1, _ = eng.encode(req)
        system_end = _starts(tiny_model.tokenizer, p1, "user")[0]
        assert r1.usage.cache_write_tokens == len(p1)  # the reply snapshot covers the prompt
        # Another session (another API key): same system prompt and tools, its own question.
        req2 = GenerationRequest(
            messages=chat({"role": "user", "content": "Add a test please."}),
            tools=TOOLS,
            sampling=G,
            session="agent-2",
        )
        script("x\n</think>\n\ny", req2)
        r2 = eng.generate(req2)
        p2, _ = eng.encode(req2)
        assert r2.usage.cached_tokens == system_end
        assert r2.usage.prompt_tokens - r2.usage.cached_tokens == len(p2) - system_end
        assert r2.usage.cache_write_tokens == len(p2) - system_end
        kinds = {s.kind: s.session for s in eng.prompt_cache.snapshots()}
        assert kinds["system"] == "*shared*"
    finally:
        eng.close()


def test_retry_with_edited_last_user_message_resumes_at_its_start(tiny_model):
    eng, script = forced_engine(tiny_model)
    try:
        first = [{"role": "user", "content": "Read the file."}]
        req = GenerationRequest(messages=chat(*first), sampling=G)
        script("r\n</think>\n\nRead it.", req)
        r1 = eng.generate(req)
        turn2 = [
            *first,
            {"role": "assistant", "content": r1.text, "reasoning_content": r1.reasoning},
        ]
        # A long tool result, then the user's next message.
        result = {"role": "tool", "tool_call_id": "c", "content": "line of output\n" * 20}
        turn2.append(result)
        req2 = GenerationRequest(
            messages=chat(*turn2, {"role": "user", "content": "Now fix it."}), sampling=G
        )
        script("s\n</think>\n\nFixed.", req2)
        eng.generate(req2)
        # The client retries with text appended to the last user message.
        req3 = GenerationRequest(
            messages=chat(*turn2, {"role": "user", "content": "Now fix it. Also run the tests."}),
            sampling=G,
        )
        script("t\n</think>\n\nDone.", req3)
        r3 = eng.generate(req3)
        p3, _ = eng.encode(req3)
        last_user = _starts(tiny_model.tokenizer, p3, "user")[-1]
        # Text appended to it: the snapshot of the last turn less its last token (which may merge
        # with what follows) is a prefix of the retry, past that turn's start (issue 25).
        p2, _ = eng.encode(req2)
        turn_end = _starts(tiny_model.tokenizer, p2, "assistant")[-1] - 3
        assert last_user < r3.usage.cached_tokens == turn_end
        assert r3.usage.prompt_tokens - r3.usage.cached_tokens == len(p3) - turn_end
    finally:
        eng.close()


def test_marked_breakpoint_is_a_snapshot(tiny_model):
    eng, script = forced_engine(tiny_model)
    try:
        tok = tiny_model.tokenizer
        convo = chat(
            {"role": "user", "content": "First question."},
            {"role": "assistant", "content": "First answer.", "reasoning_content": "hm"},
            {"role": "user", "content": "Second question."},
            {"role": "assistant", "content": "Second answer.", "reasoning_content": "hm"},
            {"role": "user", "content": "Third question."},
        )
        req = GenerationRequest(messages=convo, sampling=G, cache_breakpoints=[2])
        script("a\n</think>\n\nb", req)
        eng.generate(req)
        mark = len(encode_prompt(tok, eng._render(req, convo[:3], gen=False)))
        users = _starts(tok, eng.encode(req)[0], "user")
        assert mark == users[1] and mark not in (users[0], users[-1])  # no other boundary's
        # The conversation is forked after the marked message.
        req2 = GenerationRequest(messages=[*convo[:3], {"role": "user", "content": "Other."}], sampling=G)
        script("c\n</think>\n\nd", req2)
        r2 = eng.generate(req2)
        assert r2.usage.cached_tokens == mark
        # Unmarked, the same fork only finds the end of the system prompt.
        eng.prompt_cache.clear()
        eng.generate(dataclasses.replace(req, cache_breakpoints=[]))
        script("c\n</think>\n\nd", req2)
        r3 = eng.generate(req2)
        assert r3.usage.cached_tokens == _starts(tok, eng.encode(req2)[0], "user")[0]
    finally:
        eng.close()


REPLIES = {
    # text before the call: the template writes "\n\n<tool_call>" where the model wrote "\n"
    "text_then_call": "Look first.\n</think>\n\nI will run it.\n<tool_call>\n<function=run>\n"
    "<parameter=command>\nls\n</parameter>\n<parameter=cwd>\nsrc\n</parameter>\n</function>\n"
    "</tool_call>",
    # several calls, with a blank line between them that the template drops
    "two_calls": "Two steps.\n</think>\n\n<tool_call>\n<function=run>\n<parameter=command>\nls\n"
    "</parameter>\n</function>\n</tool_call>\n\n<tool_call>\n<function=run>\n<parameter=command>\n"
    "pwd\n</parameter>\n</function>\n</tool_call>",
    # whitespace the template trims away
    "spaces": "Thinking  \n\n</think>\n\n\n  The answer is 4.  \n\n",
}


@pytest.mark.parametrize("kind", sorted(REPLIES))
def test_reply_rendered_back_differently_is_reused_whole(tiny_model, kind):
    eng, script = forced_engine(tiny_model)
    try:
        msgs = chat({"role": "user", "content": "Go."})
        req = GenerationRequest(messages=msgs, tools=TOOLS, sampling=G, session="s")
        reply = script(REPLIES[kind], req)
        r1 = eng.generate(req)
        p1, _ = eng.encode(req)
        # The client returns the calls with their arguments in another key order.
        calls = [
            {
                "id": f"c{i}",
                "type": "function",
                "function": {"name": c.name, "arguments": dict(reversed(c.arguments.items()))},
            }
            for i, c in enumerate(r1.tool_calls)
        ]
        back = {"role": "assistant", "content": r1.text, "reasoning_content": r1.reasoning}
        tail = [{"role": "user", "content": "Thanks, next."}]
        if calls:
            back["tool_calls"] = calls
            tail = [{"role": "tool", "tool_call_id": c["id"], "content": "out"} for c in calls]
        msgs2 = [*msgs, back, *tail]
        req2 = GenerationRequest(messages=msgs2, tools=TOOLS, sampling=G, session="s")
        # The template alone renders this reply differently from what was generated ...
        plain = encode_prompt(tiny_model.tokenizer, eng._render(req2, msgs2))
        assert plain[: len(p1) + len(reply)] != p1 + reply
        script("n\n</think>\n\nok", req2)
        r2 = eng.generate(req2)
        p2, _ = eng.encode(req2)
        # ... but the prompt carries the generated ids, so only the new turn is prefilled.
        assert p2[: len(p1) + len(reply)] == p1 + reply
        assert eng.encode(dataclasses.replace(req2, use_cache=False))[0] == plain  # cache off
        assert r2.usage.cached_tokens == len(p1) + len(reply)
        assert r2.usage.prompt_tokens - r2.usage.cached_tokens == len(p2) - len(p1) - len(reply)
    finally:
        eng.close()


def test_cache_write_tokens_count_only_new_snapshots(tiny_model):
    eng, script = forced_engine(tiny_model)
    try:
        req = GenerationRequest(messages=chat({"role": "user", "content": "Hi"}), sampling=G)
        script("a\n</think>\n\nb", req)
        r1 = eng.generate(req)
        assert r1.usage.cached_tokens == 0 and r1.usage.cache_write_tokens == r1.usage.prompt_tokens
        r2 = eng.generate(req)  # the same request again writes nothing new
        assert r2.usage.cached_tokens > 0 and r2.usage.cache_write_tokens == 0
        off = eng.generate(dataclasses.replace(req, use_cache=False))
        assert off.usage.cached_tokens == 0 and off.usage.cache_write_tokens == 0
    finally:
        eng.close()


def test_boundary_snapshot_never_evicts_another_sessions_newest(tiny_model):
    def state(ids):
        c = tiny_model.model.make_cache()
        tiny_model.model(mx.array([ids]), cache=c)
        return c

    pc = PromptCache(memory_bytes=10**9)
    a = pc.store("m", [1, 2, 3], state([1, 2, 3]), session="A", kind="reply")
    pc.store("m", [4, 5, 6], state([4, 5, 6]), session="B", kind="reply")
    pc.memory_bytes = 2 * a.nbytes + 1  # room for two snapshots
    pc.store("m", [4, 5], state([4, 5]), session="B", kind="system")
    pc.store("m", [1, 2], state([1, 2]), session="A", kind="user")
    assert sorted(s.tokens for s in pc.snapshots()) == [(1, 2, 3), (4, 5, 6)]
    budget = pc.budget()
    assert budget["memory_bytes"] == pc.memory_bytes
    assert budget["memory_used_bytes"] == pc.memory_used <= pc.memory_bytes
    assert budget["snapshots"] == 2


def test_spliced_replies_survive_a_restart(tiny_model, tmp_path):
    eng, script = forced_engine(tiny_model, prompt_cache=PromptCache(disk_dir=tmp_path))
    msgs = chat({"role": "user", "content": "Go."})
    req = GenerationRequest(messages=msgs, tools=TOOLS, sampling=G)
    reply = script(REPLIES["text_then_call"], req)
    r1 = eng.generate(req)
    p1, _ = eng.encode(req)
    eng.close()
    eng2, _ = forced_engine(tiny_model, prompt_cache=PromptCache(disk_dir=tmp_path))
    try:
        c = r1.tool_calls[0]
        back = {
            "role": "assistant",
            "content": r1.text,
            "reasoning_content": r1.reasoning,
            "tool_calls": [
                {"id": "c", "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
            ],
        }
        req2 = GenerationRequest(
            messages=[*msgs, back, {"role": "tool", "tool_call_id": "c", "content": "x"}],
            tools=TOOLS,
        )
        assert eng2.encode(req2)[0][: len(p1) + len(reply)] == p1 + reply
    finally:
        eng2.close()
