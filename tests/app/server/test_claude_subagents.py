"""Claude Code running parallel sub-agents against Locus's batching engine, offline.

The real Claude Code CLI (in a loopback-only network namespace) talks to the real app and the real
engine scheduler (`--parallel 4`) over the tiny model, each request forced to its scripted reply
(tests.scripted.batched_reply_engine): the main agent launches three sub-agents with one reply of
three Agent calls, each answers, and the main agent finishes. Interleaving is shown in the engine:
the sub-agents' tokens come from the same batched decode steps.
"""

from __future__ import annotations

import itertools
import json
import shutil

import pytest

from tests.realclients import SUB_FINAL, SUBAGENTS, can_isolate, run_isolated

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("claude") is None, reason="the claude CLI is not installed"),
]


def test_claude_code_sub_agents_are_decoded_in_one_batch(tmp_path):
    if not can_isolate():
        pytest.skip("cannot make a loopback-only network namespace (unshare -n needs root)")
    res = run_isolated("claude-subagents", tmp_path / "out.json", timeout=300)
    assert res["rc"] == 0, res["stdout"] + res["stderr"]
    out = json.loads(res["stdout"])
    assert out["is_error"] is False and out["result"] == SUB_FINAL
    # Every request was served (no 529 for a full queue, no error), each sub-agent once.
    assert res["requests"] and all(r["status"] == 200 and not r["error"] for r in res["requests"])
    subs = {h: k for h, k in res["kinds"].items() if k.startswith("I am sub-agent")}
    assert sorted(k.split(".")[0] for k in subs.values()) == [
        f"I am sub-agent {k}" for k in range(1, SUBAGENTS + 1)
    ], res["kinds"]
    # Interleaved: each pair of sub-agents drew tokens from the same batched forwards (steps of
    # engine/scheduler.py), and at some step all of them were in the batch together.
    steps = {h: set(res["steps"][h]) for h in subs}
    for a, b in itertools.combinations(steps, 2):
        shared = steps[a] & steps[b]
        assert len(shared) >= 10, (a, b, min(steps[a]), max(steps[a]), min(steps[b]), max(steps[b]))
    together = set.intersection(*steps.values())
    assert together, "the sub-agents were never decoded together"
    assert res["widest"] >= SUBAGENTS
    print(f"sub-agents decoded together for {len(together)} steps; claude ran {res['seconds']:.1f} s")
